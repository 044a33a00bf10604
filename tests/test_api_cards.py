"""REST API: teams, boards, cards, moves with optimistic concurrency, card events, scoping."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from experiments.models import Card, CardEvent, EventKind, Stage, User
from experiments.services.boards import board_create
from experiments.services.cards import card_create, card_move


@pytest.fixture
def api_for() -> Callable[[User], APIClient]:
    def make(user: User) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client

    return make


def column(board, stage: str):
    return board.columns.get(stage=stage)


def hypothesis(board, actor, title: str = "Bigger model helps") -> Card:
    return card_create(board=board, kind="hypothesis", title=title, actor=actor)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()["error"]
    assert body["code"] == code
    assert body["message"]
    return body


# --- Authentication and scoping ------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/teams/", "/api/boards/", "/api/cards/", "/api/runs/", "/api/tokens/"])
def test_unauthenticated_gets_401_json(db, url):
    response = APIClient().get(url)
    body = assert_error(response, 401, "not_authenticated")
    assert "Bearer" in body["message"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_teams_lists_only_mine_with_role(api_for, member, manager, viewer, team, other_team, outsider):
    response = api_for(member).get("/api/teams/")
    assert response.status_code == 200
    assert [(t["slug"], t["role"]) for t in response.json()["results"]] == [("vision", "member")]
    assert [t["role"] for t in api_for(viewer).get("/api/teams/").json()["results"]] == ["viewer"]


def test_team_detail_has_members_and_hides_other_teams(api_for, member, manager, viewer, team, other_team):
    client = api_for(member)
    body = client.get("/api/teams/vision/").json()
    assert {(m["username"], m["role"]) for m in body["members"]} == {
        ("maya", "manager"), ("mo", "member"), ("vic", "viewer")
    }
    assert_error(client.get("/api/teams/rivals/"), 404, "not_found")


def test_board_list_and_detail_with_columns(api_for, member, board, other_team):
    board_create(team=other_team, name="Secret", key="SEC")
    hypothesis(board, member)
    client = api_for(member)
    listed = client.get("/api/boards/").json()
    assert [b["key"] for b in listed["results"]] == ["CHURN"]
    detail = client.get(f"/api/boards/{board.pk}/").json()
    assert [c["stage"] for c in detail["columns"]] == ["backlog", "ready", "running", "analyzing", "done"]
    assert detail["columns"][0]["card_count"] == 1
    assert detail["columns"][1]["wip_limit"] == 5


def test_board_of_other_team_is_404(api_for, member, other_team):
    secret = board_create(team=other_team, name="Secret", key="SEC")
    assert_error(api_for(member).get(f"/api/boards/{secret.pk}/"), 404, "not_found")


def test_board_list_filters_by_team_and_rejects_unknown_filters(api_for, member, board):
    client = api_for(member)
    assert client.get("/api/boards/?team=rivals").json()["count"] == 0
    assert client.get("/api/boards/?team=vision").json()["count"] == 1
    body = assert_error(client.get("/api/boards/?teem=vision"), 400, "invalid")
    assert "teem" in body["fields"]


def test_card_of_other_team_is_404_for_read_and_write(api_for, outsider, board, member):
    card = hypothesis(board, member)
    client = api_for(outsider)
    assert_error(client.get(f"/api/cards/{card.pk}/"), 404, "not_found")
    assert_error(client.patch(f"/api/cards/{card.pk}/", {"title": "x", "version": 1}, format="json"), 404, "not_found")
    assert_error(client.get(f"/api/cards/{card.pk}/events/"), 404, "not_found")
    assert client.get("/api/cards/").json()["count"] == 0


def test_viewer_reads_but_gets_403_on_writes(api_for, viewer, board, member):
    card = hypothesis(board, member)
    client = api_for(viewer)
    assert client.get(f"/api/cards/{card.pk}/").status_code == 200
    assert_error(
        client.post("/api/cards/", {"board": board.pk, "kind": "hypothesis", "title": "x"}, format="json"),
        403, "permission_denied",
    )
    assert_error(client.patch(f"/api/cards/{card.pk}/", {"title": "x", "version": 1}, format="json"), 403,
                 "permission_denied")
    move = {"column": column(board, Stage.READY).pk, "version": 1}
    assert_error(client.post(f"/api/cards/{card.pk}/move/", move, format="json"), 403, "permission_denied")
    card.refresh_from_db()
    assert card.title == "Bigger model helps" and card.column.stage == Stage.BACKLOG


# --- Cards ---------------------------------------------------------------------------------------


def test_create_hypothesis_with_criteria_and_tags(api_for, member, board):
    payload = {
        "board": board.pk,
        "kind": "hypothesis",
        "title": "Gradient boosting beats logistic regression",
        "statement": "GBM improves AUC",
        "metric_key": "val_auc",
        "direction": "maximize",
        "threshold": 0.8,
        "tags": ["Tabular", "gbm"],
        "owner": member.pk,
    }
    response = api_for(member).post("/api/cards/", payload, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"] == "CHURN-1"
    assert body["stage"] == "backlog"
    assert body["version"] == 1
    assert sorted(body["tags"]) == ["gbm", "tabular"]
    assert body["owner_name"] == "mo"
    card = Card.objects.get(pk=body["id"])
    assert card.criteria_set_at is not None and card.created_by == member
    assert CardEvent.objects.filter(card=card, kind=EventKind.CREATED, actor=member).exists()


def test_create_experiment_in_given_column_under_hypothesis(api_for, member, board):
    parent = hypothesis(board, member)
    ready = column(board, Stage.READY)
    payload = {"board": board.pk, "kind": "experiment", "title": "Try depth 8", "parent": parent.pk,
               "column": ready.pk, "plan": "grid search"}
    body = api_for(member).post("/api/cards/", payload, format="json").json()
    assert (body["parent"], body["column"], body["kind"]) == (parent.pk, ready.pk, "experiment")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"kind": "hypothesis", "title": "t"}, "board"),
        ({"board": "BOARD", "kind": "hypothesis"}, "title"),
        ({"board": "BOARD", "kind": "idea", "title": "t"}, "kind"),
        ({"board": "abc", "kind": "hypothesis", "title": "t"}, "board"),
        ({"board": 999999, "kind": "hypothesis", "title": "t"}, "board"),
        ({"board": "BOARD", "kind": "hypothesis", "title": "t", "column": 999999}, "column"),
        ({"board": "BOARD", "kind": "hypothesis", "title": "t", "threshold": "high"}, "threshold"),
        ({"board": "BOARD", "kind": "hypothesis", "title": "t", "direction": "up"}, "direction"),
        ({"board": "BOARD", "kind": "hypothesis", "title": "t", "colour": "red"}, "colour"),
        ({"board": "BOARD", "kind": "experiment", "title": "t"}, "parent"),
        ({"board": "BOARD", "kind": "hypothesis", "title": "t", "metric_key": "auc"}, "direction"),
        ({"board": "BOARD", "kind": "hypothesis", "title": "   "}, "title"),
    ],
)
def test_create_card_bad_input_is_400_naming_the_field(api_for, member, board, payload, field):
    payload = {k: (board.pk if v == "BOARD" else v) for k, v in payload.items()}
    response = api_for(member).post("/api/cards/", payload, format="json")
    body = assert_error(response, 400, "invalid")
    assert field in body["fields"], body
    assert field in body["message"] or body["fields"][field]
    assert Card.objects.count() == 0


def test_create_card_unknown_column_message_lists_columns(api_for, member, board, other_team):
    foreign = board_create(team=other_team, name="Secret", key="SEC").columns.first()
    payload = {"board": board.pk, "kind": "hypothesis", "title": "t", "column": foreign.pk}
    body = assert_error(api_for(member).post("/api/cards/", payload, format="json"), 400, "invalid")
    assert "Backlog (id" in body["message"]


def test_create_card_owner_must_be_team_member(api_for, member, board, outsider):
    payload = {"board": board.pk, "kind": "hypothesis", "title": "t", "owner": outsider.pk}
    body = assert_error(api_for(member).post("/api/cards/", payload, format="json"), 400, "invalid")
    assert "not a member" in body["fields"]["owner"][0]


def test_malformed_json_is_400_json(api_for, member, board):
    response = api_for(member).post("/api/cards/", "{not json", content_type="application/json")
    assert_error(response, 400, "parse_error")


def test_list_body_instead_of_object_is_400(api_for, member, board):
    response = api_for(member).post("/api/cards/", [{"title": "x"}], format="json")
    assert_error(response, 400, "invalid")


def test_patch_requires_version_and_applies_edit(api_for, member, board):
    card = hypothesis(board, member)
    client = api_for(member)
    body = assert_error(client.patch(f"/api/cards/{card.pk}/", {"title": "New"}, format="json"), 400, "invalid")
    assert "version" in body["fields"]
    response = client.patch(f"/api/cards/{card.pk}/", {"title": "New", "version": 1, "tags": ["x"]}, format="json")
    assert response.status_code == 200, response.content
    assert (response.json()["title"], response.json()["version"], response.json()["tags"]) == ("New", 2, ["x"])
    event = CardEvent.objects.filter(card=card, kind=EventKind.EDITED).get()
    assert event.actor == member and event.data["changed"]["title"] == ["Bigger model helps", "New"]


def test_patch_with_stale_version_is_409_and_changes_nothing(api_for, member, manager, board):
    card = hypothesis(board, member)
    card_move(card=card, to_column=column(board, Stage.READY), actor=manager, expected_version=1)
    response = api_for(member).patch(f"/api/cards/{card.pk}/", {"title": "Mine", "version": 1}, format="json")
    body = assert_error(response, 409, "conflict")
    assert body["current_version"] == 2
    assert "maya" in body["message"]
    card.refresh_from_db()
    assert card.title == "Bigger model helps"


def test_patch_rejects_column_and_unknown_fields(api_for, member, board):
    card = hypothesis(board, member)
    client = api_for(member)
    body = assert_error(
        client.patch(f"/api/cards/{card.pk}/", {"column": 1, "version": 1}, format="json"), 400, "invalid"
    )
    assert "move" in body["message"]
    body = assert_error(
        client.patch(f"/api/cards/{card.pk}/", {"titel": "typo", "version": 1}, format="json"), 400, "invalid"
    )
    assert "titel" in body["fields"]


def test_put_and_delete_are_405_json(api_for, member, board):
    card = hypothesis(board, member)
    client = api_for(member)
    assert_error(client.put(f"/api/cards/{card.pk}/", {}, format="json"), 405, "method_not_allowed")
    assert_error(client.delete(f"/api/cards/{card.pk}/"), 405, "method_not_allowed")


def test_move_to_column_and_index(api_for, member, board):
    ready = column(board, Stage.READY)
    first, second = (hypothesis(board, member, f"H{i}") for i in (1, 2))
    card_move(card=first, to_column=ready, actor=member, expected_version=1)
    card_move(card=second, to_column=ready, actor=member, expected_version=1)
    third = hypothesis(board, member, "H3")
    client = api_for(member)
    response = client.post(f"/api/cards/{third.pk}/move/", {"column": ready.pk, "version": 1, "index": 0},
                           format="json")
    assert response.status_code == 200, response.content
    assert response.json()["column"] == ready.pk and response.json()["version"] == 2
    keys = client.get(f"/api/cards/?column={ready.pk}").json()["results"]
    assert [c["title"] for c in keys] == ["H3", "H1", "H2"]
    event = CardEvent.objects.get(card=third, kind=EventKind.MOVED)
    assert (event.from_stage, event.to_stage, event.actor) == (Stage.BACKLOG, Stage.READY, member)


def test_move_stale_version_is_409(api_for, member, board):
    card = hypothesis(board, member)
    api_for(member).post(f"/api/cards/{card.pk}/move/", {"column": column(board, Stage.READY).pk, "version": 1},
                         format="json")
    response = api_for(member).post(
        f"/api/cards/{card.pk}/move/", {"column": column(board, Stage.RUNNING).pk, "version": 1}, format="json"
    )
    assert assert_error(response, 409, "conflict")["current_version"] == 2
    card.refresh_from_db()
    assert card.column.stage == Stage.READY


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"version": 1}, "column"),
        ({"column": "COL"}, "version"),
        ({"column": 999999, "version": 1}, "column"),
        ({"column": "COL", "version": 1, "index": -1}, "index"),
        ({"column": "COL", "version": "one"}, "version"),
    ],
)
def test_move_bad_input(api_for, member, board, payload, field):
    card = hypothesis(board, member)
    payload = {k: (column(board, Stage.READY).pk if v == "COL" else v) for k, v in payload.items()}
    body = assert_error(api_for(member).post(f"/api/cards/{card.pk}/move/", payload, format="json"), 400, "invalid")
    assert field in body["fields"]


def test_move_to_column_of_another_board_is_400(api_for, member, board, team):
    other = board_create(team=team, name="Other", key="OTH")
    card = hypothesis(board, member)
    payload = {"column": other.columns.first().pk, "version": 1}
    body = assert_error(api_for(member).post(f"/api/cards/{card.pk}/move/", payload, format="json"), 400, "invalid")
    assert "Columns of board CHURN" in body["message"]


def test_card_filters(api_for, member, manager, board):
    hyp = hypothesis(board, member, "Dropout helps")
    card_create(board=board, kind="experiment", title="Dropout 0.3", parent=hyp, actor=member, owner=manager)
    card_create(board=board, kind="hypothesis", title="Feature store", actor=member, description="about dropout")
    client = api_for(member)

    def titles(query: str) -> list[str]:
        response = client.get(f"/api/cards/?{query}")
        assert response.status_code == 200, response.content
        return sorted(c["title"] for c in response.json()["results"])

    assert titles("kind=experiment") == ["Dropout 0.3"]
    assert titles(f"owner={manager.pk}") == ["Dropout 0.3"]
    assert titles("q=dropout") == ["Dropout 0.3", "Dropout helps", "Feature store"]
    assert titles("q=churn-1") == ["Dropout helps"]
    assert titles(f"board={board.pk}&kind=hypothesis") == ["Dropout helps", "Feature store"]
    assert titles(f"column={column(board, Stage.READY).pk}") == []


@pytest.mark.parametrize("query", ["kind=idea", "column=abc", "owner=me", "stauts=x"])
def test_card_filters_bad_values_are_400(api_for, member, board, query):
    assert_error(api_for(member).get(f"/api/cards/?{query}"), 400, "invalid")


def test_card_events_history(api_for, member, board):
    card = hypothesis(board, member)
    client = api_for(member)
    client.post(f"/api/cards/{card.pk}/move/", {"column": column(board, Stage.READY).pk, "version": 1}, format="json")
    events = client.get(f"/api/cards/{card.pk}/events/").json()
    assert [e["kind"] for e in events["results"]] == ["created", "moved"]
    moved = events["results"][1]
    assert (moved["from_stage"], moved["to_stage"], moved["actor_name"]) == ("backlog", "ready", "mo")


# --- Query counts --------------------------------------------------------------------------------


def _make_cards(board, actor, n: int) -> None:
    hyp = hypothesis(board, actor, "Parent")
    for i in range(n - 1):
        card = card_create(board=board, kind="experiment", title=f"E{i}", parent=hyp, actor=actor, owner=actor,
                           tags=["a", f"t{i % 3}"])
        if i % 2:
            card_move(card=card, to_column=column(board, Stage.READY), actor=actor, expected_version=1)


@pytest.mark.parametrize("n", [5, 10])
def test_card_list_query_count_is_constant(api_for, member, board, django_assert_num_queries, n):
    _make_cards(board, member, n)
    client = api_for(member)
    # count, page, tags prefetch
    with django_assert_num_queries(3):
        response = client.get("/api/cards/")
    assert response.json()["count"] == n


@pytest.mark.parametrize("n", [4, 8])
def test_card_events_query_count_is_constant(api_for, member, board, django_assert_num_queries, n):
    card = hypothesis(board, member)
    columns = list(board.columns.order_by("position"))
    for i in range(n - 1):
        card = card_move(card=card, to_column=columns[(i + 1) % 2], actor=member, expected_version=card.version)
    client = api_for(member)
    # card lookup, count, page
    with django_assert_num_queries(3):
        response = client.get(f"/api/cards/{card.pk}/events/")
    assert response.json()["count"] == n


@pytest.mark.parametrize("n", [2, 4])
def test_board_list_query_count_is_constant(api_for, member, team, django_assert_num_queries, n):
    for i in range(n):
        board_create(team=team, name=f"B{i}", key=f"B{i}")
    client = api_for(member)
    # count, page, columns with card counts
    with django_assert_num_queries(3):
        response = client.get("/api/boards/")
    assert response.json()["count"] == n


@pytest.mark.parametrize("n", [2, 4])
def test_team_list_query_count_is_constant(api_for, member, make_user, django_assert_num_queries, n):
    from experiments.services.boards import membership_set, team_create

    for i in range(n):
        extra = team_create(name=f"T{i}", slug=f"t{i}")
        membership_set(team=extra, user=member, role="member")
        membership_set(team=extra, user=make_user(f"u{i}"), role="viewer")
    client = api_for(member)
    # count, page
    with django_assert_num_queries(2):
        response = client.get("/api/teams/")
    assert response.json()["count"] == n + 1  # plus the member fixture's own team
