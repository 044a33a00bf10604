"""The periodic MLflow import works in bounded, resumable chunks with the pass cursor on the source row."""

from __future__ import annotations

import pytest

from experiments.models import Metric, MlflowSource, Run
from experiments.services.mlflow_import import (
    PASS_KEY,
    mlflow_source_sync,
    mlflow_source_sync_step,
    mlflow_source_upsert,
)
from experiments.tasks import sync_mlflow_source

from .test_mlflow_import import T0, TOKEN, populate
from .test_mlflow_import_fake import FakeMlflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def fake():
    with FakeMlflow(token=TOKEN) as server:
        populate(server)
        for i in range(5):
            server.add_run("1", f"r{10 + i}", start=T0 + 10_000 + i, end=T0 + 20_000 + i)
            server.log(f"r{10 + i}", "val_auc", [(0, 0.5 + i / 100), (1, 0.6)])
        yield server


def _source(team, fake):
    return mlflow_source_upsert(team=team, name="legacy", tracking_uri=fake.url, token=TOKEN)


def test_the_task_imports_in_chunks_and_reenqueues_itself(team, fake, settings, django_capture_on_commit_callbacks):
    # 9 runs need work -> 3 chunks; the finished runs' artifact listings (empty here) take a 4th.
    settings.MLFLOW_IMPORT_CHUNK_RUNS = 3
    source = _source(team, fake)
    results = []
    original = mlflow_source_sync_step

    def record(**kwargs):
        results.append(original(**kwargs))
        return results[-1]

    import experiments.services.mlflow_import as module

    module.mlflow_source_sync_step = record
    try:
        with django_capture_on_commit_callbacks(execute=True):
            sync_mlflow_source.delay(source.pk)
    finally:
        module.mlflow_source_sync_step = original
    assert [r["done"] for r in results] == [False, False, False, True]
    assert results[-1]["runs_created"] == 9 and results[-1]["experiments"] == 2  # totals over the pass
    source.refresh_from_db()
    assert PASS_KEY not in source.cursor and source.last_synced_at is not None
    assert Run.objects.filter(team=team).count() == 9
    assert Metric.objects.filter(run__external_id="r1", key="val_auc").count() == 7
    # The per-experiment cursors are what one unchunked pass leaves.
    assert source.cursor["1"]["active"] == ["r3"] and source.cursor["2"]["end_time"] == T0 + 4500


def test_a_pass_resumes_where_it_stopped_and_outdated_messages_stop(team, fake, settings):
    settings.MLFLOW_IMPORT_CHUNK_RUNS = 4
    source = _source(team, fake)
    first = mlflow_source_sync_step(source_id=source.pk)
    pass_id, seq = first["next"]
    source.refresh_from_db()
    state = source.cursor[PASS_KEY]
    assert state["experiment"] == "1" and state["after"] == "r12" and Run.objects.count() == 4
    # A beat tick while the chain is alive does nothing, nor does a message for an older chunk.
    assert mlflow_source_sync_step(source_id=source.pk) == {"skipped": "a pass is under way"}
    assert mlflow_source_sync_step(source_id=source.pk, pass_id=pass_id, seq=seq - 1) == {"skipped": "stale chain"}
    # The chunk is done again after a crash (its message redelivered): nothing is imported twice.
    second = mlflow_source_sync_step(source_id=source.pk, pass_id=pass_id, seq=seq)
    assert Run.objects.count() == 8 and second["runs_created"] == 8
    third = mlflow_source_sync_step(source_id=source.pk, pass_id=pass_id, seq=seq + 1)
    assert third["done"] and third["runs_created"] == 9 and Run.objects.count() == 9
    assert Metric.objects.filter(run__external_id="r10").count() == 2
    # The next pass finds everything unchanged.
    again = mlflow_source_sync(source=MlflowSource.objects.get(pk=source.pk))
    assert (again.runs_created, again.runs_updated, again.metric_points) == (0, 0, 0)


def test_a_stalled_pass_is_adopted_by_the_next_tick(team, fake, settings):
    settings.MLFLOW_IMPORT_CHUNK_RUNS = 4
    source = _source(team, fake)
    mlflow_source_sync_step(source_id=source.pk)
    source.refresh_from_db()
    cursor = source.cursor
    cursor[PASS_KEY]["touched_at"] = "2020-01-01T00:00:00+00:00"  # its chain died long ago
    MlflowSource.objects.filter(pk=source.pk).update(cursor=cursor)
    result = mlflow_source_sync_step(source_id=source.pk)
    assert result["runs_created"] == 8 and "next" in result


# --- Artifacts ---------------------------------------------------------------------------------------


@pytest.fixture
def artifact_root(settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "artifacts": {
        "BACKEND": "experiments.storage.LocalArtifactStorage", "OPTIONS": {"location": str(tmp_path / "store")}}}
    return tmp_path / "store"


def _artifacts(fake):
    big = bytes(range(256)) * 8192  # 2 MiB, streamed in chunks
    fake.add_artifact("r1", "model/MLmodel", b"flavors: {}\n")
    fake.add_artifact("r1", "model/weights.bin", big)
    fake.add_artifact("r1", "plots/roc.png", b"\x89PNG fake")
    fake.add_artifact("f1", "report.txt", b"fraud report")
    fake.add_artifact("r3", "running.txt", b"not yet")  # r3 still runs: copied once it finishes
    return big


def test_import_copies_artifacts_through_the_proxy_idempotently(team, fake, artifact_root):
    from experiments.models import ArtifactFile, ImportedRunArtifacts
    from experiments.services.artifacts import run_artifact_root
    from experiments.storage import artifact_storage

    big = _artifacts(fake)
    source = _source(team, fake)
    summary = mlflow_source_sync(source=source)
    assert summary.problems == []
    r1 = Run.objects.get(external_id="r1")
    root = run_artifact_root(r1)
    assert root == f"teams/{team.pk}/{r1.experiment_id}/r1/artifacts"  # the team's own space, not the remote's
    stored = dict(ArtifactFile.objects.filter(run=r1).values_list("path", "size"))
    assert stored == {f"{root}/model/MLmodel": 12, f"{root}/model/weights.bin": len(big), f"{root}/plots/roc.png": 9}
    with artifact_storage().open_stream(f"{root}/model/weights.bin") as handle:
        assert handle.read() == big
    copy = ImportedRunArtifacts.objects.get(run=r1)
    assert copy.done_at is not None and copy.files == 3 and copy.size == len(big) + 21
    assert not ImportedRunArtifacts.objects.filter(run__external_id="r3").exists()
    downloads = len(fake.artifact_downloads)
    assert downloads == 4  # r1's three files and f1's report
    # Again: nothing downloaded twice.
    mlflow_source_sync(source=MlflowSource.objects.get(pk=source.pk))
    assert len(fake.artifact_downloads) == downloads
    # r3 finishes: its file comes with the next sync.
    fake.finish("r3", end=T0 + 30_000)
    mlflow_source_sync(source=MlflowSource.objects.get(pk=source.pk))
    assert fake.artifact_downloads[downloads:] == ["1/r3/artifacts/running.txt"]


def test_an_interrupted_artifact_copy_resumes_without_downloading_again(team, fake, artifact_root, settings):
    from experiments.models import ArtifactFile, ImportedRunArtifacts

    _artifacts(fake)
    settings.MLFLOW_IMPORT_CHUNK_RUNS = 10
    source = _source(team, fake)
    results = [mlflow_source_sync_step(source_id=source.pk)]
    while "next" in results[-1]:
        pass_id, seq = results[-1]["next"]
        results.append(mlflow_source_sync_step(source_id=source.pk, pass_id=pass_id, seq=seq))
    # 9 runs fill the first chunk; the artifact copy runs in the next ones, 10 files/runs per chunk.
    assert len(results) >= 2 and results[-1]["done"]
    assert ArtifactFile.objects.count() == 4 and len(fake.artifact_downloads) == 4
    assert ImportedRunArtifacts.objects.filter(done_at__isnull=True).count() == 0
    # A copy marked pending again (as if the worker died before recording it) re-lists but skips stored files.
    ImportedRunArtifacts.objects.update(done_at=None)
    mlflow_source_sync(source=MlflowSource.objects.get(pk=source.pk))
    assert len(fake.artifact_downloads) == 4
    assert ImportedRunArtifacts.objects.filter(done_at__isnull=True).count() == 0


def test_artifacts_the_server_does_not_proxy_come_through_its_run_scoped_api(team, fake, artifact_root):
    """Runs whose client wrote to s3:// (or file://) itself: the source server lists and serves them
    (artifacts/list, get-artifact), so they are copied all the same, once."""
    from experiments.models import ArtifactFile, ImportedRunArtifacts
    from experiments.services.artifacts import run_artifact_root
    from experiments.storage import artifact_storage

    weights = bytes(range(256)) * 4096
    fake.add_artifact("r1", "model/weights.bin", weights, proxied=False)
    fake.add_artifact("r1", "notes.txt", b"lr sweep", proxied=False)
    source = _source(team, fake)  # the fake's runs point at s3://bucket/...
    summary = mlflow_source_sync(source=source)
    assert summary.problems == []
    r1 = Run.objects.get(external_id="r1")
    root = run_artifact_root(r1)
    assert r1.artifact_uri == f"mlflow-artifacts:/{root}"  # clients of mlboard read the copy
    stored = dict(ArtifactFile.objects.filter(run=r1).values_list("path", "size"))
    assert stored == {f"{root}/model/weights.bin": len(weights), f"{root}/notes.txt": 8}
    with artifact_storage().open_stream(f"{root}/model/weights.bin") as handle:
        assert handle.read() == weights
    assert sorted(fake.artifact_downloads) == ["s3://bucket/r1/model/weights.bin", "s3://bucket/r1/notes.txt"]
    assert fake.calls("artifacts/list")[0] == {"run_id": "r1"}
    assert ImportedRunArtifacts.objects.get(run=r1).remote_root == ""
    mlflow_source_sync(source=MlflowSource.objects.get(pk=source.pk))
    assert len(fake.artifact_downloads) == 2  # idempotent


def test_a_server_that_cannot_list_a_runs_artifacts_does_not_stop_the_import(team, fake, artifact_root):
    from experiments.models import ImportedRunArtifacts

    fake.add_artifact("r1", "notes.txt", b"lr sweep", proxied=False)
    fake.unlistable.add("r1")
    source = _source(team, fake)
    summary = mlflow_source_sync(source=source)
    assert summary.runs_created == len(fake.runs)  # runs and metrics are imported all the same
    assert [p for p in summary.problems if "artifacts not copied" in p] == [
        "Run r1: artifacts not copied: MLflow server error on artifacts/list "
        "(HTTP 500 Internal Server Error, INTERNAL_ERROR)."
    ]
    copy = ImportedRunArtifacts.objects.get(run__external_id="r1")
    assert copy.done_at is not None and "INTERNAL_ERROR" in copy.error and fake.artifact_downloads == []
    assert ImportedRunArtifacts.objects.filter(done_at__isnull=True).count() == 0
