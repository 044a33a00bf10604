"""Card and board services: create, move, update, version conflicts, events and stage timestamps."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from experiments.errors import ConflictError, DomainError
from experiments.models import Card, CardEvent, Column, EventKind, Stage
from experiments.services.boards import (
    board_create,
    column_create,
    column_delete,
    column_update,
    columns_reorder,
)
from experiments.services.cards import (
    card_create,
    card_flag,
    card_move,
    card_move_to_stage,
    card_update,
)


def col(board, stage: str) -> Column:
    return board.columns.get(stage=stage)


def order(column: Column) -> list[str]:
    return list(Card.objects.filter(column=column).order_by("position", "id").values_list("title", flat=True))


# --- create ---------------------------------------------------------------------------------------


def test_create_assigns_key_position_and_records_event(board, member):
    before = timezone.now()
    first = card_create(board=board, kind="hypothesis", title="  Tenure helps  ", actor=member, tags=["Features", " "])
    second = card_create(board=board, kind="hypothesis", title="Weights help", actor=member)
    assert (first.key, second.key) == ("CHURN-1", "CHURN-2")
    assert first.title == "Tenure helps"
    assert first.column == col(board, Stage.BACKLOG)
    assert order(first.column) == ["Tenure helps", "Weights help"]
    assert list(first.tags.values_list("name", flat=True)) == ["features"]
    event = CardEvent.objects.get(card=first)
    assert event.kind == EventKind.CREATED
    assert event.actor == member
    assert event.to_column == first.column and event.to_stage == Stage.BACKLOG
    assert before <= event.created_at <= timezone.now()
    assert first.started_at is None and first.completed_at is None


def test_create_in_running_column_sets_started_at(board, member):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member, column=col(board, Stage.RUNNING))
    assert card.started_at is not None and card.completed_at is None


def test_create_validation_errors_are_per_field(board, member, outsider):
    with pytest.raises(DomainError) as exc:
        card_create(board=board, kind="hypothesis", title=" ", actor=member, metric_key="auc")
    assert exc.value.errors["title"] == "A title is required."
    assert "direction" in exc.value.errors and "threshold" in exc.value.errors

    with pytest.raises(DomainError) as exc:
        card_create(board=board, kind="experiment", title="E", actor=member)
    assert exc.value.errors == {"parent": "An experiment belongs to a hypothesis; choose one."}

    with pytest.raises(DomainError) as exc:
        card_create(board=board, kind="hypothesis", title="H", actor=member, owner=outsider)
    assert exc.value.errors == {"owner": "The owner must be a member of this board's team."}

    with pytest.raises(DomainError) as exc:
        card_create(board=board, kind="hypothesis", title="H", actor=member, tags=["x" * 41])
    assert "tags" in exc.value.errors
    assert not Card.objects.exists()


def test_result_parent_rules(board, member, team):
    hyp = card_create(board=board, kind="hypothesis", title="H", actor=member)
    exp = card_create(board=board, kind="experiment", title="E", actor=member, parent=hyp)
    res = card_create(board=board, kind="result", title="R", actor=member, parent=exp, verdict="supported")
    assert res.decided_at is not None
    with pytest.raises(DomainError) as exc:
        card_create(board=board, kind="result", title="R2", actor=member, parent=res)
    assert "parent" in exc.value.errors
    other = board_create(team=team, name="Other", key="OTH")
    with pytest.raises(DomainError) as exc:
        card_create(board=other, kind="experiment", title="E2", actor=member, parent=hyp)
    assert exc.value.errors["parent"] == "The parent card must be on the same board."


# --- move -----------------------------------------------------------------------------------------


def test_move_records_event_bumps_version_and_stage_timestamps(board, member, manager):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    running, done, ready = col(board, Stage.RUNNING), col(board, Stage.DONE), col(board, Stage.READY)

    moved = card_move(card=card, to_column=running, actor=manager, expected_version=1)
    assert moved.column == running and moved.version == 2
    started = moved.started_at
    assert started is not None and moved.completed_at is None
    event = CardEvent.objects.filter(card=card, kind=EventKind.MOVED).get()
    assert event.actor == manager
    assert (event.from_column, event.to_column) == (col(board, Stage.BACKLOG), running)
    assert (event.from_stage, event.to_stage) == (Stage.BACKLOG, Stage.RUNNING)
    assert abs((timezone.now() - event.created_at).total_seconds()) < 5

    moved = card_move(card=moved, to_column=done, actor=member, expected_version=2)
    assert moved.completed_at is not None and moved.started_at == started

    moved = card_move(card=moved, to_column=ready, actor=member, expected_version=3)
    moved.refresh_from_db()
    assert moved.completed_at is None, "leaving Done reopens the card"
    assert moved.started_at == started, "started_at keeps the first start"
    assert CardEvent.objects.filter(card=card, kind=EventKind.MOVED).count() == 3


def test_stale_version_raises_conflict_and_changes_nothing(board, member, manager):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    card_move(card=card, to_column=col(board, Stage.READY), actor=manager, expected_version=1)
    with pytest.raises(ConflictError) as exc:
        card_move(card=card, to_column=col(board, Stage.DONE), actor=member, expected_version=1)
    message = exc.value.message
    assert "CHURN-1 was changed by maya since you loaded it" in message
    assert "'Ready'" in message and "Reload" in message
    assert exc.value.current_version == 2 and exc.value.status_code == 409
    card.refresh_from_db()
    assert card.column.stage == Stage.READY and card.version == 2
    assert CardEvent.objects.filter(card=card, kind=EventKind.MOVED).count() == 1


def test_move_to_index_orders_cards(board, member):
    backlog, ready = col(board, Stage.BACKLOG), col(board, Stage.READY)
    cards = {t: card_create(board=board, kind="hypothesis", title=t, actor=member, column=ready) for t in "ABC"}
    x = card_create(board=board, kind="hypothesis", title="X", actor=member, column=backlog)
    x = card_move(card=x, to_column=ready, actor=member, expected_version=1, index=1)
    assert order(ready) == ["A", "X", "B", "C"]
    x = card_move(card=x, to_column=ready, actor=member, expected_version=x.version, index=0)
    assert order(ready) == ["X", "A", "B", "C"]
    x = card_move(card=x, to_column=ready, actor=member, expected_version=x.version, index=99)
    assert order(ready) == ["A", "B", "C", "X"]
    c = card_move(card=cards["C"], to_column=ready, actor=member, expected_version=1, index=0)
    assert order(ready) == ["C", "A", "B", "X"]
    assert c.version == 2
    # Reordering inside a column is a change (version) but not a column move (no MOVED event).
    assert not CardEvent.objects.filter(card=c, kind=EventKind.MOVED).exists()


def test_move_renumbers_when_gap_is_exhausted(board, member):
    ready = col(board, Stage.READY)
    a = card_create(board=board, kind="hypothesis", title="A", actor=member, column=ready)
    b = card_create(board=board, kind="hypothesis", title="B", actor=member, column=ready)
    Card.objects.filter(pk=a.pk).update(position=1.0)
    Card.objects.filter(pk=b.pk).update(position=1.0 + 1e-9)
    x = card_create(board=board, kind="hypothesis", title="X", actor=member)
    card_move(card=x, to_column=ready, actor=member, expected_version=1, index=1)
    assert order(ready) == ["A", "X", "B"]


def test_move_refuses_column_of_another_board(board, member, team):
    other = board_create(team=team, name="Other", key="OTH")
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    with pytest.raises(DomainError):
        card_move(card=card, to_column=other.columns.first(), actor=member, expected_version=1)


def test_move_to_stage_uses_first_column_of_stage(board, member):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    moved = card_move_to_stage(card=card, stage=Stage.RUNNING, actor=None, reason="first run started")
    assert moved is not None and moved.column.stage == Stage.RUNNING
    event = CardEvent.objects.get(card=card, kind=EventKind.MOVED)
    assert event.actor is None and event.data == {"reason": "first run started"}
    assert card_move_to_stage(card=moved, stage=Stage.RUNNING, actor=None, reason="again") is None


# --- update ---------------------------------------------------------------------------------------


def test_update_records_changes_and_bumps_version(board, member, manager):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member, tags=["a"])
    updated = card_update(
        card=card, actor=manager, expected_version=1, title="H2", owner=member, tags=["a", "b"],
        metric_key="auc", direction="maximize", threshold=0.8,
    )
    assert updated.version == 2 and updated.title == "H2" and updated.owner == member
    assert updated.criteria_set_at is not None
    event = CardEvent.objects.get(card=card, kind=EventKind.EDITED)
    assert event.actor == manager
    assert event.data["changed"]["title"] == ["H", "H2"]
    assert event.data["changed"]["tags"] == [["a"], ["a", "b"]]
    assert event.data["changed"]["owner"] == [None, member.pk]

    same = card_update(card=updated, actor=manager, expected_version=2, title="H2")
    assert same.version == 2, "an update that changes nothing is not a new version"
    assert CardEvent.objects.filter(card=card, kind=EventKind.EDITED).count() == 1


def test_update_with_stale_version_conflicts(board, member, manager):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    card_update(card=card, actor=manager, expected_version=1, title="Manager's title")
    with pytest.raises(ConflictError) as exc:
        card_update(card=card, actor=member, expected_version=1, title="Member's title")
    assert "was changed by maya" in exc.value.message
    card.refresh_from_db()
    assert card.title == "Manager's title"


def test_update_validates(board, member):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    with pytest.raises(DomainError) as exc:
        card_update(card=card, actor=member, expected_version=1, title="", threshold=0.5)
    assert set(exc.value.errors) == {"title", "metric_key"}
    card.refresh_from_db()
    assert card.title == "H" and card.version == 1


def test_result_verdict_change_is_a_status_event(board, member):
    hyp = card_create(board=board, kind="hypothesis", title="H", actor=member)
    res = card_create(board=board, kind="result", title="R", actor=member, parent=hyp)
    res = card_update(card=res, actor=member, expected_version=1, verdict="refuted")
    assert res.decided_at is not None
    assert CardEvent.objects.filter(card=res, kind=EventKind.STATUS).exists()


def test_flag_records_event(board, member):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    card = card_flag(card=card, actor=member, flagged=True, reason="GPU quota")
    assert card.flagged and card.flag_reason == "GPU quota"
    event = CardEvent.objects.get(card=card, kind=EventKind.FLAGGED)
    assert event.actor == member and event.data == {"flagged": True, "reason": "GPU quota"}


# --- boards and columns ---------------------------------------------------------------------------


def test_board_create_validation(team):
    with pytest.raises(DomainError) as exc:
        board_create(team=team, name=" ", key="")
    assert set(exc.value.errors) == {"name", "key"}
    with pytest.raises(DomainError) as exc:
        board_create(team=team, name="Bad", key="9X")
    assert "key" in exc.value.errors
    board = board_create(team=team, name="Churn", key="churn")
    assert board.key == "CHURN"
    assert [c.name for c in board.columns.order_by("position")] == ["Backlog", "Ready", "Running", "Analyzing", "Done"]
    with pytest.raises(DomainError) as exc:
        board_create(team=team, name="Again", key="CHURN")
    assert exc.value.errors == {"key": "This team already has a board with key CHURN."}


def test_columns_create_update_reorder_delete(board, member):
    review = column_create(board=board, name="Review", stage=Stage.ANALYZING, wip_limit=2)
    assert review.position == 5
    column_update(column=review, name="Peer review", clear_wip=True, stage=Stage.DONE)
    review.refresh_from_db()
    assert (review.name, review.wip_limit, review.stage) == ("Peer review", None, Stage.DONE)
    with pytest.raises(DomainError) as exc:
        column_update(column=review, wip_limit=0)
    assert exc.value.field == "wip_limit"
    with pytest.raises(DomainError):
        column_update(column=review, name="  ")

    ids = list(board.columns.order_by("position").values_list("pk", flat=True))
    columns_reorder(board=board, column_ids=[ids[-1], *ids[:-1]])
    assert board.columns.order_by("position").first().name == "Peer review"
    with pytest.raises(DomainError):
        columns_reorder(board=board, column_ids=ids[:-1])

    card = card_create(board=board, kind="hypothesis", title="H", actor=member, column=review)
    with pytest.raises(DomainError) as exc:
        column_delete(column=review)
    assert "still has 1 card" in exc.value.message
    card_move(card=card, to_column=col(board, Stage.BACKLOG), actor=member, expected_version=1)
    column_delete(column=review)
    assert not Column.objects.filter(pk=review.pk).exists()


def test_last_column_cannot_be_deleted(team):
    board = board_create(team=team, name="Tiny", key="TINY", columns=(("Only", Stage.BACKLOG, None),))
    with pytest.raises(DomainError, match="at least one column"):
        column_delete(column=board.columns.get())


def test_event_timestamps_follow_the_clock(board, member, monkeypatch):
    fixed = timezone.now() - dt.timedelta(days=2)
    monkeypatch.setattr(timezone, "now", lambda: fixed)
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    card = card_move(card=card, to_column=col(board, Stage.RUNNING), actor=member, expected_version=1)
    assert card.started_at == fixed
    assert CardEvent.objects.get(card=card, kind=EventKind.MOVED).created_at == fixed
