from django.urls import path

from .placeholders import placeholder

urlpatterns = [
    path("teams/<slug:team_slug>/runs/", placeholder, name="runs"),
    path("cards/<int:card_id>/", placeholder, name="card_detail"),
]
