"""Reads for the MLflow-compatible API's datasets, logged models and model registry, scoped to the
caller's team, with MLflow's JSON shapes. Each function runs a fixed number of queries."""

from __future__ import annotations

import json
from typing import Any

from django.db.models import (
    Case,
    Exists,
    F,
    FloatField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    TextField,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast

from ..models import LoggedModel, LoggedModelMetric, ModelVersion, RegisteredModel, Run, Team
from ..services.runs import ACTIVE, dt_to_ms, ms_to_dt
from .http import invalid, json_number, not_found
from .search import Condition, encode_token, numeric_condition, offset_from, parse_filter, string_condition

SEARCH_REGISTERED_MAX = 1000
REGISTRY_MAX_RESULTS = 200_000


def _json_filter(queryset: QuerySet, field: str, index: int, cond: Any, *, registry: bool = False) -> QuerySet:
    """A params/tags JSON key compared as text (see search.tag_value). In the registry, as in MLflow's,
    a negated condition also matches models without the tag (the client's default search excludes
    prompts with tag.`mlflow.prompt.is_prompt` != 'true')."""
    alias = f"_{field}{index}"
    has_key = Q(**{f"{field}__has_key": cond.key})
    condition = has_key & string_condition(alias, cond)
    if registry and cond.op in ("!=", "NOT IN", "NOT LIKE", "NOT ILIKE"):
        condition |= ~has_key
    return queryset.alias(**{alias: Cast(KeyTextTransform(cond.key, field), output_field=TextField())}).filter(
        condition
    )


def _tags(tags: dict[str, Any]) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in tags.items()]


# --- Run inputs and outputs --------------------------------------------------------------------


def run_inputs_json(run: Run) -> dict[str, Any]:
    """Needs run.datasets and run.model_io prefetched (selectors.with_data)."""
    inputs: dict[str, Any] = {}
    datasets = []
    for d in run.datasets.all():
        dataset = {"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source}
        if d.schema:
            dataset["schema"] = d.schema
        if d.profile:
            dataset["profile"] = d.profile
        entry: dict[str, Any] = {"dataset": dataset}
        if d.tags:
            entry["tags"] = _tags(d.tags)
        datasets.append(entry)
    if datasets:
        inputs["dataset_inputs"] = datasets
    io = list(run.model_io.all())
    model_inputs = [{"model_id": x.model.model_id} for x in io if x.direction == "input"]
    if model_inputs:
        inputs["model_inputs"] = model_inputs
    return inputs


def run_outputs_json(run: Run) -> dict[str, Any] | None:
    outputs = [{"model_id": x.model.model_id, "step": x.step} for x in run.model_io.all() if x.direction == "output"]
    return {"model_outputs": outputs} if outputs else None


# --- Logged models -----------------------------------------------------------------------------


def _model_metric_json(m: LoggedModelMetric, model_id: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "key": m.key,
        "value": "NaN" if m.is_nan else json_number(m.value),
        "timestamp": m.timestamp,
        "step": m.step,
        "model_id": model_id,
    }
    if m.run_external_id:
        data["run_id"] = m.run_external_id
    if m.dataset_name:
        data["dataset_name"] = m.dataset_name
    if m.dataset_digest:
        data["dataset_digest"] = m.dataset_digest
    return data


def logged_model_json(model: LoggedModel) -> dict[str, Any]:
    """Needs model.metrics prefetched and source_run selected (logged_models_queryset)."""
    info: dict[str, Any] = {
        "model_id": model.model_id,
        "experiment_id": str(model.experiment_id),
        "name": model.name,
        "creation_timestamp_ms": dt_to_ms(model.created_at),
        "last_updated_timestamp_ms": dt_to_ms(model.updated_at),
        "artifact_uri": model.artifact_location,
        "status": model.status,
    }
    if model.model_type:
        info["model_type"] = model.model_type
    source_run_id = model.source_run.external_id if model.source_run is not None else model.source_run_external_id
    if source_run_id:
        info["source_run_id"] = source_run_id
    if model.status_message:
        info["status_message"] = model.status_message
    if model.tags:
        info["tags"] = _tags(model.tags)
    data: dict[str, Any] = {}
    if model.params:
        data["params"] = [{"key": k, "value": v} for k, v in model.params.items()]
    metrics = [_model_metric_json(m, model.model_id) for m in model.metrics.all()]
    if metrics:
        data["metrics"] = metrics
    return {"info": info, "data": data}


def logged_models_queryset(team: Team) -> QuerySet[LoggedModel]:
    return (
        LoggedModel.objects.filter(team=team)
        .select_related("source_run")
        .prefetch_related(Prefetch("metrics", queryset=LoggedModelMetric.objects.order_by("key", "step", "timestamp")))
    )


def logged_model_by_id(*, team: Team, model_id: str, allow_deleted: bool = False) -> LoggedModel:
    model = logged_models_queryset(team).filter(model_id=model_id).first()
    if model is None or (model.lifecycle_stage != ACTIVE and not allow_deleted):
        raise not_found(f"Logged model with ID '{model_id}' not found.")
    return model


_MODEL_ORDER_FIELDS = {
    "name": "name",
    "model_id": "model_id",
    "experiment_id": "experiment_id",
    "status": "status",
    "model_type": "model_type",
    "source_run_id": "source_run_external_id",
    "creation_timestamp": "created_at",
    "creation_time": "created_at",
    "creation_timestamp_ms": "created_at",
    "last_updated_timestamp": "updated_at",
    "last_updated_timestamp_ms": "updated_at",
}
_MODEL_TIME_ATTRIBUTES = {k: v for k, v in _MODEL_ORDER_FIELDS.items() if v in ("created_at", "updated_at")}


def _dataset_q(datasets: list[dict[str, Any]]) -> Q | None:
    """A model metric on any of the given datasets, as `mlflow server` answers it: its handler passes
    a missing digest on as None, which its SQL store compares as IS NULL, so an entry without a
    digest matches only metrics logged without one (stored here as "")."""
    condition = None
    for dataset in datasets:
        if not isinstance(dataset, dict) or not dataset.get("dataset_name"):
            raise invalid("`dataset_name` in the `datasets` clause must be specified.")
        one = Q(dataset_name=str(dataset["dataset_name"]), dataset_digest=str(dataset.get("dataset_digest") or ""))
        condition = one if condition is None else condition | one
    return condition


def _metric_value(cond: Condition) -> float:
    if isinstance(cond.value, str) or cond.value is None or isinstance(cond.value, list | tuple):
        raise invalid(f"Metric '{cond.key}' must be compared with a number, e.g. metrics.{cond.key} > 0.5.")
    return float(cond.value)


def _filter_models(queryset: QuerySet, conditions: list[Condition], datasets: Q | None) -> QuerySet:
    metric_filtered = False
    for index, cond in enumerate(conditions):
        if cond.entity == "metric":
            # Some point of the metric (any step, run or listed dataset) satisfies the comparison.
            points = LoggedModelMetric.objects.filter(model=OuterRef("pk"), key=cond.key, is_nan=False)
            points = points.filter(numeric_condition("value", cond, _metric_value(cond)))
            queryset = queryset.filter(Exists(points.filter(datasets) if datasets is not None else points))
            metric_filtered = True
        elif cond.entity == "attribute" and cond.key in ("name", "model_id", "status", "model_type"):
            queryset = queryset.filter(string_condition(cond.key, cond))
        elif cond.entity == "attribute" and cond.key == "source_run_id":
            queryset = queryset.filter(string_condition("source_run_external_id", cond))
        elif cond.entity == "attribute" and cond.key in _MODEL_TIME_ATTRIBUTES:
            when = ms_to_dt(int(_metric_value(cond)))
            queryset = queryset.filter(numeric_condition(_MODEL_TIME_ATTRIBUTES[cond.key], cond, when))
        elif cond.entity in ("param", "tag"):
            queryset = _json_filter(queryset, "params" if cond.entity == "param" else "tags", index, cond)
        else:
            raise invalid(f"Invalid logged model filter on '{cond.key}'.")
    if datasets is not None and not metric_filtered:
        # Datasets alone: models with any metric on one of them.
        queryset = queryset.filter(Exists(LoggedModelMetric.objects.filter(datasets, model=OuterRef("pk"))))
    return queryset


def _order_models(queryset: QuerySet, order_by: list[dict[str, Any]]) -> QuerySet:
    ordering: list[Any] = []
    for index, clause in enumerate(order_by):
        name = str(clause.get("field_name", ""))
        ascending = clause.get("ascending", True) is not False
        entity, dot, key = name.partition(".")
        if dot and entity != "attributes":
            if entity != "metrics":
                raise invalid(f"Invalid order by field name: {name}. Only metrics are supported.")
            # The model's latest value of the metric (newest timestamp, then step), optionally on one
            # dataset; models without it come last either way. NaN counts as missing.
            points = LoggedModelMetric.objects.filter(model=OuterRef("pk"), key=key)
            if clause.get("dataset_name"):
                points = points.filter(dataset_name=str(clause["dataset_name"]))
            if clause.get("dataset_digest"):
                points = points.filter(dataset_digest=str(clause["dataset_digest"]))
            latest = points.order_by("-timestamp", "-step", "run_external_id").annotate(
                _v=Case(When(is_nan=True, then=Value(None)), default=F("value"), output_field=FloatField())
            )
            alias = f"_order{index}"
            queryset = queryset.alias(**{alias: Subquery(latest.values("_v")[:1])})
            ordering.append(F(alias).asc(nulls_last=True) if ascending else F(alias).desc(nulls_last=True))
            continue
        field = _MODEL_ORDER_FIELDS.get(key if dot else name)
        if field is None:
            raise invalid(f"Invalid order by field name: {name}")
        ordering.append(F(field).asc(nulls_last=True) if ascending else F(field).desc(nulls_last=True))
    return queryset.order_by(*ordering, "-created_at", "model_id")


def logged_models_search(
    *,
    team: Team,
    experiment_ids: list[int],
    filter_string: str,
    order_by: list[dict[str, Any]],
    max_results: int | None,
    page_token: str | None,
    datasets: list[dict[str, Any]] | None = None,
) -> tuple[list[LoggedModel], str | None]:
    """Search as MLflow's SQL store: filters on attributes, params.<k>, tags.<k> and metrics.<k> (some
    point of the metric matches, on one of `datasets` when given; `datasets` alone keeps models with
    metrics on them), ordered by attributes or by a metric's latest value; newest first by default."""
    dataset_q = _dataset_q(datasets or [])
    queryset = logged_models_queryset(team).filter(experiment_id__in=experiment_ids, lifecycle_stage=ACTIVE)
    queryset = _order_models(_filter_models(queryset, parse_filter(filter_string), dataset_q), order_by)
    limit = min(max_results or 100, 1000)
    offset = offset_from(page_token)
    page = list(queryset[offset : offset + limit + 1])
    token = encode_token({"offset": offset + limit}) if len(page) > limit else None
    return page[:limit], token


# --- Registry ----------------------------------------------------------------------------------


def registered_model_by_name(*, team: Team, name: str) -> RegisteredModel:
    model = RegisteredModel.objects.filter(team=team, name=name).first()
    if model is None:
        raise not_found(f"Registered Model with name={name} not found")
    return model


def model_version_get(*, team: Team, name: str, version: Any) -> ModelVersion:
    try:
        number = int(str(version))
    except (TypeError, ValueError):
        raise invalid(f"Parameter 'version' must be an integer, got '{version}'.") from None
    found = (
        ModelVersion.objects.select_related("registered_model", "run", "logged_model")
        .filter(registered_model__team=team, registered_model__name=name, version=number)
        .first()
    )
    if found is None:
        raise not_found(f"Model Version (name={name}, version={version}) not found")
    return found


def model_version_json(version: ModelVersion, *, aliases: dict[str, int] | None = None) -> dict[str, Any]:
    model = version.registered_model
    alias_map = model.aliases if aliases is None else aliases
    data: dict[str, Any] = {
        "name": model.name,
        "version": str(version.version),
        "creation_timestamp": dt_to_ms(version.created_at),
        "last_updated_timestamp": dt_to_ms(version.updated_at),
        "current_stage": version.current_stage,
        "description": version.description,
        "source": version.source,
        "run_id": version.run_external_id,
        "status": version.status,
    }
    if version.user_id:
        data["user_id"] = version.user_id
    if version.run_link:
        data["run_link"] = version.run_link
    if version.status_message:
        data["status_message"] = version.status_message
    if version.tags:
        data["tags"] = _tags(version.tags)
    names = sorted(a for a, v in alias_map.items() if v == version.version)
    if names:
        data["aliases"] = names
    if version.logged_model_id is not None:
        data["model_id"] = version.logged_model.model_id
    return data


def _latest_versions(versions: list[ModelVersion]) -> list[ModelVersion]:
    """MLflow's latest_versions: the newest version per stage."""
    best: dict[str, ModelVersion] = {}
    for v in versions:
        if v.current_stage not in best or v.version > best[v.current_stage].version:
            best[v.current_stage] = v
    return sorted(best.values(), key=lambda v: v.version)


def registered_model_json(model: RegisteredModel) -> dict[str, Any]:
    """Needs model.versions prefetched (registered_models_queryset)."""
    data: dict[str, Any] = {
        "name": model.name,
        "creation_timestamp": dt_to_ms(model.created_at),
        "last_updated_timestamp": dt_to_ms(model.updated_at),
    }
    if model.description:
        data["description"] = model.description
    latest = [model_version_json(v) for v in _latest_versions(list(model.versions.all()))]
    if latest:
        data["latest_versions"] = latest
    if model.tags:
        data["tags"] = _tags(model.tags)
    if model.aliases:
        data["aliases"] = [{"alias": a, "version": str(v)} for a, v in sorted(model.aliases.items())]
    return data


def _versions_prefetch() -> Prefetch:
    return Prefetch(
        "versions", queryset=ModelVersion.objects.select_related("logged_model", "registered_model").order_by("version")
    )


def registered_model_full(*, team: Team, name: str) -> RegisteredModel:
    model = RegisteredModel.objects.filter(team=team, name=name).prefetch_related(_versions_prefetch()).first()
    if model is None:
        raise not_found(f"Registered Model with name={name} not found")
    return model


def _registry_limit(max_results: int | None, default: int, cap: int) -> int:
    if max_results is None or max_results == 0:
        return default
    if max_results < 0 or max_results > cap:
        raise invalid(f"Invalid value {max_results} for parameter 'max_results': it must be at most {cap}.")
    return max_results


_REGISTERED_ORDER = {"name": "name", "timestamp": "updated_at", "last_updated_timestamp": "updated_at",
                     "creation_timestamp": "created_at"}


def _order(clauses: list[str], fields: dict[str, str]) -> list[str]:
    ordering = []
    for clause in clauses:
        parts = clause.split()
        key = parts[0].removeprefix("attribute.").removeprefix("attributes.") if parts else ""
        if key not in fields or len(parts) > 2:
            raise invalid(f"Invalid order_by clause '{clause}'.")
        descending = len(parts) == 2 and parts[1].upper() == "DESC"
        ordering.append(f"-{fields[key]}" if descending else fields[key])
    return ordering


def registered_models_search(
    *, team: Team, filter_string: str, max_results: int | None, order_by: list[str], page_token: str | None
) -> tuple[list[RegisteredModel], str | None]:
    queryset = RegisteredModel.objects.filter(team=team).prefetch_related(_versions_prefetch())
    for index, cond in enumerate(parse_filter(filter_string)):
        if cond.entity == "attribute" and cond.key == "name":
            queryset = queryset.filter(string_condition("name", cond))
        elif cond.entity == "tag":
            queryset = _json_filter(queryset, "tags", index, cond, registry=True)
        else:
            raise invalid(f"Invalid registered model filter on '{cond.key}': filter on name or tags.<key>.")
    queryset = queryset.order_by(*_order(order_by, _REGISTERED_ORDER), "name")
    limit = _registry_limit(max_results, 100, SEARCH_REGISTERED_MAX)
    offset = offset_from(page_token)
    page = list(queryset[offset : offset + limit + 1])
    token = encode_token({"offset": offset + limit}) if len(page) > limit else None
    return page[:limit], token


_VERSION_ORDER = {"name": "registered_model__name", "version_number": "version", "version": "version",
                  "creation_timestamp": "created_at", "last_updated_timestamp": "updated_at"}


def model_versions_search(
    *, team: Team, filter_string: str, max_results: int | None, order_by: list[str], page_token: str | None
) -> tuple[list[ModelVersion], str | None]:
    queryset = ModelVersion.objects.filter(registered_model__team=team).select_related(
        "registered_model", "logged_model"
    )
    for index, cond in enumerate(parse_filter(filter_string)):
        if cond.entity == "attribute" and cond.key == "name":
            queryset = queryset.filter(string_condition("registered_model__name", cond))
        elif cond.entity == "attribute" and cond.key in ("run_id", "source"):
            field = {"run_id": "run_external_id", "source": "source"}[cond.key]
            queryset = queryset.filter(string_condition(field, cond))
        elif cond.entity == "attribute" and cond.key == "version_number" and cond.op == "=":
            queryset = queryset.filter(version=int(float(cond.value)))
        elif cond.entity == "tag":
            queryset = _json_filter(queryset, "tags", index, cond, registry=True)
        else:
            raise invalid(f"Invalid model version filter on '{cond.key}'.")
    ordering = _order(order_by, _VERSION_ORDER) or ["registered_model__name", "-version"]
    queryset = queryset.order_by(*ordering, "pk")
    limit = _registry_limit(max_results, 10_000, REGISTRY_MAX_RESULTS)
    offset = offset_from(page_token)
    page = list(queryset[offset : offset + limit + 1])
    token = encode_token({"offset": offset + limit}) if len(page) > limit else None
    return page[:limit], token


def model_versions_json(versions: list[ModelVersion]) -> list[dict[str, Any]]:
    return [model_version_json(v) for v in versions]


def versions_tag_json(value: str) -> list[dict[str, Any]]:
    try:
        return list(json.loads(value))
    except ValueError:
        return []
