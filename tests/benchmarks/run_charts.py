"""Cost of the run views with long metric series: downsampling, chart JSON and page renders.

Bulk-loads runs with long metric series into a throw-away SQLite database (or DATABASE_URL if
set), links them to an experiment card, then times:
- pure-Python downsampling of a series of N points to 1000,
- the card chart endpoint (query + downsample + Plotly figure + JSON) for several long series,
- the card page and the runs list page renders through Django's test client,
and prints response sizes and query counts.

    .venv/bin/python tests/benchmarks/run_charts.py [points_per_series] [runs]

Database downsampling at scale (PostgreSQL; each size on its own fresh database, points loaded
with generate_series, spikes at irregular steps, chart rollups built by the backfill
(`metric_blocks_rebuild`, as `manage.py metric_blocks_backfill`), then VACUUM ANALYZE):

    .venv/bin/python tests/benchmarks/run_charts.py --db 1000000,2500000,5000000,10000000  # one series
    .venv/bin/python tests/benchmarks/run_charts.py --card 50 25000,50000,100000           # 50 runs x N

prints cold (cache version bumped before each call) and cached medians of `metric_series`, the
card chart endpoint, and the worker's RSS growth. BENCH_DB_PREFIX prefixes the databases' names.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import time

from _bootstrap import TMP  # noqa: F401  (sets up Django)
from _scaling import emit, print_growth, run_sizes
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from experiments.models import LatestMetric, Metric, RunStatus, User
from experiments.selectors.metrics import downsample, metric_series, series_version_bump
from experiments.services.boards import board_create, team_create
from experiments.services.cards import card_create
from experiments.services.metric_blocks import metric_blocks_rebuild
from experiments.services.runs import card_link_run, run_create
from experiments.web.run_views import points_per_series

DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "")


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
        metric_blocks_rebuild(run_ids=[run.pk])  # bulk_create goes around the ingest path
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


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def db_main(n_runs: int, points: int) -> None:
    """n_runs series of `points` points each, loaded in SQL; times downsampling in the database."""
    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench", password="x")
    team = team_create(name="Bench", slug="bench", owner=user)
    board = board_create(team=team, name="Bench", key="B")
    hyp = card_create(board=board, kind="hypothesis", title="H", actor=user)
    exp = card_create(board=board, kind="experiment", title="E", actor=user, parent=hyp)
    runs = []
    for r in range(n_runs):
        run = run_create(team=team, user=user, name=f"run-{r}", status=RunStatus.RUNNING)
        card_link_run(card=exp, run=run, actor=user)
        runs.append(run)
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        # Irregular spikes (every 99,991st step, offset per run) so a bucket grid never lines up with them.
        cursor.execute(
            "INSERT INTO experiments_metric (run_id, key, value, is_nan, step, timestamp) "
            "SELECT r, 'loss', CASE WHEN (g + r) %% 99991 = 4321 THEN 100.0 "
            "ELSE exp(-g::float8 / %s * 4) + random() * 0.01 END, false, g, 1700000000000 + g "
            "FROM unnest(%s::bigint[]) AS r, generate_series(0, %s - 1) AS g",
            [points, [run.pk for run in runs], points],
        )
        cursor.execute(
            "INSERT INTO experiments_latestmetric (run_id, key, value, is_nan, step, timestamp) "
            "SELECT r, 'loss', 0.0, false, %s - 1, 1700000000000 + %s - 1 FROM unnest(%s::bigint[]) AS r",
            [points, points, [run.pk for run in runs]],
        )
    total = n_runs * points
    print(f"loaded {n_runs} runs x {points:,} points ({total:,}) in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    blocks = metric_blocks_rebuild()
    print(f"backfilled {blocks:,} metric blocks in {time.perf_counter() - t0:.1f}s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE experiments_metric")
        cursor.execute("VACUUM ANALYZE experiments_metricblock")
        cursor.execute("ANALYZE")

    budget = points_per_series(n_runs)  # what the card chart endpoint asks for
    expected_spikes = sum(len(range((4321 - run.pk) % 99991, points, 99991)) for run in runs)

    def cold():
        for run in runs:
            series_version_bump(run.pk)
        return metric_series(runs=runs, key="loss", max_points=budget)

    client = Client()
    client.force_login(user)
    chart_url = f"/cards/{exp.pk}/metrics.json?key=loss"
    client.get(chart_url)  # warm-up: imports (Plotly) and connection setup are not growth with the data
    rss0 = rss_mib()
    seconds_cold, series = timed(cold, repeat=5)
    rss1 = rss_mib()
    spikes = sum(1 for s in series for v in s.values if v == 100.0)
    seconds_warm, _ = timed(lambda: metric_series(runs=runs, key="loss", max_points=budget))

    def endpoint_cold():
        for run in runs:
            series_version_bump(run.pk)
        return client.get(chart_url)

    seconds_endpoint, response = timed(endpoint_cold, repeat=3)
    rss1 = max(rss1, rss_mib())  # whole measured phase: cold, cached and endpoint calls
    print(f"metric_series cold {seconds_cold * 1000:.0f} ms, cached {seconds_warm * 1000:.1f} ms; "
          f"{sum(len(s.steps) for s in series):,} points drawn, {spikes} of {expected_spikes} spikes kept; "
          f"card chart endpoint cold {seconds_endpoint * 1000:.0f} ms ({len(response.content) / 1024:.0f} KiB); "
          f"RSS {rss0:.0f} -> {rss1:.0f} MiB (+{rss1 - rss0:.1f})")
    emit({"points": total, "times": {"metric_series cold": seconds_cold * 1000, "metric_series cached":
          seconds_warm * 1000, "card chart endpoint cold": seconds_endpoint * 1000},
          "rss_growth_mib": rss1 - rss0})


def print_rss(sizes: list[int], results: list[dict]) -> None:
    pairs = zip(sizes, results, strict=True)
    print("worker RSS growth: " + ", ".join(f"{size:,}: {r['rss_growth_mib']:+.1f} MiB" for size, r in pairs))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--db":
        sizes = [int(x) for x in sys.argv[2].split(",")]
        results = run_sizes(__file__, sizes, f"{DB_PREFIX}mlboard_scale_bench_charts", ["--child"])
        print_growth(sizes, results, label="points")
        print_rss(sizes, results)
    elif len(sys.argv) > 2 and sys.argv[2] == "--child":
        db_main(1, int(sys.argv[1]))
    elif len(sys.argv) > 3 and sys.argv[1] == "--card":
        sizes = [int(x) for x in sys.argv[3].split(",")]  # points per run
        results = run_sizes(__file__, sizes, f"{DB_PREFIX}mlboard_scale_bench_card", ["--card-child", sys.argv[2]])
        print_growth(sizes, results, label="pts/run")
        print_rss(sizes, results)
    elif len(sys.argv) > 3 and sys.argv[2] == "--card-child":
        db_main(int(sys.argv[3]), int(sys.argv[1]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000, int(sys.argv[2]) if len(sys.argv) > 2 else 5)
