"""Read side of the Kanban board: one page of columns, swimlanes and cards in a fixed number of
queries however many cards the board holds (columns, cards with owner/parents/run counts, tags,
members, team tags, plus column totals when a filter hides cards)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlencode

from django.db.models import (
    Case,
    Count,
    F,
    IntegerField,
    Max,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
    Window,
)
from django.db.models.functions import Coalesce, RowNumber
from django.urls import reverse

from ..models import (
    Board,
    Card,
    CardEvent,
    CardKind,
    CardRun,
    Column,
    Membership,
    Role,
    Run,
    Stage,
    Tag,
    User,
    VerdictChoice,
)

SWIMLANES: tuple[tuple[str, str], ...] = (
    ("none", "No swimlanes"),
    ("hypothesis", "By hypothesis"),
    ("owner", "By owner"),
)
UNASSIGNED = "none"


@dataclass(frozen=True)
class BoardFilters:
    """Board filters as they appear in the URL, so a filtered board is a shareable link."""

    kind: str = ""
    owner: str = ""  # username, or "none" for unassigned cards
    tag: str = ""
    q: str = ""
    lanes: str = "none"

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> BoardFilters:
        kind = params.get("kind", "").strip()
        lanes = params.get("lanes", "").strip()
        return cls(
            kind=kind if kind in CardKind.values else "",
            owner=params.get("owner", "").strip()[:150],
            tag=params.get("tag", "").strip().lower()[:40],
            q=params.get("q", "").strip()[:200],
            lanes=lanes if lanes in dict(SWIMLANES) else "none",
        )

    @property
    def active(self) -> bool:
        return bool(self.kind or self.owner or self.tag or self.q)

    def querystring(self, **overrides: str) -> str:
        values = replace(self, **overrides)
        pairs = [(k, getattr(values, k)) for k in ("q", "kind", "owner", "tag", "lanes")]
        return urlencode([(k, v) for k, v in pairs if v and not (k == "lanes" and v == "none")])


@dataclass
class ColumnView:
    column: Column
    total: int

    @property
    def wip_limit(self) -> int | None:
        return self.column.wip_limit

    @property
    def over_limit(self) -> bool:
        return self.column.wip_limit is not None and self.total > self.column.wip_limit

    @property
    def at_limit(self) -> bool:
        return self.column.wip_limit is not None and self.total == self.column.wip_limit

    @property
    def aria_label(self) -> str:
        label = f"{self.column.name}: {self.total} card{'s' if self.total != 1 else ''}"
        if self.column.wip_limit is not None:
            label += f", WIP limit {self.column.wip_limit}"
            if self.over_limit:
                label += f", over the limit by {self.total - self.column.wip_limit}"
        return label


@dataclass
class Cell:
    column: Column
    cards: list[Card] = field(default_factory=list)
    hidden: int = 0  # cards of this cell not rendered yet ("show more" loads them)

    @property
    def shown(self) -> int:
        return len(self.cards)


@dataclass
class Lane:
    key: str
    title: str
    cells: list[Cell]
    lead: Card | None = None  # the hypothesis heading a hypothesis lane
    owner: User | None = None

    @property
    def count(self) -> int:
        return sum(len(c.cards) + c.hidden for c in self.cells)


@dataclass
class BoardView:
    board: Board
    filters: BoardFilters
    columns: list[ColumnView]
    lanes: list[Lane]
    members: list[Membership]
    tags: list[Tag]
    shown: int
    total: int


# Cards rendered per cell (column, or column within a swimlane) on the first load; the rest come
# through "show more" (board_cell_cards), so the page costs the same at 500 or 5,000 cards.
CELL_PAGE = 60
CELL_MORE_PAGE = 200


def card_queryset(board: Board) -> QuerySet[Card]:
    run_counts = (
        CardRun.objects.filter(card_id=OuterRef("pk")).order_by().values("card_id").annotate(n=Count("id")).values("n")
    )
    return (
        Card.objects.filter(board=board, archive__isnull=True)
        .select_related("owner", "parent__parent")
        .annotate(run_count=Coalesce(Subquery(run_counts, output_field=IntegerField()), Value(0)))
        .prefetch_related(Prefetch("tags", queryset=Tag.objects.order_by("name")))
        .order_by("position", "id")
    )


# What the board needs of each card, its owner and the two parents (lanes, the parent line): model
# instances with only these fields are several times cheaper to build than full Card rows.
_BOARD_FIELDS = (
    "id", "board_id", "column_id", "kind", "number", "key", "title", "position", "version", "flagged",
    "flag_reason", "verdict", "owner_id", "parent_id",
    "owner__id", "owner__username", "owner__display_name", "owner__first_name", "owner__last_name",
    "parent__id", "parent__kind", "parent__number", "parent__key", "parent__title", "parent__parent_id",
    "parent__parent__id", "parent__parent__kind", "parent__parent__number", "parent__parent__key",
    "parent__parent__title",
)


# Board order: Done columns list the most recently completed card first; other columns keep their
# position. One expression, so the database pages cells (window function) in the order shown.
_DONE_AT = Case(When(column__stage=Stage.DONE, then=Coalesce("completed_at", "updated_at")))
BOARD_ORDER = (_DONE_AT.desc(nulls_last=True), F("position").asc(), F("id").asc())


def _board_cards(board: Board) -> QuerySet[Card]:
    """card_queryset without the tag prefetch (tags come for the rendered cards only) and with
    only the fields the board shows; archived Done cards are off the board."""
    run_counts = (
        CardRun.objects.filter(card_id=OuterRef("pk")).order_by().values("card_id").annotate(n=Count("id")).values("n")
    )
    return (
        Card.objects.filter(board=board, archive__isnull=True)
        .select_related("owner", "parent__parent")
        .only(*_BOARD_FIELDS)
        .annotate(run_count=Coalesce(Subquery(run_counts, output_field=IntegerField()), Value(0)))
        .order_by(*BOARD_ORDER)
    )


def _filtered(qs: QuerySet[Card], filters: BoardFilters) -> QuerySet[Card]:
    if filters.kind:
        qs = qs.filter(kind=filters.kind)
    if filters.owner == UNASSIGNED:
        qs = qs.filter(owner__isnull=True)
    elif filters.owner:
        qs = qs.filter(owner__username=filters.owner)
    if filters.tag:
        qs = qs.filter(tags__name=filters.tag)
    if filters.q:
        qs = qs.filter(Q(key__icontains=filters.q) | Q(title__icontains=filters.q) | Q(statement__icontains=filters.q))
    return qs.distinct() if filters.tag else qs


def hypothesis_of(card: Card) -> Card | None:
    """The hypothesis a card belongs to: itself, its parent, or its grandparent (result of an experiment)."""
    node: Card | None = card
    for _ in range(3):
        if node is None:
            return None
        if node.kind == CardKind.HYPOTHESIS:
            return node
        node = node.parent
    return None


def _lanes(view_columns: list[Column], cards: list[Card], mode: str) -> list[Lane]:
    def empty_cells() -> list[Cell]:
        return [Cell(column=c) for c in view_columns]

    index = {c.pk: i for i, c in enumerate(view_columns)}
    lanes: dict[str, Lane] = {}
    order: list[tuple[object, ...]] = []
    for card in cards:
        if mode == "hypothesis":
            lead = hypothesis_of(card)
            key = f"h{lead.pk}" if lead else "h-none"
            if key not in lanes:
                title = f"{lead.key} · {lead.title}" if lead else "No hypothesis"
                lanes[key] = Lane(key=key, title=title, cells=empty_cells(), lead=lead)
                order.append((lead is None, lead.number if lead else 0, key))
        elif mode == "owner":
            owner = card.owner
            key = f"u{owner.pk}" if owner else "u-none"
            if key not in lanes:
                title = str(owner) if owner else "Unassigned"
                lanes[key] = Lane(key=key, title=title, cells=empty_cells(), owner=owner)
                order.append((owner is None, str(owner).lower() if owner else "", key))
        else:
            key = "all"
            if key not in lanes:
                lanes[key] = Lane(key=key, title="", cells=empty_cells())
                order.append((False, 0, key))
        lanes[key].cells[index[card.column_id]].cards.append(card)
    if not lanes:
        return [Lane(key="all", title="", cells=empty_cells())]
    return [lanes[o[-1]] for o in sorted(order, key=lambda o: o[:-1])]  # type: ignore[index]


def archived_cards(*, board: Board) -> list[Card]:
    """Cards taken off the board by Done archiving, newest archive first (one query)."""
    return list(
        Card.objects.filter(board=board, archive__isnull=False)
        .select_related("archive", "owner", "column")
        .order_by("-archive__archived_at", "-id")
    )


def archived_count(*, board: Board) -> int:
    return Card.objects.filter(board=board, archive__isnull=False).count()


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tag_names(card_ids: Sequence[int]) -> dict[int, list[str]]:
    """Tag names per card, for the rendered cards only (one query)."""
    out: dict[int, list[str]] = {pk: [] for pk in card_ids}
    if card_ids:
        rows = Card.tags.through.objects.filter(card_id__in=list(card_ids)).order_by("tag__name")
        for card_id, name in rows.values_list("card_id", "tag__name"):
            out[card_id].append(name)
    return out


def card_display(cards: Iterable[Card], board: Board, *, with_tags: bool = False) -> list[Card]:
    """Everything board/_card.html shows, as plain strings on each card: the template then does
    attribute lookups only (no per-card URL reverse, choice lookups, filters or number formatting),
    which is most of what a board page of thousands of cards used to cost. with_tags: read the
    cards' tags in one query (for cards fetched without the tag prefetch)."""
    cards = list(cards)
    tag_names = _tag_names([c.pk for c in cards]) if with_tags else None
    quick_prefix, quick_suffix = reverse("board_card_quick", args=[board.pk, 0]).rsplit("/0/", 1)
    kinds, verdicts = dict(CardKind.choices), dict(VerdictChoice.choices)
    out = []
    for card in cards:
        card.quick_url = f"{quick_prefix}/{card.pk}/{quick_suffix}"
        card.pk_text, card.version_text = str(card.pk), str(card.version)  # text skips number localisation
        card.kind_label = kinds.get(card.kind, card.kind)
        card.verdict_label = verdicts.get(card.verdict, "") if card.verdict else ""
        card.tag_names = tag_names[card.pk] if tag_names is not None else [t.name for t in card.tags.all()]
        owner = card.owner
        card.owner_label = str(owner) if owner is not None else ""
        card.owner_initial = card.owner_label[:1].upper()
        parent = card.parent if card.parent_id else None
        card.parent_title = parent.title if parent is not None else ""
        card.parent_line = f"{parent.key} · {_truncate(parent.title, 38)}" if parent is not None else ""
        runs = getattr(card, "run_count", 0) or 0
        card.runs_label = f"{runs} run{'' if runs == 1 else 's'}"
        card.runs_title = f"{runs} linked run{'' if runs == 1 else 's'}"
        aria = f"{card.key}, {card.kind_label}: {card.title}"
        if card.flagged:
            aria += ". Flagged"
        if owner is not None:
            aria += f". Owner {card.owner_label}"
        card.aria = aria
        out.append(card)
    return out


def board_card(*, board: Board, card_id: int) -> Card:
    """One card as the board renders it (for out-of-band swaps after an edit)."""
    return card_display([card_queryset(board).get(pk=card_id)], board)[0]


def _page_cells(lanes: list[Lane], limit: int | None) -> None:
    if limit is None:
        return
    for lane in lanes:
        for cell in lane.cells:
            if len(cell.cards) > limit:
                cell.hidden = len(cell.cards) - limit
                cell.cards = cell.cards[:limit]


def board_view(*, board: Board, filters: BoardFilters, paged: bool = True) -> BoardView:
    """The board with at most CELL_PAGE cards rendered per cell (all when not `paged`); counts stay
    exact. Without swimlanes the database does the paging (first CELL_PAGE cards per column by a
    window function, plus per-column counts), so the page costs the same at 500 or 5,000 cards."""
    columns = list(board.columns.order_by("position", "id"))
    column_ids = {c.pk for c in columns}
    qs = _filtered(_board_cards(board), filters)
    sql_paged = paged and filters.lanes == "none"
    if sql_paged:
        matching = dict(qs.order_by().values_list("column_id").annotate(n=Count("id", distinct=True)))
        ranked = qs.annotate(
            cell_rank=Window(RowNumber(), partition_by=[F("column_id")], order_by=list(BOARD_ORDER))
        )
        cards = [c for c in ranked.filter(cell_rank__lte=CELL_PAGE) if c.column_id in column_ids]
    else:
        cards = [c for c in qs if c.column_id in column_ids]
        matching = {}
        for card in cards:
            matching[card.column_id] = matching.get(card.column_id, 0) + 1
    if filters.active:
        totals = dict(
            Card.objects.filter(board=board, archive__isnull=True)
            .order_by().values_list("column_id").annotate(n=Count("id"))
        )
    else:
        totals = matching
    members = list(
        Membership.objects.filter(team_id=board.team_id).select_related("user").order_by("user__username")
    )
    lanes = _lanes(columns, cards, filters.lanes)
    if sql_paged:
        for cell in lanes[0].cells:
            cell.hidden = matching.get(cell.column.pk, 0) - len(cell.cards)
    else:
        _page_cells(lanes, CELL_PAGE if paged else None)
    card_display([card for lane in lanes for cell in lane.cells for card in cell.cards], board, with_tags=True)
    return BoardView(
        board=board,
        filters=filters,
        columns=[ColumnView(column=c, total=totals.get(c.pk, 0)) for c in columns],
        lanes=lanes,
        members=members,
        tags=list(Tag.objects.filter(team_id=board.team_id).order_by("name")),
        shown=sum(matching.get(c.pk, 0) for c in columns),
        total=sum(totals.values()),
    )


@dataclass
class CellPage:
    column: Column
    lane: str
    cards: list[Card]
    offset: int  # index of the first card in the cell
    hidden: int  # cards after this page


def board_cell_cards(
    *, board: Board, filters: BoardFilters, column_id: int, lane: str, offset: int, limit: int | None = None
) -> CellPage | None:
    """The next cards of one cell after `offset`, in board order and under the same filters and
    swimlanes as the page; None when the cell does not exist (any more)."""
    columns = list(board.columns.order_by("position", "id"))
    column = next((c for c in columns if c.pk == column_id), None)
    if column is None:
        return None
    cards = list(_filtered(_board_cards(board).filter(column_id=column_id), filters))
    lanes = _lanes(columns, cards, filters.lanes)
    cell = next((c for ln in lanes if ln.key == lane for c in ln.cells if c.column.pk == column_id), None)
    if cell is None:
        return CellPage(column=column, lane=lane, cards=[], offset=offset, hidden=0)
    offset = max(0, offset)
    page = cell.cards[offset : offset + (limit or CELL_MORE_PAGE)]
    return CellPage(
        column=column, lane=lane, cards=card_display(page, board, with_tags=True), offset=offset,
        hidden=max(0, len(cell.cards) - offset - len(page)),
    )


def column_totals(board: Board) -> list[dict[str, object]]:
    """Per-column card counts and WIP state, sent back to the board after a move."""
    counts = dict(
        Card.objects.filter(board=board, archive__isnull=True).order_by().values_list("column_id").annotate(
            n=Count("id")
        )
    )
    result = []
    for column in board.columns.order_by("position", "id"):
        view = ColumnView(column=column, total=counts.get(column.pk, 0))
        result.append(
            {
                "id": column.pk,
                "total": view.total,
                "wip_limit": column.wip_limit,
                "over_limit": view.over_limit,
                "at_limit": view.at_limit,
                "label": view.aria_label,
            }
        )
    return result


def board_stamp(board: Board) -> str:
    """A short token that changes whenever any card on the board changes, so an open board page can
    poll it cheaply and re-render only when needed. One query whatever the board's size: card count
    (catches deletes), latest card update (edits, moves) and latest event id (flags, notes, run links,
    which do not all touch updated_at)."""
    cards = Card.objects.filter(board_id=board.pk).order_by().values("board_id")
    events = CardEvent.objects.filter(board_id=board.pk).order_by().values("board_id")
    row = (
        Board.objects.filter(pk=board.pk)
        .values(
            n=Subquery(cards.annotate(n=Count("id")).values("n")),
            updated=Subquery(cards.annotate(m=Max("updated_at")).values("m")),
            event=Subquery(events.annotate(m=Max("id")).values("m")),
        )
        .first()
    )
    if row is None:
        return "0"
    updated = row["updated"]
    micros = int(updated.timestamp() * 1_000_000) if updated is not None else 0
    return f"{row['n'] or 0}-{row['event'] or 0}-{micros:x}"


def column_card_ids(column: Column, *, exclude_id: int | None = None) -> list[int]:
    qs = Card.objects.filter(column=column).exclude(pk=exclude_id).order_by("position", "id")
    return list(qs.values_list("pk", flat=True))


@dataclass
class QuickView:
    card: Card
    events: list[CardEvent]
    children: list[Card]
    runs: list[Run]
    run_count: int
    columns: list[Column]


def card_quick_view(*, card: Card, events: int = 8, runs: int = 5) -> QuickView:
    board = card.board
    card = card_queryset(board).select_related("column", "created_by").get(pk=card.pk)
    card.board = board
    recent_events = list(
        CardEvent.objects.filter(card=card)
        .select_related("actor", "from_column", "to_column")
        .order_by("-created_at", "-id")[:events]
    )
    children = list(card.children.order_by("number"))
    recent_runs = list(
        Run.objects.filter(card_links__card=card).order_by("-start_time", "-id").only(
            "id", "name", "external_id", "status", "start_time"
        )[:runs]
    )
    return QuickView(
        card=card,
        events=recent_events,
        children=children,
        runs=recent_runs,
        run_count=card.run_count,  # type: ignore[attr-defined]
        columns=list(board.columns.order_by("position", "id")),
    )


def parent_choices(*, board: Board, kind: str, exclude_id: int | None = None) -> QuerySet[Card]:
    """Cards a new or edited card of `kind` may hang under."""
    if kind == CardKind.EXPERIMENT:
        qs = Card.objects.filter(board=board, kind=CardKind.HYPOTHESIS)
    elif kind == CardKind.RESULT:
        qs = Card.objects.filter(board=board, kind__in=[CardKind.HYPOTHESIS, CardKind.EXPERIMENT])
    else:
        return Card.objects.none()
    return qs.exclude(pk=exclude_id).order_by("number")


def owner_choices(team_id: int) -> QuerySet[User]:
    """Who may own a card: the team's members and managers (never viewers)."""
    return User.objects.filter(
        memberships__team_id=team_id, memberships__role__in=[Role.MANAGER, Role.MEMBER]
    ).order_by("username")


def team_users(team_id: int) -> QuerySet[User]:
    return User.objects.filter(memberships__team_id=team_id).order_by("username")
