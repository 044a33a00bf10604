"""A right-to-left override (U+202E) in a title reorders only the title, in real Chromium: the text
after it on the same line keeps its order on the board, the card, the standup and the runs pages."""

from __future__ import annotations

import pytest

from experiments.models import RunStatus
from experiments.services.cards import card_create
from experiments.services.purge import card_purge
from experiments.services.runs import card_link_run, run_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
RLO = "\u202e"

# For every element holding the evil text: it must be isolated, and the next sibling's text must read
# left to right (its first character drawn left of its last).
CHECK = """(needle) => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.textContent.includes(needle)) continue;
    const el = node.parentElement;
    const isolated = el.tagName === "BDI" || getComputedStyle(el).unicodeBidi === "isolate"
      || getComputedStyle(el).display !== "inline";
    out.push({tag: el.tagName, cls: el.className, isolated: isolated});
  }
  return out;
}"""

ORDER = """(selector) => {
  const el = document.querySelector(selector);
  const text = el.firstChild;
  const range = document.createRange();
  range.setStart(text, 0); range.setEnd(text, 1);
  const first = range.getBoundingClientRect().left;
  range.setStart(text, text.length - 1); range.setEnd(text, text.length);
  return first < range.getBoundingClientRect().left;
}"""


def test_rtl_override_in_titles_is_isolated(page, live_server, login, team, board, member):
    title = f"{RLO}evil title"
    hyp = card_create(board=board, kind="hypothesis", title=title, actor=member)
    exp = card_create(board=board, kind="experiment", title=f"{RLO}child", actor=member, parent=hyp)
    run = run_create(team=team, user=member, name=f"{RLO}run name", status=RunStatus.FINISHED)
    card_link_run(card=exp, run=run, actor=member)
    login(member)
    pages = [f"/boards/{board.pk}/", f"/boards/{board.pk}/?lanes=hypothesis", f"/cards/{hyp.pk}/",
             f"/cards/{exp.pk}/", f"/teams/{team.slug}/runs/", f"/runs/{run.pk}/", f"/teams/{team.slug}/standup/"]
    found = 0
    for path in pages:
        page.goto(f"{live_server.url}{path}")
        holders = page.evaluate(CHECK, RLO)
        found += len(holders)
        assert all(h["isolated"] for h in holders), (path, [h for h in holders if not h["isolated"]])
    assert found >= len(pages)


def test_text_after_an_isolated_title_keeps_its_order(page, live_server, login, team, board, member):
    from django.utils import timezone

    from experiments.services.iterations import iteration_close, iteration_commit_card, iteration_create

    hyp = card_create(board=board, kind="hypothesis", title=f"{RLO}evil", actor=member)
    iteration = iteration_create(team=team, start=timezone.now() - timezone.timedelta(days=1))
    iteration_commit_card(iteration=iteration, card=hyp, actor=member)
    iteration_close(iteration=iteration)
    card_purge(card=hyp, actor=member)
    login(member)
    page.goto(f"{live_server.url}/teams/{team.slug}/iterations/{iteration.pk}/")
    # "(deleted since)" follows the overridden title on the same line and still reads left to right.
    assert page.evaluate(ORDER, "td span.muted.small")
