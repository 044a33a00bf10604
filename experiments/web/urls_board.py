from django.urls import path

from . import board_views as v

urlpatterns = [
    path("boards/<int:board_id>/", v.board_page, name="board"),
    path("boards/<int:board_id>/cells/", v.board_cell_cards_view, name="board_cell_cards"),
    path("boards/<int:board_id>/lanes/", v.board_lanes_view, name="board_lanes"),
    path("boards/<int:board_id>/state/", v.board_state, name="board_state"),
    path("boards/<int:board_id>/cards/new/<str:kind>/", v.card_create_view, name="board_card_create"),
    path("boards/<int:board_id>/cards/sample-size/", v.card_sample_size, name="board_card_sample_size"),
    path("boards/<int:board_id>/cards/<int:card_id>/move/", v.card_move_view, name="board_card_move"),
    path("boards/<int:board_id>/cards/<int:card_id>/quick/", v.card_quick, name="board_card_quick"),
    path("boards/<int:board_id>/cards/<int:card_id>/edit/", v.card_edit_view, name="board_card_edit"),
    path("boards/<int:board_id>/cards/<int:card_id>/flag/", v.card_flag_view, name="board_card_flag"),
    path("boards/<int:board_id>/settings/", v.board_settings, name="board_settings"),
    path("boards/<int:board_id>/archive/", v.board_archive_page, name="board_archive"),
    path("boards/<int:board_id>/cards/<int:card_id>/restore/", v.card_restore_view, name="board_card_restore"),
    path("boards/<int:board_id>/settings/columns/add/", v.column_add_view, name="board_column_add"),
    path("boards/<int:board_id>/settings/columns/<int:column_id>/", v.column_update_view, name="board_column_update"),
    path(
        "boards/<int:board_id>/settings/columns/<int:column_id>/move/", v.column_move_view, name="board_column_move"
    ),
    path(
        "boards/<int:board_id>/settings/columns/<int:column_id>/delete/",
        v.column_delete_view,
        name="board_column_delete",
    ),
    path("teams/<slug:team_slug>/boards/new/", v.board_new, name="board_new"),
]
