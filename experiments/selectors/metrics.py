"""Metric series reads for charts.

Series can hold millions of points; the browser only ever gets a downsampled copy of at
most `MAX_POINTS` points per series. Downsampling keeps the first and last point and, per
bucket, the minimum and maximum (in step order) so spikes and dips stay visible, and one
gap marker where a bucket holds NaN/Inf so the drawn line breaks where the data does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from django.db import connection

from ..models import Card, CardRun, LatestMetric, Metric, Run

MAX_POINTS = 1000
# Rows fetched per database round trip while streaming a long series.
CHUNK_SIZE = 20_000


def _finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


def downsample(
    steps: Sequence[int], values: Sequence[float], *, max_points: int = MAX_POINTS
) -> tuple[list[int], list[float | None]]:
    """Reduce a series to at most `max_points` points; non-finite values become None (a gap).

    Points must already be in drawing order (step, then timestamp).
    """
    values = values if isinstance(values, list) else list(values)
    if len(steps) != len(values):
        raise ValueError("steps and values must have the same length")
    if max_points < 4:
        raise ValueError("max_points must be at least 4")
    n = len(steps)
    if n <= max_points:
        return list(steps), [v if _finite(v) else None for v in values]

    has_gaps = not all(map(math.isfinite, values))
    # Each bucket emits min and max, plus one gap marker when the series has gaps at all;
    # first and last point are kept outside the buckets.
    per_bucket = 3 if has_gaps else 2
    buckets = (max_points - 2) // per_bucket
    interior = n - 2
    keep: list[int] = [0]
    for b in range(buckets):
        lo = 1 + b * interior // buckets
        hi = 1 + (b + 1) * interior // buckets
        if lo >= hi:
            continue
        segment = values[lo:hi]
        if not has_gaps or all(map(math.isfinite, segment)):
            # Fast path: C-level min/max over the slice.
            i_min = lo + segment.index(min(segment))
            i_max = lo + segment.index(max(segment))
            keep.extend((i_min, i_max) if i_min < i_max else (i_max, i_min) if i_max < i_min else (i_min,))
            continue
        i_min = i_max = i_gap = -1
        for i in range(lo, hi):
            v = values[i]
            if not _finite(v):
                if i_gap < 0:
                    i_gap = i
                continue
            if i_min < 0 or v < values[i_min]:
                i_min = i
            if i_max < 0 or v > values[i_max]:
                i_max = i
        keep.extend(sorted({i for i in (i_min, i_max, i_gap) if i >= 0}))
    keep.append(n - 1)
    out_steps = [steps[i] for i in keep]
    out_values = [values[i] if _finite(values[i]) else None for i in keep]
    return out_steps, out_values


@dataclass
class Series:
    """One run's line on a chart (already downsampled)."""

    run_id: int
    label: str
    steps: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    total_points: int = 0
    is_baseline: bool = False

    @property
    def downsampled(self) -> bool:
        return self.total_points > len(self.steps)


def _stream_points(run_ids: Iterable[int], key: str) -> Iterator[tuple[int, int, float, bool]]:
    """(run_id, step, value, is_nan) in drawing order; one query, streamed in chunks.

    The order matches the (run, key, step, timestamp, value, is_nan) unique index, so the database
    reads the index in order instead of sorting; rows come straight off the cursor because
    Django's per-row converters would cost more than the downsampling on long series.
    """
    qs = (
        Metric.objects.filter(run_id__in=list(run_ids), key=key)
        .order_by("run_id", "step", "timestamp", "value", "is_nan")
        .values_list("run_id", "step", "value", "is_nan")
    )
    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(CHUNK_SIZE):
            yield from rows


def metric_series(
    *, runs: Sequence[Run], key: str, max_points: int = MAX_POINTS, baseline_ids: Iterable[int] = ()
) -> list[Series]:
    """Downsampled series of `key` for each run (runs without the metric are left out)."""
    baseline = set(baseline_ids)
    by_run: dict[int, tuple[list[int], list[float]]] = {}
    current = None
    add_step = add_value = None
    nan = math.nan
    # Rows arrive grouped by run; bind the current run's list methods once per run (hot loop).
    for run_id, step, value, is_nan in _stream_points([r.pk for r in runs], key):
        if run_id != current:
            current = run_id
            steps, values = by_run.setdefault(run_id, ([], []))
            add_step, add_value = steps.append, values.append
        add_step(step)
        add_value(nan if is_nan else value)
    series: list[Series] = []
    for run in runs:
        if run.pk not in by_run:
            continue
        steps, values = by_run[run.pk]
        ds_steps, ds_values = downsample(steps, values, max_points=max_points)
        series.append(
            Series(
                run_id=run.pk,
                label=run.name or run.external_id[:8],
                steps=ds_steps,
                values=ds_values,
                total_points=len(steps),
                is_baseline=run.pk in baseline,
            )
        )
    return series


def metric_keys_for_runs(run_ids: Iterable[int]) -> list[str]:
    """Metric keys logged by any of the runs, sorted (one query)."""
    return sorted(
        set(LatestMetric.objects.filter(run_id__in=list(run_ids)).values_list("key", flat=True).distinct())
    )


def card_chart_runs(card: Card) -> tuple[list[Run], set[int]]:
    """Runs drawn on a card's charts (same set as its linked-runs table) and which are baselines."""
    from .runs import card_link_filter

    links = (
        CardRun.objects.filter(card_link_filter(card))
        .select_related("run")
        .order_by("run__start_time", "run_id")
    )
    runs: dict[int, Run] = {}
    baselines: set[int] = set()
    for link in links:
        runs.setdefault(link.run_id, link.run)
        if link.is_baseline:
            baselines.add(link.run_id)
    return list(runs.values()), baselines


def format_value(value: float | None, is_nan: bool = False) -> str:
    """Compact display of a metric value: NaN/Inf spelled out, 4 significant digits otherwise."""
    if is_nan or value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6 or magnitude < 1e-4:
        return f"{value:.3e}"
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.4g}" if magnitude < 1000 else f"{value:,.1f}"
