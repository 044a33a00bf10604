"""Load: concurrent clients for a fixed time against gunicorn (started here, on 127.0.0.1) on the board page
and on MLflow's runs/log-batch; prints error rate, p50 and p95 per endpoint. Goal: 0 errors.

PostgreSQL: a private cluster (initdb into /tmp) unless --database-url names one (created, migrated and
seeded with the demo team if needed).

    python tests/benchmarks/load.py                       # 20 clients (10 board, 10 log-batch), 60 s
    python tests/benchmarks/load.py --clients 4 --seconds 10 --database-url postgres://postgres@127.0.0.1/mlboard_x
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import PrivatePostgres, free_port, gunicorn, login, seed


def ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = f"host={parts.hostname or '127.0.0.1'} port={parts.port or 5432} user={parts.username or 'postgres'}"
    with psycopg.connect(f"{admin} dbname=postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: dict[str, list[float]] = {}
        self.errors: dict[str, list[str]] = {}

    def add(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.samples.setdefault(kind, []).append(seconds)
            if error:
                self.errors.setdefault(kind, []).append(error)


def board_client(base: str, board: int, cookies: dict, ready: threading.Barrier, stop: threading.Event,
                 stats: Stats) -> None:
    session = requests.Session()
    session.trust_env = False
    session.cookies.update(cookies)  # one login (password hashing is deliberately slow), shared
    url = f"{base}/boards/{board}/"
    ready.wait()
    while not stop.is_set():
        started = time.perf_counter()
        error = None
        try:
            response = session.get(url, timeout=60)
            if response.status_code != 200:
                error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            error = type(exc).__name__
        stats.add("board page", time.perf_counter() - started, error)


def log_batch_client(base: str, token: str, experiment_id: str, index: int, ready: threading.Barrier,
                     stop: threading.Event, stats: Stats) -> None:
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {token}"
    api = f"{base}/mlflow/api/2.0/mlflow"
    now = int(time.time() * 1000)
    run = session.post(f"{api}/runs/create", json={"experiment_id": experiment_id, "start_time": now,
                                                   "run_name": f"load-{index}"}, timeout=60)
    run.raise_for_status()
    run_id = run.json()["run"]["info"]["run_id"]
    step = 0
    ready.wait()
    while not stop.is_set():
        metrics = [{"key": f"m{k}", "value": 1.0 / (step + 1), "timestamp": now + step, "step": step + i}
                   for i in range(10) for k in range(5)]
        step += 10
        started = time.perf_counter()
        error = None
        try:
            response = session.post(f"{api}/runs/log-batch", json={"run_id": run_id, "metrics": metrics}, timeout=60)
            if response.status_code != 200:
                error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            error = type(exc).__name__
        stats.add("log-batch (50 points)", time.perf_counter() - started, error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20, help="half on the board page, half on log-batch")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    db = None
    if args.database_url:
        database_url = args.database_url
        ensure_database(database_url)
    else:
        db = PrivatePostgres(free_port())
        db.start()
        database_url = db.url
    try:
        info = seed(database_url)
        with gunicorn(database_url, workers=args.workers, threads=args.threads, DEBUG="0",
                      SECRET_KEY="load-benchmark", ALLOWED_HOSTS="127.0.0.1", SECURE_COOKIES="0") as base:
            api = requests.Session()
            api.trust_env = False
            created = api.post(f"{base}/mlflow/api/2.0/mlflow/experiments/create",
                               json={"name": f"load-{int(time.time())}"},
                               headers={"Authorization": f"Bearer {info['token']}"}, timeout=60)
            created.raise_for_status()
            experiment_id = created.json()["experiment_id"]
            stats, stop = Stats(), threading.Event()
            ready = threading.Barrier(args.clients + 1)
            cookies = dict(login(base).cookies)
            boards = args.clients // 2
            threads = [threading.Thread(target=board_client, args=(base, info["board"], cookies, ready, stop, stats))
                       for _ in range(boards)]
            threads += [threading.Thread(target=log_batch_client,
                                         args=(base, info["token"], experiment_id, i, ready, stop, stats))
                        for i in range(args.clients - boards)]
            for t in threads:
                t.start()
            ready.wait(120)  # every client set up (runs created); the clock starts now
            started = time.monotonic()
            time.sleep(args.seconds)
            stop.set()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
    finally:
        if db is not None:
            db.stop()

    print(f"{args.clients} clients for {args.seconds:g} s against gunicorn ({args.workers} workers x "
          f"{args.threads} threads, DEBUG=0) on PostgreSQL")
    print(f"{'endpoint':<24} {'requests':>8} {'errors':>6} {'error rate':>10} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8}")
    total = errors = 0
    for kind, samples in stats.samples.items():
        failed = stats.errors.get(kind, [])
        total, errors = total + len(samples), errors + len(failed)
        print(f"{kind:<24} {len(samples):>8} {len(failed):>6} {len(failed) / len(samples):>10.2%} "
              f"{len(samples) / elapsed:>7.1f} {percentile(samples, 0.5) * 1000:>8.0f} "
              f"{percentile(samples, 0.95) * 1000:>8.0f}")
        if failed:
            print(f"  errors: {statistics.multimode(failed)} ...")
    print(f"total: {total} requests, {errors} errors ({errors / max(total, 1):.2%})")


if __name__ == "__main__":
    main()
