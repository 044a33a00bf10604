from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count, Q

from ..models import Board, Membership, RunStatus, User, VerdictStatus


@dataclass
class TeamOverview:
    membership: Membership
    boards: list[Board] = field(default_factory=list)


def home_overview(*, user: User) -> list[TeamOverview]:
    """The user's teams with their boards and headline counts, in a constant number of queries."""
    memberships = list(
        Membership.objects.filter(user=user).select_related("team").order_by("team__name")
    )
    by_team = {m.team_id: TeamOverview(membership=m) for m in memberships}
    boards = (
        Board.objects.filter(team_id__in=list(by_team), archived=False)
        .annotate(
            open_cards=Count("cards", filter=~Q(cards__column__stage="done"), distinct=True),
            running_runs=Count(
                "cards__run_links__run",
                filter=Q(cards__run_links__run__status=RunStatus.RUNNING),
                distinct=True,
            ),
            pending_verdicts=Count(
                "cards__verdict_proposals",
                filter=Q(cards__verdict_proposals__status=VerdictStatus.PROPOSED),
                distinct=True,
            ),
        )
        .order_by("name")
    )
    for board in boards:
        by_team[board.team_id].boards.append(board)
    return list(by_team.values())
