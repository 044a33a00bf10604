"""Standup reads: the window since the last standup and everything that happened in it.

The query count is constant: runs, card links, cards, metrics, proposals, stuck cards and WIP are
each one query whatever the number of rows, so a night of 10,000 runs costs the same round trips
as a night of ten. Rendering is bounded too: each card shows a few run chips and a count.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.db.models import BooleanField, Count, ExpressionWrapper, F, Max, Q, QuerySet, Value
from django.utils import timezone

from .. import stats as stats_lib
from ..errors import DomainError
from ..models import (
    TERMINAL_STATUSES,
    Board,
    Card,
    CardKind,
    CardRun,
    Column,
    Direction,
    LatestMetric,
    Run,
    RunStatus,
    Stage,
    Team,
    VerdictProposal,
    VerdictStatus,
)

ACTIVE_STATUSES = (RunStatus.RUNNING, RunStatus.SCHEDULED)
FAILED_STATUSES = (RunStatus.FAILED, RunStatus.KILLED)
MAX_WINDOW_DAYS = 31
CHIPS_PER_CARD = 8
UNLINKED_SHOWN = 50

# --- Window ------------------------------------------------------------------------------------



def _at(day: dt.date, time: dt.time, tz: dt.tzinfo) -> dt.datetime:
    # zoneinfo resolves DST gaps/folds itself (fold=0: the earlier offset). Returned in UTC because
    # Python subtracts and compares two datetimes sharing one tzinfo by wall clock, which is wrong
    # across a DST change.
    return dt.datetime.combine(day, time, tzinfo=tz).astimezone(dt.UTC)


def window_start_before(team: Team, moment: dt.datetime) -> dt.datetime:
    """Latest occurrence of the team's window-start time strictly before `moment`, in the team's timezone.

    With the default 18:00 this is 18:00 yesterday all morning (and 18:00 today once the evening starts).
    """
    tz = team.zone
    local = moment.astimezone(tz)
    candidate = _at(local.date(), team.standup_window_start, tz)
    if candidate >= moment:
        candidate = _at(local.date() - dt.timedelta(days=1), team.standup_window_start, tz)
    return candidate


def standup_at(team: Team, day: dt.date) -> dt.datetime:
    """The team's standup on a given local day, as an aware datetime."""
    return _at(day, team.standup_time, team.zone)


def standup_today(team: Team, now: dt.datetime | None = None) -> dt.datetime:
    now = now or timezone.now()
    return standup_at(team, now.astimezone(team.zone).date())


def digest_window(team: Team, window_end: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    return window_start_before(team, window_end), window_end


_RELATIVE = re.compile(r"^(\d{1,3})\s*([hd])$", re.IGNORECASE)


def parse_since(value: str | None, *, team: Team, now: dt.datetime) -> dt.datetime | None:
    """Parse ?since=: '12h', '3d', a date (midnight in the team's timezone) or an ISO datetime.

    Naive datetimes are read in the team's timezone. Raises DomainError with a message for the page.
    """
    value = (value or "").strip()
    if not value:
        return None
    tz = team.zone
    match = _RELATIVE.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        since = now - (dt.timedelta(hours=amount) if unit == "h" else dt.timedelta(days=amount))
    else:
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                since = _at(dt.date.fromisoformat(value), dt.time(0, 0), tz)
            else:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
                since = parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)
        except ValueError:
            raise DomainError(
                f"Could not read since={value!r}. Use a date (2025-05-14), a date and time "
                "(2025-05-14T18:00) or a span such as 12h or 3d.",
                field="since",
            ) from None
    since = since.astimezone(dt.UTC)
    if since >= now:
        raise DomainError("The start of the window must be in the past.", field="since")
    if now - since > dt.timedelta(days=MAX_WINDOW_DAYS):
        raise DomainError(f"Pick a start within the last {MAX_WINDOW_DAYS} days.", field="since")
    return since


@dataclass(frozen=True)
class Window:
    start: dt.datetime
    end: dt.datetime
    tz: dt.tzinfo
    custom: bool = False

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    @property
    def local_start(self) -> dt.datetime:
        return self.start.astimezone(self.tz)

    @property
    def local_end(self) -> dt.datetime:
        return self.end.astimezone(self.tz)


def standup_window(*, team: Team, now: dt.datetime | None = None, since: str | None = None) -> Window:
    """Window for the standup page: since the last window start (or ?since=) until now."""
    now = now or timezone.now()
    now = now.astimezone(dt.UTC)
    custom = parse_since(since, team=team, now=now)
    start = custom or window_start_before(team, now)
    return Window(start=start, end=now, tz=team.zone, custom=custom is not None)


# --- Overview ----------------------------------------------------------------------------------


def fmt_value(value: float | None, is_nan: bool = False, *, signed: bool = False) -> str:
    """Metric value for display: 4 significant digits; NaN stays visible as NaN."""
    if is_nan or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def proposal_stat_items(stats: dict | None) -> list[tuple[str, str]]:
    """A verdict proposal's stats (as stored by services.verdicts) as (label, text) pairs for display."""
    stats = stats or {}
    items: list[tuple[str, str]] = []
    n, mean, std = _num(stats.get("n")), _num(stats.get("mean")), _num(stats.get("std"))
    if stats.get("metric_key"):
        items.append(("metric", str(stats["metric_key"])))
    if n is not None:
        min_runs = _num(stats.get("min_runs"))
        items.append(("runs", f"{int(n)}" + (f" of {int(min_runs)} needed" if min_runs and n < min_runs else "")))
    if mean is not None:
        items.append(("mean ± std", fmt_value(mean) + (f" ± {fmt_value(std)}" if std is not None else "")))
    low, high = _num(stats.get("ci_low")), _num(stats.get("ci_high"))
    if low is not None and high is not None:
        level = _num(stats.get("ci_level")) or 0.95
        items.append((f"{level:.0%} CI", f"{fmt_value(low)} to {fmt_value(high)}"))
    for key, label, signed in (("baseline", "baseline", False), ("delta", "Δ vs baseline", True),
                               ("threshold", "threshold", False), ("min_delta", "min Δ", True)):
        value = _num(stats.get(key))
        if value is not None:
            items.append((label, fmt_value(value, signed=signed)))
    # The verdict's effect size, p-value, test and power (selectors.verdicts), as on the card.
    from .verdicts import verdict_detail_items

    shown = {"Effect", "Hedges' g", "p (one-sided)", "Test", "Power"}
    items.extend((label.lower() if label != "Hedges' g" else label, value)
                 for label, value in verdict_detail_items(stats) if label in shown)
    if stats.get("exploratory"):
        items.append(("exploratory", f"criterion amended after {stats.get('amended_after_runs')} runs"))
    return items


@dataclass
class RunRow:
    id: int
    name: str
    status: str
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    seed: int | None
    user_label: str
    value: float | None = None
    is_nan: bool = False
    baseline: bool = False

    @property
    def label(self) -> str:
        return self.name or f"run {self.id}"

    @property
    def value_display(self) -> str:
        return fmt_value(self.value, self.is_nan)

    @property
    def duration(self) -> dt.timedelta | None:
        if self.start_time and self.end_time:
            return self.end_time - self.start_time
        return None

    @property
    def tooltip(self) -> str:
        """Chip title built in Python: a night can show thousands of chips, and one attribute beats
        a dozen template lookups and filters per chip."""
        parts = [self.label, self.status.lower()]
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        duration = self.duration
        if duration:
            parts.append(str(duration))
        parts.append(self.user_label)
        return " · ".join(parts)


@dataclass
class CardStats:
    metric_key: str
    direction: str
    n: int = 0
    new_n: int = 0
    nan_n: int = 0
    mean: float | None = None
    std: float | None = None
    baseline: float | None = None
    baseline_source: str = ""
    threshold: float | None = None
    values: list[float] = field(default_factory=list)

    @property
    def delta(self) -> float | None:
        if self.mean is None or self.baseline is None:
            return None
        return self.mean - self.baseline

    @property
    def mean_display(self) -> str:
        return fmt_value(self.mean)

    @property
    def std_display(self) -> str:
        return fmt_value(self.std)

    @property
    def baseline_display(self) -> str:
        return fmt_value(self.baseline)

    @property
    def delta_display(self) -> str:
        return fmt_value(self.delta, signed=True)

    @property
    def threshold_display(self) -> str:
        return fmt_value(self.threshold)

    @property
    def improved(self) -> bool | None:
        """True if the change goes the hypothesis's way, False if against it, None if unknown or zero."""
        delta = self.delta
        if delta is None or delta == 0 or not self.direction:
            return None
        return (delta > 0) == (self.direction == Direction.MAXIMIZE)


@dataclass
class CardGroup:
    card: Card
    runs: list[RunRow]
    total: int
    stats: CardStats | None = None
    columns: list[Column] = field(default_factory=list)  # move targets on the card's board

    @property
    def owner_label(self) -> str:
        return str(self.card.owner) if self.card.owner_id else "Unassigned"

    @property
    def hidden(self) -> int:
        return max(0, self.total - len(self.runs))


@dataclass
class StuckCard:
    card: Card
    last_activity: dt.datetime
    active_runs: int
    columns: list[Column] = field(default_factory=list)

    @property
    def idle_hours(self) -> int:
        return int((timezone.now() - self.last_activity).total_seconds() // 3600)


@dataclass
class StandupData:
    team: Team
    board: Board | None
    window: Window
    finished: list[CardGroup]
    failed: list[CardGroup]
    running: list[CardGroup]
    counts: dict[str, int]
    proposals: list[VerdictProposal]
    stuck: list[StuckCard]
    wip_over: list[Column]
    unlinked: list[RunRow]
    unlinked_total: int
    columns_by_board: dict[int, list[Column]]
    boards: list[Board]
    cards: dict[int, Card]
    stats: dict[int, CardStats]


def _runs_in_window(*, team: Team, board: Board | None, start: dt.datetime, end: dt.datetime) -> QuerySet[Run]:
    in_window = Q(status__in=TERMINAL_STATUSES, end_time__gte=start, end_time__lt=end)
    # Still running = running now, whenever it started (a 30-hour training job still matters).
    active = Q(status__in=ACTIVE_STATUSES, start_time__lt=end)
    runs = Run.objects.filter(team=team, lifecycle_stage="active").filter(in_window | active)
    if board is not None:
        runs = runs.filter(pk__in=CardRun.objects.filter(card__board=board).values("run_id"))
    return runs


def _metric_of(card: Card) -> tuple[str, str, float | None]:
    """The hypothesis metric (key, direction, threshold) a card's runs are judged on: its own if it is a
    hypothesis, else its nearest hypothesis ancestor's (loaded with select_related, never queried here)."""
    node: Card | None = card
    for _ in range(3):
        if node is None:
            break
        if node.kind == CardKind.HYPOTHESIS:
            return node.metric_key, node.direction, node.threshold
        if not node.parent_id or not Card.parent.is_cached(node):
            break
        node = node.parent
    return card.metric_key, card.direction, card.threshold


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std across seeds (std needs two runs)."""
    if not values:
        return None, None
    return stats_lib.mean(values), (stats_lib.sample_std(values) if len(values) > 1 else None)


def card_metric_stats(
    *, cards: Iterable[Card], window_start: dt.datetime | None = None
) -> tuple[dict[int, CardStats], dict[int, dict[int, tuple[float, bool]]]]:
    """Mean ± std of each card's hypothesis metric over its finished runs, and its baseline.

    Two queries for any number of cards (three if some card has a baseline_run). Returns the stats per
    card id and, per card, the metric value of each of its runs ({run_id: (value, is_nan)}) so chips can show them.
    """
    cards = list(cards)
    keyed = {c.pk: _metric_of(c) for c in cards}
    keys = sorted({k for k, _, _ in keyed.values() if k})
    if not keys:
        return {}, {}
    card_ids = [c.pk for c in cards if keyed[c.pk][0]]
    # Links first (driven by the card index), then latest metrics of those runs through an IN
    # subquery on the (key, run) index. Run status is filtered here in Python: with a status
    # condition in SQL, SQLite starts from the status index and probes every card per run.
    card_links = CardRun.objects.filter(card_id__in=card_ids)
    # "Ended in the window" is computed by the database: converting thousands of end times to
    # datetimes only to compare them with one moment was a large share of this function's time.
    is_new = (
        ExpressionWrapper(Q(run__end_time__gte=window_start), output_field=BooleanField())
        if window_start is not None
        else Value(False, output_field=BooleanField())
    )
    links = [
        (card_id, run_id, is_baseline, new)
        for card_id, run_id, is_baseline, status, new in card_links.annotate(is_new=is_new).values_list(
            "card_id", "run_id", "is_baseline", "run__status", "is_new"
        )
        if status == RunStatus.FINISHED
    ]
    finished = {run_id for _, run_id, _, _ in links}
    metrics: dict[tuple[int, str], tuple[float, bool]] = {
        (run_id, key): (value, is_nan)
        for run_id, key, value, is_nan in LatestMetric.objects.filter(
            key__in=keys, run_id__in=card_links.values("run_id")
        ).values_list("run_id", "key", "value", "is_nan")
        if run_id in finished
    }
    # A card's baseline_run is usually not linked to it; fetch those few values (no query if none).
    baseline_runs = [c.baseline_run_id for c in cards if c.baseline_run_id and keyed[c.pk][0]]
    if baseline_runs:
        for run_id, key, value, is_nan in LatestMetric.objects.filter(
            run_id__in=baseline_runs, key__in=keys, run__status=RunStatus.FINISHED
        ).values_list("run_id", "key", "value", "is_nan"):
            metrics[(run_id, key)] = (value, is_nan)
    stats: dict[int, CardStats] = {}
    per_run: dict[int, dict[int, tuple[float, bool]]] = defaultdict(dict)
    baseline_values: dict[int, list[float]] = defaultdict(list)
    for card in cards:
        key, direction, threshold = keyed[card.pk]
        if key:
            stats[card.pk] = CardStats(metric_key=key, direction=direction, threshold=threshold)
    for card_id, run_id, is_baseline, new in links:
        s = stats.get(card_id)
        if s is None:
            continue
        point = metrics.get((run_id, s.metric_key))
        if point is None:
            continue
        per_run[card_id][run_id] = point
        value, is_nan = point
        if is_baseline:
            if not is_nan:
                baseline_values[card_id].append(value)
            continue
        if is_nan or math.isinf(value):
            s.nan_n += 1
            continue
        s.values.append(value)
        if new:
            s.new_n += 1
    for card in cards:
        s = stats.get(card.pk)
        if s is None:
            continue
        s.n = len(s.values)
        s.mean, s.std = _mean_std(s.values)
        # Same precedence as the verdict (services/verdicts.py): baseline-linked runs, then the
        # experiment's baseline_run, then its baseline_value, so standup and proposal agree.
        run_point = metrics.get((card.baseline_run_id, s.metric_key)) if card.baseline_run_id else None
        if baseline_values.get(card.pk):
            s.baseline, _ = _mean_std(baseline_values[card.pk])
            s.baseline_source = f"{len(baseline_values[card.pk])} baseline run(s)"
        elif run_point is not None and not run_point[1]:
            s.baseline, s.baseline_source = run_point[0], "baseline run"
        elif card.baseline_value is not None:
            s.baseline, s.baseline_source = card.baseline_value, "baseline value"
    return stats, per_run


RUN_FIELDS = (
    "id", "name", "external_id", "status", "start_time", "end_time", "seed",
    "user_name", "user__username", "user__display_name",
)
# Positions in a RUN_FIELDS tuple: runs stay plain tuples until they are shown.
R_ID, R_STATUS, R_START, R_END = 0, 3, 4, 5


def _run_row(row: tuple, *, baseline: bool = False, point: tuple[float, bool] | None = None) -> RunRow:
    run_id, name, external_id, status, start, end, seed, user_name, username, display_name = row
    result = RunRow(
        id=run_id,
        name=name or external_id[:12],
        status=status,
        start_time=start,
        end_time=end,
        seed=seed,
        user_label=display_name or username or user_name or "unknown",
        baseline=baseline,
    )
    if point is not None:
        result.value, result.is_nan = point
    return result


def _owner_sort(group: CardGroup) -> tuple:
    return (group.card.owner_id is None, group.owner_label.lower(), group.card.board_id, group.card.number)


def standup_overview(
    *, team: Team, window: Window, board: Board | None = None, now: dt.datetime | None = None
) -> StandupData:
    now = now or timezone.now()
    runs_qs = _runs_in_window(team=team, board=board, start=window.start, end=window.end)
    runs = {
        row[R_ID]: row for row in runs_qs.order_by("-end_time", "-start_time", "-id").values_list(*RUN_FIELDS)
    }
    link_qs = CardRun.objects.filter(run__in=runs_qs.values("pk"))
    if board is not None:
        link_qs = link_qs.filter(card__board=board)
    links = list(link_qs.values_list("card_id", "run_id", "is_baseline"))
    card_ids_sq = link_qs.values("card_id")
    cards = {
        c.pk: c
        for c in Card.objects.filter(pk__in=card_ids_sq).select_related("owner", "column", "board", "parent__parent")
    }
    stats, per_run = card_metric_stats(cards=cards.values(), window_start=window.start)

    # Group runs by section and card; runs linked to several cards appear under each.
    # Only (run tuple, is_baseline) pairs are grouped; RunRow objects are built for the few chips shown.
    section_of = {status: "running" for status in ACTIVE_STATUSES} | {status: "failed" for status in FAILED_STATUSES}
    grouped: dict[str, dict[int, list[tuple[tuple, bool]]]] = {"finished": {}, "failed": {}, "running": {}}
    section_runs: dict[str, set[int]] = {"finished": set(), "failed": set(), "running": set()}
    for card_id, run_id, is_baseline in links:
        base = runs.get(run_id)
        if base is None or card_id not in cards:
            continue
        section = section_of.get(base[R_STATUS], "finished")
        grouped[section].setdefault(card_id, []).append((base, is_baseline))
        section_runs[section].add(run_id)

    def latest_first(pair: tuple[tuple, bool]) -> dt.datetime:
        return pair[0][R_END] or pair[0][R_START] or now

    def groups(section: str) -> list[CardGroup]:
        result = []
        for card_id, pairs in grouped[section].items():
            pairs.sort(key=latest_first, reverse=True)
            points = per_run.get(card_id, {})
            chips = [
                _run_row(base, baseline=is_baseline, point=points.get(base[R_ID]))
                for base, is_baseline in pairs[:CHIPS_PER_CARD]
            ]
            result.append(CardGroup(card=cards[card_id], runs=chips, total=len(pairs), stats=stats.get(card_id)))
        return sorted(result, key=_owner_sort)

    finished, failed, running = groups("finished"), groups("failed"), groups("running")
    # Runs shown in each section (a run linked to two cards is counted once).
    linked_counts = {section: len(ids) for section, ids in section_runs.items()}
    linked_runs = set().union(*section_runs.values())

    unlinked_ids: list[int] = []
    if board is None:
        unlinked_ids = [run_id for run_id in runs if run_id not in linked_runs]

    status_counts: dict[str, int] = defaultdict(int)
    for row in runs.values():
        status_counts[row[R_STATUS]] += 1
    counts = {
        "finished": status_counts[RunStatus.FINISHED],
        "failed": sum(status_counts[s] for s in FAILED_STATUSES),
        "running": sum(status_counts[s] for s in ACTIVE_STATUSES),
        "cards": len(cards),
    }

    proposals_qs = VerdictProposal.objects.filter(
        status=VerdictStatus.PROPOSED, card__board__team=team, card__board__archived=False
    ).select_related("card__owner", "card__board", "card__column")
    if board is not None:
        proposals_qs = proposals_qs.filter(card__board=board)
    proposals = list(proposals_qs.order_by("created_at", "id"))
    for proposal in proposals:
        proposal.stat_items = proposal_stat_items(proposal.stats)

    stuck = standup_stuck_cards(team=team, board=board, now=now)
    wip_over = standup_wip_over(team=team, board=board)

    boards = list(Board.objects.filter(team=team, archived=False).order_by("name"))
    board_ids = {b.pk for b in boards}
    columns_by_board: dict[int, list[Column]] = defaultdict(list)
    for column in Column.objects.filter(board_id__in=board_ids).order_by("board_id", "position", "id"):
        columns_by_board[column.board_id].append(column)

    for group in (*finished, *failed, *running, *stuck):
        group.columns = columns_by_board.get(group.card.board_id, [])
    counts.update(
        {f"{section}_linked": n for section, n in linked_counts.items()},
        proposals=len(proposals), stuck=len(stuck), wip_over=len(wip_over), unlinked=len(unlinked_ids)
    )
    return StandupData(
        team=team,
        board=board,
        window=window,
        finished=finished,
        failed=failed,
        running=running,
        counts=counts,
        proposals=proposals,
        stuck=stuck,
        wip_over=wip_over,
        unlinked=[_run_row(runs[run_id]) for run_id in unlinked_ids[:UNLINKED_SHOWN]],
        unlinked_total=len(unlinked_ids),
        columns_by_board=dict(columns_by_board),
        boards=boards,
        cards=cards,
        stats=stats,
    )


def standup_stuck_cards(*, team: Team, board: Board | None = None, now: dt.datetime | None = None) -> list[StuckCard]:
    """Cards in a running-stage column with no run started, finished or linked for stuck_after_hours."""
    now = now or timezone.now()
    qs = Card.objects.filter(board__team=team, board__archived=False, column__stage=Stage.RUNNING)
    if board is not None:
        qs = qs.filter(board=board)
    qs = qs.annotate(
        last_start=Max("run_links__run__start_time"),
        last_end=Max("run_links__run__end_time"),
        last_link=Max("run_links__created_at"),
        active_runs=Count("run_links", filter=Q(run_links__run__status__in=ACTIVE_STATUSES)),
    ).select_related("owner", "column", "board")
    limit = now - dt.timedelta(hours=team.stuck_after_hours)
    # Only cards with no activity after the limit come back (each moment missing or older); spelled
    # out with isnull because NULL comparisons would otherwise drop cards that never had a run.
    for moment in ("last_start", "last_end", "last_link", "started_at"):
        qs = qs.filter(Q(**{f"{moment}__isnull": True}) | Q(**{f"{moment}__lt": limit}))
    stuck = []
    for card in qs:
        moments = [m for m in (card.last_start, card.last_end, card.last_link, card.started_at) if m]
        last = max(moments) if moments else card.created_at
        if last < limit:
            stuck.append(StuckCard(card=card, last_activity=last, active_runs=card.active_runs))
    stuck.sort(key=lambda s: s.last_activity)
    return stuck


def standup_wip_over(*, team: Team, board: Board | None = None) -> list[Column]:
    qs = Column.objects.filter(board__team=team, board__archived=False, wip_limit__isnull=False)
    if board is not None:
        qs = qs.filter(board=board)
    columns = list(
        qs.annotate(card_count=Count("cards"))
        .filter(card_count__gt=F("wip_limit"))
        .select_related("board")
        .order_by("board__name", "position")
    )
    for column in columns:
        column.over_by = column.card_count - column.wip_limit
    return columns


def card_sparkline_points(*, card: Card, window_start: dt.datetime | None = None) -> dict:
    """Metric of each finished run of a card in end-time order, plus mean and baseline, for a sparkline."""
    stats, _ = card_metric_stats(cards=[card], window_start=window_start)
    s = stats.get(card.pk)
    if s is None:
        return {"metric": "", "points": [], "mean": None, "std": None, "baseline": None}
    rows = (
        LatestMetric.objects.filter(
            key=s.metric_key, run__card_links__card=card, run__card_links__is_baseline=False,
            run__status=RunStatus.FINISHED,
        )
        .order_by("run__end_time", "run_id")
        .values_list("run_id", "run__name", "run__external_id", "run__end_time", "run__seed", "value", "is_nan")
    )
    points = []
    for run_id, name, external_id, end_time, seed, value, is_nan in rows:
        if is_nan or math.isinf(value):
            continue
        points.append(
            {
                "run": run_id,
                "name": name or external_id[:12],
                "end": end_time.isoformat() if end_time else None,
                "seed": seed,
                "value": value,
                "new": bool(window_start and end_time and end_time >= window_start),
            }
        )
    return {
        "metric": s.metric_key,
        "direction": s.direction,
        "points": points,
        "mean": s.mean,
        "std": s.std,
        "baseline": s.baseline,
        "threshold": s.threshold,
    }


def teams_due_for_digest(*, now: dt.datetime | None = None) -> list[tuple[int, dt.datetime]]:
    """(team id, window end) for teams whose standup time passed today in their timezone and that have
    no team-wide digest for that window yet. Two queries for any number of teams."""
    from ..models import StandupDigest

    now = now or timezone.now()
    candidates: list[tuple[int, dt.datetime]] = []
    for team in Team.objects.only("pk", "standup_time", "timezone"):
        end = standup_today(team, now)
        if end <= now:
            candidates.append((team.pk, end))
    if not candidates:
        return []
    ends = {end for _, end in candidates}
    done = set(
        StandupDigest.objects.filter(
            board__isnull=True, team_id__in=[t for t, _ in candidates], window_end__in=ends
        ).values_list("team_id", "window_end")
    )
    return [(team_id, end) for team_id, end in candidates if (team_id, end) not in done]
