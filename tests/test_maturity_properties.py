"""Property tests for the maturity levels: more good evidence never lowers a level, one sitting
cannot reach one, and a repeat that agrees never undoes a reproduction. Pure functions, no database."""

from __future__ import annotations

import copy
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import maturity as mm

PROPERTY = settings(deadline=None, max_examples=100)


@st.composite
def week_tallies(draw: st.DrawFn) -> mm.WeekTally:
    """Any consistent week (counts never exceed the runs, hypotheses or experiments they are shares of).

    Most are a well-kept week with a few practices slipped, so that levels are often reached and
    the properties below have something to lose."""
    runs = draw(st.integers(0, 25))
    finished = draw(st.integers(0, runs))
    hypotheses, experiments = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    scheduled = draw(st.integers(0, runs))
    week = mm.WeekTally(
        runs=runs, code_version=runs, data_version=runs, seed=runs, environment=runs, metrics_logged=runs,
        automated=runs, scheduled=scheduled, ci=runs - scheduled, finished=finished, reproduced=finished,
        hypotheses=hypotheses, criteria_first=hypotheses, experiments=experiments, baseline=experiments,
        decision_hours=draw(st.lists(st.floats(0, 24), max_size=3)),
    )
    slipped = draw(st.sets(st.sampled_from(["code_version", "data_version", "seed", "environment",
                                            "metrics_logged", "automated", "reproduced", "criteria_first",
                                            "baseline", "decision_hours"]), max_size=10))
    for name in slipped:
        if name == "automated":
            week.scheduled = draw(st.integers(0, runs))
            week.ci = draw(st.integers(0, runs - week.scheduled))
            week.automated = week.scheduled + week.ci
        elif name == "decision_hours":
            week.decision_hours = draw(st.lists(st.floats(0, 24 * 30), max_size=4))
        else:
            total = {"reproduced": finished, "criteria_first": hypotheses, "baseline": experiments}.get(name, runs)
            setattr(week, name, draw(st.integers(0, total)))
    return week


def good_run(week: mm.WeekTally, *, trigger: str) -> None:
    """A fully tracked, automated run that finished."""
    for name in ("runs", "code_version", "data_version", "seed", "environment", "metrics_logged", "automated",
                 trigger, "finished"):
        setattr(week, name, getattr(week, name) + 1)


# One piece of good evidence, applied to week `i` (and, for an agreeing repeat, to the week of the run
# it repeats, whose run now counts as reproduced too).
GOOD = st.sampled_from(["ci_run", "scheduled_run", "agreeing_repeat", "hypothesis", "experiment", "decision"])


def add_good(weeks: list[mm.WeekTally], kind: str, i: int, j: int, hours: float) -> None:
    week = weeks[i]
    if kind == "ci_run":
        good_run(week, trigger="ci")
    elif kind == "scheduled_run":
        good_run(week, trigger="scheduled")
    elif kind == "agreeing_repeat":
        good_run(week, trigger="ci")
        week.reproduced += 1
        if weeks[j].reproduced < weeks[j].finished:
            weeks[j].reproduced += 1
    elif kind == "hypothesis":  # criteria written before its first run, never amended
        week.hypotheses += 1
        week.criteria_first += 1
    elif kind == "experiment":  # with a baseline
        week.experiments += 1
        week.baseline += 1
    else:  # decided within a day of its last run
        week.decision_hours.append(hours)


def levels(weeks: list[mm.WeekTally]) -> list[int]:
    metrics = [w.metrics() for w in weeks]
    return [mm.level_evaluate(model, metrics).level for model in mm.LEVEL_MODELS]


@PROPERTY
@given(
    weeks=st.lists(week_tallies(), min_size=3, max_size=8),
    additions=st.lists(st.tuples(GOOD, st.integers(0, 7), st.integers(0, 7), st.floats(0, 24), st.integers(1, 15)),
                       min_size=1, max_size=10),
)
def test_good_evidence_never_lowers_a_level(weeks, additions):
    before = levels(weeks)
    grown = copy.deepcopy(weeks)
    for kind, i, j, hours, times in additions:
        for _ in range(times):
            add_good(grown, kind, i % len(grown), j % len(grown), hours)
        after = levels(grown)
        assert all(a >= b for a, b in zip(after, before, strict=True)), (kind, before, after)
        before = after


@PROPERTY
@given(week=week_tallies(), next_week=week_tallies(), ci_runs=st.integers(0, 200))
def test_one_sitting_reaches_no_level(week, next_week, ci_runs):
    """Whatever one week (a single sitting) holds, every level needs the practice in several weeks;
    a sitting across midnight on Sunday spans two weeks, which is at most Azure level 1."""
    for _ in range(ci_runs):
        good_run(week, trigger="ci")
    assert levels([week]) == [0, 0]
    google, azure = levels([week, next_week])
    assert google == 0 and azure <= 1


@PROPERTY
@given(weeks=st.lists(week_tallies(), min_size=3, max_size=8), i=st.integers(0, 7), n=st.integers(1, 40),
       trigger=st.sampled_from(["ci", "scheduled"]))
def test_fully_tracked_automated_runs_never_drop_a_level(weeks, i, n, trigger):
    """The audit's case: 3 fully tracked CI runs dropped Google from level 2 to 0 (a share fell)."""
    before = levels(weeks)
    for _ in range(n):
        good_run(weeks[i % len(weeks)], trigger=trigger)
    assert all(a >= b for a, b in zip(levels(weeks), before, strict=True))


@st.composite
def lean_weeks(draw: st.DrawFn) -> list[mm.WeekTally]:
    """Just the weeks a level needs (2, 3, 4 or 6), with little to spare: few scheduled, CI and
    reproduced runs, so any gate that compared shares of them would fall when other good runs arrive."""
    out = []
    for _ in range(draw(st.sampled_from([2, 3, 4, 6]))):
        scheduled, ci = draw(st.integers(2, 3)), draw(st.integers(1, 3))
        manual = draw(st.integers(0, scheduled + ci))
        runs = scheduled + ci + manual
        out.append(mm.WeekTally(
            runs=runs, code_version=runs, data_version=runs, seed=runs, environment=runs, metrics_logged=runs,
            automated=scheduled + ci, scheduled=scheduled, ci=ci, finished=runs,
            reproduced=draw(st.integers(4, runs)) if runs >= 4 else runs,
            hypotheses=1, criteria_first=1, experiments=1, baseline=1,
            decision_hours=[draw(st.floats(0, 24))],
        ))
    return out


@PROPERTY
@given(weeks=lean_weeks(), additions=st.lists(st.tuples(GOOD, st.integers(0, 5), st.integers(0, 5),
                                                        st.floats(0, 24), st.integers(1, 20)), min_size=1,
                                              max_size=4))
def test_good_evidence_never_lowers_a_lean_top_level(weeks, additions):
    before = levels(weeks)
    for kind, i, j, hours, times in additions:
        for _ in range(times):
            add_good(weeks, kind, i % len(weeks), j % len(weeks), hours)
    assert all(a >= b for a, b in zip(levels(weeks), before, strict=True)), before


# --- Reproduction ---------------------------------------------------------------------------------

VALUES = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def run_records(draw: st.DrawFn) -> list[mm.RunRecord]:
    """Runs over a few configurations and seeds, logging one or two metrics (sometimes NaN)."""
    records = []
    for run_id in range(draw(st.integers(0, 12))):
        metrics = {"acc": draw(st.one_of(VALUES, st.just(math.nan)))}
        if draw(st.booleans()):
            metrics["loss"] = draw(VALUES)
        records.append(mm.RunRecord(
            run_id=run_id, config=("c", "d", (("lr", str(draw(st.integers(0, 2)))),)),
            seed=draw(st.one_of(st.none(), st.integers(0, 3))), metrics=metrics,
            primary=frozenset({"acc"}) if draw(st.booleans()) else frozenset(),
        ))
    return records


@PROPERTY
@given(records=run_records(), pick=st.integers(0, 100), seed=st.integers(0, 5), where=st.floats(0, 1),
       tolerance=st.floats(0, 0.2))
def test_an_agreeing_repeat_never_undoes_a_reproduction(records, pick, seed, where, tolerance):
    before = mm.reproduced_runs(records, tolerance)
    if not records:
        return
    model = records[pick % len(records)]
    config = [r for r in records if r.config == model.config]
    # The repeat logs every metric the configuration's runs logged, each inside the range already seen.
    metrics = {}
    for key in set().union(*(r.metrics for r in config)):
        seen = [r.metrics[key] for r in config if key in r.metrics and not math.isnan(r.metrics[key])]
        metrics[key] = min(seen) + where * (max(seen) - min(seen)) if seen else 0.0
    repeat = mm.RunRecord(run_id=10_000, config=model.config, seed=seed, metrics=metrics, primary=model.primary)
    after = mm.reproduced_runs([*records, repeat], tolerance)
    assert before <= after


@PROPERTY
@given(values=st.lists(VALUES, min_size=2, max_size=6), where=st.floats(0, 1), tolerance=st.floats(0, 1))
def test_a_result_inside_the_range_keeps_agreement(values, where, tolerance):
    inside = min(values) + where * (max(values) - min(values))
    if mm.repeats_agree(values, tolerance):
        assert mm.repeats_agree([*values, inside], tolerance)
    # Order does not matter.
    assert mm.repeats_agree(values, tolerance) == mm.repeats_agree(values[::-1], tolerance)
