"""Flow report (Kanban metrics) reconstructed from the CardEvent log.

Work items are hypotheses and experiments (results are outputs, not work). Definitions:

- started: the first time the card entered a Running or Analyzing column (created or moved there);
- done: the time the card last entered a Done column, for cards that are in Done now;
- cycle time = done - started (cards that skipped straight to Done have none); lead time = done - created;
- throughput: cards that became done in the period;
- work-item age: now - started, for cards currently in Running or Analyzing;
- WIP and the cumulative flow diagram: how many cards were in each stage at the end of each day,
  replayed from "created" and "moved" events.

A fixed number of queries whatever the history size: aggregates in the database, then compact lists.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.db.models import F, Max, Min, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..models import Card, CardEvent, CardKind, EventKind, Stage, Team
from .velocity import (
    Bucketer,
    EpochSeconds,
    Period,
    ReportParams,
    _iterations_in_range,
    build_periods,
    count_axis,
    format_hours,
    hours_between,
    layout,
    local_midnight,
    percentile,
    report_window,
)

KINDS: dict[str, tuple[str, ...]] = {
    "work": (CardKind.HYPOTHESIS, CardKind.EXPERIMENT),
    "hypothesis": (CardKind.HYPOTHESIS,),
    "experiment": (CardKind.EXPERIMENT,),
}
KIND_LABELS = {"work": "Hypotheses and experiments", "hypothesis": "Hypotheses", "experiment": "Experiments"}
IN_PROGRESS = (Stage.RUNNING, Stage.ANALYZING)
STAGE_ORDER = (Stage.BACKLOG, Stage.READY, Stage.RUNNING, Stage.ANALYZING, Stage.DONE)
STAGE_COLORS = {
    Stage.BACKLOG: "#cbd5e1",
    Stage.READY: "#93c5fd",
    Stage.RUNNING: "#fbbf24",
    Stage.ANALYZING: "#a78bfa",
    Stage.DONE: "#34d399",
}
PERCENTILES = (50, 85, 95)
STAGE_ENTRY = (EventKind.CREATED, EventKind.MOVED)


@dataclass
class FlowItem:
    pk: int
    key: str
    title: str
    kind: str
    board_key: str
    stage: str
    column: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    done_at: dt.datetime | None

    @property
    def cycle_hours(self) -> float | None:
        if self.started_at is None or self.done_at is None:
            return None
        return max(0.0, hours_between(self.started_at, self.done_at))

    @property
    def lead_hours(self) -> float | None:
        if self.done_at is None:
            return None
        return max(0.0, hours_between(self.created_at, self.done_at))

    def age_hours(self, now: dt.datetime) -> float | None:
        if self.done_at is not None or self.started_at is None:
            return None
        return max(0.0, hours_between(self.started_at, now))


@dataclass
class FlowReport:
    params: ReportParams
    now: dt.datetime
    periods: list[Period]
    throughput: list[int]
    done: list[FlowItem]
    in_progress: list[FlowItem]
    days: list[dt.date]
    cfd: dict[str, list[int]]  # stage -> count at the end of each day
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def cycle_hours(self) -> list[float]:
        return [h for h in (i.cycle_hours for i in self.done) if h is not None]

    @property
    def lead_hours(self) -> list[float]:
        return [h for h in (i.lead_hours for i in self.done) if h is not None]

    def cycle_percentiles(self) -> dict[int, float | None]:
        values = self.cycle_hours
        return {p: percentile(values, p) for p in PERCENTILES}

    def lead_percentiles(self) -> dict[int, float | None]:
        values = self.lead_hours
        return {p: percentile(values, p) for p in PERCENTILES}

    @property
    def wip(self) -> list[int]:
        return [sum(self.cfd[s][i] for s in IN_PROGRESS) for i in range(len(self.days))]

    @property
    def aging(self) -> list[tuple[FlowItem, float]]:
        rows = [(item, item.age_hours(self.now) or 0.0) for item in self.in_progress]
        return sorted(rows, key=lambda r: -r[1])

    @property
    def has_history(self) -> bool:
        return any(any(v) for v in self.cfd.values())

    @property
    def figures(self) -> dict[str, Any]:
        return flow_figures(self)


def _scope(team: Team, params: ReportParams, prefix: str = "") -> Q:
    q = Q(**{f"{prefix}board__team": team, f"{prefix}kind__in": KINDS[params.kind]})
    if params.board is not None:
        q &= Q(**{f"{prefix}board": params.board})
    return q


_ITEM_FIELDS = ("pk", "key", "title", "kind", "board__key", "column__stage", "column__name", "created_at")


def _started_expr() -> Min:
    return Min(
        "events__created_at",
        filter=Q(events__kind__in=STAGE_ENTRY, events__to_stage__in=IN_PROGRESS),
    )


def _item(row: dict[str, Any]) -> FlowItem:
    return FlowItem(
        pk=row["pk"], key=row["key"], title=row["title"], kind=row["kind"], board_key=row["board__key"],
        stage=row["column__stage"], column=row["column__name"], created_at=row["created_at"],
        started_at=row["started"], done_at=row.get("done_at"),
    )


def _done_items(team: Team, params: ReportParams, start: dt.datetime, end: dt.datetime) -> list[FlowItem]:
    # Moves between two Done columns are not a new completion, hence the from_stage exclusion.
    entered_done = Q(events__kind__in=STAGE_ENTRY, events__to_stage=Stage.DONE) & ~Q(events__from_stage=Stage.DONE)
    # A card's last arrival in Done falls in the window only if some arrival does (or, without any,
    # its completion time does): only those cards' events are aggregated, not every Done card's.
    arrived = CardEvent.objects.filter(
        kind__in=STAGE_ENTRY, to_stage=Stage.DONE, created_at__gte=start, created_at__lt=end
    ).exclude(from_stage=Stage.DONE)
    rows = (
        Card.objects.filter(_scope(team, params), column__stage=Stage.DONE)
        .filter(Q(pk__in=arrived.values("card_id")) | Q(completed_at__gte=start, completed_at__lt=end))
        .values(*_ITEM_FIELDS)
        .annotate(
            started=_started_expr(),
            done_at=Coalesce(Max("events__created_at", filter=entered_done), F("completed_at")),
        )
        .filter(done_at__gte=start, done_at__lt=end)
        .order_by("done_at", "pk")
    )
    return [_item(r) for r in rows]


def _in_progress_items(team: Team, params: ReportParams) -> list[FlowItem]:
    rows = (
        Card.objects.filter(_scope(team, params), column__stage__in=IN_PROGRESS)
        .values(*_ITEM_FIELDS)
        .annotate(started=Coalesce(_started_expr(), F("started_at")))
        .order_by("pk")
    )
    return [_item(r) for r in rows]


def _replay(team: Team, params: ReportParams, days: list[dt.date]) -> dict[str, list[int]]:
    """Stage counts at the end of each day: each card's stage when the range starts (one query),
    then the range's stage events in order (one query)."""
    zone = params.zone
    cfd: dict[str, list[int]] = {s: [] for s in STAGE_ORDER}
    if not days:
        return cfd
    start = local_midnight(days[0], zone)
    end = local_midnight(days[-1] + dt.timedelta(days=1), zone)
    last_stage = (
        CardEvent.objects.filter(card=OuterRef("pk"), kind__in=STAGE_ENTRY, created_at__lt=start)
        .exclude(to_stage="")
        .order_by("-created_at", "-id")
        .values("to_stage")[:1]
    )
    # Cards without a stage yet are dropped here: filtering on the annotation in SQL ran its
    # subquery a second time per card.
    state: dict[int, str] = {
        pk: stage
        for pk, stage in Card.objects.filter(_scope(team, params), created_at__lt=end)
        .annotate(stage_then=Subquery(last_stage))
        .order_by()
        .values_list("pk", "stage_then")
        if stage is not None
    }
    counts = dict.fromkeys(STAGE_ORDER, 0)
    for stage in state.values():
        counts[stage] = counts.get(stage, 0) + 1
    # Event times are only compared with day boundaries: on PostgreSQL they load as epoch seconds
    # (exact to the microsecond in a float8, like datetime.timestamp()), several times faster than
    # time-zone-aware datetimes for a year of events. SQLite's julianday is not that exact.
    epoch = connection.vendor == "postgresql"
    events = (
        CardEvent.objects.filter(
            _scope(team, params, "card__"), kind__in=STAGE_ENTRY, created_at__gte=start, created_at__lt=end
        )
        .exclude(to_stage="")
        .order_by("created_at", "id")
        .annotate(at=EpochSeconds("created_at") if epoch else F("created_at"))
        .values_list("card_id", "at", "to_stage")
    )
    pending = iter(events)
    nxt = next(pending, None)
    for day in days:
        midnight = local_midnight(day + dt.timedelta(days=1), zone)
        boundary: Any = midnight.timestamp() if epoch else midnight
        while nxt is not None and nxt[1] < boundary:
            card_id, _, to_stage = nxt
            previous = state.get(card_id)
            if previous is not None:
                counts[previous] -= 1
            counts[to_stage] = counts.get(to_stage, 0) + 1
            state[card_id] = to_stage
            nxt = next(pending, None)
        for stage in STAGE_ORDER:
            cfd[stage].append(counts.get(stage, 0))
    return cfd


def flow_report(*, team: Team, params: ReportParams, now: dt.datetime | None = None) -> FlowReport:
    """Four queries (five when grouped by iteration), whatever the size of the history."""
    now = now or timezone.now()
    iterations = _iterations_in_range(team, params) if params.group == "iteration" else []
    periods = build_periods(params, iterations)
    start, end = report_window(params, periods)
    done = _done_items(team, params, start, end)
    in_progress = _in_progress_items(team, params)
    days = [params.date_from + dt.timedelta(days=i) for i in range((params.date_to - params.date_from).days + 1)]
    today = timezone.localtime(now, params.zone).date()
    days = [d for d in days if d <= today]  # the future has no flow yet
    cfd = _replay(team, params, days)

    bucket = Bucketer(periods)
    throughput = [0] * len(periods)
    for item in done:
        i = bucket.index(item.done_at)
        if i is not None:
            throughput[i] += 1
    # The range may extend past the grouping's periods (iteration gaps); items outside stay in the scatter.
    report = FlowReport(
        params=params, now=now, periods=periods, throughput=throughput, done=done, in_progress=in_progress,
        days=days, cfd=cfd,
    )
    ages = [a for _, a in report.aging]
    report.stats = {
        "throughput": len(done),
        "throughput_per_period": (sum(throughput) / len(periods)) if periods else None,
        "cycle": report.cycle_percentiles(),
        "lead": report.lead_percentiles(),
        "wip_now": len(in_progress),
        "oldest_age": max(ages) if ages else None,
        "without_cycle": sum(1 for i in done if i.cycle_hours is None),
    }
    return report


# --- CSV and charts --------------------------------------------------------------------------

FLOW_CSV_HEADER = [
    "key", "title", "kind", "board", "stage", "column", "created_at", "started_at", "done_at",
    "cycle_time_hours", "lead_time_hours", "age_hours",
]


def flow_csv_rows(report: FlowReport) -> list[list[str]]:
    zone = report.params.zone

    def when(value: dt.datetime | None) -> str:
        return timezone.localtime(value, zone).isoformat() if value else ""

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    out = []
    for item in [*report.done, *(i for i, _ in report.aging)]:
        out.append([
            item.key, item.title, item.kind, item.board_key, item.stage, item.column, when(item.created_at),
            when(item.started_at), when(item.done_at), num(item.cycle_hours), num(item.lead_hours),
            num(item.age_hours(report.now)),
        ])
    return out


def duration_unit(values: list[float]) -> tuple[str, float]:
    """Hours for short cycles (1-day iterations), days once items take longer than three days."""
    if values and max(values) >= 72:
        return "days", 24.0
    return "hours", 1.0


def flow_figures(report: FlowReport) -> dict[str, Any]:
    zone = report.params.zone
    figures: dict[str, Any] = {}
    labels = [p.label for p in report.periods]
    if report.done:
        figures["throughput"] = {
            "data": [{"type": "bar", "name": "Done", "x": labels, "y": report.throughput,
                      "marker": {"color": "#4f46e5"}}],
            "layout": layout(yaxis=count_axis(report.throughput, title={"text": "cards done"}), showlegend=False),
        }
    cycle_items = [i for i in report.done if i.cycle_hours is not None]
    if cycle_items:
        unit, div = duration_unit([i.cycle_hours for i in cycle_items])  # type: ignore[misc]
        xs = [timezone.localtime(i.done_at, zone).isoformat() for i in cycle_items]  # type: ignore[arg-type]
        shapes, notes = [], []
        for pct, value in report.cycle_percentiles().items():
            if value is None:
                continue
            y = round(value / div, 2)
            shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": y, "y1": y,
                           "line": {"color": "#667085", "dash": "dash", "width": 1}})
            notes.append({"xref": "paper", "x": 1, "y": y, "xanchor": "right", "yanchor": "bottom",
                          "text": f"{pct}th: {format_hours(value)}", "showarrow": False,
                          "font": {"size": 11, "color": "#667085"}})
        figures["cycle"] = {
            "data": [{
                "type": "scatter", "mode": "markers", "name": "Cycle time",
                "x": xs, "y": [round(i.cycle_hours / div, 2) for i in cycle_items],  # type: ignore[operator]
                "text": [f"{i.key} {i.title[:60]}" for i in cycle_items],
                "hovertemplate": "%{text}<br>%{y} " + unit + "<extra></extra>",
                "marker": {"color": ["#7c3aed" if i.kind == CardKind.HYPOTHESIS else "#0e7490" for i in cycle_items],
                           "size": 9, "opacity": 0.8},
            }],
            "layout": layout(yaxis={"title": {"text": f"cycle time ({unit})"}}, xaxis={"type": "date"},
                             shapes=shapes, annotations=notes, showlegend=False, hovermode="closest"),
        }
    if report.has_history:
        x = [d.isoformat() for d in report.days]
        figures["cfd"] = {
            "data": [
                {"type": "scatter", "mode": "lines", "name": stage.label, "x": x, "y": report.cfd[stage],
                 "stackgroup": "cfd", "line": {"width": 0.5, "color": STAGE_COLORS[stage]},
                 "fillcolor": STAGE_COLORS[stage]}
                # Done at the bottom, backlog on top: the usual reading order of a CFD.
                for stage in reversed(STAGE_ORDER)
            ],
            "layout": layout(yaxis={"title": {"text": "cards"}}, xaxis={"type": "date"}, height=320),
        }
        figures["wip"] = {
            "data": [
                {"type": "scatter", "mode": "lines", "name": stage.label, "x": x, "y": report.cfd[stage],
                 "stackgroup": "wip", "line": {"color": STAGE_COLORS[stage]}, "fillcolor": STAGE_COLORS[stage]}
                for stage in IN_PROGRESS
            ],
            "layout": layout(yaxis=count_axis(report.wip, title={"text": "cards in progress"}),
                             xaxis={"type": "date"}),
        }
    if report.in_progress:
        aging = report.aging
        unit, div = duration_unit([a for _, a in aging])
        shapes = []
        for value in report.cycle_percentiles().values():
            if value is None:
                continue
            y = round(value / div, 2)
            shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": y, "y1": y,
                           "line": {"color": "#667085", "dash": "dot", "width": 1}})
        figures["aging"] = {
            "data": [{
                "type": "scatter", "mode": "markers", "name": "Age",
                "x": [Stage(item.stage).label for item, _ in aging],
                "y": [round(age / div, 2) for _, age in aging],
                "text": [f"{item.key} {item.title[:60]}" for item, _ in aging],
                "hovertemplate": "%{text}<br>%{y} " + unit + "<extra></extra>",
                "marker": {"color": [STAGE_COLORS[Stage(item.stage)] for item, _ in aging], "size": 11,
                           "line": {"color": "#1d2330", "width": 0.5}},
            }],
            "layout": layout(yaxis={"title": {"text": f"age ({unit})"}}, shapes=shapes, showlegend=False,
                             hovermode="closest",
                             xaxis={"categoryorder": "array", "categoryarray": [s.label for s in IN_PROGRESS]}),
        }
    return figures
