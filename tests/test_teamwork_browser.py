"""Teamwork in real headless Chromium: a mention becomes a notification, search, the command palette,
the connect page receiving a first run from the real mlflow client, and dark mode."""

from __future__ import annotations

import os
import re

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import mlflow
import pytest
from django.urls import reverse

from experiments.models import Notification, NotificationKind, Run
from experiments.services.cards import card_create
from experiments.services.comments import comment_create

from .conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def login_as(page, live_server, user) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def test_mention_with_autocomplete_notifies_the_teammate(browser, page, login, live_server, board, member, manager):
    card = card_create(board=board, kind="hypothesis", title="Tenure lifts AUC", actor=member)
    login(member)
    page.goto(f"{live_server.url}{reverse('card_detail', args=[card.pk])}")
    box = page.locator("#comment-body")
    box.click()
    box.type("Can you check this @ma")
    option = page.locator(".mention-option", has_text="@maya")
    option.wait_for()
    box.press("Enter")  # picks the highlighted teammate
    assert box.input_value() == "Can you check this @maya "
    box.type("please?")
    page.click(".comment-form button[type=submit]")
    page.locator(".comment .mention", has_text="@maya").wait_for()
    assert Notification.objects.filter(user=manager, kind=NotificationKind.MENTION).count() == 1

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    other = context.new_page()
    other.set_default_timeout(10_000)
    try:
        login_as(other, live_server, manager)
        other.locator("#bell .bell-count", has_text="1").wait_for()
        other.click("#bell")
        other.wait_for_url(re.compile(r"/notifications/$"))
        item = other.locator(".notification.unread", has_text="mentioned you on")
        item.wait_for()
        item.locator("a").click()
        other.wait_for_url(re.compile(rf"/cards/{card.pk}/#comment-\d+$"))
        assert Notification.objects.get(user=manager).read_at is not None
    finally:
        context.close()


def test_slash_focuses_search_and_results_are_grouped(page, login, live_server, board, member):
    card = card_create(board=board, kind="hypothesis", title="Calibrate churn scores", actor=member,
                       statement="Isotonic calibration improves Brier.")
    comment_create(author=member, body="Isotonic is overfitting on fold 2", card=card)
    Run.objects.create(team=board.team, external_id="x1", name="isotonic-sweep")
    login(member)
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "global-search"
    page.keyboard.type("isotonic")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/search/\?q=isotonic"))
    assert page.locator("#sr-cards").inner_text().startswith("Cards")
    assert page.locator('.search-hit[data-kind="card"]').count() == 1
    assert page.locator('.search-hit[data-kind="run"]', has_text="isotonic-sweep").count() == 1
    assert page.locator('.search-hit[data-kind="comment"]').count() == 1


def test_command_palette_and_shortcut_help(page, login, live_server, board, member):
    login(member)
    page.goto(f"{live_server.url}{reverse('board', args=[board.pk])}")
    page.keyboard.press("Control+k")
    palette = page.locator("#palette")
    palette.wait_for(state="visible")
    page.keyboard.type("leader")
    assert page.locator(".palette-item.is-selected").inner_text() == "Leaderboard"
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/leaderboard/$"))
    page.keyboard.press("?")
    page.locator("#shortcuts").wait_for(state="visible")
    assert "Command palette" in page.locator("#shortcuts").inner_text()
    page.keyboard.press("Escape")
    page.locator("#shortcuts").wait_for(state="hidden")
    # Free text falls through to search.
    page.keyboard.press("Control+k")
    page.keyboard.type("zzz-nothing")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/search/\?q=zzz-nothing"))


def test_connect_page_sees_the_first_run_from_the_mlflow_client(page, login, live_server, team, member, monkeypatch):
    login(member)
    page.goto(f"{live_server.url}{reverse('team_connect', args=[team.slug])}")
    page.click("text=Create a token for this script")
    secret = page.locator("[data-token]").inner_text().strip()
    assert secret.startswith("mlb_") and secret in page.locator("[data-train-py]").inner_text()
    page.locator(".waiting").wait_for()

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(f"{live_server.url}/mlflow")
    try:
        mlflow.set_experiment(f"{team.slug}-first-steps")
        with mlflow.start_run(run_name="hello-mlboard"):
            mlflow.log_param("lr", 0.01)
            mlflow.log_metric("loss", 0.5, step=0)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.tracking.fluent._active_experiment_id = None
    received = page.locator("[data-received]")
    received.wait_for(timeout=15_000)
    assert "hello-mlboard" in received.inner_text()


def test_dark_mode_follows_the_system_setting(browser, live_server, member, board, tmp_path):
    context = browser.new_context(viewport={"width": 1200, "height": 800}, color_scheme="dark")
    page = context.new_page()
    try:
        login_as(page, live_server, member)
        page.goto(f"{live_server.url}{reverse('board', args=[board.pk])}")
        shot = tmp_path / "dark.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 0
        rgb = page.evaluate("getComputedStyle(document.body).backgroundColor")
        r, g, b = (int(x) for x in re.findall(r"\d+", rgb)[:3])
        assert (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255 < 0.2, rgb
        ink = page.evaluate("getComputedStyle(document.body).color")
        assert sum(int(x) for x in re.findall(r"\d+", ink)[:3]) > 600, ink  # light text on dark
        page.emulate_media(color_scheme="light")
        light = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert sum(int(x) for x in re.findall(r"\d+", light)[:3]) > 700, light
    finally:
        context.close()


def test_charts_say_no_finite_values_and_all_render_for_print(page, login, live_server, board, member):
    import math

    from experiments.services.runs import MetricPoint, card_link_run, run_create, run_log_metrics

    card = card_create(board=board, kind="hypothesis", title="Charts", actor=member)
    run = run_create(team=board.team, name="r1")
    points = [MetricPoint("all_nan", math.nan, step=i, timestamp=i) for i in range(3)]
    for k in range(4):
        points += [MetricPoint(f"m{k}", float(i), step=i, timestamp=i) for i in range(3)]
    run_log_metrics(run=run, points=points)
    card_link_run(card=card, run=run, actor=None)
    page.set_viewport_size({"width": 900, "height": 500})
    login(member)
    page.goto(f"{live_server.url}{reverse('card_detail', args=[card.pk])}")
    charts = page.locator("[data-chart-src]")
    assert charts.count() == 5
    # Below the fold the lazy charts have not loaded yet; printing must not show "Loading chart…".
    assert page.locator('[data-chart-src]:not([data-chart-state])').count() > 0
    page.emulate_media(media="print")
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-chart-src]')]"
        ".every(el => ['ready', 'empty'].includes(el.getAttribute('data-chart-state')))",
        timeout=40_000,
    )
    nan_chart = page.locator(".chart-card", has_text="all_nan")
    assert "No finite values" in nan_chart.inner_text()
    assert page.locator(".chart-placeholder").count() == 0
