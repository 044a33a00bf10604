"""REST API routes under /api/. Unknown paths get a JSON 404 rather than an HTML page."""

from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from . import reports, views

router = SimpleRouter()
router.register("teams", views.TeamViewSet, basename="api-team")
router.register("boards", views.BoardViewSet, basename="api-board")
router.register("cards", views.CardViewSet, basename="api-card")
router.register("runs", views.RunViewSet, basename="api-run")
router.register("links", views.LinkViewSet, basename="api-link")
router.register("tokens", views.TokenViewSet, basename="api-token")

urlpatterns = [
    path("", views.api_index, name="api-index"),
    *router.urls,
    path("teams/<slug:slug>/reports/velocity/", reports.VelocityReportView.as_view(), name="api-report-velocity"),
    path("teams/<slug:slug>/reports/flow/", reports.FlowReportView.as_view(), name="api-report-flow"),
    path("teams/<slug:slug>/reports/maturity/", reports.MaturityReportView.as_view(), name="api-report-maturity"),
    path(
        "teams/<slug:slug>/reports/maturity/snapshots/",
        reports.MaturitySnapshotsView.as_view(),
        name="api-report-maturity-snapshots",
    ),
    re_path(r"^(?P<path>(?s:.*))$", views.not_found, name="api-not-found"),  # (?s): paths with newlines too
]
