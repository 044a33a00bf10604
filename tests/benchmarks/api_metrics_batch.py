"""Throughput of the REST metric batch endpoint (POST /api/runs/{id}/metrics/) and history reads.

Runs against a throw-away SQLite database (or DATABASE_URL if set) through DRF's test client, so
the figures include parsing, validation, auth-free view code, the service and the database.

    .venv/bin/python tests/benchmarks/api_metrics_batch.py [batches]
"""

from __future__ import annotations

import sys
import time

from _bootstrap import TMP  # noqa: F401  (sets up Django)
from django.core.management import call_command
from rest_framework.test import APIClient

from experiments.models import Metric, User
from experiments.services.boards import team_create
from experiments.services.runs import run_create

BATCH = 1000


def main(batches: int) -> None:
    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench", password="x")
    team = team_create(name="Bench", slug="bench", owner=user)
    run = run_create(team=team, user=user, name="bench")
    client = APIClient()
    client.force_authenticate(user)
    url = f"/api/runs/{run.pk}/metrics/"

    def payload(b: int) -> dict:
        base = b * BATCH
        return {"metrics": [
            {"key": f"m{i % 10}", "value": (base + i) * 1e-3, "step": (base + i) // 10, "timestamp": base + i}
            for i in range(BATCH)
        ]}

    bodies = [payload(b) for b in range(batches)]
    start = time.perf_counter()
    for body in bodies:
        response = client.post(url, body, format="json")
        assert response.status_code == 200, response.content
    elapsed = time.perf_counter() - start
    total = batches * BATCH
    print(f"ingest: {batches} batches x {BATCH} points in {elapsed:.2f}s "
          f"= {elapsed / batches * 1000:.1f} ms/batch, {total / elapsed:,.0f} points/s")

    start = time.perf_counter()
    for body in bodies[:5]:
        assert client.post(url, body, format="json").json()["added"] == 0
    retry = (time.perf_counter() - start) / min(5, batches)
    print(f"retry (idempotent, adds 0): {retry * 1000:.1f} ms/batch; stored points: {Metric.objects.count():,}")

    start = time.perf_counter()
    pages = 0
    next_url: str | None = f"/api/runs/{run.pk}/metrics/history/?key=m0&limit=1000"
    while next_url:
        body = client.get(next_url).json()
        pages += 1
        next_url = body["next"]
    elapsed = time.perf_counter() - start
    print(f"history: {total // 10:,} points of one key in {pages} pages in {elapsed * 1000:.0f} ms "
          f"({elapsed / pages * 1000:.1f} ms/page of 1000)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
