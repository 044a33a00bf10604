"""MLflow 3 logged models (/api/2.0/mlflow/logged-models...): what `mlflow.<flavor>.log_model` and
autologging call. Handlers translate shapes; writes go through services.logged_models."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from ..models import LoggedModelStatus
from ..services import logged_models as services
from . import model_selectors, selectors
from .http import Body, Caller, invalid, mlflow_endpoint
from .views import _default_experiment, _key_values, _missing_id

# Proto enum numbers, for clients that send the status as a number.
_STATUS_NUMBERS = {1: LoggedModelStatus.PENDING, 2: LoggedModelStatus.READY, 3: LoggedModelStatus.FAILED}


def _experiment(caller: Caller, experiment_id: str) -> Any:
    experiment = selectors.experiment_by_id(team=caller.team, experiment_id=experiment_id)
    if experiment is None:
        experiment = _default_experiment(caller, write=True, missing=_missing_id(experiment_id))
    return experiment


def _model(caller: Caller, model_id: str, *, allow_deleted: bool = False) -> Any:
    return model_selectors.logged_model_by_id(team=caller.team, model_id=model_id, allow_deleted=allow_deleted)


def _response(caller: Caller, model_id: str) -> dict[str, Any]:
    return {"model": model_selectors.logged_model_json(_model(caller, model_id, allow_deleted=True))}


@mlflow_endpoint("POST")
def logged_model_create(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    experiment = _experiment(caller, body.string("experiment_id", required=True))
    source_run_id = body.string("source_run_id")
    source_run = selectors.run_or_none(team=caller.team, run_id=source_run_id) if source_run_id else None
    model = services.logged_model_create(
        team=caller.team,
        experiment=experiment,
        user=caller.user,
        name=body.string("name"),
        source_run=source_run,
        source_run_id=source_run_id,
        model_type=body.string("model_type"),
        params=dict(_key_values(body.list("params"), "params")),
        tags=dict(_key_values(body.list("tags"), "tags")),
    )
    return _response(caller, model.model_id)


@mlflow_endpoint("GET")
def logged_model_get(caller: Caller, body: Body, model_id: str) -> dict[str, Any]:
    allow_deleted = str(body.get("allow_deleted", "false")).lower() == "true"
    return {"model": model_selectors.logged_model_json(_model(caller, model_id, allow_deleted=allow_deleted))}


@mlflow_endpoint("PATCH")
def logged_model_finalize(caller: Caller, body: Body, model_id: str) -> dict[str, Any]:
    caller.ensure_can_write()
    raw = body.get("status")
    status = _STATUS_NUMBERS.get(raw) if isinstance(raw, int) else raw
    if status not in LoggedModelStatus.values:
        raise invalid(f"Invalid value {raw!r} for parameter 'status': use LOGGED_MODEL_READY or _UPLOAD_FAILED.")
    services.logged_model_finalize(model=_model(caller, model_id), status=status)
    return _response(caller, model_id)


@mlflow_endpoint("DELETE")
def logged_model_delete(caller: Caller, body: Body, model_id: str) -> dict[str, Any]:
    caller.ensure_can_write()
    services.logged_model_delete(model=_model(caller, model_id))
    return {}


@csrf_exempt
def logged_model_resource(request: HttpRequest, model_id: str) -> HttpResponse:
    """One path, three verbs: GET reads, PATCH finalizes, DELETE deletes (as MLflow routes them)."""
    view = {"PATCH": logged_model_finalize, "DELETE": logged_model_delete}.get(request.method or "", logged_model_get)
    return view(request, model_id=model_id)


@mlflow_endpoint("POST")
def logged_model_log_params(caller: Caller, body: Body, model_id: str) -> dict[str, Any]:
    caller.ensure_can_write()
    services.logged_model_log_params(
        model=_model(caller, model_id), params=dict(_key_values(body.list("params"), "params"))
    )
    return {}


@mlflow_endpoint("PATCH")
def logged_model_set_tags(caller: Caller, body: Body, model_id: str) -> dict[str, Any]:
    caller.ensure_can_write()
    services.logged_model_set_tags(model=_model(caller, model_id), tags=dict(_key_values(body.list("tags"), "tags")))
    return {}


@mlflow_endpoint("DELETE")
def logged_model_delete_tag(caller: Caller, body: Body, model_id: str, tag_key: str) -> dict[str, Any]:
    caller.ensure_can_write()
    services.logged_model_delete_tag(model=_model(caller, model_id), key=tag_key)
    return {}


@mlflow_endpoint("POST", "GET")
def logged_model_search(caller: Caller, body: Body) -> dict[str, Any]:
    ids = []
    for raw in body.list("experiment_ids"):
        experiment = selectors.experiment_by_id(team=caller.team, experiment_id=str(raw))
        if experiment is None:
            experiment = selectors.default_experiment(team=caller.team)
        if experiment is not None:
            ids.append(experiment.pk)
    if not body.list("experiment_ids"):
        raise invalid("Missing value for required parameter 'experiment_ids'.")
    order_by = [o for o in body.list("order_by") if isinstance(o, dict)]
    models, token = model_selectors.logged_models_search(
        datasets=body.list("datasets"),
        team=caller.team,
        experiment_ids=ids,
        filter_string=body.string("filter"),
        order_by=order_by,
        max_results=body.integer("max_results"),
        page_token=body.string("page_token"),
    )
    response: dict[str, Any] = {"models": [model_selectors.logged_model_json(m) for m in models]}
    if token:
        response["next_page_token"] = token
    return response
