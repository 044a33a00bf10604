"""Maturity report: evidence shares, insufficient evidence, level gates, questionnaire/AMI,
snapshots, permissions and pages."""

from __future__ import annotations

import datetime as dt
import itertools
import statistics

import pytest
from django.urls import reverse
from django.utils import timezone

from experiments import maturity as mm
from experiments.errors import PermissionDeniedError
from experiments.models import (
    Card,
    CardRun,
    LatestMetric,
    MaturityAssessment,
    MaturitySnapshot,
    Param,
    Run,
)
from experiments.selectors.maturity import latest_assessments, maturity_evidence, maturity_report
from experiments.services.cards import card_create, card_update
from experiments.services.maturity import AnswersError, maturity_assessment_submit, maturity_snapshot_take
from experiments.tasks import snapshot_all_maturity, snapshot_team_maturity

_ids = itertools.count(1)


def make_run(team, *, hours_ago: float = 5, status: str = "FINISHED", params=None, metrics=None, **fields) -> Run:
    now = timezone.now()
    start = now - dt.timedelta(hours=hours_ago)
    run = Run.objects.create(
        team=team, external_id=f"run{next(_ids)}", status=status, start_time=start,
        end_time=start + dt.timedelta(minutes=30) if status != "RUNNING" else None, **fields,
    )
    for key, value in (params or {}).items():
        Param.objects.create(run=run, key=key, value=str(value))
    for key, value in (metrics or {}).items():
        LatestMetric.objects.create(run=run, key=key, value=value, timestamp=0)
    return run


def full_answers(value_for=lambda stage, attribute: 3) -> dict[str, dict[str, int]]:
    return {s: {a: value_for(s, a) for a in mm.ATTRIBUTE_KEYS} for s in mm.STAGE_KEYS}


def hypothesis(board, actor, title="H", **fields) -> Card:
    fields = {"metric_key": "acc", "direction": "maximize", "threshold": 0.9, **fields}
    return card_create(board=board, kind="hypothesis", title=title, actor=actor, **fields)


# --- Evidence shares ------------------------------------------------------------------------------

def test_run_shares_count_only_this_teams_active_runs_in_the_window(team, other_team):
    specs = [
        # code, data, seed, env, metric, trigger
        ("c", "d", 1, {"python": "3.11"}, True, "scheduled"),
        ("c", "d", 2, {"python": "3.11"}, True, "ci"),
        ("c", "d", 3, {"python": "3.11"}, False, "ci"),
        ("c", "d", 4, {}, False, "manual"),
        ("c", "", 5, {}, False, "manual"),
        ("c", "", None, {}, False, "manual"),
        ("c", "", None, {}, False, "scheduled"),
        ("", "", None, {}, False, "manual"),
        ("", "", None, {}, False, "ci"),
        ("", "", None, {}, False, "manual"),
    ]
    for code, data, seed, env, metric, trigger in specs:
        make_run(team, code_version=code, data_version=data, seed=seed, environment=env,
                 metrics={"acc": 0.5} if metric else None, trigger=trigger)
    # Excluded: too old, deleted, another team.
    make_run(team, hours_ago=24 * 100, code_version="c", data_version="d", trigger="ci")
    make_run(team, lifecycle_stage="deleted", code_version="c", trigger="ci")
    make_run(other_team, code_version="c", data_version="d", trigger="ci")

    metrics = maturity_evidence(team=team).metrics
    expected = {"code_version": 7, "data_version": 4, "seed": 5, "environment": 3, "metrics_logged": 2,
                "automated": 5, "scheduled": 2, "ci": 3}
    for key, count in expected.items():
        assert (metrics[key].count, metrics[key].sample) == (count, 10), key
        assert metrics[key].value == pytest.approx(count / 10)
        assert metrics[key].sufficient
    assert metrics["code_version"].score == pytest.approx(1 + 4 * 0.7)
    # Targets below 100%: 30% CI against a 50% target scores 1 + 4 * 0.6.
    assert metrics["ci"].score == pytest.approx(1 + 4 * 0.6)


def test_criteria_first_compares_criteria_time_with_first_linked_run(team, board, member):
    now = timezone.now()
    early, late = make_run(team, hours_ago=10), make_run(team, hours_ago=2)
    before = hypothesis(board, member, "criteria before")
    after = hypothesis(board, member, "criteria after")
    none = card_create(board=board, kind="hypothesis", title="no criteria", actor=member)
    unlinked = hypothesis(board, member, "no runs")
    Card.objects.filter(pk=before.pk).update(criteria_set_at=now - dt.timedelta(hours=20))
    Card.objects.filter(pk=after.pk).update(criteria_set_at=now - dt.timedelta(hours=5))
    for card in (before, after, none):
        CardRun.objects.create(card=card, run=early)
        CardRun.objects.create(card=card, run=late)
    # A baseline link to an old run does not count as the hypothesis's first run.
    CardRun.objects.create(card=before, run=make_run(team, hours_ago=40), is_baseline=True)
    assert unlinked.criteria_set_at is not None

    metric = maturity_evidence(team=team).metrics["criteria_first"]
    assert (metric.count, metric.sample) == (1, 3)
    assert metric.sufficient and metric.score == pytest.approx(1 + 4 / 3, abs=0.01)

    # Runs on the hypothesis's experiment count as its runs.
    through_exp = hypothesis(board, member, "runs on the experiment")
    Card.objects.filter(pk=through_exp.pk).update(criteria_set_at=now - dt.timedelta(hours=20))
    exp = card_create(board=board, kind="experiment", title="E", actor=member, parent=through_exp)
    CardRun.objects.create(card=exp, run=early)
    metric = maturity_evidence(team=team).metrics["criteria_first"]
    assert (metric.count, metric.sample) == (2, 4)


def test_amended_criteria_do_not_count_as_set_before_the_runs(team, board, member):
    from experiments.services.verdicts import hypothesis_freeze

    now = timezone.now()
    run = make_run(team, hours_ago=10)
    kept, amended, before_runs = (hypothesis(board, member, t) for t in ("kept", "amended", "edited early"))
    card_update(card=before_runs, actor=member, expected_version=None, threshold=0.8)  # before any run: fine
    for card in (kept, amended, before_runs):
        Card.objects.filter(pk=card.pk).update(criteria_set_at=now - dt.timedelta(hours=20))
        CardRun.objects.create(card=card, run=run)
        hypothesis_freeze(card=card)
    card_update(card=amended, actor=member, expected_version=None, threshold=0.8,  # after its run: post hoc
                amendment_reason="0.9 was out of reach")
    card_update(card=kept, actor=member, expected_version=None, title="renamed")  # not a criterion
    metric = maturity_evidence(team=team).metrics["criteria_first"]
    assert (metric.count, metric.sample) == (2, 3)


def test_baseline_share_counts_value_run_or_baseline_link(team, board, member):
    hyp = hypothesis(board, member)
    base_run = make_run(team)

    def experiment(title, **fields):
        return card_create(board=board, kind="experiment", title=title, actor=member, parent=hyp, **fields)

    experiment("value", baseline_value=0.7)
    with_run = experiment("run")
    Card.objects.filter(pk=with_run.pk).update(baseline_run=base_run)
    linked = experiment("link")
    CardRun.objects.create(card=linked, run=base_run, is_baseline=True)
    plain = experiment("none")
    CardRun.objects.create(card=plain, run=make_run(team))  # a normal link is not a baseline
    old = experiment("old", baseline_value=1.0)
    Card.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=200))

    metric = maturity_evidence(team=team).metrics["baseline"]
    assert (metric.count, metric.sample) == (3, 4)


def test_reproduced_needs_two_seeds_of_one_configuration_that_agree(team, board, member):
    def run(code="c1", data="d1", seed=None, params=None, status="FINISHED", **metrics):
        return make_run(team, code_version=code, data_version=data, seed=seed, status=status,
                        params=params if params is not None else {"lr": 0.1, "depth": 4},
                        metrics=metrics or {"acc": 0.8})

    run(seed=1, acc=0.800), run(seed=2, params={"depth": 4, "lr": 0.1}, acc=0.805)  # agree within 2% (2)
    run(seed=1, params={"lr": 0.2}, acc=0.80), run(seed=2, params={"lr": 0.2}, acc=0.60)  # disagree (0)
    run(seed=7, params={"lr": 0.3}), run(seed=7, params={"lr": 0.3})  # same seed twice: a repeat, not another seed
    # The seed param is what varies: it does not split the configuration (2).
    run(seed=3, params={"lr": 0.4, "seed": 3}), run(seed=4, params={"lr": 0.4, "seed": 4})
    run(seed=5, params={"lr": 0.5}, acc=float("inf")), run(seed=6, params={"lr": 0.5}, acc=float("inf"))  # (0)
    run(seed=1, data="d2")  # same params, other data: alone (0)
    run(code="", seed=3)  # no code version: cannot be reproduced (0)
    run(seed=9, params={"lr": 0.1, "depth": 4}, status="FAILED")  # failed: neither in the sample nor a repeat
    # Judged on the hypothesis's metric (through its experiment): the noisy loss does not matter (2).
    hyp = hypothesis(board, member, metric_key="auc")
    exp = card_create(board=board, kind="experiment", title="E", actor=member, parent=hyp)
    for seed, loss in ((1, 0.30), (2, 0.36)):
        CardRun.objects.create(card=exp, run=run(seed=seed, params={"lr": 0.6}, auc=0.9, loss=loss))
    run(seed=1, params={"lr": 0.7}, auc=0.9, loss=0.30), run(seed=2, params={"lr": 0.7}, auc=0.9, loss=0.36)  # (0)

    metric = maturity_evidence(team=team).metrics["reproduced"]
    assert (metric.count, metric.sample) == (6, 16)
    # A stricter team tolerance: 0.800 vs 0.805 no longer agree.
    team.maturity_repro_tolerance = 0.001
    team.save()
    assert maturity_evidence(team=team).metrics["reproduced"].count == 4


def test_repeats_agree_relative_to_the_largest_magnitude():
    assert mm.repeats_agree([0.80, 0.81], 0.02)
    assert not mm.repeats_agree([0.80, 0.83], 0.02)
    assert mm.repeats_agree([0.0, 0.0], 0.0)
    assert mm.repeats_agree([-100.0, -99.0], 0.02)
    assert not mm.repeats_agree([0.8], 0.5)  # one result is not a repeat
    assert not mm.repeats_agree([0.8, float("nan")], 0.5)


def test_decision_latency_is_median_from_last_run_to_decision(team, board, member):
    now = timezone.now()
    for i, latency_hours in enumerate((2, 10, 30)):
        card = hypothesis(board, member, f"H{i}")
        # The usual set-up: runs link to the hypothesis's experiment card, not to the hypothesis.
        target = card if i == 0 else card_create(board=board, kind="experiment", title=f"E{i}", actor=member,
                                                  parent=card)
        finished = make_run(team, hours_ago=100)
        Run.objects.filter(pk=finished.pk).update(end_time=now - dt.timedelta(hours=50))
        last = make_run(team, hours_ago=100)
        Run.objects.filter(pk=last.pk).update(end_time=now - dt.timedelta(hours=40))
        later = make_run(team, hours_ago=1)  # finished after the decision: ignored
        for r in (finished, last, later):
            CardRun.objects.create(card=target, run=r)
        Card.objects.filter(pk=card.pk).update(verdict="supported",
                                               decided_at=now - dt.timedelta(hours=40 - latency_hours))
    undecided = hypothesis(board, member, "open")
    CardRun.objects.create(card=undecided, run=make_run(team))

    metric = maturity_evidence(team=team).metrics["decision_latency"]
    assert metric.sample == 3
    assert metric.value == pytest.approx(10, abs=0.01)
    assert metric.score == pytest.approx(mm.score_latency(10)) == 5.0
    assert mm.score_latency(24 * 14) == 1.0
    assert 1 < mm.score_latency(72) < 5


def test_decision_latency_counts_the_same_decisions_as_velocity(team, board, member):
    """Velocity and maturity read decisions and their evidence through one selector."""
    from experiments.selectors.velocity import parse_report_params, velocity_report

    now = timezone.now()
    for i in range(4):
        hyp = hypothesis(board, member, f"H{i}")
        exp = card_create(board=board, kind="experiment", title=f"E{i}", actor=member, parent=hyp)
        run = make_run(team, hours_ago=30 + i)
        CardRun.objects.create(card=exp, run=run)
        Card.objects.filter(pk=hyp.pk).update(verdict="refuted", decided_at=now - dt.timedelta(hours=2 + i))
    velocity = velocity_report(team=team, params=parse_report_params(team=team, data={}))
    metric = maturity_evidence(team=team).metrics["decision_latency"]
    assert metric.sample == velocity.totals.hypotheses_resolved == len(velocity.totals.decision_hours) == 4
    assert metric.value == pytest.approx(velocity.totals.decision_median, abs=0.01)


# --- Insufficient evidence ------------------------------------------------------------------------

def test_small_samples_are_insufficient_not_zero(team, board, member):
    for _ in range(mm.MIN_RUNS - 1):
        make_run(team, trigger="manual")  # 0% automated, but only 9 runs
    report = maturity_report(team=team)
    automated = report.evidence.metrics["automated"]
    assert automated.value == 0 and not automated.sufficient and automated.score is None
    cell = report.evidence_cells["model_training", "automated"]
    assert cell.state == "insufficient" and cell.score is None
    assert "9 runs (needs 10)" in cell.detail
    assert report.evidence_cells["data_labeling", "documented"].state == "not_observable"
    assert report.evidence_index is None  # nothing scored, rather than a misleading 1.0

    make_run(team, trigger="manual")
    report = maturity_report(team=team)
    assert report.evidence.metrics["automated"].sufficient
    assert report.evidence_cells["model_training", "automated"].score == 1.0


def test_cards_need_three_hypotheses(team, board, member):
    for i in range(mm.MIN_CARDS - 1):
        CardRun.objects.create(card=hypothesis(board, member, f"H{i}"), run=make_run(team, hours_ago=-1))
    later = timezone.now() + dt.timedelta(hours=2)  # the runs start after the criteria were set
    metric = maturity_evidence(team=team, as_of=later).metrics["criteria_first"]
    assert metric.sample == 2 and not metric.sufficient
    CardRun.objects.create(card=hypothesis(board, member, "H3"), run=make_run(team, hours_ago=-1))
    metric = maturity_evidence(team=team, as_of=later).metrics["criteria_first"]
    assert metric.sample == 3 and metric.sufficient and metric.value == 1.0


def test_page_labels_insufficient_cells(client_for, member, team):
    make_run(team)
    response = client_for(member).get(reverse("maturity", args=[team.slug]))
    figure = response.context["evidence_figure"]
    labels = {(a["x"], a["y"]): a["text"] for a in figure["layout"]["annotations"]}
    training, automated = mm.STAGE_KEYS.index("model_training"), mm.ATTRIBUTE_KEYS.index("automated")
    assert labels[automated, training] == "insufficient<br>evidence"  # not a score of 1
    assert figure["data"][0]["z"][training][automated] is None
    hatch = figure["data"][1]
    assert hatch["fillpattern"]["shape"] == "/"
    assert any("1 run (needs 10)" in text for text in hatch["text"])
    body = response.content.decode()
    assert "insufficient evidence" in body and "1 run (needs 10)" in body


# --- Levels ---------------------------------------------------------------------------------------

def week(**counts) -> mm.WeekTally:
    """One week's tally; runs default to 10."""
    return mm.WeekTally(**{"runs": 10, "finished": 10, **counts})


def weeks(n: int, **counts) -> list[dict[str, mm.MetricValue]]:
    return [week(**counts).metrics() for _ in range(n)]


GOOGLE_1 = {"automated": 6, "scheduled": 1, "code_version": 10, "data_version": 10, "experiments": 2, "baseline": 2}
GOOGLE_2 = {"ci": 1, "environment": 10, "reproduced": 2, "decision_hours": [5.0]}
UNSET = {"automated": 1, "scheduled": 0, "code_version": 5, "data_version": 5, "baseline": 1}


def test_google_level_one_only_when_all_its_gates_are_met_in_three_weeks():
    assert mm.level_evaluate(mm.GOOGLE_MLOPS, weeks(3, **GOOGLE_1)).level == 1
    for key, low in UNSET.items():
        result = mm.level_evaluate(mm.GOOGLE_MLOPS, weeks(3, **dict(GOOGLE_1, **{key: low})))
        assert result.level == 0, key
        assert [g.gate.metric for g in result.next_steps] == [key]
        assert "in 3 weeks; now 0" in result.next_steps[0].next_step


def test_one_week_or_one_sitting_cannot_reach_a_level():
    busy = {**GOOGLE_1, **GOOGLE_2, "runs": 100, "automated": 100, "scheduled": 50, "ci": 50, "code_version": 100,
            "data_version": 100, "environment": 100, "reproduced": 100}
    result = mm.level_evaluate(mm.GOOGLE_MLOPS, weeks(2, **busy) + weeks(10, runs=0, finished=0))
    assert result.level == 0
    step = result.next_steps[0]
    # Two weeks of data cannot show a practice sustained over three: not enough evidence yet.
    assert step.state == "insufficient" and step.weeks_met == 2 and step.weeks_needed == 3
    assert step.shortfall == "2 weeks with runs (needs 3)"
    assert mm.level_evaluate(mm.GOOGLE_MLOPS, weeks(3, **busy)).level == 1
    assert mm.level_evaluate(mm.GOOGLE_MLOPS, weeks(4, **busy)).level == 2


def test_higher_level_gates_do_not_count_without_the_lower_level():
    assert mm.level_evaluate(mm.GOOGLE_MLOPS, weeks(4, **GOOGLE_2)).level == 0
    result = mm.level_evaluate(mm.GOOGLE_MLOPS, weeks(4, **GOOGLE_1, **GOOGLE_2))
    assert result.level == 2 and result.next is None and result.next_steps == []
    slow = mm.level_evaluate(mm.GOOGLE_MLOPS, weeks(4, **GOOGLE_1, **dict(GOOGLE_2, decision_hours=[72.0])))
    assert slow.level == 1 and [g.gate.key for g in slow.next_steps] == ["g2_latency"]


def test_insufficient_gate_is_not_met_and_says_so():
    # Experiments in only two weeks: the baseline gate cannot be judged over three.
    values = weeks(2, **GOOGLE_1) + weeks(1, **dict(GOOGLE_1, experiments=0, baseline=0))
    result = mm.level_evaluate(mm.GOOGLE_MLOPS, values)
    assert result.level == 0
    (step,) = result.next_steps
    assert step.state == "insufficient" and step.gate.key == "g1_validation"
    assert "Insufficient evidence" in step.next_step and "2 weeks with experiments (needs 3)" in step.next_step


def test_azure_levels_climb_gate_by_gate():
    a1 = {"code_version": 9, "environment": 10}
    a2 = {"automated": 6, "data_version": 10, "seed": 9, "metrics_logged": 10}
    assert mm.level_evaluate(mm.AZURE_MLOPS, weeks(6)).level == 0
    assert mm.level_evaluate(mm.AZURE_MLOPS, weeks(2, **a1)).level == 1
    result = mm.level_evaluate(mm.AZURE_MLOPS, weeks(3, **a1, **a2))
    assert result.level == 2
    assert {g.gate.key for g in result.next_steps} == {"a3_ci", "a3_baseline", "a3_criteria", "a3_repro"}


def weekly_runs(team, weeks_back: int, n: int, **fields) -> None:
    """n runs in the local week `weeks_back` weeks before this one (mid-week, so never split)."""
    now = timezone.localtime(timezone.now(), team.zone)
    monday = now.date() - dt.timedelta(days=now.weekday() + 7 * weeks_back)
    at = timezone.make_aware(dt.datetime.combine(monday + dt.timedelta(days=2), dt.time(12)), team.zone)
    for _ in range(n):
        run = make_run(team, hours_ago=0, **fields)
        Run.objects.filter(pk=run.pk).update(start_time=at, end_time=at + dt.timedelta(minutes=30))


def test_google_level_one_from_runs_over_three_weeks(team, board, member):
    hyp = hypothesis(board, member)
    for back in (1, 2, 3):
        weekly_runs(team, back, 2, code_version="abc", data_version="v1", trigger="scheduled")
        weekly_runs(team, back, 2, code_version="abc", data_version="v1", trigger="ci")
    for i in range(3):
        exp = card_create(board=board, kind="experiment", title=f"E{i}", actor=member, parent=hyp,
                          baseline_value=0.5)
        Card.objects.filter(pk=exp.pk).update(created_at=timezone.now() - dt.timedelta(days=7 * (i + 1)))
    assert maturity_report(team=team).google.level == 1
    weekly_runs(team, 1, 1, code_version="", data_version="v1", trigger="ci")  # 4/5 = 80% < 90% that week
    report = maturity_report(team=team)
    assert report.google.level == 0
    assert [g.gate.key for g in report.google.next_steps] == ["g1_code"]
    assert report.google.next_steps[0].weeks_met == 2


TRACKED = {"code_version": "abc123", "data_version": "v1", "environment": {"mlboard.env.image": "sha256:1"}}


def good_week(team, board, member, back: int) -> None:
    """A week of good practice: a hypothesis with criteria first, an experiment with a baseline,
    four fully tracked automated runs of one configuration whose seeds agree, decided in hours."""
    now = timezone.localtime(timezone.now(), team.zone)
    monday = now.date() - dt.timedelta(days=now.weekday() + 7 * back)
    at = timezone.make_aware(dt.datetime.combine(monday + dt.timedelta(days=2), dt.time(9)), team.zone)
    if back == 0:  # this week: a sitting that just ended
        at = timezone.now() - dt.timedelta(hours=6)
    hyp = hypothesis(board, member, f"week {back}")
    exp = card_create(board=board, kind="experiment", title=f"E{back}", actor=member, parent=hyp, baseline_value=0.7)
    Card.objects.filter(pk__in=[hyp.pk, exp.pk]).update(created_at=at, criteria_set_at=at)
    for seed in range(4):
        run = make_run(team, seed=seed, trigger="scheduled" if seed % 2 else "ci", params={"lr": back},
                       metrics={"acc": 0.9 + seed * 0.001}, **TRACKED)
        Run.objects.filter(pk=run.pk).update(start_time=at + dt.timedelta(hours=1),
                                             end_time=at + dt.timedelta(hours=2))
        CardRun.objects.create(card=exp, run=run)
    Card.objects.filter(pk=hyp.pk).update(verdict="supported", decided_at=at + dt.timedelta(hours=5))


def test_one_sitting_of_good_runs_reaches_no_level(team, board, member):
    """The audit's case: 13 runs set up in one sitting reached Google level 2 and Azure level 4."""
    good_week(team, board, member, 0)
    for seed in range(4, 13):
        make_run(team, seed=seed, trigger="ci", params={"lr": 0}, metrics={"acc": 0.9}, **TRACKED)
    report = maturity_report(team=team)
    assert report.evidence.metrics["code_version"].value == 1.0  # the practice is good...
    assert report.evidence.metrics["reproduced"].count >= 4
    assert (report.google.level, report.azure.level) == (0, 0)  # ...but shown in one week only
    assert all(g.state == "insufficient" for g in report.google.next_steps)


def test_sustained_good_weeks_reach_the_levels_and_more_ci_runs_never_drop_them(team, board, member):
    for back in range(1, 7):
        good_week(team, board, member, back)
    report = maturity_report(team=team)
    assert (report.google.level, report.azure.level) == (2, 4)
    # The audit's case: 3 fully tracked CI runs (a new configuration, not yet repeated) dropped Google to 0.
    for seed in range(3):
        make_run(team, seed=seed, trigger="ci", params={"lr": "new"}, metrics={"acc": 0.5 + seed / 10}, **TRACKED)
    after = maturity_report(team=team)
    assert (after.google.level, after.azure.level) == (2, 4)


# --- Questionnaire and AMI ------------------------------------------------------------------------

def test_answers_validation_names_every_missing_or_out_of_range_cell():
    answers = full_answers()
    del answers["data_labeling"]["automated"]
    answers["model_training"]["consistent"] = 6
    answers["model_training"]["documented"] = 0
    answers["model_evaluation"]["automated"] = "4"
    answers["model_monitoring"]["goals_defined"] = True
    errors = mm.answers_errors(answers)
    assert set(errors) == {"data_labeling.automated", "model_training.consistent", "model_training.documented",
                           "model_evaluation.automated", "model_monitoring.goals_defined"}
    assert "Data labeling — Automated: choose an answer" in errors["data_labeling.automated"]
    assert "6 is not between 1 and 5" in errors["model_training.consistent"]
    assert mm.answers_errors(full_answers()) == {}
    assert "Unknown stage" in mm.answers_errors({**full_answers(), "deployment": {}})["deployment"]
    assert mm.answers_errors([1, 2]) == {"answers": "Answers must map each stage to its attributes."}


def test_ami_is_the_mean_per_stage_and_overall():
    stage_value = {s: i % 5 + 1 for i, s in enumerate(mm.STAGE_KEYS)}
    answers = full_answers(lambda s, a: stage_value[s] if a != "automated" else 1)
    by_stage = mm.ami_by_stage(answers)
    assert by_stage["model_requirements"] == pytest.approx((1 * 5 + 1) / 6, abs=0.01)
    assert by_stage["data_collection"] == pytest.approx((2 * 5 + 1) / 6, abs=0.01)
    all_values = [answers[s][a] for s in mm.STAGE_KEYS for a in mm.ATTRIBUTE_KEYS]
    assert len(all_values) == 54
    assert mm.ami_overall(answers) == pytest.approx(sum(all_values) / 54, abs=0.01)


def test_team_self_grid_averages_each_respondents_latest_answers(team, member, manager):
    maturity_assessment_submit(team=team, respondent=member, answers=full_answers(lambda s, a: 1))
    maturity_assessment_submit(team=team, respondent=member, answers=full_answers(lambda s, a: 2))
    maturity_assessment_submit(team=team, respondent=manager, answers=full_answers(lambda s, a: 5))
    assert len(latest_assessments(team=team)) == 2
    report = maturity_report(team=team)
    assert report.self_cells["model_training", "automated"].score == 3.5
    assert report.self_index == 3.5


def test_submit_rejects_invalid_answers_and_viewers(team, member, viewer, outsider):
    bad = full_answers()
    bad["model_deployment"]["automated"] = 9
    with pytest.raises(AnswersError) as exc:
        maturity_assessment_submit(team=team, respondent=member, answers=bad)
    assert list(exc.value.errors) == ["model_deployment.automated"]
    with pytest.raises(PermissionDeniedError):
        maturity_assessment_submit(team=team, respondent=viewer, answers=full_answers())
    with pytest.raises(PermissionDeniedError):
        maturity_assessment_submit(team=team, respondent=outsider, answers=full_answers())
    assert not MaturityAssessment.objects.exists()


def test_gaps_flag_large_differences_and_high_self_low_evidence():
    def cell(score):
        return mm.CellScore("s", "a", score, "scored" if score is not None else "insufficient")

    self_cells = {("x", "1"): cell(4.0), ("x", "2"): cell(3.0), ("x", "3"): cell(1.0), ("x", "4"): cell(5.0),
                  ("x", "5"): cell(4.5)}
    evidence = {("x", "1"): cell(2.5), ("x", "2"): cell(2.0), ("x", "3"): cell(3.0), ("x", "4"): cell(None),
                ("x", "5"): cell(3.5)}
    found = {g.attribute: g for g in mm.gaps(self_cells, evidence)}
    assert set(found) == {"1", "3"}
    assert found["1"].reason == "Self-assessed high, but the evidence is low."
    assert found["3"].diff == -2.0


# --- Snapshots ------------------------------------------------------------------------------------

def test_snapshot_task_is_idempotent_per_team_and_day(team, other_team, django_capture_on_commit_callbacks):
    for _ in range(10):
        make_run(team, code_version="c")
    first = snapshot_team_maturity(team.pk)
    assert snapshot_team_maturity(team.pk) == first
    assert MaturitySnapshot.objects.filter(team=team).count() == 1
    make_run(team, code_version="")
    snapshot_team_maturity(team.pk)
    snapshot = MaturitySnapshot.objects.get(team=team)
    assert snapshot.pk == first and snapshot.date == timezone.localdate()
    assert snapshot.data["metrics"]["code_version"]["count"] == 10
    assert snapshot.data["metrics"]["code_version"]["sample"] == 11  # refreshed, not duplicated

    with django_capture_on_commit_callbacks(execute=True):  # the tick enqueues after commit
        assert snapshot_all_maturity() == 2
        assert snapshot_all_maturity() == 2
    assert MaturitySnapshot.objects.count() == 2
    yesterday = timezone.localdate() - dt.timedelta(days=1)
    snapshot_team_maturity(team.pk, yesterday.isoformat())
    assert MaturitySnapshot.objects.filter(team=team).count() == 2
    assert snapshot_team_maturity(999999) is None


def test_past_snapshot_looks_at_the_end_of_that_day(team):
    make_run(team, hours_ago=1, code_version="c")
    last_week = timezone.localdate() - dt.timedelta(days=7)
    snapshot = maturity_snapshot_take(team=team, date=last_week)
    assert snapshot.data["metrics"]["code_version"]["sample"] == 0
    assert snapshot.data["as_of"].startswith(last_week.isoformat())


# --- Pages and permissions ------------------------------------------------------------------------

PAGES = ("maturity", "maturity_assess", "maturity_trend", "maturity_print")


def post_answers(answers) -> dict[str, str]:
    return {f"a__{s}__{a}": str(v) for s, row in answers.items() for a, v in row.items()}


@pytest.mark.parametrize("name", PAGES)
def test_other_teams_get_404_and_anonymous_users_log_in(client, client_for, outsider, team, name):
    url = reverse(name, args=[team.slug])
    assert client_for(outsider).get(url).status_code == 404
    assert client_for(outsider).post(url).status_code in (404, 405)
    response = client.get(url)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.parametrize("name", PAGES)
def test_viewers_can_read_every_page(client_for, viewer, team, name):
    assert client_for(viewer).get(reverse(name, args=[team.slug])).status_code == 200


def test_viewer_cannot_submit_or_snapshot(client_for, viewer, team):
    client = client_for(viewer)
    page = client.get(reverse("maturity_assess", args=[team.slug])).content.decode()
    assert "only members and managers can submit" in page and "<fieldset disabled>" in page
    response = client.post(reverse("maturity_assess", args=[team.slug]), post_answers(full_answers()))
    assert response.status_code == 403
    assert "Viewers cannot change anything" in response.content.decode()
    client.post(reverse("maturity_trend", args=[team.slug]))
    assert not MaturityAssessment.objects.exists() and not MaturitySnapshot.objects.exists()


@pytest.mark.parametrize("role", ["member", "manager"])
def test_members_and_managers_submit_the_questionnaire(request, client_for, team, role):
    user = request.getfixturevalue(role)
    answers = full_answers(lambda s, a: 4 if s == "model_training" else 2)
    response = client_for(user).post(reverse("maturity_assess", args=[team.slug]), post_answers(answers))
    assert response.status_code == 302 and response["Location"] == reverse("maturity", args=[team.slug])
    saved = MaturityAssessment.objects.get(respondent=user)
    assert saved.answers == answers and saved.team == team
    follow = client_for(user).get(reverse("maturity", args=[team.slug]))
    expected = statistics.fmean(v for row in answers.values() for v in row.values())
    assert f"{expected:.2f}" in follow.content.decode()


def test_invalid_form_keeps_answers_and_lists_errors(client_for, member, team):
    answers = post_answers(full_answers(lambda s, a: 5))
    del answers["a__data_labeling__automated"]
    answers["a__model_training__seed"] = "1"  # unknown field is ignored
    answers["a__model_training__consistent"] = "7"
    response = client_for(member).post(reverse("maturity_assess", args=[team.slug]), answers)
    body = response.content.decode()
    assert response.status_code == 400
    assert "Your answers were not saved." in body
    assert "Data labeling — Automated: choose an answer from 1 to 5." in body
    assert "Model training — Consistent: 7 is not between 1 and 5." in body
    assert 'href="#q-data_labeling-automated"' in body
    # What was entered is still selected.
    assert 'name="a__model_monitoring__documented" value="5" checked' in body
    assert not MaturityAssessment.objects.exists()


def test_assess_prefills_the_previous_answers(client_for, member, team):
    maturity_assessment_submit(team=team, respondent=member, answers=full_answers(lambda s, a: 2))
    body = client_for(member).get(reverse("maturity_assess", args=[team.slug])).content.decode()
    assert body.count(' value="2" checked') == 54
    assert "AMI <strong>2.00</strong>" in body


def test_print_page_renders_report_for_managers(client_for, manager, member, team, board):
    for _ in range(10):
        make_run(team, code_version="c", data_version="d", trigger="ci")
    maturity_assessment_submit(team=team, respondent=member, answers=full_answers(lambda s, a: 5))
    maturity_snapshot_take(team=team)
    maturity_snapshot_take(team=team, date=timezone.localdate() - dt.timedelta(days=1))
    response = client_for(manager).get(reverse("maturity_print", args=[team.slug]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "ML process maturity report — Vision" in body
    assert body.count('class="print-section page-break"') == 3
    assert "maturity.css" in body and "data-print" in body  # static/js/app.js prints (no inline script)
    assert "Next steps to level 1" in body
    assert 'id="trend-figure"' in body
    assert "Self-assessed high, but the evidence is low." in body  # automated 5 vs CI share


def test_trend_page_empty_state_and_snapshot_button(client_for, member, team):
    client = client_for(member)
    body = client.get(reverse("maturity_trend", args=[team.slug])).content.decode()
    assert "No snapshots yet." in body
    response = client.post(reverse("maturity_trend", args=[team.slug]))
    assert response.status_code == 302
    assert MaturitySnapshot.objects.filter(team=team, date=timezone.localdate()).count() == 1
    body = client.get(reverse("maturity_trend", args=[team.slug])).content.decode()
    assert 'id="trend-figure"' in body


# --- Query counts independent of data size --------------------------------------------------------

def seed_data(team, board, actor, n: int, *, first_day: int = 1) -> None:
    """n hypotheses, each with an experiment, 3 runs (params, metrics) and a decided verdict."""
    now = timezone.now()
    for i in range(n):
        hyp = hypothesis(board, actor, f"H{i}")
        exp = card_create(board=board, kind="experiment", title=f"E{i}", actor=actor, parent=hyp,
                          baseline_value=0.5 if i % 2 else None)
        for j in range(3):
            run = make_run(team, hours_ago=i + 1, code_version=f"c{i}", data_version="d", seed=j,
                           params={"lr": i}, metrics={"acc": 0.8}, trigger="ci" if j else "manual")
            CardRun.objects.create(card=hyp, run=run)
            CardRun.objects.create(card=exp, run=run)
        Card.objects.filter(pk=hyp.pk).update(verdict="supported", decided_at=now)
    MaturityAssessment.objects.create(team=team, respondent=actor, answers=full_answers())
    for d in range(n):
        MaturitySnapshot.objects.create(team=team, date=timezone.localdate() - dt.timedelta(days=d + first_day),
                                        data={"evidence_index": 3, "google_level": 1, "azure_level": 2})


@pytest.mark.parametrize("name", PAGES)
def test_page_queries_do_not_grow_with_data(client_for, member, team, board, django_assert_num_queries, name):
    client = client_for(member)
    url = reverse(name, args=[team.slug])
    client.get(url)  # warm the session
    seed_data(team, board, member, 12)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as small:
        assert client.get(url).status_code == 200
    seed_data(team, board, member, 12, first_day=13)  # 2N
    with django_assert_num_queries(len(small.captured_queries)):
        assert client.get(url).status_code == 200


def test_evidence_query_count_is_fixed(team, board, member, django_assert_num_queries):
    seed_data(team, board, member, 10)
    with django_assert_num_queries(10):
        maturity_evidence(team=team)
    seed_data(team, board, member, 10, first_day=11)
    with django_assert_num_queries(10):
        evidence = maturity_evidence(team=team)
    assert evidence.metrics["baseline"].sample == 20 and evidence.metrics["baseline"].count == 10
    assert evidence.metrics["reproduced"].count == 60  # every config ran with three seeds


def test_managers_set_the_reproduction_tolerance(client_for, manager, member, team):
    url = reverse("maturity", args=[team.slug])
    body = client_for(member).get(url).content.decode()
    assert "within\n    <strong>2%</strong> (the site default)" in body and 'name="repro_tolerance_percent"' not in body
    assert client_for(member).post(url, {"repro_tolerance_percent": "5"}).status_code == 302
    team.refresh_from_db()
    assert team.maturity_repro_tolerance is None  # members cannot change it
    client = client_for(manager)
    client.post(url, {"repro_tolerance_percent": "0.5"})
    team.refresh_from_db()
    assert team.maturity_repro_tolerance == pytest.approx(0.005)
    assert "<strong>0.5%</strong>" in client.get(url).content.decode()
    for bad in ("abc", "150", "nan"):
        response = client.post(url, {"repro_tolerance_percent": bad}, follow=True)
        assert "percentage" in response.content.decode() or "between 0 and 1" in response.content.decode()
    team.refresh_from_db()
    assert team.maturity_repro_tolerance == pytest.approx(0.005)
    client.post(url, {"repro_tolerance_percent": ""})
    team.refresh_from_db()
    assert team.maturity_repro_tolerance is None
