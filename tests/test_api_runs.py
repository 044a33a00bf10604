"""REST API: runs, params, metric batches (idempotent, NaN/Inf kept), metric history, run-card links."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from experiments.models import CardEvent, CardRun, EventKind, LatestMetric, Metric, Param, Run, RunStatus, Stage, User
from experiments.services.boards import board_create, membership_set
from experiments.services.cards import card_create
from experiments.services.runs import MetricPoint, card_link_run, run_create, run_log_metrics


@pytest.fixture
def api_for() -> Callable[[User], APIClient]:
    def make(user: User) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client

    return make


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()["error"]
    assert body["code"] == code and body["message"]
    return body


def post_raw(client: APIClient, url: str, text: str):
    return client.generic("POST", url, text, content_type="application/json")


@pytest.fixture
def run(team, member) -> Run:
    return run_create(team=team, user=member, name="baseline")


# --- Runs ----------------------------------------------------------------------------------------


def test_create_run_with_params_tags_and_card_link(api_for, member, board, team):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    payload = {
        "name": "gbm-depth-8",
        "experiment": "churn",
        "tags": {"mlboard.card": card.key, "mlflow.source.git.commit": "abc123"},
        "params": {"lr": 0.1, "depth": 8, "seed": "42"},
    }
    response = api_for(member).post("/api/runs/", payload, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["team"], body["status"], body["experiment"], body["code_version"], body["seed"]) == (
        "vision", "RUNNING", "churn", "abc123", 42
    )
    assert body["params"] == {"depth": "8", "lr": "0.1", "seed": "42"}
    assert [c["key"] for c in body["cards"]] == [card.key]
    card.refresh_from_db()
    assert card.column.stage == Stage.RUNNING  # first run started moves the card


def test_create_run_needs_team_when_on_several(api_for, member, team, other_team):
    membership_set(team=other_team, user=member, role="member")
    client = api_for(member)
    body = assert_error(client.post("/api/runs/", {"name": "x"}, format="json"), 400, "invalid")
    assert "team" in body["fields"]
    assert client.post("/api/runs/", {"name": "x", "team": "rivals"}, format="json").json()["team"] == "rivals"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"status": "DONE"}, "status"),
        ({"team": "rivals"}, "team"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"tags": ["a"]}, "tags"),
        ({"params": {"lr": True}}, "params"),
        ({"params": {f"p{i}": i for i in range(101)}}, "params"),
        ({"nmae": "typo"}, "nmae"),
        ({"start_time": "2024-01-02T00:00:00Z", "end_time": "2024-01-01T00:00:00Z"}, "end_time"),
    ],
)
def test_create_run_bad_input(api_for, member, team, other_team, payload, field):
    body = assert_error(api_for(member).post("/api/runs/", payload, format="json"), 400, "invalid")
    assert field in body["fields"], body
    assert Run.objects.count() == 0


def test_bad_status_message_lists_valid_statuses(api_for, member, team):
    body = assert_error(api_for(member).post("/api/runs/", {"status": "DONE"}, format="json"), 400, "invalid")
    assert "FINISHED" in body["message"] and "DONE" in body["message"]


def test_viewer_cannot_create_or_update_runs(api_for, viewer, run):
    client = api_for(viewer)
    assert_error(client.post("/api/runs/", {"team": "vision"}, format="json"), 403, "permission_denied")
    assert_error(client.patch(f"/api/runs/{run.pk}/", {"status": "FINISHED"}, format="json"), 403,
                 "permission_denied")
    assert_error(client.post(f"/api/runs/{run.pk}/metrics/", {"metrics": []}, format="json"), 403,
                 "permission_denied")
    assert_error(client.post(f"/api/runs/{run.pk}/params/", {"params": {"a": 1}}, format="json"), 403,
                 "permission_denied")
    assert client.get(f"/api/runs/{run.pk}/").status_code == 200


def test_other_teams_run_is_404(api_for, outsider, run):
    client = api_for(outsider)
    assert_error(client.get(f"/api/runs/{run.pk}/"), 404, "not_found")
    assert_error(client.post(f"/api/runs/{run.pk}/metrics/", {"metrics": []}, format="json"), 404, "not_found")
    assert_error(client.get(f"/api/runs/{run.pk}/metrics/history/?key=loss"), 404, "not_found")
    assert client.get("/api/runs/").json()["count"] == 0


def test_update_status_sets_end_time_and_moves_linked_card(api_for, member, board, run):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    card_link_run(card=card, run=run, actor=member)
    response = api_for(member).patch(f"/api/runs/{run.pk}/", {"status": "FINISHED"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "FINISHED" and body["end_time"] is not None and body["duration_seconds"] >= 0
    card.refresh_from_db()
    assert card.column.stage == Stage.ANALYZING


def test_update_end_time_and_name(api_for, member, run):
    end = (run.start_time + timedelta(hours=2)).isoformat()
    body = api_for(member).patch(f"/api/runs/{run.pk}/", {"end_time": end, "name": "renamed"}, format="json").json()
    assert body["name"] == "renamed" and body["duration_seconds"] == 7200


@pytest.mark.parametrize(
    ("payload", "field"),
    [({}, "non_field_errors"), ({"status": "done"}, "status"), ({"end_time": "2000-01-01T00:00:00Z"}, "end_time")],
)
def test_update_run_bad_input(api_for, member, run, payload, field):
    body = assert_error(api_for(member).patch(f"/api/runs/{run.pk}/", payload, format="json"), 400, "invalid")
    assert field in body["fields"]


def test_run_detail_has_params_tags_latest_metrics(api_for, member, run):
    client = api_for(member)
    client.post(f"/api/runs/{run.pk}/params/", {"params": {"lr": "0.01"}}, format="json")
    client.post(f"/api/runs/{run.pk}/metrics/", {"metrics": [
        {"key": "loss", "value": 0.9, "step": 0, "timestamp": 1000},
        {"key": "loss", "value": 0.5, "step": 1, "timestamp": 2000},
    ]}, format="json")
    body = client.get(f"/api/runs/{run.pk}/").json()
    assert body["params"] == {"lr": "0.01"}
    assert body["metrics"] == [{"key": "loss", "value": 0.5, "step": 1, "timestamp": 2000}]
    assert body["run_uuid"] == run.external_id


def test_run_filters(api_for, member, board, team):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    linked = run_create(team=team, user=member, name="linked")
    card_link_run(card=card, run=linked, actor=member)
    run_create(team=team, user=member, name="failed", status=RunStatus.FAILED)
    old = run_create(team=team, user=member, name="old")
    Run.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(days=3))
    client = api_for(member)

    def names(query: str) -> list[str]:
        response = client.get(f"/api/runs/?{query}")
        assert response.status_code == 200, response.content
        return sorted(r["name"] for r in response.json()["results"])

    assert names("status=FAILED") == ["failed"]
    assert names(f"card={card.pk}") == ["linked"]
    since = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert names(f"since={since}") == ["failed", "linked"]
    assert names("team=vision") == ["failed", "linked", "old"]
    assert names("team=rivals") == []


@pytest.mark.parametrize("query", ["status=done", "since=last-week", "card=abc", "statsu=FAILED"])
def test_run_filters_bad_values_are_400(api_for, member, team, query):
    assert_error(api_for(member).get(f"/api/runs/?{query}"), 400, "invalid")


# --- Params --------------------------------------------------------------------------------------


def test_params_are_immutable(api_for, member, run):
    client = api_for(member)
    url = f"/api/runs/{run.pk}/params/"
    assert client.post(url, {"params": {"lr": 0.1, "depth": 6}}, format="json").json()["params"] == {
        "depth": "6", "lr": "0.1"
    }
    # Same value again: fine (retries are safe).
    assert client.post(url, {"params": {"lr": "0.1"}}, format="json").status_code == 200
    body = assert_error(client.post(url, {"params": {"lr": 0.2, "new": "x"}}, format="json"), 400, "invalid")
    assert "Changing param values is not allowed" in body["message"] and "lr" in body["message"]
    assert dict(Param.objects.filter(run=run).values_list("key", "value")) == {"lr": "0.1", "depth": "6"}


@pytest.mark.parametrize("payload", [{}, {"params": {}}, {"params": "lr=1"}, {"params": {"": "x"}},
                                     {"params": {"a": "x" * 6001}}])
def test_params_bad_input(api_for, member, run, payload):
    assert_error(api_for(member).post(f"/api/runs/{run.pk}/params/", payload, format="json"), 400, "invalid")
    assert not Param.objects.filter(run=run).exists()


# --- Metrics -------------------------------------------------------------------------------------


def batch(n: int, *, key: str = "loss", start: int = 0) -> list[dict]:
    return [{"key": key, "value": 1.0 / (i + 1), "step": i, "timestamp": 1_700_000_000_000 + i}
            for i in range(start, start + n)]


def test_metric_batch_is_idempotent(api_for, member, run):
    client = api_for(member)
    url = f"/api/runs/{run.pk}/metrics/"
    points = batch(50) + batch(20, key="acc")
    first = client.post(url, {"metrics": points}, format="json")
    assert first.status_code == 200, first.content
    assert first.json() == {"received": 70, "added": 70}
    retry = client.post(url, {"metrics": points}, format="json")
    assert retry.json() == {"received": 70, "added": 0}
    assert Metric.objects.filter(run=run).count() == 70
    # A partly overlapping retry adds only the new points.
    overlap = client.post(url, {"metrics": batch(60)}, format="json")
    assert overlap.json() == {"received": 60, "added": 10}
    assert Metric.objects.filter(run=run, key="loss").count() == 60
    latest = LatestMetric.objects.get(run=run, key="loss")
    assert (latest.step, latest.value) == (59, pytest.approx(1 / 60))


def test_metric_batch_accepts_bare_list_and_duplicates_within_batch(api_for, member, run):
    point = {"key": "loss", "value": 0.3, "step": 1, "timestamp": 5}
    response = api_for(member).post(f"/api/runs/{run.pk}/metrics/", [point, point], format="json")
    assert response.json() == {"received": 2, "added": 1}


def test_nan_and_infinity_as_strings_are_kept_and_returned(api_for, member, run):
    client = api_for(member)
    points = [
        {"key": "loss", "value": "NaN", "step": 0, "timestamp": 10},
        {"key": "loss", "value": "Infinity", "step": 1, "timestamp": 20},
        {"key": "loss", "value": "-Infinity", "step": 2, "timestamp": 30},
        {"key": "loss", "value": 0.25, "step": 3, "timestamp": 40},
    ]
    assert client.post(f"/api/runs/{run.pk}/metrics/", {"metrics": points}, format="json").json()["added"] == 4
    rows = list(Metric.objects.filter(run=run).order_by("step"))
    assert rows[0].is_nan and rows[0].value == 0.0
    assert rows[1].value == math.inf and rows[2].value == -math.inf
    history = client.get(f"/api/runs/{run.pk}/metrics/history/?key=loss").json()["results"]
    assert [p["value"] for p in history] == ["NaN", "Infinity", "-Infinity", 0.25]
    # Retrying NaN points is idempotent too.
    assert client.post(f"/api/runs/{run.pk}/metrics/", {"metrics": points}, format="json").json()["added"] == 0


def test_nan_and_infinity_as_json_number_literals(api_for, member, run):
    # Python's json.dumps writes NaN/Infinity literals; clients such as `requests` send them as is.
    text = json.dumps({"metrics": [
        {"key": "loss", "value": float("nan"), "step": 0, "timestamp": 1},
        {"key": "loss", "value": float("inf"), "step": 1, "timestamp": 2},
    ]})
    assert "NaN" in text
    response = post_raw(api_for(member), f"/api/runs/{run.pk}/metrics/", text)
    assert response.status_code == 200, response.content
    assert response.json()["added"] == 2
    latest = api_for(member).get(f"/api/runs/{run.pk}/").json()["metrics"]
    assert latest == [{"key": "loss", "value": "Infinity", "step": 1, "timestamp": 2}]


def test_oversize_batch_is_rejected_with_clear_message(api_for, member, run):
    response = api_for(member).post(f"/api/runs/{run.pk}/metrics/", {"metrics": batch(1001)}, format="json")
    body = assert_error(response, 400, "invalid")
    assert "at most 1000" in body["message"] and "1001" in body["message"]
    assert not Metric.objects.filter(run=run).exists()


def test_batch_of_exactly_1000_is_accepted(api_for, member, run):
    response = api_for(member).post(f"/api/runs/{run.pk}/metrics/", {"metrics": batch(1000)}, format="json")
    assert response.json() == {"received": 1000, "added": 1000}


@pytest.mark.parametrize(
    ("point", "where"),
    [
        ({"value": 1, "step": 0, "timestamp": 1}, "key"),
        ({"key": "loss", "step": 0, "timestamp": 1}, "value"),
        ({"key": "loss", "value": "high", "step": 0, "timestamp": 1}, "value"),
        ({"key": "loss", "value": True, "step": 0, "timestamp": 1}, "value"),
        ({"key": "loss", "value": 1, "step": "one", "timestamp": 1}, "step"),
        ({"key": "loss", "value": 1, "step": 0}, "timestamp"),
        ({"key": "loss", "value": 1, "step": 0, "timestamp": 1, "extra": 1}, "extra"),
        ({"key": "/etc/passwd", "value": 1, "step": 0, "timestamp": 1}, "key"),
    ],
)
def test_bad_metric_point_rejects_whole_batch(api_for, member, run, point, where):
    good = batch(3)
    response = api_for(member).post(f"/api/runs/{run.pk}/metrics/", {"metrics": [*good, point]}, format="json")
    body = assert_error(response, 400, "invalid")
    assert where in body["message"]
    assert not Metric.objects.filter(run=run).exists()


@pytest.mark.parametrize("payload", [{}, {"metrics": []}, {"metrics": "loss=1"}, {"points": []}])
def test_metric_batch_shape_errors(api_for, member, run, payload):
    assert_error(api_for(member).post(f"/api/runs/{run.pk}/metrics/", payload, format="json"), 400, "invalid")


def test_metric_history_paginates_in_step_order(api_for, member, run):
    run_log_metrics(run=run, points=[MetricPoint("loss", 1.0 / (i + 1), i, 1000 + i) for i in reversed(range(30))])
    run_log_metrics(run=run, points=[MetricPoint("acc", 0.5, 0, 1)])
    client = api_for(member)
    page = client.get(f"/api/runs/{run.pk}/metrics/history/?key=loss&limit=10&offset=10").json()
    assert page["count"] == 30
    assert [p["step"] for p in page["results"]] == list(range(10, 20))
    assert page["next"] and page["previous"]
    assert client.get(f"/api/runs/{run.pk}/metrics/history/?key=nope").json()["count"] == 0


def test_metric_history_requires_key(api_for, member, run):
    body = assert_error(api_for(member).get(f"/api/runs/{run.pk}/metrics/history/"), 400, "invalid")
    assert "key" in body["fields"]


def test_metric_history_keys_with_slashes(api_for, member, run):
    run_log_metrics(run=run, points=[MetricPoint("val/loss", 0.5, 0, 1)])
    body = api_for(member).get(f"/api/runs/{run.pk}/metrics/history/", {"key": "val/loss"}).json()
    assert [p["value"] for p in body["results"]] == [0.5]


# --- Run <-> card links --------------------------------------------------------------------------


def test_link_and_unlink_run(api_for, member, board, run):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    client = api_for(member)
    created = client.post("/api/links/", {"card": card.pk, "run": run.pk}, format="json")
    assert created.status_code == 201, created.content
    link = created.json()
    assert (link["card_key"], link["run"], link["via"], link["is_baseline"]) == (card.key, run.pk, "manual", False)
    again = client.post("/api/links/", {"card": card.pk, "run": run.pk}, format="json")
    assert again.status_code == 200 and again.json()["id"] == link["id"]
    assert client.get(f"/api/links/?card={card.pk}").json()["count"] == 1
    assert client.delete(f"/api/links/{link['id']}/").status_code == 204
    assert not CardRun.objects.exists()
    kinds = list(CardEvent.objects.filter(card=card).values_list("kind", flat=True))
    assert EventKind.LINKED in kinds and EventKind.UNLINKED in kinds


def test_link_errors(api_for, member, viewer, board, run, other_team, outsider):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    foreign_run = run_create(team=other_team, user=outsider)
    client = api_for(member)
    assert "run" in assert_error(
        client.post("/api/links/", {"card": card.pk, "run": foreign_run.pk}, format="json"), 400, "invalid"
    )["fields"]
    assert "card" in assert_error(client.post("/api/links/", {"run": run.pk}, format="json"), 400, "invalid")["fields"]
    assert_error(
        api_for(viewer).post("/api/links/", {"card": card.pk, "run": run.pk}, format="json"), 403, "permission_denied"
    )
    link = card_link_run(card=card, run=run, actor=member)
    assert_error(api_for(viewer).delete(f"/api/links/{link.pk}/"), 403, "permission_denied")
    assert_error(api_for(outsider).delete(f"/api/links/{link.pk}/"), 404, "not_found")
    assert CardRun.objects.filter(pk=link.pk).exists()


# --- Query counts --------------------------------------------------------------------------------


def _runs(team, board, user, n: int) -> None:
    card = card_create(board=board, kind="hypothesis", title="H", actor=user)
    for i in range(n):
        r = run_create(team=team, user=user, name=f"r{i}", params={"lr": i}, tags={"k": "v"})
        run_log_metrics(run=r, points=[MetricPoint("loss", 0.1, 0, 1), MetricPoint("acc", 0.9, 0, 1)])
        card_link_run(card=card, run=r, actor=user)


@pytest.mark.parametrize("n", [5, 10])
def test_run_list_query_count_is_constant(api_for, member, team, board, django_assert_num_queries, n):
    _runs(team, board, member, n)
    client = api_for(member)
    # count, page, latest metrics, card links with cards
    with django_assert_num_queries(4):
        response = client.get("/api/runs/")
    body = response.json()
    assert body["count"] == n
    assert all(len(r["metrics"]) == 2 and len(r["cards"]) == 1 for r in body["results"])


@pytest.mark.parametrize("n", [5, 10])
def test_link_list_query_count_is_constant(api_for, member, team, board, django_assert_num_queries, n):
    _runs(team, board, member, n)
    with django_assert_num_queries(2):
        response = api_for(member).get("/api/links/")
    assert response.json()["count"] == n


@pytest.mark.parametrize("n", [50, 100])
def test_metric_history_query_count_is_constant(api_for, member, run, django_assert_num_queries, n):
    run_log_metrics(run=run, points=[MetricPoint("loss", 0.1, i, i) for i in range(n)])
    # run lookup, count, page
    with django_assert_num_queries(3):
        response = api_for(member).get(f"/api/runs/{run.pk}/metrics/history/?key=loss")
    assert response.json()["count"] == n


def test_board_for_other_team_run_list_is_empty(api_for, outsider, team, board, member):
    _runs(team, board, member, 2)
    board_create(team=outsider.teams.first(), name="Theirs", key="THR")
    assert api_for(outsider).get("/api/runs/").json()["count"] == 0
