"""Standup page in real headless Chromium: decisions in place, no full reload, lazy charts."""

from __future__ import annotations

import os

import pytest

from experiments.models import Card, RunStatus, Stage, VerdictProposal, VerdictStatus

from .test_standup import add_run, experiment, hypothesis, make_proposal, recent_window  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _night(team, board, member):
    hyp = hypothesis(board, "Tenure features lift AUC", owner=member, threshold=0.8, min_delta=None, min_runs=3)
    exp = experiment(hyp, "Add tenure buckets", owner=member, baseline_value=0.8)
    for seed, value in enumerate([0.83, 0.85, 0.86, 0.84]):
        add_run(team, exp, value=value, seed=seed, name=f"tenure-seed-{seed}")
    add_run(team, hyp, status=RunStatus.FAILED, name="tenure-oom")
    add_run(team, None, name="scratch")
    # With the verdict service in place the runs above already produced a proposal; otherwise add one.
    proposal = VerdictProposal.objects.filter(card=hyp, status=VerdictStatus.PROPOSED).first() or make_proposal(hyp)
    return hyp, exp, proposal


def test_decisions_from_the_standup_page_without_reload(page, login, live_server, recent_window, board, member):  # noqa: F811
    hyp, exp, proposal = _night(recent_window, board, member)
    login(member)
    page.goto(f"{live_server.url}/teams/{recent_window.slug}/standup/")
    page.evaluate("window.__standupMarker = 'still here'")

    # The chart is fetched lazily and drawn by Plotly.
    spark = page.locator(f'.su-card[data-card-id="{exp.pk}"] .su-spark')
    spark.scroll_into_view_if_needed()
    page.wait_for_selector(f'.su-card[data-card-id="{exp.pk}"] .su-spark.is-loaded .main-svg')

    # Confirm the proposed verdict in place.
    box = page.locator(f"#proposal-{proposal.pk}")
    box.get_by_role("button", name=f"Confirm {proposal.get_proposed_display().lower()}").click()
    page.wait_for_selector(f"#proposal-{proposal.pk}.is-decided")
    assert "Confirmed" in box.inner_text()
    # The experiment moved on with its hypothesis; its row follows without a reload.
    exp_row = page.locator(f'#finished .su-card[data-card-id="{exp.pk}"]')
    page.wait_for_function(
        "id => document.querySelector(`#finished .su-card[data-card-id='${id}'] .js-column`).textContent === 'Done'",
        arg=exp.pk,
    )
    assert exp_row.locator(".js-column").inner_text() == "Done"

    # Add a learning note to the experiment from its row.
    row = page.locator(f'#finished .su-card[data-card-id="{exp.pk}"]')
    row.get_by_text("Add a learning note").click()
    row.get_by_label(f"Learning note for {exp.key}").fill("Buckets beat raw tenure on every seed.")
    row.get_by_role("button", name="Add note").click()
    page.wait_for_selector(f'#finished .su-card[data-card-id="{exp.pk}"] .su-note-last.is-new')
    assert "Buckets beat raw tenure on every seed." in row.locator(".su-note-last").inner_text()

    # Move the experiment; its other rows and version stay in sync, so a second move is no conflict.
    row.get_by_label(f"Move {exp.key} to column").select_option(label="Running")
    row.get_by_role("button", name="Move").click()
    page.wait_for_selector(f'#finished .su-card[data-card-id="{exp.pk}"] .su-msg.ok:has-text("Moved to Running")')
    assert row.locator(".js-column").inner_text() == "Running"
    row.get_by_label(f"Move {exp.key} to column").select_option(label="Analyzing")
    row.get_by_role("button", name="Move").click()
    page.wait_for_selector(f'#finished .su-card[data-card-id="{exp.pk}"] .su-msg.ok:has-text("Moved to Analyzing")')

    assert page.evaluate("window.__standupMarker") == "still here"  # no full page load happened
    proposal.refresh_from_db()
    exp.refresh_from_db()
    assert proposal.status == VerdictStatus.CONFIRMED
    assert Card.objects.get(pk=hyp.pk).column.stage == Stage.DONE
    assert exp.column.stage == Stage.ANALYZING and "Buckets beat raw tenure" in exp.learnings
    if os.environ.get("STANDUP_SCREENSHOT"):
        page.screenshot(path=os.environ["STANDUP_SCREENSHOT"], full_page=True)


def test_stale_move_shows_the_conflict(page, login, live_server, recent_window, board, member):  # noqa: F811
    from experiments.services.cards import card_move

    _, exp, _ = _night(recent_window, board, member)
    login(member)
    page.goto(f"{live_server.url}/teams/{recent_window.slug}/standup/")
    # Someone else moves the card after the page was loaded.
    card_move(card=exp, to_column=board.columns.get(stage=Stage.READY), actor=None, expected_version=None)
    row = page.locator(f'#finished .su-card[data-card-id="{exp.pk}"]')
    row.get_by_label(f"Move {exp.key} to column").select_option(label="Done")
    row.get_by_role("button", name="Move").click()
    alert = page.wait_for_selector(f'#finished .su-card[data-card-id="{exp.pk}"] .su-msg.error')
    assert "was changed" in alert.inner_text() and "your change was not applied" in alert.inner_text()
    assert Card.objects.get(pk=exp.pk).column.stage == Stage.READY
