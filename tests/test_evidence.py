"""Evidence is never cascade-deleted: cards, runs, tracking experiments and iterations with history
are protected; runs and experiments are soft-deleted through MLflow and restorable; a hard purge is
an explicit admin action that is logged."""

from __future__ import annotations

import json

import pytest
from django.db.models import ProtectedError
from django.test import Client
from django.utils import timezone

from experiments.models import (
    Card,
    CardEvent,
    CardRun,
    Iteration,
    IterationItem,
    LatestMetric,
    Metric,
    Param,
    PurgeRecord,
    Run,
    Team,
    TrackingExperiment,
    VerdictProposal,
)
from experiments.services.iterations import iteration_close, iteration_commit_card, iteration_create
from experiments.services.purge import card_purge, team_purge
from experiments.services.runs import MetricPoint, run_log_batch, tracking_experiment_get_or_create
from experiments.services.tokens import token_create

from .test_standup import add_run, experiment, hypothesis, make_proposal

MLFLOW = "/mlflow/api/2.0/mlflow"


@pytest.fixture
def evidence(team, board, member):
    hyp = hypothesis(board, "Tenure helps", owner=member)
    exp = experiment(hyp, owner=member)
    runs = [add_run(team, exp, value=v, user=member) for v in (0.81, 0.83)]
    tracking = tracking_experiment_get_or_create(team=team, name="tenure")
    Run.objects.filter(pk__in=[r.pk for r in runs]).update(experiment=tracking)
    run_log_batch(run=runs[0], params={"lr": "0.1"}, metrics=[MetricPoint("loss", 0.3, 2, 5)])
    make_proposal(hyp)
    iteration = iteration_create(team=team, start=timezone.now() - timezone.timedelta(days=1))
    iteration_commit_card(iteration=iteration, card=hyp, actor=member)
    iteration_close(iteration=iteration)
    return {"hyp": hyp, "exp": exp, "runs": runs, "tracking": tracking, "iteration": iteration}


def _counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in (
        Card, CardEvent, CardRun, VerdictProposal, Run, Metric, LatestMetric, Param, IterationItem, Iteration,
        TrackingExperiment,
    )}


def test_deleting_a_hypothesis_is_refused_and_keeps_everything(evidence):
    before = _counts()
    for obj in (evidence["hyp"], evidence["exp"]):
        with pytest.raises(ProtectedError):
            obj.delete()
    assert _counts() == before


def test_deleting_a_tracking_experiment_run_or_iteration_is_refused(evidence):
    before = _counts()
    for obj in (evidence["tracking"], evidence["runs"][0], evidence["iteration"]):
        with pytest.raises(ProtectedError):
            obj.delete()
    with pytest.raises(ProtectedError):
        Team.objects.filter(pk=evidence["hyp"].board.team_id).delete()
    assert _counts() == before
    assert IterationItem.objects.filter(iteration=evidence["iteration"]).count() == 1  # velocity history


def test_mlflow_deletes_runs_and_experiments_softly_and_restores(evidence, team, member):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=member, name='t', team=team)[1]}"}
    client = Client()

    def post(route, payload):
        return client.post(f"{MLFLOW}/{route}", json.dumps(payload), content_type="application/json", **auth)

    run, tracking = evidence["runs"][0], evidence["tracking"]
    before = _counts()
    assert post("runs/delete", {"run_id": run.external_id}).status_code == 200
    assert post("experiments/delete", {"experiment_id": str(tracking.pk)}).status_code == 200
    assert _counts() == before  # nothing removed
    run.refresh_from_db()
    tracking.refresh_from_db()
    assert (run.lifecycle_stage, tracking.lifecycle_stage) == ("deleted", "deleted")
    search = post("runs/search", {"experiment_ids": [str(tracking.pk)]}).json()
    assert run.external_id not in [r["info"]["run_id"] for r in search.get("runs", [])]
    assert post("runs/restore", {"run_id": run.external_id}).status_code == 200
    assert post("experiments/restore", {"experiment_id": str(tracking.pk)}).status_code == 200
    run.refresh_from_db()
    tracking.refresh_from_db()
    assert (run.lifecycle_stage, tracking.lifecycle_stage) == ("active", "active")
    got = client.get(f"{MLFLOW}/metrics/get-history", {"run_id": run.external_id, "metric_key": "loss"}, **auth)
    assert [m["value"] for m in got.json()["metrics"]] == [0.3]


def test_purge_is_explicit_and_logged(evidence, member):
    hyp = evidence["hyp"]
    record = card_purge(card=hyp, actor=member, reason="test")
    assert not Card.objects.filter(pk__in=[hyp.pk, evidence["exp"].pk]).exists()  # with its child card
    assert not CardEvent.objects.filter(card_id=hyp.pk).exists()
    assert Run.objects.filter(pk=evidence["runs"][0].pk).exists()  # runs are not the card's to purge
    assert record.actor == member and record.object_type == "experiments.Card"
    assert record.counts["experiments.CardEvent"] >= 2 and record.counts["experiments.CardRun"] == 2
    assert PurgeRecord.objects.count() == 1


def test_admin_purge_action_is_for_superusers_and_logged(evidence, make_user):
    admin = make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    tracking = evidence["tracking"]
    response = client.post("/admin/experiments/trackingexperiment/", {
        "action": "purge_experiment", "_selected_action": [tracking.pk],
    }, follow=True)
    assert response.status_code == 200
    assert not TrackingExperiment.objects.filter(pk=tracking.pk).exists()
    assert not Metric.objects.filter(run_id__in=[r.pk for r in evidence["runs"]]).exists()
    record = PurgeRecord.objects.get()
    assert (record.actor, record.object_type) == (admin, "experiments.TrackingExperiment")
    assert record.counts["experiments.Run"] == 2


def test_team_purge_removes_a_whole_team(evidence, team):
    team_purge(team=team, actor=None, reason="demo reset")
    assert not Team.objects.filter(pk=team.pk).exists()
    assert _counts()["Card"] == 0 and _counts()["Run"] == 0
