"""Artifacts through MLflow's artifact proxy API: the real mlflow client against a live mlboard,
on local storage and on a real S3-compatible HTTP server (moto's server mode, not a boto3 mock)."""

from __future__ import annotations

import filecmp
import hashlib
import http.client
import json
import os
import urllib.parse
import uuid
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import boto3
import mlflow
import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from experiments.models import ArtifactFile, Membership, Role, Run
from experiments.services.boards import membership_set
from experiments.services.teams import membership_remove
from experiments.services.tokens import token_authenticate, token_create, token_revoke

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


# --- Storage backends ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 as a real HTTP server on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _s3_storage(endpoint: str) -> dict:
    bucket = f"mlboard-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    ).create_bucket(Bucket=bucket)
    return {
        "BACKEND": "experiments.storage.S3ArtifactStorage",
        "OPTIONS": {
            "bucket_name": bucket,
            "location": "mlboard",
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "access_key": "test",
            "secret_key": "test",
        },
    }


@pytest.fixture(params=["local", "s3"])
def backend(request, settings, tmp_path) -> str:
    if request.param == "local":
        storage = {"BACKEND": "experiments.storage.LocalArtifactStorage", "OPTIONS": {"location": str(tmp_path / "a")}}
    else:
        storage = _s3_storage(request.getfixturevalue("s3_server"))
    settings.STORAGES = {**settings.STORAGES, "artifacts": storage}
    return request.param


@pytest.fixture
def local_root(settings, tmp_path) -> Path:
    root = tmp_path / "artifacts"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {"BACKEND": "experiments.storage.LocalArtifactStorage", "OPTIONS": {"location": str(root)}},
    }
    return root


# --- Client ---------------------------------------------------------------------------------------


@pytest.fixture
def tracking(live_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{live_server.url}/mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(f"{live_server.url}/mlflow")

    def use(secret: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)

    yield use
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.tracking.fluent._active_experiment_id = None


@pytest.fixture
def member_token(member, team) -> str:
    return token_create(user=member, name="laptop", team=team)[1]


@pytest.fixture
def outsider_token(outsider, other_team) -> str:
    return token_create(user=outsider, name="other", team=other_team)[1]


def _code(excinfo: pytest.ExceptionInfo) -> str:
    """The MLflow error code, whichever way the client raised it: the tracking client raises
    MlflowException, the artifact repository requests.HTTPError (as with `mlflow server`)."""
    if isinstance(excinfo.value, MlflowException):
        return excinfo.value.error_code
    return excinfo.value.response.json()["error_code"]


def _message(excinfo: pytest.ExceptionInfo) -> str:
    if isinstance(excinfo.value, MlflowException):
        return excinfo.value.message
    return excinfo.value.response.json()["message"]


FAILS = (MlflowException, requests.HTTPError)


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# --- Round trips ---------------------------------------------------------------------------------


def test_every_artifact_call_round_trips(backend, tracking, member_token, team, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tracking(member_token)
    mlflow.set_experiment("artifacts")
    source = tmp_path / "src"
    (source / "nested" / "deeper").mkdir(parents=True)
    (source / "a.txt").write_text("alpha\n")
    (source / "nested" / "b.bin").write_bytes(os.urandom(300_000))
    (source / "nested" / "deeper" / "c.csv").write_text("x,y\n1,2\n")
    single = tmp_path / "model.pkl"
    single.write_bytes(os.urandom(2_500_000))  # several 1 MB chunks

    with mlflow.start_run() as active:
        run_id = active.info.run_id
        assert (
            active.info.artifact_uri
            == f"mlflow-artifacts:/teams/{team.pk}/{active.info.experiment_id}/{run_id}/artifacts"
        )
        mlflow.log_artifact(str(single))
        mlflow.log_artifact(str(single), artifact_path="models/v1")
        mlflow.log_artifacts(str(source), artifact_path="data")
        mlflow.log_dict({"lr": 0.1, "layers": [1, 2]}, "config.json")
        mlflow.log_dict({"lr": 0.1}, "config.yaml")
        mlflow.log_text("hello, artifacts\n", "notes/readme.txt")
        figure, axis = plt.subplots()
        axis.plot([0, 1], [0, 1])
        mlflow.log_figure(figure, "plots/roc_curve.png")
        plt.close(figure)
        mlflow.log_image(np.full((8, 8, 3), 200, dtype=np.uint8), "plots/confusion_matrix.png")

    client = MlflowClient()
    top = {f.path: f for f in client.list_artifacts(run_id)}
    assert set(top) == {"config.json", "config.yaml", "data", "model.pkl", "models", "notes", "plots"}
    assert top["model.pkl"].file_size == 2_500_000 and not top["model.pkl"].is_dir and top["data"].is_dir
    # Sub-paths through the artifact repository itself: the client's runs:/ listing of a sub-path
    # also looks for logged models of that name (logged-models/search, another endpoint).
    repo = get_artifact_repository(active.info.artifact_uri)
    assert [f.path for f in repo.list_artifacts("data/nested")] == ["data/nested/b.bin", "data/nested/deeper"]
    assert repo.list_artifacts("data/a.txt") == [] and repo.list_artifacts("nothing/here") == []

    out = tmp_path / "out"
    local = Path(client.download_artifacts(run_id, "", str(out)))
    got = _tree(local)
    assert got["model.pkl"] == single.read_bytes() and got["models/v1/model.pkl"] == single.read_bytes()
    assert {k.removeprefix("data/"): v for k, v in got.items() if k.startswith("data/")} == _tree(source)
    assert json.loads(got["config.json"]) == {"lr": 0.1, "layers": [1, 2]}
    assert got["notes/readme.txt"] == b"hello, artifacts\n"
    assert got["plots/roc_curve.png"].startswith(b"\x89PNG") and got["plots/confusion_matrix.png"].startswith(
        b"\x89PNG"
    )
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/readme.txt") == "hello, artifacts\n"

    run = Run.objects.get(external_id=run_id)
    indexed = dict(ArtifactFile.objects.filter(run=run).values_list("path", "size"))
    assert (
        len(indexed) == len(got)
        and indexed[f"teams/{team.pk}/{run.experiment_id}/{run_id}/artifacts/model.pkl"] == 2_500_000
    )

    # Overwrite keeps one file; delete removes a file, then a whole directory.
    single.write_bytes(b"v2")
    mlflow.log_artifact(str(single), run_id=run_id)
    assert Path(client.download_artifacts(run_id, "model.pkl", str(tmp_path / "v2"))).read_bytes() == b"v2"
    repo.delete_artifacts("model.pkl")
    repo.delete_artifacts("data")
    assert {f.path for f in client.list_artifacts(run_id)} == {
        "config.json",
        "config.yaml",
        "models",
        "notes",
        "plots",
    }
    assert not ArtifactFile.objects.filter(run=run, path__contains="/artifacts/data/").exists()
    with pytest.raises(FAILS):
        client.download_artifacts(run_id, "model.pkl", str(tmp_path / "gone"))


def test_log_table_round_trips(backend, tracking, live_server, member_token, tmp_path):
    probe = requests.post(
        f"{live_server.url}/mlflow/api/2.0/mlflow/logged-models/search",
        json={},
        headers=_headers(member_token),
        timeout=30,
    )
    if probe.status_code == 404 and probe.json().get("error_code") == "ENDPOINT_NOT_FOUND":
        pytest.skip("log_table lists artifacts through runs:/, which also searches logged models (not on this branch)")
    tracking(member_token)
    with mlflow.start_run() as active:
        mlflow.log_table({"feature": ["a", "b"], "importance": [0.7, 0.3]}, "tables/importance.json")
        mlflow.log_table({"feature": ["c"], "importance": [0.1]}, "tables/importance.json")  # appends
    table = mlflow.load_table("tables/importance.json", run_ids=[active.info.run_id])
    assert list(table["feature"]) == ["a", "b", "c"]


def test_large_file_through_multipart_upload(backend, tracking, member_token, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(5 * 1024**2))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(10 * 1024**2))  # S3 parts are >= 5 MB
    tracking(member_token)
    big = tmp_path / "weights.bin"
    with big.open("wb") as out:
        for _ in range(52):
            out.write(os.urandom(1024**2))
    with mlflow.start_run() as active:
        mlflow.log_artifact(str(big), artifact_path="ckpt")
    row = ArtifactFile.objects.get(path__endswith="/ckpt/weights.bin")
    assert row.size == 52 * 1024**2 and row.run.external_id == active.info.run_id
    back = MlflowClient().download_artifacts(active.info.run_id, "ckpt/weights.bin", str(tmp_path / "back"))
    assert filecmp.cmp(back, big, shallow=False)


def test_server_info_turns_multipart_on_and_parts_need_their_signed_url(live_server, member_token, team, local_root):
    info = requests.get(f"{live_server.url}/mlflow/api/3.0/mlflow/server-info", timeout=30)
    assert info.status_code == 200 and info.json()["multipart_uploads_enabled"] is True
    base = f"{live_server.url}/mlflow/api/2.0/mlflow-artifacts/mpu"
    prefix = f"teams/{team.pk}/0/r/artifacts"
    created = requests.post(
        f"{base}/create/{prefix}",
        json={"path": "/home/me/blob.bin", "num_parts": 2},
        headers=_headers(member_token),
        timeout=30,
    ).json()
    first, second = created["credentials"]
    assert (first["part_number"], second["part_number"]) == (1, 2)
    forged = first["url"].replace("token=", "token=x")
    refused = requests.put(forged, data=b"x", timeout=30)
    assert refused.status_code == 403 and refused.json()["error_code"] == "PERMISSION_DENIED"
    etags = [
        requests.put(c["url"], data=body, timeout=30).headers["ETag"] for c, body in ((first, b"ab"), (second, b"c"))
    ]
    assert etags[0].strip('"') == hashlib.md5(b"ab").hexdigest()
    parts = [{"part_number": n, "etag": e} for n, e in enumerate(etags, start=1)]
    other_path = requests.post(
        f"{base}/complete/{prefix}/elsewhere",
        json={"path": "blob.bin", "upload_id": created["upload_id"], "parts": parts},
        headers=_headers(member_token),
        timeout=30,
    )
    assert other_path.status_code == 404 and other_path.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    done = requests.post(
        f"{base}/complete/{prefix}",
        json={"path": "blob.bin", "upload_id": created["upload_id"], "parts": parts},
        headers=_headers(member_token),
        timeout=30,
    )
    assert done.status_code == 200, done.text
    assert (local_root / prefix / "blob.bin").read_bytes() == b"abc"
    assert not any((local_root / ".uploads").iterdir())

    aborted = requests.post(
        f"{base}/create/{prefix}", json={"path": "x.bin", "num_parts": 1}, headers=_headers(member_token), timeout=30
    ).json()
    requests.put(aborted["credentials"][0]["url"], data=b"zz", timeout=30)
    gone = requests.post(
        f"{base}/abort/{prefix}",
        json={"path": "x.bin", "upload_id": aborted["upload_id"]},
        headers=_headers(member_token),
        timeout=30,
    )
    assert gone.status_code == 200 and not any((local_root / ".uploads").iterdir())
    late = requests.put(aborted["credentials"][0]["url"], data=b"zz", timeout=30)
    assert late.status_code == 404 and not (local_root / prefix / "x.bin").exists()


# --- Isolation, permissions, limits ---------------------------------------------------------------


def test_another_teams_token_can_never_touch_the_artifacts(
    backend, tracking, live_server, member_token, outsider_token, team, tmp_path
):
    tracking(member_token)
    secret = tmp_path / "secret.txt"
    secret.write_text("team A only")
    with mlflow.start_run() as active:
        mlflow.log_artifact(str(secret))
    uri = active.info.artifact_uri
    base = f"{live_server.url}/mlflow/api/2.0/mlflow-artifacts/artifacts"
    key = urllib.parse.urlparse(uri).path.lstrip("/")

    tracking(outsider_token)
    with pytest.raises(FAILS):
        MlflowClient().get_run(active.info.run_id)  # the run itself is invisible
    repo = get_artifact_repository(uri)
    for attempt in (
        lambda: repo.list_artifacts(),
        lambda: repo.download_artifacts("secret.txt", str(tmp_path / "stolen")),
        lambda: repo.log_artifact(str(secret)),
        lambda: repo.delete_artifacts("secret.txt"),
    ):
        with pytest.raises(FAILS) as denied:
            attempt()
        # A download first asks whether the path is a directory; the denied listing reads as empty.
        assert _code(denied) in ("PERMISSION_DENIED", "RESOURCE_DOES_NOT_EXIST")
    assert not list(tmp_path.glob("stolen/**/secret.txt"))
    for method, url, kwargs in (
        ("GET", f"{base}/{key}/secret.txt", {}),
        ("GET", base, {"params": {"path": key}}),
        ("PUT", f"{base}/{key}/planted.txt", {"data": b"x"}),
        ("DELETE", f"{base}/{key}/secret.txt", {}),
        ("POST", f"{base.replace('/artifacts', '/mpu/create')}/{key}", {"json": {"path": "p.bin", "num_parts": 1}}),
    ):
        answer = requests.request(method, url, headers=_headers(outsider_token), timeout=30, **kwargs)
        assert answer.status_code == 403 and answer.json()["error_code"] == "PERMISSION_DENIED", (method, url)
    # The outsider's own view of the tree holds only its own team.
    root = requests.get(base, params={"path": "teams"}, headers=_headers(outsider_token), timeout=30).json()
    assert root["files"] != [] and str(team.pk) not in {f["path"] for f in root["files"]}
    tracking(member_token)
    assert (
        Path(MlflowClient().download_artifacts(active.info.run_id, "secret.txt", str(tmp_path / "ok"))).read_text()
        == "team A only"
    )


def test_viewer_reads_but_never_writes(tracking, live_server, member_token, viewer, team, local_root, tmp_path):
    tracking(member_token)
    file = tmp_path / "f.txt"
    file.write_text("x")
    with mlflow.start_run() as active:
        mlflow.log_artifact(str(file))
    viewer_token = token_create(user=viewer, name="v", team=team)[1]
    tracking(viewer_token)
    repo = get_artifact_repository(active.info.artifact_uri)
    assert [f.path for f in repo.list_artifacts()] == ["f.txt"]
    with pytest.raises(FAILS) as denied:
        repo.log_artifact(str(file), "copy")
    assert _code(denied) == "PERMISSION_DENIED"
    with pytest.raises(FAILS):
        repo.delete_artifacts("f.txt")
    assert (local_root / urllib.parse.urlparse(active.info.artifact_uri).path.lstrip("/") / "f.txt").exists()


def test_size_limit_refuses_with_a_clear_error_and_stores_nothing(
    backend, tracking, settings, member_token, monkeypatch, tmp_path
):
    settings.ARTIFACT_MAX_FILE_SIZE = 1024**2
    tracking(member_token)
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"s" * 1000)
    big.write_bytes(b"b" * (2 * 1024**2))
    with mlflow.start_run() as active:
        mlflow.log_artifact(str(small))
        with pytest.raises(FAILS) as refused:
            mlflow.log_artifact(str(big))
        assert _code(refused) == "INVALID_PARAMETER_VALUE"
        assert "Artifact too large" in _message(refused) and "ARTIFACT_MAX_FILE_SIZE" in _message(refused)
        # Through multipart the parts each fit, the whole does not: refused at completion.
        monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
        monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", "1")
        monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(1024**2))
        settings.ARTIFACT_MAX_FILE_SIZE = 2 * 1024**2 - 1
        if backend == "local":  # S3 refuses parts under 5 MB, so this check runs on local storage
            with pytest.raises(FAILS, match="Artifact too large"):
                mlflow.log_artifact(str(big), artifact_path="mpu")
    assert [f.path for f in MlflowClient().list_artifacts(active.info.run_id)] == ["small.bin"]
    assert ArtifactFile.objects.count() == 1


# --- Path traversal: MLflow's CVE history, one test each ------------------------------------------


def _raw(live_server, method: str, path: str, token: str, body: bytes | None = None) -> tuple[int, dict]:
    """Send the path exactly as written (requests/urllib3 would normalise dot segments)."""
    parsed = urllib.parse.urlparse(live_server.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    headers = _headers(token)
    if body is not None:
        headers["Content-Length"] = str(len(body))
    connection.request(method, f"/mlflow/api/2.0/mlflow-artifacts/{path}", body=body, headers=headers)
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    assert response.getheader("Content-Type") == "application/json", raw[:200]
    return response.status, json.loads(raw)


def _team_key(team) -> str:
    return f"teams/{team.pk}/0/run/artifacts"


TRAVERSALS = [
    # (CVE, method, path under mlflow-artifacts/, with {key} = a valid team-scoped prefix)
    ("CVE-2023-1177 plain ../ in the artifact path", "GET", "artifacts/{key}/../../../../../etc/passwd"),
    ("CVE-2023-2356 ../ in the list path", "GET", "artifacts?path={key}/../../../../etc"),
    ("CVE-2023-2780 backslash traversal", "GET", "artifacts/{key}/..\\..\\..\\..\\etc\\passwd"),
    ("CVE-2023-6015 upload writing outside the root", "PUT", "artifacts/{key}/../../../../tmp/pwned.txt"),
    ("CVE-2023-6831 URL-encoded ..%2f on delete", "DELETE", "artifacts/{key}/..%2f..%2f..%2f..%2fvictim"),
    (
        "CVE-2024-1560 double-encoded %252e%252e%252f on delete",
        "DELETE",
        "artifacts/{key}/%252e%252e%252f%252e%252e%252fvictim",
    ),
    ("CVE-2023-6909 '#' fragment traversal", "GET", "artifacts/{key}/x%23/../../../../etc/passwd"),
    ("CVE-2024-3573 absolute path", "GET", "artifacts//etc/passwd"),
    ("CVE-2024-3573 file: URI", "GET", "artifacts?path=file:///etc/passwd"),
    ("Windows drive letter", "GET", "artifacts/C:/Windows/win.ini"),
    ("NUL byte", "GET", "artifacts/{key}/a%00.txt"),
    ("CVE-2023-6976 multipart create traversal", "POST", "mpu/create/{key}/../../../../tmp"),
]


@pytest.mark.parametrize(
    ("cve", "method", "template"), TRAVERSALS, ids=[t[0].split()[0] + "-" + str(i) for i, t in enumerate(TRAVERSALS)]
)
def test_path_traversal_is_refused(cve, method, template, live_server, member_token, team, local_root):
    body = (
        json.dumps({"path": "x.bin", "num_parts": 1}).encode()
        if method == "POST"
        else (b"x" if method == "PUT" else None)
    )
    status, error = _raw(live_server, method, template.format(key=_team_key(team)), member_token, body)
    assert (status, error["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), (cve, error)
    assert error["message"].startswith("Invalid path")
    assert not list(local_root.rglob("pwned.txt")) and not Path("/tmp/pwned.txt").exists()


def test_whole_team_or_experiment_cannot_be_deleted_or_overwritten(live_server, member_token, team, local_root):
    (local_root / _team_key(team)).mkdir(parents=True)
    (local_root / _team_key(team) / "keep.txt").write_text("x")
    for method, path in (
        ("DELETE", f"artifacts/teams/{team.pk}"),
        ("DELETE", f"artifacts/teams/{team.pk}/0"),
        ("PUT", f"artifacts/teams/{team.pk}"),
    ):
        status, error = _raw(live_server, method, path, member_token, b"x" if method == "PUT" else None)
        assert (status, error["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), (method, path)
    assert (local_root / _team_key(team) / "keep.txt").exists()


def test_multipart_file_name_from_the_client_is_checked_too(live_server, member_token, team, local_root):
    body = json.dumps({"path": "..", "num_parts": 1}).encode()
    status, error = _raw(live_server, "POST", f"mpu/create/{_team_key(team)}", member_token, body)
    assert (status, error["error_code"]) == (400, "INVALID_PARAMETER_VALUE")


def test_symlink_out_of_the_team_directory_is_refused(live_server, member_token, team, other_team, local_root):
    """A link planted inside team A's space (pointing at team B's) is never followed."""
    victim = local_root / "teams" / str(other_team.pk) / "0" / "r" / "artifacts"
    victim.mkdir(parents=True)
    (victim / "secret.txt").write_text("team B")
    mine = local_root / _team_key(team)
    mine.mkdir(parents=True)
    (mine / "link").symlink_to(victim, target_is_directory=True)
    (mine / "file-link").symlink_to(victim / "secret.txt")
    for method, path, body in (
        ("GET", f"artifacts/{_team_key(team)}/link/secret.txt", None),
        ("GET", f"artifacts/{_team_key(team)}/file-link", None),
        ("PUT", f"artifacts/{_team_key(team)}/link/planted.txt", b"x"),
    ):
        status, error = _raw(live_server, method, path, member_token, body)
        assert (status, error["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), (path, error)
    assert not (victim / "planted.txt").exists()


@pytest.mark.parametrize(
    ("cve", "location"),
    [
        ("CVE-2024-1483 ../ out of the team's space", "mlflow-artifacts:/teams/{team}/../{other}"),
        ("CVE-2024-1594 '#' fragment", "mlflow-artifacts:/teams/{team}/x#/../../"),
        ("CVE-2024-2928 fragment with traversal", "http://host/api/2.0/mlflow-artifacts/artifacts/#/../../../etc"),
    ],
)
def test_experiment_artifact_location_traversal_is_refused(cve, location, live_server, member_token, team, other_team):
    answer = requests.post(
        f"{live_server.url}/mlflow/api/2.0/mlflow/experiments/create",
        json={
            "name": f"evil-{uuid.uuid4().hex[:6]}",
            "artifact_location": location.format(team=team.pk, other=other_team.pk),
        },
        headers=_headers(member_token),
        timeout=30,
    )
    assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER_VALUE", cve


def test_experiment_location_in_another_teams_space_is_refused(live_server, member_token, other_team):
    answer = requests.post(
        f"{live_server.url}/mlflow/api/2.0/mlflow/experiments/create",
        json={"name": "squat", "artifact_location": f"mlflow-artifacts:/teams/{other_team.pk}/1"},
        headers=_headers(member_token),
        timeout=30,
    )
    assert answer.status_code == 403 and answer.json()["error_code"] == "PERMISSION_DENIED"


def test_errors_are_json_never_html(live_server, member_token, team, local_root):
    base = f"{live_server.url}/mlflow/api/2.0/mlflow-artifacts"
    for method, url in (
        ("GET", f"{base}/artifacts/{_team_key(team)}/missing.txt"),
        ("POST", f"{base}/artifacts/{_team_key(team)}/x"),
        ("GET", f"{base}/presigned/{_team_key(team)}/x"),
        ("GET", f"{base}/artifacts/{_team_key(team)}"),
    ):
        answer = requests.request(method, url, headers=_headers(member_token), timeout=30)
        assert answer.headers["Content-Type"] == "application/json" and "error_code" in answer.json(), url
    no_token = requests.get(f"{base}/artifacts", params={"path": "teams"}, timeout=30)
    assert no_token.status_code == 401 and no_token.json()["error_code"] == "UNAUTHENTICATED"


def test_experiments_and_runs_report_team_scoped_artifact_uris(tracking, member_token, team):
    tracking(member_token)
    experiment_id = mlflow.create_experiment("located")
    experiment = MlflowClient().get_experiment(experiment_id)
    assert experiment.artifact_location == f"mlflow-artifacts:/teams/{team.pk}/{experiment_id}"
    custom = mlflow.create_experiment("custom", artifact_location="s3://our-bucket/somewhere")
    run = MlflowClient().create_run(custom)
    assert run.info.artifact_uri == f"s3://our-bucket/somewhere/{run.info.run_id}/artifacts"
    assert MlflowClient().get_run(run.info.run_id).info.artifact_uri == run.info.artifact_uri


def test_membership_role_change_applies_at_once(
    tracking, live_server, member, member_token, team, local_root, tmp_path
):
    """Write permission is checked per request (no cached role)."""
    tracking(member_token)
    file = tmp_path / "f.txt"
    file.write_text("x")
    with mlflow.start_run():
        mlflow.log_artifact(str(file))
        membership_set(team=team, user=member, role=Role.VIEWER)
        with pytest.raises(FAILS) as denied:
            mlflow.log_artifact(str(file), "again")
        assert _code(denied) == "PERMISSION_DENIED"
        membership_set(team=team, user=member, role=Role.MEMBER)
        mlflow.log_artifact(str(file), "again")


# --- Run and model-version artifacts by id (MLflow's artifacts/list and its UI download routes) ---


def test_artifacts_list_and_get_artifact_by_run_id(tracking, live_server, member_token, team, local_root, tmp_path):
    tracking(member_token)
    client = MlflowClient()
    experiment_id = client.create_experiment("by-id")
    run_id = client.create_run(experiment_id).info.run_id
    src = tmp_path / "src"
    src.mkdir()
    (src / "my.file").write_text("Hello, World!")
    client.log_artifact(run_id, str(src / "my.file"))
    client.log_artifacts(run_id, str(src), "dir")
    base, headers = f"{live_server.url}/mlflow", _headers(member_token)

    root = requests.get(f"{base}/api/2.0/mlflow/artifacts/list", params={"run_id": run_id}, headers=headers, timeout=30)
    assert root.status_code == 200
    assert root.json()["root_uri"] == client.get_run(run_id).info.artifact_uri
    assert {(f["path"], f["is_dir"]) for f in root.json()["files"]} == {("my.file", False), ("dir", True)}
    inner = requests.get(
        f"{base}/api/2.0/mlflow/artifacts/list", params={"run_id": run_id, "path": "dir"}, headers=headers, timeout=30
    ).json()["files"]
    assert inner == [{"path": "dir/my.file", "is_dir": False, "file_size": 13}]
    got = requests.get(f"{base}/get-artifact", params={"run_id": run_id, "path": "dir/my.file"}, headers=headers,
                       timeout=30)
    assert (got.status_code, got.content) == (200, b"Hello, World!")

    # Unsafe paths: exactly MLflow's error, whole message, on all three routes.
    for url, params in (
        (f"{base}/api/2.0/mlflow/artifacts/list", {"run_id": run_id, "path": "../path"}),
        (f"{base}/get-artifact", {"run_id": run_id, "path": "../path"}),
        (f"{base}//model-versions/get-artifact", {"name": "model", "version": 1, "path": "../path"}),
    ):
        response = requests.get(url, params=params, headers=headers, timeout=30)
        assert (response.status_code, response.json()) == (
            400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid path"}
        ), url


def test_model_version_get_artifact_reads_the_versions_files(tracking, live_server, member_token, team, local_root,
                                                             tmp_path):
    tracking(member_token)
    client = MlflowClient()
    experiment_id = client.create_experiment("mv-files")
    run_id = client.create_run(experiment_id).info.run_id
    (tmp_path / "MLmodel").write_text("flavors: {}")
    client.log_artifact(run_id, str(tmp_path / "MLmodel"), "model")
    client.create_registered_model("m")
    client.create_model_version("m", f"{client.get_run(run_id).info.artifact_uri}/model", run_id=run_id)
    got = requests.get(f"{live_server.url}/mlflow/model-versions/get-artifact",
                       params={"name": "m", "version": 1, "path": "MLmodel"}, headers=_headers(member_token),
                       timeout=30)
    assert (got.status_code, got.content) == (200, b"flavors: {}")


# --- Per-request cost -----------------------------------------------------------------------------


ARTIFACTS_API = "/mlflow/api/2.0/mlflow-artifacts/artifacts"


@pytest.mark.parametrize("size", [1024, 2 * 1024**2 + 7])  # one chunk, three chunks
def test_upload_query_count_is_constant(client, member_token, team, local_root, django_assert_num_queries, size):
    """A PUT costs the token (with the caller's role, same query) and the index upsert, whatever the
    file size; the next PUTs of the same token within seconds only the upsert, which re-checks the
    token itself. Small files are dominated by this per-request work."""
    headers = {"HTTP_AUTHORIZATION": f"Bearer {member_token}"}
    token_authenticate(secret=member_token)  # last-used is fresh: no per-minute update in the count
    for queries, name in ((2, "first.bin"), (1, "second.bin"), (1, "third.bin")):
        key = f"teams/{team.pk}/0/r/artifacts/{name}"
        body = os.urandom(size)
        with django_assert_num_queries(queries):
            response = client.put(f"{ARTIFACTS_API}/{key}", body, content_type="application/octet-stream", **headers)
        assert response.status_code == 200, response.content
        assert (local_root / key).read_bytes() == body
        assert ArtifactFile.objects.get(path=key).size == size


def test_revocation_and_leaving_the_team_apply_to_the_next_upload(client, member, member_token, team, local_root):
    """Nothing about the token or the membership is cached between requests."""
    url = f"{ARTIFACTS_API}/teams/{team.pk}/0/r/artifacts/a.txt"
    headers = {"HTTP_AUTHORIZATION": f"Bearer {member_token}"}
    assert client.put(url, b"1", content_type="text/plain", **headers).status_code == 200
    membership_remove(membership=Membership.objects.get(team=team, user=member))
    left = client.put(url, b"2", content_type="text/plain", **headers)
    assert left.status_code == 403 and "no longer a member" in left.json()["message"]
    membership_set(team=team, user=member, role=Role.MEMBER)
    assert client.put(url, b"3", content_type="text/plain", **headers).status_code == 200
    membership_set(team=team, user=member, role=Role.VIEWER)
    demoted = client.put(url, b"4", content_type="text/plain", **headers)
    assert demoted.status_code == 403 and demoted.json()["error_code"] == "PERMISSION_DENIED"
    membership_set(team=team, user=member, role=Role.MEMBER)
    assert client.put(url, b"5", content_type="text/plain", **headers).status_code == 200
    token_revoke(token=token_authenticate(secret=member_token))
    revoked = client.put(url, b"6", content_type="text/plain", **headers)
    assert revoked.status_code == 401 and revoked.json()["error_code"] == "UNAUTHENTICATED"
    assert (local_root / f"teams/{team.pk}/0/r/artifacts/a.txt").read_text() == "5"
    assert ArtifactFile.objects.get(path=f"teams/{team.pk}/0/r/artifacts/a.txt").size == 1


def test_upload_refused_when_it_lands_stores_nothing(client, member, member_token, team, local_root, monkeypatch):
    """The permission that counts is the one when the file becomes visible: a token revoked while
    its bytes were arriving stores nothing, even with its caller from a request seconds ago."""
    url = f"{ARTIFACTS_API}/teams/{team.pk}/0/r/artifacts/b.bin"
    headers = {"HTTP_AUTHORIZATION": f"Bearer {member_token}"}
    assert client.put(url, b"old", content_type="application/octet-stream", **headers).status_code == 200
    from experiments.mlflow_api import artifacts as handlers

    body_chunks = handlers._body_chunks

    def revoked_midway(request):
        yield from body_chunks(request)
        token_revoke(token=token_authenticate(secret=member_token))

    monkeypatch.setattr(handlers, "_body_chunks", revoked_midway)
    refused = client.put(url, b"new", content_type="application/octet-stream", **headers)
    assert refused.status_code == 401 and refused.json()["error_code"] == "UNAUTHENTICATED"
    assert (local_root / f"teams/{team.pk}/0/r/artifacts/b.bin").read_bytes() == b"old"
    assert not [p for p in (local_root / ".uploads").iterdir() if p.is_file()]
