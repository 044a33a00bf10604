"""Onboarding: "Connect your training script" with a live check for the first run, and the
standup history's "build today's digest" button."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ..access import get_membership_or_404
from ..models import Board, Run
from ..services.standup import standup_digest_build
from ..services.tokens import token_create


def _tracking_uri(request: HttpRequest) -> str:
    return request.build_absolute_uri("/mlflow").rstrip("/")


@login_required
@require_http_methods(["GET", "POST"])
def connect_page(request: HttpRequest, team_slug: str) -> HttpResponse:
    """A copy-paste train.py with this team's tracking URI; POST creates a token shown once."""
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    team = membership.team
    secret = ""
    if request.method == "POST":
        if not membership.can_edit:
            return HttpResponse("Viewers cannot create tokens for this team.", status=403)
        _token, secret = token_create(
            user=request.user, name=f"train.py ({team.slug}) {timezone.now():%Y-%m-%d %H:%M}", team=team
        )
    board = Board.objects.filter(team=team, archived=False).order_by("name").first()
    card = board.cards.filter(kind="hypothesis").order_by("-created_at").first() if board else None
    return render(request, "onboarding/connect.html", {
        "team": team, "membership": membership, "secret": secret, "tracking_uri": _tracking_uri(request),
        "card_key": card.key if card else "", "since": timezone.now().isoformat(),
        "can_edit": membership.can_edit,
    })


@login_required
@require_GET
def connect_status(request: HttpRequest, team_slug: str) -> HttpResponse:
    """Polled by htmx every two seconds until a run arrives after the page was opened."""
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    since = parse_datetime(request.GET.get("since", "")) or timezone.now()
    run = (
        Run.objects.filter(team=membership.team, created_at__gte=since).order_by("created_at", "id").first()
    )
    response = render(request, "onboarding/_status.html", {"team": membership.team, "run": run,
                                                            "since": since.isoformat()})
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def standup_build_now(request: HttpRequest, team_slug: str) -> HttpResponse:
    """The standup history's empty state: store today's digest now instead of waiting for standup time."""
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    if not membership.can_edit:
        return HttpResponse("Viewers cannot build digests.", status=403)
    digest = standup_digest_build(team=membership.team, window_end=timezone.now().replace(second=0, microsecond=0))
    messages.success(request, "Today's digest is built. It was stored, not emailed.")
    return redirect("standup_digest_detail", team_slug, digest.pk)
