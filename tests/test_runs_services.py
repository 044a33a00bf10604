"""Run ingestion services: MLflow semantics (immutable params, idempotent points, NaN/Inf, names),
latest values, and the mlboard.card tag moving cards."""

from __future__ import annotations

import math

import pytest

from experiments.models import Card, CardEvent, CardRun, EventKind, LatestMetric, Metric, Param, Run, Stage
from experiments.services.cards import card_create
from experiments.services.runs import (
    IngestError,
    MetricPoint,
    run_create,
    run_delete,
    run_delete_tag,
    run_log_batch,
    run_log_metrics,
    run_log_params,
    run_set_tags,
    run_update,
    tracking_experiment_create,
)


@pytest.fixture
def run(team, member) -> Run:
    return run_create(team=team, user=member, name="r1")


@pytest.mark.parametrize("key", ["loss", "val/auc", "a b", "epoch:1", "x-y.z_w", "a/b/c"])
def test_mlflow_valid_keys_are_accepted(run, key):
    run_log_batch(run=run, metrics=[MetricPoint(key, 1.0, 0, 1)], params={key: "v"}, tags={key: "t"})
    assert Metric.objects.get(run=run).key == key


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "../up", "a//b", "trailing/", "./x", "bad@char", "é" * 251])
def test_keys_mlflow_rejects_are_rejected(run, key):
    with pytest.raises(IngestError) as excinfo:
        run_log_metrics(run=run, points=[MetricPoint(key, 1.0, 0, 1)])
    assert excinfo.value.mlflow_code == "INVALID_PARAMETER_VALUE"
    assert not Metric.objects.exists()


def test_points_are_idempotent_and_count_only_new(run):
    points = [MetricPoint("loss", 1 / (s + 1), s, 100 + s) for s in range(50)]
    assert run_log_metrics(run=run, points=points) == 50
    assert run_log_metrics(run=run, points=points) == 0
    assert run_log_metrics(run=run, points=[*points, MetricPoint("loss", 9.0, 50, 200), points[0]]) == 1
    assert Metric.objects.filter(run=run).count() == 51


def test_same_step_and_time_with_another_value_is_a_new_point(run):
    assert run_log_metrics(run=run, points=[MetricPoint("x", 1.0, 0, 5), MetricPoint("x", 2.0, 0, 5)]) == 2


def test_latest_value_follows_step_then_timestamp(run):
    run_log_metrics(run=run, points=[MetricPoint("acc", 0.5, 3, 100)])
    run_log_metrics(run=run, points=[MetricPoint("acc", 0.1, 2, 999)])  # older step arriving late
    latest = LatestMetric.objects.get(run=run, key="acc")
    assert (latest.step, latest.value) == (3, 0.5)
    run_log_metrics(run=run, points=[MetricPoint("acc", 0.7, 3, 101), MetricPoint("acc", 0.6, 3, 50)])
    assert LatestMetric.objects.get(run=run, key="acc").value == 0.7
    run_log_metrics(run=run, points=[MetricPoint("acc", 0.9, 10, 1)])
    assert LatestMetric.objects.get(run=run, key="acc").value == 0.9


def test_nan_and_infinities_are_kept(run):
    run_log_metrics(
        run=run,
        points=[
            MetricPoint("a", float("nan"), 0, 1),
            MetricPoint("b", "Infinity", 0, 1),
            MetricPoint("c", "-Infinity", 0, 1),
            MetricPoint("d", "NaN", 0, 1),
        ],
    )
    rows = {m.key: m for m in Metric.objects.filter(run=run)}
    assert rows["a"].is_nan and rows["a"].value == 0.0 and rows["d"].is_nan
    assert rows["b"].value == math.inf and rows["c"].value == -math.inf
    assert LatestMetric.objects.get(run=run, key="a").is_nan
    # A retried NaN point is still a duplicate.
    assert run_log_metrics(run=run, points=[MetricPoint("a", float("nan"), 0, 1)]) == 0


@pytest.mark.parametrize("bad", [{"value": "high"}, {"value": True}, {"step": 1.5}, {"timestamp": "soon"}])
def test_bad_metric_values_are_rejected(run, bad):
    fields = {"key": "m", "value": 1.0, "step": 0, "timestamp": 1, **bad}
    with pytest.raises(IngestError):
        run_log_metrics(run=run, points=[MetricPoint(**fields)])


def test_params_are_immutable_and_a_bad_batch_stores_nothing(run):
    run_log_params(run=run, params={"lr": 0.1, "depth": 3})
    run_log_params(run=run, params={"lr": "0.1"})  # same value again: fine
    with pytest.raises(IngestError) as excinfo:
        run_log_batch(run=run, metrics=[MetricPoint("acc", 1.0, 0, 1)], params={"lr": "0.2", "new": "x"})
    assert "Changing param values is not allowed" in excinfo.value.message
    assert "key='lr'" in excinfo.value.message and "'0.2'" in excinfo.value.message
    assert dict(Param.objects.filter(run=run).values_list("key", "value")) == {"lr": "0.1", "depth": "3"}
    assert not Metric.objects.filter(run=run).exists()


def test_one_batch_cannot_give_a_param_two_values(run):
    with pytest.raises(IngestError, match="Duplicate param keys"):
        run_log_batch(run=run, params=[("lr", "0.1"), ("lr", "0.2")])
    run_log_batch(run=run, params=[("lr", "0.1"), ("lr", "0.1")])
    assert Param.objects.get(run=run).value == "0.1"


def test_long_values_are_rejected(run):
    with pytest.raises(IngestError, match="6000"):
        run_log_params(run=run, params={"p": "x" * 6001})
    with pytest.raises(IngestError, match="8000"):
        run_set_tags(run=run, tags={"t": "x" * 8001})


def test_seed_is_derived_from_params(run):
    run_log_batch(run=run, params={"seed": "1234"})
    assert Run.objects.get(pk=run.pk).seed == 1234


def test_run_names(team, member):
    generated = run_create(team=team, user=member)
    assert generated.name and generated.name.count("-") == 2
    from_tag = run_create(team=team, user=member, tags={"mlflow.runName": "from-tag"})
    assert from_tag.name == "from-tag"
    with pytest.raises(IngestError, match="differ"):
        run_create(team=team, user=member, name="a", tags={"mlflow.runName": "b"})
    imported = run_create(team=team, source="import:prod", external_id="abc")
    assert imported.name == ""
    renamed = run_update(run=generated, name="final")
    assert renamed.name == "final" and renamed.tags["mlflow.runName"] == "final"


def test_experiment_names_are_unique_per_team(team, other_team):
    tracking_experiment_create(team=team, name="churn", tags={"owner": "mo"})
    tracking_experiment_create(team=other_team, name="churn")
    with pytest.raises(IngestError) as excinfo:
        tracking_experiment_create(team=team, name="churn")
    assert excinfo.value.mlflow_code == "RESOURCE_ALREADY_EXISTS"


def test_deleted_runs_take_no_new_data(run):
    run_delete(run=run)
    with pytest.raises(IngestError, match="active"):
        run_log_batch(run=Run.objects.get(pk=run.pk), metrics=[MetricPoint("a", 1, 0, 1)])


def test_card_tag_links_moves_and_flags(team, member, board):
    card = card_create(board=board, kind="hypothesis", title="Bigger batch", actor=member)
    first = run_create(team=team, user=member, tags={"mlboard.card": card.key})
    second = run_create(team=team, user=member, tags={"mlboard.card": f"{card.key.lower()}, NOPE-9"})
    assert set(CardRun.objects.filter(card=card).values_list("run_id", flat=True)) == {first.pk, second.pk}
    assert Card.objects.get(pk=card.pk).column.stage == Stage.RUNNING

    run_update(run=first, status="FINISHED")
    assert Card.objects.get(pk=card.pk).column.stage == Stage.RUNNING  # one run still going
    run_update(run=second, status="FAILED")
    card.refresh_from_db()
    assert card.column.stage == Stage.ANALYZING
    assert card.flagged and "failed" in card.flag_reason
    kinds = list(CardEvent.objects.filter(card=card).values_list("kind", flat=True))
    assert kinds.count(EventKind.LINKED) == 2 and EventKind.MOVED in kinds


def test_hypothesis_follows_the_runs_of_its_experiments(team, member, board):
    hyp = card_create(board=board, kind="hypothesis", title="Dropout helps", actor=member)
    exp_a = card_create(board=board, kind="experiment", title="p=0.1", actor=member, parent=hyp)
    exp_b = card_create(board=board, kind="experiment", title="p=0.3", actor=member, parent=hyp)
    a = run_create(team=team, user=member, tags={"mlboard.card": exp_a.key})
    assert Card.objects.get(pk=hyp.pk).column.stage == Stage.RUNNING
    b = run_create(team=team, user=member, tags={"mlboard.card": exp_b.key})
    run_update(run=a, status="FINISHED")
    # exp_a is done training, but the hypothesis still has a running experiment.
    assert Card.objects.get(pk=exp_a.pk).column.stage == Stage.ANALYZING
    assert Card.objects.get(pk=hyp.pk).column.stage == Stage.RUNNING
    run_update(run=b, status="FINISHED")
    assert Card.objects.get(pk=hyp.pk).column.stage == Stage.ANALYZING
    # Automatic moves are recorded without an actor, with the reason.
    moves = CardEvent.objects.filter(card=hyp, kind=EventKind.MOVED).order_by("id")
    assert [m.to_stage for m in moves] == [Stage.RUNNING, Stage.ANALYZING]
    assert all(m.actor is None for m in moves)
    assert not Card.objects.get(pk=hyp.pk).flagged


def test_card_tag_is_the_source_of_truth_for_tag_links(team, member, board):
    one = card_create(board=board, kind="hypothesis", title="One", actor=member)
    two = card_create(board=board, kind="hypothesis", title="Two", actor=member)
    run = run_create(team=team, user=member, tags={"mlboard.card": one.key})
    run = run_set_tags(run=run, tags={"mlboard.card": two.key})
    assert list(CardRun.objects.filter(run=run).values_list("card_id", flat=True)) == [two.pk]
    assert CardEvent.objects.filter(card=one, kind=EventKind.UNLINKED).exists()
    run = run_delete_tag(run=run, key="mlboard.card")
    assert not CardRun.objects.filter(run=run).exists()
    with pytest.raises(IngestError) as excinfo:
        run_delete_tag(run=run, key="mlboard.card")
    assert excinfo.value.mlflow_code == "RESOURCE_DOES_NOT_EXIST"


def test_cards_of_other_teams_are_never_linked(team, other_team, member, outsider):
    from experiments.services.boards import board_create

    theirs = board_create(team=other_team, name="Theirs", key="THEM")
    card = card_create(board=theirs, kind="hypothesis", title="Secret", actor=outsider)
    run = run_create(team=team, user=member, tags={"mlboard.card": card.key})
    assert not CardRun.objects.filter(run=run).exists()


def test_batches_touch_last_activity_at_most_every_few_seconds(run):
    from datetime import timedelta

    from django.utils import timezone

    stale = timezone.now() - timedelta(minutes=5)
    Run.objects.filter(pk=run.pk).update(updated_at=stale)
    run.refresh_from_db()
    run_log_batch(run=run, metrics=[MetricPoint("a", 1.0, 0, 1)])
    touched = Run.objects.get(pk=run.pk).updated_at
    assert touched > stale
    run_log_batch(run=run, metrics=[MetricPoint("a", 2.0, 1, 2)])
    assert Run.objects.get(pk=run.pk).updated_at == touched
