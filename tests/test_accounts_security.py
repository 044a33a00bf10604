"""Login lockout (django-axes, per account and per address), request limits on the REST and MLflow APIs
and on token guessing, and password reset by email."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from experiments.services.tokens import token_create

from .conftest import PASSWORD

MLFLOW = "/mlflow/api/2.0/mlflow"


def _login(client: Client, url: str, username: str, password: str):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=client.ip)


def _client(ip: str) -> Client:
    client = Client()
    client.ip = ip
    return client


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_account_is_locked_after_repeated_failures(member, url, settings):
    settings.AXES_FAILURE_LIMIT = 3
    member.is_staff = True
    member.save()
    # From different addresses: the account itself is locked, not only the address; the third failure locks.
    statuses = [_login(_client(f"10.0.0.{i}"), url, member.username, "wrong").status_code for i in range(3)]
    assert statuses == [200, 200, 429]
    locked = _login(_client("10.0.0.99"), url, member.username, PASSWORD)
    assert locked.status_code == 429
    assert b"Too many failed logins" in locked.content
    assert "_auth_user_id" not in locked.wsgi_request.session


def test_address_is_locked_after_failures_on_many_accounts(member, manager, settings):
    settings.AXES_FAILURE_LIMIT = 3
    client = _client("10.1.1.1")
    statuses = [_login(client, "/accounts/login/", name, "wrong").status_code for name in ("n1", "n2", "n3")]
    assert statuses == [200, 200, 429]
    assert _login(client, "/accounts/login/", manager.username, PASSWORD).status_code == 429
    # Another address logs in to the same account normally.
    assert _login(_client("10.1.1.2"), "/accounts/login/", manager.username, PASSWORD).status_code == 302


def test_successful_login_below_the_limit_works(member, settings):
    settings.AXES_FAILURE_LIMIT = 3
    client = _client("10.2.2.2")
    assert _login(client, "/accounts/login/", member.username, "wrong").status_code == 200
    assert _login(client, "/accounts/login/", member.username, PASSWORD).status_code == 302


def test_rest_api_requests_are_limited_per_user(member, settings):
    settings.MLBOARD_THROTTLE_RATES = {"api_user": "3/min"}
    client = Client()
    client.force_login(member)
    statuses = [client.get("/api/teams/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = client.get("/api/teams/")
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "throttled"
    assert int(response["Retry-After"]) >= 1


def test_mlflow_api_is_limited_per_token_in_mlflow_shape(member, team, settings):
    settings.MLBOARD_THROTTLE_RATES = {"mlflow": "2/min"}
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=member, name='t', team=team)[1]}"}
    client = Client()
    url = f"{MLFLOW}/experiments/search"
    assert [client.get(url, **auth).status_code for _ in range(2)] == [200, 200]
    response = client.get(url, **auth)
    assert response.status_code == 429
    assert response.json()["error_code"] == "RESOURCE_EXHAUSTED"
    assert int(response["Retry-After"]) >= 1
    other = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=member, name='u', team=team)[1]}"}
    assert client.get(url, **other).status_code == 200  # per token


def test_token_guessing_is_limited_per_address(member, team, settings):
    settings.MLBOARD_THROTTLE_RATES = {"auth_failure": "3/min"}
    good = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=member, name='t', team=team)[1]}"}
    client = Client(REMOTE_ADDR="10.3.3.3")
    for _ in range(3):
        assert client.get("/api/teams/", HTTP_AUTHORIZATION="Bearer mlb_guess").status_code == 401
    assert client.get("/api/teams/", **good).status_code == 429
    assert client.get(f"{MLFLOW}/experiments/search", **good).json()["error_code"] == "RESOURCE_EXHAUSTED"
    assert Client(REMOTE_ADDR="10.3.3.4").get("/api/teams/", **good).status_code == 200


def test_password_reset_by_email(member, client):
    page = client.get("/accounts/login/")
    assert b"/accounts/password-reset/" in page.content
    response = client.post("/accounts/password-reset/", {"email": member.email})
    assert response.status_code == 302
    assert len(mail.outbox) == 1 and mail.outbox[0].to == [member.email]
    link = re.search(r"https?://[^/]+(/accounts/reset/\S+)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    assert b"Set a new password" in form.content
    done = client.post(form.redirect_chain[-1][0], {"new_password1": "A-new-long-pass-42",
                                                    "new_password2": "A-new-long-pass-42"})
    assert done.status_code == 302
    member.refresh_from_db()
    assert member.check_password("A-new-long-pass-42")
    assert b"no longer works" in client.get(link, follow=True).content  # single use


def test_password_reset_for_unknown_email_sends_nothing(db, client):
    assert client.post("/accounts/password-reset/", {"email": "nobody@example.com"}).status_code == 302
    assert mail.outbox == []
