"""Real headless Chromium on the board: mouse drag and drop (HTML5 DnD in static/js/board.js),
keyboard moves, the conflict message on stale versions, the quick view and live filters."""

from __future__ import annotations

import pytest
from django.urls import reverse

from experiments.models import Card, CardEvent, EventKind, Stage
from experiments.services.cards import card_create, card_move

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def column(board, stage):
    return board.columns.get(stage=stage)


def cell(board, stage) -> str:
    return f'.cell[data-column-id="{column(board, stage).pk}"]'


def open_board(page, live_server, board, query: str = "") -> None:
    page.goto(live_server.url + reverse("board", args=[board.pk]) + (f"?{query}" if query else ""))
    page.wait_for_selector("#board")


def wait_announced(page, text: str) -> None:
    page.wait_for_function(
        "text => document.getElementById('board-live').textContent.includes(text)", arg=text
    )


def test_drag_card_to_another_column_persists(page, login, live_server, board, member):
    card = card_create(board=board, kind="hypothesis", title="Tenure lifts AUC", actor=member)
    login(member)
    open_board(page, live_server, board)
    assert page.locator(f"{cell(board, Stage.BACKLOG)} #card-{card.pk}").count() == 1

    page.drag_and_drop(f"#card-{card.pk}", cell(board, Stage.READY))
    wait_announced(page, "CHURN-1 moved to Ready")
    assert page.get_attribute(f"#card-{card.pk}", "data-version") == "2"

    page.reload()
    page.wait_for_selector("#board")
    assert page.locator(f"{cell(board, Stage.READY)} #card-{card.pk}").count() == 1
    assert page.locator(f"{cell(board, Stage.BACKLOG)} .card").count() == 0
    card.refresh_from_db()
    assert card.column.stage == Stage.READY and card.version == 2
    assert CardEvent.objects.get(card=card, kind=EventKind.MOVED).actor == member


def test_mouse_drag_reorders_within_a_column_and_updates_wip(page, login, live_server, board, member):
    running = column(board, Stage.RUNNING)  # WIP limit 4
    cards = [card_create(board=board, kind="hypothesis", title=f"Run {i}", actor=member, column=running)
             for i in range(4)]
    mover = card_create(board=board, kind="hypothesis", title="Mover", actor=member)
    login(member)
    open_board(page, live_server, board)
    head = f'.col-head[data-column-id="{running.pk}"]'
    assert "over-limit" not in page.get_attribute(head, "class")

    # Press on the card, move in small steps and release over the gap between Run 0 and Run 1.
    source = page.locator(f"#card-{mover.pk}").bounding_box()
    target = page.locator(f"#card-{cards[1].pk}").bounding_box()
    page.mouse.move(source["x"] + 30, source["y"] + 20)
    page.mouse.down()
    page.mouse.move(source["x"] + 60, source["y"] + 40, steps=5)
    page.mouse.move(target["x"] + 40, target["y"] + 8, steps=12)
    page.mouse.up()
    wait_announced(page, "CHURN-5 moved to Running, position 2")

    assert "over-limit" in page.get_attribute(head, "class")
    assert page.is_visible(f"{head} .wip-flag")
    assert "over the limit by 1" in page.get_attribute(head, "aria-label")
    assert page.inner_text(f"{head} .col-total") == "5"
    order = list(Card.objects.filter(column=running).order_by("position").values_list("title", flat=True))
    assert order == ["Run 0", "Mover", "Run 1", "Run 2", "Run 3"]
    page.reload()
    page.wait_for_selector("#board")
    ids = page.eval_on_selector_all(f"{cell(board, Stage.RUNNING)} .card", "els => els.map(e => e.dataset.key)")
    assert ids == ["CHURN-1", "CHURN-5", "CHURN-2", "CHURN-3", "CHURN-4"]


def test_keyboard_move_between_columns(page, login, live_server, board, member):
    card = card_create(board=board, kind="hypothesis", title="Keyboard card", actor=member)
    login(member)
    open_board(page, live_server, board)
    page.focus(f"#card-{card.pk}")

    page.keyboard.press("Shift+ArrowRight")
    wait_announced(page, "CHURN-1 moved to Ready")
    assert page.evaluate("document.activeElement.id") == f"card-{card.pk}"
    page.keyboard.press("]")
    wait_announced(page, "CHURN-1 moved to Running")
    page.keyboard.press("Alt+ArrowRight")
    wait_announced(page, "CHURN-1 moved to Analyzing")
    page.keyboard.press("Alt+ArrowLeft")  # must not trigger the browser's "back"
    wait_announced(page, "CHURN-1 moved to Running")
    assert page.url.startswith(live_server.url + reverse("board", args=[board.pk]))
    assert page.locator(f"{cell(board, Stage.RUNNING)} #card-{card.pk}").count() == 1

    page.reload()
    page.wait_for_selector("#board")
    assert page.locator(f"{cell(board, Stage.RUNNING)} #card-{card.pk}").count() == 1
    card.refresh_from_db()
    assert card.column.stage == Stage.RUNNING and card.version == 5
    moves = CardEvent.objects.filter(card=card, kind=EventKind.MOVED).order_by("id")
    assert [e.to_stage for e in moves] == [Stage.READY, Stage.RUNNING, Stage.ANALYZING, Stage.RUNNING]

    # At the last column there is nowhere to go: said, not sent.
    page.focus(f"#card-{card.pk}")
    page.keyboard.press("]")
    wait_announced(page, "CHURN-1 moved to Analyzing")
    page.keyboard.press("]")
    wait_announced(page, "CHURN-1 moved to Done")
    page.keyboard.press("]")
    wait_announced(page, "already in the last column")
    card.refresh_from_db()
    assert card.column.stage == Stage.DONE and card.version == 7


def test_stale_drag_shows_conflict_and_puts_card_back(page, login, live_server, board, member, manager):
    card = card_create(board=board, kind="hypothesis", title="Contested", actor=member)
    login(member)
    open_board(page, live_server, board)
    # Someone else moves the card after this page loaded.
    card_move(card=card, to_column=column(board, Stage.RUNNING), actor=manager, expected_version=1)

    page.drag_and_drop(f"#card-{card.pk}", cell(board, Stage.READY))
    alert = page.locator("#board-alert")
    alert.wait_for(state="visible")
    text = alert.inner_text()
    assert "CHURN-1 was changed by maya since you loaded it" in text
    assert "Reload" in text
    assert page.locator(f"{cell(board, Stage.BACKLOG)} #card-{card.pk}").count() == 1, "card is put back"
    assert page.locator(f"{cell(board, Stage.READY)} #card-{card.pk}").count() == 0
    card.refresh_from_db()
    assert card.column.stage == Stage.RUNNING and card.version == 2, "no silent overwrite"

    page.click("#board-alert [data-action=reload]")
    page.wait_for_selector(f"{cell(board, Stage.RUNNING)} #card-{card.pk}")


def test_stale_keyboard_move_shows_conflict(page, login, live_server, board, member, manager):
    card = card_create(board=board, kind="hypothesis", title="Contested", actor=member)
    login(member)
    open_board(page, live_server, board)
    card_move(card=card, to_column=column(board, Stage.DONE), actor=manager, expected_version=1)
    page.focus(f"#card-{card.pk}")
    page.keyboard.press("Shift+ArrowRight")
    page.locator("#board-alert").wait_for(state="visible")
    assert "was changed by maya since you loaded it" in page.inner_text("#board-alert")
    wait_announced(page, "was changed by maya")
    assert page.locator(f"{cell(board, Stage.BACKLOG)} #card-{card.pk}").count() == 1


def test_viewer_cannot_drag_or_move(page, login, live_server, board, member, viewer):
    card = card_create(board=board, kind="hypothesis", title="Look only", actor=member)
    login(viewer)
    open_board(page, live_server, board)
    assert page.get_attribute(f"#card-{card.pk}", "draggable") is None
    page.focus(f"#card-{card.pk}")
    page.keyboard.press("]")
    wait_announced(page, "You can view this board but not move cards")
    page.drag_and_drop(f"#card-{card.pk}", cell(board, Stage.READY))
    page.wait_for_timeout(300)
    card.refresh_from_db()
    assert card.column.stage == Stage.BACKLOG and card.version == 1


def test_quick_view_and_move_control(page, login, live_server, board, member):
    card = card_create(board=board, kind="hypothesis", title="Quick card", actor=member, statement="Tenure helps")
    login(member)
    open_board(page, live_server, board)
    page.focus(f"#card-{card.pk}")
    page.keyboard.press("Enter")
    panel = page.locator("#quick-view")
    panel.wait_for(state="visible")
    assert "Quick card" in panel.inner_text() and "Tenure helps" in panel.inner_text()
    assert panel.locator("a", has_text="Open full card").get_attribute("href") == reverse("card_detail", args=[card.pk])

    panel.locator("select[name=to_column]").select_option(label="Done")
    panel.locator("button", has_text="Move").click()
    wait_announced(page, "CHURN-1 moved to Done")
    page.wait_for_function("() => document.querySelector('#quick-view .ev-to') !== null")
    assert "Backlog" in panel.locator(".ev-moved").inner_text() and "Done" in panel.locator(".ev-moved").inner_text()
    assert page.locator(f"{cell(board, Stage.DONE)} #card-{card.pk}").count() == 1
    page.keyboard.press("Escape")
    panel.wait_for(state="hidden")
    card.refresh_from_db()
    assert card.column.stage == Stage.DONE and card.completed_at is not None


def test_filters_update_the_board_and_the_url(page, login, live_server, board, member):
    card_create(board=board, kind="hypothesis", title="Tenure lifts AUC", actor=member)
    card_create(board=board, kind="hypothesis", title="Class weights", actor=member, tags=["loss"])
    login(member)
    open_board(page, live_server, board)
    page.fill("#board-q", "tenure")
    page.wait_for_function("() => document.querySelectorAll('#board .card').length === 1")
    assert page.url.endswith(reverse("board", args=[board.pk]) + "?q=tenure"), "empty filters stay out of the URL"
    page.fill("#board-q", "")
    page.wait_for_function("() => document.querySelectorAll('#board .card').length === 2")
    page.select_option("select[name=tag]", "loss")
    page.wait_for_function("() => document.querySelectorAll('#board .card').length === 1")
    assert "tag=loss" in page.url
    page.click("text=By owner")
    page.wait_for_selector(".lane-head")
    assert "lanes=owner" in page.url
    # The shared URL shows the same board.
    page.goto(page.url)
    page.wait_for_selector("#board")
    assert page.locator("#board .card").count() == 1 and page.locator(".lane-head").count() == 1


def test_show_more_then_drag_a_card_from_the_loaded_page(page, login, live_server, board, member, monkeypatch):
    monkeypatch.setattr("experiments.selectors.board.CELL_PAGE", 5)
    cards = [card_create(board=board, kind="hypothesis", title=f"Idea {i}", actor=member) for i in range(8)]
    login(member)
    open_board(page, live_server, board)
    backlog = cell(board, Stage.BACKLOG)
    assert page.locator(f"{backlog} > .card").count() == 5
    page.click(f"{backlog} .cell-more")
    page.wait_for_selector(f"#card-{cards[7].pk}")
    assert page.locator(f"{backlog} > .card").count() == 8 and page.locator(f"{backlog} .cell-more").count() == 0

    page.drag_and_drop(f"#card-{cards[6].pk}", cell(board, Stage.READY))
    wait_announced(page, f"{cards[6].key} moved to Ready")
    assert Card.objects.get(pk=cards[6].pk).column.stage == Stage.READY
    # The column heads keep exact totals: 7 left in the backlog, 1 in Ready.
    assert page.inner_text(f'.col-head[data-column-id="{column(board, Stage.BACKLOG).pk}"] .col-total') == "7"


def test_show_more_lanes_then_move_a_card_in_a_loaded_lane(page, login, live_server, board, member, monkeypatch):
    monkeypatch.setattr("experiments.selectors.board.LANE_PAGE", 2)
    leads = [card_create(board=board, kind="hypothesis", title=f"Lead {i}", actor=member) for i in range(3)]
    experiment = card_create(board=board, kind="experiment", title="Late lane", actor=member, parent=leads[2])
    login(member)
    open_board(page, live_server, board, "lanes=hypothesis")
    assert page.locator(".lane-head").count() == 2 and page.locator(f"#card-{experiment.pk}").count() == 0
    page.click(".lanes-more button")
    page.wait_for_selector(f"#card-{experiment.pk}")
    assert page.locator(".lane-head").count() == 3 and page.locator(".lanes-more").count() == 0

    # The loaded lane behaves like the first ones: drag within it, then a keyboard move.
    lane_ready = f'.cell[data-lane="h{leads[2].pk}"][data-column-id="{column(board, Stage.READY).pk}"]'
    page.drag_and_drop(f"#card-{experiment.pk}", lane_ready)
    wait_announced(page, f"{experiment.key} moved to Ready")
    page.focus(f"#card-{experiment.pk}")
    page.keyboard.press("]")
    wait_announced(page, f"{experiment.key} moved to Running")
    assert Card.objects.get(pk=experiment.pk).column.stage == Stage.RUNNING
    assert page.inner_text(f'.col-head[data-column-id="{column(board, Stage.RUNNING).pk}"] .col-total') == "1"
