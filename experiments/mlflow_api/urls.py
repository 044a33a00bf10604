"""Mounted at /mlflow/: MLFLOW_TRACKING_URI=http(s)://<host>/mlflow.

The same routes answer under api/ (the Python client) and ajax-api/ (what MLflow's web UI and
some tools call)."""

from django.urls import path, re_path

from . import views

ROUTES = (
    ("experiments/create", views.experiments_create, "experiments-create"),
    ("experiments/get", views.experiments_get, "experiments-get"),
    ("experiments/get-by-name", views.experiments_get_by_name, "experiments-get-by-name"),
    ("experiments/search", views.experiments_search, "experiments-search"),
    ("experiments/list", views.experiments_search, "experiments-list"),
    ("experiments/set-experiment-tag", views.experiments_set_tag, "experiments-set-tag"),
    ("experiments/delete", views.experiments_delete, "experiments-delete"),
    ("experiments/restore", views.experiments_restore, "experiments-restore"),
    ("runs/create", views.runs_create, "runs-create"),
    ("runs/update", views.runs_update, "runs-update"),
    ("runs/get", views.runs_get, "runs-get"),
    ("runs/search", views.runs_search, "runs-search"),
    ("runs/delete", views.runs_delete, "runs-delete"),
    ("runs/restore", views.runs_restore, "runs-restore"),
    ("runs/log-parameter", views.runs_log_parameter, "runs-log-parameter"),
    ("runs/log-metric", views.runs_log_metric, "runs-log-metric"),
    ("runs/log-batch", views.runs_log_batch, "runs-log-batch"),
    ("runs/set-tag", views.runs_set_tag, "runs-set-tag"),
    ("runs/delete-tag", views.runs_delete_tag, "runs-delete-tag"),
    ("metrics/get-history", views.metrics_get_history, "metrics-get-history"),
)

urlpatterns = [
    path(f"{prefix}/2.0/mlflow/{route}", view, name=f"mlflow-{'' if prefix == 'api' else 'ajax-'}{name}")
    for prefix in ("api", "ajax-api")
    for route, view, name in ROUTES
]
urlpatterns += [
    re_path(r"^(?:api|ajax-api)/2\.0/mlflow-artifacts/", views.artifacts_unsupported, name="mlflow-artifacts"),
    re_path(r"^(?:api|ajax-api)/", views.endpoint_not_found, name="mlflow-not-found"),
]
