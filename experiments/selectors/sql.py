"""SQL helpers for the reports' larger reads.

InIds: `column IN (ids)` for long id lists, as one array value on PostgreSQL. Reports pass the
window's card or run ids back to the database. As `IN (%s, %s, ...)` every id is its own parameter:
with a few thousand ids, preparing each one (Django), splitting the query text on thousands of
placeholders (psycopg) and planning the long list took ~100 ms under load for a query that runs in
under a millisecond. `= ANY(%s)` sends one array; the planner still sees its values.

EpochSeconds: a timestamp as float seconds since the epoch, for times that are only compared or
bucketed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import BooleanField, F, FloatField, Func


class InIds(Func):
    """A filter: `field` is one of `ids` (integers). Use as ``qs.filter(InIds("card_id", ids))``."""

    output_field = BooleanField()

    def __init__(self, field: str, ids: Iterable[int]) -> None:
        super().__init__(F(field))
        self.ids = [int(i) for i in ids]

    def as_sql(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        sql, params = compiler.compile(self.source_expressions[0])
        if connection.vendor == "postgresql":
            return f"{sql} = ANY(%s::bigint[])", [*params, self.ids]
        if not self.ids:
            return "1 = 0", list(params)
        return f"{sql} IN ({', '.join(['%s'] * len(self.ids))})", [*params, *self.ids]


class EpochSeconds(Func):
    """A timestamp as float seconds since the epoch: thousands of run end times load several times
    faster as floats than as time-zone-aware datetimes, and only get bucketed anyway."""

    output_field = FloatField()

    def as_sql(self, compiler, connection, **extra_context):  # type: ignore[no-untyped-def]
        # SQLite (Django stores UTC text): julianday is days since noon, 24 Nov 4714 BC.
        return super().as_sql(
            compiler, connection, template="((julianday(%(expressions)s) - 2440587.5) * 86400.0)", **extra_context
        )

    def as_postgresql(self, compiler, connection, **extra_context):  # type: ignore[no-untyped-def]
        return super().as_sql(
            compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)::float8", **extra_context
        )
