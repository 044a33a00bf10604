from django.urls import path

from .placeholders import placeholder

urlpatterns = [
    path("teams/<slug:team_slug>/standup/", placeholder, name="standup"),
]
