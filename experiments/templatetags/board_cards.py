"""Board cards as HTML: {% board_cards cards %} renders a cell's cards, {% board_card card %} one card
(out-of-band swap after an edit). Plain string building with escaping instead of a template
include per card: a board page shows hundreds of cards, and an include (new context, node walk,
autoescape per variable) per card was most of the page's server time. The quick-view URL is
reversed once per call with a placeholder id."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

from django import template
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe

from ..models import CardKind, VerdictChoice
from ..selectors.board import BoardCard

register = template.Library()

_KINDS = dict(CardKind.choices)
_VERDICTS = dict(VerdictChoice.choices)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plural(n: int) -> str:
    return "" if n == 1 else "s"


def card_html(card: BoardCard, *, quick_url: str, can_edit: bool, lanes: str = "", oob: bool = False) -> str:
    """One board card (an <article>): key, kind, verdict, flag, title, parent line (left out in
    hypothesis lanes, whose header names the hypothesis), tags, owner and linked runs. The data
    attributes are what static/js/board.js reads (id, key, version for the 409 check, quick view)."""
    e = escape
    kind_label = _KINDS.get(card.kind, card.kind)
    aria = f"{card.key}, {kind_label}: {card.title}"
    if card.flagged:
        aria += ". Flagged"
    if card.owner_label:
        aria += f". Owner {card.owner_label}"
    flagged = " is-flagged" if card.flagged else ""
    draggable = ' draggable="true"' if can_edit else ""
    swap = ' hx-swap-oob="true"' if oob else ""
    out = [
        f'<article class="card kind-{e(card.kind)}{flagged}" id="card-{card.id}" role="listitem" tabindex="0"'
        f'{draggable} data-card-id="{card.id}" data-key="{e(card.key)}" data-version="{card.version}" '
        f'data-quick-url="{e(quick_url)}" aria-label="{e(aria)}" aria-describedby="board-kbd-help"{swap}>'
        f'<div class="card-top"><span class="card-key">{e(card.key)}</span> '
        f'<span class="badge {e(card.kind)}">{e(kind_label)}</span>'
    ]
    if card.verdict:
        out.append(f' <span class="badge {e(card.verdict)}">{e(_VERDICTS.get(card.verdict, card.verdict))}</span>')
    if card.flagged:
        reason = e(card.flag_reason or "Flagged")
        out.append(f' <span class="card-flag" title="{reason}"><span aria-hidden="true">⚑</span> Flagged</span>')
    out.append(f'</div><p class="card-title">{e(card.title)}</p>')
    if card.parent_key and lanes != "hypothesis":
        line = f"{card.parent_key} · {_truncate(card.parent_title, 38)}"
        out.append(f'<p class="card-parent" title="{e(card.parent_title)}"><span aria-hidden="true">↳</span> '
                   f"{e(line)}</p>")
    if card.tag_names:
        out.append('<ul class="card-tags" aria-label="Tags">')
        out.extend(f"<li>{e(name)}</li>" for name in card.tag_names)
        out.append("</ul>")
    out.append('<div class="card-foot">')
    if card.owner_label:
        initial = card.owner_label[:1].upper()
        out.append(f'<span class="card-owner"><span class="avatar" aria-hidden="true">{e(initial)}</span>'
                   f"{e(card.owner_label)}</span>")
    else:
        out.append('<span class="card-owner unassigned">Unassigned</span>')
    runs = card.run_count
    none = "" if runs else " none"
    out.append(f' <span class="card-runs{none}" title="{runs} linked run{_plural(runs)}">'
               f'<span aria-hidden="true">▶</span> {runs} run{_plural(runs)}</span></div></article>')
    return "".join(out)


def _quick_prefix(board_id: int) -> tuple[str, str]:
    prefix, suffix = reverse("board_card_quick", args=[board_id, 0]).rsplit("/0/", 1)
    return prefix + "/", "/" + suffix


def cards_html(cards: Iterable[BoardCard], *, board_id: int, can_edit: bool, lanes: str = "") -> SafeString:
    prefix, suffix = _quick_prefix(board_id)
    return mark_safe(  # every value is escaped in card_html
        "".join(
            card_html(c, quick_url=f"{prefix}{c.id}{suffix}", can_edit=can_edit, lanes=lanes) for c in cards
        )
    )


@register.simple_tag(takes_context=True)
def board_cards(context: Any, cards: Iterable[BoardCard], lanes: str = "") -> SafeString:
    """The cards of one cell. Context: board, can_edit."""
    return cards_html(cards, board_id=context["board"].pk, can_edit=bool(context.get("can_edit")), lanes=lanes)


@register.simple_tag(takes_context=True)
def board_card(context: Any, card: BoardCard, oob: bool = False) -> SafeString:
    """One card; oob: as an htmx out-of-band swap of the card already on the board."""
    prefix, suffix = _quick_prefix(context["board"].pk)
    html = card_html(card, quick_url=f"{prefix}{card.id}{suffix}", can_edit=bool(context.get("can_edit")), oob=oob)
    return mark_safe(html)  # every value is escaped in card_html
