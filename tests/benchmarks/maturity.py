"""Maturity report cost for a team with one year of daily iterations.

Builds (bulk_create) 365 daily iterations, each with hypotheses, experiments, runs with params
and metrics, run links and decided verdicts, plus a year of nightly snapshots, on a throw-away
SQLite database (or DATABASE_URL if set). Then times the evidence computation (90-day window and
whole year), the full report, and each maturity page render through Django's test client, and
prints query counts.

    .venv/bin/python tests/benchmarks/maturity.py [runs_per_day]
"""

from __future__ import annotations

import datetime as dt
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

DAYS = 365
HYPOTHESES_PER_DAY = 2


def build(runs_per_day: int) -> tuple[User, object]:
    rnd = random.Random(7)
    user = User.objects.create_user("bench", password="x")
    team = team_create(name="Bench", slug="bench", owner=user)
    board = board_create(team=team, name="Churn", key="CHURN")
    done = Column.objects.get(board=board, stage="done")
    now = timezone.now()
    start = now - dt.timedelta(days=DAYS)
    Iteration.objects.bulk_create(
        Iteration(team=team, name=f"Day {d + 1}", start=start + dt.timedelta(days=d),
                  end=start + dt.timedelta(days=d + 1), state="closed")
        for d in range(DAYS)
    )
    cards: list[Card] = []
    number = 0
    for d in range(DAYS):
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
    for i, (hyp, exp) in enumerate(zip(hyps, exps, strict=True)):
        for j in range(per_hyp):
            links.append(CardRun(card_id=hyp.pk, run_id=by_ext[f"r{i}-{j}"]))
            links.append(CardRun(card_id=exp.pk, run_id=by_ext[f"r{i}-{j}"]))
    CardRun.objects.bulk_create(links, batch_size=2000)
    answers = {s: {a: rnd.randint(2, 5) for a in mm.ATTRIBUTE_KEYS} for s in mm.STAGE_KEYS}
    MaturityAssessment.objects.create(team=team, respondent=user, answers=answers)
    MaturitySnapshot.objects.bulk_create(
        MaturitySnapshot(team=team, date=(now - dt.timedelta(days=d)).date(),
                         data={"evidence_index": 2 + d / 365, "self_index": 3.5, "google_level": d % 2,
                               "azure_level": d % 3, "gaps": 3, "respondents": 1})
        for d in range(1, DAYS + 1)
    )
    print(f"data: {len(hyps)} hypotheses, {len(exps)} experiments, {len(run_rows)} runs, "
          f"{Param.objects.count()} params, {LatestMetric.objects.count()} latest metrics, {len(links)} links, "
          f"{DAYS} iterations, {DAYS} snapshots")
    return user, team


def timed(label: str, fn, repeat: int = 5) -> None:
    fn()  # warm caches
    times = []
    with CaptureQueriesContext(connection) as ctx:
        fn()
    queries = len(ctx.captured_queries)
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    print(f"{label:<42} median {statistics.median(times):8.1f} ms   max {max(times):8.1f} ms   {queries:3d} queries")


def main(runs_per_day: int) -> None:
    call_command("migrate", verbosity=0)
    t0 = time.perf_counter()
    user, team = build(runs_per_day)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # fresh bulk-loaded tables: give the planner statistics
            cursor.execute("ANALYZE")
    print(f"build: {time.perf_counter() - t0:.1f}s on {connection.vendor}\n")
    client = Client()
    client.force_login(user)

    def page(name: str):
        def get():
            response = client.get(f"/teams/bench/reports/maturity/{name}")
            assert response.status_code == 200, response.status_code
        return get

    timed("evidence, 90-day window", lambda: maturity_evidence(team=team))
    timed("evidence, whole year", lambda: maturity_evidence(team=team, window_days=DAYS + 1))
    timed("report (evidence + self + gaps + levels)", lambda: maturity_report(team=team))
    timed("snapshot task body (idempotent upsert)", lambda: maturity_snapshot_take(team=team))
    timed("GET overview page", page(""))
    timed("GET questionnaire page", page("assess/"))
    timed("GET trend page (365 snapshots)", page("trend/"))
    timed("GET printable report", page("print/"))
    report = maturity_report(team=team)
    print(f"\nevidence index {report.evidence_index}, Google level {report.google.level}, "
          f"Azure level {report.azure.level}, {len(report.gaps)} gaps")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
