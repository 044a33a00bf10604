"""mlboard's PostgreSQL backend: the per-request health check skips SELECT 1 on a quiet idle
connection, and still notices one the server has ended."""

from __future__ import annotations

import time

import pytest
from django.db import connection, connections
from django.db.backends.postgresql.base import DatabaseWrapper as DjangoWrapper

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def postgres_connection():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL backend only")
    connection.ensure_connection()
    yield connection
    connection.close()


def test_quiet_idle_connection_is_usable_without_a_round_trip(postgres_connection, monkeypatch):
    def no_round_trip(self):
        raise AssertionError("SELECT 1 was sent")

    monkeypatch.setattr(DjangoWrapper, "is_usable", no_round_trip)
    assert postgres_connection.is_usable() is True


def test_connection_ended_by_the_server_is_not_usable(postgres_connection):
    pid = postgres_connection.connection.info.backend_pid
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    deadline = time.monotonic() + 5
    while postgres_connection.is_usable() and time.monotonic() < deadline:
        time.sleep(0.05)  # the FATAL message is on its way
    assert postgres_connection.is_usable() is False
    postgres_connection.health_check_done = False  # as at the start of a request
    postgres_connection.close_if_health_check_failed()
    with postgres_connection.cursor() as cursor:  # a new connection
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_connection_inside_a_transaction_gets_the_full_check(postgres_connection, monkeypatch):
    calls = []
    monkeypatch.setattr(DjangoWrapper, "is_usable", lambda self: calls.append(1) or True)
    raw = postgres_connection.connection
    raw.execute("BEGIN")
    try:
        assert postgres_connection.is_usable() is True
    finally:
        raw.execute("ROLLBACK")
    assert calls == [1]
