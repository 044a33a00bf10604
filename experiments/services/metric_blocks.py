"""Per-block rollups of metric series (MetricBlock), maintained at ingest, for fast chart reads.

Why blocks: a chart draws per step bucket the first, last, minimum and maximum point, and computing
that from raw points is a full pass over the series (about 1 s per million points on PostgreSQL,
whatever the aggregate). A block holds the same four points (and the count and first NaN/Inf step)
for 64 consecutive steps, and these aggregates compose: a bucket made of whole blocks has exactly the
bucket's first/last/min/max. So the chart reads ~points/64 small rows instead of every point.

Why exact and cheap at ingest: points are insert-only (a retried batch adds nothing, nothing updates
a point) and every aggregate here is a least/greatest over the block's points, so merging a batch's
rollup into the stored row with a comparison is exact in any arrival order; only `points` needs the
points that were really new. On PostgreSQL the rollup rides in the ingest statement itself
(`postgresql_upsert_cte`, fed by the RETURNING rows of the point insert: no extra round trip). On
SQLite (development) a row trigger does the same fold for every inserted point (`sqlite_trigger_sql`,
installed by migration 0005_charts): a skipped duplicate fires nothing, and no extra statement.
Deleting points (run purge) deletes their blocks; `metric_blocks_rebuild` (command
`metric_blocks_backfill`) recomputes blocks from points, e.g. after a bulk load around the ingest path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from django.db import connection, transaction
from django.db.models import Model

from ..models import METRIC_BLOCK_SHIFT, Metric, MetricBlock

BLOCK_COLUMNS = (
    "run_id", "key", "block", "points", "first_step", "first_value", "last_step", "last_value",
    "min_step", "min_value", "max_step", "max_value", "gap_step",
)

# Rollup of a set of points: [count, first (step, value), last (step, value), min (value, step),
# max (value, step), lowest non-finite step]; None where no point qualifies.
Rollup = list


def _least(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _greatest(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def rollup_merge(into: Rollup, other: Rollup) -> None:
    """Fold `other` into `into` (both rollups of disjoint point sets)."""
    into[0] += other[0]
    into[1] = _least(into[1], other[1])
    into[2] = _greatest(into[2], other[2])
    into[3] = _least(into[3], other[3])
    into[4] = _greatest(into[4], other[4])
    into[5] = _least(into[5], other[5])


def point_rollup(step: int, value: float, is_nan: bool) -> Rollup:
    if is_nan or not math.isfinite(value):
        return [1, None, None, None, None, step]
    return [1, (step, value), (step, value), (value, step), (value, step), None]


def rollup_points(points: Iterable[tuple[str, int, float, bool]]) -> dict[tuple[str, int], Rollup]:
    """Rollup per (key, block) of (key, step, value, is_nan) points."""
    out: dict[tuple[str, int], Rollup] = {}
    for key, step, value, is_nan in points:
        one = point_rollup(step, value, is_nan)
        current = out.get((key, step >> METRIC_BLOCK_SHIFT))
        if current is None:
            out[(key, step >> METRIC_BLOCK_SHIFT)] = one
        else:
            rollup_merge(current, one)
    return out


def _block_row(run_id: int, key: str, block: int, r: Rollup) -> tuple:
    first, last, lo, hi = r[1], r[2], r[3], r[4]
    return (
        run_id, key, block, r[0],
        first[0] if first else None, first[1] if first else None,
        last[0] if last else None, last[1] if last else None,
        lo[1] if lo else None, lo[0] if lo else None,
        hi[1] if hi else None, hi[0] if hi else None,
        r[5],
    )


def _merge_conflict(table: str | None = None) -> str:
    """ON CONFLICT clause folding a new rollup into the stored block (PostgreSQL and SQLite alike).

    Row comparisons give the (step, value) / (value, step) order; a NULL side never wins. Every SET
    expression reads the row as it was, so the paired step/value columns move together."""
    qn = connection.ops.quote_name
    t = qn(table or MetricBlock._meta.db_table)

    def pick(a: str, b: str, op: str) -> list[str]:
        cond = (
            f"{t}.{qn(a)} IS NULL OR (excluded.{qn(a)}, excluded.{qn(b)}) {op} ({t}.{qn(a)}, {t}.{qn(b)})"
        )
        return [f"{qn(c)} = CASE WHEN {cond} THEN excluded.{qn(c)} ELSE {t}.{qn(c)} END" for c in (a, b)]

    sets = [
        f"{qn('points')} = {t}.{qn('points')} + excluded.{qn('points')}",
        *pick("first_step", "first_value", "<"),
        *pick("last_step", "last_value", ">"),
        *pick("min_value", "min_step", "<"),
        *pick("max_value", "max_step", ">"),
        f"{qn('gap_step')} = CASE WHEN {t}.{qn('gap_step')} IS NULL OR excluded.{qn('gap_step')} < "
        f"{t}.{qn('gap_step')} THEN excluded.{qn('gap_step')} ELSE {t}.{qn('gap_step')} END",
    ]
    return f"ON CONFLICT ({qn('run_id')}, {qn('key')}, {qn('block')}) DO UPDATE SET " + ", ".join(sets)


SQLITE_TRIGGER = "experiments_metric_block_fold"


def sqlite_trigger_sql(metric_table: str, block_table: str) -> str:
    """CREATE TRIGGER folding each point inserted into `metric_table` into its block (SQLite)."""
    qn = connection.ops.quote_name
    columns = ", ".join(qn(c) for c in BLOCK_COLUMNS)
    fin = "(NEW.is_nan = 0 AND NEW.value NOT IN (9e999, -9e999))"
    step, value = f"CASE WHEN {fin} THEN NEW.step END", f"CASE WHEN {fin} THEN NEW.value END"
    return (
        f"CREATE TRIGGER IF NOT EXISTS {SQLITE_TRIGGER} AFTER INSERT ON {qn(metric_table)} BEGIN "
        f"INSERT INTO {qn(block_table)} ({columns}) VALUES (NEW.run_id, NEW.key, NEW.step >> {METRIC_BLOCK_SHIFT}, "
        f"1, {step}, {value}, {step}, {value}, {step}, {value}, {step}, {value}, "
        f"CASE WHEN {fin} THEN NULL ELSE NEW.step END) {_merge_conflict(block_table)}; END"
    )


def _pg_rollup_select(source: str, run_expr: str, group_run: bool = False) -> str:
    """SELECT of block rows from `source` (columns key, value, is_nan, step; plus run_id if group_run).

    Steps travel through float8 arrays as their offset inside the block (0..63), which is exact for
    any 64-bit step; the arrays give the (step, value) / (value, step) order in one aggregate each.
    `fin`: a finite value (NaN is stored as is_nan with 0; abs() < Infinity leaves out both infinities)."""
    shift, mask = METRIC_BLOCK_SHIFT, (1 << METRIC_BLOCK_SHIFT) - 1
    off = f"(p.step & {mask})::float8"
    base = f"(r.blk << {shift})"
    run_col = "p.run_id AS run_id, " if group_run else ""
    return f"""
        SELECT {run_expr}, r.key, r.blk, r.n,
               {base} + (r.f)[1]::bigint, (r.f)[2], {base} + (r.l)[1]::bigint, (r.l)[2],
               {base} + (r.lo)[2]::bigint, (r.lo)[1], {base} + (r.hi)[2]::bigint, (r.hi)[1], r.gap
        FROM (
            SELECT {run_col}p.key AS key, p.step >> {shift} AS blk, count(*) AS n,
                   min(ARRAY[{off}, p.value]) FILTER (WHERE p.fin) AS f,
                   max(ARRAY[{off}, p.value]) FILTER (WHERE p.fin) AS l,
                   min(ARRAY[p.value, {off}]) FILTER (WHERE p.fin) AS lo,
                   max(ARRAY[p.value, {off}]) FILTER (WHERE p.fin) AS hi,
                   min(p.step) FILTER (WHERE NOT p.fin) AS gap
            FROM (SELECT *, NOT is_nan AND abs(value) < 'Infinity'::float8 AS fin FROM {source} s) p
            GROUP BY {"p.run_id, " if group_run else ""}p.key, p.step >> {shift}
        ) r
    """


def postgresql_upsert_cte(source: str) -> str:
    """Body of a data-modifying CTE folding the rollup of `source` (the RETURNING rows of the point
    insert: only points that were new) into MetricBlock. One %s parameter: the run id."""
    qn = connection.ops.quote_name
    columns = ", ".join(qn(c) for c in BLOCK_COLUMNS)
    # The target by a one-letter alias keeps the logging statement short enough for psycopg's cache
    # of converted queries (4096 characters).
    return (
        f"INSERT INTO {qn(MetricBlock._meta.db_table)} AS b ({columns}) "
        f"{_pg_rollup_select(source, '%s::bigint')} {_merge_conflict('b')}"
    )


def metric_blocks_add(*, run_id: int, keys: Iterable[str]) -> None:
    """Bring blocks up to date after points were inserted, where neither the ingest statement
    (PostgreSQL) nor the trigger (SQLite) does: other backends recompute the keys' blocks."""
    if connection.vendor not in ("postgresql", "sqlite"):
        metric_blocks_rebuild(run_ids=[run_id], keys=keys)


@transaction.atomic
def metric_blocks_rebuild(
    *, run_ids: Iterable[int] | None = None, keys: Iterable[str] | None = None,
    metric_model: type[Model] = Metric, block_model: type[Model] = MetricBlock, runs_per_statement: int = 50,
) -> int:
    """Recompute blocks from the stored points (all runs, or `run_ids`; all keys, or `keys`).

    For the backfill of points stored before blocks existed, and to repair blocks after points were
    changed by hand. Returns the number of blocks written. The models may be a migration's
    historical models."""
    blocks, points = block_model._meta.db_table, metric_model._meta.db_table
    run_model = metric_model._meta.get_field("run").related_model
    ids = sorted(set(run_ids) if run_ids is not None else run_model.objects.values_list("pk", flat=True))
    key_list = sorted(set(keys)) if keys is not None else None
    written = 0
    for start in range(0, len(ids), runs_per_statement):
        part = ids[start : start + runs_per_statement]
        stale = block_model.objects.filter(run_id__in=part)
        (stale.filter(key__in=key_list) if key_list is not None else stale).delete()
        if connection.vendor == "postgresql":
            written += _rebuild_postgresql(points, blocks, part, key_list)
        else:
            written += _rebuild_python(metric_model, block_model, part, key_list)
    return written


def _rebuild_postgresql(points: str, blocks: str, run_ids: list[int], keys: list[str] | None) -> int:
    qn = connection.ops.quote_name
    columns = ", ".join(qn(c) for c in BLOCK_COLUMNS)
    where = "p.run_id = ANY(%s)" + (" AND p.key = ANY(%s)" if keys is not None else "")
    source = f"(SELECT * FROM {qn(points)} p WHERE {where})"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {qn(blocks)} ({columns}) {_pg_rollup_select(source, 'r.run_id', group_run=True)}",
            [run_ids, *([keys] if keys is not None else [])],
        )
        return max(cursor.rowcount, 0)


def _rebuild_python(
    metric_model: type[Model], block_model: type[Model], run_ids: list[int], keys: list[str] | None
) -> int:
    written = 0
    for run_id in run_ids:
        points = metric_model.objects.filter(run_id=run_id).order_by()
        if keys is not None:
            points = points.filter(key__in=keys)
        rollups = rollup_points(points.values_list("key", "step", "value", "is_nan").iterator(chunk_size=5000))
        rows = [_block_row(run_id, key, block, r) for (key, block), r in rollups.items()]
        block_model.objects.bulk_create(
            [block_model(**dict(zip(BLOCK_COLUMNS, row, strict=True))) for row in rows], batch_size=1000
        )
        written += len(rows)
    return written
