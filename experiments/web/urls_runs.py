from django.urls import path

from . import run_views

urlpatterns = [
    path("teams/<slug:team_slug>/runs/", run_views.runs_page, name="runs"),
    path("teams/<slug:team_slug>/runs/compare/", run_views.run_compare, name="run_compare"),
    path("teams/<slug:team_slug>/runs/metrics.json", run_views.run_metric_chart, name="run_metric_chart"),
    path("teams/<slug:team_slug>/models/", run_views.models_page, name="models"),
    path("runs/<int:run_id>/", run_views.run_detail, name="run_detail"),
    path("runs/mlflow-link/", run_views.mlflow_link_open, name="mlflow_link_open"),
    path("cards/<int:card_id>/", run_views.card_detail, name="card_detail"),
    path("cards/<int:card_id>/metrics.json", run_views.card_metric_chart, name="card_metric_chart"),
    path("cards/<int:card_id>/runs/search/", run_views.card_run_search, name="card_run_search"),
    path("cards/<int:card_id>/runs/link/", run_views.card_run_link, name="card_run_link"),
    path("cards/<int:card_id>/runs/<int:run_id>/unlink/", run_views.card_run_unlink, name="card_run_unlink"),
    path("cards/<int:card_id>/runs/<int:run_id>/baseline/", run_views.card_run_baseline, name="card_run_baseline"),
    path(
        "cards/<int:card_id>/verdict/<int:proposal_id>/decide/",
        run_views.card_verdict_decide,
        name="card_verdict_decide",
    ),
]

# Artifacts (experiments/web/artifact_views.py)
from . import artifact_views  # noqa: E402

urlpatterns += [
    path("runs/<int:run_id>/artifacts/file/", artifact_views.run_artifact_file, name="run_artifact_file"),
    path("runs/<int:run_id>/artifacts/view/", artifact_views.run_artifact_preview, name="run_artifact_preview"),
]
