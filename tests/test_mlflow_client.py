"""The official mlflow client, unmodified, logging into a live mlboard server (training-script flow)."""

from __future__ import annotations

import getpass
import math
import os
import time

# Set before mlflow is imported: no telemetry, no retries (failures must be fast and local).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import mlflow
import pytest
import requests
from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import Param as MlflowParam
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.models import (
    Card,
    CardRun,
    LatestMetric,
    LinkVia,
    Metric,
    Param,
    Role,
    Run,
    Stage,
    TrackingExperiment,
)
from experiments.services.boards import membership_set
from experiments.services.cards import card_create
from experiments.services.runs import FLOAT_MAX
from experiments.services.tokens import token_create

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def tracking(live_server, monkeypatch):
    """Point the mlflow client at the live server; returns a function that switches token."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{live_server.url}/mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(f"{live_server.url}/mlflow")

    def use(secret: str | None) -> None:
        if secret is None:
            monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)

    yield use
    while mlflow.active_run() is not None:
        mlflow.end_run()
    # The client keeps the URI and the active experiment in module globals (and mirrors them into
    # os.environ, which monkeypatch restores): reset them so no other test inherits a dead server.
    mlflow.set_tracking_uri(None)
    mlflow.tracking.fluent._active_experiment_id = None


@pytest.fixture
def member_token(member, team) -> str:
    return token_create(user=member, name="laptop", team=team)[1]


def _error_code(excinfo: pytest.ExceptionInfo[MlflowException]) -> str:
    return excinfo.value.error_code


def test_training_script_logs_into_the_tokens_team(tracking, member_token, member, team, board):
    card = card_create(board=board, kind="hypothesis", title="Bigger trees help", actor=member)
    assert card.column.stage == Stage.BACKLOG
    tracking(member_token)

    experiment = mlflow.set_experiment("churn-gbm")
    with mlflow.start_run(run_name="baseline", tags={"mlboard.card": card.key}) as active:
        run_id = active.info.run_id
        # The card moved as soon as its first run started.
        assert Card.objects.get(pk=card.pk).column.stage == Stage.RUNNING
        mlflow.log_param("lr", 0.01)
        mlflow.log_params({"depth": 6, "seed": 42})
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"auc": 0.91, "nan_metric": float("nan"), "inf_metric": float("inf")})
        mlflow.log_metric("neg_inf", float("-inf"))
        mlflow.set_tag("owner", "mo")
        MlflowClient().log_batch(
            run_id,
            metrics=[MlflowMetric("acc", 0.5 + i / 100, int(time.time() * 1000), i) for i in range(30)],
            params=[MlflowParam("batch_size", "32")],
            tags=[RunTag("phase", "train")],
        )

    # --- what mlboard stored
    run = Run.objects.get(external_id=run_id)
    assert run.team == team and run.user == member and run.source == "mlboard"
    assert run.status == "FINISHED" and run.end_time is not None and run.name == "baseline"
    assert run.experiment == TrackingExperiment.objects.get(team=team, name="churn-gbm")
    assert str(run.experiment_id) == experiment.experiment_id
    assert run.seed == 42
    assert dict(Param.objects.filter(run=run).values_list("key", "value")) == {
        "lr": "0.01", "depth": "6", "seed": "42", "batch_size": "32",
    }
    assert list(Metric.objects.filter(run=run, key="loss").order_by("step").values_list("step", "value")) == [
        (s, pytest.approx(1.0 / (s + 1))) for s in range(5)
    ]
    assert Metric.objects.filter(run=run, key="acc").count() == 30
    latest = {m.key: m for m in LatestMetric.objects.filter(run=run)}
    assert latest["loss"].step == 4 and latest["loss"].value == pytest.approx(0.2)
    assert latest["acc"].step == 29 and latest["acc"].value == pytest.approx(0.79)
    assert latest["nan_metric"].is_nan and latest["nan_metric"].value == 0.0
    # Kept as infinities (a diverged run); answered as MLflow answers them (below).
    assert latest["inf_metric"].value == math.inf and latest["neg_inf"].value == -math.inf
    assert run.tags["owner"] == "mo" and run.tags["phase"] == "train" and run.tags["mlboard.card"] == card.key
    assert CardRun.objects.get(run=run).card_id == card.pk
    assert CardRun.objects.get(run=run).via == LinkVia.TAG
    # All linked runs finished: the card waits for analysis.
    assert Card.objects.get(pk=card.pk).column.stage == Stage.ANALYZING

    # --- and what the client reads back
    client = MlflowClient()
    fetched = client.get_run(run_id)
    assert fetched.info.status == "FINISHED" and fetched.info.run_name == "baseline"
    assert fetched.info.experiment_id == experiment.experiment_id
    # MLflow's user_id is the client's mlflow.user tag (the OS user running the script).
    assert fetched.info.user_id == fetched.data.tags["mlflow.user"] == getpass.getuser()
    assert fetched.data.params["lr"] == "0.01" and fetched.data.params["batch_size"] == "32"
    assert fetched.data.metrics["auc"] == pytest.approx(0.91)
    assert math.isnan(fetched.data.metrics["nan_metric"])
    # As `mlflow server` returns them: its SQL store keeps infinities as the largest double.
    assert fetched.data.metrics["inf_metric"] == FLOAT_MAX and fetched.data.metrics["neg_inf"] == -FLOAT_MAX
    assert fetched.data.tags["mlboard.card"] == card.key and fetched.data.tags["mlflow.runName"] == "baseline"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(s, round(1.0 / (s + 1), 4)) for s in range(5)]

    found = client.search_runs(
        [experiment.experiment_id], "metrics.auc > 0.9 and params.lr = '0.01' and attributes.status = 'FINISHED'"
    )
    assert [r.info.run_id for r in found] == [run_id]
    assert client.search_runs([experiment.experiment_id], "metrics.auc < 0.5") == []
    assert client.get_experiment_by_name("churn-gbm").experiment_id == experiment.experiment_id
    assert client.get_experiment(experiment.experiment_id).name == "churn-gbm"
    assert [e.name for e in client.search_experiments(filter_string="name LIKE 'churn%'")] == ["churn-gbm"]

    # Resuming a finished run (start_run(run_id=...)) marks it running again and keeps its data.
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("loss", 0.1, step=5)
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.metrics["loss"] == pytest.approx(0.1)
    assert Metric.objects.filter(run=run, key="loss").count() == 6


def test_default_experiment_and_generated_run_name(tracking, member_token, team):
    tracking(member_token)
    mlflow.set_experiment(experiment_id="0")
    with mlflow.start_run() as active:
        mlflow.log_metric("x", 1.0)
    run = Run.objects.get(external_id=active.info.run_id)
    assert run.experiment.name == "Default" and run.experiment.team == team
    assert run.name and run.name == active.info.run_name


def test_search_runs_filters_orders_and_pages(tracking, member_token):
    tracking(member_token)
    experiment_id = mlflow.set_experiment("sweep").experiment_id
    client = MlflowClient()
    created = {}
    for i, (lr, acc) in enumerate([("0.1", 0.70), ("0.01", 0.85), ("0.001", 0.80), ("0.01", 0.90), ("0.1", 0.60)]):
        run = client.create_run(experiment_id, run_name=f"trial-{i}", tags={"family": "gbm" if i % 2 else "mlp"})
        client.log_batch(
            run.info.run_id, metrics=[MlflowMetric("acc", acc, 1000 + i, 0)], params=[MlflowParam("lr", lr)]
        )
        client.set_terminated(run.info.run_id, "FAILED" if i == 4 else "FINISHED")
        created[run.info.run_id] = f"trial-{i}"

    def names(runs):
        return [r.info.run_name for r in runs]

    ordered = client.search_runs([experiment_id], order_by=["metrics.acc DESC"])
    assert names(ordered) == ["trial-3", "trial-1", "trial-2", "trial-0", "trial-4"]
    assert names(client.search_runs([experiment_id], "params.lr = '0.01'", order_by=["metrics.acc ASC"])) == [
        "trial-1", "trial-3",
    ]
    assert names(client.search_runs([experiment_id], "tags.family = 'gbm'", order_by=["attributes.run_name"])) == [
        "trial-1", "trial-3",
    ]
    assert names(client.search_runs([experiment_id], "attributes.status = 'FAILED'")) == ["trial-4"]
    filtered = client.search_runs([experiment_id], "metrics.acc >= 0.8 and params.lr != '0.001'", order_by=["run_name"])
    assert names(filtered) == ["trial-1", "trial-3"]
    like = client.search_runs([experiment_id], "run_name LIKE 'trial-%' and metrics.acc > 0.65", order_by=["run_name"])
    assert names(like) == ["trial-0", "trial-1", "trial-2", "trial-3"]

    # Pages of two, following next_page_token, cover every run exactly once in order.
    seen, token = [], None
    for _ in range(5):
        page = client.search_runs([experiment_id], order_by=["metrics.acc DESC"], max_results=2, page_token=token)
        seen += names(page)
        token = page.token
        if token is None:
            break
    assert seen == names(ordered)

    with pytest.raises(MlflowException) as excinfo:
        client.search_runs([experiment_id], "metrics.acc > 'high'")
    assert _error_code(excinfo) == "INVALID_PARAMETER_VALUE"


def test_metric_history_is_paginated(tracking, member_token, settings):
    settings.MLFLOW_METRIC_HISTORY_PAGE_MAX = 100  # server page cap; the client follows the tokens
    tracking(member_token)
    mlflow.set_experiment("long-training")
    client = MlflowClient()
    run_id = client.create_run(mlflow.get_experiment_by_name("long-training").experiment_id).info.run_id
    base = 1_700_000_000_000
    for start in (0, 900):
        client.log_batch(
            run_id, metrics=[MlflowMetric("loss", 1 / (s + 1), base + s, s) for s in range(start, start + 900)]
        )
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(1800))
    assert history[-1].value == pytest.approx(1 / 1800) and history[-1].timestamp == base + 1799

    # Explicit page size through the client's REST store.
    store = client._tracking_client.store
    steps, token, pages = [], None, 0
    while True:
        page = store.get_metric_history(run_id, "loss", max_results=250, page_token=token)
        assert len(page) <= 100
        steps += [m.step for m in page]
        pages += 1
        token = page.token
        if token is None:
            break
    assert steps == list(range(1800)) and pages == 18


def test_changing_a_param_is_rejected_and_batch_is_atomic(tracking, member_token):
    tracking(member_token)
    mlflow.set_experiment("immutability")
    client = MlflowClient()
    with mlflow.start_run() as active:
        run_id = active.info.run_id
        mlflow.log_param("lr", 0.1)
        mlflow.log_param("lr", 0.1)  # same value again is fine
        with pytest.raises(MlflowException) as excinfo:
            mlflow.log_param("lr", 0.2)
        assert _error_code(excinfo) == "INVALID_PARAMETER_VALUE"
        assert "Changing param values is not allowed" in excinfo.value.message
        with pytest.raises(MlflowException) as excinfo:
            client.log_batch(
                run_id,
                metrics=[MlflowMetric("acc", 0.5, 1, 0)],
                params=[MlflowParam("depth", "3"), MlflowParam("lr", "0.3")],
            )
        assert _error_code(excinfo) == "INVALID_PARAMETER_VALUE"
    run = Run.objects.get(external_id=run_id)
    # Nothing of the rejected batch was stored.
    assert dict(Param.objects.filter(run=run).values_list("key", "value")) == {"lr": "0.1"}
    assert not Metric.objects.filter(run=run).exists()


def test_unknown_and_other_teams_runs_do_not_exist(tracking, member_token, outsider, other_team):
    tracking(token_create(user=outsider, name="theirs", team=other_team)[1])
    mlflow.set_experiment("secret")
    with mlflow.start_run() as theirs:
        mlflow.log_metric("acc", 0.99)
    tracking(member_token)
    client = MlflowClient()
    for run_id in ("0" * 32, theirs.info.run_id):
        with pytest.raises(MlflowException) as excinfo:
            client.get_run(run_id)
        assert _error_code(excinfo) == "RESOURCE_DOES_NOT_EXIST"
        with pytest.raises(MlflowException) as excinfo:
            client.log_metric(run_id, "acc", 0.1)
        assert _error_code(excinfo) == "RESOURCE_DOES_NOT_EXIST"
    assert client.get_experiment_by_name("secret") is None
    assert Metric.objects.filter(run__external_id=theirs.info.run_id).count() == 1


def test_retried_log_batch_adds_no_duplicates(tracking, member_token):
    tracking(member_token)
    mlflow.set_experiment("retries")
    client = MlflowClient()
    with mlflow.start_run() as active:
        run_id = active.info.run_id
        metrics = [MlflowMetric("loss", 1 / (s + 1), 5000 + s, s) for s in range(200)]
        metrics.append(MlflowMetric("loss", float("nan"), 9000, 200))
        for _ in range(3):
            client.log_batch(run_id, metrics=metrics, params=[MlflowParam("opt", "adam")], tags=[RunTag("try", "x")])
        # An older point arriving late does not move the latest value back.
        client.log_batch(run_id, metrics=[MlflowMetric("loss", 123.0, 1, 3)])
    run = Run.objects.get(external_id=run_id)
    assert Metric.objects.filter(run=run).count() == 202
    assert Param.objects.filter(run=run).count() == 1
    latest = LatestMetric.objects.get(run=run, key="loss")
    assert (latest.step, latest.is_nan) == (200, True)
    assert len(client.get_metric_history(run_id, "loss")) == 202


def test_card_tag_set_later_links_and_moves_the_card(tracking, member_token, member, board):
    card = card_create(board=board, kind="hypothesis", title="Target encoding helps", actor=member)
    other = card_create(board=board, kind="hypothesis", title="Other idea", actor=member)
    tracking(member_token)
    mlflow.set_experiment("linking")
    client = MlflowClient()
    with mlflow.start_run() as active:
        run = Run.objects.get(external_id=active.info.run_id)
        assert not CardRun.objects.filter(run=run).exists()
        mlflow.set_tag("mlboard.card", card.key.lower())  # keys are case-insensitive
        assert list(CardRun.objects.filter(run=run).values_list("card__key", flat=True)) == [card.key]
        assert Card.objects.get(pk=card.pk).column.stage == Stage.RUNNING
        client.set_tag(active.info.run_id, "mlboard.card", other.key)  # retargeted: old link dropped
        assert list(CardRun.objects.filter(run=run).values_list("card__key", flat=True)) == [other.key]
        client.delete_tag(active.info.run_id, "mlboard.card")
        assert not CardRun.objects.filter(run=run).exists()
        with pytest.raises(MlflowException) as excinfo:
            client.delete_tag(active.info.run_id, "mlboard.card")
        assert _error_code(excinfo) == "RESOURCE_DOES_NOT_EXIST"


def test_auth_errors_and_team_resolution(tracking, live_server, member, viewer, team, other_team, make_user):
    tracking(None)
    with pytest.raises(MlflowException) as excinfo:
        mlflow.set_experiment("nope")
    assert _error_code(excinfo) == "UNAUTHENTICATED"
    tracking("mlb_not-a-real-token")
    with pytest.raises(MlflowException) as excinfo:
        MlflowClient().search_experiments()
    assert _error_code(excinfo) == "UNAUTHENTICATED"

    # Viewers read but cannot log.
    tracking(token_create(user=viewer, name="ro", team=team)[1])
    with pytest.raises(MlflowException) as excinfo:
        mlflow.set_experiment("viewer-exp")
    assert _error_code(excinfo) == "PERMISSION_DENIED"

    # A token with no team logs into the user's only team...
    tracking(token_create(user=member, name="any")[1])
    experiment_id = mlflow.set_experiment("teamless").experiment_id
    assert TrackingExperiment.objects.get(pk=int(experiment_id)).team == team
    # ...and keeps logging there after the user joins a second team (a running job must not stop).
    membership_set(team=other_team, user=member, role=Role.MEMBER)
    assert MlflowClient().get_experiment(experiment_id).name == "teamless"
    with mlflow.start_run() as run:
        mlflow.log_metric("still", 1.0)
    assert Run.objects.get(external_id=run.info.run_id).team == team
    # A token never used before the user had two teams cannot guess: refused, clearly.
    tracking(token_create(user=member, name="fresh")[1])
    with pytest.raises(MlflowException) as excinfo:
        MlflowClient().get_experiment(experiment_id)
    assert _error_code(excinfo) == "PERMISSION_DENIED"
    assert "rivals, vision" in excinfo.value.message and "token" in excinfo.value.message


def _post(live_server, route: str, secret: str, payload: dict) -> requests.Response:
    return requests.post(
        f"{live_server.url}/mlflow/api/2.0/mlflow/{route}",
        json=payload,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


def test_wire_format_errors_and_limits(live_server, member_token, team):
    base = f"{live_server.url}/mlflow/api/2.0/mlflow"
    response = requests.post(f"{base}/experiments/create", json={"name": "x"}, timeout=30)
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHENTICATED" and response.json()["message"]

    created = _post(live_server, "experiments/create", member_token, {"name": "wire"})
    assert created.status_code == 200 and isinstance(created.json()["experiment_id"], str)
    again = _post(live_server, "experiments/create", member_token, {"name": "wire"})
    assert again.status_code == 400 and again.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
    missing = requests.get(
        f"{base}/experiments/get-by-name",
        params={"experiment_name": "nope"},
        headers={"Authorization": f"Bearer {member_token}"},
        timeout=30,
    )
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"

    run = _post(live_server, "runs/create", member_token, {"experiment_id": created.json()["experiment_id"]}).json()
    run_id = run["run"]["info"]["run_id"]
    assert run["run"]["info"]["status"] == "RUNNING" and isinstance(run["run"]["info"]["start_time"], int)

    def batch(metrics=0, params=0, tags=0):
        return _post(live_server, "runs/log-batch", member_token, {
            "run_id": run_id,
            "metrics": [{"key": "m", "value": i, "timestamp": 1, "step": i} for i in range(metrics)],
            "params": [{"key": f"p{i}", "value": "v"} for i in range(params)],
            "tags": [{"key": f"t{i}", "value": "v"} for i in range(tags)],
        })

    for too_many in (batch(metrics=1001), batch(params=101), batch(tags=101), batch(metrics=950, params=60)):
        assert too_many.status_code == 400 and too_many.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "at most" in too_many.json()["message"]
    assert batch(metrics=1000).status_code == 200
    assert batch(metrics=900, params=50, tags=50).status_code == 200
    assert Metric.objects.filter(run__external_id=run_id).count() == 1000

    # NaN and infinities travel as proto-JSON strings both ways.
    nan = _post(live_server, "runs/log-batch", member_token, {
        "run_id": run_id,
        "metrics": [
            {"key": "n", "value": "NaN", "timestamp": 5, "step": 0},
            {"key": "i", "value": "Infinity", "timestamp": 5, "step": 0},
            {"key": "j", "value": "-Infinity", "timestamp": 5, "step": 0},
        ],
    })
    assert nan.status_code == 200
    got = requests.get(
        f"{base}/runs/get", params={"run_id": run_id}, headers={"Authorization": f"Bearer {member_token}"}, timeout=30
    ).json()
    values = {m["key"]: m["value"] for m in got["run"]["data"]["metrics"]}
    assert (values["n"], values["i"], values["j"]) == ("NaN", FLOAT_MAX, -FLOAT_MAX)

    bad_key = {"run_id": run_id, "key": "../up", "value": 1, "timestamp": 1}
    bad = _post(live_server, "runs/log-metric", member_token, bad_key)
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    no_ts = _post(live_server, "runs/log-metric", member_token, {"run_id": run_id, "key": "k", "value": 1})
    assert no_ts.status_code == 400 and "timestamp" in no_ts.json()["message"]
    unknown = _post(live_server, "runs/no-such-endpoint", member_token, {})
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    # Never HTML: unknown versions, unknown paths under /mlflow/ and trace endpoints answer JSON.
    for path in ("api/3.0/mlflow/runs/get", "api/9.9/x", "ajax-api/2.0/nothing", "nothing/here"):
        response = requests.get(f"{live_server.url}/mlflow/{path}", timeout=30)
        assert response.status_code == 404, path
        assert response.headers["Content-Type"] == "application/json", path
        assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND", path
    for path in ("api/2.0/mlflow/traces", "api/3.0/mlflow/traces/tr-1/info"):
        response = requests.post(
            f"{live_server.url}/mlflow/{path}", json={}, headers={"Authorization": f"Bearer {member_token}"},
            timeout=30,
        )
        assert response.status_code == 501 and response.json()["error_code"] == "NOT_IMPLEMENTED", path
    artifacts = requests.get(
        f"{live_server.url}/mlflow/api/2.0/mlflow-artifacts/artifacts/x",
        headers={"Authorization": f"Bearer {member_token}"}, timeout=30,
    )
    # Outside the token's team prefix (teams/<id>/): refused, as JSON.
    assert artifacts.status_code == 403 and artifacts.json()["error_code"] == "PERMISSION_DENIED"
    ajax = requests.get(
        f"{live_server.url}/mlflow/ajax-api/2.0/mlflow/runs/get",
        params={"run_id": run_id}, headers={"Authorization": f"Bearer {member_token}"}, timeout=30,
    )
    assert ajax.status_code == 200 and ajax.json()["run"]["info"]["run_id"] == run_id
