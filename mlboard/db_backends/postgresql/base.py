"""Django's PostgreSQL backend, waiting out a database restart when it opens a connection.

CONN_HEALTH_CHECKS replaces a persistent connection that a restart broke; this makes the new
connection wait (up to DB_CONNECT_RETRY_SECONDS, with backoff) while the server is down or still
starting, so a request that arrives during a restart is served late instead of failing."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
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
