"""Demo team with two weeks of realistic history, replayed day by day through the services.

Each day is a 1-day iteration: hypotheses and experiments are written in the morning, runs train
overnight, and the team decides verdicts at the next morning's standup. A simulated clock makes
events, card moves, verdicts and iterations carry the times they would have had in real use.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock

from django.utils import timezone

from .demo_artifacts import demo_artifacts_log
from .models import (
    Board,
    Card,
    CardEvent,
    CardKind,
    Column,
    Iteration,
    IterationState,
    Role,
    Run,
    Stage,
    Team,
    Trigger,
    User,
    VerdictProposal,
    VerdictStatus,
)
from .selectors.standup import window_start_before
from .services.boards import board_create, membership_set, team_create
from .services.cards import card_add_note, card_create, card_move
from .services.comments import comment_create
from .services.iterations import iteration_close, iteration_commit_card, iteration_create, iteration_start
from .services.purge import team_purge
from .services.runs import MetricPoint, run_create, run_log_batch, run_update, tracking_experiment_get_or_create
from .services.standup import standup_digest_build
from .services.verdicts import verdict_decide

DEMO_PASSWORD = "demo"
DEMO_USERS = (
    ("alice", "Alice Martin", Role.MANAGER),
    ("bob", "Bob Chen", Role.MEMBER),
    ("carol", "Carol Diaz", Role.MEMBER),
    ("dave", "Dave Okafor", Role.VIEWER),
)
DIGEST_DAYS = 3  # stored standup digests of the last mornings
HISTORY_DAYS = 14


@contextlib.contextmanager
def clock(at: dt.datetime) -> Iterator[None]:
    """Make services believe it is `at` (events, stage timestamps, verdict times)."""
    with mock.patch("django.utils.timezone.now", return_value=at):
        yield


@dataclass
class Story:
    """One hypothesis tested by one experiment: written on `day`, trained that night."""

    day: int  # days before today
    board: str
    owner: str
    title: str
    statement: str
    final: float  # mean final metric across seeds
    seeds: int = 3
    threshold: float | None = None
    min_delta: float | None = None
    baseline: float | None = None
    metric: str = "val_auc"
    direction: str = "maximize"
    tags: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    fail_one: bool = False
    finish: bool = True
    steps: int = 120
    note: str = ""


STORIES = [
    Story(14, "CHURN", "alice", "Gradient boosting beats logistic regression",
          "A LightGBM model reaches val AUC >= 0.80 on the November split.", 0.826, threshold=0.80,
          baseline=0.78, tags=["baseline", "gbm"], params={"model": "lightgbm", "num_leaves": "31"},
          note="GBM is the new baseline: 0.826 AUC."),
    Story(12, "CHURN", "bob", "Tenure bucketing improves calibration",
          "Bucketing tenure into 6 bins raises val AUC by 0.005 over the GBM baseline.", 0.8342, seeds=4,
          min_delta=0.005, baseline=0.826, tags=["features"], params={"model": "lightgbm", "tenure_bins": "6"}),
    Story(10, "CHURN", "carol", "Usage trend features add signal",
          "30-day usage slope features reach val AUC 0.84.", 0.829, threshold=0.84, baseline=0.826,
          tags=["features", "usage"], params={"model": "lightgbm", "usage_trend": "30d"},
          note="Trend features are noise once tenure is bucketed."),
    Story(8, "CHURN", "bob", "Class weighting helps the minority class",
          "Weighting churners 5x reaches val AUC 0.83.", 0.8305, threshold=0.83, baseline=0.826,
          tags=["imbalance"], params={"model": "lightgbm", "class_weight": "5"}, fail_one=True),
    Story(6, "RANK", "bob", "LambdaMART beats BM25 ordering",
          "LambdaMART improves NDCG@10 by 0.02 over BM25.", 0.447, metric="ndcg_at_10", min_delta=0.02,
          baseline=0.41, tags=["ltr"], params={"model": "lambdamart", "trees": "200"}),
    Story(5, "CHURN", "alice", "Target encoding of plan type",
          "Target-encoded plan type reaches val AUC 0.835.", 0.8385, seeds=4, threshold=0.835, baseline=0.834,
          tags=["features"], params={"model": "lightgbm", "plan_encoding": "target"}),
    Story(3, "RANK", "carol", "Query-length features help long queries",
          "Adding query length lifts NDCG@10 by 0.01.", 0.452, metric="ndcg_at_10", min_delta=0.01,
          baseline=0.447, tags=["ltr", "features"], params={"model": "lambdamart", "query_len": "true"}),
    Story(1, "CHURN", "carol", "Deeper trees overfit on small segments",
          "Depth-12 trees lose AUC on segments under 1,000 customers (val AUC stays >= 0.83).", 0.812,
          threshold=0.83, baseline=0.838, tags=["gbm", "regularisation"],
          params={"model": "lightgbm", "max_depth": "12"}),
    Story(1, "CHURN", "bob", "Monthly charge ratio is predictive",
          "Charge-to-median ratio reaches val AUC 0.84.", 0.8436, seeds=4, threshold=0.84, baseline=0.838,
          tags=["features"], params={"model": "lightgbm", "charge_ratio": "true"}),
    Story(0, "CHURN", "carol", "Transformer on event sequences",
          "A small transformer over the last 90 days of events reaches val AUC 0.85.", 0.82, seeds=2,
          threshold=0.85, tags=["deep-learning"], params={"model": "transformer", "layers": "4"},
          finish=False, steps=60),
]
BACKLOG = [
    ("CHURN", "Survival model for time-to-churn", ["idea"]),
    ("CHURN", "Drop stale customers from training data", ["data", "idea"]),
    ("RANK", "Personalised re-ranking with session features", ["idea"]),
]


def _curve(rng: random.Random, *, steps: int, start: float, end: float, noise: float) -> list[float]:
    values = []
    for i in range(steps):
        progress = 1 - math.exp(-4 * i / max(steps - 1, 1))
        values.append(start + (end - start) * progress + rng.gauss(0, noise))
    return values


def _log_curves(run: Run, rng: random.Random, *, story: Story, final: float, started: dt.datetime) -> None:
    score = _curve(rng, steps=story.steps, start=final * 0.7, end=final, noise=0.0015)
    score[-1] = final  # the last point is the one verdicts are judged on
    loss = _curve(rng, steps=story.steps, start=0.9, end=0.2 + (1 - final) * 0.5, noise=0.01)
    base_ms = int(started.timestamp() * 1000)
    points = []
    for step in range(story.steps):
        ts = base_ms + step * 60_000
        points.append(MetricPoint(story.metric, round(score[step], 5), step, ts))
        points.append(MetricPoint("train_loss", round(loss[step], 5), step, ts))
    run_log_batch(run=run, metrics=points)


def _column(board: Board, stage: str) -> Column:
    return board.columns.filter(stage=stage).order_by("position").first()


def _move(card: Card, stage: str, actor: User, when: dt.datetime) -> None:
    card.refresh_from_db()
    with clock(when):
        card_move(card=card, to_column=_column(card.board, stage), actor=actor, expected_version=card.version)


def _backdate(card: Card, when: dt.datetime) -> None:
    Card.objects.filter(pk=card.pk).update(created_at=when)
    CardEvent.objects.filter(card=card, kind="created").update(created_at=when)


def _write_cards(story: Story, board: Board, owner: User, when: dt.datetime) -> tuple[Card, Card]:
    with clock(when):
        hyp = card_create(
            board=board, kind=CardKind.HYPOTHESIS, title=story.title, actor=owner, owner=owner, tags=story.tags,
            statement=story.statement, rationale="From error analysis of the current baseline.",
            metric_key=story.metric, direction=story.direction, threshold=story.threshold,
            min_delta=story.min_delta, min_runs=3,
        )
        exp = card_create(
            board=board, kind=CardKind.EXPERIMENT, title=f"{story.title}: {story.seeds} seeds", actor=owner,
            owner=owner, parent=hyp, plan="One change against the baseline, several seeds, same data split.",
            baseline_value=story.baseline, tags=story.tags,
        )
    _backdate(hyp, when)
    _backdate(exp, when)
    _move(hyp, Stage.READY, owner, when + dt.timedelta(minutes=20))
    return hyp, exp


def _train(story: Story, *, team: Team, exp: Card, users: dict[str, User], rng: random.Random,
           start: dt.datetime, latest_end: dt.datetime) -> None:
    tracking = tracking_experiment_get_or_create(team=team, name=f"{exp.board.key.lower()}-{story.params['model']}")
    commit = f"{rng.getrandbits(40):010x}"
    trainers = [users[story.owner], users["bob"] if story.owner != "bob" else users["carol"]]
    started: list[tuple[Run, dt.datetime]] = []
    # Seeds train side by side, so all start before any finishes (as on a real cluster).
    for seed in range(story.seeds):
        begin = start + dt.timedelta(minutes=5 * seed)
        with clock(begin):
            run = run_create(
                team=team, user=trainers[seed % 2], experiment=tracking, name=f"{exp.key.lower()}-seed{seed}",
                start_time=begin, params={**story.params, "seed": str(seed)},
                tags={
                    "mlboard.card": exp.key,
                    "mlflow.source.git.commit": commit,
                    "mlboard.data_version": "customers-2026-11-01",
                    "mlflow.source.name": "train.py",
                    "mlboard.trigger": Trigger.SCHEDULED if seed % 2 == 0 else Trigger.MANUAL,
                },
            )
        final = story.final + rng.gauss(0, 0.0015)
        _log_curves(run, rng, story=story, final=final, started=begin)
        demo_artifacts_log(run=run, score=final)
        started.append((run, begin))
    if not story.finish:
        return
    ends = []
    for seed, (run, begin) in enumerate(started):
        end = min(begin + dt.timedelta(hours=4, minutes=rng.randint(0, 60)), latest_end - dt.timedelta(minutes=seed))
        status = "FAILED" if story.fail_one and seed == story.seeds - 1 else "FINISHED"
        ends.append((end, run, status))
    for end, run, status in sorted(ends, key=lambda item: item[0]):
        with clock(end):
            run_update(run=run, status=status, end_time=end)


def _decide(hyp: Card, actor: User, when: dt.datetime, note: str) -> None:
    proposal = VerdictProposal.objects.filter(card=hyp, status=VerdictStatus.PROPOSED).first()
    if proposal is None:
        return
    with clock(when):
        verdict_decide(proposal=proposal, actor=actor, note=note)
        for exp in hyp.children.filter(kind=CardKind.EXPERIMENT):
            exp.refresh_from_db()
            if exp.column.stage != Stage.DONE:
                card_move(card=exp, to_column=_column(exp.board, Stage.DONE), actor=actor,
                          expected_version=exp.version)
        if note:
            card_add_note(card=hyp, actor=actor, text=note)


def demo_seed(*, now: dt.datetime | None = None, seed: int = 7) -> Team:
    """Create the demo team. Idempotent: an existing demo team is returned untouched.

    Not one transaction on purpose: verdict evaluation runs on commit of each run update, and the
    next morning's decisions need those proposals. A failed seed removes its half-built team."""
    existing = Team.objects.filter(slug="demo").first()
    if existing is not None:
        return existing
    try:
        return _seed(now=now or timezone.now(), seed=seed)
    except BaseException:
        half_built = Team.objects.filter(slug="demo").first()
        if half_built is not None:
            team_purge(team=half_built, actor=None, reason="demo seed failed")
        raise


def _seed(*, now: dt.datetime, seed: int) -> Team:
    rng = random.Random(seed)
    users: dict[str, User] = {}
    for username, full_name, _role in DEMO_USERS:
        user = User.objects.filter(username=username).first()
        if user is None:
            first, last = full_name.split(" ", 1)
            user = User.objects.create_user(
                username=username, password=DEMO_PASSWORD, email=f"{username}@demo.mlboard.local",
                first_name=first, last_name=last,
            )
        users[username] = user
    # The manager also administers the instance (Django admin at /admin/).
    User.objects.filter(pk=users["alice"].pk).update(is_staff=True, is_superuser=True)
    team = team_create(name="Demo ML Team", slug="demo")
    for username, _full, role in DEMO_USERS:
        membership_set(team=team, user=users[username], role=role)
    boards = {
        "CHURN": board_create(team=team, name="Churn prediction", key="CHURN",
                              problem="Predict which subscribers cancel within 30 days, to target retention offers."),
        "RANK": board_create(team=team, name="Search ranking", key="RANK",
                             problem="Rank catalogue results by purchase likelihood."),
    }

    # Last night's window (as the standup page computes it) bounds when overnight runs may end.
    window_start = window_start_before(team, now)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    pending: list[tuple[Card, str]] = []  # hypotheses waiting for the next morning's decision
    for back in range(HISTORY_DAYS, -1, -1):
        day_start = today - dt.timedelta(days=back)
        with clock(day_start):
            iteration = iteration_create(team=team, start=day_start, end=day_start + dt.timedelta(days=1))
            iteration_start(iteration=iteration)
        # Morning standup: decide what trained overnight (today's decisions are left to the user).
        if back > 0:
            # The standup history holds the digests of the last few mornings.
            if back <= DIGEST_DAYS:
                standup_end = dt.datetime.combine(day_start.date(), team.standup_time, tzinfo=team.zone)
                with clock(standup_end):
                    standup_digest_build(team=team, window_end=standup_end)
            for hyp, note in pending:
                _decide(hyp, users["alice"], day_start + dt.timedelta(hours=9, minutes=45), note)
            pending = []
        for story in (s for s in STORIES if s.day == back):
            owner = users[story.owner]
            hyp, exp = _write_cards(story, boards[story.board], owner, day_start + dt.timedelta(hours=10))
            with clock(day_start + dt.timedelta(hours=10, minutes=30)):
                iteration_commit_card(iteration=iteration, card=hyp, actor=owner)
                iteration_commit_card(iteration=iteration, card=exp, actor=owner)
            if back == 0:
                # Still training: started in last night's window.
                start, latest_end = window_start + dt.timedelta(minutes=30), now
            else:
                start = day_start + dt.timedelta(hours=19)
                latest_end = min(start + dt.timedelta(hours=6), now - dt.timedelta(minutes=10))
                if back == 1:
                    # Trained overnight: inside the window today's standup reviews.
                    start = max(start, window_start + dt.timedelta(minutes=10))
                    start = min(start, now - dt.timedelta(minutes=30))
            _train(story, team=team, exp=exp, users=users, rng=rng, start=start, latest_end=latest_end)
            pending.append((hyp, story.note))
        if back > 0:
            with clock(day_start + dt.timedelta(days=1)):
                iteration_close(iteration=Iteration.objects.get(pk=iteration.pk),
                                now=day_start + dt.timedelta(days=1))
    for key, title, tags in BACKLOG:
        card_create(board=boards[key], kind=CardKind.HYPOTHESIS, title=title, actor=users["alice"],
                    statement=f"{title}.", tags=tags)
    # A short discussion, so comments and mentions are there to try.
    first = Card.objects.filter(board=boards["CHURN"], kind=CardKind.HYPOTHESIS).order_by("number").first()
    if first is not None:
        comment_create(author=users["bob"], card=first,
                       body="Folds look stable. @alice should we re-run with **5 seeds** before deciding?")
        comment_create(author=users["alice"], card=first, body="Yes, and log the data version this time.")
    assert Iteration.objects.filter(team=team, state=IterationState.ACTIVE).count() == 1
    return team
