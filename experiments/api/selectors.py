"""Read side of the REST API: team-scoped querysets with everything a serializer touches
prefetched, so list endpoints run a constant number of queries whatever the page size."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, F, Prefetch, Q, QuerySet

from ..models import (
    ApiToken,
    Board,
    Card,
    CardEvent,
    CardRun,
    Column,
    Membership,
    Metric,
    Run,
    Team,
    User,
)


def teams_for(*, user: User) -> QuerySet[Team]:
    # The annotation reuses the membership join of the filter: one row per team, with my role.
    return Team.objects.filter(memberships__user_id=user.pk).annotate(my_role=F("memberships__role")).order_by("name")


def team_members(*, team: Team) -> QuerySet[Membership]:
    return Membership.objects.filter(team=team).select_related("user").order_by("user__username")


def boards_for(*, user: User, team_slug: str | None = None) -> QuerySet[Board]:
    columns = Column.objects.annotate(card_count=Count("cards")).order_by("position", "id")
    qs = (
        Board.objects.filter(team__memberships__user_id=user.pk)
        .select_related("team")
        .prefetch_related(Prefetch("columns", queryset=columns))
        .order_by("team__name", "name", "id")
    )
    if team_slug:
        qs = qs.filter(team__slug=team_slug)
    return qs


def cards_for(
    *,
    user: User,
    board_id: int | None = None,
    kind: str | None = None,
    column_id: int | None = None,
    owner_id: int | None = None,
    q: str | None = None,
) -> QuerySet[Card]:
    qs = (
        Card.objects.filter(board__team__memberships__user_id=user.pk)
        .select_related("board", "column", "owner")
        .prefetch_related("tags")
        .order_by("board_id", "column__position", "position", "id")
    )
    if board_id is not None:
        qs = qs.filter(board_id=board_id)
    if kind:
        qs = qs.filter(kind=kind)
    if column_id is not None:
        qs = qs.filter(column_id=column_id)
    if owner_id is not None:
        qs = qs.filter(owner_id=owner_id)
    if q:
        q = q.strip()
        qs = qs.filter(
            Q(title__icontains=q) | Q(key__iexact=q) | Q(description__icontains=q) | Q(statement__icontains=q)
        )
    return qs


def card_events(*, card: Card) -> QuerySet[CardEvent]:
    return (
        CardEvent.objects.filter(card=card)
        .select_related("actor", "from_column", "to_column")
        .order_by("created_at", "id")
    )


def runs_for(
    *,
    user: User,
    team_slug: str | None = None,
    status: str | None = None,
    card_id: int | None = None,
    since: datetime | None = None,
    detail: bool = False,
) -> QuerySet[Run]:
    qs = (
        Run.objects.filter(team__memberships__user_id=user.pk)
        .select_related("team", "experiment")
        .prefetch_related(
            "latest_metrics",
            Prefetch("card_links", queryset=CardRun.objects.select_related("card").order_by("card__key")),
        )
        .order_by("-start_time", "-id")
    )
    if detail:
        qs = qs.prefetch_related("params")
    if team_slug:
        qs = qs.filter(team__slug=team_slug)
    if status:
        qs = qs.filter(status=status)
    if card_id is not None:
        qs = qs.filter(card_links__card_id=card_id)
    if since is not None:
        qs = qs.filter(updated_at__gte=since)
    return qs


def metric_history(*, run: Run, key: str) -> QuerySet[Metric]:
    return Metric.objects.filter(run=run, key=key).order_by("step", "timestamp", "id")


def links_for(*, user: User, card_id: int | None = None, run_id: int | None = None) -> QuerySet[CardRun]:
    qs = (
        CardRun.objects.filter(card__board__team__memberships__user_id=user.pk)
        .select_related("card__board", "run", "linked_by")
        .order_by("-created_at", "-id")
    )
    if card_id is not None:
        qs = qs.filter(card_id=card_id)
    if run_id is not None:
        qs = qs.filter(run_id=run_id)
    return qs


def tokens_for(*, user: User) -> QuerySet[ApiToken]:
    active_first = F("revoked_at").asc(nulls_first=True)
    return ApiToken.objects.filter(user=user).select_related("team").order_by(active_first, "-created_at", "-id")
