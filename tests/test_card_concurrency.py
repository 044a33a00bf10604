"""Concurrent moves and edits of one card on PostgreSQL: exactly one writer wins, every loser gets 409
with the conflict message (never a 500). Real threads, each with its own database connection."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from experiments.models import Card, CardEvent, EventKind, Stage
from experiments.services.cards import card_create

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks and READ COMMITTED re-checks need PostgreSQL"
)

THREADS = 20


def _race(requests: list) -> list:
    """Run each request callable in its own thread, all released at once; return (status, body) pairs."""
    barrier = threading.Barrier(len(requests))
    results: list = [None] * len(requests)

    def work(index: int) -> None:
        try:
            barrier.wait()
            response = requests[index]()
            results[index] = (response.status_code, response.json())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_moves_one_wins_others_409(board, member):
    card = card_create(board=board, kind="hypothesis", title="Bigger model helps", actor=member)
    targets = [c for c in board.columns.order_by("position") if c.pk != card.column_id]
    def move_to(target):
        return lambda: _client(member).post(
            f"/api/cards/{card.pk}/move/", {"column": target.pk, "version": 1}, format="json"
        )

    requests = [move_to(targets[i % len(targets)]) for i in range(THREADS)]
    results = _race(requests)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [409] * (THREADS - 1), results
    for status, body in results:
        if status == 409:
            assert body["error"]["code"] == "conflict"
            assert "since you loaded it" in body["error"]["message"]
            assert body["error"]["current_version"] == 2
    card.refresh_from_db()
    assert card.version == 2
    assert CardEvent.objects.filter(card=card, kind=EventKind.MOVED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_moves_and_edits_one_wins_others_409(board, member, manager):
    card = card_create(board=board, kind="hypothesis", title="Bigger model helps", actor=member)
    ready = board.columns.get(stage=Stage.READY)
    requests = []
    for i in range(THREADS):
        user = member if i % 2 else manager
        if i % 2:
            requests.append(lambda u=user: _client(u).post(
                f"/api/cards/{card.pk}/move/", {"column": ready.pk, "version": 1}, format="json"
            ))
        else:
            requests.append(lambda u=user, n=i: _client(u).patch(
                f"/api/cards/{card.pk}/", {"title": f"Edit {n}", "version": 1}, format="json"
            ))
    results = _race(requests)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [409] * (THREADS - 1), results
    assert Card.objects.get(pk=card.pk).version == 2
