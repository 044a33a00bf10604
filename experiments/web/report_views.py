"""Velocity, flow and iteration pages. Thin: parse input, call selectors/services, render."""

from __future__ import annotations

import csv
import datetime as dt
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from ..access import ensure_can_edit, get_membership_or_404
from ..errors import DomainError, PermissionDeniedError
from ..models import Board, Card, CardKind, Iteration, IterationItem, IterationState, Membership, Stage, Team
from ..selectors.flow import FLOW_CSV_HEADER, KIND_LABELS, flow_csv_rows, flow_report
from ..selectors.velocity import (
    GROUPS,
    VELOCITY_CSV_HEADER,
    format_hours,
    parse_report_params,
    velocity_csv_rows,
    velocity_report,
)
from ..selectors.verdicts import verdict_fdr_summary
from ..services.iterations import (
    iteration_close,
    iteration_commit_card,
    iteration_create,
    iteration_start,
    iteration_uncommit_card,
)

ITERATIONS_PER_PAGE = 30
FLOW_TABLE_ROWS = 200  # the finished-cards table; the CSV has them all


def _team_boards(team: Team) -> list[Board]:
    return list(Board.objects.filter(team=team).order_by("archived", "name"))


def _report_context(request: HttpRequest, team_slug: str, *, kinds: tuple[str, ...]) -> dict[str, Any]:
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    team = membership.team
    boards = _team_boards(team)
    params = parse_report_params(team=team, data=request.GET, boards=boards, kinds=kinds)
    return {"team": team, "membership": membership, "boards": boards, "params": params, "groups": GROUPS}


def _csv_response(filename: str, header: list[str], rows: list[list[str]]) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(header)
    writer.writerows(rows)
    return response


@login_required
def velocity(request: HttpRequest, team_slug: str) -> HttpResponse:
    ctx = _report_context(request, team_slug, kinds=("work",))
    report = velocity_report(team=ctx["team"], params=ctx["params"])
    ctx.update(
        report=report,
        figures=report.figures,
        tab="velocity",
        fdr=verdict_fdr_summary(
            team=ctx["team"], board=ctx["params"].board, start=ctx["params"].start, end=ctx["params"].end
        ),
        first_signal_text=format_hours(report.totals.first_signal_median),
        decision_text=format_hours(report.totals.decision_median),
        rows=[_velocity_row_view(r) for r in report.rows],
        totals=_velocity_row_view(report.totals),
    )
    return render(request, "reports/velocity.html", ctx)


def _velocity_row_view(row: Any) -> dict[str, Any]:
    rate = row.completion_rate
    return {
        "row": row,
        "rate": None if rate is None else round(rate * 100),
        "first_signal": format_hours(row.first_signal_median),
        "decision": format_hours(row.decision_median),
    }


@login_required
def velocity_csv(request: HttpRequest, team_slug: str) -> HttpResponse:
    ctx = _report_context(request, team_slug, kinds=("work",))
    report = velocity_report(team=ctx["team"], params=ctx["params"])
    p = ctx["params"]
    name = f"{ctx['team'].slug}-velocity-{p.group}-{p.date_from}-{p.date_to}.csv"
    return _csv_response(name, VELOCITY_CSV_HEADER, velocity_csv_rows(report))


@login_required
def flow(request: HttpRequest, team_slug: str) -> HttpResponse:
    ctx = _report_context(request, team_slug, kinds=tuple(KIND_LABELS))
    report = flow_report(team=ctx["team"], params=ctx["params"])
    stats = report.stats
    now = report.now
    ctx.update(
        report=report,
        figures=report.figures,
        tab="flow",
        kind_labels=KIND_LABELS,
        cycle=[(p, format_hours(v)) for p, v in stats["cycle"].items()],
        lead=[(p, format_hours(v)) for p, v in stats["lead"].items()],
        oldest_text=format_hours(stats["oldest_age"]),
        throughput_rows=list(zip(report.periods, report.throughput, strict=True)),
        done_rows=[
            {"item": i, "cycle": format_hours(i.cycle_hours), "lead": format_hours(i.lead_hours)}
            for i in list(reversed(report.done))[:FLOW_TABLE_ROWS]
        ],
        done_total=len(report.done),
        aging_rows=[
            {"item": i, "age": format_hours(age), "over_p85": _over(age, stats["cycle"][85])}
            for i, age in report.aging
        ],
        now=now,
    )
    return render(request, "reports/flow.html", ctx)


def _over(age: float, p85: float | None) -> bool:
    return p85 is not None and age > p85


@login_required
def flow_csv(request: HttpRequest, team_slug: str) -> HttpResponse:
    ctx = _report_context(request, team_slug, kinds=tuple(KIND_LABELS))
    report = flow_report(team=ctx["team"], params=ctx["params"])
    p = ctx["params"]
    name = f"{ctx['team'].slug}-flow-{p.kind}-{p.date_from}-{p.date_to}.csv"
    return _csv_response(name, FLOW_CSV_HEADER, flow_csv_rows(report))


# --- Iterations ------------------------------------------------------------------------------


class IterationForm(forms.Form):
    name = forms.CharField(max_length=80, required=False, help_text="Leave empty for a name from the dates.")
    goal = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    start = forms.DateTimeField(
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        error_messages={"invalid": "Enter a start date and time, e.g. 2025-03-04 09:30."},
    )
    days = forms.IntegerField(
        min_value=1, max_value=90, label="Length (days)",
        error_messages={"min_value": "An iteration lasts at least 1 day.", "max_value": "At most 90 days."},
    )
    start_now = forms.BooleanField(required=False, label="Start it right away")


def _suggested_start(team: Team, latest: Iteration | None) -> dt.datetime:
    """The end of the latest iteration if it is recent, else today's standup time (team timezone)."""
    zone = team.zone
    now = timezone.now()
    if latest is not None and latest.end >= now - dt.timedelta(days=1):
        return timezone.localtime(latest.end, zone)
    today = timezone.localtime(now, zone).date()
    return dt.datetime.combine(today, team.standup_time).replace(tzinfo=zone)


def _membership(request: HttpRequest, team_slug: str) -> Membership:
    return get_membership_or_404(user=request.user, team_slug=team_slug)


def _forbidden(request: HttpRequest, membership: Membership, error: PermissionDeniedError) -> HttpResponse:
    return render(
        request, "reports/forbidden.html", {"team": membership.team, "message": error.message}, status=403
    )


@login_required
def iterations(request: HttpRequest, team_slug: str) -> HttpResponse:
    membership = _membership(request, team_slug)
    team = membership.team
    zone = team.zone
    form: IterationForm | None = None
    if request.method == "POST":
        try:
            ensure_can_edit(membership)
        except PermissionDeniedError as error:
            return _forbidden(request, membership, error)
        form = IterationForm(request.POST)
        with timezone.override(zone):  # the start time is typed in the team's time zone
            valid = form.is_valid()
        if valid:
            data = form.cleaned_data
            start = data["start"]
            try:
                iteration = iteration_create(
                    team=team, start=start, end=start + dt.timedelta(days=data["days"]),
                    name=data["name"], goal=data["goal"], actor=request.user,
                )
                if data["start_now"]:
                    iteration = iteration_start(iteration=iteration, actor=request.user)
            except DomainError as error:
                form.add_error(None, error.message)
            else:
                verb = "started" if iteration.state == IterationState.ACTIVE else "planned"
                messages.success(request, f"'{iteration.name}' {verb}. Commit cards to it below.")
                return redirect("iteration_detail", team_slug=team.slug, iteration_id=iteration.pk)

    qs = (
        Iteration.objects.filter(team=team)
        .annotate(
            n_items=Count("items"),
            n_completed=Count("items", filter=Q(items__completed=True)),
            n_carried=Count("items", filter=Q(items__carried_over=True)),
        )
        .order_by("-start")
    )
    page = Paginator(qs, ITERATIONS_PER_PAGE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    active = next((it for it in rows if it.state == IterationState.ACTIVE), None)
    if form is None:
        latest = rows[0] if rows and page.number == 1 else None
        start = _suggested_start(team, latest)
        form = IterationForm(
            initial={"start": start.replace(tzinfo=None), "days": team.iteration_days, "start_now": active is None}
        )
    return render(
        request,
        "reports/iterations.html",
        {
            "team": team, "membership": membership, "page": page, "iterations": rows, "active": active,
            "form": form, "tab": "iterations", "zone_name": team.timezone, "can_edit": membership.can_edit,
            "now": timezone.now(),
        },
    )


def _iteration_or_404(team: Team, iteration_id: int) -> Iteration:
    iteration = Iteration.objects.filter(team=team, pk=iteration_id).first()
    if iteration is None:
        raise Http404("No such iteration.")
    return iteration


@login_required
def iteration_detail(request: HttpRequest, team_slug: str, iteration_id: int) -> HttpResponse:
    membership = _membership(request, team_slug)
    team = membership.team
    iteration = _iteration_or_404(team, iteration_id)
    items = list(
        IterationItem.objects.filter(iteration=iteration)
        .select_related("card__board", "card__column", "card__owner")
        .order_by("card__board__name", "card__number")
    )
    candidates: list[Card] = []
    if iteration.state != IterationState.CLOSED and membership.can_edit:
        candidates = list(
            Card.objects.filter(board__team=team, board__archived=False,
                                kind__in=[CardKind.HYPOTHESIS, CardKind.EXPERIMENT])
            .exclude(column__stage=Stage.DONE)
            .exclude(iteration_items__iteration=iteration)
            .select_related("board", "column", "iteration")
            .order_by("board__name", "column__position", "position", "pk")
        )
    summary = iteration.summary or {}
    frozen = {row.get("card_id"): row for row in summary.get("items", [])}
    # Frozen rows for cards deleted since the close stay listed from the summary.
    live_ids = {item.card_id for item in items}
    missing = [row for cid, row in frozen.items() if cid not in live_ids]
    return render(
        request,
        "reports/iteration_detail.html",
        {
            "team": team, "membership": membership, "iteration": iteration, "items": items,
            "candidates": candidates, "summary": summary, "missing": missing, "tab": "iterations",
            "can_edit": membership.can_edit, "stage_done": Stage.DONE,
            "rate": None if summary.get("completion_rate") is None else round(summary["completion_rate"] * 100),
            "has_active": Iteration.objects.filter(team=team, state=IterationState.ACTIVE)
            .exclude(pk=iteration.pk).exists(),
            "now": timezone.now(),
        },
    )


def _iteration_action(request: HttpRequest, team_slug: str, iteration_id: int) -> tuple[Membership, Iteration]:
    membership = _membership(request, team_slug)
    return membership, _iteration_or_404(membership.team, iteration_id)


def _back(team: Team, iteration: Iteration) -> HttpResponse:
    return redirect(reverse("iteration_detail", kwargs={"team_slug": team.slug, "iteration_id": iteration.pk}))


@login_required
@require_POST
def iteration_start_view(request: HttpRequest, team_slug: str, iteration_id: int) -> HttpResponse:
    membership, iteration = _iteration_action(request, team_slug, iteration_id)
    try:
        ensure_can_edit(membership)
        iteration = iteration_start(iteration=iteration, actor=request.user)
    except PermissionDeniedError as error:
        return _forbidden(request, membership, error)
    except DomainError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"'{iteration.name}' is now the active iteration.")
    return _back(membership.team, iteration)


@login_required
@require_POST
def iteration_close_view(request: HttpRequest, team_slug: str, iteration_id: int) -> HttpResponse:
    membership, iteration = _iteration_action(request, team_slug, iteration_id)
    carry = request.POST.get("unfinished", "carry") != "drop"
    try:
        ensure_can_edit(membership)
        iteration = iteration_close(iteration=iteration, actor=request.user, carry_over=carry)
    except PermissionDeniedError as error:
        return _forbidden(request, membership, error)
    except DomainError as error:
        messages.error(request, error.message)
    else:
        s = iteration.summary
        messages.success(
            request,
            f"'{iteration.name}' closed: {s['completed']} of {s['committed']} committed cards done"
            + (f", {s['carried_over']} carried over to the next iteration." if s["carried_over"] else "."),
        )
    return _back(membership.team, iteration)


@login_required
@require_POST
def iteration_commit_view(request: HttpRequest, team_slug: str, iteration_id: int) -> HttpResponse:
    membership, iteration = _iteration_action(request, team_slug, iteration_id)
    try:
        ensure_can_edit(membership)
    except PermissionDeniedError as error:
        return _forbidden(request, membership, error)
    ids = [raw for raw in request.POST.getlist("card") if raw.isdigit()]
    if not ids:
        messages.error(request, "Tick at least one card to commit.")
        return _back(membership.team, iteration)
    cards = list(Card.objects.filter(board__team=membership.team, pk__in=ids).order_by("pk"))
    if len(cards) != len(set(ids)):
        messages.error(request, "Some of those cards are not on this team any more; nothing was committed.")
        return _back(membership.team, iteration)
    try:
        with transaction.atomic():  # all or nothing, so the message below is true
            for card in cards:
                iteration_commit_card(iteration=iteration, card=card, actor=request.user)
    except DomainError as error:
        messages.error(request, f"Nothing was committed: {error.message}")
        return _back(membership.team, iteration)
    keys = ", ".join(c.key for c in cards[:5]) + ("…" if len(cards) > 5 else "")
    messages.success(request, f"Committed {len(cards)} card{'s' if len(cards) != 1 else ''} ({keys}).")
    return _back(membership.team, iteration)


@login_required
@require_POST
def iteration_uncommit_view(request: HttpRequest, team_slug: str, iteration_id: int) -> HttpResponse:
    membership, iteration = _iteration_action(request, team_slug, iteration_id)
    raw = request.POST.get("card", "")
    card = Card.objects.filter(board__team=membership.team, pk=raw).first() if raw.isdigit() else None
    if card is None:
        raise Http404("No such card.")
    try:
        ensure_can_edit(membership)
        iteration_uncommit_card(iteration=iteration, card=card, actor=request.user)
    except PermissionDeniedError as error:
        return _forbidden(request, membership, error)
    except DomainError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"{card.key} taken out of '{iteration.name}'.")
    return _back(membership.team, iteration)
