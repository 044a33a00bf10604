"""Verdicts: evaluate a hypothesis's pre-registered plan over its runs, then let a person decide.

Evaluation rules (documented for users in the proposal's explanation):
- Pre-registration: the criterion and the plan (planned runs per arm, test, scale, pairing, margins,
  failure policy) freeze when the first evidence run is linked and running. Later edits are
  amendments (services.cards.card_update); a verdict after an amendment made once runs had started is
  *exploratory* and says so.
- Evidence is every run linked to the hypothesis or to one of its child cards, except baselines. Per
  run the metric's *latest* value is used (not the best step: that is selection-biased).
- One decision, not one per look: the confirmatory verdict is computed once, from the first
  `min_runs` usable runs by finish time (distinct seeds; a repeated seed counts once and is flagged).
  Before that the card shows progress ("2 of 5 runs") and no proposal is made. Runs finishing later
  are listed but never re-decide it, so looking after every run cannot inflate false "supported".
- Failed and killed runs, and runs whose metric is NaN or infinite, are never silently dropped: each
  is listed with its reason; by default (failures_count) they are failures, and when more than
  max_failure_share of the runs up to the decision failed, "supported" is blocked.
- Baseline: FINISHED runs linked as baselines (CardRun.is_baseline, or an experiment's
  baseline_run) that finished by the decision, else the experiments' typed-in baseline values (their
  plain average; an explicit constant). Design: paired on seed-matched differences when every
  candidate seed has a baseline run (default); else one baseline run -> two-sample t with pooled
  variance (the candidate's spread stands for the baseline's noise); several -> Welch; a typed-in
  value -> one-sample against the constant.
- Test: t (default), bootstrap or permutation (experiments.stats). Log scale analyses log values:
  the threshold is compared on the log scale and min_delta / the equivalence margin are relative
  (0.05 = 5% better).
- Criteria: threshold and/or min_delta, each judged one-sided at 2.5% (for t: the whole 95% interval on
  the good side -> met, wholly on the bad side -> failed). Supported = every criterion met; refuted =
  any criterion failed; with an equivalence margin, an improvement shown to lie within +-margin
  (TOST) is "no meaningful effect". A zero-width interval (identical values) never supports.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import stats as st
from ..access import membership_for
from ..errors import ConflictError, DomainError, PermissionDeniedError
from ..models import (
    TERMINAL_STATUSES,
    AnalysisScale,
    Card,
    CardKind,
    CardRun,
    Column,
    CriterionAmendment,
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
from .cards import card_create, card_lock, card_move_to_stage, event_record

CONFIDENCE_LEVEL = st.LEVEL
FAILED_STATUSES = (RunStatus.FAILED, RunStatus.KILLED)
_FAR_FUTURE = datetime.max.replace(tzinfo=None)


def _fmt(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class Evaluation:
    verdict: str | None  # None while the planned runs are not in (no proposal is made)
    stats: dict[str, Any]
    explanation: str
    fingerprint: str
    ready: bool = True


@dataclass
class Progress:
    usable: int
    planned: int
    running: int

    @property
    def ready(self) -> bool:
        return self.usable >= self.planned

    @property
    def text(self) -> str:
        return f"{self.usable} of {_plural(self.planned, 'run')}"


@dataclass
class _Criterion:
    name: str  # "threshold" or "min_delta"
    outcome: str  # "met", "failed", "undecided", "unavailable"
    sentence: str
    p_value: float | None = None


@dataclass
class _Run:
    id: int
    name: str
    status: str
    seed: int | None
    end_time: datetime | None
    value: float | None = None
    is_nan: bool = False
    missing: bool = True


@dataclass
class _Sample:
    """Candidate runs split into the confirmatory sample, exclusions and later runs."""

    used: list[_Run] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0
    later: list[_Run] = field(default_factory=list)
    running: int = 0
    duplicates: int = 0
    cutoff: datetime | None = None


def _sort_key(run: _Run) -> tuple[datetime, int]:
    end = run.end_time.replace(tzinfo=None) if run.end_time else _FAR_FUTURE
    return end, run.id


def _usable_value(run: _Run, *, log: bool) -> tuple[float | None, str]:
    """(value on the analysis scale, reason it is unusable)."""
    if run.missing:
        return None, "never logged the metric"
    if run.is_nan:
        return None, "diverged (NaN)"
    if run.value is None or math.isinf(run.value):
        return None, "diverged (infinite)"
    if log:
        if run.value <= 0:
            return None, "not positive, so it has no log"
        return math.log(run.value), ""
    return run.value, ""


def _split(runs: list[_Run], *, planned: int, log: bool, failures_count: bool) -> _Sample:
    sample = _Sample()
    seeds: set[int] = set()
    for run in sorted(runs, key=_sort_key):
        if run.status not in TERMINAL_STATUSES:
            sample.running += 1
            continue
        if len(sample.used) >= planned:
            sample.later.append(run)
            continue
        entry = {"run_id": run.id, "name": run.name, "seed": run.seed}
        if run.status in FAILED_STATUSES:
            sample.failures += 1 if failures_count else 0
            sample.excluded.append({**entry, "reason": f"run {run.status.lower()}", "failure": failures_count})
            continue
        value, reason = _usable_value(run, log=log)
        if value is None:
            diverged = reason.startswith("diverged")
            sample.failures += 1 if diverged and failures_count else 0
            sample.excluded.append({**entry, "reason": reason, "failure": diverged and failures_count})
            continue
        if run.seed is not None and run.seed in seeds:
            sample.duplicates += 1
            sample.excluded.append({**entry, "reason": f"repeats seed {run.seed} (counted once)", "failure": False})
            continue
        if run.seed is not None:
            seeds.add(run.seed)
        run.value = value
        sample.used.append(run)
        if len(sample.used) == planned:
            sample.cutoff = run.end_time
    return sample


def _load(card: Card) -> tuple[list[_Run], list[_Run], list[float]]:
    """Candidate runs, baseline runs and typed-in baseline values: three queries."""
    links = list(
        CardRun.objects.filter(Q(card=card) | Q(card__parent=card))
        .values_list("run_id", "is_baseline", "run__status", "run__seed", "run__end_time", "run__name")
        .order_by("run_id")
    )
    candidates: dict[int, _Run] = {}
    baselines: dict[int, _Run] = {}
    for run_id, is_baseline, status, seed, end, name in links:
        (baselines if is_baseline else candidates)[run_id] = _Run(run_id, name, status, seed, end)
    children = list(
        Card.objects.filter(parent=card).values_list(
            "baseline_run_id", "baseline_run__status", "baseline_run__seed", "baseline_run__end_time",
            "baseline_run__name", "baseline_value",
        ).order_by("pk")
    )
    typed: list[float] = []
    for run_id, status, seed, end, name, value in children:
        if run_id is not None:
            baselines.setdefault(run_id, _Run(run_id, name, status, seed, end))
        if value is not None:
            typed.append(value)  # one value per experiment, never de-duplicated
    # A run used as evidence for the hypothesis is never also its own baseline.
    for run_id in candidates:
        baselines.pop(run_id, None)
    wanted = [r for r, run in {**candidates, **baselines}.items() if run.status == RunStatus.FINISHED]
    for run_id, value, is_nan in LatestMetric.objects.filter(run_id__in=wanted, key=card.metric_key).values_list(
        "run_id", "value", "is_nan"
    ):
        run = candidates.get(run_id) or baselines[run_id]
        run.value, run.is_nan, run.missing = value, is_nan, False
    return list(candidates.values()), list(baselines.values()), typed


def evidence_runs_started(*, card: Card) -> int:
    """How many evidence runs (not baselines) of a hypothesis have started."""
    links = CardRun.objects.filter(Q(card=card) | Q(card__parent=card), is_baseline=False)
    return links.values("run_id").distinct().count()


def hypothesis_freeze(*, card: Card) -> bool:
    """Freeze a hypothesis's criterion and plan (idempotent); called when a linked run starts."""
    if card.kind != CardKind.HYPOTHESIS:
        return False
    return bool(Card.objects.filter(pk=card.pk, criteria_frozen_at=None).update(criteria_frozen_at=timezone.now()))


def verdict_progress(*, card: Card) -> Progress | None:
    """Usable runs toward the planned n (the same rule as the decision); None without a criterion."""
    if card.kind != CardKind.HYPOTHESIS or not card.metric_key or not card.direction:
        return None
    candidates, _b, _t = _load(card)
    planned = max(1, card.min_runs or 1)
    sample = _split(candidates, planned=planned, log=card.analysis_scale == AnalysisScale.LOG,
                    failures_count=card.failures_count)
    return Progress(usable=len(sample.used), planned=planned, running=sample.running)


def _scale_target(value: float, *, log: bool) -> float:
    """A relative margin (log scale) or an absolute one (raw scale), as an improvement on the analysis scale."""
    return math.log1p(value) if log else value


def _judge_p(comparison: st.Comparison, target: float) -> tuple[str, float]:
    p_good = comparison.p_value(target, "greater")
    if comparison.zero_width:
        return "undecided", p_good
    if p_good < st.ALPHA:
        return "met", p_good
    if comparison.p_value(target, "less") < st.ALPHA:
        return "failed", p_good
    return "undecided", p_good


def verdict_evaluate(*, card: Card, unless_fingerprint: str | None = None) -> Evaluation | None:
    """Compute (without saving) the verdict a hypothesis's runs support; None if there is nothing to judge.

    With unless_fingerprint, the statistics are skipped when the inputs are unchanged (verdict None)."""
    if card.kind != CardKind.HYPOTHESIS or not card.metric_key or not card.direction:
        return None
    if card.threshold is None and card.min_delta is None:
        return None
    candidates, baseline_runs, typed = _load(card)
    if not candidates:
        return None
    log = card.analysis_scale == AnalysisScale.LOG
    planned = max(1, card.min_runs or 1)
    sample = _split(candidates, planned=planned, log=log, failures_count=card.failures_count)
    metric = card.metric_key
    progress = Progress(len(sample.used), planned, sample.running)
    if not progress.ready:
        text = (
            f"Collecting runs: {progress.text} with a usable {metric} so far "
            f"({sample.running} running); the verdict is computed once, when the planned runs are in."
        )
        return Evaluation(verdict=None, stats={"n": progress.usable, "planned": planned, "progress": progress.text},
                          explanation=text, fingerprint="", ready=False)
    amendment = (
        CriterionAmendment.objects.filter(card=card, runs_started__gt=0).order_by("created_at", "id")
        .values_list("runs_started", flat=True).first()
    )
    amendments = CriterionAmendment.objects.filter(card=card).count() if amendment is not None else 0

    sign = -1.0 if card.direction == Direction.MINIMIZE else 1.0
    raw_values = [run.value for run in sample.used]  # analysis scale
    oriented = [sign * v for v in raw_values]
    # Baseline runs that finished by the decision; a later baseline run cannot re-decide it either.
    cutoff = sample.cutoff.replace(tzinfo=None) if sample.cutoff else _FAR_FUTURE
    base_ok: list[_Run] = []
    base_seeds: set[int] = set()
    for run in sorted(baseline_runs, key=_sort_key):
        if run.status != RunStatus.FINISHED or _sort_key(run)[0] > cutoff:
            continue
        value, _reason = _usable_value(run, log=log)
        if value is None or (run.seed is not None and run.seed in base_seeds):
            continue
        if run.seed is not None:
            base_seeds.add(run.seed)
        run.value = value
        base_ok.append(run)

    # The decision depends only on the confirmatory runs, the baseline and the plan: later runs leave
    # the fingerprint unchanged (no re-decision), an amendment changes it (a new, exploratory proposal).
    material = {
        "used": [(run.id, run.value) for run in sample.used],
        "excluded": [(e["run_id"], e["reason"]) for e in sample.excluded],
        "baseline": [(run.id, run.value) for run in base_ok],
        "typed": typed,
        "plan": [metric, card.direction, card.threshold, card.min_delta, planned, card.analysis_test,
                 card.analysis_scale, card.paired, card.equivalence_margin, card.smallest_effect,
                 card.failures_count, card.max_failure_share],
        "amendments": amendments,
    }
    fingerprint = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    if fingerprint == unless_fingerprint:
        return Evaluation(verdict=None, stats={}, explanation="", fingerprint=fingerprint)

    criteria: list[_Criterion] = []
    notes: list[str] = []
    primary: st.Comparison | None = None
    reference = "none"
    baseline_mean: float | None = None
    seed_for = int(hashlib.sha256(str(card.pk).encode()).hexdigest()[:8], 16)
    enough = len(oriented) >= 2
    scale_word = " (log scale)" if log else ""
    what = f"log {metric}" if log else metric

    if not enough:
        notes.append("One run cannot estimate the run-to-run noise; plan at least 2 runs per arm.")
    if card.threshold is not None:
        if enough:
            thr = math.log(card.threshold) if log else card.threshold
            comp = st.compare(oriented, constant=sign * thr, test=card.analysis_test, seed=seed_for)
            outcome, p = _judge_p(comp, 0.0)
            low, high = sorted((sign * comp.ci_low + thr, sign * comp.ci_high + thr))
            side = "below" if card.direction == Direction.MINIMIZE else "above"
            span = f"the 95% CI of the mean {what} ({_fmt(low)} to {_fmt(high)})"
            target = f"the threshold {_fmt(thr)}{scale_word}"
            sentence = {
                "met": f"{span} is entirely {side} {target}",
                "failed": f"{span} is entirely on the wrong side of {target}",
                "undecided": f"{span} straddles {target}",
            }[outcome]
            if comp.zero_width:
                sentence = f"all runs gave the same {what}, a zero-width interval that cannot support a verdict"
            criteria.append(_Criterion("threshold", outcome, sentence, p))
            primary = comp
            reference = "threshold"
        else:
            criteria.append(_Criterion("threshold", "undecided", "a single run has no interval"))
    delta_comp: st.Comparison | None = None
    if card.min_delta is not None:
        seeds = [run.seed for run in sample.used]
        by_seed = {run.seed: run for run in base_ok if run.seed is not None}
        if base_ok and enough:
            paired = card.paired and all(s is not None and s in by_seed for s in seeds)
            base_vals = (
                [sign * by_seed[s].value for s in seeds] if paired else [sign * run.value for run in base_ok]
            )
            design = "paired" if paired else ("pooled" if len(base_ok) == 1 else "welch")
            delta_comp = st.compare(oriented, base_vals, design=design, test=card.analysis_test, seed=seed_for)
            baseline_mean = sign * st.mean(base_vals)
            reference = "runs"
            if card.paired and not paired and any(s is not None for s in seeds):
                notes.append("Seeds do not all match baseline runs, so the comparison is unpaired.")
        elif typed and enough:
            baseline_mean = st.mean([math.log(v) if log and v > 0 else v for v in typed])
            delta_comp = st.compare(oriented, constant=sign * baseline_mean, test=card.analysis_test, seed=seed_for)
            reference = "value"
        if delta_comp is None:
            reason = (
                "a single run has no interval" if (base_ok or typed) else
                "no baseline is known (link a baseline run or set a baseline value), "
                "so the required improvement cannot be checked"
            )
            criteria.append(_Criterion("min_delta", "unavailable" if not (base_ok or typed) else "undecided", reason))
        else:
            target = _scale_target(card.min_delta, log=log)
            outcome, p = _judge_p(delta_comp, target)
            how = f"{delta_comp.label}: 95% CI of the improvement{scale_word}"
            rng = f"({_fmt(delta_comp.ci_low, signed=True)} to {_fmt(delta_comp.ci_high, signed=True)})"
            required = f"the required improvement {_fmt(target, signed=True)}"
            sentence = {
                "met": f"{how} {rng} clears {required}",
                "failed": f"{how} {rng} stays short of {required}",
                "undecided": f"{how} {rng} straddles {required}",
            }[outcome]
            if delta_comp.zero_width:
                sentence = "the improvement is identical in every run, a zero-width interval that cannot support"
            criteria.append(_Criterion("min_delta", outcome, sentence, p))
            primary = delta_comp

    # Equivalence (TOST) on the comparison with the baseline (or the threshold without one).
    equivalent = False
    tost_p: float | None = None
    if card.equivalence_margin is not None and primary is not None and not primary.zero_width:
        margin = _scale_target(card.equivalence_margin, log=log)
        tost_p = max(primary.p_value(-margin, "greater"), primary.p_value(margin, "less"))
        equivalent = tost_p < st.ALPHA

    outcomes = [c.outcome for c in criteria]
    failure_share = sample.failures / (sample.failures + len(sample.used)) if sample.failures else 0.0
    blocked = card.failures_count and failure_share > card.max_failure_share
    if equivalent:
        verdict = VerdictChoice.NO_EFFECT
        reason = (
            f"the improvement lies within ±{_fmt(card.equivalence_margin)}{scale_word} (equivalence test "
            f"p={tost_p:.3g}): the effect is smaller than what matters"
        )
    elif "failed" in outcomes:
        verdict = VerdictChoice.REFUTED
        reason = ""
    elif outcomes and all(o == "met" for o in outcomes) and not blocked:
        verdict = VerdictChoice.SUPPORTED
        reason = ""
    else:
        verdict = VerdictChoice.INCONCLUSIVE
        reason = ""
    order = {"failed": 0, "unavailable": 1, "undecided": 1, "met": 2}
    criteria_text = "; ".join(c.sentence for c in sorted(criteria, key=lambda c: order[c.outcome]))
    reason = "; ".join(x for x in (reason, criteria_text) if x) or "the criterion cannot be checked"
    if blocked:
        reason += (
            f"; {sample.failures} of {sample.failures + len(sample.used)} runs failed or diverged "
            f"({failure_share:.0%}, more than the {card.max_failure_share:.0%} the plan allows), "
            "which blocks supported"
        )
    exploratory = amendment is not None
    label = VerdictChoice(verdict).label
    head = f"Exploratory (criterion amended after {_plural(amendment, 'run')}): " if exploratory else ""

    summary = st.summarize(raw_values)
    direction_word = "higher" if card.direction == Direction.MAXIMIZE else "lower"
    headline = (
        f"Decided on the first {_plural(len(raw_values), 'run')} by finish time (planned {planned}); "
        f"mean {what} {_fmt(summary.mean)}"
        + (f" (std {_fmt(summary.std)})" if summary.std is not None else "")
        + f"; {direction_word} is better."
    )
    effect_bits: list[str] = []
    if primary is not None:
        effect_bits.append(
            f"Effect {_fmt(primary.estimate, signed=True)} (95% CI {_fmt(primary.ci_low, signed=True)} to "
            f"{_fmt(primary.ci_high, signed=True)}), {primary.label}, n={primary.n_a}"
            + (f" vs {primary.n_b}" if primary.n_b else "")
        )
        if primary.hedges_g is not None:
            effect_bits.append(
                f"Hedges' g {primary.hedges_g:.2f} (95% CI {primary.g_ci_low:.2f} to {primary.g_ci_high:.2f})"
            )
    p_value = max((c.p_value for c in criteria if c.p_value is not None), default=None)
    if p_value is not None:
        effect_bits.append(f"one-sided p={p_value:.3g}")
    power_effect, power_value = _power(card=card, comparison=primary, log=log)
    if power_value is not None:
        effect_bits.append(f"power {power_value:.0%} to detect {_fmt(power_effect, signed=True)}{scale_word}")
    if baseline_mean is not None:
        origin = (
            f"mean of {_plural(len(base_ok), 'baseline run')}" if reference == "runs"
            else f"average of {_plural(len(typed), 'typed-in baseline value')}"
        )
        notes.append(f"Baseline {_fmt(math.exp(baseline_mean) if log else baseline_mean)} ({origin}).")
    for entry in sample.excluded:
        notes.append(f"Excluded run {entry['name'] or entry['run_id']}: {entry['reason']}.")
    if sample.later:
        notes.append(f"{_plural(len(sample.later), 'later run')} shown but not part of the decision.")
    explanation = " ".join(
        [f"{head}{label}: {reason}.", headline, *([". ".join(effect_bits) + "."] if effect_bits else []), *notes]
    )

    delta = (summary.mean - (math.exp(baseline_mean) if log else baseline_mean)) if (
        baseline_mean is not None and summary.mean is not None and not log) else None
    stats: dict[str, Any] = {
        "metric_key": metric,
        "direction": card.direction,
        "value": "latest",
        "n": summary.n,
        "min_runs": planned,
        "planned": planned,
        "mean": summary.mean,
        "std": summary.std,
        "ci_low": summary.ci_low,
        "ci_high": summary.ci_high,
        "ci_level": CONFIDENCE_LEVEL,
        "scale": card.analysis_scale,
        "threshold": card.threshold,
        "min_delta": card.min_delta,
        "baseline": (math.exp(baseline_mean) if log else baseline_mean) if baseline_mean is not None else None,
        "baseline_source": reference if reference in ("runs", "value") else "none",
        "baseline_n": len(base_ok) if reference == "runs" else (len(typed) if reference == "value" else 0),
        "delta": delta,
        "improvement": sign * delta if delta is not None else None,
        "delta_ci_low": (sign * delta_comp.ci_low if sign > 0 else sign * delta_comp.ci_high) if delta_comp else None,
        "delta_ci_high": (sign * delta_comp.ci_high if sign > 0 else sign * delta_comp.ci_low) if delta_comp else None,
        "criteria": {c.name: c.outcome for c in criteria},
        "test": primary.test if primary else card.analysis_test,
        "design": primary.design if primary else None,
        "test_label": primary.label if primary else None,
        "effect": primary.estimate if primary else None,
        "effect_ci_low": primary.ci_low if primary else None,
        "effect_ci_high": primary.ci_high if primary else None,
        "effect_reference": reference,
        "hedges_g": primary.hedges_g if primary else None,
        "g_ci_low": primary.g_ci_low if primary else None,
        "g_ci_high": primary.g_ci_high if primary else None,
        "p_value": p_value,
        "n_candidate": primary.n_a if primary else len(raw_values),
        "n_baseline": primary.n_b if primary else 0,
        "zero_width": bool(primary and primary.zero_width),
        "power": power_value,
        "power_effect": power_effect,
        "equivalence_margin": card.equivalence_margin,
        "tost_p": tost_p,
        "failures": sample.failures,
        "failure_share": failure_share,
        "failures_block": blocked,
        "duplicates": sample.duplicates,
        "excluded": sample.excluded,
        "excluded_nan": sum(1 for e in sample.excluded if e["reason"] == "diverged (NaN)"),
        "excluded_inf": sum(1 for e in sample.excluded if e["reason"] == "diverged (infinite)"),
        "missing_metric": sum(1 for e in sample.excluded if e["reason"] == "never logged the metric"),
        "unfinished": sample.running,
        "run_ids": sorted(run.id for run in sample.used),
        "excluded_run_ids": sorted(e["run_id"] for e in sample.excluded),
        "later_run_ids": sorted(run.id for run in sample.later),
        "baseline_run_ids": sorted(run.id for run in base_ok) if reference == "runs" else [],
        "values": {str(run.id): (math.exp(run.value) if log else run.value) for run in sample.used},
        "exploratory": exploratory,
        "amended_after_runs": amendment,
        "amendments": amendments,
    }
    return Evaluation(verdict=verdict, stats=stats, explanation=explanation, fingerprint=fingerprint)


def _power(*, card: Card, comparison: st.Comparison | None, log: bool) -> tuple[float | None, float | None]:
    """Power of the design actually run to detect the smallest effect that matters (else 1 SD)."""
    if comparison is None or comparison.sd is None or not comparison.sd > 0:
        return None, None
    if card.smallest_effect is not None:
        effect = _scale_target(card.smallest_effect, log=log)
    else:
        effect = comparison.sd
    return effect, st.power(effect=effect, sd=comparison.sd, design=comparison.design,
                            n_a=comparison.n_a, n_b=comparison.n_b)


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None: PostgreSQL's jsonb has no representation for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


@transaction.atomic
def verdict_propose(*, card: Card) -> VerdictProposal | None:
    """Evaluate a hypothesis and store a proposal; returns None when nothing new was proposed."""
    # Lock the hypothesis so two concurrent evaluations cannot both create a proposal.
    card = card_lock(card=card)
    last = VerdictProposal.objects.filter(card=card).order_by("-created_at", "-id").first()
    evaluation = verdict_evaluate(card=card, unless_fingerprint=last.run_fingerprint if last else None)
    if evaluation is None:
        return None
    if not evaluation.ready:
        # Evidence shrank below the plan (a run was unlinked): an open proposal no longer stands.
        VerdictProposal.objects.filter(card=card, status=VerdictStatus.PROPOSED).update(
            status=VerdictStatus.SUPERSEDED
        )
        return None
    if last is not None and last.run_fingerprint == evaluation.fingerprint:
        return None
    superseded = VerdictProposal.objects.filter(card=card, status=VerdictStatus.PROPOSED).update(
        status=VerdictStatus.SUPERSEDED
    )
    proposal = VerdictProposal.objects.create(
        card=card,
        proposed=evaluation.verdict,
        stats=_json_safe(evaluation.stats),
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
            "p_value": _json_safe(evaluation.stats["p_value"]),
            "exploratory": evaluation.stats["exploratory"],
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
    proposal = VerdictProposal.objects.select_for_update(of=("self",)).select_related("card__board").get(pk=proposal.pk)
    hypothesis = card_lock(card=proposal.card)
    _ensure_decider(actor=actor, card=hypothesis)
    if proposal.status == VerdictStatus.SUPERSEDED:
        raise ConflictError(
            f"This proposal for {hypothesis.key} was replaced by a newer one after the evidence or the "
            "criterion changed; review the latest proposal."
        )
    if proposal.status != VerdictStatus.PROPOSED:
        who = f" by {proposal.decided_by}" if proposal.decided_by else ""
        raise ConflictError(f"The verdict for {hypothesis.key} was already decided{who} ({proposal.decided}).")
    decided = verdict or proposal.proposed
    if decided not in VerdictChoice.values:
        raise DomainError(
            f"Unknown verdict {decided!r}; use supported, refuted, inconclusive or no_effect.", field="verdict"
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
