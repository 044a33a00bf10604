"""Comments on cards and runs: Markdown text, @mentions of teammates, edit history."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from ..access import membership_for
from ..errors import DomainError, PermissionDeniedError
from ..markdown import mentioned_usernames
from ..models import Card, Comment, CommentRevision, Run, User
from .notifications import notify_comment, watch_set

MAX_BODY = 20_000


def _clean_body(body: str) -> str:
    body = (body or "").strip()
    if not body:
        raise DomainError("The comment is empty.", field="body")
    if len(body) > MAX_BODY:
        raise DomainError(f"Comments are at most {MAX_BODY:,} characters.", field="body")
    return body


def _mentioned_members(*, team_id: int, body: str) -> list[User]:
    names = mentioned_usernames(body)
    if not names:
        return []
    return list(User.objects.filter(memberships__team_id=team_id, username__in=names))


@transaction.atomic
def comment_create(*, author: User, body: str, card: Card | None = None, run: Run | None = None) -> Comment:
    if (card is None) == (run is None):
        raise DomainError("A comment belongs to one card or one run.")
    team_id = card.board.team_id if card is not None else run.team_id  # type: ignore[union-attr]
    membership = membership_for(user=author, team=team_id)
    if membership is None:
        raise PermissionDeniedError("Only team members can comment here.")
    body = _clean_body(body)
    comment = Comment.objects.create(team_id=team_id, card=card, run=run, author=author, body=body)
    mentioned = _mentioned_members(team_id=team_id, body=body)
    comment.mentions.set(mentioned)
    if card is not None:
        watch_set(user=author, card=card)  # commenters watch the card from now on
    notify_comment(comment=comment, mentioned=mentioned)
    return comment


@transaction.atomic
def comment_update(*, comment: Comment, editor: User, body: str) -> Comment:
    """Only the author edits; the previous text is kept as a revision. New mentions are notified."""
    comment = Comment.objects.select_for_update().get(pk=comment.pk)
    if comment.author_id != editor.pk:
        raise PermissionDeniedError("Only the author can edit a comment.")
    body = _clean_body(body)
    if body == comment.body:
        return comment
    CommentRevision.objects.create(comment=comment, body=comment.body)
    before = set(comment.mentions.values_list("pk", flat=True))
    comment.body = body
    comment.edited_at = timezone.now()
    comment.save(update_fields=["body", "edited_at"])
    mentioned = _mentioned_members(team_id=comment.team_id, body=body)
    comment.mentions.set(mentioned)
    new = [u for u in mentioned if u.pk not in before]
    if new:
        from ..models import NotificationKind
        from .notifications import notify

        label = comment.card.key if comment.card_id else "a run"
        notify(
            user_ids=[u.pk for u in new], team_id=comment.team_id, kind=NotificationKind.MENTION,
            text=f"{editor} mentioned you on {label}", dedupe_key=f"mention:{comment.pk}", actor=editor,
            card=comment.card, run=comment.run, comment=comment,
        )
    return comment
