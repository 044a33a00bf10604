"""Team settings, memberships and MLflow sources (writes).

Every function raises DomainError with a `field` (and an `errors` dict when several inputs are
wrong) so the settings pages can show the message next to the right input. Permission checks
(managers only) stay in the views, which know who is asking."""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction

from .. import outbound
from ..errors import DomainError
from ..models import Card, Membership, MlflowSource, Role, Run, Team, TeamworkSettings, TrackingExperiment, User
from .mlflow_import import source_label, uri_origin

STUCK_AFTER_MAX_HOURS = 24 * 30
ITERATION_DAYS_MAX = 90
WEBHOOK_MAX_LENGTH = Team._meta.get_field("webhook_url").max_length or 200
TRACKING_URI_MAX_LENGTH = MlflowSource._meta.get_field("tracking_uri").max_length or 500
TOKEN_MAX_LENGTH = MlflowSource._meta.get_field("token").max_length or 500
SOURCE_NAME_MAX_LENGTH = MlflowSource._meta.get_field("name").max_length or 80


def _errors(errors: dict[str, str]) -> DomainError:
    field, message = next(iter(errors.items()))
    error = DomainError(message, field=field)
    error.errors = errors  # type: ignore[attr-defined]
    return error


@functools.cache
def _timezones() -> frozenset[str]:
    # available_timezones() walks the tz database on disk; once per process is enough.
    return frozenset(zoneinfo.available_timezones())


def timezone_choices() -> list[str]:
    return sorted(_timezones())


def validate_timezone(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise DomainError("Choose a time zone, e.g. Europe/Berlin or UTC.", field="timezone")
    if name not in _timezones():
        # Be forgiving about case only; anything else must be an IANA name as typed.
        matches = [tz for tz in _timezones() if tz.lower() == name.lower()]
        if len(matches) == 1:
            return matches[0]
        raise DomainError(
            f"“{name}” is not a known time zone. Use an IANA name such as Europe/Berlin, America/New_York or UTC.",
            field="timezone",
        )
    return name


def _http_url_problem(url: str, *, what: str, example: str) -> str | None:
    """Why `url` is not an absolute http(s) URL, or None. Host names without a dot (docker service
    names like http://mlflow:5000) are fine, which Django's URLValidator would reject."""
    if any(ch.isspace() for ch in url):
        return f"The {what} must not contain spaces."
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        return f"The {what} “{url}” is not a valid URL; use e.g. {example}."
    if parts.scheme not in ("http", "https"):
        return f"The {what} must start with http:// or https://, e.g. {example}."
    if not parts.hostname:
        return f"The {what} “{url}” has no host name; use e.g. {example}."
    problem = outbound.url_problem(url)
    if problem:
        return f"The {what} cannot be used: {problem}"
    return None


def parse_digest_emails(raw: str) -> list[str]:
    """One address per line (commas also accepted); blank lines and duplicates are dropped."""
    emails: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate((raw or "").splitlines(), start=1):
        for item in line.split(","):
            address = item.strip()
            if not address:
                continue
            try:
                validate_email(address)
            except ValidationError:
                raise DomainError(
                    f"Line {number}: “{address[:80]}” is not a valid email address. Put one address per line.",
                    field="digest_emails",
                ) from None
            if address.lower() not in seen:
                seen.add(address.lower())
                emails.append(address)
    return emails


def team_settings_clean(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Normalise the team settings present in `values`; returns (clean values, errors by field).

    Only the given keys are checked, so a form can report these rules next to its own parse errors."""
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if "name" in values:
        name = (values["name"] or "").strip()
        if not name:
            errors["name"] = "Give the team a name."
        elif len(name) > Team._meta.get_field("name").max_length:
            errors["name"] = "Keep the team name under 120 characters."
        clean["name"] = name
    if "standup_time" in values:
        if values["standup_time"] is None:
            errors["standup_time"] = "Set the daily standup time, e.g. 09:30."
        clean["standup_time"] = values["standup_time"]
    if "standup_window_start" in values:
        if values["standup_window_start"] is None:
            errors["standup_window_start"] = "Set when the standup window starts the day before, e.g. 18:00."
        clean["standup_window_start"] = values["standup_window_start"]
    if "timezone" in values:
        try:
            clean["timezone"] = validate_timezone(values["timezone"])
        except DomainError as exc:
            errors["timezone"] = exc.message
    if "stuck_after_hours" in values:
        hours = values["stuck_after_hours"]
        if hours is None or not 1 <= hours <= STUCK_AFTER_MAX_HOURS:
            errors["stuck_after_hours"] = f"Use a whole number of hours between 1 and {STUCK_AFTER_MAX_HOURS}."
        clean["stuck_after_hours"] = hours
    if "iteration_days" in values:
        days = values["iteration_days"]
        if days is None or not 1 <= days <= ITERATION_DAYS_MAX:
            errors["iteration_days"] = (
                f"Use a whole number of days between 1 and {ITERATION_DAYS_MAX} (1 = daily sprints)."
            )
        clean["iteration_days"] = days
    if "digest_emails" in values:
        try:
            clean["digest_emails"] = "\n".join(parse_digest_emails(values["digest_emails"]))
        except DomainError as exc:
            errors["digest_emails"] = exc.message
    if "webhook_url" in values:
        url = (values["webhook_url"] or "").strip()
        if url:
            problem = _http_url_problem(url, what="webhook URL", example="https://hooks.slack.com/services/T000/B000/XXXX")
            if problem is None and len(url) > WEBHOOK_MAX_LENGTH:
                problem = f"The webhook URL is longer than {WEBHOOK_MAX_LENGTH} characters."
            if problem:
                errors["webhook_url"] = problem
        clean["webhook_url"] = url
    return clean, errors


@transaction.atomic
def team_update(
    *,
    team: Team,
    name: str,
    standup_time: dt.time | None,
    standup_window_start: dt.time | None,
    timezone: str,
    stuck_after_hours: int | None,
    iteration_days: int | None,
    digest_emails: str = "",
    webhook_url: str = "",
) -> Team:
    """Validate and save every team setting at once; all problems are reported together, nothing is
    saved unless everything is valid."""
    clean, errors = team_settings_clean(
        {
            "name": name,
            "standup_time": standup_time,
            "standup_window_start": standup_window_start,
            "timezone": timezone,
            "stuck_after_hours": stuck_after_hours,
            "iteration_days": iteration_days,
            "digest_emails": digest_emails,
            "webhook_url": webhook_url,
        }
    )
    if errors:
        raise _errors(errors)
    for field, value in clean.items():
        setattr(team, field, value)
    team.save(update_fields=[*clean])
    return team


# --- Memberships ----------------------------------------------------------------------------------


def _check_role(role: str) -> None:
    if role not in Role.values:
        raise DomainError(f"Unknown role “{role}”; use one of {', '.join(Role.labels)}.", field="role")


def _find_user(identifier: str) -> User:
    identifier = (identifier or "").strip().lstrip("@")
    if not identifier:
        raise DomainError("Enter the username or email address of the person to add.", field="user")
    user = User.objects.filter(username__iexact=identifier).first() if "@" not in identifier else None
    if user is None and "@" in identifier:
        matches = list(User.objects.filter(email__iexact=identifier)[:2])
        if len(matches) > 1:
            raise DomainError(
                f"Several accounts use {identifier}; add the person by username instead.", field="user"
            )
        user = matches[0] if matches else None
    if user is None:
        raise DomainError(
            f"No account with the username or email “{identifier}”. They need to have an mlboard account first.",
            field="user",
        )
    if not user.is_active:
        raise DomainError(f"The account {user.username} is deactivated.", field="user")
    return user


@transaction.atomic
def membership_add(*, team: Team, user_identifier: str, role: str = Role.MEMBER) -> Membership:
    """Add an existing user (by username or email) to the team."""
    _check_role(role)
    user = _find_user(user_identifier)
    existing = Membership.objects.filter(team=team, user=user).first()
    if existing is not None:
        raise DomainError(
            f"{user} (@{user.username}) is already on {team.name} as {existing.get_role_display().lower()}.",
            field="user",
        )
    return Membership.objects.create(team=team, user=user, role=role)


def _lock_managers(team_id: int) -> list[int]:
    """Lock the team's manager rows so two concurrent demotions cannot both pass the last-manager check."""
    return list(
        Membership.objects.select_for_update()
        .filter(team_id=team_id, role=Role.MANAGER)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _ensure_not_last_manager(membership: Membership, *, action: str) -> None:
    if _lock_managers(membership.team_id) == [membership.pk]:
        raise DomainError(
            f"{membership.user} is the team's only manager and cannot be {action}. "
            "Make someone else a manager first.",
            field="role",
        )


@transaction.atomic
def membership_set_role(*, membership: Membership, role: str) -> Membership:
    _check_role(role)
    _lock_managers(membership.team_id)
    membership.refresh_from_db(fields=["role"])  # the page may be stale; decide on the locked row
    if membership.role == role:
        return membership
    if membership.role == Role.MANAGER:
        _ensure_not_last_manager(membership, action=f"made a {Role(role).label.lower()}")
    membership.role = role
    membership.save(update_fields=["role"])
    if role == Role.VIEWER:
        # Viewers cannot own cards: hand their cards back to the team.
        Card.objects.filter(board__team_id=membership.team_id, owner_id=membership.user_id).update(owner=None)
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    _lock_managers(membership.team_id)
    membership.refresh_from_db(fields=["role"])
    if membership.role == Role.MANAGER:
        _ensure_not_last_manager(membership, action="removed")
    membership.delete()


# --- MLflow sources -------------------------------------------------------------------------------


def _clean_source_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise DomainError("Give the source a name, e.g. the server's host name.", field="name")
    if len(name) > SOURCE_NAME_MAX_LENGTH:
        raise DomainError(f"Keep the name under {SOURCE_NAME_MAX_LENGTH} characters.", field="name")
    return name


def _clean_tracking_uri(uri: str) -> str:
    uri = (uri or "").strip().rstrip("/")
    if not uri:
        raise DomainError("Enter the tracking URI of the MLflow server.", field="tracking_uri")
    problem = _http_url_problem(uri, what="tracking URI", example="http://mlflow.example.com:5000")
    if problem is None and len(uri) > TRACKING_URI_MAX_LENGTH:
        problem = f"The tracking URI is longer than {TRACKING_URI_MAX_LENGTH} characters."
    if problem:
        raise DomainError(problem, field="tracking_uri")
    return uri


def _clean_token(token: str) -> str:
    token = (token or "").strip()
    if len(token) > TOKEN_MAX_LENGTH:
        raise DomainError(f"The token is longer than {TOKEN_MAX_LENGTH} characters.", field="token")
    return token


def _clean_experiment_names(raw: str) -> str:
    names: list[str] = []
    for line in (raw or "").splitlines():
        if line.strip() and line.strip() not in names:
            names.append(line.strip())
    return "\n".join(names)


def _collect(errors: dict[str, str], fn: Callable[[str], str], value: str) -> str | None:
    """Run one field's cleaner, recording its message so all field errors are reported together."""
    try:
        return fn(value)
    except DomainError as exc:
        errors[exc.field or "__all__"] = exc.message
        return None


def _label_in_use(team: Team, name: str) -> bool:
    """Runs and experiments imported under this name (by a deleted source) would collide on re-import."""
    label = source_label(MlflowSource(name=name))
    return (
        Run.objects.filter(team=team, source=label).exists()
        or TrackingExperiment.objects.filter(team=team, source=label).exists()
    )


@transaction.atomic
def mlflow_source_create(
    *,
    team: Team,
    name: str,
    tracking_uri: str,
    token: str = "",
    experiment_names: str = "",
    enabled: bool = True,
) -> MlflowSource:
    errors: dict[str, str] = {}
    clean_name = _collect(errors, _clean_source_name, name)
    clean_uri = _collect(errors, _clean_tracking_uri, tracking_uri)
    clean_token = _collect(errors, _clean_token, token)
    if clean_name and MlflowSource.objects.filter(team=team, name__iexact=clean_name).exists():
        errors["name"] = f"This team already has an MLflow source named “{clean_name}”."
    if errors:
        raise _errors(errors)
    return MlflowSource.objects.create(
        team=team,
        name=clean_name,
        tracking_uri=clean_uri,
        token=clean_token,
        experiment_names=_clean_experiment_names(experiment_names),
        enabled=enabled,
    )


def mlflow_token_follows(old_uri: str, new_uri: str) -> bool:
    """Whether a stored token stays with a source whose URI changes from `old_uri` to `new_uri`:
    only when scheme, host and port stay the same (a new path on the same server is fine)."""
    return uri_origin(old_uri) == uri_origin(new_uri)


@transaction.atomic
def mlflow_source_update(
    *,
    source: MlflowSource,
    name: str | None = None,
    tracking_uri: str | None = None,
    token: str | None = None,
    clear_token: bool = False,
    experiment_names: str | None = None,
    enabled: bool | None = None,
) -> MlflowSource:
    """Change only what is given. `token=None` (or blank) keeps the stored token; `clear_token` drops it.
    A new URI on another scheme, host or port drops the stored token unless a new one is given.

    Renaming relabels the runs and experiments already imported, so the next sync updates them
    instead of importing everything again. A new tracking URI resets the sync cursor: experiment
    ids of another server mean nothing for this one."""
    errors: dict[str, str] = {}
    clean_name = _collect(errors, _clean_source_name, name) if name is not None else source.name
    clean_uri = _collect(errors, _clean_tracking_uri, tracking_uri) if tracking_uri is not None else source.tracking_uri
    clean_token = _collect(errors, _clean_token, token) if token else None
    renamed = clean_name is not None and clean_name != source.name
    if renamed:
        others = MlflowSource.objects.filter(team_id=source.team_id, name__iexact=clean_name).exclude(pk=source.pk)
        if others.exists():
            errors["name"] = f"This team already has an MLflow source named “{clean_name}”."
        elif clean_name.lower() != source.name.lower() and _label_in_use(source.team, clean_name):
            errors["name"] = (
                f"Runs imported earlier under the name “{clean_name}” still exist; choose another name."
            )
    if errors:
        raise _errors(errors)

    update_fields: list[str] = []
    if renamed:
        old_label, new_label = source_label(source), source_label(MlflowSource(name=clean_name))
        Run.objects.filter(team_id=source.team_id, source=old_label).update(source=new_label)
        TrackingExperiment.objects.filter(team_id=source.team_id, source=old_label).update(source=new_label)
        source.name = clean_name
        update_fields.append("name")
    if clean_uri != source.tracking_uri:
        if source.token and not clean_token and not mlflow_token_follows(source.tracking_uri, clean_uri):
            # The token was given for the old server; sending it to another host would hand it over.
            clear_token = True
        source.tracking_uri = clean_uri
        source.cursor = {}
        update_fields += ["tracking_uri", "cursor"]
    if clear_token:
        source.token = ""
        update_fields.append("token")
    elif clean_token:
        source.token = clean_token
        update_fields.append("token")
    if experiment_names is not None:
        source.experiment_names = _clean_experiment_names(experiment_names)
        update_fields.append("experiment_names")
    if enabled is not None and enabled != source.enabled:
        source.enabled = enabled
        update_fields.append("enabled")
    if update_fields:
        source.save(update_fields=sorted(set(update_fields)))
    return source


@transaction.atomic
def mlflow_source_delete(*, source: MlflowSource) -> int:
    """Delete the source; runs already imported stay. Returns how many imported runs remain."""
    kept = Run.objects.filter(team_id=source.team_id, source=source_label(source)).count()
    source.delete()
    return kept


def mlflow_source_sync_now(*, source: MlflowSource) -> None:
    """Queue an incremental import once the current transaction commits (the task re-reads the row)."""
    from ..tasks import sync_mlflow_source

    if not source.enabled:
        raise DomainError(f"“{source.name}” is disabled; enable it before syncing.", field="enabled")
    source_id = source.pk
    transaction.on_commit(lambda: sync_mlflow_source.delay(source_id))




# --- Teamwork settings (WIP strictness, Done archiving) -----------------------------------------


def teamwork_settings(*, team_id: int) -> TeamworkSettings:
    """The team's board-polish settings, created with defaults on first use."""
    obj, _ = TeamworkSettings.objects.get_or_create(team_id=team_id)
    return obj


ARCHIVE_DAYS_MAX = 3650


@transaction.atomic
def teamwork_settings_update(
    *, team: Team, wip_strict: bool, archive_done_after_days: int | None
) -> TeamworkSettings:
    if archive_done_after_days is not None and not 1 <= archive_done_after_days <= ARCHIVE_DAYS_MAX:
        raise DomainError(
            f"Archive Done cards after 1 to {ARCHIVE_DAYS_MAX} days, or leave it empty to keep them.",
            field="archive_done_after_days",
        )
    obj = teamwork_settings(team_id=team.pk)
    obj.wip_strict = wip_strict
    obj.archive_done_after_days = archive_done_after_days
    obj.save()
    return obj
