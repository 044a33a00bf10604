from __future__ import annotations

import hashlib
import secrets

from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from ..errors import DomainError
from ..models import ApiToken, Membership, Team, User

TOKEN_PREFIX = "mlb_"


def _digest(secret: str) -> str:
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
    token = ApiToken.objects.create(user=user, team=team, name=name[:80], prefix=secret[:12], digest=_digest(secret))
    return token, secret


def token_authenticate(*, secret: str, with_team_role: bool = False) -> ApiToken | None:
    """The live token for `secret`, or None. `with_team_role` also fetches, in the same query, the
    user's membership of the token's team as `team_membership_id` and `team_role` (None when the
    token has no team or the user left it): the MLflow endpoint's hot path needs both per request."""
    queryset = ApiToken.objects.select_related("user", "team").filter(
        digest=_digest(secret), revoked_at__isnull=True, user__is_active=True
    )
    if with_team_role:
        membership = Membership.objects.filter(user_id=OuterRef("user_id"), team_id=OuterRef("team_id"))
        queryset = queryset.annotate(
            team_membership_id=Subquery(membership.values("pk")[:1]),
            team_role=Subquery(membership.values("role")[:1]),
        )
    token = queryset.first()
    if token is not None:
        now = timezone.now()
        # Avoid a write per request: last-used is precise to the minute.
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


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
