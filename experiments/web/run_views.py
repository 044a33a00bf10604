"""Run views: runs list, run detail, run comparison, the card page and their chart endpoints.

Views stay thin: reads come from experiments.selectors.runs/metrics, writes from
experiments.services.runs/verdicts, figures from experiments.charts.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from csp.constants import UNSAFE_EVAL
from csp.decorators import csp_update
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from .. import charts
from ..access import ensure_can_edit, get_card_or_404, get_membership_or_404
from ..errors import DomainError, PermissionDeniedError
from ..models import (
    Card,
    CardEvent,
    CardKind,
    Direction,
    EventKind,
    Membership,
    Run,
    RunStatus,
    VerdictChoice,
    VerdictProposal,
)
from ..selectors import metrics as metric_selectors
from ..selectors import registry as registry_selectors
from ..selectors import runs as run_selectors
from ..selectors import verdicts as verdict_selectors
from ..services import runs as run_services

PAGE_SIZE = 50
DEFAULT_METRIC_COLUMNS = 4
# Point budget per series shrinks when many runs share a chart, so one response stays small.
MAX_POINTS_PER_CHART = 40_000
MIN_POINTS_PER_SERIES = 200


def points_per_series(n_series: int) -> int:
    if n_series <= 0:
        return metric_selectors.MAX_POINTS
    return max(MIN_POINTS_PER_SERIES, min(metric_selectors.MAX_POINTS, MAX_POINTS_PER_CHART // n_series))


def duration_text(run: Run, now: dt.datetime | None = None) -> str:
    """'2h 05m', '3m 20s', '12s'; for live runs the time since start."""
    if run.start_time is None:
        return "—"
    end = run.end_time or (None if run.is_terminal else (now or timezone.now()))
    if end is None:
        return "—"
    seconds = max(0, int((end - run.start_time).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _decorate_durations(runs: list[Run]) -> None:
    now = timezone.now()
    for run in runs:
        run.duration_text = duration_text(run, now)  # type: ignore[attr-defined]


# --- Runs list ----------------------------------------------------------------------------------


class RunFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, label="Search")
    status = forms.MultipleChoiceField(choices=RunStatus.choices, required=False, label="Status")
    user = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="User")
    experiment = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="Experiment")
    card = forms.CharField(required=False, max_length=24, label="Card")
    date_from = forms.DateField(required=False, label="Started from")
    date_to = forms.DateField(required=False, label="Started until")
    sort = forms.CharField(required=False, max_length=260, label="Sort")
    col = forms.MultipleChoiceField(required=False, label="Metric columns")

    def __init__(self, *args: Any, users: list, experiments: list, metric_keys: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["user"].choices = [("", "Anyone")] + [(u.pk, u.label) for u in users]
        self.fields["experiment"].choices = [("", "Any experiment")] + [(e.pk, e.name) for e in experiments]
        self.fields["col"].choices = [(k, k) for k in metric_keys]
        self.metric_keys = metric_keys

    def clean_sort(self) -> str:
        sort = (self.cleaned_data.get("sort") or "").strip() or run_selectors.DEFAULT_SORT
        name = sort.lstrip("-")
        if name.startswith(run_selectors.METRIC_SORT_PREFIX):
            if name[len(run_selectors.METRIC_SORT_PREFIX):] not in self.metric_keys:
                raise forms.ValidationError("Unknown metric to sort by; sorted by start time instead.")
        elif name not in run_selectors.SORT_FIELDS:
            raise forms.ValidationError("Unknown sort column; sorted by start time instead.")
        return sort

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return data


def _filters_from(form: RunFilterForm) -> run_selectors.RunFilters:
    form.is_valid()  # Invalid fields are reported and ignored; the rest still filters.
    data = form.cleaned_data
    return run_selectors.RunFilters(
        status=tuple(data.get("status") or ()),
        user_id=data.get("user"),
        experiment_id=data.get("experiment"),
        card=data.get("card") or "",
        text=data.get("q") or "",
        date_from=data.get("date_from"),
        date_to=data.get("date_to"),
        sort=data.get("sort") or run_selectors.DEFAULT_SORT,
    )


@login_required
@require_GET
def runs_page(request: HttpRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    team = membership.team
    users, experiments = run_selectors.team_filter_options(team=team)
    metric_keys = run_selectors.team_metric_keys(team=team)
    form = RunFilterForm(request.GET or None, users=users, experiments=experiments, metric_keys=metric_keys)
    filters = _filters_from(form) if request.GET else run_selectors.RunFilters()
    chosen_cols = form.cleaned_data.get("col") if form.is_bound else None
    columns = list(chosen_cols or metric_keys[:DEFAULT_METRIC_COLUMNS])

    qs = run_selectors.runs_filtered(team=team, filters=filters)
    page = run_selectors.runs_page(
        qs=run_selectors.runs_prefetched(qs, metric_keys=columns), sort=filters.sort,
        after=request.GET.get("after"), size=PAGE_SIZE,
    )
    rows = run_selectors.runs_decorate(page.rows, metric_keys=columns)
    _decorate_durations(rows)

    base_query = request.GET.copy()
    base_query.pop("after", None)
    base_query.pop("page", None)
    sort_query = base_query.copy()
    sort_query.pop("sort", None)
    headers = _sort_headers(filters.sort, columns)
    context = {
        "team": team,
        "membership": membership,
        "form": form,
        "filter_errors": [
            (form.fields[name].label or name.capitalize() if name in form.fields else "", message)
            for name, errors in form.errors.items()
            for message in errors
        ],
        "filters": filters,
        "rows": rows,
        "page": page,
        "columns": columns,
        "metric_keys": metric_keys,
        "statuses": RunStatus.choices,
        "selected_status": set(filters.status),
        "sort": filters.sort,
        "sort_headers": headers,
        "metric_headers": [{"key": c, **headers[run_selectors.METRIC_SORT_PREFIX + c]} for c in columns],
        "page_query": base_query.urlencode(),
        "sort_query": sort_query.urlencode(),
    }
    template = "runs/_runs_results.html" if request.htmx else "runs/list.html"
    return render(request, template, context)


def _sort_headers(current: str, columns: list[str]) -> dict[str, dict[str, str]]:
    """For each sortable header: the sort value a click applies and the aria-sort state."""
    headers: dict[str, dict[str, str]] = {}
    names = [*run_selectors.SORT_FIELDS, *(run_selectors.METRIC_SORT_PREFIX + c for c in columns)]
    for name in names:
        if current == name:
            headers[name] = {"next": f"-{name}", "aria": "ascending", "arrow": "▲"}
        elif current == f"-{name}":
            headers[name] = {"next": name, "aria": "descending", "arrow": "▼"}
        else:
            # Text columns sort A→Z first; times and numbers newest/largest first.
            first = name if name in ("name", "status", "user") else f"-{name}"
            headers[name] = {"next": first, "aria": "none", "arrow": ""}
    return headers


# --- Run detail ---------------------------------------------------------------------------------


@login_required
@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run, membership = run_selectors.get_run_or_404(user=request.user, run_id=run_id)
    detail = run_selectors.run_detail(run)
    run.duration_text = duration_text(run)  # type: ignore[attr-defined]
    chart_base = reverse("run_metric_chart", args=[run.team.slug])
    charts_list = [
        {"key": m.key, "src": f"{chart_base}?{urlencode({'key': m.key, 'run': run.pk})}"} for m in detail.metrics
    ]
    from .teamwork_views import comments_context

    return render(
        request,
        "runs/detail.html",
        {"team": run.team, "membership": membership, "run": run, "detail": detail, "charts": charts_list,
         **comments_context(request, run=run)},
    )


@login_required
@require_GET
def models_page(request: HttpRequest, team_slug: str) -> HttpResponse:
    """The team's model registry: registered models, versions with their run and card, aliases."""
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    models = registry_selectors.team_registered_models(team=membership.team)
    return render(request, "models/list.html", {"team": membership.team, "membership": membership, "models": models})


@require_GET
def mlflow_link_page(request: HttpRequest) -> HttpResponse:
    """/mlflow/: the page behind the link MLflow clients print. The run is in the URL fragment, which
    only the browser sees, so a script turns it into a query for mlflow_link_open."""
    return render(request, "runs/mlflow_link.html", {"open_url": reverse("mlflow_link_open")})


@login_required
@require_GET
def mlflow_link_open(request: HttpRequest) -> HttpResponse:
    """?run=<MLflow run id> opens the run page; ?experiment=<id> the runs list filtered to it."""
    run_id, experiment_id = request.GET.get("run", ""), request.GET.get("experiment", "")
    if run_id:
        run = run_selectors.run_by_external_id(user=request.user, external_id=run_id)
        if run is None:
            raise Http404("No such run in your teams.")
        return HttpResponseRedirect(reverse("run_detail", args=[run.pk]))
    if experiment_id:
        experiment = run_selectors.tracking_experiment_for_link(user=request.user, experiment_id=experiment_id)
        if experiment is None:
            raise Http404("No such experiment in your teams.")
        url = reverse("runs", args=[experiment.team.slug])
        return HttpResponseRedirect(f"{url}?{urlencode({'experiment': experiment.pk})}")
    return HttpResponseRedirect(reverse("home"))


def _run_ids(request: HttpRequest) -> tuple[list[int], list[str]]:
    ids, bad = [], []
    for raw in request.GET.getlist("run"):
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            if part.isdigit():
                ids.append(int(part))
            else:
                bad.append(part)
    return list(dict.fromkeys(ids)), bad


@login_required
@require_GET
def run_metric_chart(request: HttpRequest, team_slug: str) -> JsonResponse:
    """Chart JSON for one metric key over the given runs of a team (?key=…&run=1&run=2)."""
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    key = request.GET.get("key", "")
    ids, bad = _run_ids(request)
    if not key or not ids or bad:
        return JsonResponse({"error": "Give a metric key and one or more numeric run ids."}, status=400)
    ids = ids[: run_selectors.MAX_COMPARE]
    by_id = {r.pk: r for r in Run.objects.filter(team=membership.team, pk__in=ids)}
    runs = [by_id[i] for i in ids if i in by_id]
    colors = {run.pk: charts.run_color(i) for i, run in enumerate(runs)}
    series = metric_selectors.metric_series(runs=runs, key=key, max_points=points_per_series(len(runs)))
    return _chart_response(key=key, series=series, colors=colors)


def _chart_response(
    *, key: str, series: list, colors: dict[int, str], threshold: float | None = None, direction: str = ""
) -> JsonResponse:
    fig = charts.metric_chart_spec(key=key, series=series, colors=colors, threshold=threshold, direction=direction)
    payload = charts.figure_payload(
        fig,
        key=key,
        series=len(series),
        points=sum(len(s.steps) for s in series),
        total_points=sum(s.total_points for s in series),
        downsampled=any(s.downsampled for s in series),
        finite_points=charts.finite_count(series),
    )
    return JsonResponse(payload)


# --- Comparison ---------------------------------------------------------------------------------


@login_required
@require_GET
@csp_update({"script-src": [UNSAFE_EVAL]})  # plotly's WebGL parcoords compile shaders with new Function
def run_compare(request: HttpRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    team = membership.team
    ids, bad = _run_ids(request)
    problems = []
    if bad:
        problems.append(f"Ignored run ids that are not numbers: {', '.join(bad[:5])}.")
    if len(ids) > run_selectors.MAX_COMPARE:
        problems.append(f"Compared the first {run_selectors.MAX_COMPARE} of {len(ids)} selected runs.")
    comparison = run_selectors.runs_compare(team=team, run_ids=ids)
    if comparison.missing_ids:
        problems.append(f"{len(comparison.missing_ids)} selected run(s) were not found on this team.")
    color_metric = request.GET.get("color") or None
    fig = charts.parallel_coordinates(comparison=comparison, color_metric=color_metric)
    _decorate_durations(comparison.runs)
    chart_base = reverse("run_metric_chart", args=[team.slug])
    run_query = urlencode([("run", r.pk) for r in comparison.runs])
    metric_charts = [
        {"key": row.key, "src": f"{chart_base}?{urlencode({'key': row.key})}&{run_query}"}
        for row in comparison.metrics
    ]
    for index, run in enumerate(comparison.runs):
        run.color = charts.run_color(index)  # type: ignore[attr-defined]
    return render(
        request,
        "runs/compare.html",
        {
            "team": team,
            "membership": membership,
            "comparison": comparison,
            "parcoords": charts.figure_payload(fig) if fig is not None else None,
            "metric_charts": metric_charts,
            "problems": problems,
            "color_metric": color_metric,
            "differing_params": sum(1 for row in comparison.params if row.differs),
            "cards_count": len({c.pk for run in comparison.runs for c in run.linked_cards}),
        },
    )


# --- Card page ----------------------------------------------------------------------------------


def _event_view(event: CardEvent) -> dict[str, Any]:
    """Human sentence for an event: who did what (the actor is shown separately)."""
    data = event.data or {}
    kind = event.kind
    text = event.get_kind_display()
    detail = ""
    run_id = data.get("run_id")
    if kind == EventKind.CREATED:
        text = f"created the card in {event.to_column.name}" if event.to_column else "created the card"
    elif kind == EventKind.MOVED:
        src = event.from_column.name if event.from_column else (event.from_stage or "?")
        dst = event.to_column.name if event.to_column else (event.to_stage or "?")
        text = f"moved it from {src} to {dst}"
        detail = data.get("reason", "")
    elif kind == EventKind.EDITED and "baseline" in (data.get("changed") or {}) and data.get("run"):
        now_baseline = data["changed"]["baseline"][1]
        verb = "marked" if now_baseline else "unmarked"
        text = f"{verb} run {data['run'][:12]} as baseline"
    elif kind == EventKind.EDITED:
        changed = sorted((data.get("changed") or {}).keys())
        text = f"edited {', '.join(f.replace('_', ' ') for f in changed)}" if changed else "edited the card"
    elif kind == EventKind.STATUS:
        change = (data.get("changed") or {}).get("verdict")
        text = f"set the verdict to {change[1]}" if change else "changed the status"
    elif kind == EventKind.LINKED:
        via = " (from its mlboard.card tag)" if data.get("via") == "tag" else ""
        role = " as baseline" if data.get("baseline") else ""
        text = f"linked run {data.get('run', '')[:12]}{role}{via}"
    elif kind == EventKind.UNLINKED:
        text = f"unlinked run {data.get('run', '')[:12]}"
    elif kind == EventKind.VERDICT_PROPOSED:
        text = f"proposed verdict {data.get('proposed', '?')}"
        if data.get("n") is not None:
            detail = f"n = {data['n']}, mean {metric_selectors.format_value(data.get('mean'))}"
    elif kind == EventKind.VERDICT_DECIDED:
        decided, proposed = data.get("decided", "?"), data.get("proposed")
        verb = "confirmed" if decided == proposed else "overrode the proposal with"
        text = f"{verb} verdict {decided}"
        detail = data.get("note", "")
    elif kind == EventKind.NOTE:
        text = "added a note"
        detail = data.get("text", "")
    elif kind == EventKind.FLAGGED:
        text = "flagged the card" if data.get("flagged") else "cleared the flag"
        detail = data.get("reason", "")
    return {
        "event": event,
        "actor": str(event.actor) if event.actor else "mlboard",
        "automatic": event.actor_id is None,
        "text": text,
        "detail": detail,
        "run_id": run_id,
    }


def events_collapsed(items: list[dict[str, Any]], *, min_run: int = 2) -> list[dict[str, Any]]:
    """Consecutive automatic entries (run links, iteration bookkeeping, moves by run events) fold into
    one expandable line, so what people did stays readable."""
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if len(run) >= min_run:
            counts: dict[str, int] = {}
            for item in run:
                counts[item["text"]] = counts.get(item["text"], 0) + 1
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
            summary = "; ".join(f"{text} ({n} times)" if n > 1 else text for text, n in top)
            out.append({"group": list(run), "count": len(run), "summary": summary, "event": run[0]["event"]})
        else:
            out.extend(run)
        run.clear()

    for item in items:
        if item["automatic"]:
            run.append(item)
        else:
            flush()
            out.append(item)
    flush()
    return out


def _criterion_text(card: Card) -> str:
    if not card.metric_key:
        return ""
    better = "higher" if card.direction == Direction.MAXIMIZE else "lower"
    parts = []
    if card.threshold is not None:
        comparison = "≥" if card.direction == Direction.MAXIMIZE else "≤"
        parts.append(f"{card.metric_key} {comparison} {card.threshold:g}")
    if card.min_delta is not None:
        parts.append(f"improves on the baseline by at least {card.min_delta:g}")
    if not parts:
        parts.append(card.metric_key)
    return f"{' and '.join(parts)} ({better} is better), decided on the first {card.min_runs} run(s)"


STAT_LABELS = (
    ("n", "Runs used"),
    ("mean", "Mean"),
    ("std", "Std"),
    ("ci_low", "95% CI low"),
    ("ci_high", "95% CI high"),
    ("threshold", "Threshold"),
    ("baseline", "Baseline"),
    ("delta", "Delta"),
    ("min_delta", "Required delta"),
)


def _proposal_stats(proposal: VerdictProposal | None) -> list[tuple[str, str]]:
    if proposal is None:
        return []
    stats = proposal.stats or {}
    rows = []
    for key, label in STAT_LABELS:
        if stats.get(key) is None:
            continue
        value = stats[key]
        rows.append((label, str(value) if isinstance(value, int) else metric_selectors.format_value(value)))
    return rows


def _card_context(request: HttpRequest, card: Card, membership: Membership, **extra: Any) -> dict[str, Any]:
    page = run_selectors.card_page(card)
    card = page.card
    runs = [row.run for row in page.linked]
    _decorate_durations(runs)
    for index, row in enumerate(page.linked):
        row.color = charts.run_color(index)  # type: ignore[attr-defined]
    chart_base = reverse("card_metric_chart", args=[card.pk])
    chart_list = [{"key": key, "src": f"{chart_base}?{urlencode({'key': key})}"} for key in page.metric_keys]
    proposal_stats = _proposal_stats(page.proposal)
    criteria = (page.proposal.stats or {}).get("criteria", {}) if page.proposal else {}
    plan: dict[str, Any] = {}
    if card.kind == CardKind.HYPOTHESIS:
        shown = page.proposal or page.last_decision
        plan = {
            "progress": None if page.proposal else verdict_selectors.verdict_plan_progress(card=card),
            "amendments": verdict_selectors.amendments_for_card(card=card),
            "sample_size": verdict_selectors.sample_size_hint(card=card),
            "details": verdict_selectors.verdict_detail_items(shown.stats if shown else None),
            "excluded": (shown.stats or {}).get("excluded", []) if shown else [],
            "later_runs": len((shown.stats or {}).get("later_run_ids", [])) if shown else 0,
            "exploratory": bool((shown.stats or {}).get("exploratory")) if shown else False,
        }
    return {
        "team": card.board.team,
        "membership": membership,
        "can_edit": membership.can_edit,
        "card": card,
        "page": page,
        "events": events_collapsed([_event_view(e) for e in page.events]),
        "charts": chart_list,
        "criterion": _criterion_text(card) if card.kind == CardKind.HYPOTHESIS else "",
        "proposal_stats": proposal_stats,
        "proposal_criteria": sorted(criteria.items()),
        "plan": plan,
        "verdict_choices": VerdictChoice.choices,
        "compare_url": reverse("run_compare", args=[card.board.team.slug]),
        **_teamwork_context(request, card),
        **extra,
    }


def _teamwork_context(request: HttpRequest, card: Card) -> dict[str, Any]:
    """Comments, watching, the evidence snapshot and similar earlier hypotheses for the card page."""
    from ..models import EvidenceSnapshot
    from ..selectors.insights import similar_hypotheses
    from ..selectors.notifications import is_watching
    from .teamwork_views import comments_context

    similar = []
    if card.kind == CardKind.HYPOTHESIS:
        similar = similar_hypotheses(
            team=card.board.team, text=f"{card.title} {card.statement}",
            tags=list(card.tags.values_list("name", flat=True)), metric_key=card.metric_key, exclude_id=card.pk,
        )
    return {
        **comments_context(request, card=card),
        "watching": is_watching(user=request.user, card_id=card.pk) or card.owner_id == request.user.pk,
        "snapshot": EvidenceSnapshot.objects.filter(card=card).only("id", "created_at").first(),
        "similar": similar,
    }


@login_required
@require_GET
def card_detail(request: HttpRequest, card_id: int) -> HttpResponse:
    card, membership = get_card_or_404(user=request.user, card_id=card_id)
    return render(request, "cards/detail.html", _card_context(request, card, membership))


@login_required
@require_GET
def card_metric_chart(request: HttpRequest, card_id: int) -> JsonResponse:
    card, _membership = get_card_or_404(user=request.user, card_id=card_id)
    key = request.GET.get("key", "")
    if not key:
        return JsonResponse({"error": "Give a metric key (?key=…)."}, status=400)
    runs, baselines = metric_selectors.card_chart_runs(card)
    colors = {run.pk: charts.run_color(i) for i, run in enumerate(runs)}
    series = metric_selectors.metric_series(
        runs=runs, key=key, max_points=points_per_series(len(runs)), baseline_ids=baselines
    )
    threshold = card.threshold if card.kind == CardKind.HYPOTHESIS and key == card.metric_key else None
    return _chart_response(key=key, series=series, colors=colors, threshold=threshold, direction=card.direction)


@login_required
@require_GET
def card_run_search(request: HttpRequest, card_id: int) -> HttpResponse:
    card, membership = get_card_or_404(user=request.user, card_id=card_id)
    text = request.GET.get("q") or request.GET.get("run") or ""
    results = run_selectors.runs_search_for_card(card=card, text=text)
    _decorate_durations(results)
    return render(
        request, "cards/_run_search.html",
        {"card": card, "results": results, "q": text, "can_edit": membership.can_edit},
    )


def _runs_section(request: HttpRequest, card: Card, membership: Membership, **extra: Any) -> HttpResponse:
    """After a write: htmx gets the refreshed runs section, a plain form post a redirect."""
    if request.htmx:
        return render(request, "cards/_runs_section.html", _card_context(request, card, membership, **extra))
    error = extra.get("runs_error")
    if error:
        messages.error(request, error)
    elif extra.get("runs_notice"):
        messages.success(request, extra["runs_notice"])
    return HttpResponseRedirect(reverse("card_detail", args=[card.pk]) + "#runs")


def _team_run(card: Card, raw: str | None) -> Run | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    qs = Run.objects.filter(team_id=card.board.team_id)
    if raw.isdigit():
        return qs.filter(pk=int(raw)).first()
    return qs.filter(external_id=raw).first()


def _forbidden(request: HttpRequest, error: PermissionDeniedError) -> HttpResponse:
    return HttpResponse(error.message, status=403, content_type="text/plain; charset=utf-8")


@login_required
@require_POST
def card_run_link(request: HttpRequest, card_id: int) -> HttpResponse:
    card, membership = get_card_or_404(user=request.user, card_id=card_id)
    try:
        ensure_can_edit(membership)
    except PermissionDeniedError as error:
        return _forbidden(request, error)
    run = _team_run(card, request.POST.get("run"))
    if run is None:
        return _runs_section(request, card, membership, runs_error="No run with that id on this team.")
    baseline = request.POST.get("baseline") == "1"
    try:
        run_services.card_link_run(card=card, run=run, actor=request.user, is_baseline=baseline)
    except DomainError as error:
        return _runs_section(request, card, membership, runs_error=error.message)
    label = run.name or run.external_id[:8]
    return _runs_section(
        request, card, membership, runs_notice=f"Linked {label}{' as baseline' if baseline else ''}."
    )


@login_required
@require_POST
def card_run_unlink(request: HttpRequest, card_id: int, run_id: int) -> HttpResponse:
    card, membership = get_card_or_404(user=request.user, card_id=card_id)
    try:
        ensure_can_edit(membership)
    except PermissionDeniedError as error:
        return _forbidden(request, error)
    run = _team_run(card, str(run_id))
    if run is None or not card.run_links.filter(run=run).exists():
        return _runs_section(request, card, membership, runs_error="That run is not linked to this card.")
    run_services.card_unlink_run(card=card, run=run, actor=request.user)
    return _runs_section(request, card, membership, runs_notice=f"Unlinked {run.name or run.external_id[:8]}.")


@login_required
@require_POST
def card_run_baseline(request: HttpRequest, card_id: int, run_id: int) -> HttpResponse:
    card, membership = get_card_or_404(user=request.user, card_id=card_id)
    try:
        ensure_can_edit(membership)
    except PermissionDeniedError as error:
        return _forbidden(request, error)
    run = _team_run(card, str(run_id))
    if run is None or not card.run_links.filter(run=run).exists():
        return _runs_section(request, card, membership, runs_error="That run is not linked to this card.")
    baseline = request.POST.get("baseline", "1") == "1"
    run_services.card_link_run(card=card, run=run, actor=request.user, is_baseline=baseline)
    label = run.name or run.external_id[:8]
    notice = f"{label} is now the baseline." if baseline else f"{label} is no longer a baseline."
    return _runs_section(request, card, membership, runs_notice=notice)


@login_required
@require_POST
def card_verdict_decide(request: HttpRequest, card_id: int, proposal_id: int) -> HttpResponse:
    card, membership = get_card_or_404(user=request.user, card_id=card_id)
    try:
        ensure_can_edit(membership)
    except PermissionDeniedError as error:
        return _forbidden(request, error)
    proposal = VerdictProposal.objects.filter(pk=proposal_id, card=card).first()
    target = reverse("card_detail", args=[card.pk]) + "#verdict"
    if proposal is None:
        messages.error(request, "That verdict proposal does not exist on this card.")
        return HttpResponseRedirect(target)
    action = request.POST.get("action")
    note = request.POST.get("note", "")
    verdict: str | None = None
    if action == "override":
        verdict = request.POST.get("verdict", "")
        if verdict not in VerdictChoice.values:
            messages.error(request, "Choose the verdict you want instead: supported, refuted or inconclusive.")
            return HttpResponseRedirect(target)
    elif action != "confirm":
        messages.error(request, "Choose Confirm or Override.")
        return HttpResponseRedirect(target)
    from ..services.verdicts import verdict_decide

    try:
        decided = verdict_decide(proposal=proposal, actor=request.user, verdict=verdict, note=note)
    except DomainError as error:
        messages.error(request, error.message)
        return HttpResponseRedirect(target)
    word = "confirmed" if decided.decided == decided.proposed else "overridden"
    messages.success(request, f"Verdict {word}: {decided.get_decided_display()}. {card.key} moved to Done.")
    return HttpResponseRedirect(target)
