from django.urls import include, path

from . import views

# Each area owns one url module; names are a contract other areas link to:
# board(board_id), card_detail(card_id), runs(team_slug), standup(team_slug),
# velocity(team_slug), maturity(team_slug), tokens().
urlpatterns = [
    path("", views.home, name="home"),
    path("", include("experiments.web.urls_board")),
    path("", include("experiments.web.urls_runs")),
    path("", include("experiments.web.urls_standup")),
    path("", include("experiments.web.urls_reports")),
    path("", include("experiments.web.urls_maturity")),
    path("", include("experiments.web.urls_account")),
    path("", include("experiments.web.urls_team")),
    path("", include("experiments.web.urls_teamwork")),
]
