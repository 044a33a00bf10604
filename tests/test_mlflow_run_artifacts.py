"""A run's artifacts through MLflow's run-scoped tracking API (`artifacts/list?run_id=`, `get-artifact`),
which `mlflow server` answers for every run whatever its store; and the import of runs whose client
wrote to a store the source server does not proxy, from a real `mlflow server`."""

from __future__ import annotations

import socket
import subprocess
import textwrap
import time

import pytest
import requests

from experiments.models import ArtifactFile, ImportedRunArtifacts, Run, RunStatus
from experiments.services.artifacts import artifact_upload, run_artifact_root
from experiments.services.mlflow_import import mlflow_source_sync, mlflow_source_upsert
from experiments.services.runs import run_create, tracking_experiment_get_or_create
from experiments.services.tokens import token_create
from experiments.storage import artifact_storage
from tests.client_venv import ensure_venv, run_script

LIST = "/mlflow/api/2.0/mlflow/artifacts/list"
GET = "/mlflow/get-artifact"


@pytest.fixture
def local_store(settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "artifacts": {
        "BACKEND": "experiments.storage.LocalArtifactStorage", "OPTIONS": {"location": str(tmp_path / "store")}}}


def _upload(run: Run, relative: str, content: bytes) -> None:
    artifact_upload(team=run.team, key=f"{run_artifact_root(run)}/{relative}", chunks=iter([content]),
                    length=len(content))


@pytest.fixture
def logged(db, team, member, local_store):
    experiment = tracking_experiment_get_or_create(team=team, name="cv")
    run = run_create(team=team, user=member, experiment=experiment, name="r", status=RunStatus.FINISHED)
    _upload(run, "model/weights.bin", b"\x00\x01" * 1000)
    _upload(run, "model/MLmodel", b"flavors: {}\n")
    _upload(run, "roc.png", b"\x89PNG")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=member, name='t', team=team)[1]}"}
    return run, headers


def test_list_names_children_by_run_relative_path(client, logged):
    run, headers = logged
    top = client.get(LIST, {"run_id": run.external_id}, **headers).json()
    assert top["root_uri"] == f"mlflow-artifacts:/{run_artifact_root(run)}"
    assert top["files"] == [{"path": "model", "is_dir": True}, {"path": "roc.png", "is_dir": False, "file_size": 4}]
    inner = client.get(LIST, {"run_id": run.external_id, "path": "model"}, **headers).json()
    assert inner["files"] == [
        {"path": "model/MLmodel", "is_dir": False, "file_size": 12},
        {"path": "model/weights.bin", "is_dir": False, "file_size": 2000},
    ]
    # A file, or nothing there, lists nothing (as MLflow's local repository does).
    assert client.get(LIST, {"run_id": run.external_id, "path": "roc.png"}, **headers).json()["files"] == []
    # The web UI's ajax-api route answers the same.
    ajax = client.get(LIST.replace("/api/", "/ajax-api/"), {"run_id": run.external_id}, **headers).json()
    assert ajax == top


def test_get_artifact_streams_the_file(client, logged):
    run, headers = logged
    response = client.get(GET, {"run_id": run.external_id, "path": "model/weights.bin"}, **headers)
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"\x00\x01" * 1000
    assert response["X-Content-Type-Options"] == "nosniff"
    # run_uuid, as MLflow's UI sends it
    assert client.get(GET, {"run_uuid": run.external_id, "path": "roc.png"}, **headers).status_code == 200


@pytest.mark.parametrize("path", ["../../../etc/passwd", "%2e%2e/%2e%2e/x", "model/../../x", "/etc/passwd"])
def test_traversal_is_refused(client, logged, path):
    run, headers = logged
    for url in (LIST, GET):
        response = client.get(url, {"run_id": run.external_id, "path": path}, **headers)
        assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE", url


def test_another_teams_run_is_not_found_and_bad_requests_are_mlflow_errors(client, logged, outsider, other_team):
    run, _ = logged
    theirs = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=outsider, name='o', team=other_team)[1]}"}
    for url in (LIST, GET):
        response = client.get(url, {"run_id": run.external_id, "path": "roc.png"}, **theirs)
        assert response.status_code == 404 and response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        missing = client.get(url, {"path": "roc.png"}, **theirs)
        assert missing.status_code == 400 and missing.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert client.get(url, {"run_id": run.external_id}).status_code == 401
    _, headers = logged
    absent = client.get(GET, {"run_id": run.external_id, "path": "nope.txt"}, **headers)
    assert absent.status_code == 404 and absent.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    directory = client.get(GET, {"run_id": run.external_id, "path": "model"}, **headers)
    assert directory.status_code == 400 and directory.json()["error_code"] == "INVALID_PARAMETER_VALUE"


# --- Import from a real mlflow server whose artifacts are not proxied ---------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server --no-serve-artifacts` with a file:// store: clients write artifacts there themselves."""
    python = ensure_venv("mlflow-full")
    port = _free_port()
    store = tmp_path / "mlflow-artifacts"
    process = subprocess.Popen(
        [str(python), "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--default-artifact-root", store.as_uri(),
         "--no-serve-artifacts"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"MLFLOW_DISABLE_TELEMETRY": "true",
                                                                   "DO_NOT_TRACK": "true", "PATH": "/usr/bin:/bin"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow server did not start")
    yield python, url
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.live
def test_import_copies_artifacts_of_a_server_that_does_not_proxy_them(team, local_store, mlflow_server, tmp_path):
    python, url = mlflow_server
    out = run_script(python, textwrap.dedent("""
        import os, tempfile, mlflow
        mlflow.set_experiment("legacy")
        with mlflow.start_run() as run:
            mlflow.log_metric("auc", 0.81)
            mlflow.log_text("lr=0.1\\n", "notes/params.txt")
            blob = os.urandom(3 * 1024 * 1024)
            local = os.path.join(tempfile.mkdtemp(), "weights.bin")
            open(local, "wb").write(blob)
            mlflow.log_artifact(local, "model")
        print("RUN", run.info.run_id)
        print("URI", run.info.artifact_uri)
    """), env={"MLFLOW_TRACKING_URI": url, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"},
        timeout=300)
    assert out.returncode == 0, out.stdout
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("RUN ", "URI ")))
    run_id, uri = lines["RUN"], lines["URI"]
    assert uri.startswith("file://")  # written by the client itself, not through the server
    local_copy = uri[len("file://"):]

    source = mlflow_source_upsert(team=team, name="legacy", tracking_uri=url, experiment_names=["legacy"])
    summary = mlflow_source_sync(source=source)
    assert summary.problems == [] and summary.runs_created == 1

    run = Run.objects.get(team=team, external_id=run_id)
    root = run_artifact_root(run)
    assert run.artifact_uri == f"mlflow-artifacts:/{root}"
    stored = dict(ArtifactFile.objects.filter(run=run).values_list("path", "size"))
    assert stored == {f"{root}/notes/params.txt": 7, f"{root}/model/weights.bin": 3 * 1024 * 1024}
    for relative in ("notes/params.txt", "model/weights.bin"):
        with artifact_storage().open_stream(f"{root}/{relative}") as handle:
            assert handle.read() == open(f"{local_copy}/{relative}", "rb").read(), relative
    copy = ImportedRunArtifacts.objects.get(run=run)
    assert copy.remote_root == "" and copy.files == 2 and copy.error == ""
    # Again: nothing new, nothing fetched twice.
    again = mlflow_source_sync(source=source)
    assert again.problems == [] and again.runs_created == 0
    assert ArtifactFile.objects.filter(run=run).count() == 2
