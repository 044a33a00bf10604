"""MLflow-compatible endpoints through Django's test client: query counts stay flat as data grows,
and the request/response details that the live client tests do not reach."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from experiments.mlflow_api.search import order_runs, parse_order_by
from experiments.models import LatestMetric, Metric, Run, TrackingExperiment
from experiments.services.logged_models import (
    DatasetSpec,
    ModelMetricPoint,
    logged_model_create,
    logged_model_log_metrics,
    run_log_inputs,
)
from experiments.services.runs import MetricPoint, run_create, run_log_batch, tracking_experiment_get_or_create
from experiments.services.tokens import token_authenticate, token_create

API = "/mlflow/api/2.0/mlflow"


@pytest.fixture
def auth(member, team) -> dict[str, str]:
    secret = token_create(user=member, name="t", team=team)[1]
    token_authenticate(secret=secret)  # records last use now, so counted requests do not write it
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


@pytest.fixture
def post(client, auth):
    def do(route: str, payload: dict):
        return client.post(f"{API}/{route}", data=json.dumps(payload), content_type="application/json", **auth)

    return do


@pytest.fixture
def get(client, auth):
    def do(route: str, params: dict):
        return client.get(f"{API}/{route}", params, **auth)

    return do


def _runs(team, member, experiment, count: int) -> list[Run]:
    runs = []
    for i in range(count):
        run = run_create(team=team, user=member, experiment=experiment, name=f"r{i}", tags={"k": str(i)})
        run_log_batch(
            run=run,
            metrics=[MetricPoint("acc", i / 10, 0, 1), MetricPoint("loss", 1 - i / 10, 0, 1)],
            params={"lr": "0.1", "depth": str(i)},
        )
        runs.append(run)
    return runs


def _batch(run_id: str, n: int, *, offset: int = 0) -> dict:
    return {
        "run_id": run_id,
        "metrics": [
            {"key": f"m{i % 7}", "value": i * 0.5, "timestamp": 1000 + i, "step": i + offset} for i in range(n)
        ],
        "params": [{"key": f"p{i}-{n}", "value": "x"} for i in range(min(n // 10, 50))],
        "tags": [{"key": f"t{i}", "value": "y"} for i in range(min(n // 10, 50))],
    }


@pytest.mark.parametrize("size", [100, 200])
def test_log_batch_query_count_is_constant(post, team, member, django_assert_num_queries, size):
    run = run_create(team=team, user=member, name="bench")
    # token with its team membership and the run; then savepoint, params insert + check, points insert
    # and latest upsert (one statement on PostgreSQL), run lock + save for the tags, release.
    with django_assert_num_queries(8 if connection.vendor == "postgresql" else 9):
        response = post("runs/log-batch", _batch(run.external_id, size))
    assert response.status_code == 200, response.content
    assert Metric.objects.filter(run=run).count() == size
    assert LatestMetric.objects.filter(run=run).count() == 7


@pytest.mark.parametrize("size", [300, 600])
def test_metrics_only_batch_query_count(post, team, member, django_assert_num_queries, size):
    run = run_create(team=team, user=member, name="bench")
    payload = {"run_id": run.external_id, "metrics": _batch(run.external_id, size)["metrics"]}
    # token with its team membership and the run, then on PostgreSQL one statement for points and
    # latest values, atomic by itself so no savepoint (SQLite: savepoint, points, latest values,
    # release). The run was touched just now, so its last-activity time is not rewritten.
    with django_assert_num_queries(2 if connection.vendor == "postgresql" else 5):
        assert post("runs/log-batch", payload).status_code == 200
    assert Metric.objects.filter(run=run).count() == size


@pytest.mark.parametrize("stored", [50, 100])
def test_log_metric_query_count(post, team, member, django_assert_num_queries, stored):
    """Per-step logging (one point per request) costs the same few queries however long the series."""
    run = run_create(team=team, user=member, name="steps")
    run_log_batch(run=run, metrics=[MetricPoint("loss", 1 / (i + 1), i, 1000 + i) for i in range(stored)])
    point = {"run_id": run.external_id, "key": "loss", "value": 0.01, "timestamp": 5000, "step": stored}
    with django_assert_num_queries(2 if connection.vendor == "postgresql" else 5):
        assert post("runs/log-metric", point).status_code == 200
    assert Metric.objects.filter(run=run).count() == stored + 1
    latest = LatestMetric.objects.get(run=run, key="loss")
    assert (latest.step, latest.value) == (stored, 0.01)


@pytest.mark.parametrize("stored", [50, 100])
def test_log_metric_from_a_recent_caller_is_one_statement(post, team, member, django_assert_num_queries, stored):
    """A training loop's next step: the caller read for the previous request serves again, and the
    insert itself re-checks the token (PostgreSQL: one statement; elsewhere the check is a query)."""
    run = run_create(team=team, user=member, name="steps")
    run_log_batch(run=run, metrics=[MetricPoint("loss", 1 / (i + 1), i, 1000 + i) for i in range(stored)])
    point = {"run_id": run.external_id, "key": "loss", "value": 0.01, "timestamp": 5000, "step": stored}
    assert post("runs/log-metric", point).status_code == 200
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 5):
        assert post("runs/log-metric", {**point, "step": stored + 1}).status_code == 200
    assert Metric.objects.filter(run=run).count() == stored + 2
    assert LatestMetric.objects.get(run=run, key="loss").step == stored + 1


def _revoke(token, user, membership, run):
    from experiments.services.tokens import token_revoke

    token_revoke(token=token)


def _deactivate(token, user, membership, run):
    user.is_active = False
    user.save(update_fields=["is_active"])


def _make_viewer(token, user, membership, run):
    from experiments.models import Role

    membership.role = Role.VIEWER
    membership.save(update_fields=["role"])


def _delete_run(token, user, membership, run):
    from experiments.services.runs import run_delete

    run_delete(run=run)


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        (_revoke, 401, "Invalid or revoked API token"),
        (_deactivate, 401, "Invalid or revoked API token"),
        (_make_viewer, 403, "viewer"),
        (_delete_run, 400, "must be in the 'active' state"),
    ],
)
@pytest.mark.parametrize("route", ["log-metric", "log-batch"])
def test_a_change_of_access_stops_a_recent_caller_at_once(client, make_user, team, change, status, words, route):
    """The caller cache never outlives the access it was read with: the next write after a revoke,
    deactivation, role change or run deletion is refused as a fresh request would be, storing nothing."""
    from experiments.models import Membership, Param, Role

    user = make_user("looper")
    membership = Membership.objects.create(team=team, user=user, role=Role.MEMBER)
    token, secret = token_create(user=user, name="t", team=team)
    run = run_create(team=team, user=user, name="r")

    def log(step: int):
        point = {"key": "loss", "value": 1.0, "timestamp": step, "step": step}
        if route == "log-metric":
            body = {"run_id": run.external_id, **point}
        else:
            body = {"run_id": run.external_id, "metrics": [point], "params": [{"key": f"p{step}", "value": "1"}]}
        return client.post(f"{API}/runs/{route}", data=json.dumps(body), content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert log(0).status_code == 200
    assert log(1).status_code == 200  # from the cache
    change(token, user, membership, run)
    response = log(2)
    assert response.status_code == status, response.content
    assert words in response.json()["message"]
    assert sorted(Metric.objects.filter(run=run).values_list("step", flat=True)) == [0, 1]
    if route == "log-batch":
        assert sorted(Param.objects.filter(run=run).values_list("key", flat=True)) == ["p0", "p1"]


def test_token_of_a_team_the_user_left_or_is_viewer_in_cannot_log(client, make_user, team):
    """The membership comes with the token in one query; leaving the team or becoming a viewer takes
    effect on the very next request."""
    from experiments.models import Membership, Role

    user = make_user("leaver")
    membership = Membership.objects.create(team=team, user=user, role=Role.MEMBER)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=user, name='t', team=team)[1]}"}
    run = run_create(team=team, user=user, name="r")
    point = {"run_id": run.external_id, "key": "loss", "value": 1.0, "timestamp": 1, "step": 0}

    def log():
        return client.post(f"{API}/runs/log-metric", data=json.dumps(point), content_type="application/json",
                           **headers)

    assert log().status_code == 200
    Membership.objects.filter(pk=membership.pk).update(role=Role.VIEWER)
    response = log()
    assert response.status_code == 403 and "viewer" in response.json()["message"]
    membership.delete()
    response = log()
    assert response.status_code == 403 and "no longer a member" in response.json()["message"]
    assert Metric.objects.filter(run=run).count() == 1


@pytest.mark.parametrize("count", [3, 6])
def test_search_runs_query_count(post, team, member, django_assert_num_queries, count):
    experiment = tracking_experiment_get_or_create(team=team, name="exp")
    _runs(team, member, experiment, count)
    # token with membership, ids of the runs with the metric (index order) and, as the page is not
    # full, of those without; the page's runs, latest metrics, params, datasets, model inputs/outputs
    with django_assert_num_queries(8):
        response = post("runs/search", {
            "experiment_ids": [str(experiment.pk)],
            "filter": "metrics.acc >= 0 and params.lr = '0.1' and tags.k != 'zz'",
            "order_by": ["metrics.loss ASC"],
        })
    runs = response.json()["runs"]
    assert len(runs) == count
    assert [r["info"]["run_name"] for r in runs] == [f"r{i}" for i in reversed(range(count))]
    assert {p["key"] for p in runs[0]["data"]["params"]} == {"lr", "depth"}


@pytest.mark.parametrize("count", [3, 6])
def test_search_logged_models_by_metric_query_count(post, team, member, django_assert_num_queries, count):
    experiment = tracking_experiment_get_or_create(team=team, name="models")
    run = run_create(team=team, user=member, experiment=experiment)
    for i in range(count):
        model = logged_model_create(team=team, experiment=experiment, user=member, name=f"m{i}", source_run=run)
        points = [ModelMetricPoint("acc", i / 10 + step, step, 1000 + step, model.model_id, "val", "d1")
                  for step in range(3)]
        logged_model_log_metrics(team=team, run=run, points=points)
    # token with membership, experiment, models page, metrics prefetch
    with django_assert_num_queries(4):
        response = post("logged-models/search", {
            "experiment_ids": [str(experiment.pk)],
            "filter": "metrics.acc >= 0.1",
            "datasets": [{"dataset_name": "val", "dataset_digest": "d1"}],
            "order_by": [{"field_name": "metrics.acc", "ascending": False}],
        })
    models = response.json()["models"]
    assert [m["info"]["name"] for m in models] == [f"m{i}" for i in reversed(range(count))]
    assert len(models[0]["data"]["metrics"]) == 3


@pytest.mark.parametrize("order_by", [["metrics.acc DESC"], ["metrics.acc ASC"], ["metrics.acc DESC", "run_name DESC"]])
@pytest.mark.parametrize("page_size", [1, 2, 3, 100])
def test_search_runs_by_metric_pages_match_one_ordered_query(post, team, member, order_by, page_size):
    """The two-step read (runs with the metric off the index, then the rest) pages exactly like one
    ORDER BY over all runs, across the boundary, with ties, NaN and missing values."""
    experiment = tracking_experiment_get_or_create(team=team, name="exp")
    values = {"a": 0.5, "b": 0.5, "c": 0.9, "d": 0.1, "e": float("nan"), "f": None, "g": None, "h": None}
    for name, value in values.items():
        run = run_create(team=team, user=member, experiment=experiment, name=name)
        if value is not None:
            run_log_batch(run=run, metrics=[MetricPoint("acc", value, 0, 1)])
    expected = [run.name for run in order_runs(Run.objects.filter(team=team), parse_order_by(order_by))]
    assert set(expected[-4:]) == {"e", "f", "g", "h"}  # NaN and missing last, either direction
    names, token = [], None
    for _ in range(len(values) + 1):
        payload = {"experiment_ids": [str(experiment.pk)], "order_by": order_by, "max_results": page_size}
        data = post("runs/search", {**payload, **({"page_token": token} if token else {})}).json()
        names += [r["info"]["run_name"] for r in data.get("runs", [])]
        token = data.get("next_page_token")
        if not token:
            break
    assert names == expected


@pytest.mark.parametrize("count", [4, 8])
def test_search_experiments_query_count(post, team, django_assert_num_queries, count):
    for i in range(count):
        tracking_experiment_get_or_create(team=team, name=f"exp-{i}")
    with django_assert_num_queries(2):
        response = post("experiments/search", {"max_results": 100, "order_by": ["name ASC"]})
    # Every team has MLflow's Default experiment from the start.
    assert [e["name"] for e in response.json()["experiments"]] == ["Default"] + [f"exp-{i}" for i in range(count)]


@pytest.mark.parametrize("points", [500, 1000])
def test_metric_history_query_count(get, team, member, django_assert_num_queries, points):
    run = run_create(team=team, user=member, name="long")
    run_log_batch(run=run, metrics=[MetricPoint("loss", 1 / (s + 1), s, 10 + s) for s in range(points)])
    with django_assert_num_queries(3):
        response = get("metrics/get-history", {"run_id": run.external_id, "metric_key": "loss"})
    assert [m["step"] for m in response.json()["metrics"]] == list(range(points))


@pytest.mark.parametrize("count", [5, 10])
def test_get_run_query_count(get, team, member, django_assert_num_queries, count):
    run = run_create(team=team, user=member, name="wide")
    run_log_batch(
        run=run,
        metrics=[MetricPoint(f"m{i}", i, 0, 1) for i in range(count)],
        params={f"p{i}": i for i in range(count)},
    )
    run_log_inputs(run=run, datasets=[
        DatasetSpec(f"d{i}", f"{i:08x}", "local", '{"uri": "/data"}', tags={"mlflow.data.context": "training"})
        for i in range(count)
    ])
    # token with its team membership, run, latest metrics, params, datasets, model inputs/outputs
    with django_assert_num_queries(6):
        response = get("runs/get", {"run_id": run.external_id})
    data = response.json()["run"]["data"]
    assert len(data["metrics"]) == count and len(data["params"]) == count
    inputs = response.json()["run"]["inputs"]["dataset_inputs"]
    assert [d["dataset"]["name"] for d in inputs] == [f"d{i}" for i in range(count)]
    assert inputs[0]["tags"] == [{"key": "mlflow.data.context", "value": "training"}]


def test_history_pages_with_explicit_page_size(get, team, member):
    run = run_create(team=team, user=member, name="paged")
    # Same step twice with different timestamps: order is (step, timestamp).
    run_log_batch(run=run, metrics=[MetricPoint("x", s, s // 2, 100 - s) for s in range(25)])
    seen, token = [], None
    for _ in range(10):
        params = {"run_id": run.external_id, "metric_key": "x", "max_results": 4}
        if token:
            params["page_token"] = token
        body = get("metrics/get-history", params).json()
        assert len(body["metrics"]) <= 4
        seen += [(m["step"], m["timestamp"]) for m in body["metrics"]]
        token = body.get("next_page_token")
        if not token:
            break
    assert seen == sorted((s // 2, 100 - s) for s in range(25))
    bad = get("metrics/get-history", {"run_id": run.external_id, "metric_key": "x", "page_token": "garbage"})
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    zero = get("metrics/get-history", {"run_id": run.external_id, "metric_key": "x", "max_results": 0})
    assert zero.status_code == 400


def test_update_run_and_delete_restore(post, get, team, member):
    run = run_create(team=team, user=member, name="r")
    response = post("runs/update", {"run_id": run.external_id, "status": "KILLED", "end_time": 1_700_000_000_000,
                                    "run_name": "renamed"})
    info = response.json()["run_info"]
    assert (info["status"], info["end_time"], info["run_name"]) == ("KILLED", 1_700_000_000_000, "renamed")
    assert post("runs/update", {"run_id": run.external_id, "status": "DONE"}).json()["error_code"] == (
        "INVALID_PARAMETER_VALUE"
    )
    assert post("runs/delete", {"run_id": run.external_id}).status_code == 200
    assert post("runs/search", {}).json() == {"runs": []}
    deleted = post("runs/search", {"run_view_type": "DELETED_ONLY"}).json()["runs"]
    assert [r["info"]["lifecycle_stage"] for r in deleted] == ["deleted"]
    blocked = post("runs/log-metric", {"run_id": run.external_id, "key": "a", "value": 1, "timestamp": 1})
    assert blocked.status_code == 400 and "active" in blocked.json()["message"]
    assert post("runs/restore", {"run_id": run.external_id}).status_code == 200
    assert len(post("runs/search", {}).json()["runs"]) == 1


def test_search_filter_errors_are_clear(post):
    for bad in ("metrics.acc >", "metrics.acc > 1 or params.a = 'b'", "foo.bar = 'x'", "nonsense = 'x'",
                "params.lr = 0.1", "metrics.acc LIKE 'x'"):
        response = post("runs/search", {"filter": bad})
        assert response.status_code == 400, bad
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE" and response.json()["message"]


def test_malformed_body_and_wrong_method(client, auth, post):
    response = client.post(f"{API}/runs/create", data="{nope", content_type="application/json", **auth)
    assert response.status_code == 400 and response.json()["error_code"] == "BAD_REQUEST"
    response = client.get(f"{API}/runs/create", **auth)
    assert response.status_code == 404 and response.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert post("runs/create", {"run_name": "a", "tags": [{"key": "mlflow.runName", "value": "b"}]}).status_code == 400


def test_oversized_batch_is_a_clear_400_not_a_server_error(post, team, member, settings):
    run = run_create(team=team, user=member, name="big")
    payload = {"run_id": run.external_id, "tags": [{"key": "note", "value": "x" * 1_100_000}]}
    response = post("runs/log-batch", payload)
    assert response.status_code == 400 and "at most 1000000 bytes" in response.json()["message"]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post("runs/set-tag", {"run_id": run.external_id, "key": "note", "value": "x" * 5000})
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_default_experiment_exists_from_the_start_and_viewers_cannot_write(client, viewer, member, team, get, post):
    secret = token_create(user=viewer, name="ro", team=team)[1]
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}

    def viewer_call(method: str, route: str, payload: dict):
        if method == "GET":
            return client.get(f"{API}/{route}", payload, **headers)
        return client.post(f"{API}/{route}", data=json.dumps(payload), content_type="application/json", **headers)

    # A new team has MLflow's Default experiment (id 0) from the start: a viewer reads it.
    default = TrackingExperiment.objects.get(team=team, name="Default")
    response = viewer_call("GET", "experiments/get", {"experiment_id": "0"})
    assert response.status_code == 200 and response.json()["experiment"]["experiment_id"] == str(default.pk)
    response = viewer_call("GET", "experiments/get-by-name", {"experiment_name": "Default"})
    assert response.status_code == 200 and response.json()["experiment"]["name"] == "Default"
    response = viewer_call("POST", "runs/search", {"experiment_ids": ["0"]})
    assert response.status_code == 200 and response.json() == {"runs": []}
    # Writes that would create it: refused like any viewer write.
    for route, payload in (
        ("runs/create", {"experiment_id": "0", "run_name": "x"}),
        ("runs/create", {"run_name": "no experiment id"}),
        ("experiments/set-experiment-tag", {"experiment_id": "0", "key": "k", "value": "v"}),
    ):
        response = viewer_call("POST", route, payload)
        assert response.status_code == 403, route
        assert response.json()["error_code"] == "PERMISSION_DENIED" and "viewer" in response.json()["message"]
    assert not Run.objects.filter(team=team).exists()

    # A member's run in experiment 0 lands in it; the viewer sees it.
    response = post("runs/create", {"experiment_id": "0", "run_name": "first"})
    assert response.status_code == 200, response.content
    assert Run.objects.get(team=team).experiment == default
    response = viewer_call("POST", "runs/search", {"experiment_ids": ["0"]})
    assert [r["info"]["run_name"] for r in response.json()["runs"]] == ["first"]
    response = viewer_call("POST", "experiments/set-experiment-tag", {"experiment_id": "0", "key": "k", "value": "v"})
    assert response.status_code == 403 and response.json()["error_code"] == "PERMISSION_DENIED"
    default.refresh_from_db()
    assert default.tags == {} and TrackingExperiment.objects.filter(team=team).count() == 1


def test_member_read_of_missing_default_experiment_creates_it(team, get):
    # Members keep MLflow's behaviour: experiment 0 always exists for them.
    response = get("experiments/get", {"experiment_id": "0"})
    assert response.status_code == 200 and response.json()["experiment"]["name"] == "Default"
    assert TrackingExperiment.objects.filter(team=team, name="Default", source="mlboard").count() == 1


def test_run_loaded_with_the_token_is_only_the_token_teams(client, member, team, outsider, other_team):
    """The run named in the body comes in the token's query, joined on the token's team: another
    team's run id is still 'not found', a deleted run still refused, a token without a team still
    resolves its run the usual way, and a bad body from a bad token is still 401 first."""
    from experiments.services.runs import run_delete

    theirs = run_create(team=other_team, user=outsider, name="theirs")
    ours = run_create(team=team, user=member, name="ours")
    gone = run_delete(run=run_create(team=team, user=member, name="gone"))
    bound = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=member, name='b', team=team)[1]}"}
    unbound = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=member, name='u')[1]}"}

    def log(headers, run_id, step=0, raw=None):
        body = raw if raw is not None else json.dumps(
            {"run_id": run_id, "key": "loss", "value": 1.0, "timestamp": 1, "step": step})
        return client.post(f"{API}/runs/log-metric", data=body, content_type="application/json", **headers)

    response = log(bound, theirs.external_id)
    assert response.status_code == 404 and response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert log(bound, gone.external_id).json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert log(bound, ours.external_id).status_code == 200
    assert log(unbound, ours.external_id, step=1).status_code == 200
    assert list(Metric.objects.filter(run=ours).values_list("step", flat=True).order_by("step")) == [0, 1]
    assert not Metric.objects.filter(run__in=[theirs, gone]).exists()
    bad = {"HTTP_AUTHORIZATION": "Bearer mlb_nope"}
    assert log(bad, "", raw="{not json").json()["error_code"] == "UNAUTHENTICATED"
    assert log(bound, "", raw="{not json").json()["error_code"] == "BAD_REQUEST"


def test_api_answers_carry_a_strict_policy_and_pages_keep_theirs(post, client, member, team):
    """MLflow API JSON brings its own Content-Security-Policy (nothing to load or frame), so django-csp
    skips building one; pages still get the site policy."""
    from experiments.mlflow_api.http import API_CSP

    ok = post("experiments/create", {"name": "csp"})
    assert ok.status_code == 200 and ok["Content-Security-Policy"] == API_CSP
    missing = post("runs/get", {"run_id": "nope"})
    assert missing.status_code == 404 and missing["Content-Security-Policy"] == API_CSP
    client.force_login(member)
    page = client.get("/")
    policy = page["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
