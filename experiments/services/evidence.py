"""Evidence snapshots: when a verdict is decided, freeze what it was decided on (runs, params, final
metrics, the verdict's statistics, code and data versions, chart data) as one JSON bundle on the
Result card. The bundle is a copy, so it survives later run deletion or re-import."""

from __future__ import annotations

import math
from typing import Any

from django.db import transaction
from django.db.models import Prefetch
from django.utils import timezone

from ..models import Card, CardRun, EvidenceSnapshot, Param, User, VerdictProposal
from ..selectors.metrics import metric_series
from ..selectors.runs import card_link_filter

SNAPSHOT_VERSION = 1
CHART_POINTS = 500


def _number(value: float, is_nan: bool = False) -> float | str:
    """JSON has no NaN/Inf; keep them readable instead of dropping them."""
    if is_nan or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return value


def _jsonable(value: Any) -> Any:
    """Whatever the verdict's statistics hold, as plain JSON (generic: floats, lists, nested dicts)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return _number(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def evidence_bundle(*, hypothesis: Card, proposal: VerdictProposal | None, actor: User | None) -> dict[str, Any]:
    """The bundle's content, read in a fixed number of queries."""
    links = list(
        CardRun.objects.filter(card_link_filter(hypothesis))
        .select_related("run", "card")
        .prefetch_related(Prefetch("run__params", queryset=Param.objects.order_by("key")), "run__latest_metrics")
        .order_by("run__start_time", "run_id")
    )
    runs: dict[int, dict[str, Any]] = {}
    run_objs = {}
    for link in links:
        run = link.run
        entry = runs.get(run.pk)
        if entry is None:
            run_objs[run.pk] = run
            entry = runs[run.pk] = {
                "id": run.pk,
                "external_id": run.external_id,
                "source": run.source,
                "name": run.name,
                "status": run.status,
                "start_time": _iso(run.start_time),
                "end_time": _iso(run.end_time),
                "user": run.user_name,
                "code_version": run.code_version,
                "data_version": run.data_version,
                "seed": run.seed,
                "params": {p.key: p.value for p in run.params.all()},
                "final_metrics": {
                    lm.key: _number(lm.value, lm.is_nan) for lm in sorted(run.latest_metrics.all(), key=lambda m: m.key)
                },
                "is_baseline": False,
                "cards": [],
            }
        entry["is_baseline"] = entry["is_baseline"] or link.is_baseline
        entry["cards"].append(link.card.key)
    charts: dict[str, list[dict[str, Any]]] = {}
    if hypothesis.metric_key and run_objs:
        baselines = {rid for rid, e in runs.items() if e["is_baseline"]}
        series = metric_series(
            runs=list(run_objs.values()), key=hypothesis.metric_key, max_points=CHART_POINTS, baseline_ids=baselines
        )
        charts[hypothesis.metric_key] = [
            {"run_id": s.run_id, "label": s.label, "steps": s.steps, "values": s.values, "baseline": s.is_baseline,
             "total_points": s.total_points}
            for s in series
        ]
    verdict: dict[str, Any] = {}
    if proposal is not None:
        verdict = {
            "proposal_id": proposal.pk,
            "proposed": proposal.proposed,
            "decided": proposal.decided,
            "status": proposal.status,
            "explanation": proposal.explanation,
            "note": proposal.note,
            "decided_at": _iso(proposal.decided_at),
        }
    return {
        "version": SNAPSHOT_VERSION,
        "frozen_at": timezone.now().isoformat(),
        "decided_by": str(actor) if actor else "",
        "hypothesis": {
            "id": hypothesis.pk,
            "key": hypothesis.key,
            "title": hypothesis.title,
            "statement": hypothesis.statement,
            "metric_key": hypothesis.metric_key,
            "direction": hypothesis.direction,
            "threshold": hypothesis.threshold,
            "min_delta": hypothesis.min_delta,
            "min_runs": hypothesis.min_runs,
        },
        "verdict": verdict,
        "statistics": _jsonable(proposal.stats if proposal is not None else {}),
        "runs": list(runs.values()),
        "charts": charts,
    }


@transaction.atomic
def evidence_snapshot_create(
    *, result: Card, hypothesis: Card, proposal: VerdictProposal | None, actor: User | None
) -> EvidenceSnapshot:
    """Freeze the bundle on the Result card; a second call returns the first snapshot unchanged."""
    existing = EvidenceSnapshot.objects.filter(card=result).first()
    if existing is not None:
        return existing
    data = evidence_bundle(hypothesis=hypothesis, proposal=proposal, actor=actor)
    return EvidenceSnapshot.objects.create(card=result, hypothesis=hypothesis, proposal=proposal, data=data)
