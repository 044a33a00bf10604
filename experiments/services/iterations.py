"""Iteration writes: time-boxes (1 day by default: code by day, train overnight, analyse in the morning).

Closing an iteration freezes how each committed card stood (completed, carried over, stage) on its
IterationItem and in Iteration.summary, so reports keep showing what was committed and finished even
after the cards move on. roll_iterations (a Celery beat task) closes ended iterations and keeps a
running cadence going; every step here is safe to repeat.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from ..errors import DomainError
from ..models import (
    Card,
    CardKind,
    EventKind,
    Iteration,
    IterationItem,
    IterationState,
    Stage,
    Team,
    User,
)
from .cards import event_record


def local_days_after(when: dt.datetime, days: int, zone: dt.tzinfo) -> dt.datetime:
    """The same local wall-clock time `days` calendar days later in `zone`, as UTC.

    Not `when + timedelta(days=...)` on a UTC time: across a DST change that is an hour off the
    team's local start time. A wall time that does not exist that day (inside the spring-forward
    gap) resolves with the offset before the change, i.e. as much later as the gap is long."""
    wall = timezone.localtime(when, zone).replace(tzinfo=None) + dt.timedelta(days=days)
    return wall.replace(tzinfo=zone).astimezone(dt.UTC)


def iteration_default_name(*, team: Team, start: dt.datetime, end: dt.datetime) -> str:
    zone = team.zone
    first = timezone.localtime(start, zone).date()
    last = timezone.localtime(end - dt.timedelta(microseconds=1), zone).date()
    if end <= local_days_after(start, 1, zone):  # one day (23 or 25 h at a DST change): named after it
        return f"Day {first:%a %d %b %Y}"
    return f"{first:%d %b} to {last:%d %b %Y}"


def _overlapping(
    *, team: Team, start: dt.datetime, end: dt.datetime, exclude_id: int | None = None
) -> Iteration | None:
    qs = Iteration.objects.filter(team=team, start__lt=end, end__gt=start)
    if exclude_id is not None:
        qs = qs.exclude(pk=exclude_id)
    return qs.order_by("start").first()


@transaction.atomic
def iteration_create(
    *,
    team: Team,
    start: dt.datetime,
    end: dt.datetime | None = None,
    name: str = "",
    goal: str = "",
    actor: User | None = None,
) -> Iteration:
    """Plan an iteration. `end` defaults to the team's iteration length later, in local calendar days."""
    if timezone.is_naive(start):
        start = timezone.make_aware(start, team.zone)
    if end is None:
        end = local_days_after(start, team.iteration_days or 1, team.zone)
    elif timezone.is_naive(end):
        end = timezone.make_aware(end, team.zone)
    if end <= start:
        raise DomainError("An iteration must end after it starts.", field="end")
    if end - start > dt.timedelta(days=90):
        raise DomainError("An iteration can last at most 90 days.", field="end")
    clash = _overlapping(team=team, start=start, end=end)
    if clash is not None:
        raise DomainError(
            f"It would overlap '{clash.name}' ({_span(team, clash)}); iterations of a team cannot overlap.",
            field="start",
        )
    name = (name or "").strip()[:80] or iteration_default_name(team=team, start=start, end=end)
    return Iteration.objects.create(team=team, name=name, goal=(goal or "").strip(), start=start, end=end)


def _span(team: Team, iteration: Iteration) -> str:
    zone = team.zone
    return (
        f"{timezone.localtime(iteration.start, zone):%Y-%m-%d %H:%M} → "
        f"{timezone.localtime(iteration.end, zone):%Y-%m-%d %H:%M}"
    )


def _set_card_iteration(*, card: Card, iteration: Iteration | None, actor: User | None) -> None:
    """Point the card at its iteration; bumps the version so stale board edits are detected."""
    if card.iteration_id == (iteration.pk if iteration else None):
        return
    old = card.iteration_id
    Card.objects.filter(pk=card.pk).update(iteration=iteration, version=F("version") + 1)
    card.iteration = iteration
    card.version += 1
    event_record(
        card=card, kind=EventKind.EDITED, actor=actor,
        data={"changed": {"iteration": [old, iteration.pk if iteration else None]}},
    )


@transaction.atomic
def iteration_commit_card(*, iteration: Iteration, card: Card, actor: User | None) -> IterationItem:
    """Commit a card to a planned or active iteration (idempotent)."""
    iteration = Iteration.objects.select_for_update().get(pk=iteration.pk)
    card = Card.objects.select_related("board", "column").get(pk=card.pk)
    if iteration.state == IterationState.CLOSED:
        raise DomainError(f"'{iteration.name}' is closed; commit the card to an open iteration.")
    if card.board.team_id != iteration.team_id:
        raise DomainError("That card belongs to another team.", field="card")
    if card.kind == CardKind.RESULT:
        raise DomainError(f"{card.key} is a result; commit the hypothesis or experiment it belongs to.", field="card")
    item, _ = IterationItem.objects.get_or_create(
        iteration=iteration, card=card, defaults={"committed_at": timezone.now()}
    )
    _set_card_iteration(card=card, iteration=iteration, actor=actor)
    return item


@transaction.atomic
def iteration_uncommit_card(*, iteration: Iteration, card: Card, actor: User | None) -> None:
    """Take a card out of an open iteration's plan (closed iterations are frozen)."""
    iteration = Iteration.objects.select_for_update().get(pk=iteration.pk)
    if iteration.state == IterationState.CLOSED:
        raise DomainError(f"'{iteration.name}' is closed; its commitments are frozen.")
    deleted, _ = IterationItem.objects.filter(iteration=iteration, card=card).delete()
    if deleted:
        card = Card.objects.get(pk=card.pk)
        if card.iteration_id == iteration.pk:
            _set_card_iteration(card=card, iteration=None, actor=actor)


@transaction.atomic
def iteration_start(*, iteration: Iteration, actor: User | None = None) -> Iteration:
    """Make a planned iteration the active one and bring in the previous iteration's carried-over cards."""
    iteration = Iteration.objects.select_for_update().get(pk=iteration.pk)
    if iteration.state == IterationState.ACTIVE:
        return iteration
    if iteration.state == IterationState.CLOSED:
        raise DomainError(f"'{iteration.name}' is already closed.")
    active = Iteration.objects.filter(team_id=iteration.team_id, state=IterationState.ACTIVE).first()
    if active is not None:
        raise DomainError(f"'{active.name}' is still active; close it before starting '{iteration.name}'.")
    iteration.state = IterationState.ACTIVE
    iteration.save(update_fields=["state"])
    _pull_carried_over(iteration=iteration, actor=actor)
    return iteration


def _pull_carried_over(*, iteration: Iteration, actor: User | None) -> int:
    previous = (
        Iteration.objects.filter(team_id=iteration.team_id, state=IterationState.CLOSED, start__lt=iteration.start)
        .order_by("-start")
        .first()
    )
    if previous is None:
        return 0
    cards = (
        Card.objects.filter(iteration_items__iteration=previous, iteration_items__carried_over=True)
        .exclude(column__stage=Stage.DONE)
        .exclude(iteration_items__iteration=iteration)
    )
    pulled = 0
    for card in cards:
        IterationItem.objects.get_or_create(iteration=iteration, card=card, defaults={"committed_at": timezone.now()})
        # Only re-point cards that still belong to the closed iteration (not ones planned elsewhere since).
        if card.iteration_id in (None, previous.pk):
            _set_card_iteration(card=card, iteration=iteration, actor=actor)
        pulled += 1
    return pulled


@transaction.atomic
def iteration_close(
    *, iteration: Iteration, actor: User | None = None, carry_over: bool = True, now: dt.datetime | None = None
) -> Iteration:
    """Freeze each committed card's outcome. Unfinished cards are carried over to the next iteration
    that starts (carry_over=True) or dropped from the plan (carry_over=False)."""
    iteration = Iteration.objects.select_for_update().select_related("team").get(pk=iteration.pk)
    if iteration.state == IterationState.CLOSED:
        raise DomainError(f"'{iteration.name}' is already closed.")
    now = now or timezone.now()
    items = list(
        IterationItem.objects.filter(iteration=iteration)
        .select_related("card__column")
        .order_by("card__board_id", "card__number")
    )
    rows: list[dict[str, Any]] = []
    by_stage: dict[str, int] = {}
    dropped_cards: list[Card] = []
    for item in items:
        card = item.card
        stage = card.column.stage
        item.stage_at_close = stage
        item.completed = stage == Stage.DONE
        item.carried_over = not item.completed and carry_over
        if not item.completed and not carry_over:
            dropped_cards.append(card)
        by_stage[stage] = by_stage.get(stage, 0) + 1
        rows.append(
            {
                "card_id": card.pk, "key": card.key, "title": card.title, "kind": card.kind,
                "stage_at_close": stage, "completed": item.completed, "carried_over": item.carried_over,
                "added_late": item.committed_at > iteration.start,
            }
        )
    IterationItem.objects.bulk_update(items, ["completed", "carried_over", "stage_at_close"])
    committed = len(items)
    completed = sum(1 for r in rows if r["completed"])
    carried = sum(1 for r in rows if r["carried_over"])
    iteration.summary = {
        "committed": committed,
        "completed": completed,
        "carried_over": carried,
        "dropped": committed - completed - carried,
        "added_late": sum(1 for r in rows if r["added_late"]),
        "completion_rate": round(completed / committed, 4) if committed else None,
        "by_stage": by_stage,
        "items": rows,
        "closed_by": actor.username if actor is not None and actor.is_authenticated else "mlboard",
    }
    iteration.state = IterationState.CLOSED
    iteration.closed_at = now
    iteration.save(update_fields=["summary", "state", "closed_at"])
    for card in dropped_cards:
        if card.iteration_id == iteration.pk:
            _set_card_iteration(card=card, iteration=None, actor=actor)
    return iteration


@transaction.atomic
def iteration_roll(*, team: Team, now: dt.datetime | None = None) -> Iteration | None:
    """Close every iteration that has ended and keep a running cadence going.

    The next iteration is opened only when an *active* iteration ended (the team is using
    iterations); a team that closed its last iteration by hand is left alone. Returns the
    iteration active afterwards, if any. Repeating the call changes nothing.
    """
    team = Team.objects.select_for_update().get(pk=team.pk)  # one roller per team at a time
    now = now or timezone.now()
    ended = list(
        Iteration.objects.filter(team=team, end__lte=now)
        .exclude(state=IterationState.CLOSED)
        .order_by("start")
    )
    cadence_running = any(it.state == IterationState.ACTIVE for it in ended)
    for iteration in ended:
        iteration_close(iteration=iteration, actor=None, carry_over=True, now=now)

    active = Iteration.objects.filter(team=team, state=IterationState.ACTIVE).first()
    if active is not None:
        return active
    due = (
        Iteration.objects.filter(team=team, state=IterationState.PLANNED, start__lte=now, end__gt=now)
        .order_by("start")
        .first()
    )
    if due is None and cadence_running:
        due = _next_in_cadence(team=team, now=now)
    if due is None:
        return None
    return iteration_start(iteration=due, actor=None)


def _next_in_cadence(*, team: Team, now: dt.datetime) -> Iteration | None:
    last = Iteration.objects.filter(team=team, end__lte=now).order_by("-end").first()
    days, zone = team.iteration_days or 1, team.zone
    # Each iteration starts at the previous one's local start time, `days` local calendar days on,
    # so a daily cadence stays at 00:00 (or 09:00) local through DST changes.
    start = last.end if last is not None else now
    end = local_days_after(start, days, zone)
    while end <= now:  # the scheduler was down: skip whole missed iterations
        start, end = end, local_days_after(end, days, zone)
    upcoming = Iteration.objects.filter(team=team, start__gt=start, start__lt=end).order_by("start").first()
    if upcoming is not None:
        end = upcoming.start  # shorten rather than overlap an iteration someone already planned
    if end <= now:
        return None
    return iteration_create(team=team, start=start, end=end)


def teams_with_iterations() -> list[int]:
    return list(
        Team.objects.filter(Q(iterations__state=IterationState.ACTIVE) | Q(iterations__state=IterationState.PLANNED))
        .order_by("pk")
        .values_list("pk", flat=True)
        .distinct()
    )
