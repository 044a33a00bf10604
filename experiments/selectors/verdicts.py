"""Verdict proposal reads. Each function is one query whatever the number of proposals."""

from __future__ import annotations

from django.db.models import QuerySet

from ..models import Board, Card, Team, VerdictProposal, VerdictStatus


def _with_cards(qs: QuerySet[VerdictProposal]) -> QuerySet[VerdictProposal]:
    return qs.select_related("card__board", "card__column", "card__owner", "decided_by")


def verdict_proposals_pending(*, team: Team, board: Board | None = None) -> list[VerdictProposal]:
    """Open proposals waiting for a person, oldest first (the queue to work through), with their cards."""
    qs = VerdictProposal.objects.filter(card__board__team=team, status=VerdictStatus.PROPOSED)
    if board is not None:
        qs = qs.filter(card__board=board)
    return list(_with_cards(qs).order_by("created_at", "id"))


def verdict_proposals_for_card(*, card: Card) -> list[VerdictProposal]:
    """A hypothesis's proposal history, newest first."""
    return list(_with_cards(VerdictProposal.objects.filter(card=card)).order_by("-created_at", "-id"))


def verdict_proposal_latest_open(*, card: Card) -> VerdictProposal | None:
    return (
        _with_cards(VerdictProposal.objects.filter(card=card, status=VerdictStatus.PROPOSED))
        .order_by("-created_at", "-id")
        .first()
    )
