"""The one Markdown renderer: comments, statements, rationales, plans, learnings and evidence all go
through `render_markdown`. markdown-it-py parses CommonMark with raw HTML disabled; nh3 then keeps
only an allow-list of tags and attributes, so nothing a user types can run script in a page."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

_md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])

ALLOWED_TAGS = {
    "p", "br", "strong", "em", "del", "code", "pre", "blockquote", "ul", "ol", "li", "a", "hr",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "span",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "span": {"class"}, "th": {"align"}, "td": {"align"}, "ol": {"start"}}
MENTION_RE = re.compile(r"(?<![\w@/.])@([A-Za-z0-9_.+-]*[A-Za-z0-9_+-])")
_TAG_SPLIT = re.compile(r"(<[^>]+>)")


def mentioned_usernames(text: str) -> list[str]:
    """@usernames in the text, outside code, in order of first appearance."""
    tokens = _md.parse(text or "")
    names: list[str] = []
    for token in tokens:
        if token.type != "inline" or not token.children:
            continue
        for child in token.children:
            if child.type == "text":
                for match in MENTION_RE.finditer(child.content):
                    if match.group(1) not in names:
                        names.append(match.group(1))
    return names


def _highlight_mentions(html: str, usernames: set[str]) -> str:
    """Wrap known @usernames in a span, in text nodes only (never inside code, pre or links)."""
    out, skip = [], 0
    for part in _TAG_SPLIT.split(html):
        if part.startswith("<"):
            name = part[1:].split()[0].rstrip(">").lower() if len(part) > 2 else ""
            if name in ("code", "pre", "a"):
                skip += 1
            elif name in ("/code", "/pre", "/a"):
                skip = max(0, skip - 1)
            out.append(part)
        elif skip:
            out.append(part)
        else:
            out.append(MENTION_RE.sub(
                lambda m: f'<span class="mention">@{m.group(1)}</span>' if m.group(1) in usernames else m.group(0),
                part,
            ))
    return "".join(out)


def render_markdown(text: str | None, *, mentions: Iterable[str] = ()) -> SafeString:
    if not text:
        return mark_safe("")
    rendered = _md.render(text)
    known = set(mentions)
    if known:
        rendered = _highlight_mentions(rendered, known)
    clean = nh3.clean(
        rendered, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)


def plain_excerpt(text: str | None, length: int = 160) -> str:
    """First characters of the text without Markdown syntax, as plain text for templates to escape."""
    stripped = html.unescape(nh3.clean(_md.render(text or ""), tags=set()))
    stripped = re.sub(r"\s+", " ", stripped).strip()
    return stripped[:length] + ("…" if len(stripped) > length else "")
