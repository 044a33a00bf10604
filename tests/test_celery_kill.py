"""kill -9 of a real Celery worker on Redis mid-task: the task runs again and completes exactly once.

The task is the standup digest; its webhook receiver (a loopback HTTP server) holds the first POST open,
so the worker is killed while sending. Needs REDIS_URL and PostgreSQL (the worker is another process
and must see the test database)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from experiments.models import DigestDelivery, StandupDigest
from experiments.services.boards import board_create, team_create

pytestmark = [
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs a Redis broker (REDIS_URL)"),
    pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                       reason="the worker process needs a shared database (PostgreSQL)"),
    pytest.mark.django_db(transaction=True),
]

ROOT = Path(__file__).resolve().parent.parent


class HoldingHook:
    """Webhook receiver: records every POST with its Idempotency-Key; holds the first one unanswered
    until released (the worker dies meanwhile), answers the rest with 200."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        self.first_arrived = threading.Event()
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                hook.posts.append((self.headers.get("Idempotency-Key", ""), body))
                if len(hook.posts) == 1:
                    hook.first_arrived.set()
                    hook.release.wait(60)
                try:
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender is gone

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda *args: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _database_url() -> str:
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class Workers:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.queue = f"kill-{uuid.uuid4().hex[:8]}"
        self.mail = tmp_path / "mail"
        self.mail.mkdir()
        self.procs: list[subprocess.Popen] = []

    def start(self, *, pool: str, visibility: int, time_limit: int, **extra: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "DB_CONN_MAX_AGE": "0",
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "CELERY_VISIBILITY_TIMEOUT": str(visibility),
            "CELERY_TASK_TIME_LIMIT": str(time_limit),
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(self.mail),
            "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
            **extra,
        }
        name = f"{self.queue}-{len(self.procs)}@%h"
        with open(self.tmp / f"worker-{len(self.procs)}.log", "w") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "mlboard", "worker", "-P", pool, "-c", "1", "-Q", self.queue,
                 "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "INFO", "-n", name],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def children(self, proc: subprocess.Popen) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == proc.pid:
                found.append(int(stat.parent.name))
        return found

    def log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("worker-*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def workers(tmp_path):
    pool = Workers(tmp_path)
    yield pool
    pool.stop()


@pytest.fixture
def hook():
    receiver = HoldingHook()
    yield receiver
    receiver.close()


@pytest.fixture
def broker():
    from mlboard.celery import app

    app.conf.task_always_eager = False
    yield app
    app.conf.task_always_eager = True


def _team(hook: HoldingHook):
    team = team_create(name="Nightly", slug="nightly")
    board_create(team=team, name="B", key="NGT")
    team.webhook_url = hook.url
    team.digest_emails = "lead@example.com"
    team.save()
    return team


def _wait(predicate, timeout: float, what: str, workers: Workers) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout:g}s\n--- worker log ---\n{workers.log()[-4000:]}")


def _sent(team) -> bool:
    return DigestDelivery.objects.filter(digest__team=team, channel="webhook", sent_at__isnull=False).exists()


def _check_exactly_once(team, hook: HoldingHook, workers: Workers) -> None:
    digest = StandupDigest.objects.get(team=team)
    webhook = DigestDelivery.objects.get(digest=digest, channel="webhook")
    email = DigestDelivery.objects.get(digest=digest, channel="email")
    keys = [key for key, _body in hook.posts]
    # Sent again after the crash (the first POST was never confirmed), always with the same key, so the
    # receiver can tell the repeat; recorded sent exactly once, and the email (sent before) not repeated.
    assert keys == [str(webhook.key)] * 2, keys
    assert webhook.sent_at is not None and webhook.attempts == 2
    assert email.sent_at is not None and email.attempts == 1
    assert len(list(workers.mail.iterdir())) == 1
    assert digest.webhook_sent_at is not None and digest.webhook_error == ""


def test_kill_pool_child_mid_task_redelivers_once(broker, workers, hook):
    from experiments.tasks import build_standup_digest

    team = _team(hook)
    main = workers.start(pool="prefork", visibility=60, time_limit=30)
    end = timezone.now().replace(microsecond=0).isoformat()
    build_standup_digest.apply_async((team.pk, end), queue=workers.queue)
    _wait(hook.first_arrived.is_set, 90, "the worker never posted the digest", workers)
    (child,) = workers.children(main)
    os.kill(child, signal.SIGKILL)  # mid-send: the POST is out, its answer not yet read
    hook.release.set()
    # The main process puts the message back (reject on worker lost) and a fresh child runs it.
    _wait(lambda: _sent(team), 60, "the digest was not sent after the child was killed", workers)
    time.sleep(1.0)  # would a duplicate follow?
    assert main.poll() is None
    _check_exactly_once(team, hook, workers)
    assert "WorkerLostError" in workers.log() or "SIGKILL" in workers.log()


def test_kill_main_process_mid_task_redelivers_after_visibility_timeout(broker, workers, hook):
    from experiments.tasks import build_standup_digest

    team = _team(hook)
    # The solo pool runs the task in the main process itself.
    first = workers.start(pool="solo", visibility=3, time_limit=2)
    end = timezone.now().replace(microsecond=0).isoformat()
    build_standup_digest.apply_async((team.pk, end), queue=workers.queue)
    _wait(hook.first_arrived.is_set, 90, "the worker never posted the digest", workers)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    hook.release.set()
    assert not _sent(team)  # the crash mid-send was not recorded as sent
    killed_at = time.monotonic()
    workers.start(pool="solo", visibility=3, time_limit=2)
    _wait(lambda: _sent(team), 90, "the message never came back after the visibility timeout", workers)
    redelivered_after = time.monotonic() - killed_at
    time.sleep(4.0)  # past another visibility timeout: no second delivery of an acknowledged message
    _check_exactly_once(team, hook, workers)
    assert redelivered_after >= 2.5  # not before the visibility timeout


def test_kill_pool_child_mid_import_chunk_imports_everything_once(broker, workers):
    """The chunked MLflow import: the child dies while a chunk waits on the server; the chunk's
    transaction dies with it, the message is requeued, and the whole pass completes exactly once."""
    from experiments.models import Metric, MlflowSource, Run
    from experiments.services.mlflow_import import PASS_KEY, mlflow_source_upsert
    from experiments.tasks import sync_mlflow_source

    from .test_mlflow_import import T0
    from .test_mlflow_import_fake import FakeMlflow

    with FakeMlflow() as fake:
        experiment = fake.add_experiment("long")
        for i in range(6):
            fake.add_run(experiment, f"run{i}", start=T0 + i, end=T0 + 100 + i)
            fake.log(f"run{i}", "loss", [(step, 1.0 / (step + 1)) for step in range(4)])
        held, release = threading.Event(), threading.Event()
        history = fake._history

        def slow_history(args):
            if args.get("run_id") == "run3" and not held.is_set():
                held.set()
                release.wait(60)
            return history(args)

        fake._history = slow_history
        team = team_create(name="Importers", slug="importers")
        source = mlflow_source_upsert(team=team, name="legacy", tracking_uri=fake.url)
        main = workers.start(pool="prefork", visibility=60, time_limit=30, MLFLOW_IMPORT_CHUNK_RUNS="4")
        sync_mlflow_source.apply_async((source.pk,), queue=workers.queue)
        _wait(held.is_set, 90, "the import never reached run3", workers)
        (child,) = workers.children(main)
        os.kill(child, signal.SIGKILL)  # mid-chunk: run0-run2 written in the chunk's open transaction
        release.set()

        def finished() -> bool:
            current = MlflowSource.objects.get(pk=source.pk)
            return current.last_synced_at is not None and PASS_KEY not in current.cursor

        _wait(finished, 90, "the import pass did not complete after the child was killed", workers)
        assert Run.objects.filter(team=team).count() == 6
        assert Metric.objects.filter(run__team=team).count() == 24  # 6 runs x 4 points, none twice
        assert sorted(Run.objects.filter(team=team).values_list("external_id", flat=True)) == [
            f"run{i}" for i in range(6)]
