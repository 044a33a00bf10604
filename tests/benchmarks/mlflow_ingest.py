"""Batch ingestion through MLflow's log-batch API: mlboard vs a real `mlflow server`, same workload.

Both servers run on 127.0.0.1 with 2 worker processes and a PostgreSQL backend store (one fresh
database each). The client sends identical pre-encoded JSON bodies (MLflow's wire format) over
keep-alive connections from a few threads, so the figures measure the servers, not the client.

    .venv/bin/python tests/benchmarks/mlflow_ingest.py [--runs 4] [--batches 10] [--rounds 5] [--batch-size 1000]

Needs: PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth); full mlflow in .mlflow-venv
(`python3 -m venv .mlflow-venv && .mlflow-venv/bin/pip install mlflow==3.17.2 psycopg2-binary`).
Use --skip-mlflow to measure mlboard alone. Every request loop is bounded (count and time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
from _server import process_server as _process_server

ROOT = Path(__file__).resolve().parents[2]
PG = "postgres://postgres@127.0.0.1:5432"
# Several people may run this on one PostgreSQL server: BENCH_DB_PREFIX keeps their databases apart.
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "")
MLFLOW_BIN = Path(os.environ.get("MLFLOW_BIN", str(ROOT / ".mlflow-venv/bin/mlflow")))
HOST = "127.0.0.1"
DEADLINE_SECONDS = 900  # hard stop for the whole benchmark
REQUEST_TIMEOUT = 120
WARMUP_BATCHES = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def recreate_database(name: str) -> str:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG}/{name}"


# --- mlboard side ------------------------------------------------------------------------------


def mlboard_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="mlboard.settings",
        DEBUG="0",
        SECRET_KEY="bench-only-secret",
        ALLOWED_HOSTS=HOST,
        LOG_LEVEL="WARNING",
        DB_CONN_MAX_AGE="600",
    )
    return env


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


def prepare_mlboard(database_url: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", SETUP_SCRIPT], env=mlboard_env(database_url), cwd=ROOT,
        capture_output=True, text=True, timeout=300, check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def count_mlboard_points(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM experiments_metric").fetchone()[0]


def count_mlflow_points(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM metrics").fetchone()[0]


# --- preloaded history (--preload) -----------------------------------------------------------------


def preload(target, points: int) -> None:
    """Fill the server's metric table with `points` points of one filler run (generate_series in the
    database: far faster than the API), so ingest is measured against a table that already holds them."""
    session = requests.Session()
    session.headers.update(target.headers)
    api = f"{target.base}/api/2.0/mlflow"
    experiment_id = session.post(f"{api}/experiments/create", json={"name": "filler"}, timeout=REQUEST_TIMEOUT)
    experiment_id.raise_for_status()
    run = session.post(f"{api}/runs/create", json={"experiment_id": experiment_id.json()["experiment_id"]},
                       timeout=REQUEST_TIMEOUT)
    run.raise_for_status()
    run_id = run.json()["run"]["info"]["run_id"]
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        if target.count is count_mlboard_points:
            conn.execute(
                "INSERT INTO experiments_metric (run_id, key, value, is_nan, step, timestamp) "
                "SELECT (SELECT id FROM experiments_run WHERE external_id = %s), 'filler_' || (g %% 10), random(), "
                "false, g, 1700000000000 + g FROM generate_series(1, %s) g", [run_id, points])
            table = "experiments_metric"
        else:
            conn.execute(
                "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                "SELECT 'filler_' || (g %% 10), random(), 1700000000000 + g, %s, g, false "
                "FROM generate_series(1, %s) g", [run_id, points])
            table = "metrics"
        conn.execute(f"VACUUM ANALYZE {table}")
        heap, indexes = conn.execute(
            "SELECT pg_size_pretty(pg_table_size(%s::regclass)), pg_size_pretty(pg_indexes_size(%s::regclass))",
            [table, table],
        ).fetchone()
    print(f"{target.name}: preloaded {points:,} points; {table} {heap} heap, {indexes} indexes", flush=True)


# --- workload ----------------------------------------------------------------------------------


def batch_body(run_id: str, index: int, size: int, keys: int) -> bytes:
    """`size` points over `keys` metric names, steps continuing batch after batch."""
    base_ts = 1_700_000_000_000
    steps_per_batch = size // keys
    metrics = []
    for i in range(size):
        step = index * steps_per_batch + i // keys
        value = 1.0 / (step + 1) + (i % keys) * 0.001
        metrics.append({"key": f"metric_{i % keys}", "value": value, "timestamp": base_ts + step * 1000, "step": step})
    return json.dumps({"run_id": run_id, "metrics": metrics}).encode()


@dataclass
class Result:
    name: str
    points: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stored: int = 0

    @property
    def rate(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0


def run_workload(name: str, base: str, headers: dict[str, str], args: argparse.Namespace) -> Result:
    api = f"{base}/api/2.0/mlflow"
    session = requests.Session()
    session.headers.update(headers)

    def call(route: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = session.post(f"{api}/{route}", json=payload, timeout=REQUEST_TIMEOUT)
        response.raise_for_status()
        return response.json()

    experiment_id = call("experiments/create", {"name": f"ingest-{int(time.time())}"})["experiment_id"]
    run_ids = [
        call("runs/create", {"experiment_id": experiment_id, "start_time": int(time.time() * 1000)})["run"]["info"][
            "run_id"
        ]
        for _ in range(args.runs)
    ]
    bodies = {
        run_id: [batch_body(run_id, b, args.batch_size, args.keys) for b in range(args.batches)] for run_id in run_ids
    }
    result = Result(name)
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE_SECONDS

    def worker(run_id: str) -> None:
        local = requests.Session()
        local.headers.update({**headers, "Content-Type": "application/json"})
        for body in bodies[run_id]:  # bounded: args.batches requests per run
            if time.monotonic() > deadline:
                with lock:
                    result.errors.append("deadline reached")
                return
            started = time.perf_counter()
            response = local.post(f"{api}/runs/log-batch", data=body, timeout=REQUEST_TIMEOUT)
            elapsed = time.perf_counter() - started
            with lock:
                if response.status_code == 200:
                    result.points += args.batch_size
                    result.latencies.append(elapsed)
                else:
                    result.errors.append(f"{response.status_code} {response.text[:200]}")

    # Warm-up (every worker process, connections, first-request imports) on throw-away runs, not
    # timed: one thread per run, WARMUP_BATCHES each.
    def warm_up(index: int) -> None:
        local = requests.Session()
        local.headers.update(headers)
        created = local.post(f"{api}/runs/create", json={"experiment_id": experiment_id}, timeout=REQUEST_TIMEOUT)
        warm = created.json()["run"]["info"]["run_id"]
        local.headers["Content-Type"] = "application/json"
        for b in range(WARMUP_BATCHES):
            body = batch_body(warm, b, args.batch_size, args.keys)
            local.post(f"{api}/runs/log-batch", data=body, timeout=REQUEST_TIMEOUT).raise_for_status()

    warmers = [threading.Thread(target=warm_up, args=(i,)) for i in range(args.runs)]
    for thread in warmers:
        thread.start()
    for thread in warmers:
        thread.join(timeout=DEADLINE_SECONDS)

    threads = [threading.Thread(target=worker, args=(run_id,)) for run_id in run_ids]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE_SECONDS)
    result.seconds = time.perf_counter() - started
    for run_id in run_ids:
        call("runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)})
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


@dataclass
class Target:
    name: str
    base: str
    headers: dict[str, str]
    database_url: str
    count: Any
    results: list[Result] = field(default_factory=list)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4, help="concurrent runs (one client thread each)")
    parser.add_argument("--batches", type=int, default=10, help="log-batch requests per run and round")
    parser.add_argument("--batch-size", type=int, default=1000, help="metric points per request (max 1000)")
    parser.add_argument("--keys", type=int, default=10, help="distinct metric names per batch")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per server (median reported)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (both servers)")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--preload", type=int, default=0, help="points stored before the timed rounds")
    args = parser.parse_args()
    if not 1 <= args.batch_size <= 1000 or args.runs * args.batches * args.rounds > 10_000:
        parser.error("batch size must be 1..1000 and runs*batches*rounds at most 10000")
    if not args.skip_mlflow and not MLFLOW_BIN.exists():
        print(f"mlflow not found at {MLFLOW_BIN}; install it there or pass --skip-mlflow", file=sys.stderr)
        return 2

    logs = Path(tempfile.mkdtemp(prefix="mlflow-ingest-bench-"))
    targets: list[Target] = []
    with ExitStack() as stack:
        mlboard_db = recreate_database(f"{DB_PREFIX}mlboard_ingest_bench")
        token = prepare_mlboard(mlboard_db)
        port = free_port()
        gunicorn = [
            str(Path(sys.executable).parent / "gunicorn"), "mlboard.wsgi", "-b", f"{HOST}:{port}",
            "-w", str(args.workers), "--timeout", "120", "--log-level", "warning",
        ]
        stack.enter_context(_process_server(cmd=gunicorn, env=mlboard_env(mlboard_db), cwd=ROOT,
                                   probe=f"http://{HOST}:{port}/accounts/login/", log=logs / "mlboard.log"))
        targets.append(Target("mlboard (gunicorn)", f"http://{HOST}:{port}/mlflow",
                              {"Authorization": f"Bearer {token}"}, mlboard_db, count_mlboard_points))
        if not args.skip_mlflow:
            mlflow_db = recreate_database(f"{DB_PREFIX}mlflow_ingest_bench")
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DJANGO_", "DATABASE_URL"))}
            env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
            cmd = [
                str(MLFLOW_BIN), "server", "--host", HOST, "--port", str(port), "--workers", str(args.workers),
                "--backend-store-uri", mlflow_db.replace("postgres://", "postgresql+psycopg2://"),
                "--default-artifact-root", str(logs / "mlartifacts"),
                # Its default 5 s worker health check kills workers busy with a first slow request.
                "--uvicorn-opts", "--timeout-worker-healthcheck 60",
            ]
            stack.enter_context(_process_server(cmd=cmd, env=env, cwd=logs, probe=f"http://{HOST}:{port}/health",
                                       log=logs / "mlflow.log"))
            targets.append(Target("mlflow server", f"http://{HOST}:{port}", {}, mlflow_db, count_mlflow_points))
        for target in targets if args.preload else ():
            preload(target, args.preload)
        # Alternate servers round by round so background load on the machine hits both alike.
        for round_number in range(args.rounds):
            for target in targets:
                result = run_workload(target.name, target.base, target.headers, args)
                target.results.append(result)
                print(f"round {round_number + 1}: {target.name:<20} {result.rate:>10,.0f} points/s "
                      f"({len(result.errors)} errors)", flush=True)

    per_round = args.runs * args.batches * args.batch_size
    expected = args.rounds * (per_round + args.runs * WARMUP_BATCHES * args.batch_size)  # timed + warm-up
    expected += args.preload
    print()
    print(f"Workload per round: {args.runs} runs x {args.batches} log-batch requests x {args.batch_size} points "
          f"({args.keys} metric keys); {args.runs} client threads; {args.workers} server workers each; "
          f"PostgreSQL backends; {args.rounds} alternating rounds")
    print(f"{'server':<20} {'median pts/s':>12} {'min pts/s':>10} {'max pts/s':>10} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'stored':>9} {'errors':>6}")
    ok = True
    medians = []
    for target in targets:
        rates = [r.rate for r in target.results]
        latencies = [x for r in target.results for x in r.latencies]
        errors = [e for r in target.results for e in r.errors]
        stored = target.count(target.database_url)
        medians.append(statistics.median(rates))
        ok = ok and stored == expected and not errors
        print(f"{target.name:<20} {statistics.median(rates):>12,.0f} {min(rates):>10,.0f} {max(rates):>10,.0f} "
              f"{percentile(latencies, 50) * 1000:>8.1f} {percentile(latencies, 95) * 1000:>8.1f} "
              f"{stored:>9,} {len(errors):>6}")
        for error in errors[:3]:
            print(f"    error: {error}")
    if len(medians) == 2 and medians[1]:
        paired = [a.rate / b.rate for a, b in zip(targets[0].results, targets[1].results, strict=True) if b.rate]
        print(f"\nmlboard / mlflow median throughput: {medians[0] / medians[1]:.1f}x "
              f"(round by round: {', '.join(f'{r:.1f}x' for r in paired)}; median {statistics.median(paired):.1f}x)")
    print("stored points check:", "ok" if ok else f"MISMATCH (expected {expected:,} per server)")
    print(f"server logs: {logs}")
    shutil.rmtree(logs / "mlartifacts", ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
