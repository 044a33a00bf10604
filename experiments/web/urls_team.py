from django.urls import path

from . import team_views as v
from .invitation_views import invitation_accept_view

# Team settings area; team_settings, team_members and team_mlflow_sources are linked from other pages.
urlpatterns = [
    path("teams/<slug:team_slug>/settings/", v.team_settings, name="team_settings"),
    path("teams/<slug:team_slug>/members/", v.team_members, name="team_members"),
    path("teams/<slug:team_slug>/members/<int:membership_id>/role/", v.team_member_role, name="team_member_role"),
    path(
        "teams/<slug:team_slug>/members/<int:membership_id>/remove/", v.team_member_remove, name="team_member_remove"
    ),
    path("teams/<slug:team_slug>/members/invite/", v.team_member_invite, name="team_member_invite"),
    path("invitations/<str:secret>/", invitation_accept_view, name="invitation_accept"),
    path("teams/<slug:team_slug>/mlflow/", v.team_mlflow_sources_view, name="team_mlflow_sources"),
    path(
        "teams/<slug:team_slug>/mlflow/<int:source_id>/edit/", v.team_mlflow_source_edit, name="team_mlflow_source_edit"
    ),
    path(
        "teams/<slug:team_slug>/mlflow/<int:source_id>/toggle/",
        v.team_mlflow_source_toggle,
        name="team_mlflow_source_toggle",
    ),
    path(
        "teams/<slug:team_slug>/mlflow/<int:source_id>/sync/", v.team_mlflow_source_sync, name="team_mlflow_source_sync"
    ),
    path(
        "teams/<slug:team_slug>/mlflow/<int:source_id>/delete/",
        v.team_mlflow_source_delete,
        name="team_mlflow_source_delete",
    ),
]
