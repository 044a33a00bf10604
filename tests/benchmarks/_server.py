"""Shared parts of the server benchmarks (load.py, pg_restart.py, artifacts.py, mlflow_ingest.py): a
private PostgreSQL cluster, a seeded database, gunicorn on loopback, a logged-in client, a process-group
server. Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PrivatePostgres:
    """A throw-away cluster (initdb into /tmp), never the machine's shared server, so it can be restarted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="mlboard-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                                     "--no-sync"]), check=True, capture_output=True)
        self.url = f"postgres://postgres@127.0.0.1:{port}/mlboard"

    def ctl(self, *args: str) -> float:
        started = time.monotonic()
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-w",
                                     "-l", str(self.dir / "log"), *args]), check=True, capture_output=True)
        return time.monotonic() - started

    def start(self) -> None:
        self.ctl("start")
        subprocess.run(_as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                                     "postgres", "mlboard"]), check=True, capture_output=True)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.ctl("stop", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


SEED = """
import json, django; django.setup()
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
from experiments.demo import demo_seed
from experiments.models import Board, User
from experiments.services.tokens import token_create
team = demo_seed()
alice = User.objects.get(username="alice")
_token, secret = token_create(user=alice, name="bench", team=team)
board = Board.objects.filter(team=team).order_by("pk").first()
print(json.dumps({"token": secret, "board": board.pk, "team": team.slug}))
"""


def env_for(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL"}}
    env.update({"DATABASE_URL": database_url, "DEBUG": "1", "LOG_LEVEL": "WARNING",
                "DJANGO_SETTINGS_MODULE": "mlboard.settings", "CELERY_TASK_ALWAYS_EAGER": "1",
                "PYTHONWARNINGS": "ignore:No directory at", **extra})
    return env


def seed(database_url: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SEED], cwd=ROOT, env=env_for(database_url), check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def gunicorn(database_url: str, *, workers: int, threads: int = 1, **env: str) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "mlboard.wsgi:application", "--bind", f"127.0.0.1:{port}",
           "--workers", str(workers), "--threads", str(threads), "--timeout", "60", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env_for(database_url, **env), start_new_session=True)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def login(base: str, username: str = "alice", password: str = "demo") -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.get(f"{base}/accounts/login/", timeout=30)
    response = session.post(f"{base}/accounts/login/", timeout=30, allow_redirects=False, data={
        "username": username, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"],
    }, headers={"Referer": f"{base}/accounts/login/"})
    if response.status_code != 302:
        raise RuntimeError(f"login failed: HTTP {response.status_code}")
    return session


def wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    """Poll `url` until the server answers; fail early if its process exits."""
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before answering {url}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.3)
    raise RuntimeError(f"server did not answer {url} within {seconds}s")


@contextlib.contextmanager
def process_server(
    *, cmd: list[str], env: dict[str, str], cwd: Path, probe: str, log: Path, settle: float = 0.0
) -> Iterator[subprocess.Popen]:
    """Run `cmd` in its own process group until the block ends; `settle` waits after the first answer
    (for instance until every worker has booted, before memory baselines)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(probe, proc)
        time.sleep(settle)
        yield proc
    finally:
        # Only the process group this script started.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
