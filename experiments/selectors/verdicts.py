"""Verdict reads: proposals, plan progress, amendments, sample size, and the board-wide false discovery view.

Each list is a fixed number of queries whatever its length."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet

from .. import stats as st
from ..models import (
    AnalysisScale,
    Board,
    Card,
    CardKind,
    CriterionAmendment,
    LatestMetric,
    RunStatus,
    Team,
    VerdictChoice,
    VerdictProposal,
    VerdictStatus,
)
from ..services.verdicts import Progress, verdict_progress


def _with_cards(qs: QuerySet[VerdictProposal]) -> QuerySet[VerdictProposal]:
    return qs.select_related("card__board", "card__column", "card__owner", "decided_by")


def verdict_proposals_pending(*, team: Team, board: Board | None = None) -> list[VerdictProposal]:
    """Open proposals waiting for a person, oldest first (the queue to work through), with their cards."""
    qs = VerdictProposal.objects.filter(card__board__team=team, status=VerdictStatus.PROPOSED)
    if board is not None:
        qs = qs.filter(card__board=board)
    return list(_with_cards(qs).order_by("created_at", "id"))


def verdict_proposals_for_card(*, card: Card) -> list[VerdictProposal]:
    """A hypothesis's proposal history, newest first."""
    return list(_with_cards(VerdictProposal.objects.filter(card=card)).order_by("-created_at", "-id"))


def verdict_proposal_latest_open(*, card: Card) -> VerdictProposal | None:
    return (
        _with_cards(VerdictProposal.objects.filter(card=card, status=VerdictStatus.PROPOSED))
        .order_by("-created_at", "-id")
        .first()
    )


# --- Plan, pre-registration and sample size ------------------------------------------------------


def verdict_plan_progress(*, card: Card) -> Progress | None:
    """Usable runs toward the planned n ("2 of 5 runs"), by the decision's own rule. Three queries."""
    return verdict_progress(card=card)


def hypotheses_amended_after_start(*, team: Team) -> set[int]:
    """Ids of the team's hypotheses whose criterion or plan was amended after runs had started
    (post-hoc criteria: their verdicts are exploratory). One query."""
    return set(
        CriterionAmendment.objects.filter(card__board__team=team, runs_started__gt=0)
        .values_list("card_id", flat=True)
        .distinct()
    )


def amendments_for_card(*, card: Card) -> list[CriterionAmendment]:
    return list(CriterionAmendment.objects.filter(card=card).select_related("actor").order_by("created_at", "id"))


@dataclass
class SampleSizeHint:
    n: int | None  # runs per arm for 80% power; None when it cannot be computed
    sd: float | None  # run-to-run SD of the metric from past runs
    sd_runs: int
    effect: float | None
    design: str
    text: str


SAMPLE_SIZE_PAST_RUNS = 2000


def sample_size_hint(*, card: Card, target_power: float = 0.8) -> SampleSizeHint | None:
    """Suggested runs per arm for `target_power` against the smallest effect that matters.

    The spread comes from the team's past finished runs of the metric: the pooled SD within each tracking
    experiment (runs of one experiment are usually one configuration over seeds). One query.
    """
    if card.kind != CardKind.HYPOTHESIS or not card.metric_key:
        return None
    rows = (
        LatestMetric.objects.filter(
            key=card.metric_key, is_nan=False, run__team_id=card.board.team_id, run__status=RunStatus.FINISHED
        )
        .order_by("-run_id")
        .values_list("run__experiment_id", "value")[:SAMPLE_SIZE_PAST_RUNS]
    )
    groups: dict[int | None, list[float]] = {}
    for experiment_id, value in rows:
        if math.isfinite(value):
            if card.analysis_scale == AnalysisScale.LOG:
                if value <= 0:
                    continue
                value = math.log(value)
            groups.setdefault(experiment_id, []).append(value)
    sd, used = st.pooled_sd(list(groups.values()))
    effect = card.smallest_effect if card.smallest_effect is not None else (
        card.min_delta if card.min_delta else card.equivalence_margin
    )
    if effect is not None and card.analysis_scale == AnalysisScale.LOG:
        effect = math.log1p(effect)
    design = "constant" if card.min_delta is None else "pooled"
    if sd is None:
        return SampleSizeHint(None, None, used, effect, design,
                              f"No past runs of {card.metric_key} with repeated seeds yet, so no spread to size from.")
    if effect is None:
        return SampleSizeHint(None, sd, used, None, design,
                              f"Set the smallest effect that matters to get a suggested number of runs "
                              f"(SD {sd:.3g} from {used} past runs).")
    n = st.sample_size(effect=effect, sd=sd, design=design, target_power=target_power)
    arms = "per arm" if design == "pooled" else ""
    text = (
        f"Suggested {n} runs {arms} for {target_power:.0%} power to detect {effect:+.3g}"
        f"{' (log scale)' if card.analysis_scale == AnalysisScale.LOG else ''}, "
        f"from an SD of {sd:.3g} over {used} past runs"
        + ("; seed-paired baseline runs usually need fewer" if design == "pooled" and card.paired else "")
        + "."
        if n else f"More than 1000 runs would be needed to detect {effect:+.3g} with SD {sd:.3g}."
    )
    return SampleSizeHint(n, sd, used, effect, design, text.replace("  ", " "))


# --- Many hypotheses: Benjamini-Hochberg ---------------------------------------------------------


@dataclass
class FdrRow:
    card_id: int
    key: str
    title: str
    decided: str
    p_value: float | None
    q_value: float | None
    exploratory: bool


@dataclass
class FdrSummary:
    decided: int
    supported: int
    tested: int  # decisions with a p-value (the family BH adjusts over)
    supported_q05: int  # supported verdicts still significant at a 5% false discovery rate
    expected_false: float | None  # about this many of the supported verdicts are expected to be false
    rows: list[FdrRow]


def verdict_fdr_summary(
    *, team: Team, start: datetime, end: datetime, board: Board | None = None
) -> FdrSummary:
    """Decided verdicts of a period with Benjamini-Hochberg q-values over their p-values. One query.

    The expected number of false "supported" is bounded by BH: rejecting everything with q <= q*
    has a false discovery rate of at most q*, so among R supported verdicts whose largest q is q*
    about q* x R are expected to be false.
    """
    qs = VerdictProposal.objects.filter(
        card__board__team=team, decided_at__gte=start, decided_at__lt=end,
        status__in=(VerdictStatus.CONFIRMED, VerdictStatus.OVERRIDDEN),
    )
    if board is not None:
        qs = qs.filter(card__board=board)
    decisions = list(
        qs.order_by("decided_at", "id").values_list("card_id", "card__key", "card__title", "decided", "stats")
    )
    rows = []
    for card_id, key, title, decided, stats_json in decisions:
        p = (stats_json or {}).get("p_value")
        p = float(p) if isinstance(p, int | float) and math.isfinite(p) else None
        rows.append(FdrRow(card_id, key, title, decided, p, None, bool((stats_json or {}).get("exploratory"))))
    tested = [r for r in rows if r.p_value is not None]
    for row, q in zip(tested, st.bh_qvalues([r.p_value for r in tested]), strict=True):
        row.q_value = q
    supported = [r for r in rows if r.decided == VerdictChoice.SUPPORTED]
    qs_supported = [r.q_value for r in supported if r.q_value is not None]
    expected = max(qs_supported) * len(qs_supported) if qs_supported else None
    return FdrSummary(
        decided=len(rows),
        supported=len(supported),
        tested=len(tested),
        supported_q05=sum(1 for q in qs_supported if q <= 0.05),
        expected_false=expected,
        rows=sorted(rows, key=lambda r: (r.q_value is None, r.q_value or 0.0)),
    )


def _f(value: object, fmt: str = ".4g", signed: bool = False) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return format(value, ("+" if signed else "") + fmt)


def verdict_detail_items(stats: dict | None) -> list[tuple[str, str]]:
    """What every verdict shows, from a proposal's stored stats: effect with CI, Hedges' g with CI,
    p-value, n per arm, the test, power and the failure share (no queries)."""
    s = stats or {}
    items: list[tuple[str, str]] = []
    effect, low, high = _f(s.get("effect"), signed=True), _f(s.get("effect_ci_low"), signed=True), _f(
        s.get("effect_ci_high"), signed=True)
    if effect:
        scale = " (log scale)" if s.get("scale") == AnalysisScale.LOG else ""
        against = {"runs": "vs baseline runs", "value": "vs typed-in baseline", "threshold": "vs threshold"}.get(
            s.get("effect_reference"), "")
        items.append(("Effect", f"{effect} [{low} to {high}] {against}{scale}".strip()))
    g = _f(s.get("hedges_g"), ".2f")
    if g:
        g_low, g_high = _f(s.get("g_ci_low"), ".2f"), _f(s.get("g_ci_high"), ".2f")
        items.append(("Hedges' g", f"{g} [{g_low} to {g_high}]" if g_low and g_high else g))
    p = _f(s.get("p_value"), ".3g")
    if p:
        items.append(("p (one-sided)", p))
    if s.get("n_candidate") is not None:
        n_b = s.get("n_baseline") or 0
        items.append(("n per arm", f"{s['n_candidate']}" + (f" vs {n_b}" if n_b else "")))
    if s.get("test_label"):
        items.append(("Test", str(s["test_label"])))
    power = _f(s.get("power"), ".0%")
    if power:
        items.append(("Power", f"{power} to detect {_f(s.get('power_effect'), '.3g', signed=True)}"))
    tost = _f(s.get("tost_p"), ".3g")
    if tost:
        items.append(("Equivalence p", f"{tost} (margin ±{_f(s.get('equivalence_margin'), '.3g')})"))
    if s.get("failures"):
        items.append(("Failed/diverged", f"{s['failures']} ({_f(s.get('failure_share'), '.0%')})"))
    return items
