"""Demo team with realistic history: hypotheses, experiments, overnight runs with metric curves.

Everything is written through the services (with a simulated clock) so events, card moves,
verdict proposals and iterations look exactly as they would after two weeks of real use.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import random
from collections.abc import Iterator
from unittest import mock

from django.db import transaction
from django.utils import timezone

from .models import Board, Card, CardEvent, CardKind, Column, Role, Run, Stage, Team, Trigger, User
from .services.boards import board_create, membership_set, team_create
from .services.cards import card_create, card_move
from .services.runs import MetricPoint, run_create, run_log_batch, run_update, tracking_experiment_get_or_create

DEMO_PASSWORD = "demo"
DEMO_USERS = (
    ("alice", "Alice Martin", Role.MANAGER),
    ("bob", "Bob Chen", Role.MEMBER),
    ("carol", "Carol Diaz", Role.MEMBER),
    ("dave", "Dave Okafor", Role.VIEWER),
)


@contextlib.contextmanager
def clock(at: dt.datetime) -> Iterator[None]:
    """Make services believe it is `at` (events, stage timestamps, verdict times)."""
    with mock.patch("django.utils.timezone.now", return_value=at):
        yield


def _curve(rng: random.Random, *, steps: int, start: float, end: float, noise: float) -> list[float]:
    values = []
    for i in range(steps):
        progress = 1 - math.exp(-4 * i / max(steps - 1, 1))
        values.append(start + (end - start) * progress + rng.gauss(0, noise))
    return values


def _log_curves(run: Run, rng: random.Random, *, final_auc: float, steps: int, started: dt.datetime) -> None:
    auc = _curve(rng, steps=steps, start=0.55, end=final_auc, noise=0.004)
    loss = _curve(rng, steps=steps, start=0.9, end=0.25 + (0.9 - final_auc), noise=0.01)
    base_ms = int(started.timestamp() * 1000)
    points = []
    for step in range(steps):
        ts = base_ms + step * 60_000
        points.append(MetricPoint("val_auc", round(auc[step], 5), step, ts))
        points.append(MetricPoint("train_loss", round(loss[step], 5), step, ts))
    run_log_batch(run=run, metrics=points)


def _backdate_card(card: Card, when: dt.datetime) -> None:
    Card.objects.filter(pk=card.pk).update(created_at=when)
    CardEvent.objects.filter(card=card, kind="created").update(created_at=when)
    card.created_at = when


def _column(board: Board, stage: str) -> Column:
    return board.columns.filter(stage=stage).order_by("position").first()


def _move(card: Card, board: Board, stage: str, actor: User, when: dt.datetime) -> Card:
    card.refresh_from_db()
    with clock(when):
        return card_move(card=card, to_column=_column(board, stage), actor=actor, expected_version=card.version)


def _runs_for(
    *,
    team: Team,
    card: Card,
    users: dict[str, User],
    rng: random.Random,
    experiment_name: str,
    started: dt.datetime,
    seeds: int,
    final_auc: float,
    params: dict[str, str],
    finish: bool = True,
    fail_one: bool = False,
    steps: int = 120,
) -> list[Run]:
    exp = tracking_experiment_get_or_create(team=team, name=experiment_name)
    runs = []
    commit = f"{rng.getrandbits(40):010x}"
    for seed in range(seeds):
        begin = started + dt.timedelta(minutes=7 * seed)
        with clock(begin):
            run = run_create(
                team=team,
                user=users["bob"] if seed % 2 else users["carol"],
                experiment=exp,
                name=f"{card.key.lower()}-s{seed}",
                start_time=begin,
                tags={
                    "mlboard.card": card.key,
                    "mlflow.source.git.commit": commit,
                    "mlboard.data_version": "customers-2026-11-01",
                    "mlflow.source.name": "train.py",
                    "mlboard.trigger": Trigger.SCHEDULED if seed % 3 == 0 else Trigger.MANUAL,
                },
                params={**params, "seed": str(seed)},
            )
        _log_curves(run, rng, final_auc=final_auc + rng.gauss(0, 0.003), steps=steps, started=begin)
        end = begin + dt.timedelta(hours=5, minutes=rng.randint(0, 90))
        if finish:
            status = "FAILED" if (fail_one and seed == seeds - 1) else "FINISHED"
            with clock(end):
                run = run_update(run=run, status=status, end_time=end)
        runs.append(run)
    return runs


@transaction.atomic
def demo_seed(*, now: dt.datetime | None = None, seed: int = 7) -> Team:
    """Create (or recreate) the demo team. Idempotent: an existing demo team is returned untouched."""
    existing = Team.objects.filter(slug="demo").first()
    if existing is not None:
        return existing
    now = now or timezone.now()
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
    team = team_create(name="Demo ML Team", slug="demo", webhook_url="", digest_emails="")
    for username, _full, role in DEMO_USERS:
        membership_set(team=team, user=users[username], role=role)
    alice, bob, carol = users["alice"], users["bob"], users["carol"]

    churn = board_create(team=team, name="Churn prediction", key="CHURN",
                         problem="Predict which subscribers cancel within 30 days, to target retention offers.")
    rank = board_create(team=team, name="Search ranking", key="RANK",
                        problem="Rank catalogue results by purchase likelihood.")
    day = dt.timedelta(days=1)
    today_evening = now.replace(hour=19, minute=0, second=0, microsecond=0)
    if today_evening > now:
        today_evening -= day

    # Baseline, resolved two weeks ago.
    base_when = now - 14 * day
    with clock(base_when):
        h_base = card_create(
            board=churn, kind=CardKind.HYPOTHESIS, title="Gradient boosting beats logistic regression",
            actor=alice, owner=alice, tags=["baseline", "gbm"],
            statement="A LightGBM model reaches val AUC >= 0.80 on the November split.",
            rationale="Tabular data with non-linear interactions between tenure and usage.",
            metric_key="val_auc", direction="maximize", threshold=0.80, min_runs=3,
        )
    _backdate_card(h_base, base_when)
    e_base = card_create(board=churn, kind=CardKind.EXPERIMENT, title="LightGBM default params, 3 seeds",
                         actor=bob, owner=bob, parent=h_base, plan="Train with defaults, seeds 0-2.",
                         baseline_value=0.78, tags=["gbm"])
    _backdate_card(e_base, base_when + dt.timedelta(hours=1))
    _move(h_base, churn, Stage.READY, alice, base_when + dt.timedelta(hours=2))
    _runs_for(team=team, card=e_base, users=users, rng=rng, experiment_name="churn-gbm",
              started=base_when + dt.timedelta(hours=9), seeds=3, final_auc=0.826,
              params={"model": "lightgbm", "num_leaves": "31", "learning_rate": "0.1"})

    hypotheses = [
        ("Tenure bucketing improves calibration", "val_auc", 0.83, ["features"], 0.834, 4, 10),
        ("Usage trend features add signal", "val_auc", 0.84, ["features", "usage"], 0.829, 3, 8),
        ("Class weighting helps the minority class", "val_auc", 0.83, ["imbalance"], 0.83, 3, 5),
        ("Target encoding of plan type", "val_auc", 0.835, ["features"], 0.838, 4, 3),
        ("Deeper trees overfit on small segments", "val_auc", 0.83, ["gbm", "regularisation"], 0.812, 3, 1),
    ]
    for i, (title, metric, threshold, tags, final_auc, seeds, days_ago) in enumerate(hypotheses):
        when = now - days_ago * day
        owner = [alice, bob, carol][i % 3]
        with clock(when):
            hyp = card_create(
                board=churn, kind=CardKind.HYPOTHESIS, title=title, actor=owner, owner=owner, tags=tags,
                statement=f"{title}: val AUC reaches {threshold}.",
                rationale="Seen in error analysis of the baseline's false negatives.",
                metric_key=metric, direction="maximize", threshold=threshold, min_runs=3,
            )
        _backdate_card(hyp, when)
        exp = card_create(board=churn, kind=CardKind.EXPERIMENT, title=f"{title} — experiment",
                          actor=owner, owner=owner, parent=hyp, plan="One change vs baseline, several seeds.",
                          baseline_value=0.826, tags=tags)
        _backdate_card(exp, when + dt.timedelta(hours=1))
        _move(hyp, churn, Stage.READY, owner, when + dt.timedelta(hours=2))
        # The most recent ones ran overnight: last evening to this morning (the standup window).
        started = today_evening if days_ago <= 1 else when + dt.timedelta(hours=10)
        _runs_for(team=team, card=exp, users=users, rng=rng, experiment_name="churn-features",
                  started=started, seeds=seeds, final_auc=final_auc,
                  params={"model": "lightgbm", "num_leaves": str(31 + 16 * i), "feature_set": tags[0]},
                  fail_one=(i == 2))

    # Still running overnight, and waiting in the backlog.
    with clock(now - 2 * day):
        hyp_running = card_create(
            board=churn, kind=CardKind.HYPOTHESIS, title="Transformer on event sequences",
            actor=carol, owner=carol, tags=["deep-learning"],
            statement="A small transformer over the last 90 days of events reaches val AUC 0.85.",
            metric_key="val_auc", direction="maximize", threshold=0.85, min_runs=3,
        )
    _backdate_card(hyp_running, now - 2 * day)
    exp_running = card_create(board=churn, kind=CardKind.EXPERIMENT, title="Transformer, 4 layers",
                              actor=carol, owner=carol, parent=hyp_running, plan="4 layers, 128 dims.",
                              tags=["deep-learning"])
    _runs_for(team=team, card=exp_running, users=users, rng=rng, experiment_name="churn-seq",
              started=today_evening + dt.timedelta(hours=1), seeds=2, final_auc=0.82,
              params={"model": "transformer", "layers": "4"}, finish=False, steps=60)
    for title in ("Survival model for time-to-churn", "Drop stale customers from training data"):
        card_create(board=churn, kind=CardKind.HYPOTHESIS, title=title, actor=alice, owner=None,
                    statement=title + ".", tags=["idea"])

    with clock(now - 3 * day):
        rank_h = card_create(
            board=rank, kind=CardKind.HYPOTHESIS, title="LambdaMART beats BM25 ordering", actor=bob, owner=bob,
            statement="LambdaMART improves NDCG@10 by 0.02 over BM25.", metric_key="ndcg_at_10",
            direction="maximize", min_delta=0.02, min_runs=3, tags=["ltr"],
        )
    _backdate_card(rank_h, now - 3 * day)
    card_create(board=rank, kind=CardKind.EXPERIMENT, title="LambdaMART, 200 trees", actor=bob, owner=bob,
                parent=rank_h, plan="200 trees, depth 6.", baseline_value=0.41)

    _iterations_seed(team=team, now=now)
    return team


def _iterations_seed(*, team: Team, now: dt.datetime) -> None:
    """Daily iterations for the last two weeks, if the iterations service is available."""
    try:
        from .services import iterations as iteration_services
    except ImportError:  # pragma: no cover - the service ships with the reports area
        return
    create = getattr(iteration_services, "iteration_create", None)
    if create is None:  # pragma: no cover
        return
    import inspect

    params = inspect.signature(create).parameters
    day = dt.timedelta(days=1)
    start_today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    for back in range(14, -1, -1):
        start = start_today - back * day
        kwargs = {"team": team, "start": start}
        if "end" in params:
            kwargs["end"] = start + day
        if "name" in params:
            kwargs["name"] = f"Day {start:%b %d}"
        with clock(start):
            create(**kwargs)
