"""OpenAPI schema (drf-spectacular) and the API's behaviour at its edges (docs, unknown paths)."""

from __future__ import annotations

import re

import pytest
import yaml
from django.core.management import call_command
from drf_spectacular.drainage import GENERATOR_STATS
from rest_framework.test import APIClient

KEY_PATHS = {
    "/api/teams/": {"get"},
    "/api/teams/{slug}/": {"get"},
    "/api/boards/": {"get"},
    "/api/boards/{id}/": {"get"},
    "/api/cards/": {"get", "post"},
    "/api/cards/{id}/": {"get", "patch"},
    "/api/cards/{id}/move/": {"post"},
    "/api/cards/{id}/events/": {"get"},
    "/api/runs/": {"get", "post"},
    "/api/runs/{id}/": {"get", "patch"},
    "/api/runs/{id}/params/": {"post"},
    "/api/runs/{id}/metrics/": {"post"},
    "/api/runs/{id}/metrics/history/": {"get"},
    "/api/links/": {"get", "post"},
    "/api/links/{id}/": {"delete"},
    "/api/tokens/": {"get", "post"},
    "/api/tokens/{id}/": {"delete"},
}


@pytest.fixture
def schema(tmp_path) -> dict:
    GENERATOR_STATS.reset()
    out = tmp_path / "schema.yml"
    # Raises (and fails the test) on any warning or on an invalid OpenAPI document.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    return yaml.safe_load(out.read_text())


def test_schema_generates_without_warnings_and_has_key_paths(schema):
    paths = schema["paths"]
    for path, methods in KEY_PATHS.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))


def test_schema_documents_bearer_auth_filters_and_errors(schema):
    bearer = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert {"bearerAuth": []} in schema["paths"]["/api/runs/"]["post"]["security"]
    card_params = {p["name"] for p in schema["paths"]["/api/cards/"]["get"]["parameters"]}
    assert {"board", "kind", "column", "owner", "q", "limit", "offset"} <= card_params
    run_params = {p["name"] for p in schema["paths"]["/api/runs/"]["get"]["parameters"]}
    assert {"status", "card", "since", "team"} <= run_params
    patch = schema["paths"]["/api/cards/{id}/"]["patch"]
    assert "409" in patch["responses"]
    assert "version" in schema["components"]["schemas"]["CardUpdate"]["required"]
    value = schema["components"]["schemas"]["MetricPoint"]["properties"]["value"]
    assert {"type": "number"} in value["oneOf"]


def test_schema_and_docs_are_served(db):
    client = APIClient()
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert "/api/runs/{id}/metrics/" in response.json()["paths"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
    # Self-hosted: the Swagger UI assets come from this server, never from a CDN.
    html = docs.content.decode()
    assert "cdn." not in html and "jsdelivr" not in html
    bundle = re.search(r'src="(/static/[^"]*swagger-ui-bundle\.js)"', html)
    assert bundle, html[:500]
    from django.contrib.staticfiles import finders

    assert finders.find(bundle.group(1).removeprefix("/static/"))


def test_unknown_api_path_is_json_404(db):
    response = APIClient().get("/api/nothing-here/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_missing_trailing_slash_gets_a_hint(db):
    response = APIClient().post("/api/runs", {}, format="json")
    assert response.status_code == 404
    assert "/api/runs/" in response.json()["error"]["message"]
    assert "trailing slash" in response.json()["error"]["message"]


def test_non_numeric_id_is_json_404(member):
    client = APIClient()
    client.force_authenticate(member)
    response = client.get("/api/cards/abc/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_api_index_lists_resources_and_docs(db):
    body = APIClient().get("/api/").json()
    assert body["docs"].endswith("/api/docs/") and body["schema"].endswith("/api/schema/")
    assert set(body["resources"]) == {"teams", "boards", "cards", "runs", "links", "tokens"}
    assert body["reports"]["velocity"].endswith("/api/teams/{team}/reports/velocity/")
    assert set(body["reports"]) == {"velocity", "flow", "maturity"}
