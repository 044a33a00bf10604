"""Teamwork read paths at N, 2N and 4N rows: global search (PostgreSQL full-text search, icontains on
SQLite), the team leaderboard and the notification list. Prints medians and the growth exponent.

    .venv/bin/python tests/benchmarks/teamwork.py [N]                       # SQLite
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_tw .venv/bin/python tests/benchmarks/teamwork.py 2000
"""

from __future__ import annotations

import statistics
import sys
import time

import _bootstrap  # noqa: F401 - sets up Django first
from _scaling import exponent
from django.core.management import call_command
from django.db import connection

from experiments.models import (
    Card,
    CardKind,
    Comment,
    LatestMetric,
    Notification,
    NotificationKind,
    Param,
    Run,
    User,
)
from experiments.selectors.insights import team_leaderboard
from experiments.selectors.notifications import notifications_for
from experiments.selectors.search import search_everything
from experiments.services.boards import board_create, membership_set, team_create

WORDS = "tenure churn calibration isotonic gbm xgboost features buckets leakage drift seeds folds".split()


def add_rows(team, board, user, start: int, count: int) -> None:
    column = board.columns.order_by("position").first()
    cards = [
        Card(board=board, column=column, kind=CardKind.HYPOTHESIS, number=start + i, key=f"B-{start + i}",
             title=f"{WORDS[i % len(WORDS)]} idea {start + i}",
             statement=f"Using {WORDS[(i + 3) % len(WORDS)]} lifts AUC", position=float(start + i))
        for i in range(count)
    ]
    Card.objects.bulk_create(cards)
    runs = Run.objects.bulk_create(
        [Run(team=team, external_id=f"r{start + i}", name=f"{WORDS[i % len(WORDS)]}-run-{start + i}",
             status="FINISHED") for i in range(count)]
    )
    Param.objects.bulk_create(
        [Param(run=r, key="lr", value=str((i % 5) / 100)) for i, r in enumerate(runs)]
        + [Param(run=r, key="seed", value=str(i % 3)) for i, r in enumerate(runs)]
    )
    LatestMetric.objects.bulk_create(
        [LatestMetric(run=r, key="val_auc", value=0.5 + (i % 97) / 200, step=1, timestamp=1)
         for i, r in enumerate(runs)]
    )
    saved = Card.objects.filter(board=board, number__gte=start, number__lt=start + count)
    Comment.objects.bulk_create(
        [Comment(team=team, card=c, author=user, body=f"{WORDS[i % len(WORDS)]} looked odd on fold {i}")
         for i, c in enumerate(saved)]
    )
    Notification.objects.bulk_create(
        [Notification(user=user, team=team, kind=NotificationKind.COMMENT, text=f"n{start + i}",
                      dedupe_key=f"b{start + i}") for i in range(count)]
    )


def median_ms(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench", password="x")
    team = team_create(name="Bench", slug="bench")
    membership_set(team=team, user=user, role="member")
    board = board_create(team=team, name="Bench", key="B")
    sizes, results = [], {"search": [], "leaderboard": [], "notifications": []}
    total = 0
    for size in (n, 2 * n, 4 * n):
        add_rows(team, board, user, total + 1, size - total)
        total = size
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        sizes.append(size)
        results["search"].append(median_ms(lambda: search_everything(user=user, text="isotonic")))
        results["leaderboard"].append(
            median_ms(lambda: team_leaderboard(team=team, metric="val_auc", group_by=["lr"]))
        )
        results["notifications"].append(
            median_ms(lambda: list(notifications_for(user=user).object_list))
        )
    print(f"database: {connection.vendor}; rows per kind: {sizes}")
    print(f"{'read':<14}" + "".join(f"{s:>10}" for s in sizes) + "  exponent")
    for name, values in results.items():
        exp = exponent(sizes, values)
        print(f"{name:<14}" + "".join(f"{v:>8.1f}ms" for v in values) + f"  {exp:.2f}" if exp is not None else "")


if __name__ == "__main__":
    main()
