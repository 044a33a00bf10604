"""Velocity report: what a team got done per iteration, day or week.

Every number comes from a fixed handful of queries whatever the size of the history: counts are
aggregated in the database or fetched as compact value lists and bucketed here. Periods follow the
team's timezone. Definitions (also shown on the page):

- hypotheses resolved: hypothesis cards whose verdict was decided in the period (card.decided_at, or
  the latest confirmed/overridden VerdictProposal when the card has no decision time);
- experiments completed: experiment cards that first reached a Done column in the period (CardEvent log);
- runs finished / failed: linked or not, by Run.end_time and terminal status;
- committed vs completed: IterationItems of iterations that started in the period, as frozen at close;
- time to first signal: card started -> first FINISHED run linked to it (or, for a hypothesis, to one of
  its experiments); counted in the period the signal arrived; cards marked started after that are left out;
- decision latency: last linked run ending before the decision -> verdict decided.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.db.models import Count, Exists, Min, OuterRef, Q, QuerySet
from django.utils import timezone

from ..models import (
    TERMINAL_STATUSES,
    Board,
    Card,
    CardEvent,
    CardKind,
    CardRun,
    EventKind,
    Iteration,
    IterationState,
    Run,
    RunStatus,
    Stage,
    Team,
    VerdictChoice,
)
from .evidence import decided_hypotheses
from .sql import EpochSeconds, InIds

GROUPS: dict[str, str] = {"day": "Day", "week": "Week", "iteration": "Iteration"}
DEFAULT_DAYS: dict[str, int] = {"day": 14, "week": 84, "iteration": 14}
MAX_RANGE_DAYS = 400
VERDICT_COLORS = {
    VerdictChoice.SUPPORTED: "#12805c",
    VerdictChoice.REFUTED: "#c0362c",
    VerdictChoice.INCONCLUSIVE: "#b25e09",
    VerdictChoice.NO_EFFECT: "#64748b",
}


# --- Parameters and periods ------------------------------------------------------------------


@dataclass
class ReportParams:
    group: str
    date_from: dt.date
    date_to: dt.date  # inclusive
    zone: dt.tzinfo
    board: Board | None = None
    kind: str = "work"
    errors: list[str] = field(default_factory=list)

    @property
    def start(self) -> dt.datetime:
        return local_midnight(self.date_from, self.zone)

    @property
    def end(self) -> dt.datetime:
        return local_midnight(self.date_to + dt.timedelta(days=1), self.zone)

    def query(self, **overrides: Any) -> str:
        values: dict[str, Any] = {
            "group": self.group,
            "from": self.date_from.isoformat(),
            "to": self.date_to.isoformat(),
            "kind": self.kind,
        }
        if self.board is not None:
            values["board"] = self.board.pk
        values.update(overrides)
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def local_midnight(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min).replace(tzinfo=zone).astimezone(dt.UTC)


def local_today(zone: dt.tzinfo, now: dt.datetime | None = None) -> dt.date:
    return timezone.localtime(now or timezone.now(), zone).date()


def _parse_date(raw: str | None, label: str, errors: list[str]) -> dt.date | None:
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw.strip())
    except ValueError:
        errors.append(f"'{raw}' is not a valid {label} date; use YYYY-MM-DD. Showing the default range instead.")
        return None


def parse_report_params(
    *,
    team: Team,
    data: Mapping[str, str],
    boards: Sequence[Board] = (),
    default_group: str = "day",
    kinds: Iterable[str] = ("work",),
    now: dt.datetime | None = None,
) -> ReportParams:
    """Read group/from/to/board/kind from a query dict; bad values fall back to defaults with a message."""
    errors: list[str] = []
    zone = team.zone
    group = data.get("group") or default_group
    if group not in GROUPS:
        errors.append(f"Unknown grouping '{group}'; choose day, week or iteration.")
        group = default_group
    today = local_today(zone, now)
    date_to = _parse_date(data.get("to"), "end", errors) or today
    date_from = _parse_date(data.get("from"), "start", errors)
    if date_from is None:
        date_from = date_to - dt.timedelta(days=DEFAULT_DAYS[group] - 1)
    if date_from > date_to:
        errors.append("The start date is after the end date; they were swapped.")
        date_from, date_to = date_to, date_from
    if (date_to - date_from).days + 1 > MAX_RANGE_DAYS:
        errors.append(f"Ranges are limited to {MAX_RANGE_DAYS} days; showing the last {MAX_RANGE_DAYS} days of it.")
        date_from = date_to - dt.timedelta(days=MAX_RANGE_DAYS - 1)
    if group == "week":  # whole ISO weeks, so the first and last bars are not partial
        date_from -= dt.timedelta(days=date_from.weekday())
        date_to += dt.timedelta(days=6 - date_to.weekday())
    board = None
    raw_board = data.get("board")
    if raw_board:
        board = next((b for b in boards if str(b.pk) == str(raw_board)), None)
        if board is None:
            errors.append("That board is not on this team; showing all boards.")
    kind = data.get("kind") or "work"
    kinds = tuple(kinds)
    if kind not in kinds:
        if data.get("kind"):
            errors.append(f"Unknown card kind '{kind}'; showing hypotheses and experiments.")
        kind = kinds[0]
    return ReportParams(
        group=group, date_from=date_from, date_to=date_to, zone=zone, board=board, kind=kind, errors=errors
    )


@dataclass
class Period:
    key: str
    label: str
    start: dt.datetime
    end: dt.datetime
    iteration: Iteration | None = None


def _iterations_in_range(team: Team, params: ReportParams) -> list[Iteration]:
    """Started iterations beginning in the range, with frozen item counts (one query)."""
    item_filter = Q(items__card__board=params.board) if params.board is not None else Q(items__isnull=False)
    return list(
        Iteration.objects.filter(
            team=team,
            state__in=[IterationState.ACTIVE, IterationState.CLOSED],
            start__gte=params.start,
            start__lt=params.end,
        )
        .annotate(
            n_committed=Count("items", filter=item_filter),
            n_completed=Count("items", filter=item_filter & Q(items__completed=True)),
            n_carried=Count("items", filter=item_filter & Q(items__carried_over=True)),
        )
        .order_by("start")
    )


def build_periods(params: ReportParams, iterations: Sequence[Iteration]) -> list[Period]:
    zone = params.zone
    periods: list[Period] = []
    if params.group == "iteration":
        for it in iterations:
            label = it.name + (" (active)" if it.state == IterationState.ACTIVE else "")
            periods.append(Period(key=f"iteration-{it.pk}", label=label, start=it.start, end=it.end, iteration=it))
        return periods
    day = params.date_from
    step = dt.timedelta(days=7 if params.group == "week" else 1)
    while day <= params.date_to:
        nxt = day + step
        if params.group == "week":
            iso = day.isocalendar()
            key, label = f"{iso.year}-W{iso.week:02d}", f"Week of {day:%d %b %Y}"
        else:
            key, label = day.isoformat(), f"{day:%a %d %b}"
        periods.append(Period(key=key, label=label, start=local_midnight(day, zone), end=local_midnight(nxt, zone)))
        day = nxt
    return periods


class Bucketer:
    """Finds the period a timestamp falls in (periods are sorted and do not overlap)."""

    def __init__(self, periods: Sequence[Period]) -> None:
        self.periods = periods
        self.starts = [p.start for p in periods]
        self.epoch_starts = [p.start.timestamp() for p in periods]
        self.epoch_ends = [p.end.timestamp() for p in periods]

    def index_epoch(self, when: float) -> int | None:
        """index() for seconds since the epoch (see EpochSeconds)."""
        i = bisect_right(self.epoch_starts, when) - 1
        if i >= 0 and when < self.epoch_ends[i]:
            return i
        return None

    def index(self, when: dt.datetime | None) -> int | None:
        if when is None:
            return None
        i = bisect_right(self.starts, when) - 1
        if i >= 0 and when < self.periods[i].end:
            return i
        return None


# --- Numbers ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least pct% of values at or below it,
    so "85% of items finished within X" reads literally."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def hours_between(start: dt.datetime, end: dt.datetime) -> float:
    return (end - start).total_seconds() / 3600


def format_hours(hours: float | None) -> str:
    if hours is None:
        return "—"
    if hours < 1:
        return f"{round(hours * 60)} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} d"


# --- Report ----------------------------------------------------------------------------------


@dataclass
class VelocityRow:
    period: Period
    committed: int | None = None  # None: no iteration started in the period
    committed_closed: int = 0  # the part of `committed` in closed iterations, which `completed` compares to
    completed: int | None = None  # None: no closed iteration in the period (nothing frozen yet)
    carried_over: int | None = None
    open_iterations: int = 0
    supported: int = 0
    refuted: int = 0
    inconclusive: int = 0
    no_effect: int = 0  # equivalence shown: the effect is smaller than what matters
    experiments_completed: int = 0
    runs_finished: int = 0
    runs_failed: int = 0
    first_signal_hours: list[float] = field(default_factory=list)
    decision_hours: list[float] = field(default_factory=list)

    @property
    def hypotheses_resolved(self) -> int:
        return self.supported + self.refuted + self.inconclusive + self.no_effect

    @property
    def completion_rate(self) -> float | None:
        if not self.committed_closed or self.completed is None:
            return None
        return self.completed / self.committed_closed

    @property
    def first_signal_median(self) -> float | None:
        return median(self.first_signal_hours)

    @property
    def decision_median(self) -> float | None:
        return median(self.decision_hours)

    @property
    def is_empty(self) -> bool:
        return not (
            self.committed or self.hypotheses_resolved or self.experiments_completed
            or self.runs_finished or self.runs_failed or self.first_signal_hours or self.decision_hours
        )


@dataclass
class VelocityReport:
    params: ReportParams
    rows: list[VelocityRow]
    totals: VelocityRow
    outside_iterations: int = 0  # activity that fell between iterations (iteration grouping only)

    @property
    def has_data(self) -> bool:
        return any(not r.is_empty for r in self.rows)

    @property
    def figures(self) -> dict[str, Any]:
        return velocity_figures(self)


def _card_scope(team: Team, params: ReportParams, prefix: str = "") -> Q:
    q = Q(**{f"{prefix}board__team": team})
    if params.board is not None:
        q &= Q(**{f"{prefix}board": params.board})
    return q


def report_window(params: ReportParams, periods: Sequence[Period]) -> tuple[dt.datetime, dt.datetime]:
    """The span to fetch: the chosen dates plus the periods (an iteration may run past the end date).
    Activity in the dates but outside every iteration is fetched too, so it can be reported as such."""
    if not periods:
        return params.start, params.end
    return min(params.start, periods[0].start), max(params.end, max(p.end for p in periods))


def _decided_hypotheses(team: Team, params: ReportParams, start: dt.datetime, end: dt.datetime) -> list[tuple]:
    """(verdict, decided_at, evidence_at) per hypothesis decided in range — one query (rule: selectors/evidence)."""
    cards = Card.objects.filter(_card_scope(team, params))
    return [(verdict, decided_at, evidence_at)
            for _pk, verdict, decided_at, evidence_at in decided_hypotheses(cards, start, end)]


def _experiments_first_done(team: Team, params: ReportParams, start: dt.datetime, end: dt.datetime) -> QuerySet:
    """First arrival in Done per experiment, for arrivals in range. Only the window's events are
    read (board/created_at index); an earlier arrival is ruled out per candidate card."""
    to_done = Q(kind__in=[EventKind.CREATED, EventKind.MOVED], to_stage=Stage.DONE)
    earlier = CardEvent.objects.filter(to_done, card=OuterRef("card_id"), created_at__lt=start)
    return (
        CardEvent.objects.filter(
            to_done, _card_scope(team, params), card__kind=CardKind.EXPERIMENT, created_at__gte=start,
            created_at__lt=end,
        )
        .exclude(Exists(earlier))
        .values("card_id")
        .annotate(first_done=Min("created_at"))
        .values_list("first_done", flat=True)
    )


def _runs_ended(team: Team, params: ReportParams, start: dt.datetime, end: dt.datetime) -> QuerySet:
    """(end as epoch seconds, status) of the runs that ended in range."""
    runs = Run.objects.filter(team=team, status__in=TERMINAL_STATUSES, end_time__gte=start, end_time__lt=end)
    if params.board is not None:
        runs = runs.filter(pk__in=CardRun.objects.filter(card__board=params.board).values("run_id"))
    return runs.annotate(ended=EpochSeconds("end_time")).values_list("ended", "status")


def _first_signals(team: Team, params: ReportParams, start: dt.datetime, end: dt.datetime) -> list[tuple]:
    """(started_at, first_signal) for cards whose first finished run arrived in range — two queries.

    Only runs ending in the window are read, aggregated per linked card in the database; a
    hypothesis also takes its experiments' runs, folded in here. A second query then drops the
    candidates that already had a finished run before the window (index lookups per candidate),
    so the cost follows the window, not the history.
    """
    finished = Q(is_baseline=False, run__status=RunStatus.FINISHED)
    links = (
        CardRun.objects.filter(
            finished, _card_scope(team, params, "card__"), run__end_time__gte=start, run__end_time__lt=end
        )
        .values("card_id", "card__kind", "card__started_at", "card__parent_id", "card__parent__kind",
                "card__parent__started_at")
        .annotate(first=Min("run__end_time"))
        .order_by()
    )
    work = (CardKind.HYPOTHESIS, CardKind.EXPERIMENT)
    first: dict[int, dt.datetime] = {}
    started: dict[int, dt.datetime | None] = {}
    for row in links:
        targets = [(row["card_id"], row["card__kind"], row["card__started_at"])]
        if row["card__parent_id"] is not None:
            targets.append((row["card__parent_id"], row["card__parent__kind"], row["card__parent__started_at"]))
        for card_id, kind, started_at in targets:
            if kind not in work:
                continue
            started[card_id] = started_at
            if card_id not in first or row["first"] < first[card_id]:
                first[card_id] = row["first"]
    if first:
        before = Q(finished, run__end_time__lt=start)
        ids = list(first)
        earlier = (
            CardRun.objects.filter(before, InIds("card_id", ids)).values_list("card_id").order_by()
            .union(CardRun.objects.filter(before, InIds("card__parent_id", ids)).values_list("card__parent_id")
                   .order_by())
        )
        for (card_id,) in earlier:
            first.pop(card_id, None)
    out = []
    for card_id, signal in first.items():
        started_at = started[card_id]
        # A card marked started only after its first run ended (e.g. a hypothesis closed straight to
        # Done) has no measurable wait for a signal, so it is left out rather than counted as zero.
        if started_at is not None and signal >= started_at:
            out.append((started_at, signal))
    return out


def velocity_report(*, team: Team, params: ReportParams) -> VelocityReport:
    """Seven queries whatever the number of iterations, cards, events and runs (five when nothing
    was decided or signalled in the window); each reads the window's rows, not the whole history."""
    iterations = _iterations_in_range(team, params)
    periods = build_periods(params, iterations)
    rows = [VelocityRow(period=p) for p in periods]
    bucket = Bucketer(periods)
    start, end = report_window(params, periods)
    outside = 0

    def row_for(when: dt.datetime | None) -> VelocityRow | None:
        nonlocal outside
        i = bucket.index(when)
        if i is None:
            outside += 1  # only possible between iterations: day and week periods tile the range
            return None
        return rows[i]

    for it in iterations:
        i = bucket.index(it.start)
        if i is None:
            continue
        row = rows[i]
        row.committed = (row.committed or 0) + it.n_committed
        if it.state == IterationState.CLOSED:
            row.committed_closed += it.n_committed
            row.completed = (row.completed or 0) + it.n_completed
            row.carried_over = (row.carried_over or 0) + it.n_carried
        else:
            row.open_iterations += 1

    for verdict, decided_at, evidence_at in _decided_hypotheses(team, params, start, end):
        row = row_for(decided_at)
        if row is None:
            continue
        setattr(row, verdict, getattr(row, verdict) + 1)
        if evidence_at is not None:
            row.decision_hours.append(max(0.0, hours_between(evidence_at, decided_at)))

    for first_done in _experiments_first_done(team, params, start, end):
        row = row_for(first_done)
        if row is not None:
            row.experiments_completed += 1

    for ended, status in _runs_ended(team, params, start, end):
        i = bucket.index_epoch(ended)
        if i is None:
            outside += 1
            continue
        row = rows[i]
        if status == RunStatus.FINISHED:
            row.runs_finished += 1
        else:
            row.runs_failed += 1

    for started_at, first_signal in _first_signals(team, params, start, end):
        row = row_for(first_signal)
        if row is not None:
            row.first_signal_hours.append(hours_between(started_at, first_signal))

    totals = VelocityRow(period=Period(key="total", label="Total", start=params.start, end=params.end))
    for row in rows:
        if row.committed is not None:
            totals.committed = (totals.committed or 0) + row.committed
        if row.completed is not None:
            totals.completed = (totals.completed or 0) + row.completed
            totals.carried_over = (totals.carried_over or 0) + (row.carried_over or 0)
        totals.committed_closed += row.committed_closed
        totals.open_iterations += row.open_iterations
        for name in ("supported", "refuted", "inconclusive", "no_effect", "experiments_completed", "runs_finished",
                     "runs_failed"):
            setattr(totals, name, getattr(totals, name) + getattr(row, name))
        totals.first_signal_hours.extend(row.first_signal_hours)
        totals.decision_hours.extend(row.decision_hours)
    return VelocityReport(params=params, rows=rows, totals=totals, outside_iterations=outside)


# --- CSV and charts --------------------------------------------------------------------------

VELOCITY_CSV_HEADER = [
    "period", "start", "end", "iteration", "iteration_state", "committed", "completed", "carried_over",
    "completion_rate", "hypotheses_resolved", "supported", "refuted", "inconclusive", "experiments_completed",
    "runs_finished", "runs_failed", "time_to_first_signal_median_hours", "first_signal_cards",
    "decision_latency_median_hours", "decisions_timed",
]


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def velocity_csv_rows(report: VelocityReport) -> list[list[str]]:
    zone = report.params.zone
    out: list[list[str]] = []
    for row in [*report.rows, report.totals]:
        p = row.period
        it = p.iteration
        out.append([
            p.label if row is report.totals else p.key,
            timezone.localtime(p.start, zone).isoformat(),
            timezone.localtime(p.end, zone).isoformat(),
            it.name if it else "",
            it.state if it else "",
            "" if row.committed is None else str(row.committed),
            "" if row.completed is None else str(row.completed),
            "" if row.carried_over is None else str(row.carried_over),
            _num(row.completion_rate, 4),
            str(row.hypotheses_resolved),
            str(row.supported),
            str(row.refuted),
            str(row.inconclusive),
            str(row.experiments_completed),
            str(row.runs_finished),
            str(row.runs_failed),
            _num(row.first_signal_median),
            str(len(row.first_signal_hours)),
            _num(row.decision_median),
            str(len(row.decision_hours)),
        ])
    return out


BASE_LAYOUT: dict[str, Any] = {
    "margin": {"l": 48, "r": 16, "t": 8, "b": 40},
    "height": 280,
    # Legend above the plot: below it, it collides with rotated date ticks on narrow screens.
    "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"},
    "font": {"family": "-apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
    "paper_bgcolor": "rgba(0,0,0,0)",
    "plot_bgcolor": "rgba(0,0,0,0)",
    "xaxis": {"automargin": True},
    "yaxis": {"rangemode": "tozero", "gridcolor": "#e3e6eb", "automargin": True},
    "hovermode": "x unified",
}


def layout(**overrides: Any) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE_LAYOUT.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def count_axis(values: Sequence[float | None], **extra: Any) -> dict[str, Any]:
    """A y axis for counts: whole-number ticks (no "0.5 runs") when the numbers are small."""
    axis: dict[str, Any] = {"rangemode": "tozero", "gridcolor": "#e3e6eb", "automargin": True, **extra}
    top = max((v for v in values if v is not None), default=0)
    if top <= 6:
        axis.update(dtick=1, tick0=0, range=[0, max(top, 1) * 1.1])
    return axis


def velocity_figures(report: VelocityReport) -> dict[str, Any]:
    labels = [r.period.label for r in report.rows]
    figures: dict[str, Any] = {}
    if any(r.committed for r in report.rows):
        figures["commitment"] = {
            "data": [
                {"type": "bar", "name": "Committed", "x": labels, "y": [r.committed or 0 for r in report.rows],
                 "marker": {"color": "#c7d2fe"}},
                {"type": "bar", "name": "Completed", "x": labels,
                 "y": [r.completed if r.completed is not None else None for r in report.rows],
                 "marker": {"color": "#4f46e5"}},
            ],
            "layout": layout(barmode="group", yaxis=count_axis(
                [r.committed for r in report.rows], title={"text": "cards"})),
        }
    if any(r.hypotheses_resolved for r in report.rows):
        figures["verdicts"] = {
            "data": [
                {"type": "bar", "name": choice.label, "x": labels, "y": [getattr(r, choice.value) for r in report.rows],
                 "marker": {"color": VERDICT_COLORS[choice]}}
                for choice in VerdictChoice
            ],
            "layout": layout(barmode="stack", yaxis=count_axis(
                [r.hypotheses_resolved for r in report.rows], title={"text": "hypotheses"})),
        }
    if any(r.experiments_completed or r.runs_finished or r.runs_failed for r in report.rows):
        figures["output"] = {
            "data": [
                {"type": "bar", "name": "Experiments completed", "x": labels,
                 "y": [r.experiments_completed for r in report.rows], "marker": {"color": "#0e7490"}},
                {"type": "scatter", "mode": "lines+markers", "name": "Runs finished", "x": labels,
                 "y": [r.runs_finished for r in report.rows], "yaxis": "y2", "line": {"color": "#7c3aed"}},
                {"type": "scatter", "mode": "lines+markers", "name": "Runs failed", "x": labels,
                 "y": [r.runs_failed for r in report.rows], "yaxis": "y2",
                 "line": {"color": "#c0362c", "dash": "dot"}},
            ],
            "layout": layout(
                yaxis=count_axis([r.experiments_completed for r in report.rows], title={"text": "experiments"}),
                yaxis2=count_axis(
                    [max(r.runs_finished, r.runs_failed) for r in report.rows],
                    title={"text": "runs"}, overlaying="y", side="right", showgrid=False,
                ),
                margin={"r": 48},
            ),
        }
    if any(r.first_signal_hours or r.decision_hours for r in report.rows):
        figures["latency"] = {
            "data": [
                {"type": "scatter", "mode": "lines+markers", "name": "Time to first signal (median)", "x": labels,
                 "y": [_round(r.first_signal_median) for r in report.rows], "connectgaps": False,
                 "line": {"color": "#0e7490"}},
                {"type": "scatter", "mode": "lines+markers", "name": "Decision latency (median)", "x": labels,
                 "y": [_round(r.decision_median) for r in report.rows], "connectgaps": False,
                 "line": {"color": "#b25e09"}},
            ],
            "layout": layout(yaxis={"title": {"text": "hours"}}),
        }
    return figures


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)
