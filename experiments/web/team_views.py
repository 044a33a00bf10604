"""Team settings area: settings, members and MLflow sources.

Everyone on the team can read these pages; only managers change anything. A POST from a member
or viewer answers 403 with a message; people outside the team get 404 (access.py), and so do ids
of memberships or sources that belong to another team."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from ..access import get_membership_or_404
from ..errors import DomainError, PermissionDeniedError
from ..models import Membership, MlflowSource, Role, Team
from ..selectors.teams import team_memberships, team_mlflow_sources
from ..services.invitations import invitation_create
from ..services.teams import (
    ITERATION_DAYS_MAX,
    STUCK_AFTER_MAX_HOURS,
    membership_add,
    membership_remove,
    membership_set_role,
    mlflow_source_create,
    mlflow_source_delete,
    mlflow_source_sync_now,
    mlflow_source_update,
    mlflow_token_follows,
    team_settings_clean,
    team_update,
    timezone_choices,
)
from .forms import apply_domain_error

TeamView = Callable[..., HttpResponse]


def team_page(view: TeamView) -> TeamView:
    """Resolve the caller's membership (404 outside the team) and turn PermissionDeniedError into a 403 page."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, team_slug: str, *args: Any, **kwargs: Any) -> HttpResponse:
        membership = get_membership_or_404(user=request.user, team_slug=team_slug)
        try:
            return view(request, membership, *args, **kwargs)
        except PermissionDeniedError as exc:
            return render(
                request,
                "team/forbidden.html",
                {"team": membership.team, "membership": membership, "message": exc.message},
                status=403,
            )

    return wrapper


def _ensure_manager(membership: Membership) -> None:
    if membership.role != Role.MANAGER:
        raise PermissionDeniedError(
            f"Only managers can change the settings of {membership.team.name}; "
            f"you are a {membership.get_role_display().lower()} on this team. Ask a manager."
        )


def _context(membership: Membership, tab: str, **extra: Any) -> dict[str, Any]:
    return {
        "team": membership.team,
        "membership": membership,
        "is_manager": membership.role == Role.MANAGER,
        "tab": tab,
        **extra,
    }


# --- Settings -------------------------------------------------------------------------------------


class TeamSettingsForm(forms.Form):
    """Parses types only; team_update owns the rules and their messages."""

    name = forms.CharField(max_length=120, required=False, widget=forms.TextInput(attrs={"required": True}))
    standup_time = forms.TimeField(
        required=False,
        label="Daily standup time",
        help_text="When the team meets, in the team's time zone.",
        widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
        error_messages={"invalid": "Enter a time such as 09:30."},
    )
    standup_window_start = forms.TimeField(
        required=False,
        label="Standup window starts (day before)",
        help_text="The standup reviews what happened from this time yesterday until the standup. Default 18:00.",
        widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
        error_messages={"invalid": "Enter a time such as 18:00."},
    )
    timezone = forms.CharField(
        max_length=64,
        required=False,
        label="Time zone",
        help_text="IANA name, e.g. Europe/Berlin, America/New_York or UTC.",
        widget=forms.TextInput(attrs={"list": "timezone-options", "autocomplete": "off", "spellcheck": "false"}),
    )
    stuck_after_hours = forms.IntegerField(
        required=False,
        label="Stuck after (hours)",
        help_text="A running card with no run activity for this long is shown as stuck at standup.",
        widget=forms.NumberInput(attrs={"min": 1, "max": STUCK_AFTER_MAX_HOURS}),
        error_messages={"invalid": "Enter a whole number of hours."},
    )
    iteration_days = forms.IntegerField(
        required=False,
        label="Iteration length (days)",
        help_text="1 = daily sprints: code by day, train overnight, analyse in the morning.",
        widget=forms.NumberInput(attrs={"min": 1, "max": ITERATION_DAYS_MAX}),
        error_messages={"invalid": "Enter a whole number of days."},
    )
    digest_emails = forms.CharField(
        required=False,
        label="Extra digest recipients",
        help_text="One email address per line. Team members with an email get the digest anyway.",
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "lead@example.com\nstakeholder@example.com"}),
    )
    webhook_url = forms.CharField(
        max_length=500,
        required=False,
        label="Chat webhook URL",
        help_text="Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat…) for the standup digest. "
        "Leave empty to disable.",
        widget=forms.URLInput(attrs={"placeholder": "https://hooks.slack.com/services/…", "spellcheck": "false"}),
    )

    def __init__(self, *args: Any, read_only: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if read_only:
            for field in self.fields.values():
                field.disabled = True


def _team_initial(team: Team, *, show_webhook: bool) -> dict[str, Any]:
    webhook = team.webhook_url
    if webhook and not show_webhook:
        # Webhook URLs are bearer secrets: anyone holding one can post to the channel.
        webhook = f"Set (posts to {urlsplit(webhook).hostname or 'a chat server'})"
    return {
        "name": team.name,
        "standup_time": team.standup_time,
        "standup_window_start": team.standup_window_start,
        "timezone": team.timezone,
        "stuck_after_hours": team.stuck_after_hours,
        "iteration_days": team.iteration_days,
        "digest_emails": team.digest_emails,
        "webhook_url": webhook,
    }


@team_page
@require_http_methods(["GET", "POST"])
def team_settings(request: HttpRequest, membership: Membership) -> HttpResponse:
    team = membership.team
    is_manager = membership.role == Role.MANAGER
    status = 200
    if request.method == "POST":
        _ensure_manager(membership)
        form = TeamSettingsForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                team_update(team=team, **data)
            except DomainError as exc:
                apply_domain_error(form, exc)
            else:
                messages.success(request, "Team settings saved.")
                return redirect("team_settings", team_slug=team.slug)
        else:
            # Report the domain rules for the fields that did parse too, so one round trip shows everything.
            _, errors = team_settings_clean({k: v for k, v in form.cleaned_data.items() if k not in form.errors})
            for field, message in errors.items():
                form.add_error(field, message)
        team.refresh_from_db()  # the nav and title show the saved name, not the rejected one
        status = 400
    else:
        form = TeamSettingsForm(initial=_team_initial(team, show_webhook=is_manager), read_only=not is_manager)
    context = _context(membership, "settings", form=form, timezones=timezone_choices() if is_manager else [])
    return render(request, "team/settings.html", context, status=status)


# --- Members --------------------------------------------------------------------------------------


class MemberAddForm(forms.Form):
    user = forms.CharField(
        max_length=254,
        required=False,
        label="Username or email",
        widget=forms.TextInput(attrs={"placeholder": "ada or ada@example.com", "autocomplete": "off"}),
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=254, label="Email", widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


def _members_response(
    request: HttpRequest, membership: Membership, *, add_form: MemberAddForm | None = None,
    row_error: tuple[int, str] | None = None, status: int = 200, invite_form: InviteForm | None = None,
) -> HttpResponse:
    memberships = list(team_memberships(team_id=membership.team_id))
    managers = sum(1 for m in memberships if m.role == Role.MANAGER)
    context = _context(
        membership,
        "members",
        memberships=memberships,
        manager_count=managers,
        roles=Role.choices,
        add_form=add_form or MemberAddForm(),
        invite_form=invite_form or InviteForm(prefix="invite"),
        row_error=row_error,
    )
    return render(request, "team/members.html", context, status=status)


@team_page
@require_http_methods(["GET", "POST"])
def team_members(request: HttpRequest, membership: Membership) -> HttpResponse:
    if request.method == "GET":
        return _members_response(request, membership)
    _ensure_manager(membership)
    form = MemberAddForm(request.POST)
    if form.is_valid():
        try:
            added = membership_add(
                team=membership.team, user_identifier=form.cleaned_data["user"], role=form.cleaned_data["role"]
            )
        except DomainError as exc:
            apply_domain_error(form, exc)
        else:
            messages.success(
                request, f"Added {added.user} (@{added.user.username}) as {added.get_role_display().lower()}."
            )
            return redirect("team_members", team_slug=membership.team.slug)
    return _members_response(request, membership, add_form=form, status=400)


@team_page
@require_POST
def team_member_invite(request: HttpRequest, membership: Membership) -> HttpResponse:
    _ensure_manager(membership)
    form = InviteForm(request.POST, prefix="invite")
    if form.is_valid():
        try:
            invitation_create(team=membership.team, email=form.cleaned_data["email"],
                              role=form.cleaned_data["role"], actor=request.user)
        except DomainError as exc:
            apply_domain_error(form, exc)
        else:
            messages.success(request, f"Invitation sent to {form.cleaned_data['email']}.")
            return redirect("team_members", team_slug=membership.team.slug)
    return _members_response(request, membership, invite_form=form, status=400)


def _team_membership(membership: Membership, membership_id: int) -> Membership:
    return get_object_or_404(Membership.objects.select_related("user"), pk=membership_id, team_id=membership.team_id)


@team_page
@require_POST
def team_member_role(request: HttpRequest, membership: Membership, membership_id: int) -> HttpResponse:
    _ensure_manager(membership)
    target = _team_membership(membership, membership_id)
    try:
        membership_set_role(membership=target, role=request.POST.get("role", ""))
    except DomainError as exc:
        return _members_response(request, membership, row_error=(target.pk, exc.message), status=400)
    messages.success(request, f"{target.user} is now a {target.get_role_display().lower()}.")
    if target.pk == membership.pk and target.role != Role.MANAGER:
        return redirect("team_settings", team_slug=membership.team.slug)
    return redirect("team_members", team_slug=membership.team.slug)


@team_page
@require_POST
def team_member_remove(request: HttpRequest, membership: Membership, membership_id: int) -> HttpResponse:
    _ensure_manager(membership)
    target = _team_membership(membership, membership_id)
    try:
        membership_remove(membership=target)  # target.pk is None afterwards
    except DomainError as exc:
        return _members_response(request, membership, row_error=(target.pk, exc.message), status=400)
    if target.user_id == request.user.pk:
        messages.success(request, f"You left {membership.team.name}.")
        return redirect("home")
    messages.success(request, f"Removed {target.user} (@{target.user.username}) from {membership.team.name}.")
    return redirect("team_members", team_slug=membership.team.slug)


# --- MLflow sources -------------------------------------------------------------------------------


class MlflowSourceForm(forms.Form):
    name = forms.CharField(
        max_length=80,
        required=False,
        help_text="Imported runs are labelled import:<name>.",
        widget=forms.TextInput(attrs={"placeholder": "mlflow-prod", "required": True}),
    )
    tracking_uri = forms.CharField(
        max_length=500,
        required=False,
        label="Tracking URI",
        help_text="Base URL of the MLflow server (http or https).",
        widget=forms.URLInput(attrs={"placeholder": "http://mlflow.example.com:5000", "required": True,
                                     "spellcheck": "false"}),
    )
    token = forms.CharField(
        max_length=500,
        required=False,
        label="Access token",
        help_text="Sent as a Bearer token. Optional; stored on the server and never shown again.",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}, render_value=False),
    )
    clear_token = forms.BooleanField(required=False, label="Remove the stored token")
    experiment_names = forms.CharField(
        required=False,
        label="Experiments to import",
        help_text="One MLflow experiment name per line; leave empty to import all experiments.",
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    enabled = forms.BooleanField(
        required=False, initial=True, label="Enabled", help_text="Disabled sources are skipped by scheduled syncs."
    )

    def __init__(self, *args: Any, source: MlflowSource | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source
        if source is None:
            del self.fields["clear_token"]
        elif source.token:
            self.fields["token"].help_text = (
                "A token is stored. Leave empty to keep it, or enter a new one. "
                "A tracking URI on another host removes it; enter it again then."
            )
            self.fields["token"].widget.attrs["placeholder"] = "•••••••• (stored)"
        else:
            del self.fields["clear_token"]


def _display_uri(uri: str) -> str:
    """Tracking URI without any user:password@ part, for display."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


def _sources_response(
    request: HttpRequest, membership: Membership, *, form: MlflowSourceForm | None = None,
    row_error: tuple[int, str] | None = None, status: int = 200,
) -> HttpResponse:
    sources = list(team_mlflow_sources(team_id=membership.team_id))
    for source in sources:
        source.display_uri = _display_uri(source.tracking_uri)  # type: ignore[attr-defined]
        source.experiment_list = [n for n in source.experiment_names.splitlines() if n.strip()]  # type: ignore[attr-defined]
    context = _context(
        membership, "mlflow", sources=sources, form=form or MlflowSourceForm(), row_error=row_error
    )
    return render(request, "team/mlflow_sources.html", context, status=status)


@team_page
@require_http_methods(["GET", "POST"])
def team_mlflow_sources_view(request: HttpRequest, membership: Membership) -> HttpResponse:
    if request.method == "GET":
        return _sources_response(request, membership)
    _ensure_manager(membership)
    form = MlflowSourceForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            source = mlflow_source_create(
                team=membership.team,
                name=data["name"],
                tracking_uri=data["tracking_uri"],
                token=data["token"],
                experiment_names=data["experiment_names"],
                enabled=data["enabled"],
            )
        except DomainError as exc:
            apply_domain_error(form, exc)
        else:
            messages.success(request, f"Added MLflow source {source.name}. Use “Sync now” to import right away.")
            return redirect("team_mlflow_sources", team_slug=membership.team.slug)
    return _sources_response(request, membership, form=form, status=400)


def _team_source(membership: Membership, source_id: int) -> MlflowSource:
    return get_object_or_404(MlflowSource, pk=source_id, team_id=membership.team_id)


@team_page
@require_http_methods(["GET", "POST"])
def team_mlflow_source_edit(request: HttpRequest, membership: Membership, source_id: int) -> HttpResponse:
    _ensure_manager(membership)  # the edit form is for managers only; others read the list
    source = _team_source(membership, source_id)
    status = 200
    if request.method == "POST":
        form = MlflowSourceForm(request.POST, source=source)
        if form.is_valid():
            data = form.cleaned_data
            token_dropped = bool(
                source.token and not data["token"] and data["tracking_uri"]
                and not mlflow_token_follows(source.tracking_uri, data["tracking_uri"].strip())
            )
            try:
                mlflow_source_update(
                    source=source,
                    name=data["name"],
                    tracking_uri=data["tracking_uri"],
                    token=data["token"] or None,
                    clear_token=data.get("clear_token", False),
                    experiment_names=data["experiment_names"],
                    enabled=data["enabled"],
                )
            except DomainError as exc:
                apply_domain_error(form, exc)
            else:
                messages.success(request, f"Saved MLflow source {source.name}.")
                if token_dropped and not source.token:
                    messages.warning(request, "The stored token was removed because the server changed. "
                                     "Enter the token for the new server to use one.")
                return redirect("team_mlflow_sources", team_slug=membership.team.slug)
        source.refresh_from_db()
        status = 400
    else:
        form = MlflowSourceForm(
            source=source,
            initial={
                "name": source.name,
                "tracking_uri": source.tracking_uri,
                "experiment_names": source.experiment_names,
                "enabled": source.enabled,
            },
        )
    context = _context(membership, "mlflow", source=source, form=form)
    return render(request, "team/mlflow_source_edit.html", context, status=status)


@team_page
@require_POST
def team_mlflow_source_toggle(request: HttpRequest, membership: Membership, source_id: int) -> HttpResponse:
    _ensure_manager(membership)
    source = _team_source(membership, source_id)
    enable = request.POST.get("enabled") == "1"
    mlflow_source_update(source=source, enabled=enable)
    if enable:
        messages.success(request, f"Enabled {source.name}; scheduled syncs include it again.")
    else:
        messages.success(request, f"Disabled {source.name}; scheduled syncs skip it until you enable it.")
    return redirect("team_mlflow_sources", team_slug=membership.team.slug)


@team_page
@require_POST
def team_mlflow_source_sync(request: HttpRequest, membership: Membership, source_id: int) -> HttpResponse:
    _ensure_manager(membership)
    source = _team_source(membership, source_id)
    try:
        mlflow_source_sync_now(source=source)
    except DomainError as exc:
        return _sources_response(request, membership, row_error=(source.pk, exc.message), status=400)
    messages.success(
        request, f"Sync of {source.name} queued. Last sync and errors below update when it finishes; reload to see."
    )
    return redirect("team_mlflow_sources", team_slug=membership.team.slug)


@team_page
@require_POST
def team_mlflow_source_delete(request: HttpRequest, membership: Membership, source_id: int) -> HttpResponse:
    _ensure_manager(membership)
    source = _team_source(membership, source_id)
    name = source.name
    kept = mlflow_source_delete(source=source)
    note = f" The {kept} run{'s' if kept != 1 else ''} it imported stay{'s' if kept == 1 else ''}." if kept else ""
    messages.success(request, f"Deleted MLflow source {name}.{note}")
    return redirect("team_mlflow_sources", team_slug=membership.team.slug)
