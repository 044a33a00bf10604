"""Real Chromium: the new-hypothesis form suggests runs per arm as its plan is typed in."""

from __future__ import annotations

import pytest
from django.urls import reverse

from experiments.models import RunStatus
from experiments.services.runs import MetricPoint, run_create, run_log_metrics

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_create_form_suggestion_follows_the_typed_plan(page, login, live_server, board, team, member):
    for shift in (0.0, 0.05):
        for v in (0.80, 0.82, 0.81):
            run = run_create(team=team, status=RunStatus.FINISHED)
            run_log_metrics(run=run, points=[MetricPoint("val_auc", v + shift, step=1)])
    login(member)
    page.goto(f"{live_server.url}{reverse('board_card_create', args=[board.pk, 'hypothesis'])}")
    hint = page.locator("#sample-size")
    assert "smallest effect" in hint.inner_text()
    page.fill("input[name=metric_key]", "val_auc")
    page.fill("input[name=min_delta]", "0")
    page.fill("input[name=smallest_effect]", "0.02")
    page.wait_for_function(
        "() => document.querySelector('#sample-size').textContent.includes('Suggested')", timeout=15_000
    )
    assert "runs per arm" in page.locator("#sample-size").inner_text()
