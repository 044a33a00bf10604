"""Reports in real headless Chromium: Plotly draws the server-built figures; planning an iteration."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from experiments.models import CardKind, IterationItem, RunStatus, Stage
from experiments.services.iterations import iteration_close, iteration_commit_card, iteration_create, iteration_start

from .test_velocity_support import clock, make_card, move, run_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _recent_work(team, board, member):
    """Two days of work ending now, so the default ranges show it."""
    now = timezone.now().replace(microsecond=0)
    day = dt.timedelta(days=1)
    hyp = make_card(board, CardKind.HYPOTHESIS, "Focal loss helps", now - 3 * day, actor=member)
    exp = make_card(board, CardKind.EXPERIMENT, "Focal gamma 2", now - 3 * day, actor=member, parent=hyp)
    other = make_card(board, CardKind.EXPERIMENT, "Focal gamma 5", now - 3 * day, actor=member, parent=hyp)
    it = iteration_create(team=team, start=now - 2 * day, end=now - day, name="Yesterday")
    with clock(now - 2 * day - dt.timedelta(hours=1)):
        iteration_start(iteration=it)
        iteration_commit_card(iteration=it, card=exp, actor=member)
        iteration_commit_card(iteration=it, card=other, actor=member)
    move(exp, Stage.RUNNING, now - 2 * day + dt.timedelta(hours=1))
    run_for(exp, team, start=now - 2 * day + dt.timedelta(hours=1), end=now - 2 * day + dt.timedelta(hours=6))
    run_for(None, team, end=now - 2 * day + dt.timedelta(hours=7), status=RunStatus.FAILED)
    move(exp, Stage.DONE, now - 2 * day + dt.timedelta(hours=9))
    move(other, Stage.RUNNING, now - 2 * day + dt.timedelta(hours=10))
    with clock(now - day):
        iteration_close(iteration=it)
    return hyp, exp, other


def test_velocity_and_flow_charts_are_drawn(page, login, live_server, team, board, member):
    _recent_work(team, board, member)
    login(member)
    page.goto(f"{live_server.url}/teams/{team.slug}/reports/velocity/")
    for name in ("commitment", "output", "latency"):
        page.wait_for_selector(f'[data-figure="{name}"][data-drawn="true"] .main-svg')
    assert page.locator(".velocity-table tfoot").inner_text().lower().startswith("total")
    assert "1 / 2" in page.locator(".stats-row").inner_text()

    page.click("nav.tabs >> text=Flow")
    page.wait_for_url(f"{live_server.url}/teams/{team.slug}/reports/flow/")
    for name in ("cfd", "wip", "cycle", "aging", "throughput"):
        page.wait_for_selector(f'[data-figure="{name}"][data-drawn="true"] .main-svg')
    assert "Focal gamma 5" in page.locator("table.data").first.inner_text()

    # Changing the options reloads the report with them (and keeps them in the URL for sharing).
    page.select_option("select[name=group]", "week")
    page.click("text=Apply")
    page.wait_for_url("**group=week**")
    page.wait_for_selector('[data-figure="throughput"][data-drawn="true"]')


def test_plan_an_iteration_in_the_browser(page, login, live_server, team, board, member):
    hyp = make_card(board, CardKind.HYPOTHESIS, "Cosine schedule helps", timezone.now(), actor=member)
    make_card(board, CardKind.EXPERIMENT, "Cosine, 50 epochs", timezone.now(), actor=member, parent=hyp)
    login(member)
    page.goto(f"{live_server.url}/teams/{team.slug}/iterations/")
    page.fill("input[name=goal]" if page.locator("input[name=goal]").count() else "textarea[name=goal]", "Try cosine")
    page.check("input[name=start_now]")
    page.click("text=Create iteration")
    page.wait_for_selector("text=Commit selected")
    assert "Active" in page.locator("h1").inner_text()

    # The filter narrows the list; ticking and committing adds the card to the plan.
    page.fill("input[data-filter-rows]", "50 epochs")
    rows = page.locator("#candidate-rows tr:not([hidden])")
    assert rows.count() == 1
    rows.first.locator("input[type=checkbox]").check()
    page.click("text=Commit selected")
    page.wait_for_selector("text=Committed 1 card")
    assert IterationItem.objects.filter(card__title="Cosine, 50 epochs").exists()

    # Closing asks for confirmation first.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("text=Close now")
    page.wait_for_selector("text=Frozen when the iteration closed")
    assert "carried over" in page.locator("table.data").inner_text()
