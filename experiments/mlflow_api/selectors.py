"""Reads for the MLflow-compatible API, scoped to the caller's team, with MLflow's JSON shapes.

Every function runs a fixed number of queries whatever the number of runs, params or points.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Case, F, Prefetch, Q, QuerySet, Value, When

from ..inputs import INT64_MAX, INT64_MIN
from ..models import LatestMetric, Metric, Param, Run, RunDataset, RunModelIO, Team, TrackingExperiment
from ..services.artifacts import experiment_artifact_location, run_artifact_uri
from ..services.runs import ACTIVE, DEFAULT_EXPERIMENT_NAME, RUN_NAME_TAG, dt_to_ms
from .http import invalid, json_number, not_found
from .model_selectors import run_inputs_json, run_outputs_json
from .search import (
    decode_token,
    encode_token,
    filter_runs,
    offset_from,
    order_runs,
    parse_filter,
    parse_order_by,
    run_ordering,
    split_identifier,
    string_condition,
    tag_value,
)

DEFAULT_EXPERIMENT_ID = "0"
SEARCH_MAX_RESULTS_DEFAULT = 1000
SEARCH_MAX_RESULTS_LIMIT = 50000
VIEW_TYPES = {"ACTIVE_ONLY": 1, "DELETED_ONLY": 2, "ALL": 3}


def history_page_limit() -> int:
    """Largest metric-history page served; clients follow next_page_token past it."""
    return int(getattr(settings, "MLFLOW_METRIC_HISTORY_PAGE_MAX", 25000))


# --- Shapes ------------------------------------------------------------------------------------


def experiment_json(experiment: TrackingExperiment) -> dict[str, Any]:
    data: dict[str, Any] = {
        "experiment_id": str(experiment.pk),
        "name": experiment.name,
        "artifact_location": experiment_artifact_location(experiment),
        "lifecycle_stage": experiment.lifecycle_stage,
        "last_update_time": dt_to_ms(experiment.updated_at),
        "creation_time": dt_to_ms(experiment.created_at),
    }
    if experiment.tags:
        data["tags"] = [{"key": k, "value": str(v)} for k, v in experiment.tags.items()]
    return data


def artifact_uri(run: Run) -> str:
    return run_artifact_uri(run)


def run_info_json(run: Run) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_id": run.external_id,
        "run_uuid": run.external_id,
        "run_name": run.name,
        "experiment_id": str(run.experiment_id) if run.experiment_id else DEFAULT_EXPERIMENT_ID,
        "user_id": run.user_name,
        "status": run.status,
        "start_time": dt_to_ms(run.start_time),
        "artifact_uri": artifact_uri(run),
        "lifecycle_stage": run.lifecycle_stage,
    }
    if run.end_time is not None:
        info["end_time"] = dt_to_ms(run.end_time)
    return info


def metric_json(key: str, value: float, is_nan: bool, step: int, timestamp: int) -> dict[str, Any]:
    return {"key": key, "value": "NaN" if is_nan else json_number(value), "timestamp": timestamp, "step": step}


def run_json(run: Run) -> dict[str, Any]:
    """Needs run.latest_metrics, params, datasets and model_io prefetched (see with_data)."""
    tags = dict(run.tags or {})
    if run.name and RUN_NAME_TAG not in tags:
        tags[RUN_NAME_TAG] = run.name
    data: dict[str, Any] = {
        "info": run_info_json(run),
        "data": {
            "metrics": [
                metric_json(m.key, m.value, m.is_nan, m.step, m.timestamp) for m in run.latest_metrics.all()
            ],
            "params": [{"key": p.key, "value": p.value} for p in run.params.all()],
            "tags": [{"key": k, "value": str(v)} for k, v in tags.items()],
        },
        "inputs": run_inputs_json(run),
    }
    outputs = run_outputs_json(run)
    if outputs:
        data["outputs"] = outputs
    return data


def with_data(queryset: QuerySet[Run]) -> QuerySet[Run]:
    return queryset.prefetch_related(
        Prefetch("latest_metrics", queryset=LatestMetric.objects.order_by("key")),
        Prefetch("params", queryset=Param.objects.order_by("key")),
        Prefetch("datasets", queryset=RunDataset.objects.order_by("created_at", "pk")),
        Prefetch("model_io", queryset=RunModelIO.objects.select_related("model").order_by("pk")),
    )


# --- Experiments -------------------------------------------------------------------------------


def experiment_by_id(*, team: Team, experiment_id: str) -> TrackingExperiment | None:
    """None means the team's Default experiment (id '0'), which services create on first use."""
    if experiment_id in ("", DEFAULT_EXPERIMENT_ID):
        return None
    if not experiment_id.isascii() or not experiment_id.isdigit() or len(experiment_id) > 18:
        raise invalid(f"Invalid experiment ID '{experiment_id}'. Experiment IDs are integers, e.g. '3'.")
    experiment = TrackingExperiment.objects.filter(team=team, pk=int(experiment_id)).first()
    if experiment is None:
        raise not_found(f"No Experiment with id={experiment_id} exists")
    return experiment


def default_experiment(*, team: Team) -> TrackingExperiment | None:
    """The team's Default experiment (id '0') if a writer has created it; reading never creates it."""
    return TrackingExperiment.objects.filter(team=team, source="mlboard", name=DEFAULT_EXPERIMENT_NAME).first()


def experiment_by_name(*, team: Team, name: str) -> TrackingExperiment | None:
    # Prefer mlboard's own experiment over an imported one of the same name.
    return (
        TrackingExperiment.objects.filter(team=team, name=name)
        .order_by(Case(When(source="mlboard", then=Value(0)), default=Value(1)), "pk")
        .first()
    )


def experiments_search(
    *,
    team: Team,
    view_type: str | int | None,
    max_results: int | None,
    filter_string: str | None,
    order_by: list[str],
    page_token: str | None,
) -> tuple[list[TrackingExperiment], str | None]:
    queryset = TrackingExperiment.objects.filter(team=team)
    queryset = _by_lifecycle(queryset, view_type)
    for index, cond in enumerate(parse_filter(filter_string)):
        if cond.entity == "tag":
            alias = f"_tag{index}"
            queryset = queryset.alias(**{alias: tag_value(cond.key)}).filter(
                Q(tags__has_key=cond.key) & string_condition(alias, cond)
            )
        elif cond.entity == "attribute" and cond.key == "name":
            queryset = queryset.filter(string_condition("name", cond))
        else:
            raise invalid(f"Invalid experiment filter on '{cond.key}': filter on name or tags.<key>.")
    ordering = []
    fields = {"name": "name", "creation_time": "created_at", "last_update_time": "updated_at", "experiment_id": "pk"}
    for clause in order_by:
        parts = clause.split()
        entity, key = split_identifier(parts[0]) if parts else ("", "")
        if entity != "attribute" or key not in fields or len(parts) > 2:
            raise invalid(f"Invalid order_by clause '{clause}': order by {', '.join(fields)} with ASC or DESC.")
        descending = len(parts) == 2 and parts[1].upper() == "DESC"
        ordering.append(f"-{fields[key]}" if descending else fields[key])
    queryset = queryset.order_by(*(ordering or ["-created_at"]), "pk")
    limit = _max_results(max_results)
    offset = offset_from(page_token)
    page = list(queryset[offset : offset + limit + 1])
    token = encode_token({"offset": offset + limit}) if len(page) > limit else None
    return page[:limit], token


def _by_lifecycle(queryset: QuerySet, view_type: str | int | None) -> QuerySet:
    if view_type in (None, "", "ACTIVE_ONLY", 1, "1"):
        return queryset.filter(lifecycle_stage=ACTIVE)
    if view_type in ("DELETED_ONLY", 2, "2"):
        return queryset.exclude(lifecycle_stage=ACTIVE)
    if view_type in ("ALL", 3, "3"):
        return queryset
    raise invalid(f"Invalid view type {view_type!r}: use ACTIVE_ONLY, DELETED_ONLY or ALL.")


def _max_results(value: int | None) -> int:
    if value is None or value == 0:
        return SEARCH_MAX_RESULTS_DEFAULT
    if value < 0 or value > SEARCH_MAX_RESULTS_LIMIT:
        bound = "a positive integer" if value < 0 else f"at most {SEARCH_MAX_RESULTS_LIMIT}"
        raise invalid(f"Invalid value {value} for parameter 'max_results' supplied. It must be {bound}.")
    return value


# --- Runs --------------------------------------------------------------------------------------


def run_or_none(*, team: Team, run_id: str) -> Run | None:
    return Run.objects.filter(team=team, external_id=run_id).order_by("pk").first()


def run_by_id(*, team: Team, run_id: str, with_related: bool = False) -> Run:
    queryset = Run.objects.filter(team=team, external_id=run_id)
    if with_related:
        queryset = with_data(queryset)
    run = queryset.order_by("pk").first()
    if run is None:
        raise not_found(f"Run with id={run_id} not found")
    return run


def runs_search(
    *,
    team: Team,
    experiment_ids: list[str],
    filter_string: str | None,
    view_type: str | int | None,
    max_results: int | None,
    order_by: list[str],
    page_token: str | None,
) -> tuple[list[Run], str | None]:
    queryset = _by_lifecycle(Run.objects.filter(team=team), view_type)
    if experiment_ids:
        ids: list[int] = []
        include_default = False
        for raw in experiment_ids:
            text = str(raw)
            if text == DEFAULT_EXPERIMENT_ID:
                include_default = True
            elif text.isdigit():
                ids.append(int(text))
            else:
                raise invalid(f"Invalid experiment ID '{text}'. Experiment IDs are integers, e.g. '3'.")
        scope = Q(experiment_id__in=ids)
        if include_default:
            scope |= Q(experiment__isnull=True) | Q(
                experiment__name=DEFAULT_EXPERIMENT_NAME, experiment__source="mlboard"
            )
        queryset = queryset.filter(scope)
    queryset = filter_runs(queryset, parse_filter(filter_string))
    clauses = parse_order_by(order_by)
    limit = _max_results(max_results)
    offset = offset_from(page_token)
    if clauses and clauses[0][0] == "metric":
        ids = _metric_ordered_ids(queryset, clauses, offset, limit + 1)
        found = {run.pk: run for run in with_data(Run.objects.filter(pk__in=ids))}
        page = [found[pk] for pk in ids if pk in found]
    else:
        page = list(with_data(order_runs(queryset, clauses))[offset : offset + limit + 1])
    token = encode_token({"offset": offset + limit}) if len(page) > limit else None
    return page[:limit], token


def _metric_ordered_ids(queryset: QuerySet[Run], clauses: list[tuple[str, str, bool]], offset: int,
                        count: int) -> list[int]:
    """Ids of one page of runs ordered by a metric first, without sorting every run: the runs that
    have the metric come in value order off the (key, value, run) index, the rest (NULL sorts last)
    only when the page reaches past them. Same order as order_runs."""
    queryset, ordering = run_ordering(queryset, clauses)
    value = F("_order0")
    # Plain ASC/DESC over non-NULL values matches the index order; NULLS LAST would not.
    first = value.asc() if clauses[0][2] else value.desc()
    present = queryset.filter(_order0__isnull=False).order_by(first, *ordering[1:]).values_list("pk", flat=True)
    ids = list(present[offset : offset + count])
    if len(ids) == count:
        return ids
    # Runs with the metric before this page: all of offset when the page holds some of them.
    before = offset + len(ids) if ids or not offset else present.count()
    absent = queryset.filter(_order0__isnull=True).order_by(*ordering[1:]).values_list("pk", flat=True)
    skip = max(0, offset - before)
    return ids + list(absent[skip : skip + count - len(ids)])


def metric_history(
    *, run: Run, key: str, max_results: int | None, page_token: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Points in (step, timestamp) order. Keyset pages, so deep pages cost the same as the first."""
    cap = history_page_limit()
    if max_results is not None and max_results <= 0:
        raise invalid(
            f"Invalid value {max_results} for parameter 'max_results' supplied. It must be a positive integer."
        )
    limit = min(max_results or cap, cap)
    queryset = Metric.objects.filter(run=run, key=key)
    after = decode_token(page_token, fields=("step", "ts", "id"))
    if after is not None:
        step, ts, pk = after["step"], after["ts"], after["id"]
        if not all(type(v) is int and INT64_MIN <= v <= INT64_MAX for v in (step, ts, pk)):
            raise invalid(f"Invalid page token {page_token[:100]!r}: pass back a next_page_token you were given.")
        queryset = queryset.filter(
            Q(step__gt=step) | Q(step=step, timestamp__gt=ts) | Q(step=step, timestamp=ts, pk__gt=pk)
        )
    rows = list(
        queryset.order_by("step", "timestamp", "pk").values_list("pk", "value", "is_nan", "step", "timestamp")[
            : limit + 1
        ]
    )
    more = len(rows) > limit
    rows = rows[:limit]
    points = [metric_json(key, value, is_nan, step, ts) for _, value, is_nan, step, ts in rows]
    token = None
    if more:
        last = rows[-1]
        token = encode_token({"step": last[3], "ts": last[4], "id": last[0]})
    return points, token
