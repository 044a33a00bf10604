"""Django's PostgreSQL backend, waiting out a database restart when it opens a connection, with a
health check that costs no round trip while the connection is quiet, and prepared statements for
the few fixed statements every logging request runs (prepared_cursor).

CONN_HEALTH_CHECKS replaces a persistent connection that a restart broke; this makes the new
connection wait (up to DB_CONNECT_RETRY_SECONDS, with backoff) while the server is down or still
starting, so a request that arrives during a restart is served late instead of failing."""

from __future__ import annotations

import select
import time
from typing import Any

from django.conf import settings
from django.db.backends.postgresql import base
from django.utils.asyncio import async_unsafe
from psycopg.pq import TransactionStatus


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        if getattr(settings, "DB_PREPARED_STATEMENTS", True) and params.get("prepare_threshold") is None:
            # psycopg prepares nothing while the threshold is None (Django's default). Django's own
            # cursors bind client-side and never prepare, so with 0 exactly the statements of
            # prepared_cursor() are prepared, each on its first use in a connection.
            params["prepare_threshold"] = 0
        return params

    @async_unsafe
    def prepared_cursor(self) -> Any:
        """Like cursor(), for a statement that is one fixed string run many times (parameters as
        %s, typed by casts where PostgreSQL cannot infer them). DB_PREPARED_STATEMENTS=0 turns it
        into a plain cursor, for a connection pooler that does not keep prepared statements."""
        if not getattr(settings, "DB_PREPARED_STATEMENTS", True):
            return self.cursor()
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            # Server-side binding: PostgreSQL then parses and plans the statement once per connection
            # instead of once per request, which for the token lookup (a five-table join) costs
            # more than executing it.
            return self._prepare_cursor(base.ServerBindingCursor(self.connection))

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        deadline = time.monotonic() + float(getattr(settings, "DB_CONNECT_RETRY_SECONDS", 0))
        delay = 0.05
        while True:
            try:
                return super().get_new_connection(conn_params)
            except self.Database.OperationalError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def is_usable(self) -> bool:
        """Django's check sends SELECT 1 before every request's first query: one more round trip per
        request. The server sends nothing to an idle session unless it is going away (a restart or
        pg_terminate_backend sends its FATAL message, then EOF), so an idle connection whose socket has
        nothing to read is usable as far as SELECT 1 could tell; anything to read, or a session
        that is not idle, gets Django's full check."""
        connection = self.connection
        if connection is None or connection.closed or connection.broken:
            return False
        if connection.info.transaction_status != TransactionStatus.IDLE:
            return super().is_usable()
        try:
            poller = select.poll()
            poller.register(connection.fileno(), select.POLLIN | select.POLLPRI)
            pending = poller.poll(0)
        except (OSError, ValueError):
            return False
        return not pending or super().is_usable()
