from django.urls import path

from . import board_views

urlpatterns = [
    path("boards/<int:board_id>/", board_views.board_page, name="board"),
]
