"""Import end to end against a real MLflow REST server: mlboard's own /mlflow endpoint on live_server.

Team 'rivals' logs runs; its manager's API token exports them; team 'vision' imports them.
"""

from __future__ import annotations

import math

import pytest

from experiments.models import Metric, Param, Run, RunStatus
from experiments.services.mlflow_import import MlflowImportError, mlflow_source_sync, mlflow_source_upsert
from experiments.services.runs import (
    MetricPoint,
    run_create,
    run_log_metrics,
    run_update,
    tracking_experiment_get_or_create,
)
from experiments.services.tokens import token_create

pytestmark = pytest.mark.live
T0 = 1_700_000_000_000


def series(run: Run) -> list[tuple]:
    return sorted(
        Metric.objects.filter(run=run).values_list("key", "step", "timestamp", "value", "is_nan")
    )


@pytest.fixture
def exported(other_team, outsider):
    experiment = tracking_experiment_get_or_create(team=other_team, name="churn")
    runs = []
    for i in range(3):
        run = run_create(
            team=other_team, user=outsider, experiment=experiment, name=f"seed-{i}",
            status=RunStatus.RUNNING, params={"seed": i, "lr": "0.1"}, tags={"owner": "otto"},
        )
        points = [MetricPoint("val_auc", 0.7 + i / 100 + s / 1000, step=s, timestamp=T0 + s) for s in range(5)]
        points.append(MetricPoint("loss", math.nan, step=5, timestamp=T0 + 5))
        run_log_metrics(run=run, points=points)
        runs.append(run)
    for run in runs[:2]:
        run_update(run=run, status=RunStatus.FINISHED)
    _, secret = token_create(user=outsider, name="export", team=other_team)
    return runs, secret


def test_import_from_mlboard_mlflow_endpoint(live_server, team, exported):
    runs, secret = exported
    source = mlflow_source_upsert(
        team=team, name="rivals", tracking_uri=f"{live_server.url}/mlflow", token=secret, experiment_names=["churn"]
    )
    summary = mlflow_source_sync(source=source)
    assert summary.problems == [] and summary.runs_created == 3
    assert summary.metric_points == 3 * 6
    copies = {r.external_id: r for r in Run.objects.filter(team=team, source="import:rivals")}
    assert set(copies) == {r.external_id for r in runs}
    for original in Run.objects.filter(pk__in=[r.pk for r in runs]):
        copy = copies[original.external_id]
        assert series(copy) == series(original)  # full histories, NaN kept
        assert copy.status == original.status and copy.name == original.name
        assert dict(Param.objects.filter(run=copy).values_list("key", "value")) == dict(
            Param.objects.filter(run=original).values_list("key", "value")
        )
        assert copy.tags["owner"] == "otto" and copy.experiment.name == "churn"

    # Re-running adds nothing.
    again = mlflow_source_sync(source=source)
    assert (again.runs_created, again.runs_updated, again.metric_points) == (0, 0, 0)

    # The running run logs more and finishes: the next sync copies exactly the new points.
    still_running = runs[2]
    run_log_metrics(run=still_running, points=[MetricPoint("val_auc", 0.9, step=6, timestamp=T0 + 6)])
    run_update(run=still_running, status=RunStatus.FINISHED)
    third = mlflow_source_sync(source=source)
    assert third.runs_created == 0 and third.runs_updated == 1 and third.metric_points == 1
    copy = Run.objects.get(team=team, source="import:rivals", external_id=still_running.external_id)
    assert copy.status == RunStatus.FINISHED and series(copy) == series(still_running)


def test_bad_token_against_mlboard_endpoint(live_server, team, exported):
    source = mlflow_source_upsert(team=team, name="rivals", tracking_uri=f"{live_server.url}/mlflow", token="mlb_x")
    with pytest.raises(MlflowImportError, match="rejected the credentials"):
        mlflow_source_sync(source=source)
