"""What a PostgreSQL restart costs: gunicorn with persistent connections, clients on the board page while
a PRIVATE PostgreSQL cluster (initdb into /tmp; never the shared server) restarts with `pg_ctl restart -m fast`.

Counts failed requests during the restart and after it (stale persistent connections), with
DB_CONN_HEALTH_CHECKS off and on.

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


def measure(db: PrivatePostgres, info: dict, *, health_checks: bool, clients: int, workers: int) -> dict:
    records: list[tuple[float, bool, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    with gunicorn(db.url, workers=workers, DB_CONN_MAX_AGE="600",
                  DB_CONN_HEALTH_CHECKS="1" if health_checks else "0") as base:
        sessions = [login(base) for _ in range(clients)]
        url = f"{base}/boards/{info['board']}/"

        def client(session) -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = session.get(url, timeout=30)
                    ok, why = response.status_code == 200, str(response.status_code)
                except Exception as exc:  # a broken connection counts as a failed request
                    ok, why = False, type(exc).__name__
                with lock:
                    records.append((started, ok, why))

        threads = [threading.Thread(target=client, args=(s,)) for s in sessions]
        for t in threads:
            t.start()
        time.sleep(3)  # every worker holds a persistent connection by now
        restart_started = time.monotonic()
        restart_seconds = db.ctl("restart", "-m", "fast")
        restart_done = time.monotonic()
        time.sleep(5)
        stop.set()
        for t in threads:
            t.join()
    during = [r for r in records if restart_started <= r[0] < restart_done]
    after = [r for r in records if r[0] >= restart_done]
    return {
        "health_checks": health_checks,
        "restart_s": round(restart_seconds, 2),
        "requests": len(records),
        "failed_during_restart": sum(not ok for _t, ok, _w in during),
        "requests_during_restart": len(during),
        "failed_after_restart": sum(not ok for _t, ok, _w in after),
        "requests_after_restart": len(after),
        "failure_kinds": sorted({w for _t, ok, w in records if not ok}),
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
        for health_checks in (False, True):
            print(measure(db, info, health_checks=health_checks, clients=args.clients, workers=args.workers))
    finally:
        db.stop()


if __name__ == "__main__":
    main()
