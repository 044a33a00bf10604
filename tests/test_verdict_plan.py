"""Pre-registration, the analysis plan, exclusions, progress and the board-wide false discovery view."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone
from scipy import stats as sps

from experiments import stats as st
from experiments.errors import DomainError
from experiments.models import (
    Card,
    CardEvent,
    CardKind,
    CriterionAmendment,
    EventKind,
    RunStatus,
    Stage,
    VerdictProposal,
)
from experiments.selectors.verdicts import (
    hypotheses_amended_after_start,
    sample_size_hint,
    verdict_fdr_summary,
)
from experiments.services.cards import card_create, card_update
from experiments.services.runs import MetricPoint, card_link_run, run_create, run_log_metrics, run_update
from experiments.services.verdicts import verdict_decide, verdict_propose

METRIC = "val_auc"


def hypothesis(board, **fields) -> Card:
    plan = {"metric_key": METRIC, "direction": "maximize", "threshold": 0.8, "min_runs": 3}
    plan.update(fields)
    return card_create(board=board, kind=CardKind.HYPOTHESIS, title="Tenure lifts AUC", actor=None, **plan)


_clock = [0]


def run_on(card, value, *, seed=None, baseline=False, status=RunStatus.FINISHED, key=METRIC):
    """A run that finished one minute after the previous one (finish order = creation order)."""
    _clock[0] += 1
    end = timezone.now() - dt.timedelta(days=1) + dt.timedelta(minutes=_clock[0])
    run = run_create(team=card.board.team, status=status, seed=seed, start_time=end - dt.timedelta(minutes=30),
                     end_time=end if status != RunStatus.RUNNING else None)
    if value is not None:
        run_log_metrics(run=run, points=[MetricPoint(key, value, step=1)])
    card_link_run(card=card, run=run, actor=None, is_baseline=baseline)
    return run


# --- pre-registration ---------------------------------------------------------------------------


def test_criterion_freezes_at_first_run_and_later_edits_are_amendments(board, member, team):
    card = hypothesis(board)
    card = card_update(card=card, actor=member, expected_version=None, threshold=0.82)  # before runs: free
    assert not CriterionAmendment.objects.exists()
    run_on(card, 0.9, seed=1, status=RunStatus.RUNNING)
    card.refresh_from_db()
    assert card.criteria_frozen_at is not None
    card = card_update(card=card, actor=member, expected_version=None, statement="Better wording")  # not criterion
    with pytest.raises(DomainError, match="froze") as exc:
        card_update(card=card, actor=member, expected_version=None, threshold=0.7)
    assert exc.value.field == "amendment_reason"
    card = card_update(card=card, actor=member, expected_version=None, threshold=0.7, min_runs=4,
                       amendment_reason="Holdout changed")
    rows = list(CriterionAmendment.objects.filter(card=card).order_by("field"))
    assert [(a.field, a.old_value, a.new_value, a.reason, a.actor, a.runs_started) for a in rows] == [
        ("min_runs", 3, 4, "Holdout changed", member, 1),
        ("threshold", 0.82, 0.7, "Holdout changed", member, 1),
    ]
    event = CardEvent.objects.get(card=card, kind=EventKind.AMENDED)
    assert event.actor == member and event.data["reason"] == "Holdout changed"
    assert hypotheses_amended_after_start(team=team) == {card.pk}


def test_amended_verdict_is_exploratory_and_says_after_how_many_runs(board):
    card = hypothesis(board, threshold=0.95)
    for seed, v in enumerate((0.86, 0.87, 0.88, 0.85)):
        run_on(card, v, seed=seed)
    first = verdict_propose(card=card)
    assert first.proposed == "refuted" and not first.stats["exploratory"]
    card = card_update(card=card, actor=None, expected_version=None, threshold=0.8, amendment_reason="too strict")
    second = verdict_propose(card=card)
    assert second.proposed == "supported" and second.stats["exploratory"]
    assert "criterion amended after 4 runs" in second.explanation


# --- the plan: one decision on the first n runs ---------------------------------------------------


def test_card_waits_in_running_until_the_planned_runs_are_in(board, django_capture_on_commit_callbacks):
    card = hypothesis(board)
    runs = []
    for seed in range(4):
        run = run_create(team=board.team, tags={"mlboard.card": card.key}, seed=seed)
        run_log_metrics(run=run, points=[MetricPoint(METRIC, 0.9 + seed / 100, step=1)])
        runs.append(run)
    card.refresh_from_db()
    assert card.column.stage == Stage.RUNNING and card.criteria_frozen_at is not None
    for run in runs[:2]:
        with django_capture_on_commit_callbacks(execute=True):
            run_update(run=run, status=RunStatus.FINISHED)
    run_update(run=runs[3], status=RunStatus.KILLED)
    card.refresh_from_db()
    assert card.column.stage == Stage.RUNNING  # 2 of 3 usable runs: not analysed yet
    assert not VerdictProposal.objects.filter(card=card).exists()
    with django_capture_on_commit_callbacks(execute=True):
        run_update(run=runs[2], status=RunStatus.FINISHED)
    card.refresh_from_db()
    assert card.column.stage == Stage.ANALYZING
    proposal = VerdictProposal.objects.get(card=card)
    assert proposal.stats["n"] == 3 and proposal.stats["failures"] == 1  # the killed run finished before the third


def test_duplicate_seeds_count_once_and_are_flagged(board):
    card = hypothesis(board)
    for v in (0.9, 0.9, 0.9):
        run_on(card, v, seed=7)
    run_on(card, 0.91, seed=8)
    assert verdict_propose(card=card) is None  # 2 distinct seeds of 3
    run_on(card, 0.92, seed=9)
    proposal = verdict_propose(card=card)
    assert proposal.stats["n"] == 3 and proposal.stats["duplicates"] == 2
    assert [e["reason"] for e in proposal.stats["excluded"]] == ["repeats seed 7 (counted once)"] * 2


def test_zero_width_interval_never_supports(board):
    card = hypothesis(board, threshold=0.5)
    for seed in range(3):
        run_on(card, 0.9, seed=seed)  # identical values: no estimate of noise
    proposal = verdict_propose(card=card)
    assert proposal.proposed == "inconclusive" and proposal.stats["zero_width"]
    assert "zero-width" in proposal.explanation


# --- baseline designs -------------------------------------------------------------------------------


def test_paired_by_default_when_seeds_match_else_welch(board):
    cand, base = [0.86, 0.88, 0.87], [0.84, 0.855, 0.85]
    card = hypothesis(board, threshold=None, min_delta=0.0)
    for seed, (c, b) in enumerate(zip(cand, base, strict=True)):
        run_on(card, b, seed=seed, baseline=True)
        run_on(card, c, seed=seed)
    s = verdict_propose(card=card).stats
    ci = sps.ttest_rel(cand, base).confidence_interval(0.95)
    assert s["design"] == "paired" and s["effect_ci_low"] == pytest.approx(ci.low)
    assert s["p_value"] == pytest.approx(sps.ttest_rel(cand, base, alternative="greater").pvalue)
    g, g_low, g_high = st.hedges_g(cand, base, paired=True)
    assert (s["hedges_g"], s["g_ci_low"], s["g_ci_high"]) == (pytest.approx(g), pytest.approx(g_low),
                                                              pytest.approx(g_high))
    assert s["n_candidate"] == 3 and s["n_baseline"] == 3

    unpaired = hypothesis(board, threshold=None, min_delta=0.0, paired=False)
    for seed, (c, b) in enumerate(zip(cand, base, strict=True)):
        run_on(unpaired, b, seed=seed, baseline=True)
        run_on(unpaired, c, seed=seed)
    s = verdict_propose(card=unpaired).stats
    assert s["design"] == "welch"
    assert s["p_value"] == pytest.approx(sps.ttest_ind(cand, base, equal_var=False, alternative="greater").pvalue)


def test_typed_in_baselines_are_averaged_not_deduplicated(board):
    card = hypothesis(board, threshold=None, min_delta=0.0)
    for value in (0.70, 0.70, 0.90):
        card_create(board=board, kind=CardKind.EXPERIMENT, title="e", actor=None, parent=card, baseline_value=value)
    for seed, v in enumerate((0.80, 0.81, 0.82)):
        run_on(card, v, seed=seed)
    s = verdict_propose(card=card).stats
    assert s["baseline"] == pytest.approx(0.76667, abs=1e-4) and s["baseline_n"] == 3
    assert s["design"] == "constant" and s["effect"] == pytest.approx(0.81 - 2.3 / 3)


def test_equivalence_margin_gives_no_meaningful_effect(board):
    card = hypothesis(board, threshold=None, min_delta=0.0, equivalence_margin=0.05)
    for seed, (c, b) in enumerate(((0.801, 0.800), (0.812, 0.811), (0.790, 0.791), (0.805, 0.804))):
        run_on(card, b, seed=seed, baseline=True)
        run_on(card, c, seed=seed)
    card.min_runs = 4
    Card.objects.filter(pk=card.pk).update(min_runs=4)
    proposal = verdict_propose(card=card)
    assert proposal.proposed == "no_effect" and proposal.get_proposed_display() == "No meaningful effect"
    assert proposal.stats["tost_p"] < 0.025
    assert "smaller than what matters" in proposal.explanation


def test_log_scale_for_a_skewed_lower_is_better_latency(board):
    card = hypothesis(board, metric_key="latency", direction="minimize", threshold=100.0, analysis_scale="log")
    values = [50.0, 80.0, 65.0]
    for seed, v in enumerate(values):
        run_on(card, v, seed=seed, key="latency")
    s = verdict_propose(card=card).stats
    logs = np.log(values)
    # Improvement on the log scale = log(threshold) - log(latency), tested one-sample.
    assert s["effect"] == pytest.approx(math.log(100.0) - logs.mean())
    assert s["p_value"] == pytest.approx(sps.ttest_1samp(logs, math.log(100.0), alternative="less").pvalue)
    assert s["scale"] == "log"


def test_power_and_sample_size_suggestion(board, team):
    for shift in (0.0, 0.05):  # the team's past runs of the metric
        for v in (0.80, 0.82, 0.81):
            run = run_create(team=team, status=RunStatus.FINISHED)
            run_log_metrics(run=run, points=[MetricPoint(METRIC, v + shift, step=1)])
    card = hypothesis(board, threshold=None, min_delta=0.0, smallest_effect=0.02)
    hint = sample_size_hint(card=card)
    # All runs fall in one group (no tracking experiment): the pooled SD is their SD.
    values = [0.80, 0.82, 0.81, 0.85, 0.87, 0.86]
    sd = float(np.std(values, ddof=1))
    assert hint.sd == pytest.approx(sd) and hint.sd_runs == 6
    assert hint.n == st.sample_size(effect=0.02, sd=sd, design="pooled")
    assert f"Suggested {hint.n} runs per arm" in hint.text


def test_create_form_suggests_runs_as_the_plan_is_typed(board, team, member, client_for):
    for shift in (0.0, 0.05):
        for v in (0.80, 0.82, 0.81):
            run = run_create(team=team, status=RunStatus.FINISHED)
            run_log_metrics(run=run, points=[MetricPoint(METRIC, v + shift, step=1)])
    client = client_for(member)
    form = client.get(reverse("board_card_create", args=[board.pk, "hypothesis"])).content.decode()
    url = reverse("board_card_sample_size", args=[board.pk])
    assert 'id="sample-size"' in form and url in form
    sd = float(np.std([0.80, 0.82, 0.81, 0.85, 0.87, 0.86], ddof=1))
    expected = st.sample_size(effect=0.02, sd=sd, design="pooled")
    page = client.get(url, {"metric_key": METRIC, "min_delta": "0", "smallest_effect": "0.02"}).content.decode()
    assert f"Suggested {expected} runs per arm" in page
    # Without a smallest effect, or for a metric never logged, it says what is missing; bad numbers are ignored.
    assert "smallest effect" in client.get(url, {"metric_key": METRIC, "min_delta": "x"}).content.decode()
    assert "No past runs of nope" in client.get(url, {"metric_key": "nope", "smallest_effect": "nan"}).content.decode()


def test_verdict_reports_power_achieved(board):
    card = hypothesis(board, smallest_effect=0.05)
    values = [0.86, 0.87, 0.89]
    for seed, v in enumerate(values):
        run_on(card, v, seed=seed)
    s = verdict_propose(card=card).stats
    expected = st.power(effect=0.05, sd=float(np.std(values, ddof=1)), design="constant", n_a=3)
    assert s["power"] == pytest.approx(expected) and s["power_effect"] == 0.05


# --- many hypotheses ------------------------------------------------------------------------------


def _decided(board, member, count, offset=0):
    for i in range(count):
        card = hypothesis(board, threshold=0.8 + 0.02 * ((i + offset) % 4))
        for seed, v in enumerate((0.84, 0.85, 0.87)):
            run_on(card, v, seed=seed)
        verdict_decide(proposal=verdict_propose(card=card), actor=member)


def test_fdr_summary_matches_scipy_and_constant_queries(board, member, team, django_assert_num_queries):
    start, end = timezone.now() - dt.timedelta(days=1), timezone.now() + dt.timedelta(minutes=1)
    _decided(board, member, 3)
    with django_assert_num_queries(1):
        small = verdict_fdr_summary(team=team, start=start, end=end)
    _decided(board, member, 3, offset=3)
    with django_assert_num_queries(1):
        big = verdict_fdr_summary(team=team, start=start, end=end, board=board)
    assert small.decided == 3 and big.decided == 6
    ps = [p.stats["p_value"] for p in VerdictProposal.objects.order_by("decided_at", "id")]
    assert sorted(r.q_value for r in big.rows) == pytest.approx(sorted(sps.false_discovery_control(ps)))
    supported_q = [r.q_value for r in big.rows if r.decided == "supported"]
    assert big.supported == len(supported_q)
    assert big.expected_false == pytest.approx(max(supported_q) * len(supported_q))


def test_standup_and_velocity_show_the_false_discovery_panel(board, member, team, client_for):
    _decided(board, member, 2)
    client = client_for(member)
    standup = client.get(reverse("standup", args=[team.slug])).content.decode()
    velocity = client.get(reverse("velocity", args=[team.slug])).content.decode()
    for body in (standup, velocity):
        assert "Supported verdicts and false discoveries" in body
        assert "Benjamini" in body and "q (BH)" in body


# --- the card page ----------------------------------------------------------------------------------


def test_card_page_shows_progress_then_the_full_verdict(board, member, client_for):
    card = hypothesis(board, threshold=None, min_delta=0.0, min_runs=3, smallest_effect=0.01)
    client = client_for(member)
    url = reverse("card_detail", args=[card.pk])
    for seed in range(3):
        run_on(card, 0.80 - seed * 0.002, seed=seed, baseline=True)
    run_on(card, 0.84, seed=0)
    run_on(card, 0.85, seed=1)
    body = client.get(url).content.decode()
    assert "2 of 3 runs" in body and "Proposed verdict" not in body
    failed = run_on(card, None, seed=5, status=RunStatus.FAILED)
    run_on(card, 0.86, seed=2)
    card = card_update(card=card, actor=member, expected_version=None, smallest_effect=0.02,
                       amendment_reason="Product target changed")
    verdict_propose(card=card)
    body = client.get(url).content.decode()
    assert "Proposed verdict" in body
    for text in ("Effect", "Hedges&#x27; g", "p (one-sided)", "n per arm", "3 vs 3", "paired t-test", "Power",
                 "Excluded runs", "run failed", "counts as failure", "Exploratory", "Product target changed",
                 "smallest_effect"):
        assert text in body, text
    assert reverse("run_detail", args=[failed.pk]) in body


def test_amendment_lists_are_constant_queries(board, team, member, django_assert_num_queries):
    from experiments.selectors.verdicts import amendments_for_card

    card = hypothesis(board)
    run_on(card, 0.9, seed=1, status=RunStatus.RUNNING)

    def amend_times(count, start):
        nonlocal card
        for i in range(count):
            card = card_update(card=card, actor=member, expected_version=None, threshold=0.5 + (start + i) / 100,
                               amendment_reason=f"change {start + i}")

    amend_times(2, 0)
    with django_assert_num_queries(1):
        rows = [(a.field, a.actor.label) for a in amendments_for_card(card=card)]
    assert len(rows) == 2
    amend_times(2, 2)
    with django_assert_num_queries(1):
        rows = [(a.field, a.actor.label, a.reason) for a in amendments_for_card(card=card)]
    assert [r[2] for r in rows] == ["change 0", "change 1", "change 2", "change 3"]
    with django_assert_num_queries(1):
        assert hypotheses_amended_after_start(team=team) == {card.pk}
