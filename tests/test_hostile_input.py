"""Hostile input gets a clear JSON 4xx, never a 500 or an HTML page: the MLflow API answers in
MLflow's error shape, the REST API in its own. Each case below was a 500 before (issue 10)."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from experiments.models import Run
from experiments.services.cards import card_create
from experiments.services.runs import run_create
from experiments.services.tokens import token_create

API = "/mlflow/api/2.0/mlflow"
DEEP = "[" * 100_000 + "]" * 100_000
BIG = 2**63


@pytest.fixture
def auth(member, team) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=member, name='t', team=team)[1]}"}


@pytest.fixture
def run(team, member) -> Run:
    return run_create(team=team, user=member, name="r")


def mlflow_post(client, auth, route: str, raw: str):
    return client.post(f"{API}/{route}", data=raw.encode("utf-8", "surrogatepass"), content_type="application/json",
                       **auth)


def assert_mlflow_400(response, *words: str) -> dict:
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), body
    for word in words:
        assert word in body["message"], body
    return body


def _metric(run_id: str, **fields) -> str:
    metric = {"key": "acc", "value": 0.5, "timestamp": 1, "step": 0, **fields}
    return json.dumps({"run_id": run_id, "metrics": [metric]})


@pytest.mark.parametrize(
    ("route", "make_raw", "words"),
    [
        ("runs/set-tag", lambda r: json.dumps({"run_id": r, "key": "k", "value": "a\x00b"}), ("NUL",)),
        ("runs/log-parameter", lambda r: json.dumps({"run_id": r, "key": "k\x00", "value": "v"}), ("NUL",)),
        ("experiments/create", lambda r: json.dumps({"name": "x\x00"}), ("NUL",)),
        ("runs/set-tag", lambda r: json.dumps({"run_id": r, "key": "k", "value": "\ud800"}), ("surrogate",)),
        ("experiments/create", lambda r: '{"name": "\\udfff"}', ("surrogate",)),
        ("runs/log-batch", lambda r: DEEP, ("nested",)),
        ("runs/log-batch", lambda r: f'{{"run_id": "{r}", "tags": {"[" * 40 + "]" * 40}}}', ("nested",)),
        ("runs/log-batch", lambda r: _metric(r, step=BIG), ("range",)),
        ("runs/log-batch", lambda r: _metric(r, timestamp=BIG), ("range",)),
        ("runs/log-batch", lambda r: _metric(r, timestamp=-BIG - 1), ("range",)),
        ("runs/log-metric", lambda r: json.dumps({"run_id": r, "key": "a", "value": 1, "timestamp": 10**30}),
         ("range",)),
        ("runs/log-batch", lambda r: _metric(r).replace('"value": 0.5', '"value": 1e400'), ("range",)),
        ("runs/log-batch", lambda r: _metric(r).replace('"step": 0', '"step": 1e400'), ("range",)),
        ("runs/update", lambda r: json.dumps({"run_id": r, "end_time": 10**17}), ("range",)),
        ("runs/update", lambda r: json.dumps({"run_id": r, "end_time": BIG}), ("range",)),
        ("runs/create", lambda r: json.dumps({"start_time": 10**17}), ("range",)),
        ("runs/search", lambda r: json.dumps({"filter": "attributes.run_name LIKE '" + "%" * 5000 + "'"}),
         ("LIKE",)),
        ("runs/search", lambda r: json.dumps({"filter": "tags.t LIKE '" + "%" * 900 + "a_" * 20 + "'"}),
         ("wildcards",)),
        ("runs/search", lambda r: json.dumps({"page_token": "eyJvZmZzZXQiOjkyMjMzNzIwMzY4NTQ3NzU4MDh9"}),
         ("page token",)),
        ("runs/search", lambda r: json.dumps({"max_results": BIG}), ("range",)),
        ("runs/search", lambda r: json.dumps({"max_results": 1e300}), ("max_results",)),
        ("runs/search", lambda r: json.dumps({"filter": "attributes.start_time > 99999999999999999999"}), ("range",)),
        ("runs/log-batch", lambda r: '{"run_id": "' + r + '", "metrics": [{"key": "a", "value": 1, "timestamp": '
         + "9" * 5000 + "}]}", ("range",)),
    ],
)
def test_hostile_mlflow_input_is_400_in_mlflow_shape(client, auth, run, route, make_raw, words):
    assert_mlflow_400(mlflow_post(client, auth, route, make_raw(run.external_id)), *words)


def test_hostile_query_string_is_400(client, auth, run):
    response = client.get(f"{API}/runs/get", {"run_id": "a\x00b"}, **auth)
    assert_mlflow_400(response, "NUL")
    history = client.get(f"{API}/metrics/get-history", {"run_id": run.external_id, "metric_key": "a",
                                                         "page_token": "eyJzdGVwIjoiYSIsInRzIjoxLCJpZCI6MX0="}, **auth)
    assert_mlflow_400(history, "page token")


@pytest.mark.parametrize(
    ("route", "payload"),
    [
        ("runs/update", {"run_name": "n" * 300}),
        ("runs/search", {"filter": "metrics.acc > 1e400"}),
        ("experiments/create", {"name": "e" * 600}),
        ("experiments/create", {"name": "e", "artifact_location": "a" * 2000}),
        ("runs/set-tag", {"key": "k" * 300, "value": "v"}),
        ("runs/log-parameter", {"key": "k", "value": "v" * 10_000}),
    ],
)
def test_over_long_or_extreme_values_are_not_500(client, auth, run, route, payload):
    response = mlflow_post(client, auth, route, json.dumps({"run_id": run.external_id, **payload}))
    assert response.status_code in (200, 400), response.content[:300]
    assert response["Content-Type"] == "application/json"


# --- REST API ---------------------------------------------------------------------------------------


@pytest.fixture
def api(member) -> APIClient:
    client = APIClient()
    client.force_authenticate(member)
    return client


def assert_rest_400(response, *words: str) -> dict:
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] in ("invalid", "parse_error"), error
    for word in words:
        assert word in error["message"], error
    return error


def rest_post(api, url: str, raw: str, method: str = "post"):
    return getattr(api, method)(url, data=raw.encode("utf-8", "surrogatepass"), content_type="application/json")


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ('{"board": BOARD, "kind": "hypothesis", "title": "a\\u0000b"}', ("NUL",)),
        ('{"board": BOARD, "kind": "hypothesis", "title": "\\ud800"}', ("surrogate",)),
        (DEEP, ("nested",)),
        ('{"board": BOARD, "kind": "hypothesis", "title": "t", "min_runs": 9223372036854775808}', ("range",)),
        ('{"board": BOARD, "kind": "hypothesis", "title": "t", "threshold": 1e400}', ("range",)),
        ('{"board": BOARD, "kind": "hypothesis", "title": "t", "threshold": NaN}', ("NaN",)),
        ('{"board": BOARD, "kind": "hypothesis", "title": "' + "t" * 5000 + '"}', ("title",)),
        ('{"board": BOARD, "kind": "hypothesis", "title": "t", "metric_key": "' + "m" * 5000 + '"}', ("metric_key",)),
    ],
)
def test_hostile_rest_card_input_is_400_json(api, board, raw, words):
    assert_rest_400(rest_post(api, "/api/cards/", raw.replace("BOARD", str(board.pk))), *words)


def test_hostile_rest_run_input_is_400_json(api, team, member):
    run = run_create(team=team, user=member, name="r")
    metric = '{"metrics": [{"key": "a", "value": 1, "step": 9223372036854775808}]}'
    assert_rest_400(rest_post(api, f"/api/runs/{run.pk}/metrics/", metric), "range")
    assert_rest_400(rest_post(api, "/api/runs/", '{"team": "vision", "name": "\\u0000"}'))
    assert_rest_400(rest_post(api, f"/api/runs/{run.pk}/params/", '{"params": {"a\\u0000": "b"}}'), "NUL")


def test_hostile_rest_query_strings_are_4xx_json(api, board, member):
    card_create(board=board, kind="hypothesis", title="t", actor=member)
    for url in (f"/api/cards/?board={board.pk}&q=a%00b", "/api/cards/?board=9223372036854775808",
                "/api/runs/?limit=10&offset=9223372036854775808", "/api/cards/?limit=99999999999999999999999"):
        response = api.get(url)
        assert 400 <= response.status_code < 500 or response.status_code == 200, (url, response.content[:200])
        assert response["Content-Type"].startswith("application/json"), url


def test_unknown_api_paths_and_errors_are_json_not_html(client, api):
    for url in ("/api/nope/", "/mlflow/nope", "/mlflow/api/2.0/mlflow/nope"):
        response = client.get(url)
        assert response.status_code == 404 and response["Content-Type"].startswith("application/json"), url
