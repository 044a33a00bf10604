"""The runs list at 25k to 100k runs: sorted by a metric, newest first, deep keyset pages, the metric-key
list and the count, plus MLflow search_runs ordered by a metric through mlboard's MLflow API.

Each size gets its own fresh PostgreSQL database; runs (with 3 latest metrics each, 2% without
val_auc) are loaded with generate_series, then ANALYZE. Times are medians of 5 through Django's
test client (DEBUG off).

    .venv/bin/python tests/benchmarks/runs_list.py --sizes 25000,50000,100000
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
os.environ.setdefault("SECURE_COOKIES", "0")

from _bootstrap import TMP  # noqa: F401  (sets up Django)
from _scaling import emit, print_growth, run_sizes
from django.core.management import call_command
from django.db import connection
from django.test import Client

from experiments.models import Role, TrackingExperiment, User
from experiments.selectors.runs import team_metric_keys
from experiments.services.boards import membership_set, team_create
from experiments.services.tokens import token_create


def timed(fn, repeat: int = 5):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, result


def main(n_runs: int) -> None:
    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench", password="pw-bench-1")
    team = team_create(name="Bench", slug="bench")
    membership_set(team=team, user=user, role=Role.MANAGER)
    experiment = TrackingExperiment.objects.create(team=team, name="bench")
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO experiments_run (team_id, experiment_id, source, external_id, name, status, start_time, "
            "end_time, user_name, tags, code_version, data_version, environment, trigger, artifact_uri, "
            "lifecycle_stage, created_at, updated_at) "
            "SELECT %s, %s, 'mlboard', md5(g::text), 'run-' || g, 'FINISHED', "
            "now() - g * interval '1 minute', now() - g * interval '1 minute' + interval '30 minutes', 'bench', "
            "'{}', '', '', '{}', 'manual', '', 'active', now(), now() FROM generate_series(1, %s) g",
            [team.pk, experiment.pk, n_runs],
        )
        cursor.execute(
            "INSERT INTO experiments_latestmetric (run_id, key, value, is_nan, step, timestamp) "
            "SELECT r.id, k.key, random(), false, 100, 1700000000000 FROM experiments_run r "
            "CROSS JOIN (VALUES ('val_auc'), ('train_loss'), ('lr')) AS k(key) "
            "WHERE r.team_id = %s AND NOT (k.key = 'val_auc' AND r.id %% 50 = 0)",
            [team.pk],
        )
        cursor.execute("VACUUM ANALYZE experiments_run")
        cursor.execute("VACUUM ANALYZE experiments_latestmetric")
    print(f"loaded {n_runs:,} runs in {time.perf_counter() - t0:.1f}s")

    client = Client()
    client.force_login(user)
    url = f"/teams/{team.slug}/runs/"
    times: dict[str, float] = {}
    for label, query in (("newest first", {}), ("by -m:val_auc", {"sort": "-m:val_auc"}),
                         ("by m:val_auc", {"sort": "m:val_auc"})):
        client.get(url, query)
        ms, response = timed(lambda q=query: client.get(url, q))
        assert response.status_code == 200
        times[f"runs page {label}"] = ms
        # 20 pages deep through the keyset token.
        page = response
        for _ in range(20):
            token = page.content.decode().split("after=", 1)[1].split('"', 1)[0]
            page = client.get(url, {**query, "after": token.replace("%3D", "=")})
        deep = page.content.decode().split("after=", 1)[1].split('"', 1)[0].replace("%3D", "=")
        ms, _ = timed(lambda q=query, d=deep: client.get(url, {**q, "after": d}))
        times[f"runs page {label}, page 22"] = ms
    ms, keys = timed(lambda: team_metric_keys(team=team))
    times["metric keys"] = ms
    token = token_create(user=user, team=team, name="bench")[1]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    body = {"experiment_ids": [str(experiment.pk)], "max_results": 100, "order_by": ["metrics.val_auc DESC"]}
    api.post("/mlflow/api/2.0/mlflow/runs/search", body, content_type="application/json")
    ms, response = timed(lambda: api.post("/mlflow/api/2.0/mlflow/runs/search", body,
                                          content_type="application/json"))
    assert response.status_code == 200, response.content[:300]
    times["mlflow search_runs by metric (100)"] = ms
    for name, value in times.items():
        print(f"  {name:<40} {value:8.1f} ms")
    print(f"  metric keys: {keys}")
    emit({"runs": n_runs, "times": times})


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--sizes":
        sizes = [int(x) for x in sys.argv[2].split(",")]
        print_growth(sizes, run_sizes(__file__, sizes, "mlboard_scale_bench_runs"), label="runs")
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
