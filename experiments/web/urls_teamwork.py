from django.urls import path

from . import insight_views, onboarding_views, search_views
from . import teamwork_views as v

# Daily teamwork: comments, notifications, search, evidence, leaderboard, onboarding.
urlpatterns = [
    path("cards/<int:card_id>/comments/", v.card_comment_create, name="card_comment_create"),
    path("runs/<int:run_id>/comments/", v.run_comment_create, name="run_comment_create"),
    path("comments/<int:comment_id>/edit/", v.comment_edit, name="comment_edit"),
    path("comments/<int:comment_id>/history/", v.comment_history, name="comment_history"),
    path("teams/<slug:team_slug>/members.json", v.team_members_json, name="team_members_json"),
    path("notifications/", v.notifications_page, name="notifications"),
    path("notifications/bell/", v.notifications_bell, name="notifications_bell"),
    path("notifications/read/", v.notifications_read, name="notifications_read"),
    path("notifications/<int:notification_id>/", v.notification_open, name="notification_open"),
    path("notifications/preferences/", v.notification_prefs, name="notification_prefs"),
    path("cards/<int:card_id>/watch/", v.card_watch, name="card_watch"),
    path("teams/<slug:team_slug>/board-rules/", v.team_board_rules, name="team_board_rules"),
    path("search/", search_views.search_page, name="search"),
    path("cards/<int:card_id>/evidence/", insight_views.card_evidence, name="card_evidence"),
    path("cards/<int:card_id>/evidence.json", insight_views.card_evidence_json, name="card_evidence_json"),
    path("boards/<int:board_id>/similar/", insight_views.card_similar, name="board_similar"),
    path("boards/<int:board_id>/dead-ends/", insight_views.board_dead_ends, name="board_dead_ends"),
    path("teams/<slug:team_slug>/leaderboard/", insight_views.leaderboard, name="leaderboard"),
    path("teams/<slug:team_slug>/connect/", onboarding_views.connect_page, name="team_connect"),
    path("teams/<slug:team_slug>/connect/status/", onboarding_views.connect_status, name="team_connect_status"),
    path("teams/<slug:team_slug>/standup/build/", onboarding_views.standup_build_now, name="standup_build_now"),
]
