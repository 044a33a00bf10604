"""Hard deletes of evidence: the one way past the PROTECT foreign keys, always logged.

Day to day nothing is deleted: runs and tracking experiments are soft-deleted (MLflow's lifecycle_stage,
restorable), and a card, run, experiment or iteration with history cannot be deleted by a cascade.
A purge is an explicit admin action (or the demo reset); it removes the object with everything that
hangs off it, writes a PurgeRecord with the row counts and logs a warning.
"""

from __future__ import annotations

import logging
from collections import Counter

from django.db import transaction
from django.db.models import QuerySet

from ..models import (
    Card,
    CardEvent,
    CardRun,
    Iteration,
    IterationItem,
    LatestMetric,
    Metric,
    MetricBlock,
    Param,
    PurgeRecord,
    Run,
    Team,
    TrackingExperiment,
    User,
    VerdictProposal,
)

logger = logging.getLogger(__name__)


def _delete(counts: Counter, queryset: QuerySet) -> None:
    _, per_model = queryset.delete()
    counts.update({label: n for label, n in per_model.items() if n})


def _card_ids_with_descendants(card_ids: list[int]) -> list[int]:
    found = list(card_ids)
    frontier = list(card_ids)
    while frontier:
        frontier = list(Card.objects.filter(parent_id__in=frontier).exclude(pk__in=found).values_list("pk", flat=True))
        found += frontier
    return found


def _purge_cards(counts: Counter, cards: QuerySet) -> None:
    ids = _card_ids_with_descendants(list(cards.values_list("pk", flat=True)))
    for model in (CardEvent, CardRun, VerdictProposal, IterationItem):
        _delete(counts, model.objects.filter(card_id__in=ids))
    # Children before parents (parent is PROTECT too).
    while ids:
        leaves = list(Card.objects.filter(pk__in=ids).exclude(children__in=ids).values_list("pk", flat=True))
        _delete(counts, Card.objects.filter(pk__in=leaves))
        ids = [i for i in ids if i not in set(leaves)]


def _purge_runs(counts: Counter, runs: QuerySet) -> None:
    ids = list(runs.values_list("pk", flat=True))
    for model in (CardRun, Metric, MetricBlock, LatestMetric, Param):
        _delete(counts, model.objects.filter(run_id__in=ids))
    _delete(counts, Run.objects.filter(pk__in=ids))


def _record(*, obj, team_slug: str, actor: User | None, reason: str, counts: Counter) -> PurgeRecord:
    record = PurgeRecord.objects.create(
        actor=actor if actor is not None and actor.pk else None,
        actor_name=actor.get_username() if actor is not None else "",
        team_slug=team_slug,
        object_type=obj._meta.label,
        object_id=obj.pk,
        object_repr=str(obj)[:250],
        counts=dict(counts),
        reason=reason[:200],
    )
    logger.warning(
        "PURGE %s %s (%s) by %s: %s", obj._meta.label, obj.pk, record.object_repr, record.actor_name or "system",
        dict(counts),
    )
    return record


@transaction.atomic
def card_purge(*, card: Card, actor: User | None, reason: str = "") -> PurgeRecord:
    """The card, its child cards and all their events, run links, verdicts and iteration rows."""
    counts: Counter = Counter()
    team_slug = card.board.team.slug
    _purge_cards(counts, Card.objects.filter(pk=card.pk))
    return _record(obj=card, team_slug=team_slug, actor=actor, reason=reason, counts=counts)


@transaction.atomic
def run_purge(*, run: Run, actor: User | None, reason: str = "") -> PurgeRecord:
    counts: Counter = Counter()
    team_slug = run.team.slug
    _purge_runs(counts, Run.objects.filter(pk=run.pk))
    return _record(obj=run, team_slug=team_slug, actor=actor, reason=reason, counts=counts)


@transaction.atomic
def tracking_experiment_purge(*, experiment: TrackingExperiment, actor: User | None, reason: str = "") -> PurgeRecord:
    counts: Counter = Counter()
    team_slug = experiment.team.slug
    _purge_runs(counts, Run.objects.filter(experiment=experiment))
    _delete(counts, TrackingExperiment.objects.filter(pk=experiment.pk))
    return _record(obj=experiment, team_slug=team_slug, actor=actor, reason=reason, counts=counts)


@transaction.atomic
def iteration_purge(*, iteration: Iteration, actor: User | None, reason: str = "") -> PurgeRecord:
    counts: Counter = Counter()
    team_slug = iteration.team.slug
    _delete(counts, IterationItem.objects.filter(iteration=iteration))
    _delete(counts, Iteration.objects.filter(pk=iteration.pk))
    return _record(obj=iteration, team_slug=team_slug, actor=actor, reason=reason, counts=counts)


@transaction.atomic
def team_purge(*, team: Team, actor: User | None, reason: str = "") -> PurgeRecord:
    """Everything of a team (the demo reset uses this)."""
    counts: Counter = Counter()
    _purge_cards(counts, Card.objects.filter(board__team=team))
    _delete(counts, CardEvent.objects.filter(board__team=team))
    _purge_runs(counts, Run.objects.filter(team=team))
    _delete(counts, TrackingExperiment.objects.filter(team=team))
    _delete(counts, IterationItem.objects.filter(iteration__team=team))
    _delete(counts, Team.objects.filter(pk=team.pk))  # boards, columns, iterations, tokens... cascade
    return _record(obj=team, team_slug=team.slug, actor=actor, reason=reason, counts=counts)
