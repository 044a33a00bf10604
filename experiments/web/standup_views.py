"""Standup pages: the morning review of overnight runs, decisions in place (htmx), digest history."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST

from ..access import ensure_can_edit, get_membership_or_404
from ..errors import ConflictError, DomainError, PermissionDeniedError
from ..models import Board, Card, Column, Membership, StandupDigest, VerdictChoice, VerdictProposal, VerdictStatus
from ..selectors.standup import (
    card_sparkline_points,
    fmt_value,
    parse_since,
    proposal_stat_items,
    standup_overview,
    standup_window,
)
from ..selectors.verdicts import verdict_fdr_summary
from ..services.cards import card_add_note, card_move
from ..services.standup import window_label

# A standup reads the first cards of each section; the rest are one click away, so a night with
# thousands of runs on hundreds of cards still renders quickly.
CARDS_PER_SECTION = 60
PRESETS = (("", "Since last standup"), ("24h", "Last 24 h"), ("3d", "Last 3 days"), ("7d", "Last week"))


def _team_membership(request: HttpRequest, team_slug: str) -> Membership:
    return get_membership_or_404(user=request.user, team_slug=team_slug)


def _board_of(membership: Membership, raw: Any) -> Board | None:
    if raw in (None, ""):
        return None
    try:
        board_id = int(raw)
    except (TypeError, ValueError):
        raise Http404("No such board.") from None
    board = Board.objects.filter(pk=board_id, team_id=membership.team_id).first()
    if board is None:
        raise Http404("No such board.")
    return board


@login_required
@require_GET
def standup_page(request: HttpRequest, team_slug: str, board_id: int | None = None) -> HttpResponse:
    membership = _team_membership(request, team_slug)
    team = membership.team
    board = _board_of(membership, board_id if board_id is not None else request.GET.get("board"))
    since = request.GET.get("since", "").strip()
    show_all = request.GET.get("all") == "1"
    status, since_error = 200, ""
    try:
        window = standup_window(team=team, since=since)
    except DomainError as exc:
        status, since_error = 400, exc.message
        window = standup_window(team=team)
    data = standup_overview(team=team, board=board, window=window)
    context = {
        "team": team,
        "data": data,
        "board": board,
        "since": since,
        "since_error": since_error,
        "presets": PRESETS,
        "can_edit": membership.can_edit,
        "verdict_choices": VerdictChoice.choices,
        "fdr": verdict_fdr_summary(team=team, board=board, start=window.start, end=window.end),
        "since_param": window.start.isoformat(),
        "show_all": show_all,
        "section_list": [
            {
                "key": key, "title": title, "groups": groups if show_all else groups[:CARDS_PER_SECTION],
                "total_cards": len(groups), "runs": data.counts[f"{key}_linked"], "help": help_text, "empty": empty,
            }
            for key, title, groups, help_text, empty in (
                ("failed", "Failed", data.failed, "Runs that failed or were killed in the window.",
                 "No run failed in this window."),
                ("finished", "Finished", data.finished,
                 "Mean ± std of the hypothesis metric over each card's finished runs (all seeds) against its "
                 "baseline.", "No run finished in this window."),
                ("running", "Still running", data.running, "Runs running or scheduled right now.",
                 "Nothing is running right now."),
            )
        ],
    }
    return render(request, "standup/page.html", context, status=status)


def _card_in_team(membership: Membership, card_id: int) -> Card:
    card = (
        Card.objects.select_related("board", "column", "owner")
        .filter(pk=card_id, board__team_id=membership.team_id)
        .first()
    )
    if card is None:
        raise Http404("No such card.")
    return card


@login_required
@require_GET
def standup_sparkline(request: HttpRequest, team_slug: str, card_id: int) -> JsonResponse:
    """Lazy per-card chart data, fetched by standup.js when the card scrolls into view."""
    membership = _team_membership(request, team_slug)
    card = _card_in_team(membership, card_id)
    card = Card.objects.select_related("parent__parent").get(pk=card.pk)
    try:
        since = parse_since(request.GET.get("since"), team=membership.team, now=_now())
    except DomainError as exc:
        return JsonResponse({"error": exc.message}, status=400)
    return JsonResponse({"card": card.key, **card_sparkline_points(card=card, window_start=since)})


def _now():
    from django.utils import timezone

    return timezone.now()


def _changed_trigger(response: HttpResponse, *cards: Card) -> HttpResponse:
    # Other rows of the same cards (a card can sit in several sections) update their column and version.
    changed = [{"card": c.pk, "column": c.column.name, "version": c.version} for c in cards]
    response["HX-Trigger"] = json.dumps({"standup:card-changed": {"cards": changed}})
    return response


def _denied(request: HttpRequest, exc: PermissionDeniedError) -> HttpResponse:
    return render(request, "standup/_error.html", {"message": exc.message}, status=403)


@login_required
@require_POST
def standup_card_move(request: HttpRequest, team_slug: str, card_id: int) -> HttpResponse:
    membership = _team_membership(request, team_slug)
    card = _card_in_team(membership, card_id)
    try:
        ensure_can_edit(membership)
    except PermissionDeniedError as exc:
        return _denied(request, exc)
    columns = list(Column.objects.filter(board_id=card.board_id).order_by("position", "id"))
    context: dict[str, Any] = {"team": membership.team, "card": card, "columns": columns, "can_edit": True}
    status = 200
    column = next((c for c in columns if str(c.pk) == request.POST.get("column", "")), None)
    try:
        version = int(request.POST.get("version", ""))
    except ValueError:
        version = None
    if column is None:
        context["move_error"], status = "Choose a column on this card's board.", 400
    elif version is None:
        context["move_error"], status = "The form is missing the card version; reload the page.", 400
    elif column.pk == card.column_id:
        context["move_error"], status = f"{card.key} is already in {column.name}.", 400
    else:
        try:
            card = card_move(card=card, to_column=column, actor=request.user, expected_version=version)
            context.update(card=card, move_message=f"Moved to {column.name}.")
        except ConflictError as exc:
            card.refresh_from_db()
            context.update(card=card, move_error=exc.message, conflict=True)
            status = 409
        except DomainError as exc:
            context["move_error"], status = exc.message, 400
    response = render(request, "standup/_move_form.html", context, status=status)
    return _changed_trigger(response, card) if status in (200, 409) else response


@login_required
@require_POST
def standup_card_note(request: HttpRequest, team_slug: str, card_id: int) -> HttpResponse:
    membership = _team_membership(request, team_slug)
    card = _card_in_team(membership, card_id)
    try:
        ensure_can_edit(membership)
    except PermissionDeniedError as exc:
        return _denied(request, exc)
    text = request.POST.get("text", "")
    context: dict[str, Any] = {"team": membership.team, "card": card, "can_edit": True}
    try:
        card_add_note(card=card, actor=request.user, text=text)
    except DomainError as exc:
        context.update(note_error=exc.message, note_text=text)
        return render(request, "standup/_notes.html", context, status=400)
    card.refresh_from_db()
    context.update(card=card, note_added=True)
    return _changed_trigger(render(request, "standup/_notes.html", context), card)


@login_required
@require_POST
def standup_verdict_decide(request: HttpRequest, team_slug: str, proposal_id: int) -> HttpResponse:
    membership = _team_membership(request, team_slug)
    proposal = get_object_or_404(
        VerdictProposal.objects.select_related("card__board", "card__column", "card__owner", "decided_by"),
        pk=proposal_id,
        card__board__team_id=membership.team_id,
    )
    try:
        ensure_can_edit(membership)
    except PermissionDeniedError as exc:
        return _denied(request, exc)
    context: dict[str, Any] = {"team": membership.team, "p": proposal, "can_edit": True,
                               "verdict_choices": VerdictChoice.choices}
    action = request.POST.get("action", "confirm")
    verdict = request.POST.get("verdict") or None
    note = request.POST.get("note", "").strip()
    status = 200
    if proposal.status != VerdictStatus.PROPOSED:
        context["decide_error"], status = "This verdict was already decided; reload to see it.", 409
    elif action == "override" and verdict not in VerdictChoice.values:
        context["decide_error"], status = "Pick the verdict you want instead of the proposed one.", 400
    else:
        try:
            from ..services.verdicts import verdict_decide
        except ImportError:
            context["decide_error"], status = "Verdict decisions are not available on this server yet.", 503
        else:
            try:
                proposal = verdict_decide(
                    proposal=proposal, actor=request.user, verdict=verdict if action == "override" else None, note=note
                )
            except DomainError as exc:
                context["decide_error"], status = exc.message, exc.status_code
            else:
                proposal = VerdictProposal.objects.select_related(
                    "card__board", "card__column", "card__owner", "decided_by"
                ).get(pk=proposal.pk)
                context["p"] = proposal
    proposal.stat_items = proposal_stat_items(proposal.stats)
    response = render(request, "standup/_proposal.html", context, status=status)
    if status != 200:
        return response
    # A decision also moves the hypothesis's experiments on with it: their rows follow too.
    moved = Card.objects.filter(Q(pk=proposal.card_id) | Q(parent_id=proposal.card_id)).select_related("column")
    return _changed_trigger(response, *moved)


# --- History -------------------------------------------------------------------------------------


@login_required
@require_GET
def standup_history(request: HttpRequest, team_slug: str) -> HttpResponse:
    membership = _team_membership(request, team_slug)
    digests = (
        StandupDigest.objects.filter(team_id=membership.team_id)
        .select_related("board")
        .only("id", "board__name", "window_start", "window_end", "created_at", "content", "email_sent_at",
              "webhook_sent_at", "webhook_error")
        .order_by("-window_end", "-id")
    )
    page = Paginator(digests, 30).get_page(request.GET.get("page"))
    return render(request, "standup/history.html", {"team": membership.team, "page": page})


@login_required
@require_GET
def standup_digest_detail(request: HttpRequest, team_slug: str, digest_id: int) -> HttpResponse:
    membership = _team_membership(request, team_slug)
    digest = get_object_or_404(
        StandupDigest.objects.select_related("board"), pk=digest_id, team_id=membership.team_id
    )
    cards = [
        {
            **c,
            "mean_display": fmt_value(c.get("mean")),
            "std_display": fmt_value(c.get("std")) if c.get("std") is not None else "",
            "baseline_display": fmt_value(c.get("baseline")),
            "delta_display": fmt_value(c.get("delta"), signed=True),
        }
        for c in digest.content.get("cards", [])
    ]
    neighbours = StandupDigest.objects.filter(team_id=membership.team_id, board_id=digest.board_id)
    context = {
        "team": membership.team,
        "digest": digest,
        "content": digest.content,
        "cards": cards,
        "window_label": window_label(digest.content) if digest.content.get("window") else "",
        "newer": neighbours.filter(window_end__gt=digest.window_end).order_by("window_end").first(),
        "older": neighbours.filter(window_end__lt=digest.window_end).order_by("-window_end").first(),
    }
    return render(request, "standup/digest_detail.html", context)
