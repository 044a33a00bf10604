from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from ..errors import DomainError
from ..models import ApiToken, Membership, Role, Run, Team, User
from . import prepared_cursor

TOKEN_PREFIX = "mlb_"


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def token_create(*, user: User, name: str, team: Team | None = None) -> tuple[ApiToken, str]:
    """Returns the token row and the secret; the secret is not stored and cannot be shown again."""
    name = (name or "").strip()
    if not name:
        raise DomainError("Give the token a name so you can recognise it later.", field="name")
    if team is not None and not team.memberships.filter(user=user).exists():
        raise DomainError("You are not a member of that team.", field="team")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, team=team, name=name[:80], prefix=secret[:12], digest=token_digest(secret)
    )
    return token, secret


def token_authenticate(*, secret: str, team_run_id: str | None = None) -> ApiToken | None:
    """The live token for `secret`, or None; with its user and team loaded, and the user's membership
    of that team as `team_membership_id` and `team_role` (None when the token has no team or the user
    left it), all from one query. Given `team_run_id` (an MLflow run id), the same query also loads
    that run of the token's team as `team_run` (None if there is none): a logging request then
    needs no other query before its write."""
    token = _token_with_membership(token_digest(secret), team_run_id)
    if token is not None:
        now = timezone.now()
        # Avoid a write per request: last-used is precise to the minute.
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


_MODELS = (ApiToken, User, Team)


class _Statement:
    """The token lookup as one fixed SQL string (prepared once per connection on PostgreSQL), with
    each joined model's slice of the row and the converters the ORM would apply to its columns
    (SQLite returns naive datetimes, JSON comes as text), all worked out once per process."""

    def __init__(self, with_run: bool) -> None:
        self.models = (*_MODELS, Run) if with_run else _MODELS
        qn = connection.ops.quote_name
        columns = ", ".join(
            f"{alias}.{qn(f.column)}" for model, alias in zip(self.models, ("t", "u", "tm", "r"), strict=False)
            for f in model._meta.concrete_fields
        )
        sql = (
            f"SELECT {columns}, m.{qn('id')}, m.{qn('role')} FROM {qn(ApiToken._meta.db_table)} t "
            f"JOIN {qn(User._meta.db_table)} u ON u.{qn('id')} = t.{qn('user_id')} "
            f"LEFT JOIN {qn(Team._meta.db_table)} tm ON tm.{qn('id')} = t.{qn('team_id')} "
            f"LEFT JOIN {qn(Membership._meta.db_table)} m "
            f"ON m.{qn('team_id')} = t.{qn('team_id')} AND m.{qn('user_id')} = t.{qn('user_id')} "
        )
        if with_run:
            sql += (
                f"LEFT JOIN {qn(Run._meta.db_table)} r "
                f"ON r.{qn('team_id')} = t.{qn('team_id')} AND r.{qn('external_id')} = %s "
            )
        sql += f"WHERE t.{qn('digest')} = %s AND t.{qn('revoked_at')} IS NULL AND u.{qn('is_active')}"
        self.sql = sql + (f" ORDER BY r.{qn('id')} LIMIT 1" if with_run else "")
        self.slices: list[tuple[type, int, int, list[tuple[int, list, Any]]]] = []
        start = 0
        for model in self.models:
            fields = model._meta.concrete_fields
            converters = []
            for index, field in enumerate(fields):
                column = field.get_col(model._meta.db_table)
                found = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
                if found:
                    converters.append((index, found, column))
            self.slices.append((model, start, start + len(fields), converters))
            start += len(fields)
        self.extra = start  # membership id and role follow the models' columns

    def instances(self, row: tuple) -> list[Any]:
        instances: list[Any] = []
        for model, start, end, converters in self.slices:
            values = list(row[start:end])
            if values[0] is None:  # a token without a team, no such run
                instances.append(None)
                continue
            for index, found, column in converters:
                for convert in found:
                    values[index] = convert(values[index], column, connection)
            instances.append(model.from_db(connection.alias, None, values))
        return instances


_statements: dict[bool, _Statement] = {}


def _token_with_membership(digest: str, run_id: str | None) -> ApiToken | None:
    """Every MLflow-API request authenticates, so this is one fixed SQL statement (token, user, team,
    membership and optionally the run, joined) instead of ORM queries compiled per request, which
    cost more CPU than everything else in a log-metric request."""
    with_run = run_id is not None
    statement = _statements.get(with_run)
    if statement is None:
        statement = _statements[with_run] = _Statement(with_run)
    with prepared_cursor() as cursor:
        cursor.execute(statement.sql, [run_id, digest] if with_run else [digest])
        row = cursor.fetchone()
    if row is None:
        return None
    token, user, team, *run = statement.instances(row)
    token.user, token.team = user, team
    token.team_membership_id, token.team_role = row[statement.extra], row[statement.extra + 1]
    token.team_run = run[0] if with_run else None
    if token.team_run is not None:
        token.team_run.team = team
    return token


def token_writer_sql(*, run: bool = False) -> tuple[str, list[Any]]:
    """A SELECT with a row only while a token may write for a team: live, its user active, a manager
    or member of the token's team. For writes that trust a caller read a few seconds earlier (the
    MLflow API's caller cache): they run it in the statement (or transaction) that makes the write
    visible, so a revoked token or changed role never stores anything. Parameters, in order: the
    token id, then the team id, or with `run` the run id (which must be of the token's team; the
    query then has it as `r` for the caller's further conditions). Returns (sql, params after those ids)."""
    qn = connection.ops.quote_name
    sql = (
        f"SELECT 1 FROM {qn(ApiToken._meta.db_table)} t "
        f"JOIN {qn(User._meta.db_table)} u ON u.{qn('id')} = t.{qn('user_id')} "
        f"JOIN {qn(Membership._meta.db_table)} m "
        f"ON m.{qn('user_id')} = t.{qn('user_id')} AND m.{qn('team_id')} = t.{qn('team_id')} "
    )
    if run:
        sql += (
            f"JOIN {qn(Run._meta.db_table)} r ON r.{qn('team_id')} = t.{qn('team_id')} "
            f"WHERE t.{qn('id')} = %s AND r.{qn('id')} = %s AND "
        )
    else:
        sql += f"WHERE t.{qn('id')} = %s AND t.{qn('team_id')} = %s AND "
    sql += f"t.{qn('revoked_at')} IS NULL AND u.{qn('is_active')} AND m.{qn('role')} IN (%s, %s)"
    return sql, [Role.MANAGER, Role.MEMBER]


@transaction.atomic
def token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def token_bind_team(*, token: ApiToken, team: Team) -> ApiToken:
    """Pin an unbound token to the team it first logged into, so a job keeps logging there after
    its user joins another team (only if still unbound: a concurrent bind wins)."""
    if token.team_id is None:
        ApiToken.objects.filter(pk=token.pk, team__isnull=True).update(team=team)
        token.team = team
    return token
