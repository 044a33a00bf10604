"""The FULL mlflow package (flavors, autologging, pyfunc) running training scripts in their own
interpreter against a live mlboard, as a user's job would; every test reads back what was stored.

The scripts run in a separate venv (tests/client_venv.py): the full package requires gunicorn<27
while the app pins gunicorn==27.0.1."""

from __future__ import annotations

import json
import textwrap

import pytest

from experiments.models import LoggedModel, LoggedModelStatus, ModelVersion, RegisteredModel, Run, RunDataset
from experiments.services.tokens import token_create
from tests.client_venv import ensure_venv, run_script

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="session")
def mlflow_python():
    return ensure_venv("mlflow-full")


@pytest.fixture
def job(mlflow_python, live_server, member, team, tmp_path, settings):
    """Run a script as a training job of `member` logging into `team`; returns its output."""
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {"BACKEND": "experiments.storage.LocalArtifactStorage",
                      "OPTIONS": {"location": str(tmp_path / "artifacts")}},
    }
    env = {
        "MLFLOW_TRACKING_URI": f"{live_server.url}/mlflow",
        "MLFLOW_TRACKING_TOKEN": token_create(user=member, name="job", team=team)[1],
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MPLBACKEND": "Agg",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
        "HOME": str(tmp_path),
    }

    def run(script: str) -> str:
        result = run_script(mlflow_python, textwrap.dedent(script), env=env)
        assert result.returncode == 0, result.stdout
        return result.stdout

    return run


def _value(output: str, label: str) -> str:
    for line in output.splitlines():
        if line.startswith(f"{label} "):
            return line[len(label) + 1 :]
    raise AssertionError(f"{label} not printed:\n{output}")


# Printed by the client whatever the server (a note about pickle files; lightgbm autolog's own call
# of a deprecated log_model argument), so not a server problem.
CLIENT_SIDE_NOTICES = ("pickle or cloudpickle format", "`artifact_path` is deprecated")


def _mlflow_warnings(output: str) -> list[str]:
    """mlflow's WARNING lines (autologging reports its failures this way and carries on)."""
    return [
        line for line in output.splitlines()
        if "WARNING" in line and "mlflow" in line and not any(n in line for n in CLIENT_SIDE_NOTICES)
    ]


def test_log_input_from_pandas(job):
    out = job("""
        import mlflow, pandas as pd
        df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
        dataset = mlflow.data.from_pandas(df, source="/data/train.csv", name="train", targets="y")
        mlflow.set_experiment("datasets")
        with mlflow.start_run() as run:
            mlflow.log_input(dataset, context="training")
        got = mlflow.get_run(run.info.run_id).inputs.dataset_inputs[0]
        print("RUN", run.info.run_id)
        print("DIGEST", dataset.digest)
        print("READBACK", got.dataset.name, got.dataset.digest, got.tags[0].key, got.tags[0].value)
    """)
    run_id, digest = _value(out, "RUN"), _value(out, "DIGEST")
    assert _value(out, "READBACK") == f"train {digest} mlflow.data.context training"
    stored = RunDataset.objects.get(run__external_id=run_id)
    assert (stored.name, stored.digest, stored.tags) == ("train", digest, {"mlflow.data.context": "training"})
    assert json.loads(stored.profile)["num_rows"] == 3
    assert {c["name"] for c in json.loads(stored.schema)["mlflow_colspec"]} == {"x", "y"}
    assert Run.objects.get(external_id=run_id).data_version == f"train@{digest}"


def test_sklearn_autolog_stores_metrics_model_and_plots_without_warnings(job):
    out = job("""
        import mlflow
        from mlflow import MlflowClient
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression
        X, y = load_iris(return_X_y=True)
        mlflow.set_experiment("autolog")
        mlflow.sklearn.autolog()
        with mlflow.start_run() as run:
            LogisticRegression(max_iter=300).fit(X, y)
        print("RUN", run.info.run_id)
        print("ARTIFACTS", " ".join(sorted(a.path for a in MlflowClient().list_artifacts(run.info.run_id))))
    """)
    assert _mlflow_warnings(out) == [], out
    run = Run.objects.get(external_id=_value(out, "RUN"))
    metrics = {m.key: m.value for m in run.latest_metrics.all()}
    assert {"training_accuracy_score", "training_f1_score", "training_log_loss"} <= set(metrics)
    assert 0.9 < metrics["training_accuracy_score"] <= 1.0
    assert run.params.get(key="max_iter").value == "300"
    model = LoggedModel.objects.get(source_run=run)
    assert model.status == LoggedModelStatus.READY
    assert "training_confusion_matrix.png" in _value(out, "ARTIFACTS").split()


def test_lightgbm_autolog_stores_every_iteration_of_every_metric(job):
    """The trial's worst case: lightgbm autolog finished "successfully" with metrics missing. Every
    boosting round's metric, for both validation sets, must be stored as a point at its step."""
    out = job("""
        import lightgbm as lgb, mlflow
        from mlflow import MlflowClient
        from sklearn.datasets import load_iris
        from sklearn.model_selection import train_test_split
        X, y = load_iris(return_X_y=True)
        X_train, X_valid, y_train, y_valid = train_test_split(X, y, random_state=0)
        mlflow.set_experiment("lgb-autolog")
        mlflow.lightgbm.autolog()  # before the Datasets, so it can sample an input example
        train = lgb.Dataset(X_train, y_train)
        valid = lgb.Dataset(X_valid, y_valid, reference=train)
        params = {"objective": "multiclass", "num_class": 3, "learning_rate": 0.1, "verbose": -1, "seed": 7}
        with mlflow.start_run() as run:
            lgb.train(params, train, num_boost_round=25, valid_sets=[train, valid], valid_names=["train", "valid"])
        client = MlflowClient()
        print("RUN", run.info.run_id)
        print("HISTORY", len(client.get_metric_history(run.info.run_id, "valid-multi_logloss")))
        print("ARTIFACTS", " ".join(sorted(a.path for a in client.list_artifacts(run.info.run_id))))
    """)
    assert _mlflow_warnings(out) == [], out
    run = Run.objects.get(external_id=_value(out, "RUN"))
    for key in ("train-multi_logloss", "valid-multi_logloss"):
        steps = sorted(run.metrics.filter(key=key).values_list("step", flat=True))
        assert steps == list(range(25)), (key, steps)
    assert _value(out, "HISTORY") == "25"
    losses = list(run.metrics.filter(key="train-multi_logloss").order_by("step").values_list("value", flat=True))
    assert losses[-1] < losses[0]  # real training values, in step order
    assert run.params.get(key="num_boost_round").value == "25"
    assert run.params.get(key="learning_rate").value == "0.1"
    artifacts = _value(out, "ARTIFACTS").split()
    assert {"feature_importance_gain.json", "feature_importance_split.json"} <= set(artifacts), artifacts
    assert LoggedModel.objects.get(source_run=run).status == LoggedModelStatus.READY


def test_log_model_register_and_load_by_alias_gives_the_same_predictions(job):
    out = job("""
        import mlflow, numpy as np
        from mlflow import MlflowClient
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression
        X, y = load_iris(return_X_y=True)
        model = LogisticRegression(max_iter=300).fit(X, y)
        mlflow.set_experiment("registry")
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(model, name="model", input_example=X[:2])
        version = mlflow.register_model(info.model_uri, "iris-clf")
        MlflowClient().set_registered_model_alias("iris-clf", "champion", version.version)
        loaded = mlflow.pyfunc.load_model("models:/iris-clf@champion")
        same = bool(np.array_equal(loaded.predict(X), model.predict(X)))
        print("RUN", run.info.run_id)
        print("MODEL", info.model_id)
        print("SAME", same)
    """)
    assert _value(out, "SAME") == "True"
    model = LoggedModel.objects.get(model_id=_value(out, "MODEL"))
    assert model.source_run.external_id == _value(out, "RUN") and model.status == LoggedModelStatus.READY
    registered = RegisteredModel.objects.get(name="iris-clf")
    assert registered.aliases == {"champion": 1}
    version = ModelVersion.objects.get(registered_model=registered)
    assert version.logged_model == model and version.run == model.source_run


def test_experiment_lifecycle_with_the_fluent_api(job):
    out = job("""
        import mlflow
        from mlflow import MlflowClient
        client = MlflowClient()
        experiment_id = mlflow.create_experiment("short-lived")
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_metric("m", 1.0)
        mlflow.delete_experiment(experiment_id)
        print("DELETED", client.get_experiment(experiment_id).lifecycle_stage)
        try:
            mlflow.set_experiment("short-lived")
            print("SET", "ok")
        except mlflow.exceptions.MlflowException as exc:
            print("SET", "refused")
        client.restore_experiment(experiment_id)
        client.rename_experiment(experiment_id, "long-lived")
        print("RUNS", len(mlflow.search_runs([experiment_id], output_format="list")))
        print("NAME", client.get_experiment(experiment_id).name)
    """)
    assert _value(out, "DELETED") == "deleted"
    assert _value(out, "SET") == "refused"  # MLflow refuses to activate a deleted experiment
    assert _value(out, "RUNS") == "1" and _value(out, "NAME") == "long-lived"
