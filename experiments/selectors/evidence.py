"""Which runs are a hypothesis's evidence, and when a hypothesis was decided: one rule for every report.

A run is evidence for a hypothesis when it is linked, not as a baseline, to the hypothesis card
itself or to one of its direct children: its experiment cards, the usual set-up, where training
runs carry ``mlboard.card=<experiment key>``. Velocity and maturity both read it from here, so
their decision counts and latencies agree.

The per-hypothesis values are correlated subqueries that start from the hypothesis and its child
cards (primary-key and parent indexes) and aggregate only their links, so each costs the
hypothesis's own runs, never a scan of the team's run history.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import connection
from django.db.models import F, Func, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, NullIf

from ..models import (
    TERMINAL_STATUSES,
    Card,
    CardKind,
    CardRun,
    VerdictChoice,
    VerdictProposal,
    VerdictStatus,
)
from .sql import EpochSeconds, InIds


def evidence_cards_q(hypothesis: Any) -> Q:
    """Cards whose run links count for `hypothesis` (a pk or an OuterRef): itself and its children."""
    return Q(pk=hypothesis) | Q(parent_id=hypothesis)


def evidence_run_value(function: str, *fields: str, hypothesis: Any = None, **run_filters: Any) -> Subquery:
    """FUNCTION (MIN/MAX/COUNT) over the hypothesis's evidence runs' `fields` (coalesced when several).

    `run_filters` are lookups on the run (e.g. ``end_time__lte=OuterRef("resolved_at")``). A plain
    SQL function rather than Django's Max: Max would GROUP BY card and split the hypothesis from its
    experiments."""
    hypothesis = OuterRef("pk") if hypothesis is None else hypothesis
    links = Card.objects.filter(
        evidence_cards_q(hypothesis),
        run_links__is_baseline=False,
        **{f"run_links__run__{lookup}": value for lookup, value in run_filters.items()},
    )
    paths = [F(f"run_links__run__{name}") for name in fields]
    target = paths[0] if len(paths) == 1 else Coalesce(*paths)
    return Subquery(links.order_by().annotate(value=Func(target, function=function)).values("value")[:1])


def last_evidence_end(before: Any = None) -> Subquery:
    """End of the last terminal evidence run that ended at or before `before` (default: the decision)."""
    before = OuterRef("resolved_at") if before is None else before
    return evidence_run_value("MAX", "end_time", status__in=TERMINAL_STATUSES, end_time__lte=before)


def first_evidence_start() -> Subquery:
    """Start of the hypothesis's first evidence run (creation time for runs without a start time)."""
    return evidence_run_value("MIN", "start_time", "created_at")


def _evidence_ends(hypothesis_ids: list[int], end: dt.datetime, *, epoch: bool) -> QuerySet:
    """(hypothesis id, run end) for every terminal evidence run of the hypotheses ending before `end`;
    the end as epoch seconds when `epoch` (only compared, and thousands of them load faster so).

    A UNION of two index-driven lookups (links of the hypotheses themselves; links of their
    children through Card.parent), so the cost follows the decided hypotheses' own links; a
    correlated "last run before the decision" subquery walks the run end-time index once per
    hypothesis, i.e. all of history per decision."""
    runs = Q(is_baseline=False, run__status__in=TERMINAL_STATUSES, run__end_time__lt=end)
    ended = EpochSeconds("run__end_time") if epoch else F("run__end_time")
    own = CardRun.objects.filter(runs, InIds("card_id", hypothesis_ids)).annotate(ended=ended)
    child = CardRun.objects.filter(runs, InIds("card__parent_id", hypothesis_ids)).annotate(ended=ended)
    return (
        own.values_list("card_id", "ended").order_by()
        .union(child.values_list("card__parent_id", "ended").order_by(), all=True)
    )


def decided_hypotheses(cards: QuerySet[Card], start: dt.datetime, end: dt.datetime) -> list[tuple]:
    """(pk, verdict, decided_at, evidence_at) per hypothesis in `cards` decided in [start, end) — two queries.

    Decided: card.decided_at, or the latest confirmed/overridden proposal when the card has no
    decision time; evidence_at: the last evidence run ending at or before that decision (None
    without one). Runs are read only for the hypotheses decided in the window."""
    decided = VerdictProposal.objects.filter(
        card=OuterRef("pk"),
        status__in=[VerdictStatus.CONFIRMED, VerdictStatus.OVERRIDDEN],
        decided_at__isnull=False,
    ).order_by("-decided_at", "-id")
    rows = list(
        cards.filter(kind=CardKind.HYPOTHESIS)
        .annotate(
            resolved_at=Coalesce("decided_at", Subquery(decided.values("decided_at")[:1])),
            resolved_as=Coalesce(NullIf("verdict", Value("")), Subquery(decided.values("decided")[:1])),
        )
        .filter(resolved_at__gte=start, resolved_at__lt=end, resolved_as__in=VerdictChoice.values)
        .order_by()
        .values_list("pk", "resolved_as", "resolved_at")
    )
    if not rows:
        return []
    resolved = {pk: resolved_at for pk, _, resolved_at in rows}
    # On PostgreSQL run ends come as epoch seconds: a float8 holds every microsecond instant of
    # these years exactly enough that comparisons with datetime.timestamp() and the way back
    # (fromtimestamp) are exact. SQLite's julianday is not, so it keeps datetimes.
    epoch = connection.vendor == "postgresql"
    limits: dict[int, Any] = {pk: at.timestamp() for pk, at in resolved.items()} if epoch else dict(resolved)
    latest: dict[int, Any] = {}
    ends = _evidence_ends(list(resolved), max(resolved.values()) + dt.timedelta(microseconds=1), epoch=epoch)
    for pk, ended in ends:
        if ended <= limits[pk] and (pk not in latest or ended > latest[pk]):
            latest[pk] = ended
    evidence = {pk: dt.datetime.fromtimestamp(v, dt.UTC) if epoch else v for pk, v in latest.items()}
    return [(pk, verdict, decided_at, evidence.get(pk)) for pk, verdict, decided_at in rows]
