"""Card writes. Every move or status change is recorded as a CardEvent with actor and time.

Concurrency: callers pass the version they read; a stale version raises ConflictError
instead of silently overwriting someone else's change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ..errors import ConflictError, DomainError, WipLimitError
from ..models import (
    AnalysisScale,
    AnalysisTest,
    Board,
    Card,
    CardEvent,
    CardKind,
    Column,
    CriterionAmendment,
    Direction,
    EventKind,
    Membership,
    Role,
    Stage,
    Tag,
    Team,
    User,
    VerdictChoice,
)

# The pre-registered part of a hypothesis: frozen once its first linked run starts (see card_update).
CRITERION_FIELDS = (
    "metric_key", "direction", "threshold", "min_delta", "min_runs", "analysis_test", "analysis_scale", "paired",
    "equivalence_margin", "smallest_effect", "failures_count", "max_failure_share",
)
HYPOTHESIS_FIELDS = ("statement", "rationale", *CRITERION_FIELDS)
EXPERIMENT_FIELDS = ("plan", "baseline_value")
RESULT_FIELDS = ("verdict", "evidence", "learnings")
COMMON_FIELDS = ("title", "description", "owner", "parent", "iteration")
EDITOR_ROLES = (Role.MANAGER, Role.MEMBER)
EDITABLE_FIELDS = COMMON_FIELDS + HYPOTHESIS_FIELDS + EXPERIMENT_FIELDS + RESULT_FIELDS


def event_record(
    *,
    card: Card,
    kind: str,
    actor: User | None,
    from_column: Column | None = None,
    to_column: Column | None = None,
    data: dict[str, Any] | None = None,
    at: Any = None,
) -> CardEvent:
    return CardEvent.objects.create(
        card=card,
        board_id=card.board_id,
        actor=actor if actor is not None and actor.is_authenticated else None,
        kind=kind,
        from_column=from_column,
        to_column=to_column,
        from_stage=from_column.stage if from_column else "",
        to_stage=to_column.stage if to_column else "",
        data=data or {},
        created_at=at or timezone.now(),
    )


def _validate(card: Card, *, check_owner_role: bool = True) -> None:
    errors: dict[str, str] = {}
    if not card.title.strip():
        errors["title"] = "A title is required."
    if card.kind not in CardKind.values:
        errors["kind"] = "Kind must be hypothesis, experiment or result."
    if card.kind == CardKind.HYPOTHESIS:
        if card.parent_id:
            errors["parent"] = "A hypothesis has no parent card."
        if card.direction and card.direction not in Direction.values:
            errors["direction"] = "Direction must be maximize or minimize."
        if card.metric_key and not card.direction:
            errors["direction"] = "Say whether higher or lower is better for the metric."
        if card.metric_key and card.threshold is None and card.min_delta is None:
            errors["threshold"] = "Give a threshold, or a minimum delta over the baseline."
        if (card.threshold is not None or card.min_delta is not None) and not card.metric_key:
            errors["metric_key"] = "Name the metric that the threshold or delta applies to."
        if card.min_runs is not None and card.min_runs < 1:
            errors["min_runs"] = "At least one run is needed."
        if card.analysis_test not in AnalysisTest.values:
            errors["analysis_test"] = "The test is t, bootstrap or permutation."
        if card.analysis_scale not in AnalysisScale.values:
            errors["analysis_scale"] = "The scale is raw or log."
        elif card.analysis_scale == AnalysisScale.LOG and card.threshold is not None and card.threshold <= 0:
            errors["threshold"] = "On a log scale the threshold must be positive."
        if card.equivalence_margin is not None and not card.equivalence_margin > 0:
            errors["equivalence_margin"] = "The equivalence margin must be positive."
        if card.smallest_effect is not None and not card.smallest_effect > 0:
            errors["smallest_effect"] = "The smallest effect that matters must be positive."
        if card.max_failure_share is None or not 0.0 <= card.max_failure_share <= 1.0:
            errors["max_failure_share"] = "The allowed share of failing runs is between 0 and 1."
    elif card.kind == CardKind.EXPERIMENT:
        if card.parent is None or card.parent.kind != CardKind.HYPOTHESIS:
            errors["parent"] = "An experiment belongs to a hypothesis; choose one."
    elif card.kind == CardKind.RESULT:
        if card.parent is None or card.parent.kind == CardKind.RESULT:
            errors["parent"] = "A result belongs to an experiment or a hypothesis; choose one."
        if card.verdict and card.verdict not in VerdictChoice.values:
            errors["verdict"] = "Verdict must be supported, refuted or inconclusive."
    if card.parent is not None and card.parent.board_id != card.board_id:
        errors["parent"] = "The parent card must be on the same board."
    if card.parent_id is not None and card.parent_id == card.pk:
        errors["parent"] = "A card cannot be its own parent."
    if card.owner_id is not None:
        role = (
            Membership.objects.filter(team_id=card.board.team_id, user_id=card.owner_id)
            .values_list("role", flat=True)
            .first()
        )
        if role is None:
            errors["owner"] = "The owner must be a member of this board's team."
        elif check_owner_role and role not in EDITOR_ROLES:
            errors["owner"] = "Viewers cannot own cards; choose a member or manager."
    if errors:
        first_field, first_message = next(iter(errors.items()))
        error = DomainError(first_message, field=first_field)
        error.errors = errors  # type: ignore[attr-defined]
        raise error


def _tags_set(*, card: Card, tag_names: Iterable[str]) -> None:
    names = sorted({n.strip().lower() for n in tag_names if n and n.strip()})
    too_long = [n for n in names if len(n) > 40]
    if too_long:
        error = DomainError(f"Tags are at most 40 characters: {too_long[0][:20]}… is longer.", field="tags")
        error.errors = {"tags": error.message}  # type: ignore[attr-defined]
        raise error
    team_id = card.board.team_id
    existing = {t.name: t for t in Tag.objects.filter(team_id=team_id, name__in=names)}
    missing = [Tag(team_id=team_id, name=n) for n in names if n not in existing]
    if missing:
        Tag.objects.bulk_create(missing, ignore_conflicts=True)
        existing = {t.name: t for t in Tag.objects.filter(team_id=team_id, name__in=names)}
    card.tags.set(existing.values())


def _end_position(column: Column) -> float:
    last = Card.objects.filter(column=column).order_by("-position").values_list("position", flat=True).first()
    return (last or 0.0) + 1024.0


def _position_at(column: Column, index: int | None, *, exclude_id: int | None = None) -> float:
    """Float position placing a card at `index` among the column's cards (midpoint of neighbours)."""
    if index is None:
        return _end_position(column)
    positions = list(
        Card.objects.filter(column=column).exclude(pk=exclude_id).order_by("position", "id").values_list(
            "position", flat=True
        )
    )
    index = max(0, min(index, len(positions)))
    before = positions[index - 1] if index > 0 else None
    after = positions[index] if index < len(positions) else None
    if before is None and after is None:
        return 1024.0
    if before is None:
        return after - 1024.0  # type: ignore[operator]
    if after is None:
        return before + 1024.0
    if after - before < 1e-6:
        # Gap exhausted after many inserts: renumber this column once.
        for i, pk in enumerate(
            Card.objects.filter(column=column).exclude(pk=exclude_id).order_by("position", "id").values_list(
                "pk", flat=True
            )
        ):
            Card.objects.filter(pk=pk).update(position=(i + 1) * 1024.0)
        return index * 1024.0 + 512.0
    return (before + after) / 2


def _apply_stage_timestamps(card: Card, column: Column) -> None:
    now = timezone.now()
    if column.stage in (Stage.RUNNING, Stage.ANALYZING, Stage.DONE) and card.started_at is None:
        card.started_at = now
    if column.stage == Stage.DONE:
        card.completed_at = card.completed_at or now
    else:
        card.completed_at = None


@transaction.atomic
def card_create(
    *,
    board: Board,
    kind: str,
    title: str,
    actor: User | None,
    column: Column | None = None,
    tags: Iterable[str] = (),
    **fields: Any,
) -> Card:
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise DomainError(f"Unknown card field(s): {', '.join(sorted(unknown))}.")
    board = Board.objects.select_for_update().get(pk=board.pk)
    if column is None:
        column = board.columns.order_by("position").first()
        if column is None:
            raise DomainError("This board has no columns yet.")
    elif column.board_id != board.pk:
        raise DomainError("That column belongs to another board.", field="column")
    card = Card(board=board, column=column, kind=kind, title=(title or "").strip(), created_by=actor, **fields)
    if card.kind == CardKind.HYPOTHESIS and card.metric_key:
        card.criteria_set_at = timezone.now()
    if card.kind == CardKind.RESULT and card.verdict:
        card.decided_at = timezone.now()
    _validate(card)
    card.number = board.next_number
    card.key = f"{board.key}-{card.number}"
    card.position = _end_position(column)
    _apply_stage_timestamps(card, column)
    card.save()
    Board.objects.filter(pk=board.pk).update(next_number=F("next_number") + 1)
    if tags:
        _tags_set(card=card, tag_names=tags)
    event_record(card=card, kind=EventKind.CREATED, actor=actor, to_column=column, at=card.created_at)
    return card


def card_lock(*, card: Card) -> Card:
    """The card row, locked, then read with its column and board. The lock statement selects the card
    row alone: with a join, PostgreSQL's READ COMMITTED re-check of a concurrently moved card compares
    its new column_id with the column row joined before, drops the row (DoesNotExist -> 500) and, without
    OF, locks the board and column too. The version is compared after the lock, so every loser of a race
    sees the winner's version and gets a 409."""
    Card.objects.select_for_update().filter(pk=card.pk).values_list("pk", flat=True).get()
    return Card.objects.select_related("column", "board").get(pk=card.pk)


def _check_version(card: Card, expected_version: int | None) -> None:
    if expected_version is not None and expected_version != card.version:
        last = card.events.select_related("actor").order_by("-created_at", "-id").first()
        who = f" by {last.actor}" if last and last.actor else ""
        raise ConflictError(
            f"{card.key} was changed{who} since you loaded it (now in '{card.column.name}'). "
            "Reload to see the latest version; your change was not applied.",
            current_version=card.version,
        )


@transaction.atomic
def card_move(
    *,
    card: Card,
    to_column: Column,
    actor: User | None,
    expected_version: int | None,
    index: int | None = None,
    reason: str = "",
    confirm_over_limit: bool = True,
) -> Card:
    """`confirm_over_limit=False` (a person's drop) refuses a move past a full column's WIP limit when
    the team set its limits to strict, so the browser can ask first; run events always move."""
    card = card_lock(card=card)
    _check_version(card, expected_version)
    if to_column.board_id != card.board_id:
        raise DomainError("Cards can only move between columns of their own board.", field="column")
    from_column = card.column
    if not confirm_over_limit and from_column.pk != to_column.pk and to_column.wip_limit is not None:
        from .teams import teamwork_settings

        if teamwork_settings(team_id=card.board.team_id).wip_strict:
            count = Card.objects.filter(column=to_column, archive__isnull=True).count()
            if count >= to_column.wip_limit:
                raise WipLimitError(
                    f"{to_column.name} already holds {count} card(s), at its WIP limit of {to_column.wip_limit}. "
                    f"Move {card.key} there anyway?"
                )
    card.position = _position_at(to_column, index, exclude_id=card.pk)
    card.column = to_column
    if from_column.pk != to_column.pk:
        _apply_stage_timestamps(card, to_column)
    card.version += 1
    card.save(update_fields=["column", "position", "version", "started_at", "completed_at", "updated_at"])
    if from_column.pk != to_column.pk:
        data = {"reason": reason} if reason else {}
        event_record(
            card=card, kind=EventKind.MOVED, actor=actor, from_column=from_column, to_column=to_column, data=data
        )
    return card


@transaction.atomic
def card_move_to_stage(*, card: Card, stage: str, actor: User | None, reason: str) -> Card | None:
    """Move a card to the first column of a stage (used by run events). No-op if there is none."""
    target = Column.objects.filter(board_id=card.board_id, stage=stage).order_by("position").first()
    if target is None or target.pk == card.column_id:
        return None
    return card_move(card=card, to_column=target, actor=actor, expected_version=None, reason=reason)


@transaction.atomic
def card_update(
    *,
    card: Card,
    actor: User | None,
    expected_version: int | None,
    tags: Iterable[str] | None = None,
    amendment_reason: str = "",
    **fields: Any,
) -> Card:
    """Edit a card. Once a hypothesis's criterion froze (first linked run started), changing it is an
    amendment: a reason is required and each changed field is recorded (who, when, old -> new)."""
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise DomainError(f"Unknown card field(s): {', '.join(sorted(unknown))}.")
    card = card_lock(card=card)
    _check_version(card, expected_version)
    changed: dict[str, list[Any]] = {}
    for name, value in fields.items():
        old = getattr(card, name)
        if isinstance(value, str):
            value = value.strip() if name == "title" else value
        if old != value:
            changed[name] = [_jsonable(old), _jsonable(value)]
            setattr(card, name, value)
    if card.kind == CardKind.HYPOTHESIS and card.metric_key and card.criteria_set_at is None:
        card.criteria_set_at = timezone.now()
    if card.kind == CardKind.RESULT and "verdict" in changed and card.verdict:
        card.decided_at = timezone.now()
    _validate(card, check_owner_role="owner" in changed)
    amended = [name for name in CRITERION_FIELDS if name in changed]
    if card.kind == CardKind.HYPOTHESIS and card.criteria_frozen_at is not None and amended:
        _amendments_record(card=card, actor=actor, changed={n: changed[n] for n in amended}, reason=amendment_reason)
    if tags is not None:
        before = sorted(card.tags.values_list("name", flat=True))
        _tags_set(card=card, tag_names=tags)
        after = sorted(card.tags.values_list("name", flat=True))
        if before != after:
            changed["tags"] = [before, after]
    if changed:
        card.version += 1
        card.save()
        kind = EventKind.STATUS if "verdict" in changed else EventKind.EDITED
        event_record(card=card, kind=kind, actor=actor, data={"changed": changed})
    return card


def _amendments_record(*, card: Card, actor: User | None, changed: dict[str, list[Any]], reason: str) -> None:
    from .verdicts import evidence_runs_started

    reason = (reason or "").strip()
    runs = evidence_runs_started(card=card)
    if not reason:
        error = DomainError(
            f"The criterion of {card.key} froze when its first run started ({runs} run(s) so far); "
            "say why it changes (the amendment is kept and the verdict becomes exploratory).",
            field="amendment_reason",
        )
        error.errors = {"amendment_reason": error.message}  # type: ignore[attr-defined]
        raise error
    who = actor if actor is not None and actor.is_authenticated else None
    CriterionAmendment.objects.bulk_create(
        CriterionAmendment(card=card, actor=who, field=name, old_value=old, new_value=new, reason=reason,
                           runs_started=runs)
        for name, (old, new) in changed.items()
    )
    event_record(card=card, kind=EventKind.AMENDED, actor=actor,
                 data={"changed": changed, "reason": reason, "runs_started": runs})


@transaction.atomic
def card_flag(*, card: Card, actor: User | None, flagged: bool, reason: str = "") -> Card:
    Card.objects.filter(pk=card.pk).update(flagged=flagged, flag_reason=reason[:200] if flagged else "")
    card.refresh_from_db()
    event_record(card=card, kind=EventKind.FLAGGED, actor=actor, data={"flagged": flagged, "reason": reason})
    return card


@transaction.atomic
def card_add_note(*, card: Card, actor: User | None, text: str) -> CardEvent:
    text = (text or "").strip()
    if not text:
        raise DomainError("The note is empty.", field="text")
    stamp = timezone.now().strftime("%Y-%m-%d")
    author = str(actor) if actor else "mlboard"
    line = f"[{stamp} {author}] {text}"
    Card.objects.filter(pk=card.pk).update(version=F("version") + 1)
    card.refresh_from_db()
    card.learnings = f"{card.learnings}\n{line}".strip()
    card.save(update_fields=["learnings", "updated_at"])
    return event_record(card=card, kind=EventKind.NOTE, actor=actor, data={"text": text})


def _jsonable(value: Any) -> Any:
    if hasattr(value, "pk"):
        return value.pk
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


@transaction.atomic
def card_children_move_to_stage(*, card: Card, stage: str, actor: User | None, reason: str) -> list[Card]:
    """Move a hypothesis's experiments along with it (e.g. out of Analyzing once the verdict is decided)."""
    moved = []
    children = Card.objects.filter(parent=card, kind=CardKind.EXPERIMENT).exclude(column__stage=stage)
    for child in children.select_related("board", "column"):
        if card_move_to_stage(card=child, stage=stage, actor=actor, reason=reason) is not None:
            moved.append(child)
    return moved


# --- Archiving Done cards ----------------------------------------------------------------------


@transaction.atomic
def cards_archive_done(*, team: Team, now: dt.datetime | None = None) -> int:
    """Take Done cards older than the team's age limit off the board (idempotent). Returns how many."""
    from ..models import CardArchive
    from .teams import teamwork_settings

    days = teamwork_settings(team_id=team.pk).archive_done_after_days
    if not days:
        return 0
    cutoff = (now or timezone.now()) - dt.timedelta(days=days)
    ids = list(
        Card.objects.filter(
            board__team=team, column__stage=Stage.DONE, completed_at__lt=cutoff, archive__isnull=True
        ).values_list("pk", flat=True)
    )
    CardArchive.objects.bulk_create([CardArchive(card_id=i) for i in ids], ignore_conflicts=True)
    return len(ids)


@transaction.atomic
def card_archive(*, card: Card, actor: User | None) -> None:
    from ..models import CardArchive

    CardArchive.objects.get_or_create(card=card, defaults={"archived_by": actor})


@transaction.atomic
def card_restore(*, card: Card, actor: User | None) -> bool:
    """Put an archived card back on its board; it stays out of the next automatic pass for a full
    age period because its completion time restarts."""
    from ..models import CardArchive

    deleted, _ = CardArchive.objects.filter(card=card).delete()
    if deleted:
        Card.objects.filter(pk=card.pk, completed_at__isnull=False).update(completed_at=timezone.now())
        event_record(card=card, kind=EventKind.EDITED, actor=actor, data={"changed": {"archived": [True, False]}})
    return bool(deleted)
