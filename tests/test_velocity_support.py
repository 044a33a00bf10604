"""Helpers shared by the iteration, velocity and flow tests (no tests here).

`clock` makes services believe it is a given time; `history` bulk-creates N iterations, cards,
events and runs so query counts can be compared at N and 2N rows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from unittest import mock

from experiments.models import (
    Board,
    Card,
    CardEvent,
    CardKind,
    CardRun,
    Column,
    EventKind,
    Iteration,
    IterationItem,
    IterationState,
    Run,
    RunStatus,
    Stage,
    Team,
)

UTC = dt.UTC


def t(day: int, hour: int = 0, minute: int = 0, month: int = 3) -> dt.datetime:
    """A UTC time in March 2025 (Mon 3 Mar .. ), to keep scenarios readable."""
    return dt.datetime(2025, month, day, hour, minute, tzinfo=UTC)


@contextlib.contextmanager
def clock(at: dt.datetime) -> Iterator[None]:
    with mock.patch("django.utils.timezone.now", return_value=at):
        yield


def column(board: Board, stage: str) -> Column:
    return board.columns.filter(stage=stage).order_by("position").first()


def backdate(card: Card, when: dt.datetime) -> Card:
    """Card.created_at's default is bound at import, so move creation time (and its event) by hand."""
    Card.objects.filter(pk=card.pk).update(created_at=when)
    CardEvent.objects.filter(card=card, kind=EventKind.CREATED).update(created_at=when)
    card.refresh_from_db()
    return card


def make_card(board: Board, kind: str, title: str, when: dt.datetime, actor=None, **fields) -> Card:
    from experiments.services.cards import card_create

    with clock(when):
        card = card_create(board=board, kind=kind, title=title, actor=actor, **fields)
    return backdate(card, when)


def move(card: Card, stage: str, when: dt.datetime, actor=None) -> Card:
    from experiments.services.cards import card_move

    card.refresh_from_db()
    with clock(when):
        return card_move(card=card, to_column=column(card.board, stage), actor=actor, expected_version=card.version)


def run_for(card: Card | None, team: Team, *, end: dt.datetime | None, status: str = RunStatus.FINISHED,
            start: dt.datetime | None = None, name: str = "") -> Run:
    """A tracked run, linked without the automatic card moves (scenarios move cards explicitly)."""
    run = Run.objects.create(
        team=team, name=name, status=status, start_time=start or end, end_time=end,
        external_id=f"r{Run.objects.count() + 1}",
    )
    if card is not None:
        CardRun.objects.create(card=card, run=run)
    return run


def history(team: Team, board: Board, n: int, *, base: dt.datetime | None = None) -> None:
    """N closed daily iterations, each with two committed cards (one done, one carried over),
    full event trails, and three runs per day (two finished and linked, one failed). bulk_create only."""
    base = base or t(1)
    cols = {c.stage: c for c in board.columns.all()}
    day = dt.timedelta(days=1)
    number = Board.objects.values_list("next_number", flat=True).get(pk=board.pk)
    cards: list[Card] = []
    for i in range(n):
        start = base + i * day
        for j, kind in enumerate((CardKind.HYPOTHESIS, CardKind.EXPERIMENT)):
            done = j == 0
            cards.append(Card(
                board=board, column=cols[Stage.DONE if done else Stage.RUNNING], kind=kind, number=number,
                key=f"{board.key}-{number}", title=f"Card {number}", created_at=start,
                started_at=start + dt.timedelta(hours=2),
                completed_at=start + dt.timedelta(hours=20) if done else None,
                verdict="supported" if done and kind == CardKind.HYPOTHESIS else "",
                decided_at=start + dt.timedelta(hours=20) if done and kind == CardKind.HYPOTHESIS else None,
            ))
            number += 1
    Card.objects.bulk_create(cards)
    Board.objects.filter(pk=board.pk).update(next_number=number)
    events: list[CardEvent] = []
    runs: list[Run] = []
    iterations: list[Iteration] = []
    for i in range(n):
        start = base + i * day
        iterations.append(Iteration(team=team, name=f"Day {i}", start=start, end=start + day,
                                    state=IterationState.CLOSED, closed_at=start + day))
        for run_no, status in enumerate((RunStatus.FINISHED, RunStatus.FINISHED, RunStatus.FAILED)):
            runs.append(Run(team=team, external_id=f"h{board.pk}-{start:%Y%m%d}-{run_no}", status=status,
                            start_time=start + dt.timedelta(hours=3), end_time=start + dt.timedelta(hours=10 + run_no)))
    Iteration.objects.bulk_create(iterations)
    Run.objects.bulk_create(runs)
    items: list[IterationItem] = []
    links: list[CardRun] = []
    for i, card in enumerate(cards):
        start = card.created_at
        done = card.column.stage == Stage.DONE
        events.append(CardEvent(card=card, board=board, kind=EventKind.CREATED, to_column=cols[Stage.BACKLOG],
                                to_stage=Stage.BACKLOG, created_at=start))
        events.append(CardEvent(card=card, board=board, kind=EventKind.MOVED, from_column=cols[Stage.BACKLOG],
                                to_column=cols[Stage.RUNNING], from_stage=Stage.BACKLOG, to_stage=Stage.RUNNING,
                                created_at=start + dt.timedelta(hours=2)))
        if done:
            events.append(CardEvent(card=card, board=board, kind=EventKind.MOVED, from_column=cols[Stage.RUNNING],
                                    to_column=cols[Stage.DONE], from_stage=Stage.RUNNING, to_stage=Stage.DONE,
                                    created_at=start + dt.timedelta(hours=20)))
        items.append(IterationItem(iteration=iterations[i // 2], card=card, committed_at=iterations[i // 2].start,
                                   completed=done, carried_over=not done,
                                   stage_at_close=Stage.DONE if done else Stage.RUNNING))
        links.append(CardRun(card=card, run=runs[(i // 2) * 3 + (i % 2)]))
    CardEvent.objects.bulk_create(events)
    IterationItem.objects.bulk_create(items)
    CardRun.objects.bulk_create(links)
