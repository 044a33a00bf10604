"""Comment reads: a card's or run's comments with authors, mentions and revision counts in a fixed
number of queries, rendered through the shared Markdown renderer."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Prefetch, QuerySet
from django.utils.safestring import SafeString

from ..markdown import render_markdown
from ..models import Card, Comment, CommentRevision, Membership, Role, Run, User


@dataclass
class CommentView:
    comment: Comment
    html: SafeString
    revisions: int


def _comments(qs: QuerySet[Comment]) -> list[CommentView]:
    rows = list(
        qs.select_related("author")
        .prefetch_related(Prefetch("mentions", queryset=User.objects.only("id", "username")))
        .annotate(revision_count=Count("revisions", distinct=True))
        .order_by("created_at", "id")
    )
    return [
        CommentView(
            comment=c,
            html=render_markdown(c.body, mentions=[u.username for u in c.mentions.all()]),
            revisions=c.revision_count,  # type: ignore[attr-defined]
        )
        for c in rows
    ]


def card_comments(card: Card) -> list[CommentView]:
    return _comments(Comment.objects.filter(card=card))


def run_comments(run: Run) -> list[CommentView]:
    return _comments(Comment.objects.filter(run=run))


def comment_revisions(comment: Comment) -> list[CommentRevision]:
    return list(comment.revisions.order_by("-created_at", "-id"))


def team_mention_candidates(*, team_id: int, prefix: str = "", limit: int = 10) -> list[dict[str, str]]:
    """Teammates for @mention autocomplete (one query)."""
    qs = Membership.objects.filter(team_id=team_id).select_related("user").order_by("user__username")
    prefix = (prefix or "").strip().lstrip("@")
    if prefix:
        qs = qs.filter(user__username__istartswith=prefix) | qs.filter(user__display_name__istartswith=prefix)
    return [
        {"username": m.user.username, "name": str(m.user), "role": m.role, "viewer": m.role == Role.VIEWER}
        for m in qs.distinct()[:limit]
    ]
