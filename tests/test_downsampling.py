"""Server-side downsampling of metric series: budget, extremes, first/last and gaps."""

from __future__ import annotations

import math
import random

import pytest

from experiments.models import METRIC_BLOCK_SHIFT
from experiments.selectors.metrics import MAX_POINTS, downsample, format_value, metric_series
from experiments.services.runs import MetricPoint, run_create, run_log_batch


def _series(n: int, seed: int = 1) -> tuple[list[int], list[float]]:
    rng = random.Random(seed)
    steps = list(range(n))
    values = [math.sin(i / 50) + rng.gauss(0, 0.05) for i in steps]
    return steps, values


def test_short_series_is_returned_whole_with_nan_as_gap():
    steps, values = [0, 1, 2, 3], [1.0, math.nan, 3.0, math.inf]
    out_steps, out_values = downsample(steps, values, max_points=10)
    assert out_steps == [0, 1, 2, 3]
    assert out_values == [1.0, None, 3.0, None]


@pytest.mark.parametrize("n", [1001, 1002, 4999, 10_000, 123_457])
@pytest.mark.parametrize("budget", [MAX_POINTS, 500, 37])
def test_point_budget_is_respected(n, budget):
    steps, values = _series(n)
    if n % 2:
        values[n // 3] = math.nan  # odd sizes also carry a gap, which costs budget
    out_steps, out_values = downsample(steps, values, max_points=budget)
    assert len(out_steps) == len(out_values)
    assert len(out_steps) <= budget
    # Most of the budget is used, so the chart keeps as much detail as allowed.
    assert len(out_steps) >= budget * 0.6


def test_first_and_last_points_are_kept():
    steps, values = _series(50_000)
    out_steps, out_values = downsample(steps, values)
    assert out_steps[0] == 0 and out_values[0] == values[0]
    assert out_steps[-1] == 49_999 and out_values[-1] == values[-1]


def test_output_keeps_step_order_and_real_points():
    steps = [i * 10 for i in range(20_000)]
    _, values = _series(20_000, seed=7)
    out_steps, out_values = downsample(steps, values, max_points=300)
    assert out_steps == sorted(out_steps)
    assert len(set(out_steps)) == len(out_steps)
    lookup = dict(zip(steps, values, strict=True))
    assert all(lookup[s] == v for s, v in zip(out_steps, out_values, strict=True))


def test_single_point_spikes_survive():
    steps, values = _series(200_000, seed=3)
    values[123_456] = 50.0  # one spike up
    values[7_777] = -40.0  # one dip
    out_steps, out_values = downsample(steps, values, max_points=1000)
    assert max(v for v in out_values if v is not None) == 50.0
    assert min(v for v in out_values if v is not None) == -40.0
    assert 123_456 in out_steps and 7_777 in out_steps


def test_every_bucket_keeps_its_min_and_max():
    # A saw-tooth whose extremes sit at arbitrary positions: downsampling must keep the envelope.
    rng = random.Random(11)
    n = 30_000
    values = [rng.uniform(-1, 1) for _ in range(n)]
    _, out_values = downsample(list(range(n)), values, max_points=1000)
    assert max(out_values) == max(values)
    assert min(out_values) == min(values)


def test_nan_gap_is_kept_as_none_inside_long_series():
    steps, values = _series(10_000)
    for i in range(5_000, 5_200):
        values[i] = math.nan
    out_steps, out_values = downsample(steps, values, max_points=1000)
    gaps = [s for s, v in zip(out_steps, out_values, strict=True) if v is None]
    assert gaps, "the NaN stretch must still break the line"
    assert all(5_000 <= s < 5_200 for s in gaps)
    # Points on both sides of the gap are still drawn.
    assert any(s < 5_000 and v is not None for s, v in zip(out_steps, out_values, strict=True))
    assert any(s >= 5_200 and v is not None for s, v in zip(out_steps, out_values, strict=True))


def test_infinity_is_a_gap_not_an_extreme():
    steps, values = _series(5_000)
    values[2_500] = math.inf
    out_steps, out_values = downsample(steps, values, max_points=400)
    finite = [v for v in out_values if v is not None]
    assert all(math.isfinite(v) for v in finite)
    assert out_values[out_steps.index(2_500)] is None


def test_all_nan_series_stays_all_gaps():
    n = 5_000
    out_steps, out_values = downsample(list(range(n)), [math.nan] * n, max_points=100)
    assert len(out_steps) <= 100
    assert set(out_values) == {None}


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        downsample([1, 2], [1.0], max_points=100)
    with pytest.raises(ValueError):
        downsample([1, 2], [1.0, 2.0], max_points=3)


def test_format_value_spells_out_specials():
    assert format_value(0.0, True) == "NaN"
    assert format_value(math.inf) == "Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(0.912345) == "0.9123"
    assert format_value(12.0) == "12"
    assert format_value(1.5e-7) == "1.500e-07"


def test_metric_series_streams_and_downsamples_stored_points(team, member):
    run = run_create(team=team, user=member, name="long")
    short = run_create(team=team, user=member, name="short")
    points = [MetricPoint("loss", 1.0 / (i + 1), i, 1_000 + i) for i in range(3_000)]
    points[1_500] = MetricPoint("loss", math.nan, 1_500, 2_500)
    points[2_000] = MetricPoint("loss", 99.0, 2_000, 3_000)
    run_log_batch(run=run, metrics=points)
    run_log_batch(run=short, metrics=[MetricPoint("loss", 0.5, s, 10 + s) for s in range(5)])
    other = run_create(team=team, user=member, name="no loss")

    series = metric_series(runs=[run, short, other], key="loss", max_points=500)

    assert [s.label for s in series] == ["long", "short"]  # runs without the metric are left out
    long_series, short_series = series
    assert long_series.total_points == 3_000
    assert long_series.downsampled and len(long_series.steps) <= 500
    assert 99.0 in long_series.values and None in long_series.values
    assert long_series.steps[0] == 0 and long_series.steps[-1] == 2_999
    assert short_series.steps == [0, 1, 2, 3, 4] and not short_series.downsampled


# --- Downsampling in the database ---------------------------------------------------------------


def _expected_extremes(steps: list[int], values: list[float], buckets: int) -> list[tuple]:
    """Per step bucket (the database's definition): (step, value) of the first, last, min and max.

    Series spanning at least 64 steps per bucket are bucketed by whole MetricBlocks (64 steps)."""
    lo, hi = steps[0], steps[-1]
    shift = METRIC_BLOCK_SHIFT if hi - lo + 1 >= buckets * 64 else 0
    units = (hi >> shift) - (lo >> shift) + 1
    groups: dict[int, list[tuple[int, float]]] = {}
    for step, value in zip(steps, values, strict=True):
        groups.setdefault(((step >> shift) - (lo >> shift)) * buckets // units, []).append((step, value))
    out = []
    for points in groups.values():
        out += [points[0], points[-1], min(points, key=lambda p: (p[1], p[0])),
                max(points, key=lambda p: (p[1], p[0]))]
    return out


def test_database_downsampling_keeps_spikes_off_the_bucket_grid(team, member):
    rng = random.Random(7)
    run = run_create(team=team, user=member, name="spiky")
    n = 20_000
    steps = sorted(rng.sample(range(3, 90_000), n))  # irregular steps: no point sits on a regular grid
    values = [math.sin(s / 900) + rng.gauss(0, 0.05) for s in steps]
    spikes = {steps[4_321]: 50.0, steps[13_337]: -40.0, steps[19_998]: 12.5}
    values = [spikes.get(s, v) for s, v in zip(steps, values, strict=True)]
    run_log_batch(run=run, metrics=[MetricPoint("loss", v, s, 1_000 + i) for i, (s, v) in
                                    enumerate(zip(steps, values, strict=True))])

    (series,) = metric_series(runs=[run], key="loss", max_points=400)

    assert series.total_points == n and len(series.steps) <= 400 and series.downsampled
    drawn = set(zip(series.steps, series.values, strict=True))
    for step, value in spikes.items():
        assert (step, value) in drawn
    assert series.steps[0] == steps[0] and series.steps[-1] == steps[-1]
    assert series.steps == sorted(series.steps)
    # Every bucket's first, last, minimum and maximum point is drawn at its own step.
    missing = [p for p in _expected_extremes(steps, values, 100) if p not in drawn]
    assert missing == []


def test_database_downsampling_marks_gaps_and_ignores_them_for_min_max(team, member):
    run = run_create(team=team, user=member, name="gappy")
    points = [MetricPoint("acc", 0.5 + (i % 7) / 100, i, 1_000 + i) for i in range(5_000)]
    points[2_222] = MetricPoint("acc", math.nan, 2_222, 3_222)
    points[3_001] = MetricPoint("acc", math.inf, 3_001, 4_001)
    run_log_batch(run=run, metrics=points)

    (series,) = metric_series(runs=[run], key="acc", max_points=100)

    drawn = dict(zip(series.steps, series.values, strict=True))
    assert drawn.get(2_222, "absent") is None and drawn.get(3_001, "absent") is None
    finite = [v for v in series.values if v is not None]
    assert max(finite) == 0.56 and min(finite) == 0.5  # NaN (stored as 0) and Inf never count as extremes
    assert len(series.steps) <= 100


def test_series_are_cached_until_the_run_logs_new_points(
    team, member, django_assert_num_queries, django_capture_on_commit_callbacks
):
    run = run_create(team=team, user=member, name="cached")
    with django_capture_on_commit_callbacks(execute=True):
        run_log_batch(run=run, metrics=[MetricPoint("loss", 1.0 / (i + 1), i, 1_000 + i) for i in range(2_000)])
    first = metric_series(runs=[run], key="loss", max_points=100)
    with django_assert_num_queries(0):
        again = metric_series(runs=[run], key="loss", max_points=100)
    assert again[0].steps == first[0].steps and again[0].total_points == 2_000
    with django_capture_on_commit_callbacks(execute=True):
        run_log_batch(run=run, metrics=[MetricPoint("loss", 7.0, 2_000, 9_000)])
    (fresh,) = metric_series(runs=[run], key="loss", max_points=100)
    assert fresh.total_points == 2_001 and fresh.steps[-1] == 2_000 and fresh.values[-1] == 7.0


def test_metric_series_query_count_is_the_same_for_n_and_2n_runs(team, member, django_assert_num_queries):
    runs = []
    for r in range(8):
        run = run_create(team=team, user=member, name=f"r{r}")
        n = 600 if r % 2 else 50  # half downsampled, half drawn whole
        run_log_batch(run=run, metrics=[MetricPoint("loss", float(i % 13), i, 1_000 + i) for i in range(n)])
        runs.append(run)
    with django_assert_num_queries(3):  # bounds, buckets, the short series' points
        small = metric_series(runs=runs[:4], key="loss", max_points=200)
    with django_assert_num_queries(3):
        large = metric_series(runs=runs[4:], key="loss", max_points=200)
    assert len(small) == len(large) == 4
    assert [s.total_points for s in large] == [50, 600, 50, 600]
    assert large[0].steps == list(range(50)) and len(large[1].steps) <= 200
