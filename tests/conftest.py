"""Shared fixtures: a team with one user per role, an outsider on another team, a board."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest
from django.test import Client

from experiments.models import Board, Role, Team, User
from experiments.services.boards import board_create, membership_set, team_create

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="session")
def _artifact_root(tmp_path_factory) -> str:
    """Artifacts written by any test land here, never in the checkout's ./artifacts."""
    return str(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(autouse=True)
def _fast_hashing(settings, _artifact_root):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.CELERY_TASK_ALWAYS_EAGER = True
    # Request limits count in a cache that outlives a test (Redis in CI); tests of limits set their own.
    settings.MLBOARD_THROTTLE_RATES = {}
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        "artifacts": {"BACKEND": "experiments.storage.LocalArtifactStorage", "OPTIONS": {"location": _artifact_root}},
    }
    from mlboard.celery import app

    app.conf.task_always_eager = True


@pytest.fixture(autouse=True)
def _outbound_reaches_loopback(settings):
    """Test servers (fake MLflow, webhook receivers) listen on 127.0.0.1, which the guarded outbound
    client refuses by default; tests reach them through the allowlist, as an on-prem deployment would.
    tests/test_outbound.py clears it to check the refusals."""
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
    settings.OUTBOUND_ALLOWED_HOSTS = ["localhost"]  # pytest-django's live_server


@pytest.fixture(autouse=True)
def _live_server_closes_connections(request) -> Iterator[None]:
    """Live-server request threads close their database connection after each request (max age 0).

    A keep-alive client, such as the in-process mlflow client's pooled session, leaves its server
    thread waiting for the next request; with persistent connections that thread would hold its
    database session to the end of the run, and the test database could not be dropped.
    """
    if "live_server" not in request.fixturenames:
        yield
        return
    from django.db import connections

    saved = {alias: connections.settings[alias]["CONN_MAX_AGE"] for alias in connections.settings}
    for alias in saved:
        connections.settings[alias]["CONN_MAX_AGE"] = 0
    try:
        yield
    finally:
        for alias, max_age in saved.items():
            connections.settings[alias]["CONN_MAX_AGE"] = max_age


@pytest.fixture
def make_user(db) -> Callable[..., User]:
    def make(username: str, **extra) -> User:
        return User.objects.create_user(username=username, password=PASSWORD, email=f"{username}@example.com", **extra)

    return make


@pytest.fixture
def team(db) -> Team:
    return team_create(name="Vision", slug="vision")


@pytest.fixture
def other_team(db) -> Team:
    return team_create(name="Rivals", slug="rivals")


def _member(make_user, team: Team, username: str, role: str) -> User:
    user = make_user(username)
    membership_set(team=team, user=user, role=role)
    return user


@pytest.fixture
def manager(make_user, team) -> User:
    return _member(make_user, team, "maya", Role.MANAGER)


@pytest.fixture
def member(make_user, team) -> User:
    return _member(make_user, team, "mo", Role.MEMBER)


@pytest.fixture
def viewer(make_user, team) -> User:
    return _member(make_user, team, "vic", Role.VIEWER)


@pytest.fixture
def outsider(make_user, other_team) -> User:
    return _member(make_user, other_team, "otto", Role.MANAGER)


@pytest.fixture
def board(team) -> Board:
    return board_create(team=team, name="Churn model", key="CHURN", problem="Predict churn 30 days ahead.")


@pytest.fixture
def client_for() -> Callable[[User], Client]:
    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


# --- Real headless Chromium ---------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    candidates = [os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium")]
    return next((c for c in candidates if c and os.path.exists(c)), None)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (apt-get install chromium)")
        pytest.skip("Chromium not installed; `apt-get install chromium` to run browser tests")
    # Playwright's sync API runs an event loop in this thread; Django's ORM calls from the test
    # body are still synchronous, so allow them.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def _new_page(browser, *, enforce_csp: bool) -> tuple[object, object]:
    # Playwright's string predicates (wait_for_function) are compiled in the page and need
    # 'unsafe-eval', which mlboard's CSP forbids; feature tests bypass the policy, and the CSP tests
    # (tests/test_csp_browser.py, `csp_page`) load every page under it.
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=not enforce_csp)
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    return context, pg


@pytest.fixture
def page(browser) -> Iterator[object]:
    context, pg = _new_page(browser, enforce_csp=False)
    yield pg
    context.close()


@pytest.fixture
def csp_page(browser) -> Iterator[object]:
    """A page that enforces mlboard's Content-Security-Policy, as a user's browser does."""
    context, pg = _new_page(browser, enforce_csp=True)
    yield pg
    context.close()


@pytest.fixture
def login(page, live_server) -> Callable[[User], None]:
    def do(user: User) -> None:
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("input[name=username]", user.username)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")

    return do
