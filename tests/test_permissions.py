"""Every board endpoint per role: managers and members write, viewers only read (403 with a
message on writes and form pages), board settings are for managers, other teams get 404."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.test import Client
from django.urls import reverse

from experiments.models import Board, Card, CardEvent, Column, EventKind, Role, Stage
from experiments.services.boards import board_create
from experiments.services.cards import card_create


@dataclass
class World:
    board: Board
    card: Card
    column: Column  # an empty column (Done)
    ready: Column
    foreign_board: Board
    foreign_card: Card


@pytest.fixture
def world(board, manager, member, viewer, outsider, other_team) -> World:
    card = card_create(board=board, kind="hypothesis", title="Tenure helps", actor=member)
    foreign = board_create(team=other_team, name="Secret", key="SEC")
    foreign_card = card_create(board=foreign, kind="hypothesis", title="Secret idea", actor=outsider)
    return World(
        board=board,
        card=card,
        column=board.columns.get(stage=Stage.DONE),
        ready=board.columns.get(stage=Stage.READY),
        foreign_board=foreign,
        foreign_card=foreign_card,
    )


@dataclass
class Endpoint:
    name: str
    method: str
    url: Callable[[World], str]
    data: Callable[[World], dict] = lambda w: {}
    writers: tuple[str, ...] = ("manager", "member")  # roles allowed; others get 403
    ok: int = 200


def _edit_data(w: World) -> dict:
    return {"title": "Renamed", "min_runs": 3, "version": w.card.version, "tags": ""}


ENDPOINTS = [
    Endpoint("board", "get", lambda w: reverse("board", args=[w.board.pk]), writers=("manager", "member", "viewer")),
    Endpoint(
        "quick",
        "get",
        lambda w: reverse("board_card_quick", args=[w.board.pk, w.card.pk]),
        writers=("manager", "member", "viewer"),
    ),
    Endpoint(
        "move",
        "post",
        lambda w: reverse("board_card_move", args=[w.board.pk, w.card.pk]),
        lambda w: {"to_column": w.ready.pk, "version": w.card.version},
    ),
    Endpoint("create-form", "get", lambda w: reverse("board_card_create", args=[w.board.pk, "hypothesis"])),
    Endpoint(
        "create",
        "post",
        lambda w: reverse("board_card_create", args=[w.board.pk, "hypothesis"]),
        lambda w: {"title": "New idea", "min_runs": 3, "column": w.ready.pk},
        ok=302,
    ),
    Endpoint("edit-form", "get", lambda w: reverse("board_card_edit", args=[w.board.pk, w.card.pk])),
    Endpoint("edit", "post", lambda w: reverse("board_card_edit", args=[w.board.pk, w.card.pk]), _edit_data, ok=302),
    Endpoint(
        "flag",
        "post",
        lambda w: reverse("board_card_flag", args=[w.board.pk, w.card.pk]),
        lambda w: {"flagged": "1", "reason": "blocked"},
        ok=302,
    ),
    Endpoint("settings", "get", lambda w: reverse("board_settings", args=[w.board.pk]), writers=("manager",)),
    Endpoint(
        "column-update",
        "post",
        lambda w: reverse("board_column_update", args=[w.board.pk, w.column.pk]),
        lambda w: {f"col{w.column.pk}-name": "Shipped", f"col{w.column.pk}-stage": Stage.DONE},
        writers=("manager",),
        ok=302,
    ),
    Endpoint(
        "column-add",
        "post",
        lambda w: reverse("board_column_add", args=[w.board.pk]),
        lambda w: {"new-name": "Review", "new-stage": Stage.ANALYZING},
        writers=("manager",),
        ok=302,
    ),
    Endpoint(
        "column-move",
        "post",
        lambda w: reverse("board_column_move", args=[w.board.pk, w.column.pk]),
        lambda w: {"direction": "left"},
        writers=("manager",),
        ok=302,
    ),
    Endpoint(
        "column-delete",
        "post",
        lambda w: reverse("board_column_delete", args=[w.board.pk, w.column.pk]),
        writers=("manager",),
        ok=302,
    ),
    Endpoint("board-new-form", "get", lambda w: reverse("board_new", args=[w.board.team.slug]), writers=("manager",)),
    Endpoint(
        "board-new",
        "post",
        lambda w: reverse("board_new", args=[w.board.team.slug]),
        lambda w: {"name": "Ranking", "key": "RANK"},
        writers=("manager",),
        ok=302,
    ),
]
IDS = [e.name for e in ENDPOINTS]


def _call(client: Client, endpoint: Endpoint, world: World):
    return getattr(client, endpoint.method)(endpoint.url(world), endpoint.data(world))


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=IDS)
@pytest.mark.parametrize("role", ["manager", "member", "viewer"])
def test_roles(endpoint, role, request, world, client_for):
    user = request.getfixturevalue(role)
    response = _call(client_for(user), endpoint, world)
    if role in endpoint.writers:
        assert response.status_code == endpoint.ok, response.content[:500]
    else:
        assert response.status_code == 403
        manager_only = endpoint.writers == (Role.MANAGER,)
        expected = "Only team managers can do this" if manager_only else "Viewers cannot change anything"
        assert expected in response.content.decode()


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=IDS)
def test_other_teams_get_404(endpoint, world, outsider, client_for):
    response = _call(client_for(outsider), endpoint, world)
    assert response.status_code == 404
    assert b"Tenure helps" not in response.content


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=IDS)
def test_anonymous_is_sent_to_login(endpoint, world):
    response = _call(Client(), endpoint, world)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", ["board_card_quick", "board_card_edit", "board_card_move", "board_card_flag"])
def test_card_of_another_team_through_my_board_is_404(name, world, manager, client_for):
    url = reverse(name, args=[world.board.pk, world.foreign_card.pk])
    client = client_for(manager)
    if name in ("board_card_move", "board_card_flag"):
        response = client.post(url, {"to_column": world.ready.pk, "version": 1, "flagged": "1"})
    else:
        response = client.get(url)
    assert response.status_code == 404
    world.foreign_card.refresh_from_db()
    assert world.foreign_card.version == 1 and not world.foreign_card.flagged


@pytest.mark.parametrize("name", ["board_column_update", "board_column_move", "board_column_delete"])
def test_column_of_another_board_is_404(name, world, manager, client_for):
    foreign_column = world.foreign_board.columns.first()
    response = client_for(manager).post(reverse(name, args=[world.board.pk, foreign_column.pk]), {"direction": "left"})
    assert response.status_code == 404
    assert Column.objects.filter(pk=foreign_column.pk).exists()


def test_move_to_a_column_of_another_board_is_refused(world, manager, client_for):
    foreign_column = world.foreign_board.columns.first()
    response = client_for(manager).post(
        reverse("board_card_move", args=[world.board.pk, world.card.pk]),
        {"to_column": foreign_column.pk, "version": 1},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 400
    world.card.refresh_from_db()
    assert world.card.column.board_id == world.board.pk


def test_viewer_move_is_refused_as_json_and_changes_nothing(world, viewer, client_for):
    response = client_for(viewer).post(
        reverse("board_card_move", args=[world.board.pk, world.card.pk]),
        {"to_column": world.ready.pk, "version": 1},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 403
    assert response.json() == {"ok": False, "error": "Viewers cannot change anything on this team."}
    world.card.refresh_from_db()
    assert world.card.column.stage == Stage.BACKLOG
    assert not CardEvent.objects.filter(kind=EventKind.MOVED).exists()


def test_viewer_sees_read_only_board(world, viewer, client_for):
    html = client_for(viewer).get(reverse("board", args=[world.board.pk])).content.decode()
    assert "Tenure helps" in html
    assert 'draggable="true"' not in html
    assert 'data-can-edit="false"' in html
    assert reverse("board_card_create", args=[world.board.pk, "hypothesis"]) not in html
    assert reverse("board_settings", args=[world.board.pk]) not in html
    assert "Read-only" in html
    quick = client_for(viewer).get(
        reverse("board_card_quick", args=[world.board.pk, world.card.pk]), HTTP_HX_REQUEST="true"
    ).content.decode()
    assert "data-move-form" not in quick
    assert reverse("board_card_edit", args=[world.board.pk, world.card.pk]) not in quick


def test_member_sees_no_settings_link_but_can_drag(world, member, client_for):
    html = client_for(member).get(reverse("board", args=[world.board.pk])).content.decode()
    assert 'draggable="true"' in html
    assert reverse("board_settings", args=[world.board.pk]) not in html
