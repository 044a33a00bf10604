"""MLflow import against a real HTTP server speaking MLflow REST 2.0 (tests/test_mlflow_import_fake.py)."""

from __future__ import annotations

import datetime as dt
import io
import socket

import pytest
from django.core.management import CommandError, call_command

from experiments.models import (
    CardRun,
    LatestMetric,
    Metric,
    MlflowSource,
    Param,
    Run,
    RunStatus,
    TrackingExperiment,
    VerdictProposal,
)
from experiments.services.cards import card_create
from experiments.services.mlflow_import import (
    MlflowImportError,
    mlflow_full_sync_due,
    mlflow_last_full_sync,
    mlflow_source_sync,
    mlflow_source_upsert,
)
from experiments.tasks import sync_all_mlflow_sources, sync_mlflow_source

from .test_mlflow_import_fake import FakeMlflow

TOKEN = "s3cret-token"
T0 = 1_700_000_000_000


def populate(fake: FakeMlflow) -> None:
    churn = fake.add_experiment("churn", tags={"team": "retention"})
    fake.add_run(churn, "r1", start=T0 + 1000, end=T0 + 5000, user="mo", params={"lr": "0.1", "seed": "1"},
                 tags={"mlflow.runName": "baseline-lr", "mlflow.source.git.commit": "abc123"})
    fake.log("r1", "val_auc", [(i, 0.70 + i / 100) for i in range(7)])  # 7 points -> 3 history pages
    fake.log("r1", "loss", [(0, 0.9), (1, float("nan"))])
    fake.add_run(churn, "r2", start=T0 + 2000, end=T0 + 6000, status="FAILED", params={"lr": "1.0"})
    fake.log("r2", "val_auc", [(0, 0.5)])
    fake.add_run(churn, "r3", start=T0 + 3000, status="RUNNING", params={"lr": "0.01"})
    fake.log("r3", "val_auc", [(0, 0.6), (1, 0.65)])
    other = fake.add_experiment("fraud")
    fake.add_run(other, "f1", start=T0 + 4000, end=T0 + 4500, params={"depth": "6"})
    fake.log("f1", "precision", [(0, 0.4)])


@pytest.fixture
def fake():
    with FakeMlflow(token=TOKEN) as server:
        populate(server)
        yield server


@pytest.fixture
def source(team, fake, member) -> MlflowSource:
    return mlflow_source_upsert(team=team, name="legacy", tracking_uri=fake.url, token=TOKEN)


def imported(team):
    return Run.objects.filter(team=team, source="import:legacy")


def test_full_import(team, fake, source, member):
    summary = mlflow_source_sync(source=source)
    assert summary.experiments == 2 and summary.runs_created == 4 and summary.problems == []
    assert summary.metric_points == 7 + 2 + 1 + 2 + 1
    runs = {r.external_id: r for r in imported(team).select_related("experiment")}
    assert set(runs) == {"r1", "r2", "r3", "f1"}
    r1 = runs["r1"]
    assert r1.status == RunStatus.FINISHED and r1.name == "baseline-lr"
    assert r1.start_time.timestamp() * 1000 == T0 + 1000 and r1.end_time.timestamp() * 1000 == T0 + 5000
    assert r1.user == member and r1.user_name == "mo"
    assert r1.code_version == "abc123" and r1.seed == 1
    assert r1.artifact_uri == f"mlflow-artifacts:/teams/{team.pk}/{r1.experiment_id}/r1/artifacts"  # the copy
    assert r1.experiment.name == "churn" and r1.experiment.external_id == "1"
    assert r1.experiment.tags == {"team": "retention"} and r1.experiment.source == "import:legacy"
    assert dict(Param.objects.filter(run=r1).values_list("key", "value")) == {"lr": "0.1", "seed": "1"}
    history = list(Metric.objects.filter(run=r1, key="val_auc").order_by("step").values_list("step", "value"))
    assert history == [(i, pytest.approx(0.70 + i / 100)) for i in range(7)]
    nan_point = Metric.objects.get(run=r1, key="loss", step=1)
    assert nan_point.is_nan
    assert LatestMetric.objects.get(run=r1, key="val_auc").value == pytest.approx(0.76)
    assert runs["r2"].status == RunStatus.FAILED and runs["r3"].status == RunStatus.RUNNING
    assert runs["r3"].end_time is None
    assert runs["f1"].experiment.name == "fraud"
    # All pages were followed.
    assert len(fake.calls("runs/search")) == 2 + 1  # churn: 3 runs in pages of 2; fraud: 1 page
    assert len([c for c in fake.calls("metrics/get-history") if c["run_id"] == "r1"]) == 3 + 1  # 7 pts / 3 + loss
    source.refresh_from_db()
    assert source.last_error == "" and source.last_synced_at is not None
    assert source.cursor["1"] == {"start_time": T0 + 3000, "end_time": T0 + 6000, "active": ["r3"]}


def test_rerun_imports_nothing_and_fetches_no_history(team, fake, source):
    mlflow_source_sync(source=source)
    before = (imported(team).count(), Metric.objects.count(), Param.objects.count())
    fake.requests.clear()
    summary = mlflow_source_sync(source=source)
    assert summary.runs_created == 0 and summary.metric_points == 0 and summary.runs_updated == 0
    assert summary.runs_unchanged >= 3
    assert (imported(team).count(), Metric.objects.count(), Param.objects.count()) == before
    # Finished runs whose latest points match cost no history request; the running one is re-checked.
    assert fake.calls("metrics/get-history") == []
    # Only runs started/ended since the cursor were asked for.
    filters = [c.get("filter") for c in fake.calls("runs/search")]
    assert f"attributes.start_time >= {T0 + 3000}" in filters and f"attributes.end_time >= {T0 + 6000}" in filters


def test_second_sync_adds_new_points_status_and_runs(team, fake, source):
    mlflow_source_sync(source=source)
    fake.log("r3", "val_auc", [(2, 0.7), (3, 0.72)])
    fake.finish("r3", end=T0 + 9000)
    fake.add_run("1", "r4", start=T0 + 8000, end=T0 + 8500, params={"lr": "0.05"}, tags={"note": "new"})
    fake.log("r4", "val_auc", [(0, 0.8)])
    fake.runs["r1"]["tags"].append({"key": "mlboard.reviewed", "value": "yes"})  # tag added after the fact
    summary = mlflow_source_sync(source=source)
    assert summary.runs_created == 1 and summary.metric_points == 2 + 1
    r3 = imported(team).get(external_id="r3")
    assert r3.status == RunStatus.FINISHED and r3.end_time.timestamp() * 1000 == T0 + 9000
    assert Metric.objects.filter(run=r3, key="val_auc").count() == 4
    assert LatestMetric.objects.get(run=r3, key="val_auc").value == pytest.approx(0.72)
    assert imported(team).get(external_id="r4").tags == {"note": "new"}
    source.refresh_from_db()
    assert source.cursor["1"]["active"] == [] and source.cursor["1"]["end_time"] == T0 + 9000
    assert mlflow_source_sync(source=source).metric_points == 0
    # r1 ended before the cursor, so its late tag needs a full listing; history is still not re-fetched.
    assert "mlboard.reviewed" not in imported(team).get(external_id="r1").tags
    fake.requests.clear()
    summary = mlflow_source_sync(source=source, full=True)
    assert summary.runs_updated == 1 and summary.runs_created == 0 and summary.metric_points == 0
    assert imported(team).get(external_id="r1").tags["mlboard.reviewed"] == "yes"
    assert fake.calls("metrics/get-history") == []


def test_active_run_missing_from_filtered_search_is_fetched_by_id(team, fake, source):
    fake.add_run("1", "r5", start=T0 + 3500, end=T0 + 3600)  # moves the start cursor past r3
    mlflow_source_sync(source=source)
    # The run finished, but with an end time older than the cursor (clock skew on the client).
    fake.log("r3", "val_auc", [(2, 0.7)])
    fake.finish("r3", end=T0 + 10)
    fake.requests.clear()
    mlflow_source_sync(source=source)
    assert [c["run_id"] for c in fake.calls("runs/get")] == ["r3"]
    r3 = imported(team).get(external_id="r3")
    assert r3.status == RunStatus.FINISHED and Metric.objects.filter(run=r3).count() == 3


def test_server_without_filters_gets_full_listing(team, fake, source):
    fake.accept_filters = False
    mlflow_source_sync(source=source)
    fake.log("r3", "val_auc", [(2, 0.7)])
    summary = mlflow_source_sync(source=source)
    assert summary.runs_created == 0 and summary.metric_points == 1
    assert Metric.objects.filter(run__external_id="r3").count() == 3


def test_experiment_selection_and_unknown_name(team, fake):
    source = mlflow_source_upsert(team=team, name="legacy", tracking_uri=fake.url, token=TOKEN,
                                  experiment_names=["fraud"])
    summary = mlflow_source_sync(source=source)
    assert summary.experiments == 1 and set(imported(team).values_list("external_id", flat=True)) == {"f1"}
    source = mlflow_source_upsert(team=team, name="legacy", experiment_names=["nope"])
    with pytest.raises(MlflowImportError, match=r"No experiment named 'nope'.*Available: churn, fraud"):
        mlflow_source_sync(source=source)
    source.refresh_from_db()
    assert "nope" in source.last_error


def test_bad_token_is_a_clear_error(team, fake):
    source = mlflow_source_upsert(team=team, name="legacy", tracking_uri=fake.url, token="wrong")
    with pytest.raises(MlflowImportError, match=r"rejected the credentials \(HTTP 401 Unauthorized\)"):
        mlflow_source_sync(source=source)
    source.refresh_from_db()
    assert "credentials" in source.last_error
    assert not imported(team).exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_clear_error(team):
    uri = f"http://127.0.0.1:{_closed_port()}"
    source = mlflow_source_upsert(team=team, name="gone", tracking_uri=uri)
    with pytest.raises(MlflowImportError, match="Cannot reach the MLflow server"):
        mlflow_source_sync(source=source)
    source.refresh_from_db()
    assert "Cannot reach" in source.last_error and source.last_synced_at is None


def test_not_an_mlflow_server(team, fake):
    source = mlflow_source_upsert(team=team, name="x", tracking_uri=fake.url + "/not-mlflow", token=TOKEN)
    with pytest.raises(MlflowImportError, match="does not look like an MLflow tracking server"):
        mlflow_source_sync(source=source)


def test_imported_tagged_runs_link_cards_and_propose_verdict(team, board, fake, source,
                                                             django_capture_on_commit_callbacks):
    card = card_create(board=board, kind="hypothesis", title="lr matters", actor=None,
                       metric_key="val_auc", direction="maximize", threshold=0.6, min_runs=2)
    exp = fake.add_experiment("linked")
    for i, value in enumerate([0.8, 0.82]):
        fake.add_run(exp, f"L{i}", start=T0 + 100 + i, end=T0 + 200 + i, tags={"mlboard.card": card.key})
        fake.log(f"L{i}", "val_auc", [(0, 0.5), (1, value)])
    source.experiment_names = "linked"
    source.save()
    with django_capture_on_commit_callbacks(execute=True):
        mlflow_source_sync(source=source)
    assert CardRun.objects.filter(card=card).count() == 2
    proposal = VerdictProposal.objects.get(card=card)
    assert proposal.stats["n"] == 2 and proposal.stats["mean"] == pytest.approx(0.81)


# --- command and periodic task ---------------------------------------------------------------------


def test_command_imports_with_progress(team, fake):
    out, err = io.StringIO(), io.StringIO()
    call_command("import_mlflow", "vision", fake.url, "--token", TOKEN, "--source-name", "legacy",
                 "--experiment", "churn", stdout=out, stderr=err)
    assert "Imported: 1 experiment(s): 3 new run(s)" in out.getvalue()
    assert "churn" in err.getvalue() and "3/3" in err.getvalue()  # tqdm bar for the experiment
    assert imported(team).count() == 3
    source = MlflowSource.objects.get(team=team, name="legacy")
    assert source.experiment_names == "churn" and source.token == TOKEN
    # Re-running with the saved settings imports nothing new.
    out = io.StringIO()
    call_command("import_mlflow", "vision", fake.url, "--source-name", "legacy", "--no-progress",
                 stdout=out, stderr=io.StringIO())
    assert "0 new run(s), 0 updated, 2 unchanged; 0 new metric point(s)" in out.getvalue()  # r2, r3 re-checked


def test_command_errors_exit_non_zero(team, fake):
    with pytest.raises(CommandError, match="rejected the credentials"):
        call_command("import_mlflow", "vision", fake.url, "--token", "bad", stdout=io.StringIO(),
                     stderr=io.StringIO())
    with pytest.raises(CommandError, match="No team with slug 'nobody'"):
        call_command("import_mlflow", "nobody", fake.url, stdout=io.StringIO())
    with pytest.raises(CommandError, match="not an http"):
        call_command("import_mlflow", "vision", "file:///tmp/mlruns", stdout=io.StringIO())


def test_periodic_task_syncs_enabled_sources(team, other_team, fake, django_capture_on_commit_callbacks):
    a = mlflow_source_upsert(team=team, name="legacy", tracking_uri=fake.url, token=TOKEN)
    b = mlflow_source_upsert(team=other_team, name="legacy", tracking_uri=fake.url, token=TOKEN,
                             experiment_names=["fraud"])
    off = mlflow_source_upsert(team=team, name="off", tracking_uri=fake.url, token=TOKEN)
    off.enabled = False
    off.save()
    with django_capture_on_commit_callbacks(execute=True):
        ids = sync_all_mlflow_sources.delay().get()
    assert ids == [a.pk, b.pk]
    assert imported(team).count() == 4 and imported(other_team).count() == 1
    assert not Run.objects.filter(source="import:off").exists()
    assert TrackingExperiment.objects.filter(team=other_team, source="import:legacy").count() == 1


def test_bad_run_is_reported_and_the_rest_imported(team, fake, source):
    fake.add_run("2", "bad", start=T0 + 4100, end=T0 + 4200)
    fake.log("bad", "../escape", [(0, 1.0)])  # rejected by mlboard's key rules
    summary = mlflow_source_sync(source=source)
    assert summary.runs_created == 4
    assert len(summary.problems) == 1 and "Run bad in 'fraud'" in summary.problems[0]
    assert not imported(team).filter(external_id="bad").exists()
    source.refresh_from_db()
    assert "Run bad" in source.last_error
    assert "bad" in source.cursor["2"]["active"]  # retried on the next sync
    with pytest.raises(CommandError, match="1 run"):
        call_command("import_mlflow", "vision", fake.url, "--source-name", "legacy", "--no-progress",
                     stdout=io.StringIO(), stderr=io.StringIO())


def _searches(fake: FakeMlflow) -> list[str]:
    return [c.get("filter", "") for c in fake.calls("runs/search")]


def _age_last_full_sync(source: MlflowSource, hours: float) -> None:
    source.refresh_from_db()
    moment = mlflow_last_full_sync(source=source) - dt.timedelta(hours=hours)
    MlflowSource.objects.filter(pk=source.pk).update(cursor={**source.cursor, "last_full_sync": moment.isoformat()})


def test_periodic_task_does_a_daily_full_pass_for_late_tags(team, board, fake, source):
    card = card_create(board=board, kind="hypothesis", title="lr matters", actor=None)
    first = sync_mlflow_source.delay(source.pk).get()
    assert first["full"] is True and first["runs_created"] == 4  # never fully synced: full pass
    source.refresh_from_db()
    last_full = mlflow_last_full_sync(source=source)
    assert last_full is not None and source.last_synced_at >= last_full
    assert source.cursor["1"]["end_time"] == T0 + 6000  # experiment cursors live next to it

    # A card tag set afterwards on r1, which finished long before the cursor.
    fake.runs["r1"]["tags"].append({"key": "mlboard.card", "value": card.key})
    fake.requests.clear()
    result = sync_mlflow_source.delay(source.pk).get()
    assert result["full"] is False and result["runs_updated"] == 0
    assert "" not in _searches(fake)  # only filtered (incremental) listings
    assert not CardRun.objects.filter(card=card).exists()
    source.refresh_from_db()
    assert mlflow_last_full_sync(source=source) == last_full  # an incremental pass does not count

    _age_last_full_sync(source, hours=23)  # still within the day
    fake.requests.clear()
    assert sync_mlflow_source.delay(source.pk).get()["full"] is False
    assert "" not in _searches(fake)

    _age_last_full_sync(source, hours=2)  # now 25 h old
    fake.requests.clear()
    result = sync_mlflow_source.delay(source.pk).get()
    assert result["full"] is True and result["runs_updated"] == 1 and result["runs_created"] == 0
    assert _searches(fake) == ["", "", ""]  # churn (2 pages) and fraud listed without filters
    assert fake.calls("metrics/get-history") == []  # unchanged histories are still not re-read
    r1 = imported(team).get(external_id="r1")
    assert r1.tags["mlboard.card"] == card.key
    assert CardRun.objects.filter(card=card, run=r1).exists()
    source.refresh_from_db()
    assert mlflow_last_full_sync(source=source) > last_full
    assert not mlflow_full_sync_due(source=source)

    # The next tick is incremental again.
    fake.requests.clear()
    result = sync_mlflow_source.delay(source.pk).get()
    assert result["full"] is False and result["runs_updated"] == 0 and result["runs_created"] == 0
    assert _searches(fake) and "" not in _searches(fake)


def test_failed_full_pass_is_retried_on_the_next_tick(team, fake, source):
    sync_mlflow_source.delay(source.pk).get()
    _age_last_full_sync(source, hours=25)
    source.refresh_from_db()
    stale = mlflow_last_full_sync(source=source)
    MlflowSource.objects.filter(pk=source.pk).update(token="wrong")
    result = sync_mlflow_source.delay(source.pk).get()
    assert result["full"] is True and "credentials" in result["error"]
    source.refresh_from_db()
    assert mlflow_last_full_sync(source=source) == stale and mlflow_full_sync_due(source=source)
    MlflowSource.objects.filter(pk=source.pk).update(token=TOKEN)
    assert sync_mlflow_source.delay(source.pk).get()["full"] is True
    source.refresh_from_db()
    assert not mlflow_full_sync_due(source=source)


@pytest.mark.parametrize(
    ("value", "due"),
    [
        (None, True),
        ("not a date", True),
        (12345, True),
        ("2026-01-01T11:00:00+00:00", False),  # 1 h ago
        ("2026-01-01T12:00:00", False),  # naive values are read as UTC
        ("2025-12-31T12:00:00+00:00", True),  # exactly 24 h ago
        ("2026-01-02T12:00:00+00:00", True),  # in the future (clock change): not trusted
    ],
)
def test_full_sync_due(team, value, due):
    source = MlflowSource(team=team, name="x", tracking_uri="http://mlflow.example.com",
                          cursor={} if value is None else {"1": {"start_time": 1}, "last_full_sync": value})
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    assert mlflow_full_sync_due(source=source, now=now) is due
