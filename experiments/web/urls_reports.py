from django.urls import path

from . import report_views as v

urlpatterns = [
    path("teams/<slug:team_slug>/reports/velocity/", v.velocity, name="velocity"),
    path("teams/<slug:team_slug>/reports/velocity.csv", v.velocity_csv, name="velocity_csv"),
    path("teams/<slug:team_slug>/reports/flow/", v.flow, name="flow"),
    path("teams/<slug:team_slug>/reports/flow.csv", v.flow_csv, name="flow_csv"),
    path("teams/<slug:team_slug>/iterations/", v.iterations, name="iterations"),
    path("teams/<slug:team_slug>/iterations/<int:iteration_id>/", v.iteration_detail, name="iteration_detail"),
    path(
        "teams/<slug:team_slug>/iterations/<int:iteration_id>/start/", v.iteration_start_view, name="iteration_start"
    ),
    path(
        "teams/<slug:team_slug>/iterations/<int:iteration_id>/close/", v.iteration_close_view, name="iteration_close"
    ),
    path(
        "teams/<slug:team_slug>/iterations/<int:iteration_id>/commit/", v.iteration_commit_view,
        name="iteration_commit",
    ),
    path(
        "teams/<slug:team_slug>/iterations/<int:iteration_id>/uncommit/", v.iteration_uncommit_view,
        name="iteration_uncommit",
    ),
]
