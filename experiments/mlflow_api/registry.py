"""MLflow model registry (/api/2.0/mlflow/registered-models/... and model-versions/...), team-scoped:
`mlflow.register_model(...)` then `mlflow.pyfunc.load_model("models:/name@alias")` round-trips.
Handlers translate shapes; writes go through services.registry."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from ..models import ModelVersion, RegisteredModel
from ..services import registry as services
from . import model_selectors as reads
from . import selectors
from .http import Body, Caller, invalid, mlflow_endpoint, not_found
from .views import _key_values


def _name(body: Body) -> str:
    return body.string("name", required=True)


def _model(caller: Caller, body: Body) -> RegisteredModel:
    return reads.registered_model_by_name(team=caller.team, name=_name(body))


def _version(caller: Caller, body: Body) -> ModelVersion:
    version = body.get("version")
    if version in (None, ""):
        raise invalid("Missing value for required parameter 'version'.")
    return reads.model_version_get(team=caller.team, name=_name(body), version=version)


def _full(caller: Caller, name: str) -> dict[str, Any]:
    return {"registered_model": reads.registered_model_json(reads.registered_model_full(team=caller.team, name=name))}


def _version_response(caller: Caller, name: str, version: int) -> dict[str, Any]:
    return {"model_version": reads.model_version_json(reads.model_version_get(team=caller.team, name=name,
                                                                               version=version))}


# --- Registered models -------------------------------------------------------------------------


@mlflow_endpoint("POST")
def registered_model_create(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    model = services.registered_model_create(
        team=caller.team,
        name=_name(body),
        description=body.string("description"),
        tags=dict(_key_values(body.list("tags"), "tags")),
    )
    return _full(caller, model.name)


@mlflow_endpoint("GET")
def registered_model_get(caller: Caller, body: Body) -> dict[str, Any]:
    return _full(caller, _name(body))


@mlflow_endpoint("POST")
def registered_model_rename(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    new_name = body.string("new_name", required=True)
    model = services.registered_model_rename(model=_model(caller, body), new_name=new_name)
    return _full(caller, model.name)


@mlflow_endpoint("PATCH")
def registered_model_update(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    model = services.registered_model_update(model=_model(caller, body), description=body.string("description"))
    return _full(caller, model.name)


@mlflow_endpoint("DELETE")
def registered_model_delete(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    services.registered_model_delete(model=_model(caller, body))
    return {}


@mlflow_endpoint("GET", "POST")
def registered_model_search(caller: Caller, body: Body) -> dict[str, Any]:
    models, token = reads.registered_models_search(
        team=caller.team,
        filter_string=body.string("filter"),
        max_results=body.integer("max_results"),
        order_by=[str(o) for o in body.list("order_by")],
        page_token=body.string("page_token"),
    )
    response: dict[str, Any] = {"registered_models": [reads.registered_model_json(m) for m in models]}
    if token:
        response["next_page_token"] = token
    return response


@mlflow_endpoint("GET", "POST")
def registered_model_latest_versions(caller: Caller, body: Body) -> dict[str, Any]:
    model = reads.registered_model_full(team=caller.team, name=_name(body))
    stages = {str(s).lower() for s in body.list("stages")}
    latest = reads._latest_versions(list(model.versions.all()))
    if stages:
        latest = [v for v in latest if v.current_stage.lower() in stages]
    return {"model_versions": [reads.model_version_json(v) for v in latest]}


@mlflow_endpoint("POST")
def registered_model_set_tag(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    services.registered_model_set_tag(
        model=_model(caller, body), key=body.string("key", required=True), value=body.string_value("value")
    )
    return {}


@mlflow_endpoint("DELETE")
def registered_model_delete_tag(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    services.registered_model_delete_tag(model=_model(caller, body), key=body.string("key", required=True))
    return {}


@mlflow_endpoint("POST")
def alias_set(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    version = body.integer("version", required=True)
    services.registered_model_set_alias(
        model=_model(caller, body), alias=body.string("alias", required=True), version=version or 0
    )
    return {}


@mlflow_endpoint("DELETE")
def alias_delete(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    services.registered_model_delete_alias(model=_model(caller, body), alias=body.string("alias", required=True))
    return {}


@mlflow_endpoint("GET")
def alias_get(caller: Caller, body: Body) -> dict[str, Any]:
    model = _model(caller, body)
    alias = body.string("alias", required=True)
    if alias not in model.aliases:
        raise not_found(f"Registered model alias {alias} not found.")
    return _version_response(caller, model.name, model.aliases[alias])


@csrf_exempt
def alias_resource(request: HttpRequest) -> HttpResponse:
    view = {"POST": alias_set, "DELETE": alias_delete}.get(request.method or "", alias_get)
    return view(request)


# --- Versions ----------------------------------------------------------------------------------


@mlflow_endpoint("POST")
def model_version_create(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    model = _model(caller, body)
    run_id = body.string("run_id")
    run = selectors.run_by_id(team=caller.team, run_id=run_id) if run_id else None
    model_id = body.string("model_id")
    logged_model = reads.logged_model_by_id(team=caller.team, model_id=model_id) if model_id else None
    version = services.model_version_create(
        model=model,
        source=body.string("source", required=True),
        run=run,
        run_external_id=run_id,
        logged_model=logged_model,
        tags=dict(_key_values(body.list("tags"), "tags")),
        description=body.string("description"),
        run_link=body.string("run_link"),
        user_id=caller.user.username,
    )
    return _version_response(caller, model.name, version.version)


@mlflow_endpoint("GET")
def model_version_get(caller: Caller, body: Body) -> dict[str, Any]:
    return {"model_version": reads.model_version_json(_version(caller, body))}


@mlflow_endpoint("PATCH")
def model_version_update(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    version = services.model_version_update(version=_version(caller, body), description=body.string("description"))
    return {"model_version": reads.model_version_json(version)}


@mlflow_endpoint("POST")
def model_version_transition_stage(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    archive = body.get("archive_existing_versions")
    version = services.model_version_transition_stage(
        version=_version(caller, body),
        stage=body.string("stage", required=True),
        archive_existing_versions=archive is True or str(archive).lower() == "true",
    )
    return {"model_version": reads.model_version_json(version)}


@mlflow_endpoint("DELETE")
def model_version_delete(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    services.model_version_delete(version=_version(caller, body))
    return {}


@mlflow_endpoint("GET", "POST")
def model_version_search(caller: Caller, body: Body) -> dict[str, Any]:
    versions, token = reads.model_versions_search(
        team=caller.team,
        filter_string=body.string("filter"),
        max_results=body.integer("max_results"),
        order_by=[str(o) for o in body.list("order_by")],
        page_token=body.string("page_token"),
    )
    response: dict[str, Any] = {"model_versions": reads.model_versions_json(versions)}
    if token:
        response["next_page_token"] = token
    return response


@mlflow_endpoint("GET")
def model_version_download_uri(caller: Caller, body: Body) -> dict[str, Any]:
    version = _version(caller, body)
    return {"artifact_uri": version.storage_location or version.source}


@mlflow_endpoint("POST")
def model_version_set_tag(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    services.model_version_set_tag(
        version=_version(caller, body), key=body.string("key", required=True), value=body.string_value("value")
    )
    return {}


@mlflow_endpoint("DELETE")
def model_version_delete_tag(caller: Caller, body: Body) -> dict[str, Any]:
    caller.ensure_can_write()
    services.model_version_delete_tag(version=_version(caller, body), key=body.string("key", required=True))
    return {}
