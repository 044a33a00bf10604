"""Standup cost for a team with a busy night: 10,000 runs over many cards.

Bulk-inserts boards, hypotheses and experiments, 10,000 runs that ended (or are still running)
since 18:00 yesterday with their latest metric and card links, some unlinked runs, stuck cards
and waiting verdict proposals, on a throw-away SQLite database (or DATABASE_URL if set; PostgreSQL
tables are ANALYZEd after the load, as autovacuum would). Then times the standup selector, the full
page through Django's test client, one lazy sparkline and the digest build, and prints query counts
and page size.

    .venv/bin/python tests/benchmarks/standup.py [runs] [cards]
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
from django.utils import timezone

from experiments.models import (
    Board,
    Card,
    CardKind,
    CardRun,
    Column,
    LatestMetric,
    LinkVia,
    Role,
    Run,
    RunStatus,
    Stage,
    StandupDigest,
    User,
    VerdictProposal,
)
from experiments.selectors.standup import standup_overview, standup_window
from experiments.services.boards import board_create, membership_set, team_create
from experiments.services.standup import standup_digest_build

METRIC = "val_auc"
BOARDS = 5


class QueryCounter:
    """Counts queries through an execute wrapper (DEBUG query logs are reset per request)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


def count_queries(fn) -> int:
    counter = QueryCounter()
    with connection.execute_wrapper(counter):
        fn()
    return counter.count


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def seed(n_runs: int, n_cards: int):
    rng = random.Random(7)
    users = [User.objects.create_user(f"user{i}", password="x", email=f"user{i}@example.com") for i in range(8)]
    team = team_create(name="Bench", slug="bench", timezone="Europe/Berlin")
    for i, user in enumerate(users):
        membership_set(team=team, user=user, role=Role.MANAGER if i == 0 else Role.MEMBER)
    boards = [board_create(team=team, name=f"Problem {b}", key=f"P{b}") for b in range(BOARDS)]
    columns = {(c.board_id, c.stage): c for c in Column.objects.filter(board__team=team)}
    now = timezone.now()
    yesterday = now - dt.timedelta(hours=14)

    # Hypotheses, each with one experiment: half of the cards are experiments.
    hyps = []
    per_board = n_cards // 2 // BOARDS
    for board in boards:
        for i in range(per_board):
            hyps.append(Card(
                board=board, column=columns[(board.pk, Stage.RUNNING if i % 10 == 0 else Stage.ANALYZING)],
                kind=CardKind.HYPOTHESIS, number=i * 2 + 1, key=f"{board.key}-{i * 2 + 1}", title=f"Hypothesis {i}",
                owner=users[i % len(users)], metric_key=METRIC, direction="maximize", min_delta=0.01,
                started_at=now - dt.timedelta(hours=40), created_at=now - dt.timedelta(days=3),
            ))
    Card.objects.bulk_create(hyps, batch_size=500)
    hyps = list(Card.objects.filter(board__team=team, kind=CardKind.HYPOTHESIS))
    exps = [
        Card(board_id=h.board_id, column_id=columns[(h.board_id, Stage.RUNNING)].pk, kind=CardKind.EXPERIMENT,
             number=h.number + 1, key=f"{h.key.split('-')[0]}-{h.number + 1}", title=f"Experiment for {h.title}",
             owner=h.owner, parent=h, baseline_value=0.80, started_at=now - dt.timedelta(hours=20))
        for h in hyps
    ]
    Card.objects.bulk_create(exps, batch_size=500)
    exps = list(Card.objects.filter(board__team=team, kind=CardKind.EXPERIMENT))
    Board.objects.filter(team=team).update(next_number=per_board * 2 + 1)

    # Runs: 95% linked to experiments, the rest unlinked; mostly finished overnight.
    runs = []
    for i in range(n_runs):
        roll = rng.random()
        status = RunStatus.FINISHED if roll < 0.85 else RunStatus.FAILED if roll < 0.93 else RunStatus.RUNNING
        end = yesterday + dt.timedelta(minutes=rng.randint(1, 13 * 60))
        runs.append(Run(
            team=team, external_id=f"bench-{i}", name=f"run-{i}", status=status,
            start_time=end - dt.timedelta(hours=2), end_time=None if status == RunStatus.RUNNING else end,
            user=users[i % len(users)], user_name=users[i % len(users)].username, seed=i % 5,
        ))
    Run.objects.bulk_create(runs, batch_size=1000)
    runs = list(Run.objects.filter(team=team).order_by("pk").values_list("pk", "status"))
    LatestMetric.objects.bulk_create(
        [LatestMetric(run_id=pk, key=METRIC, value=0.78 + rng.random() * 0.08, step=10, timestamp=0)
         for pk, status in runs if status == RunStatus.FINISHED],
        batch_size=2000,
    )
    linked = runs[: int(n_runs * 0.95)]
    CardRun.objects.bulk_create(
        [CardRun(card=exps[i % len(exps)], run_id=pk, via=LinkVia.TAG) for i, (pk, _) in enumerate(linked)],
        batch_size=2000,
    )
    VerdictProposal.objects.bulk_create(
        [VerdictProposal(card=h, proposed="supported", stats={"n": 5, "mean": 0.82, "std": 0.01},
                         explanation="Supported: mean above baseline.") for h in hyps[:50]]
    )
    return team, users[0]


def main(n_runs: int, n_cards: int) -> None:
    call_command("migrate", verbosity=0)
    start = time.perf_counter()
    team, user = seed(n_runs, n_cards)
    if connection.vendor == "postgresql":
        # What autovacuum does shortly after a bulk load in production. Without statistics the
        # planner takes the freshly filled tables for empty and nests loops over them (the
        # one-board page took 6 s instead of 0.2 s).
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(f"seeded {Run.objects.count():,} runs, {Card.objects.count():,} cards in {time.perf_counter() - start:.1f}s "
          f"({connection.vendor})")

    window = standup_window(team=team)
    elapsed, data = timed(lambda: standup_overview(team=team, window=window))
    groups = len(data.finished) + len(data.failed) + len(data.running)
    print(f"selector standup_overview: {elapsed * 1000:.0f} ms median of 3 "
          f"({data.counts['finished']:,} finished, {data.counts['failed']:,} failed, {data.counts['running']:,} "
          f"running, {groups:,} card groups, {data.counts['stuck']} stuck, {data.unlinked_total} unlinked)")

    client = Client()
    client.force_login(user)
    url = f"/teams/{team.slug}/standup/"
    client.get(url)
    for label, params in (("first 60 cards per section", {}), ("all cards, ?all=1", {"all": "1"})):
        queries = count_queries(lambda params=params: client.get(url, params))
        elapsed, response = timed(lambda params=params: client.get(url, params))
        assert response.status_code == 200, response.status_code
        print(f"page GET {url} ({label}): {elapsed * 1000:.0f} ms median of 3, {queries} queries, "
              f"{len(response.content) / 1024:.0f} KiB HTML")

    board = Board.objects.filter(team=team).first()
    board_url = f"/teams/{team.slug}/standup/boards/{board.pk}/"
    elapsed, response = timed(lambda: client.get(board_url))
    print(f"page GET one board: {elapsed * 1000:.0f} ms median of 3, {len(response.content) / 1024:.0f} KiB HTML")

    card = Card.objects.filter(board__team=team, kind=CardKind.EXPERIMENT).first()
    spark_url = f"/teams/{team.slug}/standup/cards/{card.pk}/sparkline/"
    queries = count_queries(lambda: client.get(spark_url))
    elapsed, response = timed(lambda: client.get(spark_url), repeat=5)
    print(f"sparkline GET (one card, {len(response.json()['points'])} points): {elapsed * 1000:.1f} ms, "
          f"{queries} queries")

    def build():
        StandupDigest.objects.all().delete()
        return standup_digest_build(team=team, window_end=timezone.now())

    elapsed, digest = timed(build)
    print(f"digest build: {elapsed * 1000:.0f} ms median of 3 "
          f"({len(digest.content['cards']):,} cards, {len(digest.text) / 1024:.0f} KiB text)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000, int(sys.argv[2]) if len(sys.argv) > 2 else 1_000)
