"""Team settings pages: rendering, permissions per role, cross-team 404s, forms and query counts."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse

from experiments.models import Membership, MlflowSource, Role, Run, User
from experiments.services.boards import membership_set
from experiments.services.teams import mlflow_source_create

pytestmark = pytest.mark.django_db

SECRET = "tok-9f8e7d6c5b4a-very-secret"


def _settings_post(**overrides):
    data = {
        "name": "Vision",
        "standup_time": "10:15",
        "standup_window_start": "18:00",
        "timezone": "Europe/Berlin",
        "stuck_after_hours": "48",
        "iteration_days": "1",
        "digest_emails": "",
        "webhook_url": "",
    }
    data.update(overrides)
    return data


@pytest.fixture
def source(team):
    return mlflow_source_create(team=team, name="prod", tracking_uri="https://mlflow.example.com", token=SECRET)


@pytest.fixture
def foreign_source(other_team):
    return mlflow_source_create(team=other_team, name="theirs", tracking_uri="https://theirs.example.com")


# --- Rendering and reading ------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["manager", "member", "viewer"])
@pytest.mark.parametrize("page", ["team_settings", "team_members", "team_mlflow_sources"])
def test_pages_render_for_every_role(request, client_for, team, source, who, page):
    user = request.getfixturevalue(who)
    response = client_for(user).get(reverse(page, args=[team.slug]))
    assert response.status_code == 200
    html = response.content.decode()
    assert response.context["team"] == team
    # The nav link to these pages, from base.html.
    assert f'href="{reverse("team_settings", args=[team.slug])}"' in html
    if who == "manager":
        assert "Only team managers can change" not in html
    else:
        assert "Only team managers can change these settings" in html


def test_settings_page_is_a_form_for_managers_and_read_only_for_others(client_for, team, manager, viewer):
    team.webhook_url = "https://hooks.slack.com/services/T0/B0/secretpart"
    team.save()
    manager_html = client_for(manager).get(reverse("team_settings", args=[team.slug])).content.decode()
    assert "Save settings" in manager_html
    assert "secretpart" in manager_html
    assert '<option value="Europe/Berlin">' in manager_html  # time zone suggestions
    viewer_html = client_for(viewer).get(reverse("team_settings", args=[team.slug])).content.decode()
    assert "Save settings" not in viewer_html
    assert "disabled" in viewer_html
    # The webhook URL is a bearer secret: non-managers only see that one is set.
    assert "secretpart" not in viewer_html
    assert "Set (posts to hooks.slack.com)" in viewer_html


def test_anonymous_users_are_sent_to_login(client, team):
    response = client.get(reverse("team_members", args=[team.slug]))
    assert response.status_code == 302 and "/login" in response["Location"]


# --- Permissions ----------------------------------------------------------------------------------


def _write_requests(team, membership_id, source_id):
    slug = team.slug
    return [
        (reverse("team_settings", args=[slug]), _settings_post(name="Hijacked")),
        (reverse("team_members", args=[slug]), {"user": "otto", "role": "manager"}),
        (reverse("team_member_role", args=[slug, membership_id]), {"role": "viewer"}),
        (reverse("team_member_remove", args=[slug, membership_id]), {}),
        (reverse("team_mlflow_sources", args=[slug]), {"name": "x", "tracking_uri": "https://x.example.com"}),
        (reverse("team_mlflow_source_edit", args=[slug, source_id]), {"name": "renamed", "tracking_uri": "https://x.io"}),
        (reverse("team_mlflow_source_toggle", args=[slug, source_id]), {"enabled": "0"}),
        (reverse("team_mlflow_source_sync", args=[slug, source_id]), {}),
        (reverse("team_mlflow_source_delete", args=[slug, source_id]), {}),
    ]


@pytest.mark.parametrize("who", ["member", "viewer"])
def test_members_and_viewers_cannot_write(request, client_for, team, manager, outsider, source, who):
    user = request.getfixturevalue(who)
    client = client_for(user)
    target = Membership.objects.get(team=team, user=manager)
    for url, data in _write_requests(team, target.pk, source.pk):
        response = client.post(url, data)
        assert response.status_code == 403, url
        assert f"Only managers can change the settings of Vision; you are a {who}" in response.content.decode()
    team.refresh_from_db()
    source.refresh_from_db()
    target.refresh_from_db()
    assert team.name == "Vision" and target.role == Role.MANAGER
    assert (source.name, source.enabled, source.last_error) == ("prod", True, "")
    assert not Membership.objects.filter(team=team, user=outsider).exists()
    assert MlflowSource.objects.filter(team=team).count() == 1


def test_members_cannot_open_the_source_edit_form(client_for, team, member, source):
    response = client_for(member).get(reverse("team_mlflow_source_edit", args=[team.slug, source.pk]))
    assert response.status_code == 403


def test_non_members_get_404_everywhere(client_for, team, manager, outsider, source):
    client = client_for(outsider)
    for page in ("team_settings", "team_members", "team_mlflow_sources"):
        assert client.get(reverse(page, args=[team.slug])).status_code == 404
    target = Membership.objects.get(team=team, user=manager)
    for url, data in _write_requests(team, target.pk, source.pk):
        assert client.post(url, data).status_code == 404, url
    assert client.get(reverse("team_settings", args=["no-such-team"])).status_code == 404


def test_ids_of_another_team_are_404_for_a_manager(client_for, team, manager, other_team, outsider, foreign_source):
    client = client_for(manager)
    theirs = Membership.objects.get(team=other_team, user=outsider)
    requests = _write_requests(team, theirs.pk, foreign_source.pk)
    with_ids = [requests[i] for i in (2, 3, 5, 6, 7, 8)]  # the ones naming a membership or a source
    for url, data in with_ids:
        assert client.post(url, data).status_code == 404, url
    assert client.get(reverse("team_mlflow_source_edit", args=[team.slug, foreign_source.pk])).status_code == 404
    theirs.refresh_from_db()
    foreign_source.refresh_from_db()
    assert theirs.role == Role.MANAGER and foreign_source.name == "theirs" and foreign_source.enabled


# --- Settings form --------------------------------------------------------------------------------


def test_manager_saves_settings(client_for, team, manager):
    response = client_for(manager).post(
        reverse("team_settings", args=[team.slug]),
        _settings_post(name="Vision ML", iteration_days="5", digest_emails="a@example.com\nb@example.com",
                       webhook_url="https://hooks.slack.com/services/T/B/x"),
        follow=True,
    )
    assert response.status_code == 200
    assert "Team settings saved." in response.content.decode()
    team.refresh_from_db()
    assert team.name == "Vision ML"
    assert team.standup_time == dt.time(10, 15)
    assert team.timezone == "Europe/Berlin"
    assert team.iteration_days == 5 and team.stuck_after_hours == 48
    assert team.digest_emails == "a@example.com\nb@example.com"


def test_invalid_settings_show_messages_next_to_fields(client_for, team, manager):
    response = client_for(manager).post(
        reverse("team_settings", args=[team.slug]),
        _settings_post(name="Renamed", timezone="Moon/Base", digest_emails="x@example.com\nnope",
                       stuck_after_hours="many", webhook_url="slack"),
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "“Moon/Base” is not a known time zone" in html
    assert "Line 2: “nope” is not a valid email address" in html
    assert "Enter a whole number of hours." in html
    assert "Nothing was saved" in html
    team.refresh_from_db()
    assert team.name == "Vision" and team.timezone == "UTC"
    # The posted values are kept in the form so nothing typed is lost.
    assert 'value="Moon/Base"' in html


def test_webhook_error_is_shown_when_it_is_the_only_problem(client_for, team, manager):
    response = client_for(manager).post(reverse("team_settings", args=[team.slug]), _settings_post(webhook_url="slack"))
    assert response.status_code == 400
    assert "The webhook URL must start with http:// or https://" in response.content.decode()


# --- Members --------------------------------------------------------------------------------------


def test_manager_adds_changes_and_removes_members(client_for, team, manager, make_user):
    client = client_for(manager)
    ada = make_user("ada")
    response = client.post(reverse("team_members", args=[team.slug]), {"user": "ada@example.com", "role": "viewer"},
                           follow=True)
    assert "Added ada (@ada) as viewer." in response.content.decode()
    ada_membership = Membership.objects.get(team=team, user=ada)
    assert ada_membership.role == Role.VIEWER

    response = client.post(reverse("team_member_role", args=[team.slug, ada_membership.pk]), {"role": "member"},
                           follow=True)
    assert "ada is now a member." in response.content.decode()
    ada_membership.refresh_from_db()
    assert ada_membership.role == Role.MEMBER

    response = client.post(reverse("team_member_remove", args=[team.slug, ada_membership.pk]), follow=True)
    assert "Removed ada (@ada) from Vision." in response.content.decode()
    assert not Membership.objects.filter(pk=ada_membership.pk).exists()


def test_adding_unknown_or_existing_users_shows_a_clear_error(client_for, team, manager, member):
    client = client_for(manager)
    response = client.post(reverse("team_members", args=[team.slug]), {"user": "ghost", "role": "member"})
    assert response.status_code == 400
    assert "No account with the username or email “ghost”" in response.content.decode()
    response = client.post(reverse("team_members", args=[team.slug]), {"user": "mo", "role": "viewer"})
    assert response.status_code == 400
    assert "mo (@mo) is already on Vision as member." in response.content.decode()
    assert Membership.objects.get(team=team, user=member).role == Role.MEMBER


def test_last_manager_cannot_be_demoted_or_removed_from_the_page(client_for, team, manager, member):
    client = client_for(manager)
    mine = Membership.objects.get(team=team, user=manager)
    page = client.get(reverse("team_members", args=[team.slug])).content.decode()
    assert "The only manager" in page
    response = client.post(reverse("team_member_role", args=[team.slug, mine.pk]), {"role": "member"})
    assert response.status_code == 400
    assert "maya is the team&#x27;s only manager and cannot be made a member" in response.content.decode()
    response = client.post(reverse("team_member_remove", args=[team.slug, mine.pk]))
    assert response.status_code == 400
    assert "only manager and cannot be removed. Make someone else a manager first." in response.content.decode()
    mine.refresh_from_db()
    assert mine.role == Role.MANAGER


def test_manager_who_leaves_is_sent_home(client_for, team, manager, member):
    membership_set(team=team, user=member, role=Role.MANAGER)
    client = client_for(manager)
    mine = Membership.objects.get(team=team, user=manager)
    response = client.post(reverse("team_member_remove", args=[team.slug, mine.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("home")
    assert client.get(reverse("team_settings", args=[team.slug])).status_code == 404


# --- MLflow sources -------------------------------------------------------------------------------


def test_manager_adds_a_source_and_the_token_is_never_shown(client_for, team, manager, member):
    client = client_for(manager)
    response = client.post(
        reverse("team_mlflow_sources", args=[team.slug]),
        {"name": "prod", "tracking_uri": "http://mlflow:5000", "token": SECRET, "experiment_names": "churn",
         "enabled": "on"},
        follow=True,
    )
    html = response.content.decode()
    assert "Added MLflow source prod." in html
    source = MlflowSource.objects.get(team=team)
    assert source.token == SECRET and source.experiment_names == "churn" and source.enabled
    assert SECRET not in html and "Set</span>" in html
    edit = client.get(reverse("team_mlflow_source_edit", args=[team.slug, source.pk])).content.decode()
    assert SECRET not in edit and "A token is stored" in edit
    assert SECRET not in client_for(member).get(reverse("team_mlflow_sources", args=[team.slug])).content.decode()


def test_invalid_source_is_rejected_with_field_messages(client_for, team, manager, source):
    response = client_for(manager).post(
        reverse("team_mlflow_sources", args=[team.slug]), {"name": "Prod", "tracking_uri": "mlflow.example.com"}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "This team already has an MLflow source named “Prod”." in html
    assert "The tracking URI must start with http:// or https://" in html
    assert MlflowSource.objects.filter(team=team).count() == 1


def test_edit_keeps_the_token_when_left_empty_and_can_clear_it(client_for, team, manager, source):
    client = client_for(manager)
    url = reverse("team_mlflow_source_edit", args=[team.slug, source.pk])
    response = client.post(url, {"name": "production", "tracking_uri": "https://mlflow.example.com", "token": "",
                                 "enabled": "on"})
    assert response.status_code == 302
    source.refresh_from_db()
    assert (source.name, source.token) == ("production", SECRET)
    client.post(url, {"name": "production", "tracking_uri": "https://mlflow.example.com", "clear_token": "on"})
    source.refresh_from_db()
    assert source.token == "" and source.enabled is False  # unchecked box disables


def test_toggle_sync_and_delete(client_for, team, manager, source, django_capture_on_commit_callbacks):
    client = client_for(manager)
    client.post(reverse("team_mlflow_source_toggle", args=[team.slug, source.pk]), {"enabled": "0"})
    source.refresh_from_db()
    assert source.enabled is False
    response = client.post(reverse("team_mlflow_source_sync", args=[team.slug, source.pk]))
    assert response.status_code == 400
    assert "“prod” is disabled; enable it before syncing." in response.content.decode()

    client.post(reverse("team_mlflow_source_toggle", args=[team.slug, source.pk]), {"enabled": "1"})
    MlflowSource.objects.filter(pk=source.pk).update(tracking_uri="http://127.0.0.1:9")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(reverse("team_mlflow_source_sync", args=[team.slug, source.pk]))
    assert response.status_code == 302 and len(callbacks) == 1
    page = client.get(reverse("team_mlflow_sources", args=[team.slug])).content.decode()
    assert "Sync of prod queued." in page
    assert "Cannot reach the MLflow server at http://127.0.0.1:9" in page  # last_error shown

    Run.objects.create(team=team, source="import:prod", external_id="r1")
    response = client.post(reverse("team_mlflow_source_delete", args=[team.slug, source.pk]), follow=True)
    assert "Deleted MLflow source prod. The 1 run it imported stays." in response.content.decode()
    assert not MlflowSource.objects.filter(pk=source.pk).exists()


def test_sources_page_shows_last_sync_and_imported_runs(client_for, team, viewer, source):
    MlflowSource.objects.filter(pk=source.pk).update(last_synced_at="2024-05-01T08:00:00Z", last_error="")
    for i in range(3):
        Run.objects.create(team=team, source="import:prod", external_id=f"r{i}")
    Run.objects.create(team=team, source="mlboard", external_id="local")
    response = client_for(viewer).get(reverse("team_mlflow_sources", args=[team.slug]))
    html = response.content.decode()
    assert response.context["sources"][0].imported_runs == 3
    assert 'datetime="2024-05-01T08:00:00+00:00"' in html
    assert 'aria-label="Sync prod now"' not in html  # viewers see no write buttons
    assert "Delete prod" not in html


def test_empty_sources_page(client_for, team, manager):
    html = client_for(manager).get(reverse("team_mlflow_sources", args=[team.slug])).content.decode()
    assert "No MLflow sources yet." in html and "Add an MLflow source" in html


# --- Query counts ---------------------------------------------------------------------------------


def _add_members(team, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        user = User.objects.create(username=f"user{i:03d}", email=f"user{i}@example.com")
        Membership.objects.create(team=team, user=user, role=[Role.MANAGER, Role.MEMBER, Role.VIEWER][i % 3])


@pytest.mark.parametrize("who", ["manager", "viewer"])
def test_members_page_query_count_is_constant(request, client_for, team, manager, viewer, who,
                                              django_assert_num_queries):
    client = client_for(request.getfixturevalue(who))
    url = reverse("team_members", args=[team.slug])
    _add_members(team, 10)
    client.get(url)  # warm the session
    # session, user, caller's membership + team, the member list
    with django_assert_num_queries(4):
        first = client.get(url)
    _add_members(team, 10, start=10)
    with django_assert_num_queries(4):
        second = client.get(url)
    assert len(first.context["memberships"]) == 12 and len(second.context["memberships"]) == 22
    assert second.content.decode().count('data-membership-id="') == 22


def test_sources_page_query_count_is_constant(client_for, team, manager, django_assert_num_queries):
    client = client_for(manager)
    url = reverse("team_mlflow_sources", args=[team.slug])

    def add(n: int, start: int) -> None:
        for i in range(start, start + n):
            mlflow_source_create(team=team, name=f"src{i:02d}", tracking_uri=f"https://m{i}.example.com", token="t")
            Run.objects.create(team=team, source=f"import:src{i:02d}", external_id="r")

    add(5, 0)
    client.get(url)
    with django_assert_num_queries(4):
        client.get(url)
    add(5, 5)
    with django_assert_num_queries(4):
        response = client.get(url)
    assert [s.imported_runs for s in response.context["sources"]] == [1] * 10
