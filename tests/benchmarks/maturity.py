"""Maturity report cost as history grows: N, 2N and 4N days of daily iterations (91, 182, 364).

For each size, on a flushed database (throw-away SQLite, or DATABASE_URL if set): bulk-creates the
daily iterations, each day's hypotheses with an experiment, runs with params and metrics linked to
the experiment (the usual set-up: the hypothesis gets its evidence through its experiment), decided
verdicts and nightly snapshots. Then times the evidence computation (the fixed 90-day window, which
must stay flat as history grows, and the whole history, which must grow linearly), the full report,
and the maturity pages through Django's test client, printing medians, query counts and the growth
exponent k of time ~ N^k between N and 4N (1 = linear, 0 = flat).

    .venv/bin/python tests/benchmarks/maturity.py [runs_per_day] [base_days]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mlboard_maturity_bench .venv/bin/python tests/benchmarks/maturity.py
"""

from __future__ import annotations

import datetime as dt
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
from django.utils import timezone

from experiments import maturity as mm
from experiments.models import (
    Card,
    CardKind,
    CardRun,
    Column,
    Iteration,
    LatestMetric,
    MaturityAssessment,
    MaturitySnapshot,
    Param,
    Run,
    User,
)
from experiments.selectors.maturity import maturity_evidence, maturity_report
from experiments.services.boards import board_create, team_create
from experiments.services.maturity import maturity_snapshot_take

HYPOTHESES_PER_DAY = 2


def build(runs_per_day: int, days: int) -> tuple[User, object]:
    rnd = random.Random(7)
    user = User.objects.create_user("bench", password="x")
    team = team_create(name="Bench", slug="bench", owner=user)
    board = board_create(team=team, name="Churn", key="CHURN")
    done = Column.objects.get(board=board, stage="done")
    now = timezone.now()
    start = now - dt.timedelta(days=days)
    Iteration.objects.bulk_create(
        Iteration(team=team, name=f"Day {d + 1}", start=start + dt.timedelta(days=d),
                  end=start + dt.timedelta(days=d + 1), state="closed")
        for d in range(days)
    )
    cards: list[Card] = []
    number = 0
    for d in range(days):
        day = start + dt.timedelta(days=d)
        for h in range(HYPOTHESES_PER_DAY):
            number += 1
            cards.append(Card(board=board, column=done, kind=CardKind.HYPOTHESIS, number=number, key=f"CHURN-{number}",
                              title=f"H{number}", metric_key="auc", direction="maximize", threshold=0.8,
                              criteria_set_at=day if h else day + dt.timedelta(hours=3), created_at=day,
                              verdict="supported", decided_at=day + dt.timedelta(hours=rnd.choice((14, 20, 40)))))
    Card.objects.bulk_create(cards, batch_size=500)
    hyps = list(Card.objects.filter(board=board, kind=CardKind.HYPOTHESIS).order_by("number"))
    exps = []
    for hyp in hyps:
        number += 1
        exps.append(Card(board=board, column=done, kind=CardKind.EXPERIMENT, number=number, key=f"CHURN-{number}",
                         title=f"E{number}", parent=hyp, created_at=hyp.created_at,
                         baseline_value=0.7 if number % 3 else None))
    Card.objects.bulk_create(exps, batch_size=500)
    exps = list(Card.objects.filter(board=board, kind=CardKind.EXPERIMENT).order_by("number"))

    runs = []
    per_hyp = max(1, runs_per_day // HYPOTHESES_PER_DAY)
    for i, hyp in enumerate(hyps):
        for j in range(per_hyp):
            t = hyp.created_at + dt.timedelta(hours=1 + j)
            runs.append(Run(team=team, external_id=f"r{i}-{j}", status="FINISHED", start_time=t,
                            end_time=t + dt.timedelta(hours=2), code_version=f"{i:07x}" if j % 5 else "",
                            data_version=f"v{i // 30}", seed=j % 3 if j % 4 else None,
                            environment={"mlboard.env.image": "sha256:abc"} if j % 2 else {},
                            trigger=("scheduled", "ci", "manual")[j % 3], created_at=t))
    Run.objects.bulk_create(runs, batch_size=1000)
    run_rows = list(Run.objects.filter(team=team).order_by("pk").values_list("pk", "external_id"))
    Param.objects.bulk_create(
        (Param(run_id=pk, key=k, value=str(v)) for pk, ext in run_rows
         for k, v in (("lr", 0.01), ("depth", int(ext.split("-")[1]) % 2), ("model", "gbm"), ("n", 100),
                      ("features", "v2"), ("fold", 0))),
        batch_size=2000,
    )
    LatestMetric.objects.bulk_create(
        (LatestMetric(run_id=pk, key=k, value=0.8 + rnd.random() * 0.001, timestamp=0) for pk, _ in run_rows
         for k in ("auc", "loss", "f1")),
        batch_size=2000,
    )
    links = []
    by_ext = dict((ext, pk) for pk, ext in run_rows)
    for i, exp in enumerate(exps):
        for j in range(per_hyp):
            links.append(CardRun(card_id=exp.pk, run_id=by_ext[f"r{i}-{j}"]))
    CardRun.objects.bulk_create(links, batch_size=2000)
    answers = {s: {a: rnd.randint(2, 5) for a in mm.ATTRIBUTE_KEYS} for s in mm.STAGE_KEYS}
    MaturityAssessment.objects.create(team=team, respondent=user, answers=answers)
    MaturitySnapshot.objects.bulk_create(
        MaturitySnapshot(team=team, date=(now - dt.timedelta(days=d)).date(),
                         data={"evidence_index": 2 + d / 365, "self_index": 3.5, "google_level": d % 2,
                               "azure_level": d % 3, "gaps": 3, "respondents": 1})
        for d in range(1, days + 1)
    )
    print(f"data: {len(hyps)} hypotheses, {len(exps)} experiments, {len(run_rows)} runs, "
          f"{Param.objects.count()} params, {LatestMetric.objects.count()} latest metrics, {len(links)} links, "
          f"{days} iterations, {days} snapshots")
    return user, team


def timed(fn, repeat: int = 5) -> tuple[float, int]:
    fn()  # warm caches
    with CaptureQueriesContext(connection) as ctx:
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), len(ctx.captured_queries)


def measure(runs_per_day: int, days: int) -> dict[str, tuple[float, int]]:
    call_command("flush", interactive=False, verbosity=0)
    t0 = time.perf_counter()
    user, team = build(runs_per_day, days)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # fresh bulk-loaded tables: give the planner statistics
            cursor.execute("ANALYZE")
    print(f"build: {time.perf_counter() - t0:.1f}s on {connection.vendor}")
    client = Client()
    client.force_login(user)

    def page(name: str):
        def get():
            response = client.get(f"/teams/bench/reports/maturity/{name}")
            assert response.status_code == 200, response.status_code
        return get

    results = {
        "evidence, 90-day window": timed(lambda: maturity_evidence(team=team)),
        "evidence, whole history": timed(lambda: maturity_evidence(team=team, window_days=days + 1)),
        "report (evidence + self + gaps + levels)": timed(lambda: maturity_report(team=team)),
        "snapshot task body (idempotent upsert)": timed(lambda: maturity_snapshot_take(team=team)),
        "GET overview page": timed(page("")),
        "GET trend page (one snapshot a day)": timed(page("trend/")),
        "GET printable report": timed(page("print/")),
    }
    report = maturity_report(team=team)
    latency = report.evidence.metrics["decision_latency"]
    print(f"evidence index {report.evidence_index}, Google level {report.google.level}, "
          f"Azure level {report.azure.level}, decisions timed in the window {latency.sample} "
          f"(median {latency.display})\n")
    return results


def main(runs_per_day: int, base_days: int) -> None:
    call_command("migrate", verbosity=0)
    sizes = [base_days, 2 * base_days, 4 * base_days]
    by_size = {n: measure(runs_per_day, n) for n in sizes}
    labels = list(by_size[sizes[0]])
    head = " | ".join(f"{n} days" for n in sizes)
    print(f"| measure ({connection.vendor}, {runs_per_day} runs/day) | {head} | k (N→4N) | queries |")
    print("| --- |" + " ---: |" * (len(sizes) + 2))
    for label in labels:
        ms = [by_size[n][label][0] for n in sizes]
        k = math.log(ms[-1] / ms[0]) / math.log(sizes[-1] / sizes[0]) if ms[0] > 0 else float("nan")
        queries = "/".join(str(by_size[n][label][1]) for n in sizes)
        print(f"| {label} | " + " | ".join(f"{m:.1f} ms" for m in ms) + f" | {k:.2f} | {queries} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, int(sys.argv[2]) if len(sys.argv) > 2 else 91)
