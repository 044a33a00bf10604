"""Notifications: who hears about what, and delivery in batches.

Events (a mention, a comment, a verdict proposed or decided, a linked run failed, a card you own went
stuck) become one Notification row per recipient, deduplicated per (user, event) so a retried task
adds nothing. The in-app bell reads the rows; email and the personal Slack-compatible webhook are sent
by a Celery task as one digest per user with everything pending, scheduled at most once per batching
window, so a burst of failed runs means one mail, not fifty."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from ..errors import DomainError
from ..models import (
    Card,
    CardKind,
    Comment,
    Membership,
    Notification,
    NotificationKind,
    NotificationPreference,
    Run,
    User,
    VerdictProposal,
    Watch,
)

log = logging.getLogger(__name__)
WEBHOOK_TIMEOUT = 10


# --- Watching ----------------------------------------------------------------------------------


def watch_set(*, user: User, card: Card, watching: bool = True) -> bool:
    if watching:
        Watch.objects.get_or_create(user=user, card=card)
    else:
        Watch.objects.filter(user=user, card=card).delete()
    return watching


def card_watchers(card: Card) -> set[int]:
    """Owners and watchers of the card and of its hypothesis (an experiment's news concerns both)."""
    cards = [card.pk]
    if card.parent_id and card.kind != CardKind.HYPOTHESIS:
        cards.append(card.parent_id)
    owners = Card.objects.filter(pk__in=cards, owner__isnull=False).values_list("owner_id", flat=True)
    watchers = Watch.objects.filter(card_id__in=cards).values_list("user_id", flat=True)
    return set(owners) | set(watchers)


# --- Preferences -------------------------------------------------------------------------------


def preference_for(user: User) -> NotificationPreference:
    pref, _ = NotificationPreference.objects.get_or_create(user=user)
    return pref


@transaction.atomic
def preference_update(
    *, user: User, email: bool, webhook_url: str, muted_kinds: Iterable[str]
) -> NotificationPreference:
    muted = sorted(set(muted_kinds))
    unknown = [k for k in muted if k not in NotificationKind.values]
    if unknown:
        raise DomainError(f"Unknown notification kind: {unknown[0]}.", field="muted_kinds")
    webhook_url = (webhook_url or "").strip()
    if webhook_url:
        from .teams import _http_url_problem

        problem = _http_url_problem(webhook_url, what="webhook", example="https://hooks.slack.com/services/…")
        if problem:
            raise DomainError(problem, field="webhook_url")
    pref = preference_for(user)
    pref.email = email
    pref.webhook_url = webhook_url
    pref.muted_kinds = muted
    pref.save()
    return pref


# --- Creating notifications --------------------------------------------------------------------


def notify(
    *,
    user_ids: Iterable[int],
    team_id: int,
    kind: str,
    text: str,
    dedupe_key: str,
    actor: User | None = None,
    card: Card | None = None,
    run: Run | None = None,
    comment: Comment | None = None,
) -> int:
    """One notification per recipient who is still on the team, is not the actor and has not muted
    this kind. Returns how many were created; schedules their delivery after commit."""
    wanted = set(user_ids) - ({actor.pk} if actor is not None and actor.pk else set())
    if not wanted:
        return 0
    members = set(Membership.objects.filter(team_id=team_id, user_id__in=wanted).values_list("user_id", flat=True))
    muted = {
        uid for uid, kinds in NotificationPreference.objects.filter(user_id__in=members).values_list(
            "user_id", "muted_kinds"
        )
        if kind in (kinds or [])
    }
    already = set(
        Notification.objects.filter(user_id__in=members, dedupe_key=dedupe_key[:120]).values_list("user_id", flat=True)
    )
    recipients = sorted(members - muted - already)
    if not recipients:
        return 0
    rows = [
        Notification(
            user_id=uid, team_id=team_id, kind=kind, text=text[:300], dedupe_key=dedupe_key[:120],
            actor=actor if actor is not None and actor.pk else None, card=card, run=run, comment=comment,
        )
        for uid in recipients
    ]
    Notification.objects.bulk_create(rows, ignore_conflicts=True)  # a concurrent twin adds nothing
    for uid in recipients:
        digest_schedule(user_id=uid)
    return len(rows)


def notify_comment(*, comment: Comment, mentioned: Iterable[User]) -> None:
    label = comment.card.key if comment.card else f"run {comment.run.name or comment.run.external_id[:8]}"
    author = str(comment.author) if comment.author else "Someone"
    mentioned_ids = {u.pk for u in mentioned}
    common = dict(team_id=comment.team_id, actor=comment.author, card=comment.card, run=comment.run, comment=comment)
    notify(user_ids=mentioned_ids, kind=NotificationKind.MENTION, text=f"{author} mentioned you on {label}",
           dedupe_key=f"mention:{comment.pk}", **common)
    if comment.card is not None:
        watchers = card_watchers(comment.card)
    else:
        # A run's watchers: whoever logged it and whoever commented on it.
        watchers = set(Comment.objects.filter(run=comment.run).exclude(author=None).values_list("author_id", flat=True))
        if comment.run.user_id:
            watchers.add(comment.run.user_id)
    notify(user_ids=watchers - mentioned_ids, kind=NotificationKind.COMMENT,
           text=f"{author} commented on {label}", dedupe_key=f"comment:{comment.pk}", **common)


def notify_verdict(*, card: Card, proposal: VerdictProposal, decided: bool, actor: User | None) -> None:
    if decided:
        text = f"{actor or 'Someone'} decided {card.key}: {proposal.get_decided_display()}"
        kind, key = NotificationKind.VERDICT_DECIDED, f"verdict_decided:{proposal.pk}"
    else:
        text = f"Verdict proposed for {card.key}: {proposal.get_proposed_display()}"
        kind, key = NotificationKind.VERDICT_PROPOSED, f"verdict_proposed:{proposal.pk}"
    notify(user_ids=card_watchers(card), team_id=card.board.team_id, kind=kind, text=text, dedupe_key=key,
           actor=actor, card=card)


def notify_run_failed(*, card: Card, run: Run) -> None:
    label = run.name or run.external_id[:8]
    notify(
        user_ids=card_watchers(card), team_id=card.board.team_id, kind=NotificationKind.RUN_FAILED,
        text=f"Run {label} on {card.key} {run.status.lower()}", dedupe_key=f"run_failed:{run.pk}:{card.pk}",
        card=card, run=run,
    )


def notify_stuck(*, card: Card, since: Any) -> int:
    if not card.owner_id:
        return 0
    stamp = since.isoformat() if since is not None else "never"
    return notify(
        user_ids=[card.owner_id], team_id=card.board.team_id, kind=NotificationKind.CARD_STUCK,
        text=f"{card.key} has had no run activity for a while", dedupe_key=f"stuck:{card.pk}:{stamp}"[:120],
        card=card,
    )


def notify_stuck_cards(*, team_id: int) -> int:
    """Tell owners about their stuck cards once per stall (dedupe on the last activity time)."""
    from ..models import Team
    from ..selectors.standup import standup_stuck_cards

    team = Team.objects.get(pk=team_id)
    return sum(notify_stuck(card=s.card, since=s.last_activity) for s in standup_stuck_cards(team=team))


# --- Reading state -----------------------------------------------------------------------------


def notifications_mark_read(*, user: User, ids: Iterable[int] | None = None) -> int:
    qs = Notification.objects.filter(user=user, read_at__isnull=True)
    if ids is not None:
        qs = qs.filter(pk__in=list(ids))
    return qs.update(read_at=timezone.now())


# --- Delivery (batched) ------------------------------------------------------------------------


def _schedule_key(user_id: int) -> str:
    return f"mlboard:notify-digest:{user_id}"


def digest_schedule(*, user_id: int) -> bool:
    """Enqueue one digest task per user per batching window (after commit); later events in the
    window ride along with it. Returns whether a task was scheduled."""
    window = int(getattr(settings, "NOTIFY_BATCH_SECONDS", 120))
    if not cache.add(_schedule_key(user_id), 1, timeout=window + 60):
        return False
    from ..tasks import send_notification_digest

    transaction.on_commit(
        lambda: send_notification_digest.apply_async(args=[user_id], countdown=window), robust=True
    )
    return True


def _absolute(path: str) -> str:
    return f"{getattr(settings, 'SITE_URL', '').rstrip('/')}{path}"


def notification_url(n: Notification) -> str:
    if n.comment_id and n.card_id:
        return reverse("card_detail", args=[n.card_id]) + f"#comment-{n.comment_id}"
    if n.card_id:
        return reverse("card_detail", args=[n.card_id])
    if n.run_id:
        return reverse("run_detail", args=[n.run_id]) + (f"#comment-{n.comment_id}" if n.comment_id else "")
    return reverse("notifications")


def _post_webhook(url: str, payload: dict[str, Any]) -> None:
    """Personal webhooks leave the server through the one guarded outbound client (no internal
    addresses unless allow-listed, timeouts, 2xx required)."""
    from .. import outbound

    outbound.post_json(url, payload, timeout=WEBHOOK_TIMEOUT)


@transaction.atomic
def notification_digest_send(*, user_id: int) -> int:
    """Send everything pending for one user as one email and one webhook message, then mark it
    delivered (idempotent: a second run finds nothing pending). Returns how many were included."""
    cache.delete(_schedule_key(user_id))
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        return 0
    pending = list(
        Notification.objects.select_for_update(skip_locked=True)
        .filter(user_id=user_id, delivered_at__isnull=True)
        .order_by("created_at", "id")
    )
    if not pending:
        return 0
    Notification.objects.filter(pk__in=[n.pk for n in pending]).update(delivered_at=timezone.now())
    # Anything already read in the app needs no mail.
    unread = [n for n in pending if n.read_at is None]
    if not unread:
        return 0
    pref = preference_for(user)
    lines = [f"- {n.text}: {_absolute(notification_url(n))}" for n in unread]
    subject = unread[0].text if len(unread) == 1 else f"{len(unread)} updates on mlboard"
    body = "\n".join([f"Hello {user},", "", *lines, "", f"All notifications: {_absolute(reverse('notifications'))}",
                      f"Preferences: {_absolute(reverse('notification_prefs'))}"])
    if pref.email and user.email:
        transaction.on_commit(
            lambda: send_mail(subject, body, None, [user.email], fail_silently=False), robust=True
        )
    if pref.webhook_url:
        payload = {"text": "\n".join([f"*{subject}*", *(f"• <{_absolute(notification_url(n))}|{n.text}>"
                                                            for n in unread)])}
        url = pref.webhook_url

        def post() -> None:
            from ..outbound import OutboundError

            try:
                _post_webhook(url, payload)
            except OutboundError as exc:  # a broken personal webhook must not lose the email or the bell
                log.warning("personal webhook for user %s failed: %s", user_id, exc.message)

        transaction.on_commit(post, robust=True)
    return len(unread)


def users_with_pending() -> list[int]:
    return list(
        Notification.objects.filter(delivered_at__isnull=True).order_by().values_list("user_id", flat=True).distinct()
    )

