"""Artifact throughput and web-worker memory: mlboard vs a real `mlflow server --serve-artifacts`.

Same workload on both, through the unmodified mlflow client (mlflow-skinny of this venv):
  1. upload 200 files of 1 MB (log_artifacts), then download them (download_artifacts);
  2. upload one big file (default 1 GB) as a single streamed PUT, then download it;
  3. mlboard only: the same big file through multipart upload (what the client does by itself
     for files >= 500 MB, since mlboard's server-info announces multipart uploads).
Downloads are checked byte-equal (SHA-256). While the big file moves, the resident memory (RSS)
of every server worker process is sampled from /proc every 20 ms; the report gives the largest
growth of one worker over its RSS just before the transfer.

    .venv/bin/python tests/benchmarks/artifacts.py [--files 200] [--file-mb 1] [--big-mb 1024] [--rounds 3]

Both servers: 2 worker processes on 127.0.0.1, artifacts on local disk under one temporary
directory; mlboard on PostgreSQL (127.0.0.1:5432, user postgres; --sqlite for a SQLite file), mlflow
on SQLite (its artifact requests never touch its backend store). Full mlflow in its own venv
(it pins gunicorn<27), by default /tmp/mlflow-venv
(`python3 -m venv /tmp/mlflow-venv && /tmp/mlflow-venv/bin/pip install mlflow==3.17.2`),
or MLFLOW_BIN=...; --skip-mlflow measures mlboard alone.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from _server import process_server as _process_server

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_BIN = Path(os.environ.get("MLFLOW_BIN", "/tmp/mlflow-venv/bin/mlflow"))
HOST = "127.0.0.1"
PG = "postgres://postgres@127.0.0.1:5432"
SAMPLE_SECONDS = 0.02


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --- Memory sampling ---------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for child in children.get(current, []):
            found.append(child)
            todo.append(child)
    return found


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Peak RSS per worker process while active; growth = peak - RSS at start."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.start: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _pids(self) -> list[int]:
        return descendants(self.root_pid) or [self.root_pid]

    def __enter__(self) -> RssSampler:
        for pid in self._pids():
            value = rss_kb(pid)
            if value is not None:
                self.start[pid] = self.peak[pid] = value
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in self._pids():
                value = rss_kb(pid)
                if value is not None:
                    self.peak[pid] = max(self.peak.get(pid, 0), value)
                    self.start.setdefault(pid, value)
            time.sleep(SAMPLE_SECONDS)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return max((self.peak[p] - self.start[p] for p in self.peak), default=0) / 1024

    @property
    def peak_mb(self) -> float:
        return max(self.peak.values(), default=0) / 1024


# --- Workload ----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    tracking_uri: str
    env: dict[str, str]
    proc: subprocess.Popen
    multipart: bool = False
    results: dict[str, list[float]] = field(default_factory=dict)
    memory: list[tuple[float, float]] = field(default_factory=list)  # (growth MB, peak MB) per big transfer
    errors: list[str] = field(default_factory=list)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): sha256(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def make_data(work: Path, files: int, file_mb: float, big_mb: int) -> tuple[Path, Path]:
    small = work / "small"
    small.mkdir()
    block = int(file_mb * 1024 * 1024)
    for i in range(files):
        (small / f"file-{i:04d}.bin").write_bytes(os.urandom(block))
    big = work / "big.bin"
    with big.open("wb") as out:
        for _ in range(big_mb):
            out.write(os.urandom(1024 * 1024))
    return small, big


def with_env(env: dict[str, str]):
    @contextmanager
    def scope():
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    return scope()


def run_round(target: Target, small: Path, big: Path, work: Path, mb_small: float, mb_big: float) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    env = {**target.env, "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true" if target.multipart else "false"}
    if target.multipart:
        env["MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE"] = str(5 * 1024**2)
    with with_env(env):
        mlflow.set_tracking_uri(target.tracking_uri)
        client = MlflowClient()
        experiment = client.get_experiment_by_name("artifact-bench")
        experiment_id = experiment.experiment_id if experiment else client.create_experiment("artifact-bench")
        run_id = client.create_run(experiment_id).info.run_id
        out = work / f"out-{target.name.split()[0]}-{run_id}"
        try:
            if not target.multipart:
                began = time.perf_counter()
                client.log_artifacts(run_id, str(small), "small")
                target.results.setdefault("small upload MB/s", []).append(mb_small / (time.perf_counter() - began))
                began = time.perf_counter()
                got = Path(client.download_artifacts(run_id, "small", str(out)))
                target.results.setdefault("small download MB/s", []).append(
                    mb_small / (time.perf_counter() - began)
                )
                if tree_digest(got) != tree_digest(small):
                    target.errors.append("small files differ after download")
            with RssSampler(target.proc.pid) as upload_memory:
                began = time.perf_counter()
                client.log_artifact(run_id, str(big), "big")
                target.results.setdefault("big upload MB/s", []).append(mb_big / (time.perf_counter() - began))
            with RssSampler(target.proc.pid) as download_memory:
                began = time.perf_counter()
                got_big = Path(client.download_artifacts(run_id, "big/big.bin", str(out)))
                target.results.setdefault("big download MB/s", []).append(mb_big / (time.perf_counter() - began))
            target.memory.append((upload_memory.growth_mb, upload_memory.peak_mb))
            target.memory.append((download_memory.growth_mb, download_memory.peak_mb))
            if sha256(got_big) != sha256(big):
                target.errors.append("big file differs after download")
        except Exception as exc:  # report and go on with the other server
            target.errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            shutil.rmtree(out, ignore_errors=True)
            client.set_terminated(run_id)


# --- Servers -----------------------------------------------------------------------------------

SETUP_SCRIPT = """
import django; django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from experiments.models import User
from experiments.services.boards import team_create
from experiments.services.tokens import token_create
user = User.objects.create_user("bench", password="bench-pass-123")
team = team_create(name="Bench", slug="bench", owner=user)
print(token_create(user=user, name="bench", team=team)[1])
"""


def mlboard_database(work: Path, sqlite: bool, name: str) -> str:
    """A fresh PostgreSQL database (production's backend), or a SQLite file with --sqlite."""
    if sqlite:
        return f"sqlite:///{work / 'mlboard.sqlite3'}"
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG}/{name}"


def mlboard_env(work: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ARTIFACT_"))}
    env.update(
        DATABASE_URL=database_url,
        DB_CONN_MAX_AGE="600",
        DJANGO_SETTINGS_MODULE="mlboard.settings",
        DEBUG="0",
        SECRET_KEY="bench-only-secret",
        ALLOWED_HOSTS=HOST,
        LOG_LEVEL="WARNING",
        ARTIFACT_ROOT=str(work / "mlboard-artifacts"),
        ARTIFACT_MAX_FILE_SIZE="0",
    )
    env.pop("REDIS_URL", None)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200, help="number of small files")
    parser.add_argument("--file-mb", type=float, default=1.0, help="size of each small file, MB")
    parser.add_argument("--big-mb", type=int, default=1024, help="size of the big file, MB")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server (median reported)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="mlboard: gunicorn gthread workers with N threads "
                        "(docker-compose runs 8); 0 = sync workers")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--sqlite", action="store_true", help="mlboard on SQLite instead of PostgreSQL")
    parser.add_argument("--work-dir", default=None, help="where test data and both artifact stores go")
    parser.add_argument("--pg-database", default="mlboard_artifacts_bench",
                        help="PostgreSQL database to (re)create for mlboard; it is dropped first")
    args = parser.parse_args()
    if args.files * args.file_mb > 4096 or args.big_mb > 4096:
        parser.error("keep the data under 4 GB per kind")
    if not args.skip_mlflow and not MLFLOW_BIN.exists():
        print(f"mlflow not found at {MLFLOW_BIN}; install it there or pass --skip-mlflow", file=sys.stderr)
        return 2
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "600"

    work = Path(tempfile.mkdtemp(prefix="artifact-bench-", dir=args.work_dir))
    small, big = make_data(work, args.files, args.file_mb, args.big_mb)
    mb_small, mb_big = args.files * args.file_mb, float(args.big_mb)
    targets: list[Target] = []
    try:
        with ExitStack() as stack:
            env = mlboard_env(work, mlboard_database(work, args.sqlite, args.pg_database))
            token = subprocess.run(
                [sys.executable, "-c", SETUP_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                timeout=300, check=True,
            ).stdout.strip().splitlines()[-1]
            port = free_port()
            gunicorn = [
                str(Path(sys.executable).parent / "gunicorn"), "mlboard.wsgi", "-b", f"{HOST}:{port}",
                "-w", str(args.workers), "--timeout", "600", "--log-level", "warning",
            ]
            if args.threads:
                gunicorn += ["--worker-class", "gthread", "--threads", str(args.threads)]
            proc = stack.enter_context(_process_server(
                cmd=gunicorn, env=env, cwd=ROOT, probe=f"http://{HOST}:{port}/accounts/login/",
                log=work / "mlboard.log", settle=2.0,
            ))
            auth = {"MLFLOW_TRACKING_TOKEN": token}
            targets.append(Target("mlboard (gunicorn)", f"http://{HOST}:{port}/mlflow", auth, proc))
            targets.append(Target("mlboard multipart", f"http://{HOST}:{port}/mlflow", auth, proc, multipart=True))
            if not args.skip_mlflow:
                port = free_port()
                mlflow_env = {k: v for k, v in os.environ.items()
                              if not k.startswith(("MLFLOW_", "DJANGO_", "DATABASE_URL", "ARTIFACT_"))}
                mlflow_env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
                cmd = [
                    str(MLFLOW_BIN), "server", "--host", HOST, "--port", str(port), "--workers", str(args.workers),
                    "--backend-store-uri", f"sqlite:///{work / 'mlflow.sqlite3'}",
                    "--serve-artifacts", "--artifacts-destination", str(work / "mlflow-artifacts"),
                    "--uvicorn-opts", "--timeout-worker-healthcheck 600",
                ]
                proc = stack.enter_context(_process_server(
                    cmd=cmd, env=mlflow_env, cwd=work, probe=f"http://{HOST}:{port}/health",
                    log=work / "mlflow.log", settle=2.0,
                ))
                targets.append(Target("mlflow server", f"http://{HOST}:{port}", {}, proc))
            for number in range(args.rounds):
                for target in targets:
                    run_round(target, small, big, work, mb_small, mb_big)
                    figures = ", ".join(f"{k} {v[-1]:.0f}" for k, v in target.results.items() if v)
                    print(f"round {number + 1}: {target.name:<20} {figures} "
                          f"peak RSS growth {max(g for g, _ in target.memory[-2:]) if target.memory else 0:.0f} MB "
                          f"({len(target.errors)} errors)", flush=True)
    finally:
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        for log in work.glob("*.log"):
            shutil.move(str(log), logs / log.name)
        for item in work.iterdir():
            if item != logs:
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)

    print()
    print(f"Workload: {args.files} files x {args.file_mb:g} MB, one {args.big_mb} MB file; {args.workers} server "
          f"workers each (mlboard: {f'gthread x {args.threads}' if args.threads else 'sync'}); "
          f"mlboard on {'SQLite' if args.sqlite else 'PostgreSQL'}; "
          f"mlflow client {__import__('mlflow').__version__}; {args.rounds} alternating rounds, medians")
    columns = ["small upload MB/s", "small download MB/s", "big upload MB/s", "big download MB/s"]
    print(f"{'server':<20} " + " ".join(f"{c:>20}" for c in columns) + f" {'RSS growth MB':>14} {'peak RSS MB':>12}")
    ok = True
    for target in targets:
        cells = []
        for column in columns:
            values = target.results.get(column)
            cells.append(f"{statistics.median(values):>20.0f}" if values else f"{'—':>20}")
        growth = max((g for g, _ in target.memory), default=0)
        peak = max((p for _, p in target.memory), default=0)
        print(f"{target.name:<20} " + " ".join(cells) + f" {growth:>14.0f} {peak:>12.0f}")
        for error in target.errors[:3]:
            print(f"    error: {error}")
        ok = ok and not target.errors
    print("byte-equal downloads:", "ok" if ok else "FAILED")
    print(f"server logs: {work / 'logs'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
