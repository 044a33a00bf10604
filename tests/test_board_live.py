"""Board state endpoint: the stamp an open board page polls to notice teammates' and runs' changes."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from experiments.models import Card, Stage
from experiments.selectors.board import board_stamp
from experiments.services.cards import card_add_note, card_create, card_flag, card_move, card_update
from experiments.services.purge import card_purge
from experiments.services.runs import run_create

pytestmark = pytest.mark.django_db


def state_url(board) -> str:
    return reverse("board_state", args=[board.pk])


def stamp(client, board) -> str:
    response = client.get(state_url(board))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    data = response.json()
    assert data["board"] == board.pk
    return data["stamp"]


def test_viewer_reads_the_stamp_the_page_was_rendered_with(client_for, viewer, member, board):
    card_create(board=board, kind="hypothesis", title="H", actor=member)
    client = client_for(viewer)
    html = client.get(reverse("board", args=[board.pk])).content.decode()
    rendered = re.search(r'id="board-region" data-stamp="([^"]+)" data-state-url="([^"]+)"', html)
    assert rendered is not None
    assert rendered.group(2) == state_url(board)
    assert rendered.group(1) == stamp(client, board)


def test_other_teams_and_anonymous_cannot_read(client_for, outsider, board, client):
    assert client_for(outsider).get(state_url(board)).status_code == 404
    assert client_for(outsider).get(reverse("board_state", args=[board.pk + 999])).status_code == 404
    anonymous = client.get(state_url(board))
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]


def test_only_get(client_for, member, board):
    assert client_for(member).post(state_url(board)).status_code == 405


def test_stamp_changes_with_every_kind_of_card_change(client_for, member, board):
    client = client_for(member)
    seen = [stamp(client, board)]

    def changed() -> None:
        now = stamp(client, board)
        assert now not in seen
        seen.append(now)

    card = card_create(board=board, kind="hypothesis", title="Tenure lifts AUC", actor=member)
    changed()
    assert stamp(client, board) == seen[-1]  # stable while nothing changes
    card = card_move(card=card, to_column=board.columns.get(stage=Stage.READY), actor=member, expected_version=1)
    changed()
    card = card_update(card=card, actor=member, expected_version=card.version, title="Tenure lifts AUC by 2pt")
    changed()
    card = card_flag(card=card, actor=member, flagged=True, reason="blocked on data")
    changed()
    card_add_note(card=card, actor=member, text="Data is back")
    changed()
    other = card_create(board=board, kind="hypothesis", title="Other", actor=member)
    changed()
    # Deleting it brings back the earlier board (same stamp is fine: same content); what matters is
    # that a page showing the deleted card sees a different stamp.
    showing_other = seen[-1]
    card_purge(card=other, actor=member)
    assert stamp(client, board) != showing_other


def test_a_run_moving_a_card_changes_the_stamp(client_for, member, team, board):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    client = client_for(member)
    before = stamp(client, board)
    run_create(team=team, user=member, tags={"mlboard.card": card.key})
    assert Card.objects.get(pk=card.pk).column.stage == Stage.RUNNING
    assert stamp(client, board) != before


def test_other_boards_do_not_change_the_stamp(client_for, member, team, board):
    from experiments.services.boards import board_create

    other = board_create(team=team, name="Fraud", key="FRAUD")
    client = client_for(member)
    before = stamp(client, board)
    card_create(board=other, kind="hypothesis", title="Elsewhere", actor=member)
    assert stamp(client, board) == before


def test_move_endpoint_hands_back_the_stamps_around_the_move(client_for, member, board):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    client = client_for(member)
    before = stamp(client, board)
    response = client.post(
        reverse("board_card_move", args=[board.pk, card.pk]),
        {"to_column": board.columns.get(stage=Stage.READY).pk, "version": 1},
        HTTP_ACCEPT="application/json",
    )
    data = response.json()
    assert data["ok"] and data["stamp_before"] == before
    assert data["stamp"] == stamp(client, board) != before


def test_state_query_count_is_constant(client_for, member, board, django_assert_num_queries):
    client = client_for(member)
    columns = list(board.columns.order_by("position"))

    def grow(n: int) -> None:
        for i in range(n):
            card = card_create(board=board, kind="hypothesis", title=f"C{i}", actor=member)
            card_move(card=card, to_column=columns[i % len(columns)], actor=member, expected_version=1)

    grow(20)
    with django_assert_num_queries(5):  # session, user, board, membership, stamp
        first = client.get(state_url(board))
    grow(20)
    with django_assert_num_queries(5):
        second = client.get(state_url(board))
    assert first.json()["stamp"] != second.json()["stamp"]
    assert second.json()["stamp"].startswith("40-")
    assert board_stamp(board) == second.json()["stamp"]
