"""Property-based fuzzing of every MLflow-compatible endpoint: whatever the body or query string,
the answer is below 500 and is JSON in MLflow's error shape when it is an error.

The routes are read from experiments/mlflow_api/urls.py, so endpoints added later are fuzzed too.
Examples per route: MLBOARD_FUZZ_EXAMPLES (default 40); derandomized, so CI runs are repeatable.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.mlflow_api import urls as mlflow_urls
from experiments.services.runs import MetricPoint, run_create, run_log_batch, tracking_experiment_get_or_create
from experiments.services.tokens import token_create

EXAMPLES = int(os.environ.get("MLBOARD_FUZZ_EXAMPLES", "40"))
PREFIX = "/mlflow/"


def _routes() -> list[tuple[str, tuple[str, ...]]]:
    """(path, methods) of each concrete MLflow route under api/ (ajax-api/ serves the same views)."""
    found = []
    for pattern in mlflow_urls.urlpatterns:
        if isinstance(pattern, URLResolver) or not isinstance(pattern, URLPattern):
            continue
        route = str(pattern.pattern)
        if not route.startswith("api/") or "(" in route or "<" in route or "^" in route:
            continue
        methods = getattr(pattern.callback, "mlflow_methods", ("GET", "POST"))
        found.append((PREFIX + route, tuple(methods)))
    return found


ROUTES = _routes()
NAMES = (
    "run_id", "run_uuid", "experiment_id", "experiment_ids", "experiment_name", "name", "key", "value", "timestamp",
    "step", "metrics", "params", "tags", "filter", "max_results", "page_token", "order_by", "view_type",
    "run_view_type", "status", "end_time", "start_time", "run_name", "metric_key", "artifact_location",
    "path", "version", "description", "new_name", "stage",
)
BIG_INTS = (2**63, -(2**63) - 1, 2**64, 10**30, 2**63 - 1, -1, 0)

_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["a\x00b", "\x00", "\ud800", "x\udfff", "‮evil", "%" * 3000, "_" * 500, "' OR 1=1 --",
                     "metrics.acc > 1", "tags.`a` LIKE '%%%%'", "0", "-1", "1e400", "NaN", "Infinity"]),
    st.text(alphabet="%_ab'", min_size=100, max_size=2000),
    st.builds(lambda n: "x" * n, st.sampled_from([251, 501, 1001, 6001, 8001, 100_000])),
)
_number = st.one_of(st.integers(), st.sampled_from(BIG_INTS), st.floats(allow_nan=True, allow_infinity=True))
RAW_1E400 = "__RAW_1E400__"
_leaf = st.one_of(st.none(), st.booleans(), _text, _number, st.just(RAW_1E400))


def _metric_like(run_ids: list[str]) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {},
        optional={
            "key": _text | st.just("acc"),
            "value": _leaf,
            "timestamp": _leaf,
            "step": _leaf,
        },
    )


def _values(run_ids: list[str], experiment_ids: list[str]) -> st.SearchStrategy:
    nested = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                          max_leaves=8)
    return st.one_of(
        _leaf,
        st.sampled_from(run_ids + experiment_ids),
        st.lists(_metric_like(run_ids), max_size=4),
        st.lists(st.fixed_dictionaries({"key": _text, "value": _leaf}), max_size=3),
        nested,
        st.integers(min_value=1, max_value=60).map(lambda d: "__DEEP__" * d),
    )


def _encode(value: Any) -> str:
    raw = json.dumps(value, ensure_ascii=True, allow_nan=True)
    raw = raw.replace(json.dumps(RAW_1E400), "1e400")
    while '"__DEEP__' in raw:  # nesting of a depth hypothesis picks, as raw JSON
        start = raw.index('"__DEEP__')
        end = raw.index('"', start + 1)
        depth = (end - start - 1) // len("__DEEP__")
        raw = raw[:start] + "[" * depth + "1" + "]" * depth + raw[end + 1:]
    return raw


@pytest.fixture
def world(team, member):
    secret = token_create(user=member, name="fuzz", team=team)[1]
    experiment = tracking_experiment_get_or_create(team=team, name="fuzz")
    run = run_create(team=team, user=member, experiment=experiment, name="fuzz-run")
    run_log_batch(run=run, metrics=[MetricPoint("acc", 0.5, 0, 1)], params={"lr": "0.1"})
    return {"auth": {"HTTP_AUTHORIZATION": f"Bearer {secret}"}, "runs": [run.external_id],
            "experiments": [str(experiment.pk), "0"]}


def _assert_json_below_500(response, what: str) -> None:
    assert response.status_code < 500, (what, response.status_code, response.content[:500])
    body = json.loads(response.content)
    if response.status_code >= 400:
        assert isinstance(body.get("error_code"), str) and isinstance(body.get("message"), str), (what, body)


@pytest.mark.parametrize(("path", "methods"), ROUTES, ids=[path[len(PREFIX):] for path, _ in ROUTES])
@pytest.mark.django_db(transaction=True)  # autocommit as in production: a refused query cannot poison the next
def test_fuzzed_requests_never_5xx(path, methods, world):
    assert ROUTES, "no MLflow routes found"
    client = Client()
    values = _values(world["runs"], world["experiments"])
    body = st.dictionaries(st.sampled_from(NAMES) | _text, values, max_size=6)
    raw_body = st.one_of(
        body.map(_encode),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        st.sampled_from(["", "[]", "null", "1e400", "{", '{"run_id": "\\ud800"}', "[" * 50_000]),
    )

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(method=st.sampled_from(methods), raw=raw_body, query=body)
    def check(method: str, raw: str, query: dict) -> None:
        if method == "GET":
            params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in query.items()}
            response = client.get(f"{path}?{urlencode(params, errors='surrogatepass')}", **world["auth"])
        else:
            data = raw.encode("utf-8", "surrogatepass")
            response = client.generic(method, path, data, content_type="application/json", **world["auth"])
        _assert_json_below_500(response, f"{method} {path}")

    check()
