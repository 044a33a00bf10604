"""pytest plugin for tests/compat/mlflow_rest_suite.py; runs inside the full-mlflow venv, never in CI.

It replaces the `mlflow_client` fixture of MLflow's own tests/tracking/test_rest_tracking.py so that
every test talks over HTTP to a live server, and keeps only the tests that fit that (see SELECTION).

    MLBOARD_COMPAT_TARGET=mlflow   one `mlflow server --serve-artifacts` (MLFLOW_BIN) on SQLite; before
                                   each test its store and artifact directory are emptied
    MLBOARD_COMPAT_TARGET=mlboard  the live mlboard at MLBOARD_COMPAT_URL; each test gets its own team
                                   (an empty tracking store as the client sees it) through the next
                                   token of the JSON list in MLBOARD_COMPAT_TOKENS
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

TARGET = os.environ.get("MLBOARD_COMPAT_TARGET", "mlflow")

# SELECTION: a test is kept when
#  1. its only fixture is `mlflow_client` (parametrize values aside): no tmp_path/monkeypatch/db_uri/
#     store_type/cli_env, which reach into the server's process or file system;
#  2. it is not marked xfail upstream;
#  3. its body does not use `ajax-api` (UI-internal routes), GraphQL, or mock.patch of server code;
#  4. its name is not of the GenAI/tracing areas, which mlboard answers NOT_IMPLEMENTED by design.
OUT_OF_SCOPE_NAMES = re.compile(
    r"trace|span|otel|assessment|promptlab|gateway|evaluation_dataset|dataset_to_experiments"
    r"|experiments_rest_tracking|scorer|secret|endpoint|issue"
)
OUT_OF_SCOPE_BODY = ("ajax-api", "graphql", "mock.patch", "monkeypatch")


def _selected(item: pytest.Item) -> bool:
    function = getattr(item, "function", None)
    if function is None or item.get_closest_marker("xfail"):
        return False
    parametrized = {
        name.strip()
        for mark in item.iter_markers("parametrize")
        for name in (mark.args[0].split(",") if isinstance(mark.args[0], str) else mark.args[0])
    }
    if set(inspect.signature(function).parameters) - parametrized != {"mlflow_client"}:
        return False
    source = inspect.getsource(function)
    return not OUT_OF_SCOPE_NAMES.search(item.name) and not any(s in source for s in OUT_OF_SCOPE_BODY)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept = [item for item in items if _selected(item)]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Migrating an empty SQLite store takes seconds; do it once and copy the file per test.
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "unused")).engine.dispose()
    return path


@pytest.fixture(scope="session")
def _mlflow_server(_template_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    # One real `mlflow server` process for the session (starting one takes a minute on a loaded machine);
    # each test gets an empty store from `_fresh_store`.
    work = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy2(_template_db, work / "mlflow.db")
    port = _free_port()
    command = [
        os.environ.get("MLFLOW_BIN", "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(work / "artifacts"),
    ]
    with open(work / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, work
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _fresh_store(template: Path, work: Path) -> None:
    """Empties the live server's store: the migrated template is copied into its database through SQLite's
    backup API (safe while the server holds connections), and its artifact directory is emptied."""
    with sqlite3.connect(template) as source, sqlite3.connect(work / "mlflow.db") as target:
        source.backup(target)
    shutil.rmtree(work / "artifacts", ignore_errors=True)
    (work / "artifacts").mkdir()


_tokens: list[str] = []


@pytest.fixture
def mlflow_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    from mlflow import MlflowClient

    if TARGET == "mlflow":
        url, work = request.getfixturevalue("_mlflow_server")
        _fresh_store(request.getfixturevalue("_template_db"), work)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield MlflowClient(url)
        return

    base = os.environ["MLBOARD_COMPAT_URL"].rstrip("/")
    if not _tokens:
        _tokens.extend(reversed(json.loads(Path(os.environ["MLBOARD_COMPAT_TOKENS"]).read_text())))
    token = _tokens.pop()  # one team per test: every test starts from an empty store, as upstream's
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
    original = requests.Session.request

    def with_token(self, method, url, **kwargs):
        # The tests' direct `requests` calls carry no credentials: mlflow server needs none, mlboard does.
        headers = dict(kwargs.pop("headers", None) or {})
        if str(url).startswith(base) and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"Bearer {token}"
        return original(self, method, url, headers=headers, **kwargs)

    monkeypatch.setattr(requests.Session, "request", with_token)
    yield MlflowClient(base)
