"""Ingest rate as the metric table grows: mlboard vs a real `mlflow server`, at 1M, 10M and 50M stored points.

Both servers run on 127.0.0.1 with 2 worker processes, each on its own PostgreSQL database. Before each
size, both metric tables are topped up to that many points with SQL (generate_series: 200 filler runs
x 10 keys x as many steps as needed, continuing the steps of the previous size; latest values upserted;
then VACUUM ANALYZE), so the servers ingest into a table that really holds them. Then, in rounds that
alternate between the servers:

- log-batch: 4 client threads, each its own new run, 5 requests of 1000 points over 10 keys;
- per-step log-metric: 8 client threads, each its own new run, one point per request (step by step, as
  `mlflow.log_metric` in a training loop sends them), keep-alive connections where the server keeps them.

Each round the other server goes first; a fill ends with VACUUM ANALYZE and a CHECKPOINT.

Bodies are pre-encoded and sent with http.client, so the client costs little CPU. Afterwards every
measured run must hold exactly the points sent to it (each stored once), and each size reports both
tables' heap and index sizes. At the largest size the exact insert statement mlboard runs for a
1000-point batch and for one point is timed with EXPLAIN (ANALYZE, BUFFERS), with and without the
unique index (dropped inside a rolled-back transaction), to say what the index costs per insert.

    MLFLOW_BIN=/work/mlflow-venv/bin/mlflow BENCH_DB_PREFIX=ingest_ \\
        .venv/bin/python tests/benchmarks/ingest_scale.py [--sizes 1000000,10000000,50000000] [--rounds 3]

mlboard runs as deployed, with its cache (throttle counters, chart-cache versions) on Redis
(--redis-url, default redis://127.0.0.1:6379/14; '' for the in-process cache).

--keep leaves the two databases for a later `--reuse` (measure again without refilling); by default
they are dropped at the end. mlboard's THROTTLE_MLFLOW is raised for the run: the benchmark measures
server capacity, not the per-token rate limit (12000/min by default).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import requests
from _server import process_server
from mlflow_ingest import DB_PREFIX, HOST, MLFLOW_BIN, PG, ROOT, free_port, mlboard_env, prepare_mlboard

FILLER_RUNS = 200
FILLER_KEYS = 10
FILLER_CHUNK_RUNS = 10  # runs per INSERT statement while filling (progress, moderate transactions)
REQUEST_TIMEOUT = 120
DEADLINE_SECONDS = 600  # per measured workload


# --- servers and databases ---------------------------------------------------------------------


@dataclass
class Target:
    name: str
    base: str  # http://host:port/prefix of /api/2.0/mlflow
    headers: dict[str, str]
    database_url: str
    kind: str  # "mlboard" | "mlflow"
    pgid: int = 0  # the server's process group (CPU accounting)
    idle_cpu: float = 0.0  # CPU seconds per second when idle (MLflow's job-queue consumers poll)
    filler: list = field(default_factory=list)  # run ids as the metric table stores them
    batch: list[float] = field(default_factory=list)
    step: list[float] = field(default_factory=list)
    batch_cpu: list[float] = field(default_factory=list)  # CPU ms (server + its PostgreSQL backends) per unit
    step_cpu: list[float] = field(default_factory=list)

    @property
    def metric_table(self) -> str:
        return "experiments_metric" if self.kind == "mlboard" else "metrics"


def database(name: str, *, reuse: bool) -> tuple[str, bool]:
    """(url, existed): a fresh database unless `reuse` and it is there already."""
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None
        if exists and reuse:
            return f"{PG}/{name}", True
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG}/{name}", False


def drop_database(name: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


TOKEN_SCRIPT = """
import django; django.setup()
from experiments.models import Team, User
from experiments.services.tokens import token_create
print(token_create(user=User.objects.get(username="bench"), name="bench", team=Team.objects.get(slug="bench"))[1])
"""


def mlboard_token(database_url: str, *, existed: bool) -> str:
    if not existed:
        return prepare_mlboard(database_url)
    out = subprocess.run([sys.executable, "-c", TOKEN_SCRIPT], env=mlboard_env(database_url), cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True)
    return out.stdout.strip().splitlines()[-1]


def start_servers(stack: ExitStack, args: argparse.Namespace, logs: Path) -> list[Target]:
    url, existed = database(f"{DB_PREFIX}mlboard_scale", reuse=args.reuse)
    token = mlboard_token(url, existed=existed)
    port = free_port()
    env = mlboard_env(url)
    env["THROTTLE_MLFLOW"] = "100000000/min"
    if args.redis_url:  # as deployed (docker-compose): the cache, throttle counters and broker on Redis
        env["REDIS_URL"] = args.redis_url
    gunicorn = [str(Path(sys.executable).parent / "gunicorn"), "mlboard.wsgi", "-b", f"{HOST}:{port}",
                "-w", str(args.workers), "--timeout", "120", "--log-level", "warning"]
    if args.threads > 1:  # as the Dockerfile deploys it: threaded workers (also keep connections alive)
        gunicorn += ["--worker-class", "gthread", "--threads", str(args.threads)]
    proc = stack.enter_context(process_server(cmd=gunicorn, env=env, cwd=ROOT, log=logs / "mlboard.log",
                                              probe=f"http://{HOST}:{port}/accounts/login/"))
    targets = [Target("mlboard", f"http://{HOST}:{port}/mlflow", {"Authorization": f"Bearer {token}"}, url, "mlboard",
                      proc.pid)]
    url, _ = database(f"{DB_PREFIX}mlflow_scale", reuse=args.reuse)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DJANGO_", "DATABASE_URL"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    cmd = [str(MLFLOW_BIN), "server", "--host", HOST, "--port", str(port), "--workers", str(args.workers),
           "--backend-store-uri", url.replace("postgres://", "postgresql+psycopg2://"),
           "--default-artifact-root", str(logs / "mlartifacts"),
           "--uvicorn-opts", "--timeout-worker-healthcheck 60"]
    proc = stack.enter_context(process_server(cmd=cmd, env=env, cwd=logs, probe=f"http://{HOST}:{port}/health",
                                              log=logs / "mlflow.log"))
    targets.append(Target("mlflow", f"http://{HOST}:{port}", {}, url, "mlflow", proc.pid))
    return targets


def api(target: Target, route: str, payload: dict) -> dict:
    response = requests.post(f"{target.base}/api/2.0/mlflow/{route}", json=payload, headers=target.headers,
                             timeout=REQUEST_TIMEOUT)
    response.raise_for_status()
    return response.json()


def experiment(target: Target, name: str) -> str:
    found = requests.get(f"{target.base}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name},
                         headers=target.headers, timeout=REQUEST_TIMEOUT)
    if found.status_code == 200:
        return found.json()["experiment"]["experiment_id"]
    return api(target, "experiments/create", {"name": name})["experiment_id"]


def new_runs(target: Target, experiment_id: str, count: int) -> list[str]:
    return [api(target, "runs/create", {"experiment_id": experiment_id, "start_time": int(time.time() * 1000)})
            ["run"]["info"]["run_id"] for _ in range(count)]


# --- prefill -----------------------------------------------------------------------------------


def filler_runs(target: Target) -> None:
    """FILLER_RUNS runs made through the API (so both servers have complete run rows), found again on --reuse."""
    exp = experiment(target, "filler")
    with psycopg.connect(target.database_url) as conn:
        if target.kind == "mlboard":
            query = "SELECT id FROM experiments_run WHERE experiment_id = %s ORDER BY id"
        else:
            query = "SELECT run_uuid FROM runs WHERE experiment_id = %s ORDER BY run_uuid"
        ids = [row[0] for row in conn.execute(query, [int(exp)])]
    if len(ids) < FILLER_RUNS:
        new_runs(target, exp, FILLER_RUNS - len(ids))
        with psycopg.connect(target.database_url) as conn:
            ids = [row[0] for row in conn.execute(query, [int(exp)])]
    target.filler = ids[:FILLER_RUNS]


def table_rows(target: Target) -> int:
    with psycopg.connect(target.database_url) as conn:
        return conn.execute(f"SELECT count(*) FROM {target.metric_table}").fetchone()[0]


# A large top-up is far quicker into the bare heap, indexes rebuilt afterwards (same definitions and
# names: the timed inserts then maintain exactly the indexes the server created).
REBUILD_ABOVE = 5_000_000


def _drop_indexes(conn: psycopg.Connection, table: str) -> list[str]:
    constraints = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid), conindid FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype IN ('p', 'u')", [table]).fetchall()
    backing = {row[2] for row in constraints}
    indexes = conn.execute(
        "SELECT indexrelid, pg_get_indexdef(indexrelid), indexrelid::regclass::text FROM pg_index "
        "WHERE indrelid = %s::regclass", [table]).fetchall()
    rebuild = [f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}' for name, definition, _ in constraints]
    rebuild += [definition for oid, definition, _ in indexes if oid not in backing]
    for name, _, _ in constraints:
        conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for oid, _, name in indexes:
        if oid not in backing:
            conn.execute(f"DROP INDEX {name}")
    return rebuild


def fill_to(target: Target, size: int) -> None:
    """Top the metric table up to `size` points: FILLER_RUNS x FILLER_KEYS series, steps continuing."""
    have = table_rows(target)
    per_step = FILLER_RUNS * FILLER_KEYS
    steps = max(0, -(-(size - have) // per_step))
    if not steps:
        return
    started = time.monotonic()
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        # The latest-value tables hold the last filled step (cheaper than max() over the points).
        if target.kind == "mlboard":
            first = conn.execute("SELECT coalesce(max(step) + 1, 0) FROM experiments_latestmetric WHERE run_id = %s",
                                 [target.filler[0]]).fetchone()[0]
        else:
            first = conn.execute("SELECT coalesce(max(step) + 1, 0) FROM latest_metrics WHERE run_uuid = %s",
                                 [target.filler[0]]).fetchone()[0]
        last = first + steps - 1
        rebuild = _drop_indexes(conn, target.metric_table) if steps * per_step >= REBUILD_ABOVE else []
        for start in range(0, FILLER_RUNS, FILLER_CHUNK_RUNS):
            chunk = target.filler[start:start + FILLER_CHUNK_RUNS]
            # Values wander like a loss curve; timestamps one second per step. Each server gets its
            # rows in its unique index's order (mlboard: run, key, step; MLflow: key, timestamp, ...).
            if target.kind == "mlboard":
                conn.execute(
                    "INSERT INTO experiments_metric (run_id, key, value, is_nan, step, timestamp) "
                    "SELECT r, 'filler_' || k, 1.0 / (s + 1) + random() * 0.01, false, s, 1700000000000 + s * 1000 "
                    "FROM unnest(%s::bigint[]) r, generate_series(0, %s::int) k, "
                    "generate_series(%s::bigint, %s::bigint) s ORDER BY r, k, s",
                    [chunk, FILLER_KEYS - 1, first, last])
            else:
                conn.execute(
                    "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                    "SELECT 'filler_' || k, 1.0 / (s + 1) + random() * 0.01, 1700000000000 + s * 1000, r, s, false "
                    "FROM unnest(%s::text[]) r, generate_series(0, %s::int) k, "
                    "generate_series(%s::bigint, %s::bigint) s ORDER BY k, s, r",
                    [chunk, FILLER_KEYS - 1, first, last])
        if target.kind == "mlboard":
            conn.execute(
                "INSERT INTO experiments_latestmetric (run_id, key, value, is_nan, step, timestamp) "
                "SELECT r, 'filler_' || k, 1.0 / (%s::bigint + 1), false, %s::bigint, "
                "1700000000000 + %s::bigint * 1000 "
                "FROM unnest(%s::bigint[]) r, generate_series(0, %s::int) k "
                "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, step = excluded.step, "
                "timestamp = excluded.timestamp", [last, last, last, target.filler, FILLER_KEYS - 1])
        else:
            conn.execute(
                "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                "SELECT 'filler_' || k, 1.0 / (%s::bigint + 1), 1700000000000 + %s::bigint * 1000, %s::bigint, "
                "false, r "
                "FROM unnest(%s::text[]) r, generate_series(0, %s::int) k "
                "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, step = excluded.step, "
                "timestamp = excluded.timestamp", [last, last, last, target.filler, FILLER_KEYS - 1])
        if rebuild:
            built = time.monotonic()
            conn.execute("SET maintenance_work_mem = '512MB'")
            for statement in rebuild:
                conn.execute(statement)
            print(f"  {target.name}: indexes rebuilt in {time.monotonic() - built:.0f} s", flush=True)
        filled = time.monotonic() - started
        conn.execute(f"VACUUM (ANALYZE) {target.metric_table}")
        conn.execute(f"VACUUM (ANALYZE) {'experiments_latestmetric' if target.kind == 'mlboard' else 'latest_metrics'}")
        # Flush the fill's dirty pages now, not in the middle of whichever server is measured first.
        conn.execute("CHECKPOINT")
    print(f"  {target.name}: +{steps * per_step:,} points (steps {first}..{last}) in {filled:.0f} s, "
          f"vacuum+analyze {time.monotonic() - started - filled:.0f} s", flush=True)


def sizes_report(target: Target) -> str:
    with psycopg.connect(target.database_url) as conn:
        heap = conn.execute("SELECT pg_table_size(%s::regclass)", [target.metric_table]).fetchone()[0]
        rows = conn.execute(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
            "WHERE indrelid = %s::regclass ORDER BY 2 DESC", [target.metric_table]).fetchall()
    indexes = ", ".join(f"{name} {size / 2**20:,.0f} MB" for name, size in rows)
    total = sum(size for _, size in rows)
    return (f"{target.name} {target.metric_table}: heap {heap / 2**20:,.0f} MB, indexes {total / 2**20:,.0f} MB "
            f"({total / heap:.2f}x heap): {indexes}")


# --- workloads ---------------------------------------------------------------------------------


def batch_body(run_id: str, index: int, size: int = 1000, keys: int = 10) -> bytes:
    per = size // keys
    metrics = [{"key": f"metric_{i % keys}", "value": 1.0 / (index * per + i // keys + 1),
                "timestamp": 1_750_000_000_000 + (index * per + i // keys) * 1000, "step": index * per + i // keys}
               for i in range(size)]
    return json.dumps({"run_id": run_id, "metrics": metrics}).encode()


def step_body(run_id: str, step: int) -> bytes:
    return json.dumps({"run_id": run_id, "key": "loss", "value": 1.0 / (step + 1),
                       "timestamp": 1_750_000_000_000 + step * 1000, "step": step}).encode()


def drive(target: Target, route: str, bodies: list[list[bytes]]) -> tuple[float, list[str]]:
    """POST each thread's bodies in order over one connection per thread; (seconds, errors)."""
    url = urlsplit(f"{target.base}/api/2.0/mlflow/{route}")
    headers = {**target.headers, "Content-Type": "application/json"}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE_SECONDS

    def worker(own: list[bytes]) -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=REQUEST_TIMEOUT)
        try:
            for body in own:
                if time.monotonic() > deadline:
                    with lock:
                        errors.append("deadline reached")
                    return
                try:
                    conn.request("POST", url.path, body=body, headers=headers)
                    response = conn.getresponse()
                    text = response.read()
                except (http.client.HTTPException, OSError):
                    # The server closed a kept-alive connection: reconnect once for this request.
                    conn.close()
                    conn.request("POST", url.path, body=body, headers=headers)
                    response = conn.getresponse()
                    text = response.read()
                if response.status != 200:
                    with lock:
                        errors.append(f"{response.status} {text[:200]!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(own,)) for own in bodies]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE_SECONDS + 60)
    return time.perf_counter() - started, errors


TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(target: Target) -> dict[int, int]:
    """User + system CPU ticks per process: the server's processes and the PostgreSQL backends serving
    its database. On a shared machine, CPU per request is steadier than requests per second."""
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        backends = {row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                                   [target.database_url.rsplit("/", 1)[1]])}
    ticks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == target.pgid or int(entry) in backends:
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    return ticks


def cpu_since(target: Target, before: dict[int, int]) -> float:
    """CPU seconds used since `before` by the processes alive now (one that exited in between is
    missed, never counted negative)."""
    return sum(now - before.get(pid, 0) for pid, now in cpu_ticks(target).items()) / TICK


def stored(target: Target, run_ids: list[str]) -> int:
    with psycopg.connect(target.database_url) as conn:
        if target.kind == "mlboard":
            return conn.execute("SELECT count(*) FROM experiments_metric m JOIN experiments_run r ON r.id = m.run_id "
                                "WHERE r.external_id = ANY(%s)", [run_ids]).fetchone()[0]
        return conn.execute("SELECT count(*) FROM metrics WHERE run_uuid = ANY(%s)", [run_ids]).fetchone()[0]


@dataclass
class Workload:
    name: str
    route: str
    threads: int
    requests: int  # per thread
    points: int  # per request
    body: Callable[[str, int], bytes]
    unit: str


def measure(target: Target, exp: str, load: Workload, sink: list[float], cpu: list[float],
            problems: list[str]) -> float:
    runs = new_runs(target, exp, load.threads)
    bodies = [[load.body(run, i) for i in range(load.requests)] for run in runs]
    cpu_before = cpu_ticks(target)
    seconds, errors = drive(target, load.route, bodies)
    used = cpu_since(target, cpu_before) - target.idle_cpu * seconds
    expected = load.threads * load.requests * load.points
    got = stored(target, runs)
    if errors or got != expected:
        problems.append(f"{target.name} {load.name}: {len(errors)} errors {errors[:2]}, stored {got:,} of {expected:,}")
    for run in runs:
        api(target, "runs/update", {"run_id": run, "status": "FINISHED", "end_time": int(time.time() * 1000)})
    units = load.threads * load.requests * (load.points if load.unit == "pts/s" else 1)
    sink.append(units / seconds)
    # CPU ms per 1000 points (log-batch) or per request (log-metric).
    cpu.append(used * 1000 / (units / 1000 if load.unit == "pts/s" else units))
    return units / seconds


# --- index cost (EXPLAIN ANALYZE of mlboard's own insert statement) ------------------------------

EXPLAIN_SCRIPT = r"""
import json, statistics, sys, django; django.setup()
from django.db import connection, transaction
from experiments.models import Run
from experiments.services.runs import MetricPoint, run_log_metrics

run = Run.objects.get(external_id=sys.argv[1])
REPEAT = 7

def statements(points_per_call):
    # The exact statements run_log_metrics sends (captured, then rolled back).
    captured = []
    def capture(execute, sql, params, many, context):
        if "experiments_metric" in sql and "INSERT" in sql.upper():
            captured.append((sql, params))
        return execute(sql, params, many, context)
    for i in range(REPEAT):
        base = 10_000_000 + i * points_per_call
        points = [MetricPoint(f"metric_{j % 10}", 0.5, base + j // 10, 1_760_000_000_000 + base + j)
                  for j in range(points_per_call)]
        with connection.execute_wrapper(capture), transaction.atomic():
            run_log_metrics(run=run, points=points)
            transaction.set_rollback(True)
    return captured

def timed(captured, drop_unique):
    times, inserts, buffers = [], [], []
    for sql, params in captured:
        with transaction.atomic(), connection.cursor() as cursor:
            if drop_unique:
                cursor.execute("ALTER TABLE experiments_metric DROP CONSTRAINT uniq_metric_point")
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
            plan = cursor.fetchone()[0]
            plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
            transaction.set_rollback(True)
        times.append(plan["Execution Time"])
        def walk(node):
            yield node
            for child in node.get("Plans", []):
                yield from walk(child)
        for node in walk(plan["Plan"]):
            if node.get("Node Type") == "ModifyTable" and node.get("Relation Name") == "experiments_metric":
                inserts.append(node["Actual Total Time"])
                buffers.append(node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)
                               + node.get("Shared Dirtied Blocks", 0))
    return statistics.median(times), statistics.median(inserts), statistics.median(buffers)

out = {}
for n in (1000, 1):
    captured = statements(n)
    for drop in (False, True):
        out[f"{n}:{'without' if drop else 'with'}"] = timed(captured, drop)
print(json.dumps(out))
"""


def index_cost(target: Target, run_id: str) -> None:
    env = mlboard_env(target.database_url)
    out = subprocess.run([sys.executable, "-c", EXPLAIN_SCRIPT, run_id], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    if out.returncode:
        print("  index cost: failed:", out.stderr[-800:])
        return
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print("  mlboard insert statement, EXPLAIN (ANALYZE, BUFFERS), median of 7 (rolled back):")
    print(f"  {'points':>6} {'unique index':>12} {'statement ms':>12} {'metric insert ms':>16} {'buffers':>8}")
    for label, (total, insert, buffers) in result.items():
        points, state = label.split(":")
        print(f"  {points:>6} {state:>12} {total:>12.2f} {insert:>16.2f} {buffers:>8,.0f}")


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000,50000000", help="stored points, comma separated")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per size and workload")
    parser.add_argument("--batch-threads", type=int, default=4)
    parser.add_argument("--batches", type=int, default=5, help="log-batch requests (1000 points) per thread")
    parser.add_argument("--step-threads", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150, help="log-metric requests per thread")
    parser.add_argument("--workers", type=int, default=2, help="server processes (both servers)")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per mlboard worker (1: sync)")
    parser.add_argument("--reuse", action="store_true", help="keep what the databases already hold")
    parser.add_argument("--keep", action="store_true", help="do not drop the databases at the end")
    parser.add_argument("--no-explain", action="store_true")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
                        help="mlboard's REDIS_URL, as deployed; '' for the in-process cache")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if max(sizes) > 60_000_000 or args.batches * args.batch_threads > 100 or args.steps * args.step_threads > 5000:
        parser.error("at most 60M points, 100 log-batch and 5000 log-metric requests per round")
    if not MLFLOW_BIN.exists():
        print(f"mlflow not found at {MLFLOW_BIN} (set MLFLOW_BIN)", file=sys.stderr)
        return 2
    batch = Workload("log-batch", "runs/log-batch", args.batch_threads, args.batches, 1000, batch_body, "pts/s")
    step = Workload("log-metric", "runs/log-metric", args.step_threads, args.steps, 1, step_body, "req/s")
    logs = Path(tempfile.mkdtemp(prefix="ingest-scale-"))
    problems: list[str] = []
    table: list[dict] = []
    med = statistics.median
    with ExitStack() as stack:
        targets = start_servers(stack, args, logs)
        mb, ml = targets
        experiments = {}
        for target in targets:
            filler_runs(target)
            experiments[target.name] = experiment(target, "measured")
            # Warm-up, untimed: every worker, connection and first-request import on both paths.
            for warm in (Workload("warm", batch.route, 4, 2, 1000, batch_body, "pts/s"),
                         Workload("warm", step.route, 8, 20, 1, step_body, "req/s")):
                measure(target, experiments[target.name], warm, [], [], problems)
        for target in targets:
            before = cpu_ticks(target)
            time.sleep(10)
            target.idle_cpu = cpu_since(target, before) / 10
            print(f"{target.name} idle: {target.idle_cpu * 100:.0f}% of a core (subtracted from CPU per request)")
        for size in sizes:
            print(f"\n== {size:,} stored points: filling", flush=True)
            # Both servers' tables at once (the database does the work; untimed).
            fillers = [threading.Thread(target=fill_to, args=(target, size)) for target in targets]
            for thread in fillers:
                thread.start()
            for thread in fillers:
                thread.join()
            for target in targets:
                target.batch, target.step, target.batch_cpu, target.step_cpu = [], [], [], []
            load = os.getloadavg()[0]
            rows = {t.name: table_rows(t) for t in targets}
            for round_number in range(args.rounds):
                for kind, attr in ((batch, "batch"), (step, "step")):
                    # Each round the other server goes first (whatever the machine does at a round's
                    # start falls on both alike).
                    for target in targets if round_number % 2 == 0 else targets[::-1]:
                        rate = measure(target, experiments[target.name], kind, getattr(target, attr),
                                       getattr(target, f"{attr}_cpu"), problems)
                        cpu = getattr(target, f"{attr}_cpu")[-1]
                        print(f"  round {round_number + 1} {kind.name:<10} {target.name:<8} {rate:>9,.0f} {kind.unit}"
                              f"  {cpu:6.1f} CPU ms per {'1000 points' if kind.unit == 'pts/s' else 'request'}",
                              flush=True)
            load = (load + os.getloadavg()[0]) / 2
            for target in targets:
                print("  " + sizes_report(target), flush=True)
            row = {
                "size": size, "rows": rows, "load": load,
                "batch": (med(mb.batch), med(ml.batch), med(a / b for a, b in zip(mb.batch, ml.batch, strict=True))),
                "step": (med(mb.step), med(ml.step), med(a / b for a, b in zip(mb.step, ml.step, strict=True))),
                "cpu": (med(mb.batch_cpu), med(ml.batch_cpu), med(mb.step_cpu), med(ml.step_cpu)),
            }
            table.append(row)
            print(f"  log-batch {row['batch'][0]:,.0f} vs {row['batch'][1]:,.0f} pts/s = {row['batch'][2]:.1f}x; "
                  f"log-metric {row['step'][0]:,.0f} vs {row['step'][1]:,.0f} req/s = {row['step'][2]:.1f}x; "
                  f"load {load:.1f}", flush=True)
        if not args.no_explain:
            print(f"\n== index cost at {rows['mlboard']:,} points", flush=True)
            index_cost(mb, new_runs(mb, experiments["mlboard"], 1)[0])

    print("\n| stored points (mlboard / mlflow) | log-batch pts/s mlboard | mlflow | ratio | "
          "log-metric req/s mlboard | mlflow | ratio | load avg |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in table:
        (bm, bf, br), (sm, sf, sr) = row["batch"], row["step"]
        print(f"| {row['rows']['mlboard']:,} / {row['rows']['mlflow']:,} | {bm:,.0f} | {bf:,.0f} | {br:.1f}x "
              f"| {sm:,.0f} | {sf:,.0f} | {sr:.1f}x | {row['load']:.1f} |")
    print("\n| stored points | CPU ms / 1000 pts (log-batch) mlboard | mlflow | CPU ms / request (log-metric) mlboard "
          "| mlflow |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in table:
        print(f"| {row['size']:,} | " + " | ".join(f"{x:.1f}" for x in row["cpu"]) + " |")
    if len(table) > 1:
        first, last = table[0], table[-1]
        print(f"\nrate at {last['size']:,} / at {first['size']:,}: mlboard log-batch "
              f"{last['batch'][0] / first['batch'][0]:.2f}, log-metric {last['step'][0] / first['step'][0]:.2f}; "
              f"mlflow log-batch {last['batch'][1] / first['batch'][1]:.2f}, "
              f"log-metric {last['step'][1] / first['step'][1]:.2f}")
    print("(ratio = median of the round-by-round ratios; CPU = server processes + their PostgreSQL backends, "
          "less the idle rate)")
    print("stored once check:", "ok" if not problems else "FAILED")
    for problem in problems:
        print("  ", problem)
    if not args.keep:
        for name in ("mlboard_scale", "mlflow_scale"):
            drop_database(f"{DB_PREFIX}{name}")
    shutil.rmtree(logs / "mlartifacts", ignore_errors=True)
    print(f"server logs: {logs}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
