"""Real headless Chromium: lazy Plotly charts on the card page, linking a run, comparing runs."""

from __future__ import annotations

import datetime as dt
import math
import os

import pytest
from django.utils import timezone

from experiments.models import CardRun, RunStatus
from experiments.services.cards import card_create
from experiments.services.runs import MetricPoint, card_link_run, run_create, run_log_batch

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SHOTS = os.environ.get("MLBOARD_SCREENSHOTS")  # a folder: save screenshots there for a visual check


def _shot(page, name: str) -> None:
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def _run(team, user, name, *, steps, auc, lr, seed):
    start = timezone.now() - dt.timedelta(hours=3)
    run = run_create(
        team=team, user=user, name=name, status=RunStatus.FINISHED, start_time=start,
        end_time=start + dt.timedelta(minutes=47), params={"lr": lr, "depth": "6", "seed": seed},
        code_version="9f3c2ab71e", tags={"mlboard.data_version": "customers-2026-11"},
    )
    points = []
    for step in range(steps):
        progress = 1 - math.exp(-4 * step / steps)
        value = 0.55 + (auc - 0.55) * progress + 0.004 * math.sin(step * 0.7 + seed)
        loss = 0.95 - 0.6 * progress + 0.01 * math.cos(step * 0.5 + seed)
        ts = 1_700_000_000_000 + step
        points.append(MetricPoint("val_auc", value, step, ts))
        points.append(MetricPoint("train_loss", math.nan if step == steps // 2 else loss, step, ts))
    run_log_batch(run=run, metrics=points)
    return run


@pytest.fixture
def card_with_runs(board, member, team):
    hypothesis = card_create(
        board=board, kind="hypothesis", title="Tenure buckets lift AUC", actor=member,
        statement="Bucketing tenure raises validation AUC by at least 0.02.",
        metric_key="val_auc", direction="maximize", threshold=0.85, min_runs=2,
    )
    experiment = card_create(
        board=board, kind="experiment", title="GBM + tenure buckets, 3 seeds", actor=member, parent=hypothesis,
        plan="Train LightGBM with tenure buckets on 3 seeds; compare to last week's baseline.",
    )
    runs = [
        _run(team, member, f"gbm-tenure-s{seed}", steps=steps, auc=auc, lr=lr, seed=seed)
        for seed, steps, auc, lr in ((1, 4000, 0.87, "0.05"), (2, 300, 0.865, "0.05"), (3, 300, 0.872, "0.1"))
    ]
    for run in runs:
        card_link_run(card=experiment, run=run, actor=member)
    spare = _run(team, member, "gbm-tenure-extra", steps=50, auc=0.86, lr="0.02", seed=9)
    return hypothesis, experiment, runs, spare


def test_card_page_renders_lazy_plotly_charts(page, login, live_server, member, card_with_runs):
    _hypothesis, experiment, runs, _spare = card_with_runs
    chart_requests: list[str] = []
    page.on("request", lambda request: chart_requests.append(request.url) if "metrics.json" in request.url else None)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    login(member)
    page.set_viewport_size({"width": 1400, "height": 500})  # charts start well below the fold
    page.goto(f"{live_server.url}/cards/{experiment.pk}/")
    page.wait_for_load_state("networkidle")
    assert page.locator("h1").inner_text() == "GBM + tenure buckets, 3 seeds"
    assert page.locator("table.linked-runs tbody tr").count() == 3
    # Lazy: nothing fetched, and plotly.js not even loaded, until a chart scrolls into view.
    assert chart_requests == []
    assert page.evaluate("typeof window.Plotly") == "undefined"

    chart = page.locator(".chart[data-chart-src*='val_auc']")
    chart.scroll_into_view_if_needed()
    page.wait_for_selector(".chart[data-chart-src*='val_auc'].js-plotly-plot .scatterlayer .trace")
    traces = chart.evaluate("el => el.data.map(t => ({name: t.name, n: t.x.length}))")
    assert sorted(t["name"] for t in traces) == sorted(r.name for r in runs)
    longest = next(t for t in traces if t["name"] == "gbm-tenure-s1")
    assert longest["n"] <= 1000  # 4000 stored points, downsampled on the server
    # The caption counts what was drawn: the traces' points (the two short series whole) of all stored.
    drawn = sum(t["n"] for t in traces)
    caption = page.locator(".chart-card", has=chart).locator("[data-chart-meta]").inner_text()
    assert f"{drawn:,} of 4,600 points" in caption
    assert 600 < drawn < 1_600
    assert any("val_auc" in url for url in chart_requests)

    loss = page.locator(".chart[data-chart-src*='train_loss']")
    loss.scroll_into_view_if_needed()
    page.wait_for_selector(".chart[data-chart-src*='train_loss'].js-plotly-plot .scatterlayer .trace")
    # The NaN point arrives as a gap (null), never as a number.
    assert loss.evaluate("el => el.data.some(t => t.y.some(v => v === null))")
    # Smoothing redraws the downsampled points client-side (gaps stay gaps); log scale toggles.
    before = chart.evaluate("el => el.data[0].y.slice(0, 50)")
    page.locator("[data-smoothing]").fill("0.9")
    page.wait_for_function(
        "(b) => { const el = document.querySelector(\".chart[data-chart-src*='val_auc']\");"
        " return JSON.stringify(el.data[0].y.slice(0, 50)) !== JSON.stringify(b); }",
        arg=before,
    )
    assert loss.evaluate("el => el.data.some(t => t.y.some(v => v === null))")
    page.locator(".chart-card", has=chart).locator("[data-log-toggle]").click()
    assert chart.evaluate("el => el.layout.yaxis.type") == "log"
    assert errors == []
    page.set_viewport_size({"width": 1400, "height": 900})
    page.locator("#charts-h, .charts-title").first.scroll_into_view_if_needed()
    _shot(page, "card_page")


def test_link_a_run_by_hand_and_compare(page, login, live_server, member, card_with_runs, team):
    _hypothesis, experiment, runs, spare = card_with_runs
    login(member)
    page.goto(f"{live_server.url}/cards/{experiment.pk}/")
    page.click("summary:has-text('Link a run')")
    page.fill("#run-search", "extra")
    result = page.locator("#run-search-results li", has_text="gbm-tenure-extra")
    result.wait_for()
    _shot(page, "link_search")
    result.locator("button", has_text="Link").first.click()
    page.wait_for_selector("#runs .alert.ok")
    assert "Linked gbm-tenure-extra." in page.locator("#runs .alert.ok").inner_text()
    assert page.locator("table.linked-runs tbody tr").count() == 4
    assert CardRun.objects.filter(card=experiment, run=spare, linked_by=member).exists()
    # Charts in the swapped-in section load lazily too.
    page.locator(".chart[data-chart-src*='val_auc']").scroll_into_view_if_needed()
    page.wait_for_selector(".chart[data-chart-src*='val_auc'].js-plotly-plot .scatterlayer .trace")

    # Select two runs and compare them.
    button = page.locator("[data-compare-button]")
    assert button.is_disabled()
    page.check(f"table.linked-runs input[value='{runs[0].pk}']")
    page.check(f"table.linked-runs input[value='{runs[2].pk}']")
    assert button.is_enabled()
    button.click()
    page.wait_for_url("**/runs/compare/**")
    page.wait_for_selector("[data-chart-inline].js-plotly-plot .parcoords")
    assert page.locator("tr.diff th", has_text="lr").count() == 1
    page.check("[data-only-diff]")
    assert not page.locator("tr.same", has_text="depth").is_visible()
    _shot(page, "compare")


def test_runs_list_filters_with_htmx(page, login, live_server, member, card_with_runs, team):
    login(member)
    page.goto(f"{live_server.url}/teams/{team.slug}/runs/")
    assert page.locator("table.runs-table tbody tr").count() == 4
    _shot(page, "runs_list")
    page.fill("#f-q", "s2")
    page.wait_for_function("() => document.querySelectorAll('table.runs-table tbody tr').length === 1")
    assert "q=s2" in page.url  # filters are kept in the address for sharing
    page.fill("#f-q", "")
    page.wait_for_function("() => document.querySelectorAll('table.runs-table tbody tr').length === 4")
    page.click("th a.sort:has-text('val_auc')")
    # Highest final val_auc first.
    page.wait_for_function(
        "document.querySelector('table.runs-table tbody td.run-name a').textContent === 'gbm-tenure-s3'"
    )
    assert "sort=-m%3Aval_auc" in page.url
    page.locator("table.runs-table tbody tr").first.locator("td.run-name a").click()
    page.wait_for_selector(".chart.js-plotly-plot .scatterlayer .trace")
    assert "9f3c2ab71e" in page.content()
    _shot(page, "run_detail")


def test_hypothesis_page_confirms_the_proposed_verdict(page, login, live_server, member, card_with_runs):
    hypothesis, _experiment, _runs, _spare = card_with_runs
    login(member)
    page.goto(f"{live_server.url}/cards/{hypothesis.pk}/")
    panel = page.locator("#verdict")
    assert "Proposed verdict" in panel.inner_text()
    assert "runs used" in panel.inner_text().lower()
    # Runs linked to the child experiment are the hypothesis's evidence and appear here too.
    assert page.locator("table.linked-runs tbody tr").count() == 3
    _shot(page, "hypothesis_page")
    panel.locator("button", has_text="Confirm").click()
    page.wait_for_selector(".toast-success")
    assert "Verdict confirmed" in page.locator(".toast-success").inner_text()
    hypothesis.refresh_from_db()
    assert hypothesis.verdict and hypothesis.column.stage == "done"
    assert "confirmed verdict" in page.locator(".history-panel").inner_text()
