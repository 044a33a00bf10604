"""Cross-area UX checks: error pages, the current section highlighted in the top nav, no nav link
leading to an unfinished (501) page, and no sideways scrolling on a phone-sized screen."""

import re

import pytest
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory
from django.urls import reverse
from django.views import defaults

from experiments.services.cards import card_create


def _active_nav(html: str) -> list[str]:
    nav = re.search(r'<nav class="topnav".*?</nav>', html, re.S)
    assert nav, "top nav missing"
    return re.findall(r'class="active" aria-current="page">([^<]+)</a>', nav.group(0))


def _nav_links(html: str) -> list[str]:
    nav = re.search(r'<nav class="topnav".*?</nav>', html, re.S)
    assert nav, "top nav missing"
    return re.findall(r'href="([^"]+)"', nav.group(0))


@pytest.mark.django_db
def test_unknown_page_uses_the_404_template(client_for, member, settings):
    settings.DEBUG = False
    response = client_for(member).get("/boards/999999/")
    assert response.status_code == 404
    assert "404.html" in [t.name for t in response.templates]
    body = response.content.decode()
    assert "We couldn't find that page" in body
    assert f'href="{reverse("home")}"' in body


@pytest.mark.django_db
def test_other_teams_board_is_a_404_page_not_a_leak(client_for, outsider, board, settings):
    settings.DEBUG = False
    response = client_for(outsider).get(reverse("board", args=[board.pk]))
    assert response.status_code == 404
    assert board.name not in response.content.decode()


@pytest.mark.django_db
def test_403_page_explains_and_links_home(member):
    request = RequestFactory().get("/somewhere/")
    request.user = member
    response = defaults.permission_denied(request, PermissionDenied("Viewers cannot edit cards."))
    body = response.content.decode()
    assert response.status_code == 403
    assert "Viewers cannot edit cards." in body
    assert f'href="{reverse("home")}"' in body
    assert 'class="topbar"' in body  # extends base.html


def test_500_page_renders_without_any_context():
    request = RequestFactory().get("/")
    response = defaults.server_error(request)
    body = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong" in body
    assert "{%" not in body and "{{" not in body


@pytest.mark.django_db
def test_nav_highlights_the_current_section(client_for, manager, team, board):
    card = card_create(board=board, kind="hypothesis", title="Bigger trees help", actor=manager)
    client = client_for(manager)
    expected = {
        reverse("board", args=[board.pk]): "Boards",
        reverse("card_detail", args=[card.pk]): "Boards",
        reverse("runs", args=[team.slug]): "Runs",
        reverse("models", args=[team.slug]): "Models",
        reverse("standup", args=[team.slug]): "Standup",
        reverse("standup_history", args=[team.slug]): "Standup",
        reverse("velocity", args=[team.slug]): "Velocity",
        reverse("flow", args=[team.slug]): "Velocity",
        reverse("iterations", args=[team.slug]): "Velocity",
        reverse("maturity", args=[team.slug]): "Maturity",
        reverse("maturity_trend", args=[team.slug]): "Maturity",
        reverse("team_settings", args=[team.slug]): "Team",
        reverse("team_members", args=[team.slug]): "Team",
        reverse("team_mlflow_sources", args=[team.slug]): "Team",
    }
    for url, section in expected.items():
        response = client.get(url)
        assert response.status_code == 200, url
        assert _active_nav(response.content.decode()) == [section], url


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["manager", "member", "viewer"])
def test_no_nav_or_home_link_is_unfinished_or_broken(request, client_for, team, board, role):
    user = request.getfixturevalue(role)
    client = client_for(user)
    home = client.get(reverse("home")).content.decode()
    team_links = re.search(r'<nav class="team-links">.*?</nav>', home, re.S)
    assert team_links
    urls = set(_nav_links(home)) | set(re.findall(r'href="([^"]+)"', team_links.group(0)))
    urls.add(reverse("board", args=[board.pk]))
    assert len(urls) >= 7
    for url in sorted(urls):
        status = client.get(url).status_code
        # Includes the manager-only "New board" link, which only managers are shown.
        assert status == 200, (role, url, status)


@pytest.mark.django_db
def test_viewer_is_not_offered_manager_only_board_creation(client_for, viewer, team, board):
    home = client_for(viewer).get(reverse("home")).content.decode()
    assert reverse("board_new", args=[team.slug]) not in home


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_phone_width_pages_do_not_scroll_sideways(page, login, live_server, manager, team, board):
    card = card_create(board=board, kind="hypothesis", title="A rather long hypothesis title " * 3, actor=manager)
    login(manager)
    page.set_viewport_size({"width": 390, "height": 844})
    for url in (
        reverse("home"),
        reverse("board", args=[board.pk]),
        reverse("card_detail", args=[card.pk]),
        reverse("standup", args=[team.slug]),
        reverse("runs", args=[team.slug]),
        reverse("team_settings", args=[team.slug]),
        reverse("team_members", args=[team.slug]),
        reverse("iterations", args=[team.slug]),
        reverse("maturity", args=[team.slug]),
    ):
        page.goto(live_server.url + url)
        widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], (url, widths)
        # Every section link stays reachable (the nav row scrolls on its own if it must).
        assert page.locator(".topnav a").count() == 7


@pytest.mark.django_db
def test_login_page_explains_redirects_and_bad_passwords(client, member):
    page = client.get(reverse("login") + "?next=/teams/x/runs/").content.decode()
    assert "Log in to continue to that page." in page
    failed = client.post(reverse("login"), {"username": member.username, "password": "wrong"})
    body = failed.content.decode()
    assert failed.status_code == 200
    assert "didn't match" in body
    assert f'value="{member.username}"' in body  # the username is kept
