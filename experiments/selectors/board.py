"""Read side of the Kanban board: one page of columns, swimlanes and cards in a fixed number of
queries of bounded size however many cards the board holds. The database groups cards per lane and
column (exact counts), picks the first cells' cards with a window function, and the shown cards
come back as plain values (BoardCard), with their run counts and tags in one query each; members,
team tags, plus column totals when a filter hides cards."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
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


@dataclass(slots=True)
class BoardCard:
    """What the board shows of one card, read with values() (no model instances, no wide text
    columns); web.board_cards renders it."""

    id: int
    column_id: int
    kind: str
    key: str
    title: str
    version: int
    flagged: bool
    flag_reason: str
    verdict: str
    owner_label: str
    parent_key: str
    parent_title: str
    run_count: int = 0
    tag_names: list[str] = field(default_factory=list)

    @property
    def pk(self) -> int:
        return self.id


@dataclass
class Cell:
    column: Column
    cards: list[BoardCard] = field(default_factory=list)
    hidden: int = 0  # cards of this cell not rendered yet ("show more" loads them)

    @property
    def shown(self) -> int:
        return len(self.cards)


@dataclass
class Lane:
    key: str
    title: str
    cells: list[Cell]
    lead: Card | None = None  # the hypothesis heading a hypothesis lane (id, key, title, number only)
    owner: bool = False  # an owner lane (the header shows an avatar)

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
    lanes_hidden: int = 0  # swimlanes after these ("show more lanes" loads them)

    @property
    def lanes_next(self) -> int:
        return len(self.lanes)


# Cards rendered per cell on the first load: per column without swimlanes, per lane and column with
# them; the rest come through "show more" (board_cell_cards). With swimlanes the page also stops
# adding lanes after LANE_PAGE lanes or LANE_BUDGET cards ("show more lanes", board_lanes). So a
# page costs about the same at 500 or 5,000 cards, and each step is done by the database.
CELL_PAGE = 60
LANE_CELL_PAGE = 12
LANE_PAGE = 40
LANE_BUDGET = 300
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


# Board order: Done columns list the most recently completed card first; other columns keep their
# position. One expression, so the database pages cells (window function) in the order shown.
_DONE_AT = Case(When(column__stage=Stage.DONE, then=Coalesce("completed_at", "updated_at")))
BOARD_ORDER = (_DONE_AT.desc(nulls_last=True), F("position").asc(), F("id").asc())

# The columns a BoardCard is built from (run counts and tags come in one query each, for shown cards).
_CARD_VALUES = (
    "id", "column_id", "kind", "key", "title", "version", "flagged", "flag_reason", "verdict",
    "owner_id", "owner__username", "owner__display_name", "owner__first_name", "owner__last_name",
    "parent__key", "parent__title",
)


def _board_cards(board: Board) -> QuerySet[Card]:
    """Cards on the board (archived Done cards are off it), in board order."""
    return Card.objects.filter(board=board, archive__isnull=True).order_by(*BOARD_ORDER)


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


# The lane of a card, as SQL, so the database groups and pages swimlanes. By hypothesis: the card
# itself, its parent or its grandparent (result of an experiment), the first that is a hypothesis.
def _hyp_case(field_name: str) -> Case:
    return Case(
        When(kind=CardKind.HYPOTHESIS, then=F(field_name)),
        When(parent__kind=CardKind.HYPOTHESIS, then=F(f"parent__{field_name}")),
        When(parent__parent__kind=CardKind.HYPOTHESIS, then=F(f"parent__parent__{field_name}")),
        default=None,
        output_field=IntegerField(),
    )


def _with_lane(qs: QuerySet[Card], mode: str) -> tuple[QuerySet[Card], str | None]:
    """qs with the card's lane id available, and the name to read it by (None without swimlanes)."""
    if mode == "hypothesis":
        return qs.annotate(lane=_hyp_case("id")), "lane"
    if mode == "owner":
        return qs, "owner_id"
    return qs, None


def lane_key(mode: str, value: int | None) -> str:
    if mode == "hypothesis":
        return f"h{value}" if value is not None else "h-none"
    if mode == "owner":
        return f"u{value}" if value is not None else "u-none"
    return "all"


def _lane_value(mode: str, key: str) -> tuple[bool, int | None]:
    """The lane id a lane key stands for: (valid, id or None for "no hypothesis"/"unassigned")."""
    if mode == "none":
        return key == "all", 0
    prefix = "h" if mode == "hypothesis" else "u"
    if key == f"{prefix}-none":
        return True, None
    if key.startswith(prefix) and key[1:].isdigit():
        return True, int(key[1:])
    return False, None


def _in_lanes(name: str, values: Sequence[int | None]) -> Q:
    ids = [v for v in values if v is not None]
    q = Q(**{f"{name}__in": ids}) if ids else Q(pk__in=[])
    return q | Q(**{f"{name}__isnull": True}) if None in values else q


def _owner_label(row: Mapping[str, Any]) -> str:
    """str(User) from values() columns: display name, else full name, else username."""
    if row["owner_id"] is None:
        return ""
    full = f"{row['owner__first_name']} {row['owner__last_name']}".strip()
    return row["owner__display_name"] or full or row["owner__username"]


def _cards_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[BoardCard]:
    """BoardCards from values() rows, with run counts and tag names of these cards (two queries)."""
    rows = list(rows)
    ids = [r["id"] for r in rows]
    runs: dict[int, int] = {}
    tags: dict[int, list[str]] = {pk: [] for pk in ids}
    if ids:
        runs = dict(
            CardRun.objects.filter(card_id__in=ids).order_by().values_list("card_id").annotate(n=Count("id"))
        )
        for card_id, name in (
            Card.tags.through.objects.filter(card_id__in=ids).order_by("tag__name").values_list("card_id", "tag__name")
        ):
            tags[card_id].append(name)
    return [
        BoardCard(
            id=r["id"], column_id=r["column_id"], kind=r["kind"], key=r["key"], title=r["title"],
            version=r["version"], flagged=r["flagged"], flag_reason=r["flag_reason"], verdict=r["verdict"],
            owner_label=_owner_label(r), parent_key=r["parent__key"] or "", parent_title=r["parent__title"] or "",
            run_count=runs.get(r["id"], 0), tag_names=tags[r["id"]],
        )
        for r in rows
    ]


def archived_cards(*, board: Board) -> list[Card]:
    """Cards taken off the board by Done archiving, newest archive first (one query)."""
    return list(
        Card.objects.filter(board=board, archive__isnull=False)
        .select_related("archive", "owner", "column")
        .order_by("-archive__archived_at", "-id")
    )


def archived_count(*, board: Board) -> int:
    return Card.objects.filter(board=board, archive__isnull=False).count()


def board_card(*, board: Board, card_id: int) -> BoardCard:
    """One card as the board renders it (for out-of-band swaps after an edit)."""
    return _cards_from_rows(_board_cards(board).filter(pk=card_id).values(*_CARD_VALUES))[0]


@dataclass
class _LaneInfo:
    value: int | None
    counts: dict[int, int]  # matching cards per column
    sort: tuple[Any, ...] = ()
    title: str = ""


def _lane_infos(qs: QuerySet[Card], mode: str, column_ids: set[int]) -> list[_LaneInfo]:
    """Every lane with its cards per column, in lane order, from one grouped query."""
    extra: dict[str, Any] = {}
    if mode == "hypothesis":
        extra = {"lane_number": _hyp_case("number")}
    elif mode == "owner":
        extra = {f: F(f"owner__{f}") for f in ("username", "display_name", "first_name", "last_name")}
    qs, name = _with_lane(qs.annotate(**extra), mode)
    group = (name, "column_id", *extra) if name else ("column_id",)
    rows = qs.order_by().values(*group).annotate(n=Count("id", distinct=True))
    lanes: dict[int | None, _LaneInfo] = {}
    for row in rows:
        if row["column_id"] not in column_ids:
            continue
        value = row[name] if name else 0
        info = lanes.get(value)
        if info is None:
            info = lanes[value] = _LaneInfo(value=value, counts={})
            if mode == "hypothesis":
                info.sort = (value is None, row["lane_number"] or 0)
            elif mode == "owner":
                label = _owner_label({"owner_id": value, **{f"owner__{f}": row[f] for f in extra}})
                # The id breaks ties between equal names: "show more lanes" pages by position.
                info.title, info.sort = label or "Unassigned", (value is None, label.lower(), value or 0)
        info.counts[row["column_id"]] = info.counts.get(row["column_id"], 0) + row["n"]
    return sorted(lanes.values(), key=lambda i: i.sort)


def _lane_window(infos: list[_LaneInfo], offset: int) -> list[_LaneInfo]:
    """The lanes of one page from `offset`: up to LANE_PAGE lanes or LANE_BUDGET rendered cards
    (always at least one lane)."""
    page: list[_LaneInfo] = []
    budget = LANE_BUDGET
    for info in infos[offset:]:
        cost = sum(min(n, LANE_CELL_PAGE) for n in info.counts.values())
        if page and (len(page) >= LANE_PAGE or cost > budget):
            break
        page.append(info)
        budget -= cost
    return page


def _build_lanes(
    qs: QuerySet[Card], columns: list[Column], mode: str, infos: list[_LaneInfo]
) -> list[Lane]:
    """Lanes for `infos` with the first cards of each cell: one window-function query pages every
    cell at once (plus run counts, tags and, by hypothesis, the lanes' hypotheses)."""
    per_cell = CELL_PAGE if mode == "none" else LANE_CELL_PAGE
    qs, name = _with_lane(qs, mode)
    partition: list[Any] = [F("column_id")]
    if name:
        qs = qs.filter(_in_lanes(name, [i.value for i in infos]))
        partition.insert(0, F(name))
    ranked = qs.annotate(cell_rank=Window(RowNumber(), partition_by=partition, order_by=list(BOARD_ORDER)))
    fields = _CARD_VALUES if name in (None, "owner_id") else (name, *_CARD_VALUES)
    rows = list(ranked.filter(cell_rank__lte=per_cell).values(*fields))
    cards = _cards_from_rows(rows)
    leads: dict[int, Card] = {}
    if mode == "hypothesis":
        lead_ids = [i.value for i in infos if i.value is not None]
        leads = {c.pk: c for c in Card.objects.filter(pk__in=lead_ids).only("id", "key", "title", "number")}
    lanes: dict[int | None, Lane] = {}
    for info in infos:
        lead = leads.get(info.value) if info.value is not None else None
        if mode == "hypothesis":
            title = f"{lead.key} · {lead.title}" if lead else "No hypothesis"
        else:
            title = info.title
        cells = [Cell(column=c, hidden=info.counts.get(c.pk, 0)) for c in columns]
        lanes[info.value] = Lane(
            key=lane_key(mode, info.value), title=title, cells=cells, lead=lead, owner=mode == "owner"
        )
    index = {c.pk: i for i, c in enumerate(columns)}
    for row, card in zip(rows, cards, strict=True):
        lane = lanes.get(row[name] if name else 0)
        if lane is not None and card.column_id in index:
            cell = lane.cells[index[card.column_id]]
            cell.cards.append(card)
            cell.hidden -= 1
    return list(lanes.values())


def _board_lanes(
    board: Board, filters: BoardFilters, columns: list[Column], offset: int
) -> tuple[list[_LaneInfo], list[Lane]]:
    """(all lanes' infos, lanes of the page from `offset`)."""
    qs = _filtered(_board_cards(board), filters)
    mode = filters.lanes
    infos = _lane_infos(qs, mode, {c.pk for c in columns})
    if mode == "none":
        infos = infos or [_LaneInfo(value=0, counts={})]
        return infos, _build_lanes(qs, columns, mode, infos)
    return infos, _build_lanes(qs, columns, mode, _lane_window(infos, offset)) if infos else []


def board_view(*, board: Board, filters: BoardFilters) -> BoardView:
    """The board's first page: CELL_PAGE cards per column, or with swimlanes the first lanes with
    LANE_CELL_PAGE cards per cell; counts (WIP totals, cells, lanes) stay exact. A fixed number of
    queries of fixed-size results however many cards the board holds."""
    columns = list(board.columns.order_by("position", "id"))
    infos, lanes = _board_lanes(board, filters, columns, 0)
    matching: dict[int, int] = {}
    for info in infos:
        for column_id, n in info.counts.items():
            matching[column_id] = matching.get(column_id, 0) + n
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
    if not lanes:
        lanes = [Lane(key="all", title="", cells=[Cell(column=c) for c in columns])]
    return BoardView(
        board=board,
        filters=filters,
        columns=[ColumnView(column=c, total=totals.get(c.pk, 0)) for c in columns],
        lanes=lanes,
        members=members,
        tags=list(Tag.objects.filter(team_id=board.team_id).order_by("name")),
        shown=sum(matching.get(c.pk, 0) for c in columns),
        total=sum(totals.values()),
        lanes_hidden=max(0, len(infos) - len(lanes)) if filters.lanes != "none" else 0,
    )


@dataclass
class LanePage:
    lanes: list[Lane]
    offset: int
    hidden: int  # lanes after these

    @property
    def next(self) -> int:
        return self.offset + len(self.lanes)


def board_lanes(*, board: Board, filters: BoardFilters, offset: int) -> LanePage:
    """The swimlanes after the first `offset` ("show more lanes"), under the page's filters."""
    columns = list(board.columns.order_by("position", "id"))
    offset = max(0, offset)
    infos, lanes = _board_lanes(board, filters, columns, offset)
    if filters.lanes == "none":
        return LanePage(lanes=[], offset=offset, hidden=0)
    return LanePage(lanes=lanes, offset=offset, hidden=max(0, len(infos) - offset - len(lanes)))


@dataclass
class CellPage:
    column: Column
    lane: str
    cards: list[BoardCard]
    offset: int  # index of the first card in the cell
    hidden: int  # cards after this page


def board_cell_cards(
    *, board: Board, filters: BoardFilters, column_id: int, lane: str, offset: int, limit: int | None = None
) -> CellPage | None:
    """The next cards of one cell after `offset`, in board order and under the same filters and
    swimlanes as the page (two queries of the page's size plus run counts and tags); None when the
    cell does not exist (any more)."""
    column = board.columns.filter(pk=column_id).first()
    if column is None:
        return None
    offset = max(0, offset)
    valid, value = _lane_value(filters.lanes, lane)
    if not valid:
        return CellPage(column=column, lane=lane, cards=[], offset=offset, hidden=0)
    qs = _filtered(_board_cards(board).filter(column_id=column_id), filters)
    qs, name = _with_lane(qs, filters.lanes)
    if name:
        qs = qs.filter(_in_lanes(name, [value]))
    total = qs.order_by().aggregate(n=Count("id", distinct=True))["n"]
    end = offset + (limit or CELL_MORE_PAGE)
    cards = _cards_from_rows(qs.values(*_CARD_VALUES)[offset:end])
    return CellPage(column=column, lane=lane, cards=cards, offset=offset, hidden=max(0, total - offset - len(cards)))


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
