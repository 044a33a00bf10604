from __future__ import annotations

from django.db import transaction

from ..errors import DomainError
from ..models import Board, Column, Membership, Role, Stage, Team, User

DEFAULT_COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("Backlog", Stage.BACKLOG, None),
    ("Ready", Stage.READY, 5),
    ("Running", Stage.RUNNING, 4),
    ("Analyzing", Stage.ANALYZING, 3),
    ("Done", Stage.DONE, None),
)


@transaction.atomic
def team_create(*, name: str, slug: str, owner: User | None = None, **settings: object) -> Team:
    team = Team(name=name, slug=slug, **settings)
    team.full_clean()
    team.save()
    if owner is not None:
        Membership.objects.create(team=team, user=owner, role=Role.MANAGER)
    return team


@transaction.atomic
def membership_set(*, team: Team, user: User, role: str) -> Membership:
    if role not in Role.values:
        raise DomainError(f"Unknown role {role!r}; use one of {', '.join(Role.values)}.", field="role")
    membership, _ = Membership.objects.update_or_create(team=team, user=user, defaults={"role": role})
    return membership


@transaction.atomic
def board_create(
    *,
    team: Team,
    name: str,
    key: str,
    problem: str = "",
    columns: tuple[tuple[str, str, int | None], ...] = DEFAULT_COLUMNS,
) -> Board:
    key = key.strip().upper()
    if Board.objects.filter(team=team, key=key).exists():
        raise DomainError(f"This team already has a board with key {key}.", field="key")
    board = Board(team=team, name=name.strip(), key=key, problem=problem)
    board.full_clean()
    board.save()
    Column.objects.bulk_create(
        Column(board=board, name=col_name, stage=stage, wip_limit=wip, position=i)
        for i, (col_name, stage, wip) in enumerate(columns)
    )
    return board


@transaction.atomic
def column_create(*, board: Board, name: str, stage: str, wip_limit: int | None = None) -> Column:
    if stage not in Stage.values:
        raise DomainError(f"Unknown stage {stage!r}.", field="stage")
    last = board.columns.order_by("-position").values_list("position", flat=True).first()
    column = Column(board=board, name=name.strip(), stage=stage, wip_limit=wip_limit, position=(last or 0) + 1)
    column.full_clean()
    column.save()
    return column


@transaction.atomic
def column_update(
    *, column: Column, name: str | None = None, wip_limit: int | None = None, clear_wip: bool = False,
    stage: str | None = None, position: int | None = None,
) -> Column:
    if name is not None:
        if not name.strip():
            raise DomainError("Column name cannot be empty.", field="name")
        column.name = name.strip()
    if clear_wip:
        column.wip_limit = None
    elif wip_limit is not None:
        if wip_limit < 1:
            raise DomainError("WIP limit must be at least 1 (leave empty for no limit).", field="wip_limit")
        column.wip_limit = wip_limit
    if stage is not None:
        if stage not in Stage.values:
            raise DomainError(f"Unknown stage {stage!r}.", field="stage")
        column.stage = stage
    if position is not None:
        column.position = position
    column.save()
    return column


@transaction.atomic
def column_delete(*, column: Column) -> None:
    if column.cards.exists():
        raise DomainError("Move the cards out of this column before deleting it.")
    column.delete()
