"""Metric series reads for charts.

Series can hold millions of points; the browser only ever gets a downsampled copy of at
most `MAX_POINTS` points per series. Downsampling keeps, per step bucket, the first and last
point and the minimum and maximum (in step order) so spikes and dips stay visible, and one
gap marker where a bucket holds NaN/Inf so the drawn line breaks where the data does.
Stored series are downsampled by the database (`metric_series`); `downsample` does the same
for a series already in memory.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain

from django.core.cache import cache
from django.db import connection
from django.db.models import OuterRef, Subquery

from ..models import METRIC_BLOCK_SHIFT, Card, CardRun, LatestMetric, Metric, MetricBlock, Run
from ..services.metric_blocks import rollup_merge

MAX_POINTS = 1000


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


# A series' downsampled copy is cached per run, key and budget; the run's version (bumped after
# every ingest commit, see series_version_bump) is part of the cache key, so new points make old
# copies unreachable instead of needing a delete per key.
SERIES_CACHE_SECONDS = 24 * 3600


def series_version_key(run_id: int) -> str:
    return f"mlboard:series-version:{run_id}"


def series_version_bump(run_id: int) -> None:
    """Make every cached series of the run stale (call after its new points are committed)."""
    cache.set(series_version_key(run_id), time.time_ns(), None)


def _series_cache_key(run: Run, version: object, key: str, max_points: int) -> str:
    # The run's creation time guards against a reused id (a restored or recreated database).
    created = int(run.created_at.timestamp() * 1_000_000) if run.created_at else 0
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]  # metric keys may hold characters memcached refuses
    return f"mlboard:series:{run.pk}:{created}:{version}:{max_points}:{digest}"


def _bounds(run_ids: Sequence[int], key: str) -> dict[int, tuple[int, int]]:
    """First and last step of `key` per run: two index probes per run, never a scan."""
    points = Metric.objects.filter(run_id=OuterRef("pk"), key=key).order_by()
    rows = (
        Run.objects.filter(pk__in=list(run_ids))
        .annotate(
            lo=Subquery(points.order_by("step").values("step")[:1]),
            hi=Subquery(points.order_by("-step").values("step")[:1]),
        )
        .filter(lo__isnull=False)
        .values_list("pk", "lo", "hi")
    )
    return {pk: (lo, hi) for pk, lo, hi in rows}


_FINITE = "(NOT m.is_nan AND m.value <> 'Infinity'::float8 AND m.value <> '-Infinity'::float8)"
_SQLITE_FINITE = "(m.is_nan = 0 AND m.value NOT IN (9e999, -9e999))"

# The bucket grid of a series. bucket(step) = ((step >> shift) - base) * buckets // units, with
# units = (hi >> shift) - (lo >> shift) + 1: integer arithmetic, the same on every backend and in
# Python. Long series (a step range of at least buckets * 64) use shift >= METRIC_BLOCK_SHIFT, so
# bucket edges fall on MetricBlock edges and every bucket is a run of whole blocks: its first, last,
# minimum and maximum are exactly those of its blocks, and no raw point is read. Buckets then differ
# in width by at most one block (64 steps) instead of one step, invisible at chart scale. Shorter
# series keep a per-step grid (shift 0) over raw points: at most ~16k points per series.
Grid = tuple[int, int, int]  # (shift, base, units)


def _grid(lo: int, hi: int, buckets: int) -> Grid:
    shift = METRIC_BLOCK_SHIFT if hi - lo + 1 >= buckets << METRIC_BLOCK_SHIFT else 0
    while True:
        units = (hi >> shift) - (lo >> shift) + 1
        if units * buckets < 1 << 62:  # steps spanning more than ~2**54: coarser units, no overflow
            return shift, lo >> shift, units
        shift += 1


def bucket_of(step: int, grid: Grid, buckets: int) -> int:
    shift, base, units = grid
    return ((step >> shift) - base) * buckets // units


def _grid_arrays(grids: dict[int, Grid], shift_offset: int = 0) -> list[list[int]]:
    ids = list(grids)
    return [ids, [grids[i][0] - shift_offset for i in ids], [grids[i][1] for i in ids], [grids[i][2] for i in ids]]


# Arrays are unpacked in SQL: ten scalar columns per bucket parse several times faster than four arrays.
_UNPACK = "q.n, (q.f)[1], (q.f)[2], (q.l)[1], (q.l)[2], (q.lo)[2], (q.lo)[1], (q.hi)[2], (q.hi)[1], q.gap"


def _bucket_rows_postgresql(sql: str, params: list[object]) -> Iterator[tuple]:
    with connection.cursor() as cursor:  # (settings turn PostgreSQL's JIT off: ~100 ms here for nothing)
        cursor.execute(sql, params)
        for run_id, n, fs, fv, ls, lv, los, lov, his, hiv, gap in cursor.fetchall():
            yield (
                run_id, n,
                None if fs is None else (int(fs), fv),
                None if ls is None else (int(ls), lv),
                None if los is None else (int(los), lov),
                None if his is None else (int(his), hiv),
                gap,
            )


def _buckets_postgresql(grids: dict[int, Grid], key: str, buckets: int) -> Iterator[tuple]:
    """(run_id, count, first, last, min, max, gap_step) per bucket from raw points, by PostgreSQL.

    first/last/min/max are [step, value] / [value, step] arrays so each aggregate carries its
    point's step (the least (step, value) is the first, the least (value, step) the minimum); only
    finite values take part, and gap_step is the first NaN/Inf of the bucket.
    """
    metric = connection.ops.quote_name(Metric._meta.db_table)
    sql = f"""
        WITH b(run_id, sh, base, units) AS (
            SELECT * FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::bigint[]))
        SELECT q.run_id, {_UNPACK} FROM (
            SELECT m.run_id, count(*) AS n,
                   min(ARRAY[m.step::float8, m.value]) FILTER (WHERE {_FINITE}) AS f,
                   max(ARRAY[m.step::float8, m.value]) FILTER (WHERE {_FINITE}) AS l,
                   min(ARRAY[m.value, m.step::float8]) FILTER (WHERE {_FINITE}) AS lo,
                   max(ARRAY[m.value, m.step::float8]) FILTER (WHERE {_FINITE}) AS hi,
                   min(m.step) FILTER (WHERE NOT {_FINITE}) AS gap
            FROM {metric} m JOIN b ON m.run_id = b.run_id
            WHERE m.key = %s
            GROUP BY m.run_id, (((m.step >> b.sh) - b.base) * %s) / b.units
        ) q
    """
    return _bucket_rows_postgresql(sql, [*_grid_arrays(grids), key, buckets])


def _block_buckets_postgresql(grids: dict[int, Grid], key: str, buckets: int) -> Iterator[tuple]:
    """The same rows from MetricBlock: each bucket folds its whole blocks (~64x fewer rows than points).

    Bucket i holds the units u with (u - base) * buckets // units == i, i.e. base + ceil(i * units /
    buckets) <= u < base + ceil((i + 1) * units / buckets); one index range scan and aggregate per
    bucket (LATERAL). A single GROUP BY over the bucket expression would sort every block row first
    (the planner cannot know there are only `buckets` groups), spilling to disk at ~100k blocks."""
    block = connection.ops.quote_name(MetricBlock._meta.db_table)
    sql = f"""
        WITH b(run_id, sh, base, units) AS (
            SELECT * FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::bigint[])),
        e AS (
            SELECT b.run_id, (b.base + (g.i * b.units + %s - 1) / %s) << b.sh AS lo,
                   (b.base + ((g.i + 1) * b.units + %s - 1) / %s) << b.sh AS hi
            FROM b, generate_series(0, %s - 1) AS g(i))
        SELECT e.run_id, {_UNPACK} FROM e, LATERAL (
            SELECT sum(k.points)::bigint AS n,
                   min(ARRAY[k.first_step::float8, k.first_value]) FILTER (WHERE k.first_step IS NOT NULL) AS f,
                   max(ARRAY[k.last_step::float8, k.last_value]) FILTER (WHERE k.last_step IS NOT NULL) AS l,
                   min(ARRAY[k.min_value, k.min_step::float8]) FILTER (WHERE k.min_step IS NOT NULL) AS lo,
                   max(ARRAY[k.max_value, k.max_step::float8]) FILTER (WHERE k.max_step IS NOT NULL) AS hi,
                   min(k.gap_step) AS gap
            FROM {block} k WHERE k.run_id = e.run_id AND k.key = %s AND k.block >= e.lo AND k.block < e.hi
        ) q
        WHERE q.n IS NOT NULL
    """
    params = [*_grid_arrays(grids, METRIC_BLOCK_SHIFT), *[buckets] * 5, key]
    return _bucket_rows_postgresql(sql, params)


def _buckets_sqlite(grids: dict[int, Grid], key: str, buckets: int) -> Iterator[tuple]:
    """The same aggregates on SQLite, one grouped pass per aggregate. SQLite's documented rule that a
    bare column next to a single min()/max() comes from that row gives each aggregate its point; ties
    (one step logged twice, one value at two steps) are settled like PostgreSQL's arrays by first
    narrowing to the rows at the group's least/greatest step (or value)."""
    metric = connection.ops.quote_name(Metric._meta.db_table)
    values = ", ".join("(%s, %s, %s, %s)" for _ in grids)
    params: list[object] = [x for run_id, grid in grids.items() for x in (run_id, *grid)]
    sql = f"""
        WITH b(run_id, sh, base, units) AS (VALUES {values}),
        p AS (
            SELECT m.run_id AS run_id, (((m.step >> b.sh) - b.base) * %s) / b.units AS bucket,
                   m.step AS step, m.value AS value, {_SQLITE_FINITE} AS fin
            FROM {metric} m JOIN b ON m.run_id = b.run_id WHERE m.key = %s
        )
        SELECT run_id, bucket, 'n', count(*), NULL FROM p GROUP BY run_id, bucket
        UNION ALL SELECT run_id, bucket, 'f', step, min(value) FROM p WHERE fin AND (run_id, bucket, step) IN
            (SELECT run_id, bucket, min(step) FROM p WHERE fin GROUP BY run_id, bucket) GROUP BY run_id, bucket
        UNION ALL SELECT run_id, bucket, 'l', step, max(value) FROM p WHERE fin AND (run_id, bucket, step) IN
            (SELECT run_id, bucket, max(step) FROM p WHERE fin GROUP BY run_id, bucket) GROUP BY run_id, bucket
        UNION ALL SELECT run_id, bucket, 'lo', min(step), value FROM p WHERE fin AND (run_id, bucket, value) IN
            (SELECT run_id, bucket, min(value) FROM p WHERE fin GROUP BY run_id, bucket) GROUP BY run_id, bucket
        UNION ALL SELECT run_id, bucket, 'hi', max(step), value FROM p WHERE fin AND (run_id, bucket, value) IN
            (SELECT run_id, bucket, max(value) FROM p WHERE fin GROUP BY run_id, bucket) GROUP BY run_id, bucket
        UNION ALL SELECT run_id, bucket, 'g', min(step), NULL FROM p WHERE NOT fin GROUP BY run_id, bucket
    """
    params += [buckets, key]
    groups: dict[tuple[int, int], dict[str, object]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for run_id, bucket, what, step, value in cursor.fetchall():
            group = groups.setdefault((run_id, bucket), {})
            group[what] = step if what in ("n", "g") else (step, value)
    for (run_id, _), g in groups.items():
        yield run_id, g.get("n", 0), g.get("f"), g.get("l"), g.get("lo"), g.get("hi"), g.get("g")


def _block_buckets_python(grids: dict[int, Grid], key: str, buckets: int) -> Iterator[tuple]:
    """Block buckets folded in Python (SQLite and other backends: development-sized data)."""
    groups: dict[tuple[int, int], list] = {}
    rows = (
        MetricBlock.objects.filter(run_id__in=list(grids), key=key).order_by()
        .values_list("run_id", "block", "points", "first_step", "first_value", "last_step", "last_value",
                     "min_step", "min_value", "max_step", "max_value", "gap_step")
    )
    for run_id, block, n, fs, fv, ls, lv, ns, nv, xs, xv, gap in rows.iterator(chunk_size=5000):
        shift, base, units = grids[run_id]
        bucket = ((block >> (shift - METRIC_BLOCK_SHIFT)) - base) * buckets // units
        part = [n, None if fs is None else (fs, fv), None if ls is None else (ls, lv),
                None if ns is None else (nv, ns), None if xs is None else (xv, xs), gap]
        group = groups.get((run_id, bucket))
        if group is None:
            groups[(run_id, bucket)] = part
        else:
            rollup_merge(group, part)
    for (run_id, _), (n, first, last, lo, hi, gap) in groups.items():
        yield run_id, n, first, last, lo and (lo[1], lo[0]), hi and (hi[1], hi[0]), gap


def _raw_points(run_ids: Sequence[int], key: str) -> dict[int, tuple[list[int], list[float | None]]]:
    """Every point of short series, in drawing order (index order of the unique constraint)."""
    out: dict[int, tuple[list[int], list[float | None]]] = {}
    rows = (
        Metric.objects.filter(run_id__in=list(run_ids), key=key)
        .order_by("run_id", "step", "timestamp", "value", "is_nan")
        .values_list("run_id", "step", "value", "is_nan")
    )
    for run_id, step, value, is_nan in rows:
        steps, values = out.setdefault(run_id, ([], []))
        steps.append(step)
        values.append(None if is_nan or not _finite(value) else value)
    return out


def _downsampled_in_db(
    run_ids: Sequence[int], key: str, max_points: int, *, source: str = "auto"
) -> dict[int, tuple[list[int], list[float | None], int]]:
    """(steps, values, total points) per run that has `key`, with at most `max_points` points each.

    Each series is cut into max_points // 4 step buckets (see _grid) and the database returns the
    first, last, minimum and maximum (and the first NaN/Inf, drawn as a gap) per bucket: from
    MetricBlock rollups for long series, from raw points for short ones, so at most a few thousand
    rows cross the wire whatever the series' length. Series that fit the budget come back whole.
    `source` = "raw" forces raw points on the same grid (tests compare both).
    """
    if max_points < 4:
        raise ValueError("max_points must be at least 4")
    bounds = _bounds(run_ids, key)
    if not bounds:
        return {}
    buckets = max_points // 4
    grids = {run_id: _grid(lo, hi, buckets) for run_id, (lo, hi) in bounds.items()}
    from_blocks = {i: g for i, g in grids.items() if g[0] >= METRIC_BLOCK_SHIFT and source != "raw"}
    from_points = {i: g for i, g in grids.items() if i not in from_blocks}
    postgresql = connection.vendor == "postgresql"
    rows: list[Iterable[tuple]] = []
    if from_blocks:
        rows.append((_block_buckets_postgresql if postgresql else _block_buckets_python)(from_blocks, key, buckets))
    if from_points:
        rows.append((_buckets_postgresql if postgresql else _buckets_sqlite)(from_points, key, buckets))
    picked: dict[int, list[tuple[int, int, float | None]]] = {}
    totals: dict[int, int] = {}
    for run_id, n, first, last, lo, hi, gap in chain.from_iterable(rows):
        totals[run_id] = totals.get(run_id, 0) + n
        points = {p for p in (first, lo, hi, last) if p is not None}
        if gap is not None:
            # A gap marker breaks the drawn line; it takes the place of the last point so a bucket
            # never emits more than four.
            points.discard(last)
            points.add((gap, None))
        # Order by step; at one step a finite value before the gap (1) so the line reaches it.
        picked.setdefault(run_id, []).extend((step, 1 if v is None else 0, v) for step, v in points)
    small = [run_id for run_id, n in totals.items() if n <= max_points]
    out: dict[int, tuple[list[int], list[float | None], int]] = {}
    for run_id, (steps, values) in _raw_points(small, key).items() if small else ():
        out[run_id] = (steps, values, totals[run_id])
    for run_id, points in picked.items():
        if run_id in out:
            continue
        points.sort(key=lambda p: (p[0], p[1]))
        out[run_id] = ([p[0] for p in points], [p[2] for p in points], totals[run_id])
    return out


def metric_series(
    *, runs: Sequence[Run], key: str, max_points: int = MAX_POINTS, baseline_ids: Iterable[int] = ()
) -> list[Series]:
    """Downsampled series of `key` for each run (runs without the metric are left out).

    Downsampled in the database (see _downsampled_in_db) and cached per run and key until the
    run logs new points: two cache round trips when every series is cached.
    """
    baseline = set(baseline_ids)
    run_ids = [r.pk for r in runs]
    versions = cache.get_many([series_version_key(i) for i in run_ids])
    cache_keys = {
        r.pk: _series_cache_key(r, versions.get(series_version_key(r.pk), 0), key, max_points) for r in runs
    }
    cached = cache.get_many(list(cache_keys.values()))
    data: dict[int, tuple[list[int], list[float | None], int] | None] = {}
    for run_id, cache_key in cache_keys.items():
        if cache_key in cached:
            data[run_id] = cached[cache_key]
    missing = [i for i in run_ids if i not in data]
    if missing:
        fresh = _downsampled_in_db(missing, key, max_points)
        # Runs without the metric are cached too (as None), so they cost nothing next time.
        cache.set_many({cache_keys[i]: fresh.get(i) for i in missing}, SERIES_CACHE_SECONDS)
        data.update({i: fresh.get(i) for i in missing})
    series: list[Series] = []
    for run in runs:
        entry = data.get(run.pk)
        if entry is None:
            continue
        steps, values, total = entry
        series.append(
            Series(
                run_id=run.pk,
                label=run.name or run.external_id[:8],
                steps=steps,
                values=values,
                total_points=total,
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
