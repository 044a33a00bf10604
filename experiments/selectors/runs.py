"""Run reads for the runs list, run detail, run comparison and the card page.

Every function here runs a fixed number of queries whatever the number of runs, params or
metric points (related rows are prefetched in one query each).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.db.models import (
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    FilteredRelation,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
)
from django.http import Http404

from ..access import membership_for
from ..models import (
    Card,
    CardEvent,
    CardKind,
    CardRun,
    LatestMetric,
    Membership,
    Param,
    Run,
    Team,
    TrackingExperiment,
    User,
    VerdictProposal,
    VerdictStatus,
)
from ..services.runs import DEFAULT_EXPERIMENT_NAME, SEED_KEYS
from .metrics import format_value
from .registry import run_models

DEFAULT_SORT = "-start"
SORT_FIELDS = {
    "start": "start_time",
    "end": "end_time",
    "name": "name",
    "status": "status",
    "duration": "duration",
    "user": "user_name",
}
METRIC_SORT_PREFIX = "m:"
MAX_COMPARE = 50
MAX_METRIC_COLUMNS = 8
MAX_KEY_PARAMS = 6
EVENT_LIMIT = 200


# --- Access -------------------------------------------------------------------------------------


def get_run_or_404(*, user: User, run_id: int) -> tuple[Run, Membership]:
    """A run of one of the user's teams; anyone else's run is a 404."""
    run = Run.objects.select_related("team", "user", "experiment").filter(pk=run_id).first()
    if run is None:
        raise Http404("No such run.")
    membership = membership_for(user=user, team=run.team_id)
    if membership is None:
        raise Http404("No such run.")
    return run, membership


def run_by_external_id(*, user: User, external_id: str) -> Run | None:
    """The user's run with this MLflow run id (the id is a uuid, so at most one team has it)."""
    return (
        Run.objects.filter(external_id=external_id, team__memberships__user=user)
        .order_by(F("source").desc(), "pk")  # mlboard's own run before an imported copy
        .first()
    )


def tracking_experiment_for_link(*, user: User, experiment_id: str) -> TrackingExperiment | None:
    """An experiment of one of the user's teams by MLflow id; '0' is the Default of the user's first team."""
    queryset = TrackingExperiment.objects.select_related("team").filter(team__memberships__user=user)
    if experiment_id == "0":
        return queryset.filter(name=DEFAULT_EXPERIMENT_NAME, source="mlboard").order_by("team__slug").first()
    if not experiment_id.isdigit():
        return None
    return queryset.filter(pk=int(experiment_id)).first()


# --- Runs list ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFilters:
    status: Sequence[str] = ()
    user_id: int | None = None
    experiment_id: int | None = None
    card: str = ""
    text: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    sort: str = DEFAULT_SORT

    @property
    def active(self) -> bool:
        return bool(
            self.status or self.user_id or self.experiment_id or self.card or self.text or self.date_from
            or self.date_to
        )


def _apply_sort(qs: QuerySet[Run], sort: str) -> QuerySet[Run]:
    descending = sort.startswith("-")
    name = sort.lstrip("-")
    if name.startswith(METRIC_SORT_PREFIX):
        key = name[len(METRIC_SORT_PREFIX):]
        # One LEFT JOIN on the (run, key) unique index instead of a correlated subquery per run.
        qs = qs.annotate(
            sort_metric=FilteredRelation(
                "latest_metrics", condition=Q(latest_metrics__key=key, latest_metrics__is_nan=False)
            ),
            sort_value=F("sort_metric__value"),
        )
        expr = F("sort_value")
    else:
        column = SORT_FIELDS.get(name, "start_time")
        if column == "duration":
            qs = qs.annotate(
                duration_value=ExpressionWrapper(F("end_time") - F("start_time"), output_field=DurationField())
            )
            column = "duration_value"
        expr = F(column)
    ordered = expr.desc(nulls_last=True) if descending else expr.asc(nulls_last=True)
    return qs.order_by(ordered, "-id" if descending else "id")


def runs_filtered(*, team: Team, filters: RunFilters) -> QuerySet[Run]:
    qs = Run.objects.filter(team=team, lifecycle_stage="active")
    if filters.status:
        qs = qs.filter(status__in=list(filters.status))
    if filters.user_id:
        qs = qs.filter(user_id=filters.user_id)
    if filters.experiment_id:
        qs = qs.filter(experiment_id=filters.experiment_id)
    if filters.card:
        card_q = Q(card_links__card__key=filters.card.strip().upper())
        if filters.card.strip().isdigit():
            card_q |= Q(card_links__card_id=int(filters.card.strip()))
        qs = qs.filter(card_q, card_links__card__board__team=team).distinct()
    if filters.text:
        text = filters.text.strip()
        text_q = (
            Q(name__icontains=text)
            | Q(external_id__istartswith=text)
            | Q(user_name__icontains=text)
            | Q(code_version__istartswith=text)
        )
        if text.isdigit():
            text_q |= Q(pk=int(text))
        qs = qs.filter(text_q)
    if filters.date_from:
        qs = qs.filter(start_time__date__gte=filters.date_from)
    if filters.date_to:
        qs = qs.filter(start_time__date__lte=filters.date_to)
    return _apply_sort(qs, filters.sort)


# Metric keys are ranked over the team's most recent runs only, so listing them costs the same
# at 1,000 or 1,000,000 runs (the (team, start_time) index gives the recent runs).
METRIC_KEY_SAMPLE_RUNS = 2_000


def team_metric_keys(*, team: Team, limit: int = 50) -> list[str]:
    """Metric keys of the team's recent runs, most widely logged first (one query)."""
    recent = (
        Run.objects.filter(team=team)
        .order_by(F("start_time").desc(nulls_last=True), "-id")
        .values("pk")[:METRIC_KEY_SAMPLE_RUNS]
    )
    # Counting `key` (not `id`) keeps it an index-only probe of (run, key) per sampled run; the
    # sample stays a subquery so no list of 2,000 ids is built and sent.
    rows = (
        LatestMetric.objects.filter(run_id__in=Subquery(recent))
        .values("key")
        .annotate(n=Count("key"))
        .order_by("-n", "key")[:limit]
    )
    return [row["key"] for row in rows]


# --- Pages: keyset pagination and counts ----------------------------------------------------------

# Above this many matching runs (by the planner's estimate) the list shows an estimated count
# instead of running COUNT(*) over all of them on every page.
EXACT_COUNT_BELOW = 10_000


def runs_count(qs: QuerySet[Run]) -> tuple[int, bool]:
    """(count, estimated): PostgreSQL's row estimate when it is large, else an exact count."""
    if connection.vendor == "postgresql":
        plan = json.loads(qs.order_by().explain(format="json"))
        estimate = int(plan[0]["Plan"]["Plan Rows"])
        if estimate >= EXACT_COUNT_BELOW:
            return estimate, True
    return qs.order_by().count(), False


@dataclass
class RunPage:
    rows: list[Run]
    count: int
    estimated: bool
    number: int  # 1-based
    size: int
    next_token: str | None = None

    @property
    def start_index(self) -> int:
        return (self.number - 1) * self.size + 1 if self.rows else 0

    @property
    def end_index(self) -> int:
        return (self.number - 1) * self.size + len(self.rows)

    @property
    def has_previous(self) -> bool:
        return self.number > 1


def _sort_key_value(run: Run, sort: str) -> Any:
    name = sort.lstrip("-")
    if name.startswith(METRIC_SORT_PREFIX):
        return run.sort_value  # type: ignore[attr-defined]
    column = SORT_FIELDS.get(name, "start_time")
    if column == "duration":
        value = run.duration_value  # type: ignore[attr-defined]
        return value.total_seconds() if value is not None else None
    value = getattr(run, column)
    return value.isoformat() if isinstance(value, dt.datetime) else value


def _decode_sort_value(sort: str, value: Any) -> Any:
    name = sort.lstrip("-")
    column = SORT_FIELDS.get(name, "start_time") if not name.startswith(METRIC_SORT_PREFIX) else "metric"
    if value is None:
        return None
    if column in ("start_time", "end_time"):
        return dt.datetime.fromisoformat(value)
    if column == "duration":
        return dt.timedelta(seconds=float(value))
    if column == "metric":
        return float(value)
    return str(value)


def _sort_expression_name(sort: str) -> str:
    name = sort.lstrip("-")
    if name.startswith(METRIC_SORT_PREFIX):
        return "sort_value"
    column = SORT_FIELDS.get(name, "start_time")
    return "duration_value" if column == "duration" else column


def _after(qs: QuerySet[Run], sort: str, value: Any, last_id: int) -> QuerySet[Run]:
    """Rows after (value, last_id) in the list's order (value nulls last, then id)."""
    field_name = _sort_expression_name(sort)
    descending = sort.startswith("-")
    nulls = Q(**{f"{field_name}__isnull": True})
    if value is None:
        return qs.filter(nulls, id__lt=last_id) if descending else qs.filter(nulls, id__gt=last_id)
    beyond, tie = ("lt", "lt") if descending else ("gt", "gt")
    return qs.filter(
        Q(**{f"{field_name}__{beyond}": value})
        | Q(**{field_name: value, f"id__{tie}": last_id})
        | nulls
    )


def _encode_token(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()


def _decode_token(token: str) -> dict[str, Any] | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("id"), int) or not isinstance(data.get("n"), int):
        return None
    return data


def _metric_sorted_rows(qs: QuerySet[Run], sort: str, limit: int) -> list[Run]:
    """Rows of a metric-sorted list in two steps: runs with the metric, read in value order off the
    (key, value, run) index (plain DESC/ASC so the index order matches; they have no NULLs), then,
    when the page reaches past them, the runs without it."""
    descending = sort.startswith("-")
    value, pk = F("sort_value"), F("id")
    with_metric = qs.filter(sort_value__isnull=False).order_by(
        *((value.desc(), pk.desc()) if descending else (value.asc(), pk.asc()))
    )
    rows = list(with_metric[:limit])
    if len(rows) < limit:
        rows += list(qs.filter(sort_value__isnull=True)[: limit - len(rows)])
    return rows


def runs_page(*, qs: QuerySet[Run], sort: str, after: str | None, size: int) -> RunPage:
    """One page of an ordered runs queryset, keyset-paginated: `after` is the previous page's
    next_token (the last row's sort value and id), so page 1,000 costs what page 1 does; an
    unreadable token restarts at the first page."""
    count, estimated = runs_count(qs)
    data = _decode_token(after) if after else None
    number = 1
    if data is not None and data.get("s") == sort:
        try:
            qs = _after(qs, sort, _decode_sort_value(sort, data.get("v")), data["id"])
            number = max(1, data["n"])
        except (TypeError, ValueError):
            number = 1
    if sort.lstrip("-").startswith(METRIC_SORT_PREFIX) and (data is None or data.get("v") is not None):
        rows = _metric_sorted_rows(qs, sort, size + 1)
    else:
        rows = list(qs[: size + 1])
    next_token = None
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        next_token = _encode_token({"s": sort, "v": _sort_key_value(last, sort), "id": last.pk, "n": number + 1})
    return RunPage(rows=rows, count=count, estimated=estimated, number=number, size=size, next_token=next_token)


def team_filter_options(*, team: Team) -> tuple[list[User], list[TrackingExperiment]]:
    users = list(User.objects.filter(memberships__team=team).order_by("username"))
    experiments = list(TrackingExperiment.objects.filter(team=team, lifecycle_stage="active").order_by("name"))
    return users, experiments


@dataclass
class MetricCell:
    key: str
    value: float | None
    display: str
    is_nan: bool = False
    step: int | None = None


def _metric_cells(run: Run, keys: Sequence[str]) -> list[MetricCell]:
    """Cells for `keys` from the run's prefetched latest metrics."""
    latest = {lm.key: lm for lm in run.latest_metrics.all()}
    cells = []
    for key in keys:
        lm = latest.get(key)
        if lm is None:
            cells.append(MetricCell(key=key, value=None, display="—"))
        else:
            cells.append(
                MetricCell(
                    key=key, value=None if lm.is_nan else lm.value, display=format_value(lm.value, lm.is_nan),
                    is_nan=lm.is_nan, step=lm.step,
                )
            )
    return cells


def runs_decorate(runs: Iterable[Run], *, metric_keys: Sequence[str]) -> list[Run]:
    """Attach `metric_cells` and `linked_cards` to runs fetched with `runs_prefetched`."""
    out = []
    for run in runs:
        run.metric_cells = _metric_cells(run, metric_keys)  # type: ignore[attr-defined]
        run.linked_cards = [link.card for link in run.card_links.all()]  # type: ignore[attr-defined]
        out.append(run)
    return out


def runs_prefetched(qs: QuerySet[Run], *, metric_keys: Sequence[str]) -> QuerySet[Run]:
    return qs.select_related("user", "experiment").prefetch_related(
        Prefetch("latest_metrics", queryset=LatestMetric.objects.filter(key__in=list(metric_keys))),
        Prefetch("card_links", queryset=CardRun.objects.select_related("card").order_by("card__key")),
    )


# --- Run detail ---------------------------------------------------------------------------------


@dataclass
class RunDetail:
    run: Run
    params: list[Param]
    metrics: list[MetricCell]
    links: list[CardRun]
    user_tags: list[tuple[str, str]]
    system_tags: list[tuple[str, str]]
    environment: list[tuple[str, str]]
    datasets: list = field(default_factory=list)
    models: list = field(default_factory=list)


def run_detail(run: Run) -> RunDetail:
    params = list(run.params.order_by("key"))
    latest = list(run.latest_metrics.order_by("key"))
    metrics = [
        MetricCell(key=lm.key, value=None if lm.is_nan else lm.value, display=format_value(lm.value, lm.is_nan),
                   is_nan=lm.is_nan, step=lm.step)
        for lm in latest
    ]
    links = list(run.card_links.select_related("card__board", "card__column").order_by("card__key"))
    tags = sorted((run.tags or {}).items())
    system = [(k, v) for k, v in tags if k.startswith(("mlflow.", "mlboard."))]
    user = [(k, v) for k, v in tags if not k.startswith(("mlflow.", "mlboard."))]
    env = sorted((str(k), str(v)) for k, v in (run.environment or {}).items())
    produced = run_models(run)
    return RunDetail(run=run, params=params, metrics=metrics, links=links, user_tags=user, system_tags=system,
                     environment=env, datasets=produced.datasets, models=produced.models)


# --- Comparison ---------------------------------------------------------------------------------


@dataclass
class CompareRow:
    key: str
    values: list[str | None]
    differs: bool
    kind: str  # "param" or "metric"
    numbers: list[float | None] = field(default_factory=list)


@dataclass
class Comparison:
    runs: list[Run]
    params: list[CompareRow]
    metrics: list[CompareRow]
    missing_ids: list[int]


def _as_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def runs_compare(*, team: Team, run_ids: Sequence[int]) -> Comparison:
    """Side-by-side params and final (latest) metrics of up to MAX_COMPARE runs, from any cards of
    the team; each run carries `linked_cards` (4 queries)."""
    wanted = list(dict.fromkeys(run_ids))[:MAX_COMPARE]
    found = {
        run.pk: run
        for run in Run.objects.filter(team=team, pk__in=wanted)
        .select_related("user")
        .prefetch_related(
            "params", "latest_metrics",
            Prefetch("card_links", queryset=CardRun.objects.select_related("card").order_by("card__key")),
        )
    }
    for run in found.values():
        run.linked_cards = [link.card for link in run.card_links.all()]  # type: ignore[attr-defined]
    runs = [found[i] for i in wanted if i in found]
    missing = [i for i in wanted if i not in found]
    param_maps = [{p.key: p.value for p in run.params.all()} for run in runs]
    metric_maps = [{lm.key: lm for lm in run.latest_metrics.all()} for run in runs]
    params = []
    for key in sorted({k for m in param_maps for k in m}):
        values = [m.get(key) for m in param_maps]
        params.append(
            CompareRow(key=key, values=values, differs=len(set(values)) > 1, kind="param",
                       numbers=[_as_float(v) for v in values])
        )
    metrics = []
    for key in sorted({k for m in metric_maps for k in m}):
        cells = [m.get(key) for m in metric_maps]
        display = [format_value(c.value, c.is_nan) if c else None for c in cells]
        numbers = [None if c is None or c.is_nan else c.value for c in cells]
        metrics.append(
            CompareRow(key=key, values=display, differs=len(set(display)) > 1, kind="metric", numbers=numbers)
        )
    return Comparison(runs=runs, params=params, metrics=metrics, missing_ids=missing)


# --- Card page ----------------------------------------------------------------------------------


def card_link_filter(card: Card) -> Q:
    """CardRun rows shown on a card: its own links, and for a hypothesis its experiments' links too."""
    if card.kind == CardKind.HYPOTHESIS:
        return Q(card=card) | Q(card__parent=card, card__kind=CardKind.EXPERIMENT)
    return Q(card=card)


@dataclass
class LinkedRun:
    run: Run
    link: CardRun
    direct: bool  # linked to this card itself (else via a child experiment; unlink there)
    via_card: Card | None
    is_baseline: bool
    metric_cells: list[MetricCell]
    key_params: list[tuple[str, str]]


@dataclass
class CardPage:
    card: Card
    children: list[Card]
    tags: list[str]
    events: list[CardEvent]
    events_total: int
    linked: list[LinkedRun]
    metric_keys: list[str]
    key_param_names: list[str]
    proposal: VerdictProposal | None
    last_decision: VerdictProposal | None


def _key_param_names(param_maps: Sequence[dict[str, str]]) -> list[str]:
    """Params worth a column: those that vary across the runs (the first few if only one run)."""
    # Seeds already have their own column.
    keys = sorted({k for m in param_maps for k in m} - set(SEED_KEYS))
    if len(param_maps) < 2:
        return keys[:MAX_KEY_PARAMS]
    varying = [k for k in keys if len({m.get(k) for m in param_maps}) > 1]
    return varying[:MAX_KEY_PARAMS]


def card_page(card: Card) -> CardPage:
    """Everything the card page shows, in a fixed number of queries."""
    card = (
        Card.objects.select_related(
            "board__team", "column", "parent__column", "owner", "created_by", "baseline_run", "iteration"
        ).get(pk=card.pk)
    )
    children = list(card.children.select_related("column", "owner").order_by("number"))
    tags = list(card.tags.values_list("name", flat=True))
    events_total = card.events.count()
    events = list(
        card.events.select_related("actor", "from_column", "to_column").order_by("-created_at", "-id")[:EVENT_LIMIT]
    )
    links = list(
        CardRun.objects.filter(card_link_filter(card))
        .select_related("run__user", "run__experiment", "card")
        .prefetch_related(Prefetch("run__params", queryset=Param.objects.order_by("key")), "run__latest_metrics")
        .order_by("run__start_time", "run_id")
    )
    # One row per run; a run linked both here and on a child experiment shows as a direct link.
    by_run: dict[int, CardRun] = {}
    for link in links:
        current = by_run.get(link.run_id)
        if current is None or (link.card_id == card.pk and current.card_id != card.pk):
            by_run[link.run_id] = link
    chosen = list(by_run.values())
    baseline_ids = {link.run_id for link in links if link.is_baseline}

    keys = sorted({lm.key for link in chosen for lm in link.run.latest_metrics.all()})
    if card.metric_key and card.metric_key in keys:
        keys.remove(card.metric_key)
        keys.insert(0, card.metric_key)
    table_keys = keys[:MAX_METRIC_COLUMNS]
    param_maps = [{p.key: p.value for p in link.run.params.all()} for link in chosen]
    param_names = _key_param_names(param_maps)
    linked = [
        LinkedRun(
            run=link.run,
            link=link,
            direct=link.card_id == card.pk,
            via_card=None if link.card_id == card.pk else link.card,
            is_baseline=link.run_id in baseline_ids,
            metric_cells=_metric_cells(link.run, table_keys),
            key_params=[(name, pmap.get(name, "—")) for name in param_names],
        )
        for link, pmap in zip(chosen, param_maps, strict=True)
    ]
    proposal = last_decision = None
    if card.kind == CardKind.HYPOTHESIS:
        proposals = list(
            VerdictProposal.objects.filter(card=card)
            .exclude(status=VerdictStatus.SUPERSEDED)
            .select_related("decided_by")
            .order_by("-created_at", "-id")[:2]
        )
        proposal = next((p for p in proposals if p.status == VerdictStatus.PROPOSED), None)
        last_decision = next((p for p in proposals if p.status != VerdictStatus.PROPOSED), None)
    return CardPage(
        card=card, children=children, tags=tags, events=events, events_total=events_total, linked=linked,
        metric_keys=keys, key_param_names=param_names, proposal=proposal, last_decision=last_decision,
    )


def runs_search_for_card(*, card: Card, text: str, limit: int = 15) -> list[Run]:
    """Team runs not yet linked to this card, matching a name, run id or external id prefix."""
    qs = Run.objects.filter(team_id=card.board.team_id, lifecycle_stage="active").exclude(card_links__card=card)
    text = (text or "").strip()
    if text:
        text_q = Q(name__icontains=text) | Q(external_id__istartswith=text)
        if text.isdigit():
            text_q |= Q(pk=int(text))
        qs = qs.filter(text_q)
    return list(qs.select_related("user").order_by("-start_time", "-id")[:limit])
