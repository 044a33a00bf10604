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


# --- prepared statements -------------------------------------------------------------------------


def _prepared(conn) -> list[str]:
    with conn.cursor() as cursor:  # a plain cursor: this query itself is not prepared
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


@pytest.fixture
def logging_request(postgres_connection, member, team, client):
    import json

    from experiments.services.runs import run_create
    from experiments.services.tokens import token_create

    postgres_connection.close()  # a new session: nothing prepared yet
    secret = token_create(user=member, name="t", team=team)[1]
    run = run_create(team=team, user=member, name="r")

    def send(step: int):
        body = {"run_id": run.external_id, "key": "loss", "value": 1 / (step + 1), "timestamp": 1000 + step,
                "step": step}
        response = client.post("/mlflow/api/2.0/mlflow/runs/log-metric", data=json.dumps(body),
                               content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert response.status_code == 200, response.content

    return run, send


def test_logging_statements_are_prepared_once_per_connection(postgres_connection, logging_request):
    run, send = logging_request
    send(0)  # token lookup, then the metric insert
    send(1)  # the caller from the cache: the insert that re-checks the token
    prepared = _prepared(postgres_connection)
    # Those three, and nothing the ORM sent.
    assert len(prepared) == 3, prepared
    assert sum(s.startswith("SELECT") and "experiments_apitoken" in s for s in prepared) == 1
    assert sum("INSERT INTO \"experiments_metric\"" in s for s in prepared) == 2
    for step in range(2, 20):
        send(step)
    assert sorted(_prepared(postgres_connection)) == sorted(prepared)  # reused, never prepared again
    assert run.metrics.count() == 20
    assert run.latest_metrics.get(key="loss").step == 19


def test_prepared_statements_survive_a_rolled_back_transaction(postgres_connection, member, team):
    from django.db import transaction

    from experiments.services.runs import MetricPoint, run_create, run_log_batch

    run = run_create(team=team, user=member, name="r")
    with transaction.atomic():
        run_log_batch(run=run, metrics=[MetricPoint("loss", 0.5, 0, 1)])
        transaction.set_rollback(True)
    run_log_batch(run=run, metrics=[MetricPoint("loss", 0.25, 1, 2)])
    assert list(run.metrics.values_list("step", flat=True)) == [1]


def test_prepared_statements_can_be_turned_off(postgres_connection, logging_request, settings):
    settings.DB_PREPARED_STATEMENTS = False
    postgres_connection.close()  # the setting is read when a connection opens
    run, send = logging_request
    send(0)
    send(1)
    assert _prepared(postgres_connection) == []
    assert run.metrics.count() == 2


def test_logging_statements_fit_psycopg_query_cache(db):
    """psycopg converts a query's %s placeholders on every execute unless the query is at most
    MAX_CACHED_STATEMENT_LENGTH long (then it caches the conversion): the per-request statements stay under it."""
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    from experiments.services import runs, tokens

    for statement in (runs._log_metrics_statement(True), runs._log_metrics_statement(False),
                      tokens._Statement(True).sql, tokens._Statement(False).sql):
        assert len(statement) <= MAX_CACHED_STATEMENT_LENGTH
