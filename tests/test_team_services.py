"""Team settings, membership and MLflow source services: validation, the last-manager rule, relabelling."""

from __future__ import annotations

import datetime as dt

import pytest

from experiments.errors import DomainError
from experiments.models import Membership, MlflowSource, Role, Run, TrackingExperiment
from experiments.services.boards import membership_set
from experiments.services.teams import (
    membership_add,
    membership_remove,
    membership_set_role,
    mlflow_source_create,
    mlflow_source_delete,
    mlflow_source_sync_now,
    mlflow_source_update,
    parse_digest_emails,
    team_update,
    validate_timezone,
)

pytestmark = pytest.mark.django_db


def _settings(**overrides):
    values = {
        "name": "Vision team",
        "standup_time": dt.time(10, 0),
        "standup_window_start": dt.time(17, 30),
        "timezone": "Europe/Berlin",
        "stuck_after_hours": 36,
        "iteration_days": 1,
        "digest_emails": "",
        "webhook_url": "",
    }
    values.update(overrides)
    return values


# --- team_update ----------------------------------------------------------------------------------


def test_team_update_saves_every_setting(team):
    team_update(
        team=team,
        **_settings(
            digest_emails=" lead@example.com \n\nboss@example.org, LEAD@example.com\n",
            webhook_url="  https://hooks.slack.com/services/T0/B0/abc  ",
            iteration_days=7,
        ),
    )
    team.refresh_from_db()
    assert team.name == "Vision team"
    assert team.standup_time == dt.time(10, 0)
    assert team.standup_window_start == dt.time(17, 30)
    assert team.timezone == "Europe/Berlin"
    assert team.stuck_after_hours == 36
    assert team.iteration_days == 7
    # One per line, blanks and case-insensitive duplicates dropped.
    assert team.digest_emails == "lead@example.com\nboss@example.org"
    assert team.webhook_url == "https://hooks.slack.com/services/T0/B0/abc"


def test_new_team_defaults_to_daily_iterations_and_evening_window(team):
    assert team.iteration_days == 1
    assert team.standup_window_start == dt.time(18, 0)


def test_unknown_timezone_is_rejected_with_the_name(team):
    with pytest.raises(DomainError) as exc:
        team_update(team=team, **_settings(timezone="Mars/Olympus_Mons"))
    assert exc.value.field == "timezone"
    assert "Mars/Olympus_Mons" in exc.value.message and "IANA" in exc.value.message
    team.refresh_from_db()
    assert team.timezone == "UTC"


def test_timezone_case_is_corrected_but_not_guessed():
    assert validate_timezone("europe/berlin") == "Europe/Berlin"
    assert validate_timezone("UTC") == "UTC"
    with pytest.raises(DomainError):
        validate_timezone("Berlin")
    with pytest.raises(DomainError, match="Choose a time zone"):
        validate_timezone("  ")


def test_all_invalid_fields_are_reported_together_and_nothing_is_saved(team):
    with pytest.raises(DomainError) as exc:
        team_update(
            team=team,
            **_settings(
                name="  ", standup_time=None, stuck_after_hours=0, iteration_days=91,
                digest_emails="ok@example.com\nnot-an-email", webhook_url="ftp://chat.example.com/hook",
            ),
        )
    errors = exc.value.errors
    assert set(errors) == {
        "name", "standup_time", "stuck_after_hours", "iteration_days", "digest_emails", "webhook_url"
    }
    assert "Line 2" in errors["digest_emails"] and "not-an-email" in errors["digest_emails"]
    assert "http://" in errors["webhook_url"]
    assert "between 1 and 90" in errors["iteration_days"]
    team.refresh_from_db()
    assert team.name == "Vision" and team.stuck_after_hours == 24 and team.digest_emails == ""


def test_webhook_on_an_internal_host_is_accepted(team):
    # Django's URLValidator rejects dotless hosts; self-hosted chat often lives on one.
    team_update(team=team, **_settings(webhook_url="http://mattermost:8065/hooks/abc"))
    team.refresh_from_db()
    assert team.webhook_url == "http://mattermost:8065/hooks/abc"


@pytest.mark.parametrize("url", ["hooks.slack.com/services/x", "https://", "https://host:99999/x", "https://a b/c"])
def test_malformed_webhooks_are_rejected(team, url):
    with pytest.raises(DomainError) as exc:
        team_update(team=team, **_settings(webhook_url=url))
    assert exc.value.field == "webhook_url"


def test_parse_digest_emails_reports_the_bad_line():
    assert parse_digest_emails("") == []
    with pytest.raises(DomainError, match="Line 3: “bob@” is not a valid email"):
        parse_digest_emails("a@example.com\n\nbob@")


# --- Memberships ----------------------------------------------------------------------------------


def test_membership_add_by_username_or_email(team, make_user):
    ada = make_user("ada")
    grace = make_user("grace")
    by_name = membership_add(team=team, user_identifier="@ADA", role=Role.VIEWER)
    by_email = membership_add(team=team, user_identifier="Grace@Example.com", role=Role.MANAGER)
    assert (by_name.user, by_name.role) == (ada, Role.VIEWER)
    assert (by_email.user, by_email.role) == (grace, Role.MANAGER)


def test_membership_add_errors(team, member, make_user):
    with pytest.raises(DomainError, match="No account with the username or email “nobody”"):
        membership_add(team=team, user_identifier="nobody")
    with pytest.raises(DomainError, match="already on Vision as member"):
        membership_add(team=team, user_identifier=member.email)
    with pytest.raises(DomainError, match="Enter the username or email"):
        membership_add(team=team, user_identifier="   ")
    make_user("ben")
    with pytest.raises(DomainError, match="Unknown role"):
        membership_add(team=team, user_identifier="ben", role="owner")
    twin_a, twin_b = make_user("twin_a"), make_user("twin_b")
    twin_b.email = twin_a.email = "twins@example.com"
    twin_a.save()
    twin_b.save()
    with pytest.raises(DomainError, match="add the person by username"):
        membership_add(team=team, user_identifier="twins@example.com")
    assert not Membership.objects.filter(team=team, user__username__in=["ben", "twin_a", "twin_b"]).exists()


def test_last_manager_cannot_be_demoted_or_removed(team, manager, member):
    only = Membership.objects.get(team=team, user=manager)
    with pytest.raises(DomainError, match="only manager"):
        membership_set_role(membership=only, role=Role.MEMBER)
    with pytest.raises(DomainError, match="only manager"):
        membership_remove(membership=only)
    only.refresh_from_db()
    assert only.role == Role.MANAGER


def test_a_manager_can_step_down_once_there_is_another(team, manager, member):
    promoted = membership_set_role(membership=Membership.objects.get(team=team, user=member), role=Role.MANAGER)
    assert promoted.role == Role.MANAGER
    demoted = membership_set_role(membership=Membership.objects.get(team=team, user=manager), role=Role.VIEWER)
    assert demoted.role == Role.VIEWER
    membership_remove(membership=Membership.objects.get(team=team, user=manager))
    assert list(team.memberships.values_list("user__username", "role")) == [("mo", Role.MANAGER)]


def test_last_manager_rule_uses_the_current_row_not_a_stale_object(team, manager, member):
    second = membership_set(team=team, user=member, role=Role.MANAGER)
    stale_first = Membership.objects.get(team=team, user=manager)
    membership_set_role(membership=second, role=Role.MEMBER)
    # stale_first still says manager, and it is now the only one: refused.
    with pytest.raises(DomainError, match="only manager"):
        membership_remove(membership=stale_first)
    # A stale object that says "member" for someone who is now the only manager is refused too.
    stale_member = Membership.objects.get(team=team, user=manager)
    stale_member.role = Role.MEMBER
    with pytest.raises(DomainError, match="only manager"):
        membership_remove(membership=stale_member)


def test_managers_of_other_teams_do_not_count(team, other_team, manager, outsider):
    # outsider is a manager of other_team; team still has a single manager.
    with pytest.raises(DomainError):
        membership_remove(membership=Membership.objects.get(team=team, user=manager))


def test_members_and_viewers_can_be_removed(team, manager, member, viewer):
    membership_remove(membership=Membership.objects.get(team=team, user=viewer))
    membership_set_role(membership=Membership.objects.get(team=team, user=member), role=Role.VIEWER)
    assert dict(team.memberships.values_list("user__username", "role")) == {"maya": "manager", "mo": "viewer"}


# --- MLflow sources -------------------------------------------------------------------------------


def test_mlflow_source_create_stores_clean_values(team):
    source = mlflow_source_create(
        team=team, name=" prod ", tracking_uri="http://mlflow:5000/", token=" s3cret ",
        experiment_names="churn\n\nchurn\n fraud \n",
    )
    source.refresh_from_db()
    assert (source.name, source.tracking_uri, source.token) == ("prod", "http://mlflow:5000", "s3cret")
    assert source.experiment_names == "churn\nfraud"
    assert source.enabled and source.last_synced_at is None


def test_mlflow_source_create_validation(team, other_team):
    mlflow_source_create(team=team, name="Prod", tracking_uri="https://mlflow.example.com")
    with pytest.raises(DomainError) as exc:
        mlflow_source_create(team=team, name="prod", tracking_uri="file:///tmp/mlruns")
    assert set(exc.value.errors) == {"name", "tracking_uri"}
    assert "already has an MLflow source named" in exc.value.errors["name"]
    assert "http:// or https://" in exc.value.errors["tracking_uri"]
    with pytest.raises(DomainError, match="Give the source a name"):
        mlflow_source_create(team=team, name="", tracking_uri="https://x.example.com")
    with pytest.raises(DomainError, match="Enter the tracking URI"):
        mlflow_source_create(team=team, name="b", tracking_uri=" ")
    # Names are per team.
    assert mlflow_source_create(team=other_team, name="Prod", tracking_uri="https://m.example.com").team == other_team


def test_mlflow_source_update_token_is_kept_replaced_or_cleared(team):
    source = mlflow_source_create(team=team, name="prod", tracking_uri="https://m.example.com", token="first")
    mlflow_source_update(source=source, token=None)
    mlflow_source_update(source=source, token="")
    assert MlflowSource.objects.get(pk=source.pk).token == "first"
    mlflow_source_update(source=source, token="second")
    assert MlflowSource.objects.get(pk=source.pk).token == "second"
    mlflow_source_update(source=source, clear_token=True)
    assert MlflowSource.objects.get(pk=source.pk).token == ""


def test_mlflow_source_rename_relabels_imported_runs(team, other_team):
    source = mlflow_source_create(team=team, name="old", tracking_uri="https://m.example.com")
    exp = TrackingExperiment.objects.create(team=team, name="churn", source="import:old")
    Run.objects.create(team=team, experiment=exp, source="import:old", external_id="r1")
    foreign = Run.objects.create(team=other_team, source="import:old", external_id="r1")
    mlflow_source_update(source=source, name="new")
    assert Run.objects.get(team=team, external_id="r1").source == "import:new"
    assert TrackingExperiment.objects.get(pk=exp.pk).source == "import:new"
    foreign.refresh_from_db()
    assert foreign.source == "import:old"  # other teams' runs are untouched


def test_mlflow_source_rename_onto_leftover_runs_is_refused(team):
    source = mlflow_source_create(team=team, name="current", tracking_uri="https://m.example.com")
    Run.objects.create(team=team, source="import:deleted", external_id="r1")
    with pytest.raises(DomainError, match="still exist; choose another name") as exc:
        mlflow_source_update(source=source, name="deleted")
    assert exc.value.field == "name"
    assert MlflowSource.objects.get(pk=source.pk).name == "current"


def test_new_tracking_uri_resets_the_cursor_but_same_uri_keeps_it(team):
    source = mlflow_source_create(team=team, name="prod", tracking_uri="https://m.example.com")
    MlflowSource.objects.filter(pk=source.pk).update(cursor={"1": {"start": 5}})
    source.refresh_from_db()
    mlflow_source_update(source=source, tracking_uri="https://m.example.com/", enabled=False)
    source.refresh_from_db()
    assert source.cursor == {"1": {"start": 5}} and source.enabled is False
    mlflow_source_update(source=source, tracking_uri="https://other.example.com")
    source.refresh_from_db()
    assert source.cursor == {} and source.tracking_uri == "https://other.example.com"
    with pytest.raises(DomainError, match="http:// or https://"):
        mlflow_source_update(source=source, tracking_uri="mlflow.example.com")


def test_mlflow_source_delete_keeps_imported_runs(team):
    source = mlflow_source_create(team=team, name="prod", tracking_uri="https://m.example.com")
    Run.objects.create(team=team, source="import:prod", external_id="r1")
    Run.objects.create(team=team, source="import:prod", external_id="r2")
    assert mlflow_source_delete(source=source) == 2
    assert not MlflowSource.objects.filter(pk=source.pk).exists()
    assert Run.objects.filter(team=team, source="import:prod").count() == 2


def test_sync_now_runs_the_import_task_after_commit(team, django_capture_on_commit_callbacks):
    # Port 9 (discard) is closed here, so the real task records a connection error.
    source = mlflow_source_create(team=team, name="down", tracking_uri="http://127.0.0.1:9")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        mlflow_source_sync_now(source=source)
    assert len(callbacks) == 1
    source.refresh_from_db()
    assert source.last_error == ""  # nothing ran before the commit
    callbacks[0]()
    source.refresh_from_db()
    assert "Cannot reach the MLflow server at http://127.0.0.1:9" in source.last_error


def test_sync_now_refuses_a_disabled_source(team, django_capture_on_commit_callbacks):
    source = mlflow_source_create(team=team, name="off", tracking_uri="http://127.0.0.1:9", enabled=False)
    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(DomainError, match="disabled"):
        mlflow_source_sync_now(source=source)
    assert callbacks == []
