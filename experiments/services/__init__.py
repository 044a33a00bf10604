"""Write side: every state change goes through a function here (entity_verb, keyword-only, atomic)."""

from typing import Any

from django.db import connection


def prepared_cursor() -> Any:
    """A cursor whose statements PostgreSQL prepares once per connection (mlboard/db_backends/postgresql),
    for fixed statements on the logging hot path; elsewhere (SQLite) a plain cursor."""
    make = getattr(connection, "prepared_cursor", None)
    return make() if make is not None else connection.cursor()
