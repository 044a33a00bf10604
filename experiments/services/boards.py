"""Team, board and column writes. Model validation errors become DomainErrors with a per-field
`errors` dict so forms and the API can show them next to the right input."""

from __future__ import annotations

from collections.abc import Sequence

from django.core.exceptions import ValidationError
from django.db import models, transaction

from ..errors import DomainError
from ..models import Board, Column, Membership, Role, Stage, Team, User, key_validator
from .runs import tracking_experiment_default

DEFAULT_COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("Backlog", Stage.BACKLOG, None),
    ("Ready", Stage.READY, 5),
    ("Running", Stage.RUNNING, 4),
    ("Analyzing", Stage.ANALYZING, 3),
    ("Done", Stage.DONE, None),
)


def _domain_error(errors: dict[str, str]) -> DomainError:
    field, message = next(iter(errors.items()))
    error = DomainError(message, field=field)
    error.errors = errors  # type: ignore[attr-defined]
    return error


def _full_clean(obj: models.Model, *, exclude: Sequence[str] = ()) -> None:
    try:
        obj.full_clean(exclude=list(exclude))
    except ValidationError as exc:
        errors = {
            (name if name != "__all__" else "name"): " ".join(messages)
            for name, messages in exc.message_dict.items()
        }
        raise _domain_error(errors) from None


@transaction.atomic
def team_create(*, name: str, slug: str, owner: User | None = None, **settings: object) -> Team:
    team = Team(name=name, slug=slug, **settings)
    team.full_clean()
    team.save()
    if owner is not None:
        Membership.objects.create(team=team, user=owner, role=Role.MANAGER)
    # MLflow servers always have the Default experiment (id 0); so does every team, for viewers too.
    tracking_experiment_default(team=team)
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
    errors: dict[str, str] = {}
    if not name.strip():
        errors["name"] = "Give the board a name."
    if not key:
        errors["key"] = "Give the board a key, e.g. CHURN; card keys start with it."
    elif not key_validator.regex.match(key):
        errors["key"] = str(key_validator.message)
    elif Board.objects.filter(team=team, key=key).exists():
        errors["key"] = f"This team already has a board with key {key}."
    if errors:
        raise _domain_error(errors)
    board = Board(team=team, name=name.strip(), key=key, problem=problem)
    _full_clean(board, exclude=["next_number"])
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
    if not name.strip():
        raise _domain_error({"name": "Column name cannot be empty."})
    if wip_limit is not None and wip_limit < 1:
        raise _domain_error({"wip_limit": "WIP limit must be at least 1 (leave empty for no limit)."})
    position = 0 if last is None else last + 1
    column = Column(board=board, name=name.strip(), stage=stage, wip_limit=wip_limit, position=position)
    _full_clean(column)
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
    _full_clean(column)
    column.save()
    return column


@transaction.atomic
def columns_reorder(*, board: Board, column_ids: Sequence[int]) -> list[Column]:
    """Set the board's column order; column_ids must name every column of the board once."""
    columns = {c.pk: c for c in Column.objects.select_for_update().filter(board=board)}
    if sorted(column_ids) != sorted(columns):
        raise DomainError("The new order must list every column of this board exactly once.", field="order")
    ordered = [columns[pk] for pk in column_ids]
    for i, column in enumerate(ordered):
        column.position = i
    Column.objects.bulk_update(ordered, ["position"])
    return ordered


@transaction.atomic
def column_delete(*, column: Column) -> None:
    count = column.cards.count()
    if count:
        raise DomainError(
            f"'{column.name}' still has {count} card{'s' if count != 1 else ''}; "
            "move them to another column before deleting it."
        )
    if not Column.objects.filter(board_id=column.board_id).exclude(pk=column.pk).exists():
        raise DomainError("A board needs at least one column.")
    column.delete()
