"""Team settings in real headless Chromium: the nav link, saving settings, the member flow with its
confirm dialog and the last-manager message, and adding an MLflow source whose token never comes back."""

from __future__ import annotations

import os

import pytest
from django.urls import reverse

from experiments.models import Membership, MlflowSource, Role

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = os.environ.get("TEAM_SHOTS_DIR")  # set to keep screenshots for a visual review


def shot(page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def test_nav_link_and_settings_save(page, login, live_server, team, board, manager):
    login(manager)
    page.goto(live_server.url + reverse("board", args=[board.pk]))
    page.click(".topnav >> text=Team")
    page.wait_for_url(live_server.url + reverse("team_settings", args=[team.slug]))
    page.fill("#id_timezone", "Mars/Base")
    page.fill("#id_digest_emails", "lead@example.com\nbroken")
    page.click("text=Save settings")
    assert page.locator("#id_timezone_error").inner_text().startswith("“Mars/Base” is not a known time zone")
    assert "Line 2" in page.locator("#id_digest_emails_error").inner_text()
    shot(page, "settings-errors")
    page.fill("#id_timezone", "Europe/Berlin")
    page.fill("#id_digest_emails", "lead@example.com")
    page.fill("#id_standup_window_start", "17:45")
    page.click("text=Save settings")
    page.wait_for_selector(".toast-success")
    team.refresh_from_db()
    assert team.timezone == "Europe/Berlin" and str(team.standup_window_start) == "17:45:00"
    shot(page, "settings-saved")


def test_members_flow(page, login, live_server, team, manager, make_user):
    make_user("ada")
    login(manager)
    page.goto(live_server.url + reverse("team_members", args=[team.slug]))
    # The only manager cannot leave: the button is disabled (and the server refuses it too).
    assert page.locator(f"#member-{Membership.objects.get(user=manager).pk} button.danger").is_disabled()
    page.fill("#id_user", "ada@example.com")
    page.select_option("#id_role", "member")
    page.click("text=Add member")
    page.wait_for_selector("text=Added ada (@ada) as member.")
    ada = Membership.objects.get(team=team, user__username="ada")
    assert ada.role == Role.MEMBER

    mine = Membership.objects.get(team=team, user=manager)
    page.select_option(f"#role-{mine.pk}", "viewer")
    page.click(f"#member-{mine.pk} >> text=Save")
    assert "only manager and cannot be made a viewer" in page.locator(f"#member-{mine.pk} .row-message").inner_text()
    shot(page, "members-last-manager")

    dialogs: list[str] = []

    def dismiss_then_accept(dialog):
        dialogs.append(dialog.message)
        (dialog.dismiss if len(dialogs) == 1 else dialog.accept)()

    page.on("dialog", dismiss_then_accept)
    page.click(f"#member-{ada.pk} >> text=Remove")
    assert Membership.objects.filter(pk=ada.pk).exists()  # dismissed: nothing happens
    page.click(f"#member-{ada.pk} >> text=Remove")
    page.wait_for_selector("text=Removed ada (@ada) from Vision.")
    assert dialogs[0] == "Remove ada from Vision?"
    assert not Membership.objects.filter(pk=ada.pk).exists()


def test_add_mlflow_source_hides_token(page, login, live_server, team, manager):
    login(manager)
    page.goto(live_server.url + reverse("team_mlflow_sources", args=[team.slug]))
    assert page.locator(".empty").inner_text().startswith("No MLflow sources yet.")
    page.fill("#id_name", "prod")
    page.fill("#id_tracking_uri", "ftp://mlflow")
    page.fill("#id_token", "very-secret-token")
    page.click("text=Add source")
    assert "http:// or https://" in page.locator("#id_tracking_uri_error").inner_text()
    # The token is not echoed back into the form after an error either.
    assert page.input_value("#id_token") == ""
    page.fill("#id_tracking_uri", "http://mlflow:5000")
    page.fill("#id_token", "very-secret-token")
    page.click("text=Add source")
    page.wait_for_selector("text=Added MLflow source prod.")
    source = MlflowSource.objects.get(team=team)
    assert source.token == "very-secret-token"
    assert "very-secret-token" not in page.content()
    assert page.locator(f"#source-{source.pk}").inner_text().count("Set") == 1
    shot(page, "mlflow-sources")
    page.click(f"#source-{source.pk} >> text=Edit")
    assert page.input_value("#id_token") == ""
    assert "A token is stored" in page.locator("#id_token_helptext").inner_text()
    shot(page, "mlflow-edit")


def test_viewer_sees_read_only_settings(page, login, live_server, team, manager, viewer):
    login(viewer)
    page.goto(live_server.url + reverse("team_settings", args=[team.slug]))
    assert page.locator("#id_name").is_disabled()
    assert page.locator("text=Save settings").count() == 0
    page.goto(live_server.url + reverse("team_members", args=[team.slug]))
    assert page.locator("text=Add member").count() == 0
    shot(page, "members-viewer")
