"""Verdicts: evaluate a hypothesis's success criterion over its runs, then let a person decide.

Evaluation rules (documented for users in the proposal's explanation):
- Evidence is every FINISHED run linked to the hypothesis or to one of its child cards, except
  baseline links. Running, failed and killed runs are counted but not used.
- Per run the metric's *latest* value (LatestMetric: highest step, then timestamp) is used, not the
  best value over training: picking each run's best step is an optimistic, selection-biased number,
  while the latest value is what the finished model actually scores. Runs whose latest value is NaN
  or infinite are excluded and counted; runs that never logged the metric are counted as missing.
- Across runs (seeds): mean, sample std and a 95% Student-t confidence interval for the mean.
- Baseline: FINISHED runs linked as baselines (CardRun.is_baseline, or an experiment's baseline_run),
  else the experiments' baseline_value, else none. With two or more baseline runs the improvement
  is tested with Welch's interval for the difference of means (the baseline is noisy too); with a
  single baseline value it is treated as fixed.
- Criteria: threshold (absolute) and/or min_delta (improvement over the baseline, positive means
  better in the hypothesis's direction). Each criterion is 'met' when the whole interval is on the
  good side, 'failed' when the whole interval is on the bad side, otherwise undecided.
  Supported = every criterion met; refuted = any criterion failed; otherwise inconclusive.
  Fewer than min_runs usable runs is always inconclusive, and with a single run the value itself
  is compared (min_runs=1 means the team accepted one-run evidence).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..access import membership_for
from ..errors import ConflictError, DomainError, PermissionDeniedError
from ..models import (
    Card,
    CardKind,
    CardRun,
    Column,
    Direction,
    EventKind,
    LatestMetric,
    RunStatus,
    Stage,
    User,
    VerdictChoice,
    VerdictProposal,
    VerdictStatus,
)
from ..stats import Summary, summarize, welch_interval
from .cards import card_create, card_move_to_stage, event_record

CONFIDENCE_LEVEL = 0.95


def _fmt(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    text = f"{value:+.4g}" if signed else f"{value:.4g}"
    return text


@dataclass
class Evaluation:
    verdict: str
    stats: dict[str, Any]
    explanation: str
    fingerprint: str


@dataclass
class _Criterion:
    name: str  # "threshold" or "min_delta"
    outcome: str  # "met", "failed", "undecided", "unavailable"
    sentence: str


@dataclass
class _Evidence:
    values: dict[int, float] = field(default_factory=dict)  # run id -> latest finite value
    nan_runs: list[int] = field(default_factory=list)
    inf_runs: list[int] = field(default_factory=list)
    missing_runs: list[int] = field(default_factory=list)


def _collect(run_ids: list[int], latest: dict[int, tuple[float, bool]]) -> _Evidence:
    evidence = _Evidence()
    for run_id in run_ids:
        point = latest.get(run_id)
        if point is None:
            evidence.missing_runs.append(run_id)
        elif point[1]:
            evidence.nan_runs.append(run_id)
        elif math.isinf(point[0]):
            evidence.inf_runs.append(run_id)
        else:
            evidence.values[run_id] = point[0]
    return evidence


def _judge(*, low: float, high: float, target: float, direction: str) -> str:
    """'met' when the whole interval is on the good side of target, 'failed' when wholly on the bad side."""
    if direction == Direction.MINIMIZE:
        low, high, target = -high, -low, -target
    if low > target:
        return "met"
    if high < target:
        return "failed"
    return "undecided"


def verdict_evaluate(*, card: Card) -> Evaluation | None:
    """Compute (without saving) the verdict a hypothesis's runs support; None if there is nothing to judge."""
    if card.kind != CardKind.HYPOTHESIS or not card.metric_key or not card.direction:
        return None
    if card.threshold is None and card.min_delta is None:
        return None
    links = list(
        CardRun.objects.filter(Q(card=card) | Q(card__parent=card))
        .values_list("run_id", "is_baseline", "run__status")
        .order_by("run_id")
    )
    treatment_status: dict[int, str] = {}
    baseline_status: dict[int, str] = {}
    for run_id, is_baseline, status in links:
        (baseline_status if is_baseline else treatment_status)[run_id] = status
    children = list(
        Card.objects.filter(parent=card).values_list("baseline_run_id", "baseline_run__status", "baseline_value")
    )
    for run_id, status, _value in children:
        if run_id is not None:
            baseline_status[run_id] = status
    # A run used as evidence for the hypothesis is never also its own baseline.
    for run_id in treatment_status:
        baseline_status.pop(run_id, None)
    finished = sorted(r for r, s in treatment_status.items() if s == RunStatus.FINISHED)
    if not finished:
        return None
    baseline_runs = sorted(r for r, s in baseline_status.items() if s == RunStatus.FINISHED)
    latest_rows = LatestMetric.objects.filter(run_id__in=finished + baseline_runs, key=card.metric_key).values_list(
        "run_id", "value", "is_nan", "step", "timestamp"
    )
    latest: dict[int, tuple[float, bool]] = {}
    points: dict[int, list[Any]] = {}
    for run_id, value, is_nan, step, ts in latest_rows:
        latest[run_id] = (value, is_nan)
        points[run_id] = [value, is_nan, step, ts]
    evidence = _collect(finished, latest)
    base_evidence = _collect(baseline_runs, latest)
    fixed_baselines = sorted({v for _r, _s, v in children if v is not None})

    values = list(evidence.values.values())
    summary: Summary = summarize(values, level=CONFIDENCE_LEVEL)
    base_values = list(base_evidence.values.values())
    baseline: float | None = None
    baseline_source = "none"
    if base_values:
        baseline = sum(base_values) / len(base_values)
        baseline_source = "runs"
    elif fixed_baselines:
        baseline = sum(fixed_baselines) / len(fixed_baselines)
        baseline_source = "value"

    sign = -1.0 if card.direction == Direction.MINIMIZE else 1.0
    delta = summary.mean - baseline if summary.mean is not None and baseline is not None else None
    metric = card.metric_key
    n_required = max(1, card.min_runs or 1)
    notes: list[str] = []
    criteria: list[_Criterion] = []
    delta_ci: tuple[float, float] | None = None

    if summary.n >= 2:
        low, high = summary.ci_low, summary.ci_high
    else:
        low = high = summary.mean
    if summary.n >= n_required and low is not None and high is not None:
        if card.threshold is not None:
            outcome = _judge(low=low, high=high, target=card.threshold, direction=card.direction)
            side = "below" if card.direction == Direction.MINIMIZE else "above"
            span = (
                f"the 95% CI of {card.metric_key} ({_fmt(low)} to {_fmt(high)})"
                if summary.n >= 2
                else f"the single run's {card.metric_key} ({_fmt(low)})"
            )
            wholly = "entirely " if summary.n >= 2 else ""
            sentence = {
                "met": f"{span} is {wholly}{side} the threshold {_fmt(card.threshold)}",
                "failed": f"{span} is {wholly}on the wrong side of the threshold {_fmt(card.threshold)}",
                "undecided": f"{span} straddles the threshold {_fmt(card.threshold)}",
            }[outcome]
            criteria.append(_Criterion("threshold", outcome, sentence))
        if card.min_delta is not None:
            if baseline is None:
                criteria.append(
                    _Criterion(
                        "min_delta", "unavailable",
                        "no baseline is known (link a baseline run or set a baseline value), "
                        "so the required improvement cannot be checked",
                    )
                )
            else:
                # Improvement in the good direction: positive is better for both directions.
                if len(base_values) >= 2 and summary.n >= 2:
                    diff = welch_interval(values, base_values, level=CONFIDENCE_LEVEL)
                    dlow, dhigh = sorted((sign * diff.ci_low, sign * diff.ci_high))
                    delta_ci = (diff.ci_low, diff.ci_high)
                    how = "Welch 95% CI of the improvement"
                else:
                    dlow, dhigh = sorted((sign * (low - baseline), sign * (high - baseline)))
                    delta_ci = (low - baseline, high - baseline)
                    how = "95% CI of the improvement" if summary.n >= 2 else "the improvement"
                outcome = _judge(low=dlow, high=dhigh, target=card.min_delta, direction=Direction.MAXIMIZE)
                required = f"the required improvement {_fmt(card.min_delta, signed=True)}"
                sentence = {
                    "met": f"{how} ({_fmt(dlow, signed=True)} to {_fmt(dhigh, signed=True)}) clears {required}",
                    "failed": f"{how} ({_fmt(dlow, signed=True)} to {_fmt(dhigh, signed=True)}) "
                    f"stays short of {required}",
                    "undecided": f"{how} ({_fmt(dlow, signed=True)} to {_fmt(dhigh, signed=True)}) "
                    f"straddles {required}",
                }[outcome]
                criteria.append(_Criterion("min_delta", outcome, sentence))

    outcomes = [c.outcome for c in criteria]
    if summary.n < n_required:
        verdict = VerdictChoice.INCONCLUSIVE
        reason = (
            f"only {summary.n} finished run{'s' if summary.n != 1 else ''} with a usable {metric}; "
            f"the hypothesis needs at least {n_required} before it can be supported or refuted"
        )
    else:
        if "failed" in outcomes:
            verdict = VerdictChoice.REFUTED
        elif outcomes and all(o == "met" for o in outcomes):
            verdict = VerdictChoice.SUPPORTED
        else:
            verdict = VerdictChoice.INCONCLUSIVE
        # Every criterion is reported, deciding ones first, so nobody has to guess what was checked.
        order = {"failed": 0, "unavailable": 1, "undecided": 1, "met": 2}
        reason = "; ".join(c.sentence for c in sorted(criteria, key=lambda c: order[c.outcome]))
        reason = reason or "the criterion cannot be checked"

    direction_word = "higher" if card.direction == Direction.MAXIMIZE else "lower"
    if summary.n >= 2:
        headline = (
            f"Mean {metric} over {summary.n} finished runs is {_fmt(summary.mean)} "
            f"(std {_fmt(summary.std)}, 95% CI {_fmt(summary.ci_low)} to {_fmt(summary.ci_high)}; "
            f"{direction_word} is better)."
        )
    elif summary.n == 1:
        headline = f"{metric} of the one finished run is {_fmt(summary.mean)} ({direction_word} is better)."
    else:
        headline = f"No finished run reports a usable {metric}."
    if baseline is not None:
        origin = (
            f"mean of {len(base_values)} baseline run{'s' if len(base_values) != 1 else ''}"
            if baseline_source == "runs"
            else "baseline value set on the experiment"
        )
        delta_text = f"; delta {_fmt(delta, signed=True)}" if delta is not None else ""
        notes.append(f"Baseline {_fmt(baseline)} ({origin}){delta_text}.")
    if evidence.nan_runs:
        notes.append(f"{len(evidence.nan_runs)} run(s) with a NaN {metric} were excluded.")
    if evidence.inf_runs:
        notes.append(f"{len(evidence.inf_runs)} run(s) with an infinite {metric} were excluded.")
    if evidence.missing_runs:
        notes.append(f"{len(evidence.missing_runs)} finished run(s) never logged {metric} and were not counted.")
    unfinished = [s for s in treatment_status.values() if s != RunStatus.FINISHED]
    if unfinished:
        failed = sum(1 for s in unfinished if s in (RunStatus.FAILED, RunStatus.KILLED))
        notes.append(
            f"{len(unfinished)} linked run(s) not finished ({failed} failed or killed) are not counted."
        )
    explanation = " ".join([f"{verdict.label}: {reason}.", headline, *notes])

    stats: dict[str, Any] = {
        "metric_key": metric,
        "direction": card.direction,
        "value": "latest",
        "n": summary.n,
        "min_runs": n_required,
        "mean": summary.mean,
        "std": summary.std,
        "ci_low": summary.ci_low,
        "ci_high": summary.ci_high,
        "ci_level": CONFIDENCE_LEVEL,
        "threshold": card.threshold,
        "min_delta": card.min_delta,
        "baseline": baseline,
        "baseline_source": baseline_source,
        "baseline_n": len(base_values),
        "delta": delta,
        "improvement": sign * delta if delta is not None else None,
        "delta_ci_low": delta_ci[0] if delta_ci else None,
        "delta_ci_high": delta_ci[1] if delta_ci else None,
        "criteria": {c.name: c.outcome for c in criteria},
        "excluded_nan": len(evidence.nan_runs),
        "excluded_inf": len(evidence.inf_runs),
        "missing_metric": len(evidence.missing_runs),
        "unfinished": len(unfinished),
        "run_ids": sorted(evidence.values),
        "excluded_run_ids": sorted(evidence.nan_runs + evidence.inf_runs),
        "baseline_run_ids": sorted(base_evidence.values),
        "values": {str(r): v for r, v in sorted(evidence.values.items())},
    }
    # Same runs, same latest points and same criterion -> same fingerprint (idempotency). A changed
    # criterion or a late metric point is new information and gets a fresh proposal.
    material = {
        "runs": finished,
        "baseline_runs": baseline_runs,
        "points": {str(r): points.get(r) for r in finished + baseline_runs},
        "fixed_baselines": fixed_baselines,
        "criterion": [metric, card.direction, card.threshold, card.min_delta, n_required],
    }
    fingerprint = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    return Evaluation(verdict=verdict, stats=stats, explanation=explanation, fingerprint=fingerprint)


@transaction.atomic
def verdict_propose(*, card: Card) -> VerdictProposal | None:
    """Evaluate a hypothesis and store a proposal; returns None when nothing new was proposed."""
    # Lock the hypothesis so two concurrent evaluations cannot both create a proposal.
    card = Card.objects.select_for_update().select_related("board").get(pk=card.pk)
    evaluation = verdict_evaluate(card=card)
    if evaluation is None:
        return None
    last = VerdictProposal.objects.filter(card=card).order_by("-created_at", "-id").first()
    if last is not None and last.run_fingerprint == evaluation.fingerprint:
        return None
    superseded = VerdictProposal.objects.filter(card=card, status=VerdictStatus.PROPOSED).update(
        status=VerdictStatus.SUPERSEDED
    )
    proposal = VerdictProposal.objects.create(
        card=card,
        proposed=evaluation.verdict,
        stats=evaluation.stats,
        explanation=evaluation.explanation,
        run_fingerprint=evaluation.fingerprint,
    )
    event_record(
        card=card,
        kind=EventKind.VERDICT_PROPOSED,
        actor=None,
        data={
            "proposal_id": proposal.pk,
            "proposed": proposal.proposed,
            "n": evaluation.stats["n"],
            "mean": evaluation.stats["mean"],
            "ci_low": evaluation.stats["ci_low"],
            "ci_high": evaluation.stats["ci_high"],
            "superseded": superseded,
        },
    )
    from .notifications import notify_verdict

    notify_verdict(card=card, proposal=proposal, decided=False, actor=None)
    return proposal


def _ensure_decider(*, actor: User, card: Card) -> None:
    membership = membership_for(user=actor, team=card.board.team_id) if actor is not None else None
    if membership is None or not membership.can_edit:
        raise PermissionDeniedError("Only team members and managers can decide a verdict; viewers can only read.")


@transaction.atomic
def verdict_decide(
    *, proposal: VerdictProposal, actor: User, verdict: str | None = None, note: str = ""
) -> VerdictProposal:
    """Confirm (verdict None or equal to the proposal) or override a proposal, and close the hypothesis."""
    proposal = VerdictProposal.objects.select_for_update().select_related("card__board").get(pk=proposal.pk)
    hypothesis = Card.objects.select_for_update().select_related("board", "column").get(pk=proposal.card_id)
    _ensure_decider(actor=actor, card=hypothesis)
    if proposal.status == VerdictStatus.SUPERSEDED:
        raise ConflictError(
            f"This proposal for {hypothesis.key} was replaced by a newer one after more runs finished; "
            "review the latest proposal."
        )
    if proposal.status != VerdictStatus.PROPOSED:
        who = f" by {proposal.decided_by}" if proposal.decided_by else ""
        raise ConflictError(f"The verdict for {hypothesis.key} was already decided{who} ({proposal.decided}).")
    decided = verdict or proposal.proposed
    if decided not in VerdictChoice.values:
        raise DomainError(
            f"Unknown verdict {decided!r}; use supported, refuted or inconclusive.", field="verdict"
        )
    note = (note or "").strip()
    now = timezone.now()
    proposal.decided = decided
    proposal.status = VerdictStatus.CONFIRMED if decided == proposal.proposed else VerdictStatus.OVERRIDDEN
    proposal.decided_by = actor
    proposal.decided_at = now
    proposal.note = note
    proposal.save(update_fields=["decided", "status", "decided_by", "decided_at", "note"])

    label = VerdictChoice(decided).label
    evidence = proposal.explanation
    if proposal.status == VerdictStatus.OVERRIDDEN:
        evidence = (
            f"{label} (overridden by {actor}; proposed {VerdictChoice(proposal.proposed).label.lower()}). "
            f"{note + ' ' if note else ''}Computed: {proposal.explanation}"
        )
    elif note:
        evidence = f"{proposal.explanation} Note from {actor}: {note}"
    hypothesis.verdict = decided
    hypothesis.decided_at = now
    hypothesis.evidence = evidence
    hypothesis.version += 1
    hypothesis.save(update_fields=["verdict", "decided_at", "evidence", "version", "updated_at"])

    done = Column.objects.filter(board_id=hypothesis.board_id, stage=Stage.DONE).order_by("position").first()
    result = card_create(
        board=hypothesis.board,
        kind=CardKind.RESULT,
        title=f"{label}: {hypothesis.title}"[:200],
        actor=actor,
        column=done,
        parent=hypothesis,
        verdict=decided,
        evidence=evidence,
        learnings=note,
    )
    card_move_to_stage(card=hypothesis, stage=Stage.DONE, actor=actor, reason=f"verdict {decided}")
    event_record(
        card=hypothesis,
        kind=EventKind.VERDICT_DECIDED,
        actor=actor,
        data={
            "proposal_id": proposal.pk,
            "proposed": proposal.proposed,
            "decided": decided,
            "status": proposal.status,
            "note": note,
            "result_card_id": result.pk,
            "result_card": result.key,
        },
    )
    decision_followups(proposal=proposal, hypothesis=hypothesis, result=result, actor=actor)
    return proposal


def decision_followups(*, proposal: VerdictProposal, hypothesis: Card, result: Card, actor: User) -> None:
    """After a decision: experiments leave Analyzing with their hypothesis, the evidence is frozen on
    the result card, and watchers are told."""
    from .cards import card_children_move_to_stage
    from .evidence import evidence_snapshot_create
    from .notifications import notify_verdict

    card_children_move_to_stage(card=hypothesis, stage=Stage.DONE, actor=actor, reason="hypothesis decided")
    evidence_snapshot_create(result=result, hypothesis=hypothesis, proposal=proposal, actor=actor)
    notify_verdict(card=hypothesis, proposal=proposal, decided=True, actor=actor)
