"""Mounted at /mlflow/: MLFLOW_TRACKING_URI=http(s)://<host>/mlflow.

The same routes answer under api/ (the Python client) and ajax-api/ (what MLflow's web UI and
some tools call). Anything else under /mlflow/ answers MLflow's JSON errors, never HTML."""

from django.urls import path, re_path

from ..web import run_views
from . import artifacts, logged_models, registry, views

ROUTES = (
    # A training loop's requests first: URL resolution tries the routes in order.
    ("runs/log-metric", views.runs_log_metric, "runs-log-metric"),
    ("runs/log-batch", views.runs_log_batch, "runs-log-batch"),
    ("experiments/create", views.experiments_create, "experiments-create"),
    ("experiments/get", views.experiments_get, "experiments-get"),
    ("experiments/get-by-name", views.experiments_get_by_name, "experiments-get-by-name"),
    ("experiments/search", views.experiments_search, "experiments-search"),
    ("experiments/list", views.experiments_search, "experiments-list"),
    ("experiments/set-experiment-tag", views.experiments_set_tag, "experiments-set-tag"),
    ("experiments/delete-experiment-tag", views.experiments_delete_tag, "experiments-delete-tag"),
    ("artifacts/list", artifacts.artifacts_list, "artifacts-list"),
    ("experiments/delete", views.experiments_delete, "experiments-delete"),
    ("experiments/restore", views.experiments_restore, "experiments-restore"),
    ("experiments/update", views.experiments_update, "experiments-update"),
    ("runs/create", views.runs_create, "runs-create"),
    ("runs/update", views.runs_update, "runs-update"),
    ("runs/get", views.runs_get, "runs-get"),
    ("runs/search", views.runs_search, "runs-search"),
    ("runs/delete", views.runs_delete, "runs-delete"),
    ("runs/restore", views.runs_restore, "runs-restore"),
    ("runs/log-parameter", views.runs_log_parameter, "runs-log-parameter"),
    ("runs/set-tag", views.runs_set_tag, "runs-set-tag"),
    ("runs/delete-tag", views.runs_delete_tag, "runs-delete-tag"),
    ("runs/log-inputs", views.runs_log_inputs, "runs-log-inputs"),
    ("runs/outputs", views.runs_log_outputs, "runs-log-outputs"),
    ("runs/log-model", views.runs_log_model, "runs-log-model"),
    ("metrics/get-history", views.metrics_get_history, "metrics-get-history"),
    # MLflow 3 logged models
    ("logged-models", logged_models.logged_model_create, "logged-models-create"),
    ("logged-models/search", logged_models.logged_model_search, "logged-models-search"),
    ("logged-models/<str:model_id>", logged_models.logged_model_resource, "logged-models-resource"),
    ("logged-models/<str:model_id>/params", logged_models.logged_model_log_params, "logged-models-params"),
    ("logged-models/<str:model_id>/tags", logged_models.logged_model_set_tags, "logged-models-tags"),
    (
        "logged-models/<str:model_id>/tags/<path:tag_key>",
        logged_models.logged_model_delete_tag,
        "logged-models-delete-tag",
    ),
    # Model registry
    ("registered-models/create", registry.registered_model_create, "registered-models-create"),
    ("registered-models/get", registry.registered_model_get, "registered-models-get"),
    ("registered-models/rename", registry.registered_model_rename, "registered-models-rename"),
    ("registered-models/update", registry.registered_model_update, "registered-models-update"),
    ("registered-models/delete", registry.registered_model_delete, "registered-models-delete"),
    ("registered-models/search", registry.registered_model_search, "registered-models-search"),
    (
        "registered-models/get-latest-versions",
        registry.registered_model_latest_versions,
        "registered-models-latest-versions",
    ),
    ("registered-models/set-tag", registry.registered_model_set_tag, "registered-models-set-tag"),
    ("registered-models/delete-tag", registry.registered_model_delete_tag, "registered-models-delete-tag"),
    ("registered-models/alias", registry.alias_resource, "registered-models-alias"),
    ("model-versions/create", registry.model_version_create, "model-versions-create"),
    ("model-versions/get", registry.model_version_get, "model-versions-get"),
    ("model-versions/update", registry.model_version_update, "model-versions-update"),
    ("model-versions/delete", registry.model_version_delete, "model-versions-delete"),
    ("model-versions/search", registry.model_version_search, "model-versions-search"),
    ("model-versions/get-download-uri", registry.model_version_download_uri, "model-versions-download-uri"),
    ("model-versions/transition-stage", registry.model_version_transition_stage, "model-versions-transition-stage"),
    ("model-versions/set-tag", registry.model_version_set_tag, "model-versions-set-tag"),
    ("model-versions/delete-tag", registry.model_version_delete_tag, "model-versions-delete-tag"),
)

urlpatterns = [
    # The link the client prints after a run (<uri>/#/experiments/<id>/runs/<run id>) lands here.
    path("", run_views.mlflow_link_page, name="mlflow-home"),
]
urlpatterns += [
    path(f"{prefix}/2.0/mlflow/{route}", view, name=f"mlflow-{'' if prefix == 'api' else 'ajax-'}{name}")
    for prefix in ("api", "ajax-api")
    for route, view, name in ROUTES
]
# Artifact proxy (mlflow server --serve-artifacts). (?s): a path with control characters still
# reaches the handler and gets MLflow's "Invalid path", not a 404.
_ARTIFACTS = r"^(?:api|ajax-api)/2\.0/mlflow-artifacts/"
urlpatterns += [
    path("api/2.0/mlflow-artifacts/mpu/part", artifacts.mpu_part, name="mlflow-artifacts-mpu-part"),
    re_path(_ARTIFACTS + r"artifacts/?$", artifacts.artifact, name="mlflow-artifacts-list"),
    re_path(_ARTIFACTS + r"artifacts/(?s:(?P<artifact_path>.+))$", artifacts.artifact, name="mlflow-artifacts"),
    re_path(_ARTIFACTS + r"mpu/part$", artifacts.mpu_part),
    re_path(_ARTIFACTS + r"mpu/create(?:/(?s:(?P<artifact_path>.*)))?$", artifacts.mpu_create),
    re_path(_ARTIFACTS + r"mpu/complete(?:/(?s:(?P<artifact_path>.*)))?$", artifacts.mpu_complete),
    re_path(_ARTIFACTS + r"mpu/abort(?:/(?s:(?P<artifact_path>.*)))?$", artifacts.mpu_abort),
    re_path(_ARTIFACTS + r"presigned/(?s:(?P<artifact_path>.*))$", artifacts.presigned),
    # mlflow server's UI download routes (outside api/), same checks as the proxy.
    re_path(r"^get-artifact$", artifacts.run_artifact_get, name="mlflow-get-artifact"),
    re_path(
        r"^(?:/*)model-versions/get-artifact$", artifacts.model_version_artifact_get, name="mlflow-mv-get-artifact"
    ),
    re_path(r"^(?:api|ajax-api)/3\.0/mlflow/server-info$", artifacts.server_info, name="mlflow-server-info"),
    # Tracing is not stored: MLflow's NOT_IMPLEMENTED, which the client reports as a warning.
    re_path(r"^(?:api|ajax-api)/\d+\.\d+/mlflow/traces", views.traces_unsupported, name="mlflow-traces"),
    re_path(r"^", views.endpoint_not_found, name="mlflow-not-found"),
]
