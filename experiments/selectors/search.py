"""Global search over the user's teams: cards (key, title, statement, learnings), runs (name, params,
tags) and comments. PostgreSQL uses full-text search (django.contrib.postgres: SearchVector,
SearchQuery, SearchRank); other databases (the embedded SQLite default) fall back to icontains.
Four queries whatever the number of matches (team ids, then one per kind)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet, TextField
from django.db.models.functions import Cast

from ..markdown import plain_excerpt
from ..models import Card, Comment, Membership, Param, Run, User

LIMIT = 20
MIN_LENGTH = 2


@dataclass
class SearchHit:
    kind: str  # card | run | comment
    obj: object
    excerpt: str = ""


@dataclass
class SearchResults:
    query: str
    cards: list[SearchHit] = field(default_factory=list)
    runs: list[SearchHit] = field(default_factory=list)
    comments: list[SearchHit] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.cards) + len(self.runs) + len(self.comments)


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _fts(qs: QuerySet, fields: list, query_text: str, *, extra: Q | None = None) -> QuerySet:
    """Full-text match and rank on PostgreSQL (websearch syntax: quotes, OR, -word)."""
    from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector

    vector = SearchVector(*fields, config="simple")
    query = SearchQuery(query_text, search_type="websearch", config="simple")
    # Prefix matching as a person types ("churn" finds "churn-model"): also a raw prefix query.
    words = [w for w in "".join(c if c.isalnum() else " " for c in query_text).split() if w]
    prefix = SearchQuery(" & ".join(f"{w}:*" for w in words), search_type="raw", config="simple") if words else None
    match = Q(search=query) | Q(search=prefix) if prefix is not None else Q(search=query)
    if extra is not None:
        match |= extra
    return qs.annotate(search=vector, rank=SearchRank(vector, query)).filter(match).order_by("-rank", "-pk")


def search_everything(*, user: User, text: str, limit: int = LIMIT) -> SearchResults:
    text = (text or "").strip()[:200]
    results = SearchResults(query=text)
    if len(text) < MIN_LENGTH or not user.is_authenticated:
        return results
    team_ids = list(Membership.objects.filter(user=user).values_list("team_id", flat=True))
    if not team_ids:
        return results
    key = text.upper()
    cards = Card.objects.filter(board__team_id__in=team_ids).select_related("board", "column")
    runs = Run.objects.filter(team_id__in=team_ids, lifecycle_stage="active").select_related("team")
    comments = Comment.objects.filter(team_id__in=team_ids).select_related("author", "card", "run")
    if _postgres():
        cards = _fts(cards, ["key", "title", "statement", "learnings"], text, extra=Q(key=key))
        param_hit = Param.objects.filter(run=OuterRef("pk")).filter(Q(value__icontains=text) | Q(key__icontains=text))
        runs = _fts(runs, ["name", Cast("tags", TextField())], text, extra=Q(Exists(param_hit)) | Q(external_id=text))
        comments = _fts(comments, ["body"], text)
    else:
        cards = cards.filter(
            Q(key__icontains=text) | Q(title__icontains=text) | Q(statement__icontains=text)
            | Q(learnings__icontains=text)
        ).order_by("-updated_at", "-pk")
        param_hit = Param.objects.filter(run=OuterRef("pk")).filter(Q(value__icontains=text) | Q(key__icontains=text))
        runs = runs.filter(
            Q(name__icontains=text) | Q(external_id=text) | Q(Exists(param_hit))
            | Q(tags__icontains=text)
        ).order_by("-start_time", "-pk")
        comments = comments.filter(body__icontains=text).order_by("-created_at", "-pk")
    results.cards = [
        SearchHit("card", c, plain_excerpt(c.statement or c.learnings or c.description, 140)) for c in cards[:limit]
    ]
    results.runs = [SearchHit("run", r, "") for r in runs[:limit]]
    results.comments = [SearchHit("comment", c, plain_excerpt(c.body, 160)) for c in comments[:limit]]
    return results
