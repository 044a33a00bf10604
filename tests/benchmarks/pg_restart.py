"""What a PostgreSQL restart costs: gunicorn with persistent connections, clients on the board page while
a PRIVATE PostgreSQL cluster (initdb into /tmp; never the shared server) restarts with `pg_ctl restart -m fast`.

Counts failed requests after a restart while idle (stale persistent connections) and during/after a
restart under traffic, with DB_CONN_HEALTH_CHECKS off and on, and with the connect retry.

    python tests/benchmarks/pg_restart.py [--port 18510] [--clients 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import PrivatePostgres, gunicorn, login, seed


def measure(db: PrivatePostgres, info: dict, *, health_checks: bool, retry: float, clients: int,
            workers: int) -> dict:
    records: list[tuple[float, float, bool, str]] = []
    lock = threading.Lock()
    stop, paused = threading.Event(), threading.Event()
    with gunicorn(db.url, workers=workers, DB_CONN_MAX_AGE="600", DB_CONNECT_RETRY_SECONDS=str(retry),
                  DB_CONN_HEALTH_CHECKS="1" if health_checks else "0") as base:
        sessions = [login(base) for _ in range(clients)]
        url = f"{base}/boards/{info['board']}/"

        def client(session) -> None:
            while not stop.is_set():
                if paused.is_set():
                    time.sleep(0.05)
                    continue
                started = time.monotonic()
                try:
                    response = session.get(url, timeout=60)
                    ok, why = response.status_code == 200, str(response.status_code)
                except Exception as exc:  # a broken connection counts as a failed request
                    ok, why = False, type(exc).__name__
                with lock:
                    records.append((started, time.monotonic(), ok, why))

        threads = [threading.Thread(target=client, args=(s,)) for s in sessions]
        for t in threads:
            t.start()
        time.sleep(3)  # every worker holds a persistent connection by now
        # 1. A restart while nobody is using the app: what do the next requests see?
        paused.set()
        time.sleep(1.5)
        idle_restart = db.ctl("restart", "-m", "fast")
        idle_done = time.monotonic()
        paused.clear()
        time.sleep(4)
        # 2. A restart under traffic.
        busy_started = time.monotonic()
        busy_restart = db.ctl("restart", "-m", "fast")
        busy_done = time.monotonic()
        time.sleep(4)
        stop.set()
        for t in threads:
            t.join()
    after_idle = [r for r in records if idle_done <= r[0] < busy_started]
    overlapping = [r for r in records if r[0] < busy_done and r[1] > busy_started]
    after_busy = [r for r in records if r[0] >= busy_done]
    failed = lambda rs: sum(not r[2] for r in rs)  # noqa: E731
    return {
        "health_checks": health_checks, "connect_retry_s": retry,
        "restart_s": round(max(idle_restart, busy_restart), 2),
        "idle restart: failed/next requests": f"{failed(after_idle)}/{len(after_idle)}",
        "busy restart: failed/overlapping": f"{failed(overlapping)}/{len(overlapping)}",
        "busy restart: failed/after": f"{failed(after_busy)}/{len(after_busy)}",
        "failure_kinds": sorted({r[3] for r in records if not r[2]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18510)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    db = PrivatePostgres(args.port)
    try:
        db.start()
        info = seed(db.url)
        print(f"private PostgreSQL on 127.0.0.1:{args.port}; gunicorn {args.workers} workers; {args.clients} clients")
        for health_checks, retry in ((False, 0.0), (True, 0.0), (True, 10.0)):
            print(measure(db, info, health_checks=health_checks, retry=retry, clients=args.clients,
                          workers=args.workers), flush=True)
    finally:
        db.stop()


if __name__ == "__main__":
    main()
