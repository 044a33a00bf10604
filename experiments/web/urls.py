from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("", include("experiments.web.urls_board")),
    path("", include("experiments.web.urls_runs")),
    path("", include("experiments.web.urls_standup")),
    path("", include("experiments.web.urls_reports")),
]
