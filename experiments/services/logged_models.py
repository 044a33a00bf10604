"""Datasets a run used (MLflow log_inputs) and MLflow 3 logged models: create, finalize, params,
tags, metrics, delete, and the run inputs/outputs that link them to runs.

Semantics follow MLflow's SQL tracking store: a dataset is identified by (name, digest) per run,
input tags are merged; a logged model gets id ``m-<hex>`` and its files live under
``<experiment artifact root>/models/<model_id>/artifacts``.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from django.db import transaction
from django.utils import timezone

from ..models import (
    LoggedModel,
    LoggedModelMetric,
    LoggedModelStatus,
    Run,
    RunDataset,
    RunModelIO,
    Team,
    TrackingExperiment,
    User,
)
from .artifacts import experiment_artifact_location
from .runs import (
    ACTIVE,
    DATA_VERSION_TAGS,
    DELETED,
    IngestError,
    _check_key,
    _clean_params,
    _clean_tags,
    _coerce_float,
    _coerce_int,
    now_ms,
    run_name_generate,
)

MAX_DATASET_NAME_LENGTH = 500
MAX_DATASET_DIGEST_LENGTH = 36
MAX_DATASET_SOURCE_TYPE_LENGTH = 36
MAX_DATASET_SCHEMA_LENGTH = 1_048_575
MAX_DATASET_PROFILE_LENGTH = 16_384
MAX_INPUT_TAG_KEY_LENGTH = 255
MAX_INPUT_TAG_VALUE_LENGTH = 500
MODEL_VERSIONS_TAG = "mlflow.modelVersions"
LOG_MODEL_HISTORY_TAG = "mlflow.log-model.history"


class DatasetSpec(NamedTuple):
    name: str
    digest: str
    source_type: str
    source: str
    schema: str = ""
    profile: str = ""
    tags: Mapping[str, str] = {}


class ModelMetricPoint(NamedTuple):
    key: str
    value: Any
    step: Any
    timestamp: Any
    model_id: str
    dataset_name: str = ""
    dataset_digest: str = ""


def _limit(value: Any, what: str, limit: int, *, required: bool = True) -> str:
    text = "" if value is None else value
    if not isinstance(text, str):
        raise IngestError(f"Dataset {what} must be a string, got {value!r}.")
    if required and not text:
        raise IngestError(f"Missing value for required parameter 'dataset.{what}'.")
    if len(text) > limit:
        raise IngestError(f"Dataset {what} exceeds the maximum length of {limit} characters.")
    return text


def _clean_dataset(spec: DatasetSpec) -> DatasetSpec:
    tags: dict[str, str] = {}
    for key, value in spec.tags.items():
        if not key or len(key) > MAX_INPUT_TAG_KEY_LENGTH:
            raise IngestError(f"Input tag key {key!r} must be 1 to {MAX_INPUT_TAG_KEY_LENGTH} characters.")
        text = "" if value is None else str(value)
        if len(text) > MAX_INPUT_TAG_VALUE_LENGTH:
            raise IngestError(f"Input tag {key!r} value exceeds {MAX_INPUT_TAG_VALUE_LENGTH} characters.")
        tags[key] = text
    return DatasetSpec(
        name=_limit(spec.name, "name", MAX_DATASET_NAME_LENGTH),
        digest=_limit(spec.digest, "digest", MAX_DATASET_DIGEST_LENGTH),
        source_type=_limit(spec.source_type, "source_type", MAX_DATASET_SOURCE_TYPE_LENGTH),
        source=_limit(spec.source, "source", 65_535),
        schema=_limit(spec.schema, "schema", MAX_DATASET_SCHEMA_LENGTH, required=False),
        profile=_limit(spec.profile, "profile", MAX_DATASET_PROFILE_LENGTH, required=False),
        tags=tags,
    )


def _ensure_active_run(run: Run) -> None:
    if run.lifecycle_stage != ACTIVE:
        raise IngestError(
            f"The run {run.external_id} must be in the 'active' state. Current state is {run.lifecycle_stage}."
        )


@transaction.atomic
def run_log_inputs(
    *,
    run: Run,
    datasets: Sequence[DatasetSpec] = (),
    model_ids: Sequence[str] = (),
) -> None:
    """Record datasets (deduplicated by name and digest, tags merged) and logged models a run used.
    The first dataset's digest becomes the run's data version unless a data-version tag set one,
    so reproducibility reports see it."""
    _ensure_active_run(run)
    clean = [_clean_dataset(spec) for spec in datasets]
    if clean:
        existing = {(d.name, d.digest): d for d in RunDataset.objects.select_for_update().filter(run=run)}
        for spec in clean:
            row = existing.get((spec.name, spec.digest))
            if row is None:
                row = RunDataset.objects.create(
                    run=run, name=spec.name, digest=spec.digest, source_type=spec.source_type, source=spec.source,
                    schema=spec.schema, profile=spec.profile, tags=dict(spec.tags),
                )
                existing[(spec.name, spec.digest)] = row
            elif spec.tags and {**row.tags, **spec.tags} != row.tags:
                row.tags = {**row.tags, **spec.tags}
                row.save(update_fields=["tags"])
        if not run.data_version and not any((run.tags or {}).get(k) for k in DATA_VERSION_TAGS):
            first = clean[0]
            run.data_version = f"{first.name}@{first.digest}"[:200]
            Run.objects.filter(pk=run.pk).update(data_version=run.data_version, updated_at=timezone.now())
    if model_ids:
        _link_models(run=run, model_ids=model_ids, direction=RunModelIO.INPUT, steps=[0] * len(model_ids))


@transaction.atomic
def run_log_outputs(*, run: Run, outputs: Sequence[tuple[str, int]]) -> None:
    """Logged models a run produced, each at a step (MLflow log_outputs)."""
    _ensure_active_run(run)
    _link_models(
        run=run, model_ids=[m for m, _ in outputs], direction=RunModelIO.OUTPUT, steps=[s for _, s in outputs]
    )


def _link_models(*, run: Run, model_ids: Sequence[str], direction: str, steps: Sequence[int]) -> None:
    found = {m.model_id: m for m in LoggedModel.objects.filter(team_id=run.team_id, model_id__in=list(model_ids))}
    missing = [m for m in model_ids if m not in found]
    if missing:
        raise IngestError(f"Logged model with ID '{missing[0]}' not found.", mlflow_code="RESOURCE_DOES_NOT_EXIST")
    RunModelIO.objects.bulk_create(
        [
            RunModelIO(run=run, model=found[m], direction=direction, step=step)
            for m, step in zip(model_ids, steps, strict=True)
        ],
        ignore_conflicts=True,
    )


# --- Logged models -----------------------------------------------------------------------------


def _check_model_name(name: str) -> str:
    if "/" in name or ":" in name or "%" in name:
        raise IngestError(f"Invalid model name '{name}': names may not contain '/', ':' or '%'.")
    return name


def logged_model_artifact_location(*, experiment: TrackingExperiment, model_id: str) -> str:
    """MLflow's rule: <experiment artifact location>/models/<model id>/artifacts (team-scoped)."""
    return f"{experiment_artifact_location(experiment).rstrip('/')}/models/{model_id}/artifacts"


@transaction.atomic
def logged_model_create(
    *,
    team: Team,
    experiment: TrackingExperiment,
    user: User | None,
    name: str = "",
    source_run: Run | None = None,
    source_run_id: str = "",
    model_type: str = "",
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> LoggedModel:
    """`source_run_id` is kept as given when no run of the team has it (`source_run` is None)."""
    if experiment.team_id != team.pk:
        raise IngestError("That experiment belongs to another team.", mlflow_code="RESOURCE_DOES_NOT_EXIST")
    if experiment.lifecycle_stage != ACTIVE:
        raise IngestError(f"The experiment {experiment.pk} must be in the 'active' state.")
    if source_run is not None and source_run.team_id != team.pk:
        raise IngestError("That run belongs to another team.", mlflow_code="RESOURCE_DOES_NOT_EXIST")
    model_id = f"m-{uuid.uuid4().hex}"
    return LoggedModel.objects.create(
        team=team,
        experiment=experiment,
        model_id=model_id,
        name=_check_model_name(name or run_name_generate()),
        source_run=source_run,
        source_run_external_id=(source_run.external_id if source_run is not None else source_run_id)[:64],
        status=LoggedModelStatus.PENDING,
        model_type=model_type or "",
        artifact_location=logged_model_artifact_location(experiment=experiment, model_id=model_id),
        params=_clean_params(params or {}),
        tags=_clean_tags(tags or {}),
        creator=user,
    )


def _locked(model: LoggedModel) -> LoggedModel:
    return LoggedModel.objects.select_for_update().get(pk=model.pk)


@transaction.atomic
def logged_model_finalize(*, model: LoggedModel, status: str) -> LoggedModel:
    if status not in (LoggedModelStatus.READY, LoggedModelStatus.FAILED):
        raise IngestError(f"Invalid model status {status!r}: finalize with LOGGED_MODEL_READY or UPLOAD_FAILED.")
    model = _locked(model)
    model.status = status
    model.save(update_fields=["status", "updated_at"])
    return model


@transaction.atomic
def logged_model_log_params(*, model: LoggedModel, params: Mapping[str, Any]) -> LoggedModel:
    """Params on a model are write-once per key, like run params."""
    model = _locked(model)
    clean = _clean_params(params)
    changed = [k for k, v in clean.items() if k in model.params and model.params[k] != v]
    if changed:
        raise IngestError(
            f"Changing param values is not allowed. Param with key='{changed[0]}' was already logged with "
            f"value='{model.params[changed[0]]}' for model ID='{model.model_id}'."
        )
    model.params = {**model.params, **clean}
    model.save(update_fields=["params", "updated_at"])
    return model


@transaction.atomic
def logged_model_set_tags(*, model: LoggedModel, tags: Mapping[str, Any]) -> LoggedModel:
    model = _locked(model)
    model.tags = {**model.tags, **_clean_tags(tags)}
    model.save(update_fields=["tags", "updated_at"])
    return model


@transaction.atomic
def logged_model_delete_tag(*, model: LoggedModel, key: str) -> LoggedModel:
    model = _locked(model)
    if key not in model.tags:
        raise IngestError(
            f"No tag with key {key!r} found for model with ID {model.model_id!r}.",
            mlflow_code="RESOURCE_DOES_NOT_EXIST",
        )
    model.tags = {k: v for k, v in model.tags.items() if k != key}
    model.save(update_fields=["tags", "updated_at"])
    return model


@transaction.atomic
def logged_model_delete(*, model: LoggedModel) -> None:
    """Soft delete, as MLflow: hidden from search, fetchable with allow_deleted."""
    LoggedModel.objects.filter(pk=model.pk).update(lifecycle_stage=DELETED, updated_at=timezone.now())


@transaction.atomic
def logged_model_record_registration(*, model: LoggedModel, name: str, version: int) -> None:
    """MLflow tags a logged model with the registry versions made from it (mlflow.modelVersions)."""
    model = _locked(model)
    try:
        versions = json.loads(model.tags.get(MODEL_VERSIONS_TAG, "[]"))
    except ValueError:
        versions = []
    # MLflow writes the version as a JSON number; entries written as strings before are matched too.
    entry = {"name": name, "version": int(version)}
    if not any(isinstance(v, dict) and v.get("name") == name and str(v.get("version")) == str(version)
               for v in versions):
        versions.append(entry)
    model.tags = {**model.tags, MODEL_VERSIONS_TAG: json.dumps(versions)}
    model.save(update_fields=["tags", "updated_at"])


def logged_model_log_metrics(*, team: Team, run: Run, points: Iterable[ModelMetricPoint]) -> int:
    """Metrics sent with a model_id (log_metric(..., model_id=...)) also land on that model.
    Called inside the run's log-batch transaction; returns the number of new points."""
    points = list(points)
    if not points:
        return 0
    ids = {p.model_id for p in points}
    models = {m.model_id: m for m in LoggedModel.objects.filter(team=team, model_id__in=ids)}
    missing = sorted(ids - set(models))
    if missing:
        raise IngestError(f"Logged model with ID '{missing[0]}' not found.", mlflow_code="RESOURCE_DOES_NOT_EXIST")
    stamp = now_ms()
    rows = {}
    for p in points:
        _check_key(p.key, "Metric")
        value = _coerce_float(p.value, p.key)
        is_nan = math.isnan(value)
        step = _coerce_int(p.step or 0, "step", p.key)
        ts = stamp if p.timestamp in (None, "") else _coerce_int(p.timestamp, "timestamp", p.key)
        key = (p.model_id, p.key, step, ts, p.dataset_name or "", p.dataset_digest or "")
        rows[key] = LoggedModelMetric(
            model=models[p.model_id], run_external_id=run.external_id, key=p.key, value=0.0 if is_nan else value,
            is_nan=is_nan, step=step, timestamp=ts, dataset_name=p.dataset_name or "",
            dataset_digest=p.dataset_digest or "",
        )
    created = LoggedModelMetric.objects.bulk_create(list(rows.values()), ignore_conflicts=True)
    return len(created)


@transaction.atomic
def run_log_batch_with_models(
    *,
    run: Run,
    metrics: Sequence[Any],
    model_points: Sequence[ModelMetricPoint],
    params: Iterable[tuple[str, Any]] = (),
    tags: Iterable[tuple[str, Any]] = (),
) -> int:
    """A log-batch whose metrics name a model_id: the points go to the run as always and, in the
    same transaction, to their logged models (MLflow's SQL store does both)."""
    from .runs import run_log_batch

    added = run_log_batch(run=run, metrics=metrics, params=list(params), tags=list(tags))
    logged_model_log_metrics(team=run.team, run=run, points=model_points)
    return added


def record_logged_model(*, run: Run, model_json: str) -> None:
    """Legacy runs/log-model: append the model's description to the run's mlflow.log-model.history tag."""
    from .runs import run_set_tags

    try:
        model = json.loads(model_json)
    except ValueError:
        raise IngestError(f"Malformed model info. \n {model_json} \n is not a valid JSON.") from None
    if not isinstance(model, dict):
        raise IngestError(f"Malformed model info. \n {model_json} \n is not a valid JSON.")
    missing = {"artifact_path", "flavors", "utc_time_created", "run_id"} - set(model)
    if missing:
        raise IngestError(f"Model json is missing mandatory fields: {missing}")
    try:
        history = json.loads((run.tags or {}).get(LOG_MODEL_HISTORY_TAG, "[]"))
    except ValueError:
        history = []
    history.append(model)
    run_set_tags(run=run, tags={LOG_MODEL_HISTORY_TAG: json.dumps(history)})
