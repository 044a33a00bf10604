"""With REDIS_URL set (CI), tasks really travel through Redis to a Celery worker."""

from __future__ import annotations

import os
import threading
import time

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.db import connection

from experiments.models import Board, CardKind, VerdictProposal
from experiments.services.boards import board_create, team_create
from experiments.services.cards import card_create
from experiments.services.runs import MetricPoint, run_create, run_log_batch, run_update

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs a Redis broker (REDIS_URL)")


@pytest.fixture
def redis_worker(settings):
    from mlboard.celery import app

    app.conf.task_always_eager = False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    assert app.conf.broker_url.startswith("redis://")
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield app
    app.conf.task_always_eager = True


def _hypothesis_with_runs(board: Board, values: list[float]) -> int:
    hyp = card_create(
        board=board, kind=CardKind.HYPOTHESIS, title="Wider net helps", actor=None,
        metric_key="acc", direction="maximize", threshold=0.5, min_runs=3,
    )
    for seed, value in enumerate(values):
        run = run_create(team=board.team, tags={"mlboard.card": hyp.key}, params={"seed": seed})
        run_log_batch(run=run, metrics=[MetricPoint("acc", value, 1, 1_700_000_000_000)])
        run_update(run=run, status="FINISHED")
    return hyp.pk


@pytest.mark.django_db(transaction=True)
def test_finished_runs_enqueue_verdict_evaluation_through_redis(redis_worker):
    executed_in: list[int] = []

    def record(**_kwargs) -> None:
        executed_in.append(threading.get_ident())
        # The worker thread's persistent DB connection would otherwise block dropping the test database.
        connection.close()

    task_postrun.connect(record, weak=False)
    self_thread = threading.get_ident()
    team = team_create(name="Broker", slug="broker")
    board = board_create(team=team, name="B", key="BRK")
    card_id = _hypothesis_with_runs(board, [0.81, 0.83, 0.82])
    # Each finished run enqueued an evaluation; nothing ran in-process, so proposals appear only
    # once the worker has consumed the messages. Wait for the one over all three runs.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proposal = VerdictProposal.objects.filter(card_id=card_id, status="proposed").first()
        if proposal is not None and proposal.stats.get("n") == 3:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the worker never evaluated the verdict over all three runs")
    task_postrun.disconnect(record)
    assert proposal.proposed == "supported"
    # The tasks ran in the worker's thread, not eagerly inside the request/test thread.
    assert executed_in and self_thread not in executed_in
    # Earlier evaluations (one and two runs) were superseded, not left waiting for a decision.
    assert VerdictProposal.objects.filter(card_id=card_id, status="proposed").count() == 1
