"""Real headless Chromium: an open board picks up teammates' and runs' changes without a reload
(static/js/board.js polls the board_state endpoint; the tests shorten its interval)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from experiments.models import Card, Stage
from experiments.services.cards import card_create, card_move
from experiments.services.runs import run_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

POLL_MS = 250


def column(board, stage):
    return board.columns.get(stage=stage)


def cell(board, stage) -> str:
    return f'.cell[data-column-id="{column(board, stage).pk}"]'


def open_board(page, live_server, board, query: str = "") -> None:
    page.add_init_script(f"window.mlboardBoardPollMs = {POLL_MS};")
    page.goto(live_server.url + reverse("board", args=[board.pk]) + (f"?{query}" if query else ""))
    page.wait_for_selector("#board")
    # Marker that a full reload would wipe out.
    page.evaluate("window.__sameDocument = true")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__sameDocument === true")


def wait_announced(page, text: str) -> None:
    page.wait_for_function("text => document.getElementById('board-live').textContent.includes(text)", arg=text)


def test_teammates_move_appears_in_place_and_focus_stays(page, login, live_server, board, member, manager):
    mine = card_create(board=board, kind="hypothesis", title="Mine", actor=member)
    theirs = card_create(board=board, kind="hypothesis", title="Theirs", actor=manager)
    login(member)
    open_board(page, live_server, board, "lanes=none&kind=hypothesis")
    page.focus(f"#card-{mine.pk}")

    card_move(card=theirs, to_column=column(board, Stage.READY), actor=manager, expected_version=1)
    page.wait_for_selector(f"{cell(board, Stage.READY)} #card-{theirs.pk}")
    wait_announced(page, "Board updated")
    assert_not_reloaded(page)
    assert page.locator(f"{cell(board, Stage.BACKLOG)} #card-{theirs.pk}").count() == 0
    assert page.evaluate("document.activeElement.id") == f"card-{mine.pk}"
    assert page.is_hidden("#board-stale")
    # Filters from the URL still apply to the re-rendered board.
    assert "kind=hypothesis" in page.url
    card_create(board=board, kind="experiment", title="Hidden by filter", actor=manager, parent=theirs)
    page.wait_for_function(
        "stamp => document.getElementById('board-region').dataset.stamp !== stamp",
        arg=page.get_attribute("#board-region", "data-stamp"),
    )
    assert page.locator(".card", has_text="Hidden by filter").count() == 0
    assert page.locator(".card").count() == 2
    assert_not_reloaded(page)


def test_a_run_moving_a_card_shows_up(page, login, live_server, board, team, member):
    card = card_create(board=board, kind="hypothesis", title="Tenure", actor=member)
    login(member)
    open_board(page, live_server, board)
    run_create(team=team, user=member, tags={"mlboard.card": card.key})
    assert Card.objects.get(pk=card.pk).column.stage == Stage.RUNNING
    page.wait_for_selector(f"{cell(board, Stage.RUNNING)} #card-{card.pk}")
    assert page.inner_text(f'.col-head[data-column-id="{column(board, Stage.RUNNING).pk}"] .col-total') == "1"
    assert page.get_attribute(f"#card-{card.pk}", "data-version") == "2"
    assert_not_reloaded(page)


def test_quick_view_open_shows_a_notice_instead(page, login, live_server, board, member, manager):
    reading = card_create(board=board, kind="hypothesis", title="Reading", actor=member)
    moved = card_create(board=board, kind="hypothesis", title="Moved", actor=manager)
    login(member)
    open_board(page, live_server, board)
    page.click(f"#card-{reading.pk} .card-title")
    page.wait_for_selector("#quick-view .qv")

    card_move(card=moved, to_column=column(board, Stage.READY), actor=manager, expected_version=1)
    page.wait_for_selector("#board-stale", state="visible")
    assert "Board updated" in page.inner_text("#board-stale")
    page.wait_for_timeout(POLL_MS * 3)
    # The board under the open quick view was left alone.
    assert page.locator(f"{cell(board, Stage.BACKLOG)} #card-{moved.pk}").count() == 1
    assert page.is_visible("#quick-view .qv")

    page.click("#board-stale [data-action=refresh-board]")
    page.wait_for_selector(f"{cell(board, Stage.READY)} #card-{moved.pk}")
    page.wait_for_selector("#board-stale", state="hidden")
    assert_not_reloaded(page)


def test_keyboard_move_in_progress_is_not_disturbed(page, login, live_server, board, member, manager):
    mover = card_create(board=board, kind="hypothesis", title="Mover", actor=member)
    other = card_create(board=board, kind="hypothesis", title="Other", actor=manager)
    login(member)
    open_board(page, live_server, board)
    page.focus(f"#card-{mover.pk}")
    page.keyboard.press("Alt+ArrowRight")
    wait_announced(page, "CHURN-1 moved to Ready")
    # Our own move adopted the new stamp: no notice, no re-render.
    page.wait_for_timeout(POLL_MS * 4)
    assert page.is_hidden("#board-stale")

    card_move(card=other, to_column=column(board, Stage.RUNNING), actor=manager, expected_version=1)
    page.wait_for_selector("#board-stale", state="visible")
    assert page.locator(f"{cell(board, Stage.BACKLOG)} #card-{other.pk}").count() == 1
    assert page.evaluate("document.activeElement.id") == f"card-{mover.pk}"

    # Keep moving with the keyboard; then refresh from the notice and keep focus on the card.
    page.keyboard.press("Alt+ArrowRight")
    wait_announced(page, "CHURN-1 moved to Running")
    page.click("#board-stale [data-action=refresh-board]")
    page.wait_for_selector(f"{cell(board, Stage.RUNNING)} #card-{other.pk}")
    assert page.locator(f"{cell(board, Stage.RUNNING)} #card-{mover.pk}").count() == 1
    assert_not_reloaded(page)
    assert Card.objects.get(pk=mover.pk).column.stage == Stage.RUNNING


def test_hidden_tab_does_not_poll(page, login, live_server, board, member):
    login(member)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/state/" in r.url else None)
    open_board(page, live_server, board)
    page.wait_for_timeout(POLL_MS * 3)
    assert requests, "a visible board polls its state"
    page.evaluate(
        "Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'));"
    )
    page.wait_for_timeout(POLL_MS)
    count = len(requests)
    page.wait_for_timeout(POLL_MS * 4)
    assert len(requests) == count
