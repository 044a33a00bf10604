"""Cost of the run views with long metric series: downsampling, chart JSON and page renders.

Bulk-loads runs with long metric series into a throw-away SQLite database (or DATABASE_URL if
set), links them to an experiment card, then times:
- pure-Python downsampling of a series of N points to 1000,
- the card chart endpoint (query + downsample + Plotly figure + JSON) for several long series,
- the card page and the runs list page renders through Django's test client,
and prints response sizes and query counts.

    .venv/bin/python tests/benchmarks/run_charts.py [points_per_series] [runs]
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time

from _bootstrap import TMP  # noqa: F401  (sets up Django)
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from experiments.models import LatestMetric, Metric, RunStatus, User
from experiments.selectors.metrics import downsample
from experiments.services.boards import board_create, team_create
from experiments.services.cards import card_create
from experiments.services.runs import card_link_run, run_create


def timed(fn, repeat: int = 5) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(points: int, n_runs: int) -> None:
    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench", password="x")
    team = team_create(name="Bench", slug="bench", owner=user)
    board = board_create(team=team, name="Bench", key="B")
    hyp = card_create(board=board, kind="hypothesis", title="H", actor=user)
    exp = card_create(board=board, kind="experiment", title="E", actor=user, parent=hyp)
    rng = random.Random(1)

    load_start = time.perf_counter()
    for r in range(n_runs):
        run = run_create(team=team, user=user, name=f"run-{r}", status=RunStatus.RUNNING, params={"lr": r})
        rows = [
            Metric(run=run, key="loss", value=math.exp(-i / points * 4) + rng.gauss(0, 0.01), step=i,
                   timestamp=1_700_000_000_000 + i)
            for i in range(points)
        ]
        Metric.objects.bulk_create(rows, batch_size=5000)
        LatestMetric.objects.create(run=run, key="loss", value=rows[-1].value, step=points - 1,
                                    timestamp=rows[-1].timestamp)
        card_link_run(card=exp, run=run, actor=user)
    print(f"loaded {n_runs} runs x {points:,} points in {time.perf_counter() - load_start:.1f}s")

    values = [math.sin(i / 100) for i in range(points)]
    steps = list(range(points))
    seconds, out = timed(lambda: downsample(steps, values))
    print(f"downsample {points:,} -> {len(out[0])} points: {seconds * 1000:.1f} ms")

    client = Client()
    client.force_login(user)
    chart_url = f"/cards/{exp.pk}/metrics.json?key=loss"
    seconds, response = timed(lambda: client.get(chart_url), repeat=3)
    with CaptureQueriesContext(connection) as ctx:
        client.get(chart_url)
    total = n_runs * points
    print(
        f"card chart JSON ({n_runs} series, {total:,} stored points): {seconds * 1000:.0f} ms, "
        f"{len(response.content) / 1024:.0f} KiB, {len(ctx.captured_queries)} queries"
    )
    for label, url in (("card page", f"/cards/{exp.pk}/"), ("runs list", f"/teams/{team.slug}/runs/")):
        seconds, response = timed(lambda url=url: client.get(url))
        with CaptureQueriesContext(connection) as ctx:
            client.get(url)
        print(f"{label}: {seconds * 1000:.0f} ms, {len(response.content) / 1024:.0f} KiB, "
              f"{len(ctx.captured_queries)} queries")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000, int(sys.argv[2]) if len(sys.argv) > 2 else 5)
