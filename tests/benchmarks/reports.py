"""Velocity and flow reports for a team with one year of daily iterations.

Bulk-inserts 365 daily iterations (the last one still open), about 1,800 hypotheses and
experiments with their full event trails, ~11,000 runs (5 seeds per experiment plus ad-hoc runs,
some failed) with card links, decided verdicts and frozen iteration items, on a throw-away SQLite
database (or DATABASE_URL if set). Then times the velocity and flow selectors for the usual views
(two weeks by day, a quarter by week, the whole year by iteration) and the pages and CSV exports
through Django's test client, printing query counts.

    .venv/bin/python tests/benchmarks/reports.py [days]
    .venv/bin/python tests/benchmarks/reports.py --sizes 91,182,365   # N, 2N, 4N on fresh PostgreSQL databases

With --sizes each size runs in a child process on its own fresh PostgreSQL database
(mlboard_scale_bench_reports_<days>, dropped afterwards; BENCH_DB_PREFIX replaces
mlboard_scale_bench) and a table of selector times with the growth exponent follows.
"""

from __future__ import annotations

import datetime as dt
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
from django.utils import timezone

from experiments.models import (
    Board,
    Card,
    CardEvent,
    CardKind,
    CardRun,
    Column,
    EventKind,
    Iteration,
    IterationItem,
    IterationState,
    LinkVia,
    Role,
    Run,
    RunStatus,
    Stage,
    User,
    VerdictChoice,
    VerdictProposal,
    VerdictStatus,
)
from experiments.selectors.flow import flow_report
from experiments.selectors.velocity import parse_report_params, velocity_report
from experiments.services.boards import board_create, membership_set, team_create

BOARDS = 3
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def timed(fn, repeat: int = 3) -> tuple[float, object, int]:
    times, result, queries = [], None, 0
    cpu = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as ctx:
            start, start_cpu = time.perf_counter(), time.process_time()
            result = fn()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        queries = len(ctx.captured_queries)
    LAST_CPU[0] = statistics.median(cpu)
    return statistics.median(times), result, queries


# This process's CPU time in the last timed() call (median): the Python side alone, which a busy
# machine inflates far less than the wall time (that also waits for the database and the scheduler).
LAST_CPU = [0.0]


class Seeder:
    def __init__(self, days: int) -> None:
        self.rng = random.Random(11)
        self.days = days
        self.now = timezone.now().replace(minute=0, second=0, microsecond=0)
        self.first_day = (self.now - days * DAY).replace(hour=9)  # standup-to-standup iterations
        self.cards: list[Card] = []
        self.events: list[CardEvent] = []
        self.runs: list[Run] = []
        self.links: list[tuple[int, int]] = []  # (card index, run index)
        self.plan: list[tuple[int, int, dt.datetime | None]] = []  # (iteration index, card index, done_at)
        self.proposals: list[tuple[int, str, dt.datetime]] = []

    def seed(self):
        users = [User.objects.create_user(f"user{i}", password="x", email=f"u{i}@example.com") for i in range(6)]
        team = team_create(name="Bench", slug="bench", timezone="Europe/Berlin")
        for i, user in enumerate(users):
            membership_set(team=team, user=user, role=Role.MANAGER if i == 0 else Role.MEMBER)
        self.boards = [board_create(team=team, name=f"Problem {b}", key=f"P{b}") for b in range(BOARDS)]
        self.cols = {(c.board_id, c.stage): c for c in Column.objects.filter(board__team=team)}
        self.numbers = {b.pk: 1 for b in self.boards}
        self.team = team
        for d in range(self.days):
            self._day(d)
        self._write()
        return team

    def _card(self, board: Board, kind: str, created: dt.datetime, parent: int | None) -> int:
        n = self.numbers[board.pk]
        self.numbers[board.pk] += 1
        card = Card(board=board, column=self.cols[(board.pk, Stage.BACKLOG)], kind=kind, number=n,
                    key=f"{board.key}-{n}", title=f"{kind} {n}", created_at=created)
        card._parent_index = parent  # resolved after insert
        card._trail = [(created, "", Stage.BACKLOG)]
        self.cards.append(card)
        return len(self.cards) - 1

    def _go(self, index: int, when: dt.datetime, stage: str) -> bool:
        """Move card `index` to `stage` at `when` unless that is still in the future."""
        if when >= self.now:
            return False
        card = self.cards[index]
        card._trail.append((when, card._trail[-1][2], stage))
        return True

    def _day(self, d: int) -> None:
        rng = self.rng
        day_start = self.first_day + d * DAY
        for _ in range(2):
            board = rng.choice(self.boards)
            hyp = self._card(board, CardKind.HYPOTHESIS, day_start + rng.randint(0, 8) * HOUR, None)
            self._go(hyp, day_start + 9 * HOUR, Stage.READY)
            finished: list[dt.datetime] = []
            for _ in range(rng.choice((1, 1, 2))):
                exp = self._card(board, CardKind.EXPERIMENT, day_start + 9 * HOUR, hyp)
                self._go(exp, day_start + 10 * HOUR, Stage.READY)
                started = day_start + rng.randint(16, 22) * HOUR  # launched in the evening, trains overnight
                if not self._go(exp, started, Stage.RUNNING):
                    continue
                ends = []
                for seed in range(5):
                    end = started + rng.randint(4, 12) * HOUR + seed * 10 * dt.timedelta(minutes=1)
                    status = RunStatus.FINISHED if rng.random() > 0.06 else RunStatus.FAILED
                    if end >= self.now:
                        status, end = RunStatus.RUNNING, None
                    self.runs.append(Run(team=self.team, external_id=f"e{exp}-{seed}", status=status,
                                         start_time=started, end_time=end, name=f"exp{exp}-s{seed}"))
                    self.links.append((exp, len(self.runs) - 1))
                    if end:
                        ends.append(end)
                if not ends or len(ends) < 5:
                    self.plan.append((d, exp, None))
                    continue
                analysing = max(ends) + rng.randint(0, 3) * HOUR
                if not self._go(exp, analysing, Stage.ANALYZING):
                    self.plan.append((d, exp, None))
                    continue
                done = analysing + rng.randint(1, 40) * HOUR
                if self._go(exp, done, Stage.DONE):
                    finished.append(done)
                    self.plan.append((d, exp, done))
                else:
                    self.plan.append((d, exp, None))
            if finished and rng.random() < 0.85:
                decided = max(finished) + rng.randint(1, 20) * HOUR
                if self._go(hyp, decided, Stage.DONE):
                    verdict = rng.choice(VerdictChoice.values)
                    self.proposals.append((hyp, verdict, decided))
        for i in range(rng.randint(2, 8)):  # ad-hoc runs nobody linked to a card
            end = day_start + rng.randint(1, 23) * HOUR
            if end < self.now:
                self.runs.append(Run(team=self.team, external_id=f"adhoc-{d}-{i}", status=RunStatus.FINISHED,
                                     start_time=end - 2 * HOUR, end_time=end))

    def _write(self) -> None:
        for card in self.cards:
            when, _, stage = card._trail[-1]
            card.column = self.cols[(card.board_id, stage)]
            starts = [w for w, _, s in card._trail if s in (Stage.RUNNING, Stage.ANALYZING, Stage.DONE)]
            card.started_at = starts[0] if starts else None
            card.completed_at = when if stage == Stage.DONE else None
        Card.objects.bulk_create(self.cards, batch_size=500)
        for card in self.cards:
            if card._parent_index is not None:
                card.parent_id = self.cards[card._parent_index].pk
        Card.objects.bulk_update([c for c in self.cards if c.parent_id], ["parent"], batch_size=500)
        for b in self.boards:
            Board.objects.filter(pk=b.pk).update(next_number=self.numbers[b.pk])
        events = []
        for card in self.cards:
            for i, (when, from_stage, to_stage) in enumerate(card._trail):
                events.append(CardEvent(
                    card=card, board_id=card.board_id, kind=EventKind.CREATED if i == 0 else EventKind.MOVED,
                    from_column=self.cols[(card.board_id, from_stage)] if from_stage else None,
                    to_column=self.cols[(card.board_id, to_stage)], from_stage=from_stage, to_stage=to_stage,
                    created_at=when,
                ))
        Run.objects.bulk_create(self.runs, batch_size=500)
        CardRun.objects.bulk_create(
            [CardRun(card=self.cards[c], run=self.runs[r], via=LinkVia.TAG) for c, r in self.links], batch_size=500
        )
        for c, r in self.links:
            run = self.runs[r]
            events.append(CardEvent(card=self.cards[c], board_id=self.cards[c].board_id, kind=EventKind.LINKED,
                                    data={"run_id": run.pk}, created_at=run.start_time))
        proposals = []
        for c, verdict, decided in self.proposals:
            card = self.cards[c]
            card.verdict, card.decided_at = verdict, decided
            proposals.append(VerdictProposal(card=card, proposed=verdict, decided=verdict,
                                             status=VerdictStatus.CONFIRMED, created_at=decided - 2 * HOUR,
                                             decided_at=decided))
            events.append(CardEvent(card=card, board_id=card.board_id, kind=EventKind.VERDICT_DECIDED,
                                    data={"verdict": verdict}, created_at=decided))
        Card.objects.bulk_update([self.cards[c] for c, _, _ in self.proposals], ["verdict", "decided_at"])
        VerdictProposal.objects.bulk_create(proposals, batch_size=500)
        CardEvent.objects.bulk_create(events, batch_size=1000)
        self.events = events

        iterations = []
        for d in range(self.days + 1):
            start = self.first_day + d * DAY
            closed = start + DAY <= self.now
            iterations.append(Iteration(
                team=self.team, name=f"Day {start:%a %d %b %Y}", start=start, end=start + DAY,
                state=IterationState.CLOSED if closed else IterationState.ACTIVE,
                closed_at=start + DAY if closed else None,
            ))
        Iteration.objects.bulk_create(iterations)
        items = []
        # Each experiment is committed to the iteration it started in; unfinished ones carry over daily
        # until done (or until today).
        for d, c, done in self.plan:
            card = self.cards[c]
            for k in range(d, self.days + 1):
                it = iterations[k]
                finished_here = done is not None and done < it.end
                if it.state == IterationState.CLOSED:
                    stage = Stage.DONE if finished_here else Stage.ANALYZING
                    items.append(IterationItem(iteration=it, card=card, committed_at=it.start,
                                               completed=finished_here, carried_over=not finished_here,
                                               stage_at_close=stage))
                else:
                    items.append(IterationItem(iteration=it, card=card, committed_at=it.start))
                if finished_here or k - d >= 3:  # dropped after three carry-overs
                    break
        IterationItem.objects.bulk_create(items, batch_size=1000)
        self.items = items
        self.iterations = iterations


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--sizes":
        sizes = [int(x) for x in sys.argv[2].split(",")]
        prefix = os.environ.get("BENCH_DB_PREFIX", "mlboard_scale_bench")
        results = run_sizes(__file__, sizes, f"{prefix}_reports")
        print_growth(sizes, results, label="days")
        return
    days = int(sys.argv[1]) if len(sys.argv) > 1 else 365
    call_command("migrate", verbosity=0)
    t0 = time.perf_counter()
    seeder = Seeder(days)
    team = seeder.seed()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # as autovacuum would shortly after a bulk load
    print(f"Seeded in {time.perf_counter() - t0:.1f}s on {connection.vendor}: {len(seeder.iterations)} iterations, "
          f"{len(seeder.cards)} cards, {len(seeder.events)} events, {len(seeder.runs)} runs, "
          f"{len(seeder.links)} card-run links, {len(seeder.items)} iteration items, "
          f"{len(seeder.proposals)} decided hypotheses")

    today = timezone.localdate()
    views = {
        "2 weeks by day": {"group": "day"},
        "quarter by week": {"group": "week", "from": (today - dt.timedelta(days=90)).isoformat()},
        "year by iteration": {"group": "iteration", "from": (today - dt.timedelta(days=days)).isoformat()},
        "year by day": {"group": "day", "from": (today - dt.timedelta(days=days)).isoformat()},
    }
    kinds = ("work", "hypothesis", "experiment")
    print("\nSelectors (median of 3)")
    times: dict[str, float] = {}
    for label, data in views.items():
        params = parse_report_params(team=team, data=data, kinds=kinds)
        secs, report, queries = timed(lambda p=params: velocity_report(team=team, params=p))
        times[f"velocity {label}"] = secs * 1000
        times[f"velocity {label}, Python CPU"] = LAST_CPU[0] * 1000
        print(f"  velocity {label:<18} {secs * 1000:7.1f} ms  {queries} queries  {len(report.rows):>3} rows, "
              f"{report.totals.runs_finished} runs finished, {report.totals.hypotheses_resolved} resolved")
        secs, fr, queries = timed(lambda p=params: flow_report(team=team, params=p))
        times[f"flow {label}"] = secs * 1000
        times[f"flow {label}, Python CPU"] = LAST_CPU[0] * 1000
        print(f"  flow     {label:<18} {secs * 1000:7.1f} ms  {queries} queries  {len(fr.done)} done, "
              f"{len(fr.in_progress)} in progress, {len(fr.days)} CFD days")

    manager = User.objects.get(username="user0")
    client = Client()
    client.force_login(manager)
    print("\nPages through the test client (median of 3)")
    for name, path in (("velocity", "reports/velocity/"), ("flow", "reports/flow/"),
                       ("velocity.csv", "reports/velocity.csv"), ("flow.csv", "reports/flow.csv")):
        for label in ("2 weeks by day", "year by iteration"):
            data = views[label]
            secs, response, queries = timed(lambda p=path, d=data: client.get(f"/teams/{team.slug}/{p}", d))
            assert response.status_code == 200, response.status_code
            times[f"page {name} {label}"] = secs * 1000
            print(f"  {name:<13} {label:<18} {secs * 1000:7.1f} ms  {queries} queries  "
                  f"{len(response.content) / 1024:7.1f} KiB")
    for name, path in (("iterations", "iterations/"), ("iteration", f"iterations/{seeder.iterations[-2].pk}/"),
                       ("current plan", f"iterations/{seeder.iterations[-1].pk}/")):
        secs, response, queries = timed(lambda p=path: client.get(f"/teams/{team.slug}/{p}"))
        assert response.status_code == 200, response.status_code
        print(f"  {name:<32} {secs * 1000:7.1f} ms  {queries} queries  {len(response.content) / 1024:7.1f} KiB")
    emit({"days": days, "times": times})


if __name__ == "__main__":
    main()
