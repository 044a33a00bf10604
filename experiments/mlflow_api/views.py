"""MLflow tracking REST API (2.0) over mlboard's runs, so unmodified training scripts log here with

    MLFLOW_TRACKING_URI=https://<mlboard>/mlflow  MLFLOW_TRACKING_TOKEN=<mlboard API token>

Handlers only translate MLflow's request/response shapes; writes go through services.runs.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from ..models import Run, RunStatus, TrackingExperiment
from ..services import logged_models as logged_model_services
from ..services import runs as run_services
from ..services.logged_models import DatasetSpec, ModelMetricPoint
from ..services.runs import MetricPoint, ms_to_dt
from . import selectors
from .http import Body, Caller, error_response, invalid, mlflow_endpoint, not_found


def _default_experiment(caller: Caller, *, write: bool, missing: str) -> TrackingExperiment:
    """The team's Default experiment (id '0'). MLflow servers always have one, so members get it
    created on first use; a viewer creates nothing: a read of a missing one is RESOURCE_DOES_NOT_EXIST
    (`missing` is the message) and a write is PERMISSION_DENIED, as everywhere else."""
    if write:
        caller.ensure_can_write()
    experiment = selectors.default_experiment(team=caller.team)
    if experiment is not None:
        return experiment
    if not caller.can_write:
        raise not_found(missing)
    return run_services.tracking_experiment_default(team=caller.team)


def _missing_id(experiment_id: str) -> str:
    return f"No Experiment with id={experiment_id or selectors.DEFAULT_EXPERIMENT_ID} exists"


def _experiment_for_write(caller: Caller, experiment_id: str) -> TrackingExperiment:
    experiment = selectors.experiment_by_id(team=caller.team, experiment_id=experiment_id)
    if experiment is None:
        experiment = _default_experiment(caller, write=True, missing=_missing_id(experiment_id))
    if experiment.lifecycle_stage != run_services.ACTIVE:
        raise invalid(f"The experiment {experiment.pk} must be in the 'active' state to log runs to it.")
    return experiment


def _active_run(caller: Caller, body: Body) -> Run:
    caller.ensure_can_write()
    run_id = body.run_id()
    # Usually loaded along with the token (http.authenticate): no query of its own.
    run = caller.run if caller.run is not None and caller.run.external_id == run_id else None
    run = run or selectors.run_by_id(team=caller.team, run_id=run_id)
    if run.lifecycle_stage != run_services.ACTIVE:
        raise invalid(
            f"The run {run.external_id} must be in the 'active' state. Current state is {run.lifecycle_stage}."
        )
    return run


def _key_values(items: list[Any], what: str) -> list[tuple[str, Any]]:
    pairs = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("key"):
            raise invalid(f"Missing value for required parameter '{what}[{index}].key'.")
        pairs.append((item["key"], item.get("value", "")))
    return pairs


def _model_points(items: list[Any]) -> list[ModelMetricPoint]:
    """Metrics that name a model_id (MLflow 3): they also go to that logged model."""
    return [
        ModelMetricPoint(
            item["key"], item["value"], item.get("step") or 0, item.get("timestamp"), item["model_id"],
            item.get("dataset_name") or "", item.get("dataset_digest") or "",
        )
        for item in items
        if type(item) is dict and item.get("model_id")
    ]


def _metric_point(item: Any, path: str) -> MetricPoint:
    """Presence checks only (values are validated by the service); called once per point."""
    if type(item) is not dict:
        raise invalid(f"Invalid value for parameter '{path}': expected an object with key, value and timestamp.")
    key, value, timestamp = item.get("key"), item.get("value"), item.get("timestamp")
    for field, given in (("key", key), ("value", value), ("timestamp", timestamp)):
        if given is None or given == "":
            raise invalid(f"Missing value for required parameter '{path}.{field}'.")
    return MetricPoint(key, value, item.get("step") or 0, timestamp)


def _status(body: Body) -> str | None:
    status = body.get("status")
    if status is None or status == "":
        return None
    if isinstance(status, int) and not isinstance(status, bool):
        names = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
        if status in names:
            return names[status]
    if isinstance(status, str) and status.upper() in RunStatus.values:
        return status.upper()
    raise invalid(f"Invalid run status {status!r}; use one of {', '.join(RunStatus.values)}.")


# --- Experiments -------------------------------------------------------------------------------


@mlflow_endpoint("POST")
def experiments_create(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    tags = dict(_key_values(body.array("tags"), "tags"))
    experiment = run_services.tracking_experiment_create(
        team=caller.team,
        name=body.string("name", required=True),
        artifact_location=body.string("artifact_location"),
        tags=tags,
    )
    return {"experiment_id": str(experiment.pk)}


@mlflow_endpoint("GET")
def experiments_get(caller: Caller, body: Body) -> dict[str, Any]:
    experiment_id = body.string("experiment_id", required=True)
    experiment = selectors.experiment_by_id(team=caller.team, experiment_id=experiment_id)
    if experiment is None:
        experiment = _default_experiment(caller, write=False, missing=_missing_id(experiment_id))
    return {"experiment": selectors.experiment_json(experiment)}


@mlflow_endpoint("GET")
def experiments_get_by_name(caller: Caller, body: Body) -> dict[str, Any]:
    name = body.string("experiment_name", required=True)
    experiment = selectors.experiment_by_name(team=caller.team, name=name)
    missing = f"Could not find experiment with name '{name}'"
    if experiment is None and name == run_services.DEFAULT_EXPERIMENT_NAME:
        experiment = _default_experiment(caller, write=False, missing=missing)
    if experiment is None:
        raise not_found(missing)
    return {"experiment": selectors.experiment_json(experiment)}


@mlflow_endpoint("GET", "POST")
def experiments_search(caller: Caller, body: Body) -> dict[str, Any]:
    experiments, token = selectors.experiments_search(
        team=caller.team,
        view_type=body.get("view_type"),
        max_results=body.integer("max_results"),
        filter_string=body.string("filter"),
        order_by=[str(o) for o in body.list("order_by")],
        page_token=body.string("page_token"),
    )
    response: dict[str, Any] = {"experiments": [selectors.experiment_json(e) for e in experiments]}
    if token:
        response["next_page_token"] = token
    return response


@mlflow_endpoint("POST")
def experiments_set_tag(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    experiment_id = body.string("experiment_id", required=True)
    experiment = selectors.experiment_by_id(team=caller.team, experiment_id=experiment_id)
    if experiment is None:
        experiment = _default_experiment(caller, write=True, missing=_missing_id(experiment_id))
    run_services.tracking_experiment_set_tag(
        experiment=experiment, key=body.string("key", required=True), value=body.string_value("value")
    )
    return {}


def _existing_experiment(caller: Caller, body: Body) -> TrackingExperiment:
    experiment_id = body.string("experiment_id", required=True)
    experiment = selectors.experiment_by_id(team=caller.team, experiment_id=experiment_id)
    if experiment is None:
        experiment = _default_experiment(caller, write=True, missing=_missing_id(experiment_id))
    return experiment


@mlflow_endpoint("POST")
def experiments_delete_tag(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    experiment = _existing_experiment(caller, body)
    run_services.tracking_experiment_delete_tag(experiment=experiment, key=body.string("key", required=True))
    return {}


@mlflow_endpoint("POST")
def experiments_delete(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    run_services.tracking_experiment_delete(experiment=_existing_experiment(caller, body))
    return {}


@mlflow_endpoint("POST")
def experiments_restore(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    run_services.tracking_experiment_restore(experiment=_existing_experiment(caller, body))
    return {}


@mlflow_endpoint("POST")
def experiments_update(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    experiment = _existing_experiment(caller, body)
    new_name = body.string("new_name", required=True)
    run_services.tracking_experiment_rename(experiment=experiment, new_name=new_name)
    return {}


# --- Runs --------------------------------------------------------------------------------------


@mlflow_endpoint("POST")
def runs_create(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    experiment = _experiment_for_write(caller, body.string("experiment_id", default=selectors.DEFAULT_EXPERIMENT_ID))
    start = body.integer("start_time")
    run = run_services.run_create(
        team=caller.team,
        user=caller.user,
        experiment=experiment,
        name=body.string("run_name"),
        start_time=ms_to_dt(start) if start else None,
        tags=dict(_key_values(body.array("tags"), "tags")),
        user_name=body.string("user_id"),
    )
    run = selectors.run_by_id(team=caller.team, run_id=run.external_id, with_related=True)
    return {"run": selectors.run_json(run)}


@mlflow_endpoint("POST")
def runs_update(caller: Caller, body: Body) -> dict[str, Any]:
    run = _active_run(caller, body)
    end = body.integer("end_time")
    run = run_services.run_update(
        run=run,
        status=_status(body),
        end_time=ms_to_dt(end) if end else None,
        name=body.string("run_name") or None,
    )
    return {"run_info": selectors.run_info_json(run)}


@mlflow_endpoint("GET")
def runs_get(caller: Caller, body: Body) -> dict[str, Any]:
    run = selectors.run_by_id(team=caller.team, run_id=body.run_id(), with_related=True)
    return {"run": selectors.run_json(run)}


@mlflow_endpoint("GET", "POST")
def runs_search(caller: Caller, body: Body) -> dict[str, Any]:
    runs, token = selectors.runs_search(
        team=caller.team,
        experiment_ids=[str(e) for e in body.list("experiment_ids")],
        filter_string=body.string("filter"),
        view_type=body.get("run_view_type"),
        max_results=body.integer("max_results"),
        order_by=[str(o) for o in body.list("order_by")],
        page_token=body.string("page_token"),
    )
    response: dict[str, Any] = {"runs": [selectors.run_json(r) for r in runs]}
    if token:
        response["next_page_token"] = token
    return response


@mlflow_endpoint("POST")
def runs_delete(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    run_services.run_delete(run=selectors.run_by_id(team=caller.team, run_id=body.run_id()))
    return {}


@mlflow_endpoint("POST")
def runs_restore(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    run_services.run_restore(run=selectors.run_by_id(team=caller.team, run_id=body.run_id()))
    return {}


@mlflow_endpoint("POST")
def runs_log_parameter(caller: Caller, body: Body) -> dict[str, Any]:
    run = _active_run(caller, body)
    key = body.string("key", required=True)
    run_services.run_log_batch(run=run, params=[(key, body.get("value", ""))])
    return {}


def _names_no_model(items: list[Any]) -> bool:
    return not any(isinstance(item, dict) and item.get("model_id") for item in items)


def _plain_metric(body: Body) -> bool:
    """A log-metric whose only write is the run's point (one naming a logged model also writes there)."""
    return _names_no_model([body.data])


def _plain_batch(body: Body) -> bool:
    """A log-batch that writes something, and nothing to a logged model."""
    metrics = body.list("metrics")
    return bool(metrics or body.list("params") or body.list("tags")) and _names_no_model(metrics)


@mlflow_endpoint("POST", checked_write=_plain_metric)
def runs_log_metric(caller: Caller, body: Body) -> dict[str, Any]:
    # Field checks as MLflow's request schema, before the run is looked up (its tests match the wording).
    body.string("key", required=True)
    if body.get("value") is None:
        raise invalid("Missing value for required parameter 'value'.")
    body.integer("timestamp", required=True)
    body.integer("step")
    run = _active_run(caller, body)
    point = _metric_point(body.data, "")
    model_points = _model_points([body.data])
    if model_points:
        logged_model_services.run_log_batch_with_models(run=run, metrics=[point], model_points=model_points)
    else:
        run_services.run_log_batch(run=run, metrics=[point], writer_token_id=caller.writer_token_id)
    return {}


@mlflow_endpoint("POST")
def runs_set_tag(caller: Caller, body: Body) -> dict[str, Any]:
    run = _active_run(caller, body)
    run_services.run_log_batch(run=run, tags=[(body.string("key", required=True), body.string_value("value"))])
    return {}


@mlflow_endpoint("POST")
def runs_delete_tag(caller: Caller, body: Body) -> dict[str, Any]:
    run = _active_run(caller, body)
    run_services.run_delete_tag(run=run, key=body.string("key", required=True))
    return {}


def _batch_limit(what: str, limit: int, count: int) -> None:
    if count > limit:
        raise invalid(
            f"A batch logging request can contain at most {limit} {what}. Got {count} {what}. "
            f"Please split up {what} across multiple requests and try again."
        )


@mlflow_endpoint("POST", max_bytes=1_000_000, checked_write=_plain_batch)
def runs_log_batch(caller: Caller, body: Body) -> dict[str, Any]:
    metrics, params, tags = body.array("metrics"), body.array("params"), body.array("tags")
    _batch_limit("metrics", settings.MLFLOW_MAX_METRICS_PER_BATCH, len(metrics))
    _batch_limit("params", settings.MLFLOW_MAX_PARAMS_PER_BATCH, len(params))
    _batch_limit("tags", settings.MLFLOW_MAX_TAGS_PER_BATCH, len(tags))
    _batch_limit(
        "metrics, params, and tags", settings.MLFLOW_MAX_ENTITIES_PER_BATCH, len(metrics) + len(params) + len(tags)
    )
    points = [_metric_point(item, f"metrics[{i}]") for i, item in enumerate(metrics)]
    run = _active_run(caller, body)
    model_points = _model_points(metrics)
    if model_points:
        logged_model_services.run_log_batch_with_models(
            run=run, metrics=points, model_points=model_points,
            params=_key_values(params, "params"), tags=_key_values(tags, "tags"),
        )
        return {}
    run_services.run_log_batch(
        run=run, metrics=points, params=_key_values(params, "params"), tags=_key_values(tags, "tags"),
        writer_token_id=caller.writer_token_id,
    )
    return {}


def _dataset_spec(item: Any, index: int) -> DatasetSpec:
    if not isinstance(item, dict) or not isinstance(item.get("dataset"), dict):
        raise invalid(f"Missing value for required parameter 'datasets[{index}].dataset'.")
    dataset = item["dataset"]
    return DatasetSpec(
        name=dataset.get("name"),
        digest=dataset.get("digest"),
        source_type=dataset.get("source_type"),
        source=dataset.get("source"),
        schema=dataset.get("schema") or "",
        profile=dataset.get("profile") or "",
        tags=dict(_key_values(item.get("tags") or [], f"datasets[{index}].tags")),
    )


@mlflow_endpoint("POST")
def runs_log_inputs(caller: Caller, body: Body) -> dict[str, Any]:
    run = _active_run(caller, body)
    datasets = [_dataset_spec(item, i) for i, item in enumerate(body.list("datasets"))]
    models = [str(m.get("model_id", "")) for m in body.list("models") if isinstance(m, dict)]
    logged_model_services.run_log_inputs(run=run, datasets=datasets, model_ids=[m for m in models if m])
    return {}


@mlflow_endpoint("POST")
def runs_log_outputs(caller: Caller, body: Body) -> dict[str, Any]:
    run = _active_run(caller, body)
    outputs = []
    for index, item in enumerate(body.list("models")):
        if not isinstance(item, dict) or not item.get("model_id"):
            raise invalid(f"Missing value for required parameter 'models[{index}].model_id'.")
        outputs.append((str(item["model_id"]), int(item.get("step") or 0)))
    if not outputs:
        raise invalid("Missing value for required parameter 'models'.")
    logged_model_services.run_log_outputs(run=run, outputs=outputs)
    return {}


@mlflow_endpoint("POST")
def runs_log_model(caller: Caller, body: Body) -> dict[str, Any]:
    run = _active_run(caller, body)
    logged_model_services.record_logged_model(run=run, model_json=body.string("model_json", required=True))
    return {}


@mlflow_endpoint("GET")
def metrics_get_history(caller: Caller, body: Body) -> dict[str, Any]:
    run = selectors.run_by_id(team=caller.team, run_id=body.run_id())
    points, token = selectors.metric_history(
        run=run,
        key=body.string("metric_key", required=True),
        max_results=body.integer("max_results"),
        page_token=body.string("page_token"),
    )
    response: dict[str, Any] = {"metrics": points}
    if token:
        response["next_page_token"] = token
    return response


# --- Everything else ---------------------------------------------------------------------------


@csrf_exempt
def traces_unsupported(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return error_response(
        "NOT_IMPLEMENTED",
        "mlboard does not store traces (GenAI tracing); runs, metrics, models and the registry work as usual.",
    )


@csrf_exempt
def endpoint_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return error_response(
        "ENDPOINT_NOT_FOUND",
        f"mlboard's MLflow-compatible API does not implement {request.method} {json.dumps(request.path)}; "
        "it supports experiment and run tracking, artifacts, datasets, logged models and the model registry.",
    )
