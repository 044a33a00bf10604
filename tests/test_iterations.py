"""Iterations: planning, committing, freezing at close, carry-over and the roll task."""

from __future__ import annotations

import datetime as dt

import pytest

from experiments.errors import DomainError
from experiments.models import (
    CardEvent,
    CardKind,
    EventKind,
    Iteration,
    IterationItem,
    IterationState,
    Stage,
)
from experiments.services.boards import board_create
from experiments.services.iterations import (
    iteration_close,
    iteration_commit_card,
    iteration_create,
    iteration_roll,
    iteration_start,
    iteration_uncommit_card,
)
from experiments.tasks import roll_iterations, roll_team_iterations
from tests.test_velocity_support import clock, make_card, move, t

pytestmark = pytest.mark.django_db


@pytest.fixture
def cards(board, member):
    hyp = make_card(board, CardKind.HYPOTHESIS, "Bigger batch helps", t(2), actor=member)
    exp = make_card(board, CardKind.EXPERIMENT, "Batch 512", t(2, 1), actor=member, parent=hyp)
    return hyp, exp


def test_create_uses_team_length_and_names_from_dates(team):
    team.iteration_days = 1
    it = iteration_create(team=team, start=t(3, 9, 30))
    assert it.end == t(4, 9, 30)
    assert it.state == IterationState.PLANNED
    assert it.name == "Day Mon 03 Mar 2025"
    team.iteration_days = 7
    week = iteration_create(team=team, start=t(10))
    assert week.end == t(17)
    assert week.name == "10 Mar to 16 Mar 2025"


def test_create_rejects_overlap_and_backwards_dates(team):
    iteration_create(team=team, start=t(3), end=t(4), name="Monday")
    with pytest.raises(DomainError, match="overlap 'Monday'"):
        iteration_create(team=team, start=t(3, 12), end=t(4, 12))
    with pytest.raises(DomainError, match="end after it starts"):
        iteration_create(team=team, start=t(5), end=t(5))
    # Back to back is fine.
    assert iteration_create(team=team, start=t(4), end=t(5)).pk


def test_commit_sets_card_iteration_and_is_idempotent(team, cards, member):
    hyp, _ = cards
    it = iteration_create(team=team, start=t(3), end=t(4))
    version = hyp.version
    item = iteration_commit_card(iteration=it, card=hyp, actor=member)
    again = iteration_commit_card(iteration=it, card=hyp, actor=member)
    hyp.refresh_from_db()
    assert item.pk == again.pk
    assert IterationItem.objects.filter(iteration=it).count() == 1
    assert hyp.iteration_id == it.pk
    assert hyp.version == version + 1  # board edits made before the commit now see a conflict
    event = CardEvent.objects.filter(card=hyp, kind=EventKind.EDITED).get()
    assert event.data == {"changed": {"iteration": [None, it.pk]}}
    assert event.actor == member


def test_commit_refuses_closed_iteration_other_team_and_results(team, other_team, cards, member, board):
    hyp, _ = cards
    it = iteration_create(team=team, start=t(3), end=t(4))
    foreign_board = board_create(team=other_team, name="Other", key="OTH")
    foreign = make_card(foreign_board, CardKind.HYPOTHESIS, "Theirs", t(2))
    with pytest.raises(DomainError, match="another team"):
        iteration_commit_card(iteration=it, card=foreign, actor=member)
    result = make_card(board, CardKind.RESULT, "Outcome", t(2), parent=hyp)
    with pytest.raises(DomainError, match="is a result"):
        iteration_commit_card(iteration=it, card=result, actor=member)
    iteration_close(iteration=it, actor=member)
    with pytest.raises(DomainError, match="is closed"):
        iteration_commit_card(iteration=it, card=hyp, actor=member)


def test_uncommit_removes_item_and_pointer(team, cards, member):
    hyp, _ = cards
    it = iteration_create(team=team, start=t(3), end=t(4))
    iteration_commit_card(iteration=it, card=hyp, actor=member)
    iteration_uncommit_card(iteration=it, card=hyp, actor=member)
    hyp.refresh_from_db()
    assert hyp.iteration_id is None
    assert not IterationItem.objects.filter(iteration=it).exists()


def test_only_one_active_iteration(team):
    first = iteration_create(team=team, start=t(3), end=t(4), name="First")
    second = iteration_create(team=team, start=t(4), end=t(5))
    iteration_start(iteration=first)
    with pytest.raises(DomainError, match="'First' is still active"):
        iteration_start(iteration=second)


def test_close_freezes_outcome_even_after_cards_move_on(team, cards, member):
    hyp, exp = cards
    it = iteration_create(team=team, start=t(3), end=t(4))
    iteration_start(iteration=it)
    with clock(t(2, 23)):
        iteration_commit_card(iteration=it, card=hyp, actor=member)
    with clock(t(3, 10)):  # committed after the start: "added late"
        iteration_commit_card(iteration=it, card=exp, actor=member)
    move(exp, Stage.DONE, t(3, 12))
    move(hyp, Stage.RUNNING, t(3, 13))
    with clock(t(4)):
        iteration_close(iteration=it, actor=member)

    it.refresh_from_db()
    items = {i.card_id: i for i in it.items.all()}
    assert (items[exp.pk].completed, items[exp.pk].carried_over, items[exp.pk].stage_at_close) == (True, False, "done")
    assert (items[hyp.pk].completed, items[hyp.pk].carried_over, items[hyp.pk].stage_at_close) == (
        False, True, "running",
    )
    assert it.state == IterationState.CLOSED and it.closed_at == t(4)
    summary = it.summary
    assert (summary["committed"], summary["completed"], summary["carried_over"], summary["dropped"]) == (2, 1, 1, 0)
    assert summary["completion_rate"] == 0.5
    assert summary["added_late"] == 1
    assert summary["by_stage"] == {"running": 1, "done": 1}
    assert summary["closed_by"] == member.username
    assert {r["key"]: r["completed"] for r in summary["items"]} == {hyp.key: False, exp.key: True}

    # Later the cards move on; history does not.
    move(hyp, Stage.DONE, t(5))
    move(exp, Stage.BACKLOG, t(5, 1))
    it.refresh_from_db()
    frozen = {i.card_id: (i.completed, i.stage_at_close) for i in it.items.all()}
    assert frozen == {hyp.pk: (False, "running"), exp.pk: (True, "done")}
    assert it.summary["completed"] == 1

    with pytest.raises(DomainError, match="already closed"):
        iteration_close(iteration=it, actor=member)


def test_carry_over_moves_unfinished_cards_into_next_started_iteration(team, cards, member):
    hyp, exp = cards
    first = iteration_create(team=team, start=t(3), end=t(4))
    second = iteration_create(team=team, start=t(4), end=t(5))
    iteration_start(iteration=first)
    iteration_commit_card(iteration=first, card=hyp, actor=member)
    iteration_commit_card(iteration=first, card=exp, actor=member)
    move(exp, Stage.DONE, t(3, 12))
    iteration_close(iteration=first, actor=member)
    hyp.refresh_from_db()
    assert hyp.iteration_id == first.pk  # until the next one starts

    iteration_start(iteration=second)
    hyp.refresh_from_db()
    exp.refresh_from_db()
    assert list(second.items.values_list("card_id", flat=True)) == [hyp.pk]
    assert hyp.iteration_id == second.pk
    assert exp.iteration_id == first.pk  # finished work stays with the iteration it finished in


def test_drop_unfinished_clears_the_plan(team, cards, member):
    hyp, _ = cards
    it = iteration_create(team=team, start=t(3), end=t(4))
    iteration_commit_card(iteration=it, card=hyp, actor=member)
    iteration_close(iteration=it, actor=member, carry_over=False)
    item = it.items.get()
    hyp.refresh_from_db()
    assert (item.completed, item.carried_over) == (False, False)
    assert hyp.iteration_id is None
    it.refresh_from_db()
    assert it.summary["dropped"] == 1


def test_roll_closes_ended_iteration_and_opens_next_with_carry_over(team, cards, member):
    hyp, _ = cards
    it = iteration_create(team=team, start=t(3, 9), end=t(4, 9))
    iteration_start(iteration=it)
    iteration_commit_card(iteration=it, card=hyp, actor=member)

    assert iteration_roll(team=team, now=t(4, 8)).pk == it.pk  # not ended yet: nothing happens
    assert Iteration.objects.filter(team=team).count() == 1

    nxt = iteration_roll(team=team, now=t(4, 9, 5))
    it.refresh_from_db()
    hyp.refresh_from_db()
    assert it.state == IterationState.CLOSED
    assert (nxt.start, nxt.end, nxt.state) == (t(4, 9), t(5, 9), IterationState.ACTIVE)
    assert list(nxt.items.values_list("card_id", flat=True)) == [hyp.pk]
    assert hyp.iteration_id == nxt.pk

    # Idempotent: a second tick changes nothing.
    again = iteration_roll(team=team, now=t(4, 9, 15))
    assert again.pk == nxt.pk
    assert Iteration.objects.filter(team=team).count() == 2
    assert nxt.items.count() == 1


def test_roll_skips_missed_iterations_after_an_outage(team):
    it = iteration_create(team=team, start=t(3), end=t(4))
    iteration_start(iteration=it)
    nxt = iteration_roll(team=team, now=t(6, 15))
    assert (nxt.start, nxt.end) == (t(6), t(7))


def test_roll_starts_a_due_planned_iteration_and_leaves_idle_teams_alone(team, other_team):
    planned = iteration_create(team=team, start=t(3), end=t(4))
    assert iteration_roll(team=other_team, now=t(3, 12)) is None
    assert iteration_roll(team=team, now=t(3, 12)).pk == planned.pk
    # Closed by hand and nothing planned: the cadence stops there.
    iteration_close(iteration=planned)
    assert iteration_roll(team=team, now=t(5)) is None
    assert Iteration.objects.filter(team=team).count() == 1


def test_roll_closes_stale_planned_iterations(team):
    stale = iteration_create(team=team, start=t(1), end=t(2))
    today = iteration_create(team=team, start=t(3), end=t(4))
    active = iteration_roll(team=team, now=t(3, 1))
    stale.refresh_from_db()
    assert stale.state == IterationState.CLOSED
    assert active.pk == today.pk


def test_roll_tasks(team, django_capture_on_commit_callbacks):
    it = iteration_create(team=team, start=t(3), end=t(4))
    iteration_start(iteration=it)
    assert roll_team_iterations(team.pk, t(4, 0, 5).isoformat()) is not None
    assert roll_team_iterations(10_000) is None
    with django_capture_on_commit_callbacks(execute=True):
        assert roll_iterations() == [team.pk]
    assert Iteration.objects.filter(team=team, state=IterationState.ACTIVE).count() == 1
    it.refresh_from_db()
    assert it.state == IterationState.CLOSED


def test_roll_shortens_rather_than_overlap_a_planned_iteration(team):
    it = iteration_create(team=team, start=t(3), end=t(4))
    iteration_start(iteration=it)
    team.iteration_days = 7
    team.save()
    iteration_create(team=team, start=t(6), end=t(7), name="Offsite")
    nxt = iteration_roll(team=team, now=t(4, 1))
    assert (nxt.start, nxt.end) == (t(4), t(6))


def test_demo_style_create_signature(team):
    # experiments/demo.py calls iteration_create(team=, start=, end=, name=) under a fake clock.
    start = dt.datetime(2025, 3, 3, tzinfo=dt.UTC)
    with clock(start):
        it = iteration_create(team=team, start=start, end=start + dt.timedelta(days=1), name="Day Mar 03")
    assert it.name == "Day Mar 03"
