"""Verdict evaluation and decisions: statistics checked against values computed by hand."""

from __future__ import annotations

import math
import statistics

import pytest

from experiments.errors import ConflictError, DomainError, PermissionDeniedError
from experiments.models import (
    Card,
    CardEvent,
    CardKind,
    EventKind,
    RunStatus,
    Stage,
    VerdictProposal,
    VerdictStatus,
)
from experiments.selectors.verdicts import verdict_proposals_for_card, verdict_proposals_pending
from experiments.services.boards import board_create
from experiments.services.cards import card_create, card_update
from experiments.services.runs import MetricPoint, card_link_run, run_create, run_log_metrics, run_update
from experiments.services.verdicts import verdict_decide, verdict_propose
from experiments.stats import summarize, t_quantile, welch_interval

METRIC = "val_auc"


def make_hypothesis(board, **fields) -> Card:
    defaults = {"metric_key": METRIC, "direction": "maximize", "threshold": 0.8, "min_runs": 3}
    defaults.update(fields)
    return card_create(board=board, kind=CardKind.HYPOTHESIS, title="Tenure features lift AUC", actor=None, **defaults)


def add_run(card: Card, value: float | None, *, key: str = METRIC, baseline: bool = False, status=RunStatus.FINISHED):
    run = run_create(team=card.board.team, status=status)
    if value is not None:
        run_log_metrics(run=run, points=[MetricPoint(key, 0.5, step=0, timestamp=1), MetricPoint(key, value, step=9)])
    card_link_run(card=card, run=run, actor=None, is_baseline=baseline)
    return run


def add_runs(card: Card, values, **kw):
    return [add_run(card, v, **kw) for v in values]


def amend(card: Card, reason: str = "Metric definition changed", **fields) -> Card:
    return card_update(card=card, actor=None, expected_version=None, amendment_reason=reason, **fields)


# --- statistics ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "expected"),
    # Two-sided 95% critical values from printed Student-t tables.
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262), (19, 2.093), (30, 2.042), (120, 1.980)],
)
def test_t_quantile_matches_printed_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-4)


def test_t_quantile_other_levels_and_large_df():
    assert t_quantile(0.995, 5) == pytest.approx(4.032, abs=5e-4)
    assert t_quantile(0.95, 10) == pytest.approx(1.812, abs=5e-4)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)  # tends to the normal quantile


def test_summarize_by_hand():
    values = [0.80, 0.82, 0.84]
    s = summarize(values)
    assert s.n == 3
    assert s.mean == pytest.approx(0.82)
    assert s.std == pytest.approx(0.02)  # sqrt(((-.02)^2 + 0 + .02^2) / 2)
    half = 4.30265 * 0.02 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n) = 0.04968
    assert s.ci_low == pytest.approx(0.82 - half, abs=1e-5)
    assert s.ci_high == pytest.approx(0.82 + half, abs=1e-5)
    assert summarize([0.5]).ci_low is None and summarize([]).mean is None


def test_welch_interval_by_hand():
    a, b = [0.80, 0.81, 0.82], [0.70, 0.72, 0.74]
    d = welch_interval(a, b)
    assert d.delta == pytest.approx(0.09)
    # var(a)/3 = 1e-4/3, var(b)/3 = 4e-4/3 -> df = (5e-4/3)^2 / ((1e-4/3)^2/2 + (4e-4/3)^2/2) = 50/17
    assert d.df == pytest.approx(50 / 17)
    half = t_quantile(0.975, 50 / 17) * math.sqrt(5e-4 / 3)
    assert d.ci_low == pytest.approx(0.09 - half) and d.ci_high == pytest.approx(0.09 + half)


# --- proposals ----------------------------------------------------------------------------------


def test_supported_when_whole_ci_clears_threshold(board):
    card = make_hypothesis(board)
    runs = add_runs(card, [0.86, 0.87, 0.88])
    proposal = verdict_propose(card=card)
    assert proposal.proposed == "supported" and proposal.status == VerdictStatus.PROPOSED
    s = proposal.stats
    assert s["n"] == 3 and s["mean"] == pytest.approx(statistics.mean([0.86, 0.87, 0.88]))
    assert s["std"] == pytest.approx(statistics.stdev([0.86, 0.87, 0.88]))
    half = t_quantile(0.975, 2) * 0.01 / math.sqrt(3)
    assert s["ci_low"] == pytest.approx(0.87 - half) and s["ci_high"] == pytest.approx(0.87 + half)
    assert s["ci_low"] > 0.8
    assert s["threshold"] == 0.8 and s["excluded_nan"] == 0
    assert s["run_ids"] == sorted(r.pk for r in runs)
    assert "Supported" in proposal.explanation and "0.87" in proposal.explanation and "0.8" in proposal.explanation
    event = CardEvent.objects.get(card=card, kind=EventKind.VERDICT_PROPOSED)
    assert event.data["proposal_id"] == proposal.pk and event.data["proposed"] == "supported"


def test_latest_value_is_used_not_best(board):
    card = make_hypothesis(board, min_runs=2, threshold=0.95)
    for last in (0.85, 0.86):
        run = run_create(team=board.team, status=RunStatus.FINISHED)
        # Peaks at 0.97 mid-training, ends lower: the latest value is the evidence.
        run_log_metrics(run=run, points=[MetricPoint(METRIC, 0.97, step=5), MetricPoint(METRIC, last, step=10)])
        card_link_run(card=card, run=run, actor=None)
    proposal = verdict_propose(card=card)
    assert proposal.stats["mean"] == pytest.approx(0.855)
    assert proposal.proposed == "refuted"  # CI .855 +- .064 is wholly below .95


def test_ci_straddling_threshold_is_inconclusive(board):
    card = make_hypothesis(board)
    add_runs(card, [0.78, 0.82, 0.86])  # mean .82, CI .82 +- .099
    proposal = verdict_propose(card=card)
    assert proposal.proposed == "inconclusive"
    assert proposal.stats["ci_low"] < 0.8 < proposal.stats["ci_high"]
    assert "straddles" in proposal.explanation


def test_refuted_when_whole_ci_below_threshold(board):
    card = make_hypothesis(board)
    add_runs(card, [0.70, 0.71, 0.72])
    proposal = verdict_propose(card=card)
    assert proposal.proposed == "refuted"
    assert proposal.stats["ci_high"] < 0.8


def test_too_few_runs_is_never_supported_nor_proposed(board):
    from experiments.services.verdicts import verdict_evaluate, verdict_progress

    card = make_hypothesis(board, min_runs=3)
    add_runs(card, [0.95, 0.96])
    add_run(card, 0.99, status=RunStatus.RUNNING)  # not finished: not evidence
    assert verdict_propose(card=card) is None  # no "inconclusive" proposal before the planned runs
    evaluation = verdict_evaluate(card=card)
    assert not evaluation.ready and evaluation.verdict is None
    assert evaluation.stats["progress"] == "2 of 3 runs"
    progress = verdict_progress(card=card)
    assert (progress.usable, progress.planned, progress.running, progress.ready) == (2, 3, 1, False)


def test_diverged_runs_are_listed_and_block_supported(board):
    card = make_hypothesis(board)
    nan_run = add_run(card, math.nan)  # diverged: evidence against the idea, never dropped silently
    missing = add_run(card, None)  # finished but never logged the metric: excluded, not a failure
    runs = add_runs(card, [0.86, 0.87, 0.88])
    proposal = verdict_propose(card=card)
    s = proposal.stats
    assert s["n"] == 3 and s["excluded_nan"] == 1 and s["missing_metric"] == 1
    assert s["mean"] == pytest.approx(0.87)
    assert nan_run.pk in s["excluded_run_ids"] and nan_run.pk not in s["run_ids"]
    assert s["run_ids"] == sorted(r.pk for r in runs)
    reasons = {e["run_id"]: (e["reason"], e["failure"]) for e in s["excluded"]}
    assert reasons == {nan_run.pk: ("diverged (NaN)", True), missing.pk: ("never logged the metric", False)}
    # 1 of 4 runs failed: 25% is more than the default 20% share, so supported is blocked.
    assert s["failures"] == 1 and s["failure_share"] == pytest.approx(0.25) and s["failures_block"]
    assert proposal.proposed == "inconclusive"
    assert "blocks supported" in proposal.explanation and "diverged (NaN)" in proposal.explanation


def test_failures_allowed_by_the_plan_do_not_block(board):
    card = make_hypothesis(board, failures_count=False)
    add_run(card, math.inf)
    add_run(card, 0.9, status=RunStatus.FAILED)
    add_runs(card, [0.86, 0.87, 0.88])
    proposal = verdict_propose(card=card)
    assert proposal.proposed == "supported" and proposal.stats["failures"] == 0
    assert sorted(e["reason"] for e in proposal.stats["excluded"]) == ["diverged (infinite)", "run failed"]


def test_nan_can_keep_the_plan_unmet(board):
    card = make_hypothesis(board)
    add_runs(card, [0.9, 0.91, math.nan])
    assert verdict_propose(card=card) is None
    assert VerdictProposal.objects.filter(card=card).count() == 0


def test_minimize_direction(board, member):
    card = make_hypothesis(board, metric_key="val_loss", direction="minimize", threshold=0.4)
    add_runs(card, [0.30, 0.31, 0.32], key="val_loss")
    proposal = verdict_propose(card=card)
    assert proposal.proposed == "supported"  # CI .31 +- .025 entirely below 0.4
    # The criterion froze with the first run: tightening it needs a reason and is an amendment.
    with pytest.raises(DomainError, match="froze"):
        card_update(card=card, actor=member, expected_version=None, threshold=0.25)
    card = card_update(card=card, actor=member, expected_version=None, threshold=0.25,
                       amendment_reason="Product asked for 0.25")
    second = verdict_propose(card=card)
    assert second.proposed == "refuted"  # whole CI above 0.25: worse than required
    assert second.stats["exploratory"] and second.stats["amended_after_runs"] == 3
    assert second.explanation.startswith("Exploratory (criterion amended after 3 runs)")
    proposal.refresh_from_db()
    assert proposal.status == VerdictStatus.SUPERSEDED


def test_delta_over_baseline_runs_uses_welch(board):
    card = make_hypothesis(board, threshold=None, min_delta=0.03)
    add_runs(card, [0.80, 0.81, 0.82])
    base = add_runs(card, [0.70, 0.72, 0.74], baseline=True)
    proposal = verdict_propose(card=card)
    s = proposal.stats
    assert s["baseline"] == pytest.approx(0.72) and s["baseline_source"] == "runs" and s["baseline_n"] == 3
    assert s["baseline_run_ids"] == sorted(r.pk for r in base)
    assert s["delta"] == pytest.approx(0.09) and s["improvement"] == pytest.approx(0.09)
    expected = welch_interval([0.80, 0.81, 0.82], [0.70, 0.72, 0.74])
    assert s["delta_ci_low"] == pytest.approx(expected.ci_low) and s["delta_ci_high"] == pytest.approx(expected.ci_high)
    assert expected.ci_low > 0.03
    assert proposal.proposed == "supported"
    assert s["n"] == 3  # baseline runs are not evidence for the hypothesis


def test_delta_requirement_not_met_is_inconclusive_or_refuted(board):
    card = make_hypothesis(board, threshold=None, min_delta=0.05)
    add_runs(card, [0.80, 0.81, 0.82])
    add_runs(card, [0.70, 0.72, 0.74], baseline=True)
    # Welch CI of the improvement is about .049 to .131: it straddles .05.
    assert verdict_propose(card=card).proposed == "inconclusive"
    card2 = make_hypothesis(board, threshold=None, min_delta=0.2)
    add_runs(card2, [0.80, 0.81, 0.82])
    add_runs(card2, [0.70, 0.72, 0.74], baseline=True)
    assert verdict_propose(card=card2).proposed == "refuted"


def test_delta_over_fixed_experiment_baseline_minimize(board):
    hypothesis = make_hypothesis(board, metric_key="loss", direction="minimize", threshold=None, min_delta=0.05)
    experiment = card_create(
        board=board, kind=CardKind.EXPERIMENT, title="Add tenure", actor=None, parent=hypothesis, baseline_value=0.5
    )
    add_runs(experiment, [0.40, 0.41, 0.42], key="loss")  # linked to the experiment, not the hypothesis
    proposal = verdict_propose(card=hypothesis)
    s = proposal.stats
    assert s["baseline"] == 0.5 and s["baseline_source"] == "value"
    assert s["delta"] == pytest.approx(-0.09) and s["improvement"] == pytest.approx(0.09)
    half = t_quantile(0.975, 2) * 0.01 / math.sqrt(3)
    assert s["delta_ci_low"] == pytest.approx(-0.09 - half) and s["delta_ci_high"] == pytest.approx(-0.09 + half)
    assert proposal.proposed == "supported"  # improvement CI .065 to .115 > .05
    assert "Baseline 0.5" in proposal.explanation


def test_delta_over_baseline_runs_minimize(board):
    card = make_hypothesis(board, metric_key="loss", direction="minimize", threshold=None, min_delta=0.03)
    add_runs(card, [0.40, 0.41, 0.42], key="loss")
    add_runs(card, [0.50, 0.52, 0.54], key="loss", baseline=True)
    proposal = verdict_propose(card=card)
    s = proposal.stats
    assert s["delta"] == pytest.approx(-0.11) and s["improvement"] == pytest.approx(0.11)
    expected = welch_interval([0.40, 0.41, 0.42], [0.50, 0.52, 0.54])  # about -0.151 to -0.069
    assert s["delta_ci_high"] == pytest.approx(expected.ci_high) and expected.ci_high < -0.03
    assert proposal.proposed == "supported"


def test_one_baseline_run_counts_its_noise_with_pooled_variance(board):
    hypothesis = make_hypothesis(board, threshold=None, min_delta=0.05)
    base = run_create(team=board.team, status=RunStatus.FINISHED)
    run_log_metrics(run=base, points=[MetricPoint(METRIC, 0.75, step=3)])
    experiment = card_create(board=board, kind=CardKind.EXPERIMENT, title="e", actor=None, parent=hypothesis)
    Card.objects.filter(pk=experiment.pk).update(baseline_run=base)
    add_runs(experiment, [0.86, 0.87, 0.88])
    s = verdict_propose(card=hypothesis).stats
    assert s["baseline"] == pytest.approx(0.75) and s["baseline_source"] == "runs" and s["baseline_n"] == 1
    assert s["baseline_run_ids"] == [base.pk] and base.pk not in s["run_ids"]
    # Pooled two-sample t: the candidate's SD stands for the baseline's noise, se = s * sqrt(1/3 + 1/1).
    half = t_quantile(0.975, 2) * 0.01 * math.sqrt(1 / 3 + 1)
    assert s["delta_ci_low"] == pytest.approx(0.12 - half) and s["design"] == "pooled"
    assert s["n_candidate"] == 3 and s["n_baseline"] == 1


def test_min_delta_without_baseline_is_inconclusive(board):
    card = make_hypothesis(board, threshold=None, min_delta=0.01)
    add_runs(card, [0.86, 0.87, 0.88])
    proposal = verdict_propose(card=card)
    assert proposal.proposed == "inconclusive" and proposal.stats["baseline"] is None
    assert "no baseline" in proposal.explanation


def test_threshold_and_delta_both_required(board):
    card = make_hypothesis(board, threshold=0.95, min_delta=0.03)
    experiment = card_create(
        board=board, kind=CardKind.EXPERIMENT, title="e", actor=None, parent=card, baseline_value=0.7
    )
    add_runs(experiment, [0.86, 0.87, 0.88])
    proposal = verdict_propose(card=card)
    # Delta is met, but the threshold fails -> refuted.
    assert proposal.stats["criteria"] == {"threshold": "failed", "min_delta": "met"}
    assert proposal.proposed == "refuted"


def test_decided_once_later_runs_do_not_redecide_but_amendments_do(board):
    card = make_hypothesis(board)
    add_runs(card, [0.86, 0.87])
    assert verdict_propose(card=card) is None  # 2 of 3: no proposal yet
    add_run(card, 0.88)
    first = verdict_propose(card=card)
    assert first.proposed == "supported"
    assert verdict_propose(card=card) is None  # same runs: nothing new
    later = add_run(card, 0.10)  # a later run is shown but does not re-decide
    assert verdict_propose(card=card) is None
    assert VerdictProposal.objects.filter(card=card).count() == 1
    evaluation_stats = __import__("experiments.services.verdicts", fromlist=["x"]).verdict_evaluate(card=card).stats
    assert evaluation_stats["later_run_ids"] == [later.pk] and evaluation_stats["n"] == 3
    card = amend(card, threshold=0.9)
    second = verdict_propose(card=card)
    assert second is not None and second.proposed == "refuted" and second.stats["exploratory"]
    first.refresh_from_db()
    assert first.status == VerdictStatus.SUPERSEDED and second.status == VerdictStatus.PROPOSED
    assert verdict_propose(card=card) is None
    assert CardEvent.objects.filter(card=card, kind=EventKind.VERDICT_PROPOSED).count() == 2


def test_nothing_to_propose_without_criterion_or_finished_runs(board):
    card = make_hypothesis(board)
    add_run(card, 0.9, status=RunStatus.RUNNING)
    assert verdict_propose(card=card) is None
    bare = card_create(board=board, kind=CardKind.HYPOTHESIS, title="Vague idea", actor=None)
    add_run(bare, 0.9)
    assert verdict_propose(card=bare) is None


# --- decisions ----------------------------------------------------------------------------------


def _proposal(board, values=(0.86, 0.87, 0.88)) -> VerdictProposal:
    card = make_hypothesis(board)
    add_runs(card, list(values))
    return verdict_propose(card=card)


def test_confirm_records_verdict_result_card_and_moves_to_done(board, member):
    proposal = _proposal(board)
    decided = verdict_decide(proposal=proposal, actor=member)
    assert decided.status == VerdictStatus.CONFIRMED and decided.decided == "supported"
    assert decided.decided_by == member and decided.decided_at is not None
    card = Card.objects.select_related("column").get(pk=proposal.card_id)
    assert card.verdict == "supported" and card.decided_at is not None
    assert "0.87" in card.evidence
    assert card.column.stage == Stage.DONE
    result = Card.objects.select_related("column").get(parent=card, kind=CardKind.RESULT)
    assert result.verdict == "supported" and result.column.stage == Stage.DONE
    event = CardEvent.objects.get(card=card, kind=EventKind.VERDICT_DECIDED)
    assert event.actor == member and event.data["result_card"] == result.key and event.data["status"] == "confirmed"


def test_override_with_note(board, manager):
    proposal = _proposal(board)
    decided = verdict_decide(proposal=proposal, actor=manager, verdict="inconclusive", note="Leakage in fold 3.")
    assert decided.status == VerdictStatus.OVERRIDDEN and decided.decided == "inconclusive"
    assert decided.proposed == "supported" and decided.note == "Leakage in fold 3."
    card = Card.objects.get(pk=proposal.card_id)
    assert card.verdict == "inconclusive"
    assert "overridden by" in card.evidence and "Leakage in fold 3." in card.evidence
    result = Card.objects.get(parent=card, kind=CardKind.RESULT)
    assert result.learnings == "Leakage in fold 3."


def test_same_verdict_counts_as_confirmed(board, member):
    proposal = _proposal(board)
    assert verdict_decide(proposal=proposal, actor=member, verdict="supported").status == VerdictStatus.CONFIRMED


def test_viewer_and_outsider_cannot_decide(board, viewer, outsider):
    proposal = _proposal(board)
    for actor in (viewer, outsider):
        with pytest.raises(PermissionDeniedError):
            verdict_decide(proposal=proposal, actor=actor)
    proposal.refresh_from_db()
    assert proposal.status == VerdictStatus.PROPOSED
    assert not Card.objects.filter(kind=CardKind.RESULT).exists()


def test_cannot_decide_twice_or_a_superseded_proposal(board, member):
    proposal = _proposal(board)
    verdict_decide(proposal=proposal, actor=member)
    with pytest.raises(ConflictError, match="already decided"):
        verdict_decide(proposal=proposal, actor=member, verdict="refuted")

    card = make_hypothesis(board)
    add_runs(card, [0.86, 0.87, 0.88])
    old = verdict_propose(card=card)
    verdict_propose(card=amend(card, threshold=0.85))
    with pytest.raises(ConflictError, match="newer"):
        verdict_decide(proposal=old, actor=member)


def test_unknown_verdict_rejected(board, member):
    proposal = _proposal(board)
    with pytest.raises(DomainError, match="Unknown verdict"):
        verdict_decide(proposal=proposal, actor=member, verdict="maybe")


# --- selector -----------------------------------------------------------------------------------


def _pending(board, count: int) -> None:
    for _ in range(count):
        _proposal(board)


def test_pending_selector_constant_queries(board, team, django_assert_num_queries):
    other_board = board_create(team=team, name="Other", key="OTH")
    _pending(board, 3)
    _pending(other_board, 1)
    with django_assert_num_queries(1):
        rows = verdict_proposals_pending(team=team, board=board)
        keys = [(p.card.key, p.card.column.name, p.card.board.name) for p in rows]
    assert len(keys) == 3
    _pending(board, 3)
    with django_assert_num_queries(1):
        rows = verdict_proposals_pending(team=team, board=board)
        keys = [(p.card.key, p.card.column.name, p.card.board.name, p.card.owner) for p in rows]
    assert len(keys) == 6
    assert len(verdict_proposals_pending(team=team)) == 7


def test_evaluation_queries_do_not_grow_with_runs(board, django_assert_num_queries):
    from experiments.services.verdicts import verdict_evaluate

    small, large = make_hypothesis(board), make_hypothesis(board, min_runs=6)
    add_runs(small, [0.86, 0.87, 0.88])
    add_runs(small, [0.7, 0.71], baseline=True)
    add_runs(large, [0.86, 0.87, 0.88] * 2)
    add_runs(large, [0.7, 0.71] * 2, baseline=True)
    # Links, experiments' baselines, latest metrics, amendments: four queries whatever the number of runs.
    with django_assert_num_queries(4):
        assert verdict_evaluate(card=small).stats["n"] == 3
    with django_assert_num_queries(4):
        assert verdict_evaluate(card=large).stats["n"] == 6


def test_pending_selector_is_team_scoped(board, other_team):
    _pending(board, 2)
    assert verdict_proposals_pending(team=other_team) == []


def test_card_history_selector(board):
    card = make_hypothesis(board)
    add_runs(card, [0.86, 0.87, 0.88])
    verdict_propose(card=card)
    verdict_propose(card=amend(card, threshold=0.85))
    history = verdict_proposals_for_card(card=card)
    assert [p.status for p in history] == [VerdictStatus.PROPOSED, VerdictStatus.SUPERSEDED]


# --- end to end -----------------------------------------------------------------------------------


def test_end_to_end_tagged_runs_finish_and_task_proposes(board, django_capture_on_commit_callbacks):
    card = make_hypothesis(board)
    runs = []
    for seed, value in enumerate([0.86, 0.87, 0.88]):
        run = run_create(team=board.team, tags={"mlboard.card": card.key}, params={"seed": seed})
        run_log_metrics(run=run, points=[MetricPoint(METRIC, value, step=1)])
        runs.append(run)
    assert VerdictProposal.objects.count() == 0
    for run in runs[:-1]:
        with django_capture_on_commit_callbacks(execute=True):
            run_update(run=run, status=RunStatus.FINISHED)
        assert VerdictProposal.objects.count() == 0  # a linked run is still running
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        run_update(run=runs[-1], status=RunStatus.FINISHED)
    assert callbacks  # the evaluation was enqueued after commit and ran eagerly
    proposal = VerdictProposal.objects.get(card=card)
    assert proposal.proposed == "supported" and proposal.stats["n"] == 3
    card.refresh_from_db()
    assert card.column.stage == Stage.ANALYZING
