"""Maturity reads: evidence from the team's data, the self-assessment and the snapshot trend.

Every read runs a fixed number of queries whatever the data size: shares are single
aggregate queries (Count with filter=Q(...)); the reproduction check streams three flat
value lists and groups them in Python, because ordered string aggregation of params (to
fingerprint a configuration) is not available on SQLite.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from .. import maturity as mm
from ..models import (
    Card,
    CardKind,
    CardRun,
    LatestMetric,
    MaturityAssessment,
    MaturitySnapshot,
    Param,
    Run,
    RunStatus,
    Team,
    Trigger,
)


@dataclass
class Evidence:
    as_of: dt.datetime
    window_start: dt.datetime
    metrics: dict[str, mm.MetricValue]

    @property
    def window_days(self) -> int:
        return (self.as_of - self.window_start).days


def _window_runs(team: Team | int, start: dt.datetime, end: dt.datetime) -> QuerySet[Run]:
    team_id = team if isinstance(team, int) else team.pk
    return (
        Run.objects.filter(team_id=team_id, lifecycle_stage="active")
        .annotate(at=Coalesce("start_time", "created_at"))
        .filter(at__gt=start, at__lte=end)
    )


def _run_shares(runs: QuerySet[Run]) -> dict[str, mm.MetricValue]:
    automated = (Trigger.SCHEDULED, Trigger.CI)
    agg = runs.annotate(has_metric=Exists(LatestMetric.objects.filter(run=OuterRef("pk")))).aggregate(
        total=Count("id"),
        code_version=Count("id", filter=~Q(code_version="")),
        data_version=Count("id", filter=~Q(data_version="")),
        seed=Count("id", filter=Q(seed__isnull=False)),
        # `environment` is a JSON object; {} means nothing was recorded.
        environment=Count("id", filter=~Q(environment={}) & Q(environment__isnull=False)),
        metrics_logged=Count("id", filter=Q(has_metric=True)),
        automated=Count("id", filter=Q(trigger__in=automated)),
        scheduled=Count("id", filter=Q(trigger=Trigger.SCHEDULED)),
        ci=Count("id", filter=Q(trigger=Trigger.CI)),
    )
    total = agg.pop("total")
    return {key: mm.share(key, count, total) for key, count in agg.items()}


def _metrics_consistent(values_by_run: list[dict[str, float]]) -> bool:
    """Repeats agree when every metric they all logged is within REPRO_REL_TOL of the mean."""
    shared = set.intersection(*(set(v) for v in values_by_run)) if values_by_run else set()
    if not shared:
        return False
    for key in shared:
        values = [v[key] for v in values_by_run]
        if any(math.isnan(x) for x in values):
            return False
        if any(math.isinf(x) for x in values):
            if len(set(values)) > 1:
                return False
            continue
        mean = statistics.fmean(values)
        if max(values) - min(values) > mm.REPRO_REL_TOL * max(abs(mean), 1e-12):
            return False
    return True


def reproduced_share(runs: QuerySet[Run]) -> mm.MetricValue:
    """Share of finished runs whose configuration (code, data, params) ran again and held up.

    A configuration counts as reproduced when it has runs with two different seeds, or
    repeats with the same seed (or none) whose shared metrics agree within REPRO_REL_TOL.
    """
    finished = runs.filter(status=RunStatus.FINISHED)
    versioned = finished.exclude(code_version="").exclude(data_version="")
    total = finished.count()
    rows = list(versioned.values_list("pk", "code_version", "data_version", "seed"))
    params: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for run_id, key, value in Param.objects.filter(run__in=versioned.values("pk")).order_by().values_list(
        "run_id", "key", "value"
    ):
        params[run_id].append((key, value))
    metrics: dict[int, dict[str, float]] = defaultdict(dict)
    for run_id, key, value, is_nan in LatestMetric.objects.filter(run__in=versioned.values("pk")).values_list(
        "run_id", "key", "value", "is_nan"
    ):
        metrics[run_id][key] = math.nan if is_nan else value

    configs: dict[tuple[Any, ...], list[tuple[int, int | None]]] = defaultdict(list)
    for run_id, code, data, seed in rows:
        configs[code, data, tuple(sorted(params[run_id]))].append((run_id, seed))
    reproduced = 0
    for members in configs.values():
        if len(members) < 2:
            continue
        seeds = {seed for _, seed in members}
        if len(seeds - {None}) >= 2:
            reproduced += len(members)
            continue
        # Same seed (or none): a repeat, which must give a consistent metric.
        by_seed: dict[int | None, list[int]] = defaultdict(list)
        for run_id, seed in members:
            by_seed[seed].append(run_id)
        for run_ids in by_seed.values():
            if len(run_ids) >= 2 and _metrics_consistent([metrics[r] for r in run_ids]):
                reproduced += len(run_ids)
    return mm.share("reproduced", reproduced, total)


def _criteria_first(team_id: int, start: dt.datetime, end: dt.datetime) -> mm.MetricValue:
    first_run = Min(Coalesce("run_links__run__start_time", "run_links__run__created_at"),
                    filter=Q(run_links__is_baseline=False))
    agg = (
        Card.objects.filter(board__team_id=team_id, kind=CardKind.HYPOTHESIS)
        .order_by()
        .annotate(first_run=first_run)
        .filter(first_run__gt=start, first_run__lte=end)
        .aggregate(
            total=Count("id"),
            first=Count("id", filter=Q(criteria_set_at__isnull=False, criteria_set_at__lte=F("first_run"))),
        )
    )
    return mm.share("criteria_first", agg["first"], agg["total"])


def _baseline(team_id: int, start: dt.datetime, end: dt.datetime) -> mm.MetricValue:
    agg = (
        Card.objects.filter(board__team_id=team_id, kind=CardKind.EXPERIMENT, created_at__gt=start,
                            created_at__lte=end)
        .order_by()
        .annotate(baseline_link=Exists(CardRun.objects.filter(card=OuterRef("pk"), is_baseline=True)))
        .aggregate(
            total=Count("id"),
            with_baseline=Count("id", filter=Q(baseline_value__isnull=False) | Q(baseline_run__isnull=False)
                                | Q(baseline_link=True)),
        )
    )
    return mm.share("baseline", agg["with_baseline"], agg["total"])


def _decision_latency(team_id: int, start: dt.datetime, end: dt.datetime) -> mm.MetricValue:
    """Median hours from the last linked run finishing (before the decision) to the verdict."""
    last_end = Max("run_links__run__end_time", filter=Q(run_links__run__end_time__lte=F("decided_at"),
                                                        run_links__is_baseline=False))
    pairs = (
        Card.objects.filter(board__team_id=team_id, kind=CardKind.HYPOTHESIS, decided_at__gt=start,
                            decided_at__lte=end)
        .exclude(verdict="")
        .order_by()
        .annotate(last_end=last_end)
        .filter(last_end__isnull=False)
        .values_list("decided_at", "last_end")
    )
    hours = [(decided - finished).total_seconds() / 3600 for decided, finished in pairs]
    value = round(statistics.median(hours), 2) if hours else None
    return mm.MetricValue(key="decision_latency", sample=len(hours), value=value)


def maturity_evidence(*, team: Team, as_of: dt.datetime | None = None,
                      window_days: int = mm.WINDOW_DAYS) -> Evidence:
    """All evidence metrics over the window ending at `as_of` (now by default). 8 queries."""
    end = as_of or timezone.now()
    start = end - dt.timedelta(days=window_days)
    runs = _window_runs(team, start, end)
    metrics = _run_shares(runs)
    metrics["reproduced"] = reproduced_share(runs)
    metrics["criteria_first"] = _criteria_first(team.pk, start, end)
    metrics["baseline"] = _baseline(team.pk, start, end)
    metrics["decision_latency"] = _decision_latency(team.pk, start, end)
    return Evidence(as_of=end, window_start=start, metrics={m.key: metrics[m.key] for m in mm.EVIDENCE_METRICS})


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
        levels=[mm.level_evaluate(model, evidence.metrics) for model in mm.LEVEL_MODELS],
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
