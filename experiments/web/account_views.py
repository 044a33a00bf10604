"""Account pages: personal API tokens. The secret is shown once, in the response to the create
form, and never stored (only its SHA-256 digest is)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from ..access import user_teams
from ..api.selectors import tokens_for
from ..errors import DomainError
from ..models import ApiToken, Team, User
from ..services.tokens import token_create, token_revoke


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=80,
        label="Name",
        help_text="What it is for, e.g. “GPU cluster” or “CI”.",
        widget=forms.TextInput(attrs={"placeholder": "GPU cluster", "autocomplete": "off"}),
        error_messages={"required": "Give the token a name so you can recognise it later."},
    )
    team = forms.ModelChoiceField(
        queryset=Team.objects.none(),
        required=False,
        label="Default team for MLflow logging",
        empty_label="No default team",
        help_text="Runs logged through the MLflow-compatible endpoint with this token go to this team.",
    )

    def __init__(self, *args: object, user: User, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        teams = user_teams(user).order_by("name")
        field = self.fields["team"]
        field.queryset = teams  # type: ignore[attr-defined]
        if len(teams) == 1:
            field.initial = teams[0].pk


def _render(request: HttpRequest, form: TokenForm, *, status: int = 200, **extra: object) -> HttpResponse:
    context = {
        "form": form,
        "tokens": tokens_for(user=request.user),
        "team": user_teams(request.user).order_by("name").first(),
        "mlflow_uri": request.build_absolute_uri("/mlflow").rstrip("/"),
        "api_uri": request.build_absolute_uri("/api/"),
        **extra,
    }
    return render(request, "account/tokens.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def tokens_page(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _render(request, TokenForm(user=request.user))
    form = TokenForm(request.POST, user=request.user)
    if not form.is_valid():
        return _render(request, form, status=400)
    try:
        token, secret = token_create(user=request.user, name=form.cleaned_data["name"], team=form.cleaned_data["team"])
    except DomainError as error:
        form.add_error(error.field if error.field in form.fields else None, error.message)
        return _render(request, form, status=400)
    response = _render(request, TokenForm(user=request.user), status=201, new_token=token, new_secret=secret)
    # The one response that carries the secret must not be cached anywhere.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def token_revoke_view(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    if token.revoked_at is None:
        token_revoke(token=token)
        messages.success(request, f"Token “{token.name}” ({token.prefix}…) revoked; it no longer works.")
    else:
        messages.info(request, f"Token “{token.name}” was already revoked.")
    return redirect("tokens")
