"""Maturity reads: evidence from the team's data, the self-assessment and the snapshot trend.

Evidence is tallied per local calendar week of the team (level gates are judged week by week,
see maturity.py), and the whole window is the sum of its weeks. Every read runs a fixed number
of queries whatever the data size, and each query is bounded by the window (runs through the
(team, start-or-created time) index, cards through their run links or creation time): run counts
are one GROUP BY week; the reproduction check streams flat value lists and groups them in Python,
because ordered string aggregation of params (to fingerprint a configuration) is not available on
SQLite; hypotheses use the shared evidence rule of selectors/evidence.py.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import (
    BooleanField,
    Count,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce, NullIf, TruncWeek
from django.utils import timezone

from .. import maturity as mm
from ..models import (
    Card,
    CardKind,
    CardRun,
    CriterionAmendment,
    LatestMetric,
    MaturityAssessment,
    MaturitySnapshot,
    Param,
    Run,
    RunStatus,
    Team,
    Trigger,
)
from ..services.runs import SEED_KEYS
from .evidence import decided_hypotheses, first_evidence_start
from .sql import InIds


@dataclass
class Evidence:
    as_of: dt.datetime
    window_start: dt.datetime
    metrics: dict[str, mm.MetricValue]
    # Local calendar weeks (keyed by their Monday) overlapping the window, oldest first.
    weeks: dict[dt.date, mm.WeekTally] = field(default_factory=dict)

    @property
    def window_days(self) -> int:
        return (self.as_of - self.window_start).days

    @property
    def week_metrics(self) -> list[dict[str, mm.MetricValue]]:
        return [tally.metrics() for tally in self.weeks.values()]


def repro_tolerance(team: Team) -> float:
    """The team's relative tolerance for repeated runs, else the site setting."""
    value = team.maturity_repro_tolerance
    return float(settings.MATURITY_REPRO_TOLERANCE if value is None else value)


class _Weeks:
    """Buckets times into local calendar weeks (Monday 00:00 in the team's zone, DST-safe)."""

    def __init__(self, zone: dt.tzinfo, start: dt.datetime, end: dt.datetime) -> None:
        self.zone = zone
        self.tallies: dict[dt.date, mm.WeekTally] = {}
        monday = self.key(start)
        while monday <= self.key(end):
            self.tallies[monday] = mm.WeekTally()
            monday += dt.timedelta(days=7)

    def key(self, when: dt.datetime) -> dt.date:
        day = timezone.localtime(when, self.zone).date()
        return day - dt.timedelta(days=day.weekday())

    def at(self, when: dt.datetime) -> mm.WeekTally:
        return self.tallies[self.key(when)]


def _window_runs(team: Team | int, start: dt.datetime, end: dt.datetime) -> QuerySet[Run]:
    team_id = team if isinstance(team, int) else team.pk
    return (
        Run.objects.filter(team_id=team_id, lifecycle_stage="active")
        .annotate(at=Coalesce("start_time", "created_at"))
        .filter(at__gt=start, at__lte=end)
    )


def _run_counts(runs: QuerySet[Run], weeks: _Weeks) -> None:
    """Per-week run counts, one GROUP BY query."""
    automated = (Trigger.SCHEDULED, Trigger.CI)
    rows = (
        runs.annotate(has_metric=Exists(LatestMetric.objects.filter(run=OuterRef("pk"))),
                      week=TruncWeek("at", tzinfo=weeks.zone))
        .order_by()
        .values("week")
        .annotate(
            runs=Count("id"),
            code_version=Count("id", filter=~Q(code_version="")),
            data_version=Count("id", filter=~Q(data_version="")),
            seed=Count("id", filter=Q(seed__isnull=False)),
            # `environment` is a JSON object; {} means nothing was recorded.
            environment=Count("id", filter=~Q(environment={}) & Q(environment__isnull=False)),
            metrics_logged=Count("id", filter=Q(has_metric=True)),
            automated=Count("id", filter=Q(trigger__in=automated)),
            scheduled=Count("id", filter=Q(trigger=Trigger.SCHEDULED)),
            ci=Count("id", filter=Q(trigger=Trigger.CI)),
            finished=Count("id", filter=Q(status=RunStatus.FINISHED)),
        )
    )
    for row in rows:
        tally = weeks.at(row.pop("week"))
        for name, count in row.items():
            setattr(tally, name, count)


# Above this many ids, a subquery instead of a literal list (SQLite allows 32,766 parameters).
MAX_LITERAL_IDS = 20_000


def _run_ids(ids: list[int], runs: QuerySet[Run]) -> list[int] | QuerySet:
    """The window's run ids as a literal list, so PostgreSQL probes the run_id indexes of params,
    metrics and links for those runs rather than hash-joining whole tables (all of history)."""
    return ids if len(ids) <= MAX_LITERAL_IDS else runs.values("pk")


def _among(field: str, ids: list[int] | QuerySet) -> Any:
    """Filter `field` by the ids from _run_ids: one array value for a list (see selectors/sql.py)."""
    return InIds(field, ids) if isinstance(ids, list) else Q(**{f"{field}__in": ids})


def reproduced_records(runs: QuerySet[Run]) -> tuple[list[tuple[mm.RunRecord, dt.datetime]], list[int]]:
    """Finished runs with code and data versions, as RunRecords with their window time, and the ids
    of all the window's runs (four queries).

    The seed param is not part of the configuration: it is what varies between repeats."""
    window = list(runs.values_list("pk", "status", "code_version", "data_version", "seed", "at"))
    all_ids = [row[0] for row in window]
    rows = [(pk, code, data, seed, at) for pk, status, code, data, seed, at in window
            if status == RunStatus.FINISHED and code and data]
    ids = _run_ids([row[0] for row in rows], runs.filter(status=RunStatus.FINISHED).exclude(code_version="")
                   .exclude(data_version=""))
    params: dict[int, list[tuple[str, str]]] = defaultdict(list)
    param_rows = Param.objects.filter(_among("run_id", ids)).exclude(key__in=SEED_KEYS).order_by()
    for run_id, key, value in param_rows.values_list("run_id", "key", "value"):
        params[run_id].append((key, value))
    metrics: dict[int, dict[str, float]] = defaultdict(dict)
    for run_id, key, value, is_nan in LatestMetric.objects.filter(_among("run_id", ids)).order_by().values_list(
        "run_id", "key", "value", "is_nan"
    ):
        metrics[run_id][key] = math.nan if is_nan else value
    # The metric the run is judged on: its hypothesis's, directly or through an experiment card.
    primary: dict[int, set[str]] = defaultdict(set)
    judged = Coalesce(NullIf("card__metric_key", Value("")), NullIf("card__parent__metric_key", Value("")))
    for run_id, key in (
        CardRun.objects.filter(_among("run_id", ids), is_baseline=False).annotate(judged=judged)
        .filter(judged__isnull=False).order_by().values_list("run_id", "judged")
    ):
        primary[run_id].add(key)
    records = [
        (mm.RunRecord(run_id=pk, config=(code, data, tuple(sorted(params[pk]))), seed=seed,
                      metrics=metrics[pk], primary=frozenset(primary[pk])), at)
        for pk, code, data, seed, at in rows
    ]
    return records, all_ids


def _reproduced(runs: QuerySet[Run], weeks: _Weeks, tolerance: float) -> list[int] | QuerySet:
    """Reproduced runs per week; returns the window's run ids for the next reads."""
    records, all_ids = reproduced_records(runs)
    agreeing = mm.reproduced_runs((r for r, _ in records), tolerance)
    for record, at in records:
        if record.run_id in agreeing:
            weeks.at(at).reproduced += 1
    return _run_ids(all_ids, runs)


def _hypothesis_team(team_id: int) -> QuerySet[Card]:
    return Card.objects.filter(board__team_id=team_id, kind=CardKind.HYPOTHESIS)


def _criteria_first(team_id: int, run_ids: list[int] | QuerySet, weeks: _Weeks, start: dt.datetime,
                    end: dt.datetime) -> None:
    """Hypotheses by the week their first evidence run started: criteria set before it, never amended
    after it (two queries). Only hypotheses with an evidence run in the window can qualify, so
    the first-run subquery runs for those alone."""
    in_window = CardRun.objects.filter(_among("run_id", run_ids), is_baseline=False)
    candidates = (
        _hypothesis_team(team_id)
        .filter(Q(pk__in=in_window.values("card_id")) | Q(pk__in=in_window.values("card__parent_id")))
        .order_by()
        .annotate(first_run=first_evidence_start())
        .values_list("pk", "criteria_set_at", "first_run")
    )
    # Bounds checked here: filtering on the annotation in SQL would run its subquery twice more per card.
    rows = [(pk, at, first) for pk, at, first in candidates if first is not None and start < first <= end]
    amended = _amended_after_first_run({pk: first for pk, _, first in rows})
    for pk, criteria_set_at, first_run in rows:
        tally = weeks.at(first_run)
        tally.hypotheses += 1
        if criteria_set_at is not None and criteria_set_at <= first_run and pk not in amended:
            tally.criteria_first += 1


def _amended_after_first_run(first_runs: dict[int, dt.datetime]) -> set[int]:
    """Hypotheses whose criterion was amended once runs were in (one query): a CriterionAmendment
    made with runs started (services/cards.card_update records them), or dated after the first run."""
    if not first_runs:
        return set()
    amendments = CriterionAmendment.objects.filter(InIds("card_id", first_runs)).order_by().values_list(
        "card_id", "created_at", "runs_started"
    )
    return {card_id for card_id, at, runs in amendments if runs > 0 or at > first_runs[card_id]}


def _baseline(team_id: int, weeks: _Weeks, start: dt.datetime, end: dt.datetime) -> None:
    rows = (
        Card.objects.filter(board__team_id=team_id, kind=CardKind.EXPERIMENT, created_at__gt=start,
                            created_at__lte=end)
        .order_by()
        .annotate(baseline_link=Exists(CardRun.objects.filter(card=OuterRef("pk"), is_baseline=True)))
        .annotate(has_baseline=ExpressionWrapper(
            Q(baseline_value__isnull=False) | Q(baseline_run__isnull=False) | Q(baseline_link=True),
            output_field=BooleanField()))
        .values_list("created_at", "has_baseline")
    )
    for created_at, has_baseline in rows:
        tally = weeks.at(created_at)
        tally.experiments += 1
        tally.baseline += bool(has_baseline)


def _decision_latency(team_id: int, weeks: _Weeks, start: dt.datetime, end: dt.datetime) -> None:
    """Hours from the last evidence run ending to the decision, by the week of the decision.
    The same decisions and evidence as the velocity report (selectors/evidence.py)."""
    for _pk, _verdict, decided_at, evidence_at in decided_hypotheses(
        Card.objects.filter(board__team_id=team_id), start, end + dt.timedelta(microseconds=1)
    ):
        if evidence_at is not None:
            weeks.at(decided_at).decision_hours.append(max(0.0, (decided_at - evidence_at).total_seconds() / 3600))


def maturity_evidence(*, team: Team, as_of: dt.datetime | None = None,
                      window_days: int = mm.WINDOW_DAYS) -> Evidence:
    """All evidence over the window ending at `as_of` (now by default), week by week. 10 queries."""
    end = as_of or timezone.now()
    start = end - dt.timedelta(days=window_days)
    weeks = _Weeks(team.zone, start, end)
    runs = _window_runs(team, start, end)
    _run_counts(runs, weeks)
    run_ids = _reproduced(runs, weeks, repro_tolerance(team))
    _criteria_first(team.pk, run_ids, weeks, start, end)
    _baseline(team.pk, weeks, start, end)
    _decision_latency(team.pk, weeks, start, end)
    metrics = mm.window_metrics(weeks.tallies.values())
    return Evidence(as_of=end, window_start=start, metrics={m.key: metrics[m.key] for m in mm.EVIDENCE_METRICS},
                    weeks=weeks.tallies)


def latest_assessments(*, team: Team, as_of: dt.datetime | None = None) -> list[MaturityAssessment]:
    """Each respondent's most recent questionnaire (one query)."""
    qs = MaturityAssessment.objects.filter(team=team)
    if as_of is not None:
        qs = qs.filter(created_at__lte=as_of)
    newest = qs.filter(respondent=OuterRef("respondent")).order_by("-created_at", "-id").values("pk")[:1]
    return list(
        qs.filter(respondent__isnull=False).annotate(newest=Subquery(newest)).filter(pk=F("newest"))
        .select_related("respondent").order_by("-created_at")
    )


def assessment_for(*, team: Team, user: Any) -> MaturityAssessment | None:
    return (
        MaturityAssessment.objects.filter(team=team, respondent=user).order_by("-created_at", "-id").first()
    )


@dataclass
class MaturityReport:
    team: Team
    evidence: Evidence
    assessments: list[MaturityAssessment]
    self_cells: dict[mm.Cell, mm.CellScore]
    evidence_cells: dict[mm.Cell, mm.CellScore]
    gaps: list[mm.Gap]
    levels: list[mm.LevelResult]
    self_by_stage: dict[str, float | None] = field(default_factory=dict)
    evidence_by_stage: dict[str, float | None] = field(default_factory=dict)

    @property
    def self_index(self) -> float | None:
        return mm.grid_index(self.self_cells)

    @property
    def evidence_index(self) -> float | None:
        return mm.grid_index(self.evidence_cells)

    @property
    def google(self) -> mm.LevelResult:
        return self.levels[0]

    @property
    def azure(self) -> mm.LevelResult:
        return self.levels[1]

    @property
    def insufficient_count(self) -> int:
        return sum(1 for c in self.evidence_cells.values() if c.state == "insufficient")

    def snapshot_data(self) -> dict[str, Any]:
        """What a nightly snapshot keeps: enough to draw the trend and compare cells later."""
        return {
            "as_of": self.evidence.as_of.isoformat(),
            "window_days": self.evidence.window_days,
            "self_index": self.self_index,
            "evidence_index": self.evidence_index,
            "respondents": len(self.assessments),
            "google_level": self.google.level,
            "azure_level": self.azure.level,
            "metrics": {k: v.as_dict() for k, v in self.evidence.metrics.items()},
            "evidence_cells": {f"{s}.{a}": c.score for (s, a), c in self.evidence_cells.items()},
            "self_cells": {f"{s}.{a}": c.score for (s, a), c in self.self_cells.items()},
            "gaps": len(self.gaps),
        }


def _by_stage(cells: dict[mm.Cell, mm.CellScore]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for stage in mm.STAGE_KEYS:
        scores = [cells[stage, a].score for a in mm.ATTRIBUTE_KEYS if cells[stage, a].score is not None]
        out[stage] = round(statistics.fmean(scores), 2) if scores else None
    return out


def maturity_report(*, team: Team, as_of: dt.datetime | None = None) -> MaturityReport:
    evidence = maturity_evidence(team=team, as_of=as_of)
    assessments = latest_assessments(team=team, as_of=as_of)
    self_cells = mm.self_grid([a.answers for a in assessments if not mm.answers_errors(a.answers)])
    evidence_cells = mm.evidence_grid(evidence.metrics)
    return MaturityReport(
        team=team,
        evidence=evidence,
        assessments=assessments,
        self_cells=self_cells,
        evidence_cells=evidence_cells,
        gaps=mm.gaps(self_cells, evidence_cells),
        levels=[mm.level_evaluate(model, evidence.week_metrics, evidence.metrics) for model in mm.LEVEL_MODELS],
        self_by_stage=_by_stage(self_cells),
        evidence_by_stage=_by_stage(evidence_cells),
    )


def maturity_trend(*, team: Team, limit: int = 366) -> list[MaturitySnapshot]:
    """Snapshots oldest first (one query)."""
    rows = list(MaturitySnapshot.objects.filter(team=team).order_by("-date")[:limit])
    rows.reverse()
    return rows


def team_ids_for_snapshot() -> Iterable[int]:
    return Team.objects.order_by("pk").values_list("pk", flat=True)
