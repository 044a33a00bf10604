"""REST API routes under /api/. Unknown paths get a JSON 404 rather than an HTML page."""

from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from . import views

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
    re_path(r"^(?P<path>.*)$", views.not_found, name="api-not-found"),
]
