"""Personal API tokens: hashed storage, Bearer auth, revocation, the account page and the token API."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import requests
from django.utils import timezone
from rest_framework.test import APIClient

from experiments.errors import DomainError
from experiments.models import ApiToken
from experiments.services.tokens import token_authenticate, token_create, token_revoke


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def api_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- Service -------------------------------------------------------------------------------------


def test_token_is_stored_hashed(member, team):
    token, secret = token_create(user=member, name="  GPU cluster ", team=team)
    assert secret.startswith("mlb_") and len(secret) > 40
    assert token.prefix == secret[:12] and token.name == "GPU cluster"
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    stored = ApiToken.objects.filter(pk=token.pk).values().get()
    assert secret not in {str(v) for v in stored.values()}


def test_token_secrets_are_unique(member):
    secrets = {token_create(user=member, name=f"t{i}")[1] for i in range(20)}
    assert len(secrets) == 20


def test_token_create_validation(member, other_team):
    with pytest.raises(DomainError, match="name"):
        token_create(user=member, name="   ")
    with pytest.raises(DomainError, match="not a member"):
        token_create(user=member, name="x", team=other_team)


def test_authenticate_valid_revoked_and_inactive(member, make_user):
    token, secret = token_create(user=member, name="ci")
    assert token_authenticate(secret=secret) == token
    assert token_authenticate(secret=secret + "x") is None
    token_revoke(token=token)
    assert token_authenticate(secret=secret) is None
    other = make_user("gone")
    _, other_secret = token_create(user=other, name="old")
    other.is_active = False
    other.save()
    assert token_authenticate(secret=other_secret) is None


def test_last_used_is_recorded_at_most_once_a_minute(member):
    token, secret = token_create(user=member, name="ci")
    token_authenticate(secret=secret)
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    token_authenticate(secret=secret)
    token.refresh_from_db()
    assert token.last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=5))
    token_authenticate(secret=secret)
    token.refresh_from_db()
    assert token.last_used_at > first - timedelta(minutes=1)


# --- Bearer authentication on the REST API ---------------------------------------------------------


def test_bearer_token_authenticates_api_requests(member, team):
    _, secret = token_create(user=member, name="ci")
    response = bearer(secret).get("/api/teams/")
    assert response.status_code == 200
    assert [t["slug"] for t in response.json()["results"]] == ["vision"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    assert client.get("/api/teams/").status_code == 200


def test_revoked_token_is_rejected_with_401(member, team):
    token, secret = token_create(user=member, name="ci")
    token_revoke(token=token)
    response = bearer(secret).get("/api/teams/")
    assert response.status_code == 401
    assert response.json()["error"] == {"code": "authentication_failed", "message": "Invalid or revoked API token."}


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer", "Bearer a b", "bearer mlb_wrong"])
def test_bad_authorization_headers_are_401_json(db, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/teams/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_token_writes_need_no_csrf_and_default_team_is_used(member, team, other_team):
    from experiments.services.boards import membership_set

    membership_set(team=other_team, user=member, role="member")
    _, secret = token_create(user=member, name="trainer", team=other_team)
    client = bearer(secret)
    client.enforce_csrf_checks = True
    response = client.post("/api/runs/", {"name": "from-script"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["team"] == "rivals"


def test_default_team_left_since_token_creation_is_a_clear_400(member, team, other_team):
    from experiments.models import Membership
    from experiments.services.boards import membership_set

    membership_set(team=other_team, user=member, role="member")
    _, secret = token_create(user=member, name="trainer", team=other_team)
    Membership.objects.filter(user=member, team=other_team).delete()
    response = bearer(secret).post("/api/runs/", {"name": "x"}, format="json")
    assert response.status_code == 400
    assert "no longer one of your teams" in response.json()["error"]["message"]


def test_viewer_token_cannot_write(viewer, team):
    _, secret = token_create(user=viewer, name="ro", team=team)
    response = bearer(secret).post("/api/runs/", {"team": "vision"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


# --- Token API -----------------------------------------------------------------------------------


def test_api_create_shows_secret_once_then_lists_without_it(member, team):
    client = api_for(member)
    response = client.post("/api/tokens/", {"name": "laptop", "team": "vision"}, format="json")
    assert response.status_code == 201, response.content
    assert response["Cache-Control"] == "no-store"
    created = response.json()
    secret = created["token"]
    assert created["prefix"] == secret[:12] and created["team"] == "vision" and created["active"] is True
    listed = client.get("/api/tokens/").json()["results"]
    assert [t["name"] for t in listed] == ["laptop"]
    assert "token" not in listed[0] and secret not in str(listed)
    assert bearer(secret).get("/api/teams/").status_code == 200


@pytest.mark.parametrize(
    ("payload", "field"), [({}, "name"), ({"name": ""}, "name"), ({"name": "x", "team": "rivals"}, "team"),
                           ({"name": "x", "scope": "all"}, "scope"), ({"name": "x" * 81}, "name")]
)
def test_api_create_bad_input(member, team, other_team, payload, field):
    response = api_for(member).post("/api/tokens/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not ApiToken.objects.exists()


def test_api_revoke_and_scoping(member, make_user):
    token, secret = token_create(user=member, name="ci")
    stranger = make_user("stranger")
    assert api_for(stranger).delete(f"/api/tokens/{token.pk}/").status_code == 404
    assert api_for(stranger).get("/api/tokens/").json()["count"] == 0
    assert api_for(member).delete(f"/api/tokens/{token.pk}/").status_code == 204
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert bearer(secret).get("/api/teams/").status_code == 401
    listed = api_for(member).get("/api/tokens/").json()["results"]
    assert listed[0]["active"] is False and listed[0]["revoked_at"]


def test_a_token_can_revoke_itself(member):
    token, secret = token_create(user=member, name="ci")
    assert bearer(secret).delete(f"/api/tokens/{token.pk}/").status_code == 204
    assert bearer(secret).get("/api/tokens/").status_code == 401


# --- Account page --------------------------------------------------------------------------------


def test_page_requires_login(client, db):
    response = client.get("/account/tokens/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_page_empty_state(client_for, member, team):
    response = client_for(member).get("/account/tokens/")
    assert response.status_code == 200
    assert b"No tokens yet" in response.content
    # Only the user's own teams are offered as default team.
    assert b'value="%d"' % team.pk in response.content


def test_page_create_shows_secret_exactly_once(client_for, member, team):
    client = client_for(member)
    response = client.post("/account/tokens/", {"name": "GPU box", "team": team.pk})
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    token = ApiToken.objects.get()
    html = response.content.decode()
    secret = html.split('id="token-secret" type="text" readonly value="')[1].split('"')[0]
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert token.team == team and token.user == member
    assert "MLFLOW_TRACKING_TOKEN=" + secret in html
    again = client.get("/account/tokens/").content.decode()
    assert secret not in again
    assert "GPU box" in again and token.prefix in again and "Never" in again and "Vision" in again


def test_page_create_errors_are_shown(client_for, member, other_team):
    client = client_for(member)
    response = client.post("/account/tokens/", {"name": ""})
    assert response.status_code == 400
    assert b"Give the token a name" in response.content
    response = client.post("/account/tokens/", {"name": "x", "team": other_team.pk})
    assert response.status_code == 400
    assert b"Select a valid choice" in response.content
    assert not ApiToken.objects.exists()


def test_page_revoke(client_for, member, make_user):
    token, secret = token_create(user=member, name="ci")
    stranger = make_user("stranger")
    assert client_for(stranger).post(f"/account/tokens/{token.pk}/revoke/").status_code == 404
    assert client_for(member).get(f"/account/tokens/{token.pk}/revoke/").status_code == 405
    response = client_for(member).post(f"/account/tokens/{token.pk}/revoke/", follow=True)
    assert response.redirect_chain[-1][0] == "/account/tokens/"
    assert "revoked; it no longer works" in response.content.decode()
    assert "Revoked" in response.content.decode()
    assert token_authenticate(secret=secret) is None


def test_page_shows_last_used(client_for, member):
    token, _ = token_create(user=member, name="ci")
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now() - timedelta(hours=3))
    assert "3\xa0hours ago" in client_for(member).get("/account/tokens/").content.decode()


@pytest.mark.parametrize("n", [3, 6])
def test_page_query_count_is_constant(client_for, member, team, django_assert_num_queries, n):
    for i in range(n):
        token, _ = token_create(user=member, name=f"t{i}", team=team if i % 2 else None)
        if i % 3 == 0:
            token_revoke(token=token)
    client = client_for(member)
    # session, user, tokens (with teams), nav team, team choices (x2: count + options)
    with django_assert_num_queries(6):
        response = client.get("/account/tokens/")
    assert response.content.decode().count("data-token-id=") == n


@pytest.mark.parametrize("n", [3, 6])
def test_api_token_list_query_count_is_constant(member, team, django_assert_num_queries, n):
    for i in range(n):
        token_create(user=member, name=f"t{i}", team=team)
    client = api_for(member)
    with django_assert_num_queries(2):
        response = client.get("/api/tokens/")
    assert response.json()["count"] == n


# --- Browser -------------------------------------------------------------------------------------


@pytest.mark.browser
def test_create_copy_use_and_revoke_in_browser(page, login, live_server, member, team):
    login(member)
    page.goto(f"{live_server.url}/account/tokens/")
    assert page.get_by_text("No tokens yet").is_visible()
    page.get_by_label("Name").fill("Browser token")
    page.get_by_label("Default team for MLflow logging").select_option(label="Vision")
    page.get_by_role("button", name="Create token").click()
    secret_box = page.get_by_label("Your new API token")
    secret = secret_box.input_value()
    assert secret.startswith("mlb_")
    page.get_by_role("button", name="Copy").click()
    page.wait_for_function("document.querySelector('.copy-status').textContent.length > 0")

    api = requests.get(f"{live_server.url}/api/teams/", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert api.status_code == 200 and api.json()["results"][0]["slug"] == "vision"

    # Reloading never shows the secret again.
    page.goto(f"{live_server.url}/account/tokens/")
    assert secret not in page.content()
    row = page.locator("tr", has_text="Browser token")
    assert row.get_by_text("Active").is_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke token Browser token").click()
    page.wait_for_selector("text=revoked; it no longer works")
    assert page.locator("tr", has_text="Browser token").get_by_text("Revoked").is_visible()
    api = requests.get(f"{live_server.url}/api/teams/", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert api.status_code == 401
