"""The runs list at 25k to 100k runs: sorted by a metric, newest first, deep keyset pages, the metric-key
list and the count, plus MLflow search_runs ordered by a metric, through mlboard's MLflow API and side
by side with a real `mlflow server` holding the same runs.

Each size gets its own fresh PostgreSQL database; runs (3 latest metrics each, 2% without val_auc,
5 params, 2 tags) are loaded with generate_series, then ANALYZE. Page times are medians of 5 through
Django's test client (DEBUG off). For the comparison, mlboard (gunicorn) and `mlflow server` (its
schema created by its first start on a second fresh database, then filled with the same runs and
values by SQL) each run one worker; the search is timed over HTTP in alternating rounds, and both
servers must return the same runs in the same order.

    MLFLOW_BIN=/path/to/mlflow .venv/bin/python tests/benchmarks/runs_list.py --sizes 25000,50000,100000

Without MLFLOW_BIN (or with BENCH_SKIP_MLFLOW=1) the side-by-side part is skipped.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
os.environ.setdefault("SECURE_COOKIES", "0")

from _bootstrap import TMP  # noqa: F401  (sets up Django)
from _scaling import drop_database, emit, fresh_database, print_growth, run_sizes
from _server import ROOT, free_port, process_server
from django.core.management import call_command
from django.db import connection
from django.test import Client

from experiments.models import Role, TrackingExperiment, User
from experiments.selectors.runs import team_metric_keys
from experiments.services.boards import membership_set, team_create
from experiments.services.tokens import token_create

# Same metric values on both servers (val_auc distinct per run, so the order is fully determined).
METRIC_KEYS = "(VALUES ('val_auc', 0), ('train_loss', 1), ('lr', 2)) AS k(key, n)"
METRIC_VALUE = "((r.g * 7919 + k.n * 104729) %% 100003) / 100003.0"
METRIC_PRESENT = "NOT (k.key = 'val_auc' AND r.g %% 50 = 0)"
MLFLOW_BIN = os.environ.get("MLFLOW_BIN", "")
SEARCH_ROUNDS = 7


def timed(fn, repeat: int = 5):
    times, cpu, result = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    LAST_CPU[0] = statistics.median(cpu) * 1000
    return statistics.median(times) * 1000, result


# This process's CPU time in the last timed() call (median): the Python side alone, which a busy
# machine inflates far less than the wall time (that also waits for the database and the scheduler).
LAST_CPU = [0.0]


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
            "'{\"mlflow.user\": \"bench\", \"team\": \"bench\"}', '', '', '{}', 'manual', '', 'active', now(), "
            "now() FROM generate_series(1, %s) g",
            [team.pk, experiment.pk, n_runs],
        )
        cursor.execute(
            "INSERT INTO experiments_latestmetric (run_id, key, value, is_nan, step, timestamp) "
            f"SELECT r.id, k.key, {METRIC_VALUE}, false, 100, 1700000000000 "
            "FROM (SELECT id, substr(name, 5)::int AS g FROM experiments_run WHERE team_id = %s) r "
            f"CROSS JOIN {METRIC_KEYS} WHERE {METRIC_PRESENT}",
            [team.pk],
        )
        cursor.execute(
            "INSERT INTO experiments_param (run_id, key, value) "
            "SELECT r.id, 'p' || p, ((substr(r.name, 5)::int + p) %% 10)::text "
            "FROM experiments_run r CROSS JOIN generate_series(0, 4) p WHERE r.team_id = %s",
            [team.pk],
        )
        for table in ("experiments_run", "experiments_latestmetric", "experiments_param"):
            cursor.execute(f"VACUUM ANALYZE {table}")
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
        times[f"runs page {label}, Python CPU"] = LAST_CPU[0]
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
    if MLFLOW_BIN and os.environ.get("BENCH_SKIP_MLFLOW") != "1":
        times.update(side_by_side(n_runs, token, experiment.pk))
    for name, value in times.items():
        print(f"  {name:<40} {value:8.1f} ms")
    print(f"  metric keys: {keys}")
    emit({"runs": n_runs, "times": times})


def fill_mlflow(database_url: str, n_runs: int) -> int:
    """The same runs, metrics, params and tags in mlflow server's own schema; returns the experiment id."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        experiment_id = conn.execute(
            "INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, last_update_time) "
            "VALUES ('bench', '/tmp/mlflow-bench', 'active', 0, 0) RETURNING experiment_id"
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
            "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
            "SELECT md5(g::text), 'run-' || g, 'LOCAL', '', '', 'bench', 'FINISHED', "
            "(extract(epoch FROM now()) * 1000)::bigint - g::bigint * 60000, "
            "(extract(epoch FROM now()) * 1000)::bigint - g::bigint * 60000 + 1800000, '', 'active', "
            "'/tmp/mlflow-bench/' || md5(g::text), %s FROM generate_series(1, %s) g",
            [experiment_id, n_runs],
        )
        conn.execute(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
            f"SELECT k.key, {METRIC_VALUE}, 1700000000000, 100, false, md5(r.g::text) "
            f"FROM generate_series(1, %s) AS r(g) CROSS JOIN {METRIC_KEYS} WHERE {METRIC_PRESENT}",
            [n_runs],
        )
        conn.execute(
            "INSERT INTO params (key, value, run_uuid) SELECT 'p' || p, ((g + p) %% 10)::text, md5(g::text) "
            "FROM generate_series(1, %s) g CROSS JOIN generate_series(0, 4) p",
            [n_runs],
        )
        conn.execute(
            "INSERT INTO tags (key, value, run_uuid) SELECT t.key, t.value || CASE WHEN t.key = 'mlflow.runName' "
            "THEN g::text ELSE '' END, md5(g::text) FROM generate_series(1, %s) g CROSS JOIN "
            "(VALUES ('mlflow.user', 'bench'), ('team', 'bench'), ('mlflow.runName', 'run-')) AS t(key, value)",
            [n_runs],
        )
        for table in ("runs", "latest_metrics", "params", "tags"):
            conn.execute(f"VACUUM ANALYZE {table}")
    return experiment_id


def side_by_side(n_runs: int, token: str, experiment_id: int) -> dict[str, float]:
    """search_runs ordered by a metric over HTTP: mlboard (gunicorn) vs mlflow server, one worker each."""
    import requests

    logs = Path(tempfile.mkdtemp(prefix="mlboard-runs-bench-"))
    name = f"{os.environ.get('BENCH_DB_PREFIX', 'mlboard_scale_bench')}_mlflow_{n_runs}"
    mlflow_db = fresh_database(name)
    body = {"max_results": 100, "order_by": ["metrics.val_auc DESC"]}
    mlboard_env = {**os.environ, "DEBUG": "0", "LOG_LEVEL": "WARNING", "DB_CONN_MAX_AGE": "600"}
    mlflow_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DJANGO_", "DATABASE_URL"))}
    mlflow_env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    mlboard_port, mlflow_port = free_port(), free_port()
    gunicorn = [sys.executable, "-m", "gunicorn", "mlboard.wsgi", "-b", f"127.0.0.1:{mlboard_port}", "-w", "1",
                "--timeout", "120", "--log-level", "warning"]
    mlflow = [MLFLOW_BIN, "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
              "--backend-store-uri", mlflow_db.replace("postgres://", "postgresql+psycopg2://"),
              "--default-artifact-root", str(logs / "artifacts"),
              "--uvicorn-opts", "--timeout-worker-healthcheck 60"]
    session = requests.Session()
    session.trust_env = False
    try:
        with process_server(cmd=mlflow, env=mlflow_env, cwd=logs, probe=f"http://127.0.0.1:{mlflow_port}/health",
                            log=logs / "mlflow.log"), \
             process_server(cmd=gunicorn, env=mlboard_env, cwd=ROOT,
                            probe=f"http://127.0.0.1:{mlboard_port}/accounts/login/", log=logs / "mlboard.log"):
            mlflow_experiment = fill_mlflow(mlflow_db, n_runs)
            targets = {
                "mlboard": (f"http://127.0.0.1:{mlboard_port}/mlflow/api/2.0/mlflow/runs/search",
                            {**body, "experiment_ids": [str(experiment_id)]}, {"Authorization": f"Bearer {token}"}),
                "mlflow server": (f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/runs/search",
                                  {**body, "experiment_ids": [str(mlflow_experiment)]}, {}),
            }
            samples: dict[str, list[float]] = {name: [] for name in targets}
            pages: dict[str, list[str]] = {}
            for round_number in range(SEARCH_ROUNDS + 1):  # the first round warms both up
                for label, (url, payload, headers) in targets.items():
                    t0 = time.perf_counter()
                    response = session.post(url, json=payload, headers=headers, timeout=120)
                    elapsed = (time.perf_counter() - t0) * 1000
                    assert response.status_code == 200, (label, response.text[:300])
                    pages[label] = [run["info"]["run_name"] for run in response.json()["runs"]]
                    if round_number:
                        samples[label].append(elapsed)
    finally:
        drop_database(name)
    assert len(pages["mlboard"]) == 100 and pages["mlboard"] == pages["mlflow server"], "servers disagree"
    mine, theirs = (statistics.median(samples[label]) for label in targets)
    paired = [a / b for a, b in zip(samples["mlboard"], samples["mlflow server"], strict=True)]
    print(f"  search_runs by metric over HTTP: mlboard {mine:.1f} ms, mlflow server {theirs:.1f} ms, "
          f"ratio {statistics.median(paired):.2f} (round by round: {', '.join(f'{r:.2f}' for r in paired)}); "
          "same 100 runs in the same order")
    return {"HTTP search_runs by metric, mlboard": mine, "HTTP search_runs by metric, mlflow server": theirs}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--sizes":
        sizes = [int(x) for x in sys.argv[2].split(",")]
        prefix = os.environ.get("BENCH_DB_PREFIX", "mlboard_scale_bench")
        results = run_sizes(__file__, sizes, f"{prefix}_runs")
        print_growth(sizes, results, label="runs")
        mine, theirs = "HTTP search_runs by metric, mlboard", "HTTP search_runs by metric, mlflow server"
        if mine in results[0]["times"]:
            ratios = ", ".join(f"{r['runs']:,}: {r['times'][mine] / r['times'][theirs]:.2f}" for r in results)
            print(f"search_runs by metric, mlboard / mlflow server (medians): {ratios}")
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
