"""Team scoping. A user sees only his teams' data: anything else is a 404, never a 403,
so the existence of other teams' objects does not leak. Viewers read; they never write."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from .errors import PermissionDeniedError
from .models import Board, Card, Membership, Role, Team, User


def user_teams(user: User) -> QuerySet[Team]:
    if not user.is_authenticated:
        return Team.objects.none()
    return Team.objects.filter(memberships__user=user)


def membership_for(*, user: User, team: Team | int) -> Membership | None:
    if not user.is_authenticated:
        return None
    team_id = team if isinstance(team, int) else team.pk
    return Membership.objects.filter(user=user, team_id=team_id).first()


def get_membership_or_404(*, user: User, team_slug: str) -> Membership:
    membership = (
        Membership.objects.select_related("team").filter(user_id=user.pk, team__slug=team_slug).first()
        if user.is_authenticated
        else None
    )
    if membership is None:
        raise Http404("No such team.")
    return membership


def get_board_or_404(*, user: User, board_id: int) -> tuple[Board, Membership]:
    board = Board.objects.select_related("team").filter(pk=board_id).first()
    if board is None:
        raise Http404("No such board.")
    membership = membership_for(user=user, team=board.team_id)
    if membership is None:
        raise Http404("No such board.")
    return board, membership


def get_card_or_404(*, user: User, card_id: int) -> tuple[Card, Membership]:
    card = Card.objects.select_related("board__team", "column").filter(pk=card_id).first()
    if card is None:
        raise Http404("No such card.")
    membership = membership_for(user=user, team=card.board.team_id)
    if membership is None:
        raise Http404("No such card.")
    return card, membership


def ensure_can_edit(membership: Membership | None) -> None:
    if membership is None or not membership.can_edit:
        raise PermissionDeniedError("Viewers cannot change anything on this team.")


def ensure_manager(membership: Membership | None) -> None:
    if membership is None or membership.role != Role.MANAGER:
        raise PermissionDeniedError("Only team managers can do this.")
