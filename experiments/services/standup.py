"""Standup digests: build once per team and window, deliver each channel at most once.

A digest is unique per (team, board, window_end), so a retried or duplicated task finds the
stored digest instead of building a second one. Each channel has a DigestDelivery row with an
idempotency key; it is marked sent only after the send succeeded (a crash mid-send leaves it
unsent, so the retry sends again with the same key), and a channel marked sent is never sent again.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from .. import outbound
from ..models import Board, DigestDelivery, Membership, StandupDigest, Team
from ..selectors.standup import CardGroup, StandupData, Window, standup_overview, window_start_before

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 10
MAX_LISTED = 15
CONTENT_VERSION = 1


class DeliveryError(Exception):
    """A channel failed; the task retries and only the unsent channels go out again."""


# --- Links -------------------------------------------------------------------------------------


def absolute_url(path: str) -> str:
    """An app path as an absolute link for email and Slack (SITE_URL: where people open mlboard)."""
    return settings.SITE_URL.rstrip("/") + path


def standup_link(content: dict[str, Any]) -> str:
    """The standup page the digest summarises (the board's standup for a board digest)."""
    slug = content["team"]["slug"]
    board = content.get("board")
    if board:
        return absolute_url(reverse("standup_board", kwargs={"team_slug": slug, "board_id": board["id"]}))
    return absolute_url(reverse("standup", kwargs={"team_slug": slug}))


def card_link(card_id: int | None) -> str:
    """Absolute link to a card's page; empty for digests stored before cards carried their id."""
    if not card_id:
        return ""
    try:
        return absolute_url(reverse("card_detail", kwargs={"card_id": card_id}))
    except NoReverseMatch:
        return ""


# --- Content -----------------------------------------------------------------------------------


def _num(value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return None
    return value


def _card_entry(group: CardGroup, sections: dict[str, int]) -> dict[str, Any]:
    card, s = group.card, group.stats
    entry: dict[str, Any] = {
        "id": card.pk,
        "key": card.key,
        "title": card.title,
        "kind": card.kind,
        "board": card.board.name,
        "column": card.column.name,
        "owner": group.owner_label,
        **sections,
    }
    if s is not None:
        entry.update(
            metric=s.metric_key, direction=s.direction, n=s.n, new_n=s.new_n, mean=_num(s.mean), std=_num(s.std),
            baseline=_num(s.baseline), delta=_num(s.delta), improved=s.improved,
        )
    return entry


def standup_content(data: StandupData) -> dict[str, Any]:
    """JSON-safe summary of a standup overview (what a digest stores)."""
    per_card: dict[int, dict[str, int]] = {}
    groups: dict[int, CardGroup] = {}
    for section in ("finished", "failed", "running"):
        for group in getattr(data, section):
            per_card.setdefault(group.card.pk, {"finished": 0, "failed": 0, "running": 0})[section] = group.total
            groups.setdefault(group.card.pk, group)
    cards = [_card_entry(groups[pk], per_card[pk]) for pk in groups]
    cards.sort(key=lambda c: (c["owner"].lower(), c["key"]))
    failed_runs = [
        {"name": run.label, "status": run.status, "card": group.card.key, "card_id": group.card.pk,
         "user": run.user_label}
        for group in data.failed
        for run in group.runs
    ][:MAX_LISTED]
    return {
        "version": CONTENT_VERSION,
        "team": {"slug": data.team.slug, "name": data.team.name},
        "board": {"id": data.board.pk, "name": data.board.name} if data.board else None,
        "window": {
            "start": data.window.start.isoformat(),
            "end": data.window.end.isoformat(),
            "tz": str(data.window.tz),
        },
        "counts": data.counts,
        "cards": cards,
        "failed_runs": failed_runs,
        "proposals": [
            {
                "id": p.pk,
                "card": p.card.key,
                "card_id": p.card_id,
                "title": p.card.title,
                "owner": str(p.card.owner) if p.card.owner_id else "Unassigned",
                "proposed": p.proposed,
                "explanation": p.explanation,
                "stats": p.stats,
            }
            for p in data.proposals
        ],
        "stuck": [
            {
                "id": s.card.pk, "key": s.card.key, "title": s.card.title, "board": s.card.board.name,
                "column": s.card.column.name,
                "owner": str(s.card.owner) if s.card.owner_id else "Unassigned",
                "idle_hours": int((data.window.end - s.last_activity).total_seconds() // 3600),
            }
            for s in data.stuck
        ],
        "wip_over": [
            {"board": c.board.name, "column": c.name, "count": c.card_count, "limit": c.wip_limit}
            for c in data.wip_over
        ],
        "unlinked": {"total": data.unlinked_total, "sample": [r.label for r in data.unlinked[:MAX_LISTED]]},
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}"


def _signed(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3g}"


def card_line(card: dict[str, Any]) -> str:
    parts = [f"{card['key']} {card['title']} ({card['owner']}, {card['column']})"]
    runs = ", ".join(f"{card[k]} {k}" for k in ("finished", "failed", "running") if card.get(k))
    if runs:
        parts.append(runs)
    if card.get("metric") and card.get("mean") is not None:
        spread = f" ± {_fmt(card['std'], 2)}" if card.get("std") is not None else ""
        text = f"{card['metric']} {_fmt(card['mean'])}{spread} (n={card['n']})"
        if card.get("baseline") is not None:
            text += f" vs baseline {_fmt(card['baseline'])}, Δ {_signed(card['delta'])}"
        parts.append(text)
    return " — ".join(parts)


def window_label(content: dict[str, Any]) -> str:
    window = content["window"]
    start = dt.datetime.fromisoformat(window["start"])
    end = dt.datetime.fromisoformat(window["end"])
    try:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(window["tz"])
        start, end = start.astimezone(tz), end.astimezone(tz)
    except Exception:  # an unknown zone name only affects display
        pass
    return f"{start:%a %d %b %H:%M} → {end:%a %d %b %H:%M} ({window['tz']})"


def digest_title(content: dict[str, Any]) -> str:
    scope = content["team"]["name"] + (f" / {content['board']['name']}" if content.get("board") else "")
    end = dt.datetime.fromisoformat(content["window"]["end"])
    return f"Standup {scope} — {end:%a %d %b}"


def standup_text(content: dict[str, Any]) -> str:
    """Plain-text digest for email bodies and the terminal."""
    counts = content["counts"]
    lines = [
        digest_title(content),
        window_label(content),
        f"Open the standup: {standup_link(content)}",
        "",
        (
            f"Runs: {counts['finished']} finished, {counts['failed']} failed, {counts['running']} still running"
            f" · {counts['proposals']} verdict(s) waiting · {counts['stuck']} stuck card(s)"
            f" · {counts['wip_over']} column(s) over WIP · {counts['unlinked']} unlinked run(s)"
        ),
    ]

    def section(title: str, items: list[str], total: int | None = None) -> None:
        if not items:
            return
        lines.extend(["", f"{title} ({total if total is not None else len(items)})"])
        lines.extend(f"  - {item}" for item in items[:MAX_LISTED])
        hidden = (total if total is not None else len(items)) - min(len(items), MAX_LISTED)
        if hidden > 0:
            lines.append(f"  … and {hidden} more")

    def linked(text: str, card_id: int | None) -> str:
        # The link on its own line so mail clients make it clickable whatever the text around it.
        url = card_link(card_id)
        return f"{text}\n    {url}" if url else text

    section(
        "Verdicts waiting for a decision",
        [linked(f"{p['card']} {p['title']}: proposed {p['proposed']} ({p['owner']})", p.get("card_id"))
         for p in content["proposals"]],
    )
    section(
        "Failed runs",
        [linked(f"{r['name']} [{r['status']}] on {r['card']} by {r['user']}", r.get("card_id"))
         for r in content["failed_runs"]],
        counts["failed"],
    )
    section("Cards with overnight runs", [linked(card_line(c), c.get("id")) for c in content["cards"]])
    section("Stuck cards", [linked(f"{s['key']} {s['title']} — no new runs for {s['idle_hours']} h ({s['owner']})",
                                   s.get("id")) for s in content["stuck"]])
    section("Over WIP limit", [f"{w['board']} / {w['column']}: {w['count']} cards, limit {w['limit']}"
                               for w in content["wip_over"]])
    section("Runs not linked to a card", content["unlinked"]["sample"], content["unlinked"]["total"])
    if not (content["cards"] or content["proposals"] or content["stuck"] or content["wip_over"]
            or content["unlinked"]["total"]):
        lines.extend(["", "Quiet night: nothing finished, failed or waiting."])
    return "\n".join(lines) + "\n"


def slack_escape(text: str) -> str:
    """Slack's three control characters as entities, so names like `<!channel>` or `<https://x|y>` are inert."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str) -> str:
    # Slack mrkdwn escapes; section text is capped at 3000 characters.
    text = slack_escape(text)
    return text if len(text) <= 2900 else text[:2899] + "…"


def standup_slack_payload(content: dict[str, Any]) -> dict[str, Any]:
    """Slack-compatible incoming-webhook JSON: a text fallback plus Block Kit blocks."""
    counts = content["counts"]
    summary = (
        f"*{counts['finished']}* finished · *{counts['failed']}* failed · *{counts['running']}* running · "
        f"*{counts['proposals']}* verdicts waiting · *{counts['stuck']}* stuck · *{counts['wip_over']}* over WIP"
    )
    standup_url = standup_link(content)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": slack_escape(digest_title(content)[:150])}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _mrkdwn(window_label(content))}]},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{summary}\n<{standup_url}|Open the standup>"}},
    ]

    def item(key: str, rest: str, card_id: int | None = None) -> str:
        # The card key links to the card; link targets are not escaped, only the shown text.
        url = card_link(card_id)
        head = f"<{url}|{_mrkdwn(key)}>" if url else _mrkdwn(key)
        return f"{head} {_mrkdwn(rest)}" if rest else head

    def add(title: str, items: list[str]) -> None:
        if not items:
            return
        shown = items[:10]
        while True:
            body = "\n".join(f"• {i}" for i in shown)
            if len(items) > len(shown):
                body += f"\n… and {len(items) - len(shown)} more"
            # Drop whole items rather than cutting one mid-link when a section would pass Slack's limit.
            if len(title) + len(body) <= 2990 or len(shown) == 1:
                break
            shown = shown[:-1]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{body}"[:3000]}})

    add("Verdicts waiting", [item(p["card"], f"{p['title']}: {p['proposed']}", p.get("card_id"))
                             for p in content["proposals"]])
    add("Failed runs", [item(r["name"], f"on {r['card']}") if not r.get("card_id")
                        else f"{_mrkdwn(r['name'])} on {item(r['card'], '', r['card_id'])}"
                        for r in content["failed_runs"]])
    add("Cards", [item(c["key"], card_line(c)[len(c["key"]) + 1:], c.get("id")) for c in content["cards"]])
    add("Stuck", [item(s["key"], f"{s['title']} ({s['idle_hours']} h)", s.get("id")) for s in content["stuck"]])
    add("Over WIP", [_mrkdwn(f"{w['board']} / {w['column']}: {w['count']}/{w['limit']}") for w in content["wip_over"]])
    # The top-level text is the notification and fallback; Slack parses it like mrkdwn, so escape it too.
    text = f"{slack_escape(digest_title(content))}: {counts['finished']} finished, {counts['failed']} failed, " \
           f"{counts['running']} running, {counts['proposals']} verdicts waiting"
    return {"text": text, "blocks": blocks[:50]}


# --- Build -------------------------------------------------------------------------------------


def standup_digest_preview(
    *, team: Team, board: Board | None = None, window_start: dt.datetime | None = None,
    window_end: dt.datetime | None = None,
) -> tuple[dict[str, Any], str]:
    """Content and text of a digest without storing anything (the management command prints this)."""
    window_end = window_end or timezone.now()
    window_start = window_start or window_start_before(team, window_end)
    window = Window(start=window_start, end=window_end, tz=team.zone, custom=False)
    content = standup_content(standup_overview(team=team, board=board, window=window, now=window_end))
    return content, standup_text(content)


@transaction.atomic
def standup_digest_build(*, team: Team, board: Board | None = None, window_end: dt.datetime) -> StandupDigest:
    """Build and store the digest for a window ending at `window_end`; returns the stored one if it exists."""
    existing = StandupDigest.objects.filter(team=team, board=board, window_end=window_end).first()
    if existing is not None:
        return existing
    window_start = window_start_before(team, window_end)
    content, text = standup_digest_preview(team=team, board=board, window_start=window_start, window_end=window_end)
    try:
        with transaction.atomic():
            return StandupDigest.objects.create(
                team=team, board=board, window_start=window_start, window_end=window_end, content=content, text=text
            )
    except IntegrityError:
        # A concurrent task stored it first; the unique constraint makes that one the digest.
        return StandupDigest.objects.get(team=team, board=board, window_end=window_end)


# --- Delivery ----------------------------------------------------------------------------------


def digest_recipients(team: Team) -> list[str]:
    member_emails = Membership.objects.filter(team=team).exclude(user__email="").values_list("user__email", flat=True)
    extra = [line.strip() for line in (team.digest_emails or "").replace(",", "\n").splitlines() if line.strip()]
    seen: dict[str, str] = {}
    for email in [*member_emails, *extra]:
        seen.setdefault(email.lower(), email)
    return sorted(seen.values(), key=str.lower)


def _delivery(digest: StandupDigest, channel: str) -> DigestDelivery:
    delivery, _ = DigestDelivery.objects.get_or_create(
        digest=digest, channel=channel, defaults={"key": uuid.uuid4()}
    )
    return delivery


@contextmanager
def _sending(digest: StandupDigest, channel: str) -> Iterator[DigestDelivery | None]:
    """Hold the channel's delivery row locked while sending, so a concurrent duplicate task waits
    and then sees it sent. Yields None when it was sent already. The row is marked sent only when
    the body exits normally; on an error (or a crash: the lock dies with the connection) it stays unsent."""
    delivery = _delivery(digest, channel)
    if delivery.sent_at is not None:
        yield None
        return
    # Counted before the send, outside the transaction that a failure rolls back.
    DigestDelivery.objects.filter(pk=delivery.pk).update(attempts=F("attempts") + 1)
    with transaction.atomic():
        delivery = DigestDelivery.objects.select_for_update().get(pk=delivery.pk)
        if delivery.sent_at is not None:
            yield None
            return
        yield delivery
        delivery.sent_at, delivery.last_error = timezone.now(), ""
        delivery.save(update_fields=["sent_at", "last_error"])
        StandupDigest.objects.filter(pk=digest.pk).update(**{f"{channel}_sent_at": delivery.sent_at})
        setattr(digest, f"{channel}_sent_at", delivery.sent_at)


def _record_failure(digest: StandupDigest, channel: str, message: str) -> None:
    # Outside the rolled-back transaction, so the failure stays visible.
    DigestDelivery.objects.filter(digest=digest, channel=channel).update(last_error=message[:300])
    if channel == DigestDelivery.Channel.WEBHOOK:
        StandupDigest.objects.filter(pk=digest.pk).update(webhook_error=message[:1000])
        digest.webhook_error = message[:1000]


def _with_card_urls(content: dict[str, Any]) -> dict[str, Any]:
    """A copy of the content whose card, proposal, failed-run and stuck entries carry the card's absolute
    "url" (computed at send time, so the stored content stays free of deployment details)."""
    linked = dict(content)
    for section, id_field in (("cards", "id"), ("proposals", "card_id"), ("failed_runs", "card_id"), ("stuck", "id")):
        linked[section] = [{**entry, "url": card_link(entry.get(id_field))} for entry in content.get(section, [])]
    return linked


def standup_digest_send_email(*, digest: StandupDigest) -> bool:
    """Email the digest once. Returns True if this call sent it."""
    recipients = digest_recipients(digest.team)
    if not recipients:
        return False
    try:
        with _sending(digest, DigestDelivery.Channel.EMAIL) as delivery:
            if delivery is None:
                return False
            content = digest.content
            message = EmailMultiAlternatives(
                subject=f"[mlboard] {digest_title(content)}: {content['counts']['finished']} finished, "
                f"{content['counts']['failed']} failed, {content['counts']['proposals']} verdicts waiting",
                body=digest.text,
                from_email=settings.DEFAULT_FROM_EMAIL,
                to=recipients,
                # The same Message-ID on every attempt: a resend after an unrecorded success is a duplicate
                # that mail systems recognise.
                headers={"Message-ID": f"<digest-{digest.pk}-{delivery.key}@mlboard>",
                         "X-Idempotency-Key": str(delivery.key)},
            )
            message.attach_alternative(
                render_to_string("standup/email.html", {
                    "content": _with_card_urls(content), "title": digest_title(content),
                    "window_label": window_label(content), "standup_url": standup_link(content),
                }),
                "text/html",
            )
            message.send(fail_silently=False)
    except Exception as exc:
        _record_failure(digest, DigestDelivery.Channel.EMAIL, f"Email failed: {type(exc).__name__}")
        raise
    return True


def standup_digest_send_webhook(*, digest: StandupDigest) -> bool:
    """POST the digest to the team's Slack-compatible webhook once. Returns True if this call sent it."""
    url = digest.team.webhook_url
    if not url:
        return False
    try:
        with _sending(digest, DigestDelivery.Channel.WEBHOOK) as delivery:
            if delivery is None:
                return False
            outbound.post_json(url, standup_slack_payload(digest.content),
                               headers={"Idempotency-Key": str(delivery.key)}, timeout=WEBHOOK_TIMEOUT)
    except outbound.OutboundError as exc:
        _record_failure(digest, DigestDelivery.Channel.WEBHOOK, f"Webhook failed: {exc.message}")
        raise DeliveryError(f"Webhook failed: {exc.message}") from None
    StandupDigest.objects.filter(pk=digest.pk).update(webhook_error="")
    digest.webhook_error = ""
    return True


def standup_digest_deliver(*, digest: StandupDigest) -> dict[str, bool]:
    """Send every channel not sent yet. One failing channel does not stop the other; the first error
    is raised afterwards so the task retries (and the channel that went out is not sent again)."""
    sent: dict[str, bool] = {}
    errors: list[Exception] = []
    for name, send in (("email", standup_digest_send_email), ("webhook", standup_digest_send_webhook)):
        try:
            sent[name] = send(digest=digest)
        except Exception as exc:  # re-raised below, after the other channel had its chance
            logger.warning("Standup digest %s: %s delivery failed: %s", digest.pk, name, exc)
            sent[name] = False
            errors.append(exc)
    if errors:
        raise DeliveryError(f"Digest {digest.pk}: {errors[0]}") from errors[0]
    return sent
