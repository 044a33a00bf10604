from django.urls import path

from . import standup_views as views

urlpatterns = [
    path("teams/<slug:team_slug>/standup/", views.standup_page, name="standup"),
    path("teams/<slug:team_slug>/standup/boards/<int:board_id>/", views.standup_page, name="standup_board"),
    path("teams/<slug:team_slug>/standup/history/", views.standup_history, name="standup_history"),
    path(
        "teams/<slug:team_slug>/standup/history/<int:digest_id>/",
        views.standup_digest_detail,
        name="standup_digest_detail",
    ),
    path(
        "teams/<slug:team_slug>/standup/cards/<int:card_id>/sparkline/",
        views.standup_sparkline,
        name="standup_sparkline",
    ),
    path("teams/<slug:team_slug>/standup/cards/<int:card_id>/move/", views.standup_card_move, name="standup_card_move"),
    path("teams/<slug:team_slug>/standup/cards/<int:card_id>/note/", views.standup_card_note, name="standup_card_note"),
    path(
        "teams/<slug:team_slug>/standup/verdicts/<int:proposal_id>/decide/",
        views.standup_verdict_decide,
        name="standup_verdict_decide",
    ),
]
