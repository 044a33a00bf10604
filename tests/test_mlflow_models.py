"""The official mlflow client (mlflow-skinny, in-process) against a live mlboard: datasets, MLflow 3
logged models, the model registry, the experiment lifecycle and the small gaps of issue 8, each
checked by reading back what was stored."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import mlflow
import pytest
import requests
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.models import (
    LoggedModel,
    LoggedModelMetric,
    ModelVersion,
    RegisteredModel,
    Run,
    RunDataset,
    TrackingExperiment,
)
from experiments.services.tokens import token_create

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client(live_server, monkeypatch, member, team) -> MlflowClient:
    uri = f"{live_server.url}/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token_create(user=member, name="job", team=team)[1])
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    mlflow.tracking.fluent._active_experiment_id = None


def _dataset(name: str, digest: str) -> Dataset:
    return Dataset(
        name=name, digest=digest, source_type="local", source=json.dumps({"uri": f"/data/{name}.csv"}),
        schema=json.dumps({"mlflow_colspec": [{"type": "double", "name": "x"}]}), profile=json.dumps({"num_rows": 3}),
    )


def test_log_inputs_are_stored_returned_and_version_the_data(client, team):
    experiment_id = client.create_experiment("with-data")
    run = client.create_run(experiment_id)
    train = DatasetInput(_dataset("train", "a1b2c3d4"), tags=[InputTag("mlflow.data.context", "training")])
    evals = DatasetInput(_dataset("eval", "e5f6a7b8"), tags=[InputTag("mlflow.data.context", "eval")])
    client.log_inputs(run.info.run_id, datasets=[train, evals])
    client.log_inputs(run.info.run_id, datasets=[train])  # a retry adds nothing

    stored = Run.objects.get(external_id=run.info.run_id)
    rows = list(RunDataset.objects.filter(run=stored).order_by("pk"))
    assert [(r.name, r.digest, r.tags) for r in rows] == [
        ("train", "a1b2c3d4", {"mlflow.data.context": "training"}),
        ("eval", "e5f6a7b8", {"mlflow.data.context": "eval"}),
    ]
    assert json.loads(rows[0].profile) == {"num_rows": 3}
    # No data-version tag: the first dataset's digest is the run's data version (maturity evidence).
    assert stored.data_version == "train@a1b2c3d4"

    fetched = client.get_run(run.info.run_id)
    got = [(d.dataset.name, d.dataset.digest, d.dataset.source_type, {t.key: t.value for t in d.tags})
           for d in fetched.inputs.dataset_inputs]
    assert got == [("train", "a1b2c3d4", "local", {"mlflow.data.context": "training"}),
                   ("eval", "e5f6a7b8", "local", {"mlflow.data.context": "eval"})]
    searched = client.search_runs([experiment_id])[0]
    assert [d.dataset.digest for d in searched.inputs.dataset_inputs] == ["a1b2c3d4", "e5f6a7b8"]

    # An explicit data-version tag wins over the digest.
    tagged = client.create_run(experiment_id, tags={"mlboard.data_version": "snap-7"})
    client.log_inputs(tagged.info.run_id, datasets=[train])
    assert Run.objects.get(external_id=tagged.info.run_id).data_version == "snap-7"


def test_logged_model_lifecycle_params_tags_metrics_and_outputs(client, team):
    experiment_id = client.create_experiment("models")
    run = client.create_run(experiment_id)
    model = client.create_logged_model(
        experiment_id, name="gbm", source_run_id=run.info.run_id, params={"depth": "3"},
        tags={"team": "vision"}, model_type="classifier",
    )
    assert model.model_id.startswith("m-") and model.status == LoggedModelStatus.PENDING
    assert model.artifact_location == (
        f"mlflow-artifacts:/teams/{team.pk}/{experiment_id}/models/{model.model_id}/artifacts"
    )
    client.log_model_params(model.model_id, {"lr": "0.1"})
    client.set_logged_model_tags(model.model_id, {"stage": "cand", "drop": "x"})
    client.delete_logged_model_tag(model.model_id, "drop")
    client.log_metric(run.info.run_id, "auc", 0.93, step=2, model_id=model.model_id)
    client.log_outputs(run.info.run_id, [LoggedModelOutput(model.model_id, step=2)])
    ready = client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    assert ready.status == LoggedModelStatus.READY

    stored = LoggedModel.objects.get(model_id=model.model_id)
    assert stored.team == team and stored.source_run.external_id == run.info.run_id
    assert stored.params == {"depth": "3", "lr": "0.1"} and stored.tags == {"team": "vision", "stage": "cand"}
    assert list(LoggedModelMetric.objects.filter(model=stored).values_list("key", "value", "step")) == [
        ("auc", 0.93, 2)
    ]
    fetched = client.get_logged_model(model.model_id)
    assert fetched.name == "gbm" and fetched.model_type == "classifier" and fetched.source_run_id == run.info.run_id
    assert fetched.params == {"depth": "3", "lr": "0.1"} and fetched.tags == {"team": "vision", "stage": "cand"}
    assert [(m.key, m.value, m.step) for m in fetched.metrics] == [("auc", 0.93, 2)]
    # The metric also went to the run, and the run lists the model as its output.
    got_run = client.get_run(run.info.run_id)
    assert got_run.data.metrics["auc"] == 0.93
    assert [(o.model_id, o.step) for o in got_run.outputs.model_outputs] == [(model.model_id, 2)]

    other = client.create_logged_model(experiment_id, name="linear")
    found = client.search_logged_models([experiment_id], filter_string="name = 'gbm'")
    assert [m.model_id for m in found] == [model.model_id]
    newest_first = client.search_logged_models([experiment_id])
    assert [m.name for m in newest_first] == ["linear", "gbm"]
    client.delete_logged_model(other.model_id)
    assert [m.name for m in client.search_logged_models([experiment_id])] == ["gbm"]
    with pytest.raises(MlflowException) as excinfo:
        client.get_logged_model(other.model_id)
    assert excinfo.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_registry_versions_aliases_stages_and_download_uri(client, team):
    experiment_id = client.create_experiment("registry")
    run = client.create_run(experiment_id)
    model = client.create_logged_model(experiment_id, name="gbm", source_run_id=run.info.run_id)
    client.create_registered_model("churn", tags={"owner": "vision"}, description="Churn classifier")
    v1 = client.create_model_version("churn", f"models:/{model.model_id}", run_id=run.info.run_id,
                                     model_id=model.model_id)
    v2 = client.create_model_version("churn", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    assert (v1.version, v2.version) == ("1", "2")
    assert v1.run_id == run.info.run_id  # (the client does not read model_id back; the store has it)
    assert ModelVersion.objects.get(version=1).logged_model.model_id == model.model_id
    # A version of a logged model downloads from that model's files.
    assert client.get_model_version_download_uri("churn", "1") == model.artifact_location
    assert client.get_model_version_download_uri("churn", "2") == f"runs:/{run.info.run_id}/model"
    tags = LoggedModel.objects.get(model_id=model.model_id).tags
    assert json.loads(tags["mlflow.modelVersions"]) == [{"name": "churn", "version": 1}]

    client.set_registered_model_alias("churn", "champion", "1")
    assert client.get_model_version_by_alias("churn", "champion").version == "1"
    assert client.get_registered_model("churn").aliases == {"champion": "1"}
    assert client.get_model_version("churn", "1").aliases == ["champion"]
    client.set_model_version_tag("churn", "1", "validated", "yes")
    client.update_model_version("churn", "1", description="first")
    staged = client.transition_model_version_stage("churn", "2", "Production")
    assert staged.current_stage == "Production"
    latest = client.get_latest_versions("churn", stages=["Production"])
    assert [v.version for v in latest] == ["2"]
    found = client.search_model_versions("name = 'churn'")
    assert sorted(v.version for v in found) == ["1", "2"]
    assert [m.name for m in client.search_registered_models(filter_string="name LIKE 'ch%'")] == ["churn"]

    client.rename_registered_model("churn", "churn-v2")
    assert client.get_model_version("churn-v2", "1").tags == {"validated": "yes"}
    client.delete_model_version("churn-v2", "1")
    assert client.get_registered_model("churn-v2").aliases == {}  # the alias went with its version
    with pytest.raises(MlflowException) as excinfo:
        client.create_registered_model("churn-v2")
    assert excinfo.value.error_code == "RESOURCE_ALREADY_EXISTS"
    client.delete_registered_model("churn-v2")
    assert not RegisteredModel.objects.exists() and not ModelVersion.objects.exists()


def test_registry_is_team_scoped(client, live_server, outsider, other_team):
    client.create_registered_model("secret-model")
    outsider_token = token_create(user=outsider, name="o", team=other_team)[1]
    base = f"{live_server.url}/mlflow/api/2.0/mlflow"
    headers = {"Authorization": f"Bearer {outsider_token}"}
    response = requests.get(f"{base}/registered-models/get", params={"name": "secret-model"}, headers=headers,
                            timeout=30)
    assert response.status_code == 404 and response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    response = requests.get(f"{base}/registered-models/search", headers=headers, timeout=30)
    assert response.json() == {"registered_models": []}
    # The same name in another team is a different model.
    response = requests.post(f"{base}/registered-models/create", json={"name": "secret-model"}, headers=headers,
                             timeout=30)
    assert response.status_code == 200
    assert RegisteredModel.objects.filter(name="secret-model").count() == 2


def test_experiment_delete_restore_rename(client, team):
    experiment_id = client.create_experiment("lifecycle")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("m", 1.0)
    client.delete_experiment(experiment_id)
    assert client.get_experiment(experiment_id).lifecycle_stage == "deleted"
    assert Run.objects.get(external_id=run.info.run_id).lifecycle_stage == "deleted"
    assert "lifecycle" not in [e.name for e in client.search_experiments()]
    deleted = client.search_experiments(view_type=mlflow.entities.ViewType.DELETED_ONLY)
    assert [e.name for e in deleted] == ["lifecycle"]
    with pytest.raises(MlflowException):
        client.create_run(experiment_id)  # a deleted experiment takes no runs
    with pytest.raises(MlflowException) as excinfo:
        client.rename_experiment(experiment_id, "renamed")
    assert excinfo.value.error_code == "INVALID_STATE"

    client.restore_experiment(experiment_id)
    assert client.get_experiment(experiment_id).lifecycle_stage == "active"
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "active"
    client.rename_experiment(experiment_id, "renamed")
    assert TrackingExperiment.objects.get(pk=int(experiment_id)).name == "renamed"
    assert client.get_experiment_by_name("renamed").experiment_id == experiment_id
    client.create_experiment("taken")
    with pytest.raises(MlflowException) as excinfo:
        client.rename_experiment(experiment_id, "taken")
    assert excinfo.value.error_code == "RESOURCE_ALREADY_EXISTS"


def test_set_tag_with_a_non_string_value_is_rejected_as_mlflow_does(client, live_server, member, team):
    run = client.create_run("0")
    secret = token_create(user=member, name="raw", team=team)[1]
    response = requests.post(
        f"{live_server.url}/mlflow/api/2.0/mlflow/runs/set-tag",
        json={"run_id": run.info.run_id, "key": "k", "value": 123},
        headers={"Authorization": f"Bearer {secret}"}, timeout=30,
    )
    assert response.status_code == 400
    assert response.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Invalid value 123 for parameter 'value' supplied: Hint: Value was of type 'int'. "
        "See the API docs for more information about request parameters.",
    }
    assert "k" not in Run.objects.get(external_id=run.info.run_id).tags


def test_search_runs_breaks_ties_as_mlflow(client):
    experiment_id = client.create_experiment("ties")
    same_start = 1_700_000_000_000
    ids = [client.create_run(experiment_id, start_time=same_start).info.run_id for _ in range(4)]
    for run_id in ids:
        client.log_metric(run_id, "acc", 0.5)
    # Equal metric and equal start time: MLflow orders by run id.
    found = client.search_runs([experiment_id], order_by=["metrics.acc DESC"])
    assert [r.info.run_id for r in found] == sorted(ids)


def test_client_run_link_opens_the_run_page(client, live_server, member):
    with mlflow.start_run(experiment_id=client.create_experiment("linked")) as run:
        pass
    stored = Run.objects.get(external_id=run.info.run_id)
    from django.test import Client

    browser = Client()
    browser.force_login(member)
    page = browser.get("/mlflow/")
    assert page.status_code == 200 and b"mlflow_link.js" in page.content
    opened = browser.get("/runs/mlflow-link/", {"experiment": stored.experiment_id, "run": run.info.run_id})
    assert opened.status_code == 302 and opened["Location"] == f"/runs/{stored.pk}/"
    listed = browser.get("/runs/mlflow-link/", {"experiment": stored.experiment_id})
    assert listed.status_code == 302 and listed["Location"].endswith(f"/runs/?experiment={stored.experiment_id}")
    assert browser.get("/runs/mlflow-link/", {"run": "0" * 32}).status_code == 404


def _models_with_metrics(client: MlflowClient) -> tuple[str, dict[str, str]]:
    """Four models: a (accuracy 0.95 then, later, 0.80 on val), b (0.85 on test), c (0.99 on val), d (none).
    Every expectation below is what `mlflow server` 3.17.2 answered for the same calls."""
    experiment_id = client.create_experiment("model-search")
    run_id = client.create_run(experiment_id).info.run_id
    ids = {}
    for name, points in (
        ("a", [(0.95, 1, "val", "d1"), (0.80, 2, "val", "d1")]),
        ("b", [(0.85, 1, "test", "d2")]),
        ("c", [(0.99, 1, "val", "d1")]),
        ("d", []),
    ):
        model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
        for value, timestamp, dataset, digest in points:
            client.log_metric(run_id, "accuracy", value, timestamp=timestamp, step=0, model_id=model.model_id,
                              dataset_name=dataset, dataset_digest=digest)
        ids[name] = model.model_id
    return experiment_id, ids


def test_search_logged_models_by_metric_and_dataset_as_mlflow(client):
    experiment_id, ids = _models_with_metrics(client)

    def names(**kwargs) -> list[str]:
        found = client.search_logged_models([experiment_id], **kwargs)
        return [next(n for n, i in ids.items() if i == m.model_id) for m in found]

    # Some point of the metric passes (a's earlier 0.95 counts); newest model first.
    assert names(filter_string="metrics.accuracy > 0.9") == ["c", "a"]
    assert names(filter_string="metrics.accuracy <= 0.85 AND name != 'a'") == ["b"]
    # With datasets, the matching point must be on one of them.
    test, val = {"dataset_name": "test", "dataset_digest": "d2"}, {"dataset_name": "val", "dataset_digest": "d1"}
    assert names(filter_string="metrics.accuracy > 0.8", datasets=[test]) == ["b"]
    assert names(filter_string="metrics.accuracy > 0.9", datasets=[test]) == []
    # Datasets alone: models with any metric on one of them.
    assert names(datasets=[val]) == ["c", "a"]
    assert names(datasets=[val, test]) == ["c", "b", "a"]
    assert names(datasets=[{"dataset_name": "val", "dataset_digest": "other"}]) == []
    # Without a digest mlflow server matches only points logged without one (the client logs none such).
    assert names(datasets=[{"dataset_name": "val"}]) == []


def test_search_logged_models_ordered_by_latest_metric_value_missing_last(client):
    experiment_id, ids = _models_with_metrics(client)

    def names(*order_by: dict) -> list[str]:
        found = client.search_logged_models([experiment_id], order_by=list(order_by))
        return [next(n for n, i in ids.items() if i == m.model_id) for m in found]

    # a's latest accuracy is 0.80 (timestamp 2), not its best; d has none and comes last both ways.
    assert names({"field_name": "metrics.accuracy", "ascending": True}) == ["a", "b", "c", "d"]
    assert names({"field_name": "metrics.accuracy", "ascending": False}) == ["c", "b", "a", "d"]
    # On one dataset only b has a value; the rest keep the default order (newest first).
    assert names({"field_name": "metrics.accuracy", "dataset_name": "test"}) == ["b", "d", "c", "a"]
    assert names({"field_name": "name", "ascending": False}) == ["d", "c", "b", "a"]


def test_search_logged_models_rejects_what_mlflow_rejects(client):
    experiment_id, _ = _models_with_metrics(client)
    for kwargs in (
        {"order_by": [{"field_name": "params.lr"}]},
        {"order_by": [{"field_name": "no_such_column"}]},
        {"filter_string": "metrics.accuracy > 'high'"},
    ):
        with pytest.raises(MlflowException) as excinfo:
            client.search_logged_models([experiment_id], **kwargs)
        assert excinfo.value.error_code == "INVALID_PARAMETER_VALUE", kwargs
    # The client cannot send a dataset without a name; other clients can.
    response = requests.post(
        f"{client.tracking_uri}/api/2.0/mlflow/logged-models/search",
        json={"experiment_ids": [experiment_id], "datasets": [{"dataset_digest": "d1"}]},
        headers={"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"},
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "dataset_name" in response.json()["message"]


def _post(client: MlflowClient, route: str, body: dict) -> requests.Response:
    return requests.post(
        f"{client.tracking_uri}/api/2.0/mlflow/{route}", json=body,
        headers={"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}, timeout=30,
    )


def test_gaps_found_by_mlflows_rest_tracking_tests(client, member):
    """What tests/compat/mlflow_rest_suite.py found mlboard doing differently from mlflow server."""
    experiment_id = client.create_experiment("gaps")
    client.set_experiment_tag(experiment_id, "dataset", "imagenet")
    client.delete_experiment_tag(experiment_id, "dataset")
    assert "dataset" not in client.get_experiment(experiment_id).tags
    with pytest.raises(MlflowException) as excinfo:
        client.delete_experiment_tag(experiment_id, "dataset")
    assert excinfo.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    # user_id is what the client sends ("unknown" without an mlflow.user tag), the token's user stays the owner.
    run = client.create_run(experiment_id)
    assert client.get_run(run.info.run_id).info.user_id == "unknown"
    assert Run.objects.get(external_id=run.info.run_id).user == member

    # MLflow does not check a logged model's source run: an id of no run is kept as given.
    model = client.create_logged_model(experiment_id, source_run_id="123")
    assert client.get_logged_model(model.model_id).source_run_id == "123"
    found = client.search_logged_models([experiment_id], filter_string="source_run_id = '123'")
    assert [m.model_id for m in found] == [model.model_id]

    with pytest.raises(MlflowException, match=r"Invalid value 123456789 for parameter 'max_results' supplied"):
        client.search_runs([experiment_id], max_results=123456789)


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        ("experiments/create", {"name": "x", "tags": "5"}, "Invalid value \"5\" for parameter 'tags' supplied"),
        ("runs/log-batch", {"metrics": "foo"}, "Invalid value \"foo\" for parameter 'metrics' supplied"),
        ("runs/log-batch", {"params": "foo"}, "Invalid value \"foo\" for parameter 'params' supplied"),
        ("runs/log-metric", {"key": 31, "value": 1, "timestamp": 1}, "Invalid value 31 for parameter 'key' supplied"),
        ("runs/log-metric", {"key": "k", "value": 1, "timestamp": 1, "step": "foo"},
         "Invalid value \"foo\" for parameter 'step' supplied"),
        ("runs/log-metric", {"key": "k", "value": 1, "timestamp": "foo"},
         "Invalid value \"foo\" for parameter 'timestamp' supplied"),
        ("runs/log-metric", {"value": 1, "timestamp": 1}, "Missing value for required parameter 'key'"),
    ],
)
def test_request_fields_of_the_wrong_type_are_refused_in_mlflows_words(client, route, body, message):
    run_id = client.create_run(client.create_experiment("validation")).info.run_id
    response = _post(client, route, {"run_id": run_id, **body})
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert message in response.json()["message"]
