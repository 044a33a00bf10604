"""Bearer-token auth for the REST and MLflow-compatible APIs. Tokens are stored as SHA-256 digests."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from ..services.tokens import token_authenticate
from ..throttles import client_ip, throttle_blocked, throttle_hit


class TokenAuthentication(authentication.BaseAuthentication):
    keywords = ("bearer", "token")

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode().lower() not in self.keywords:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        # Guessing tokens: an address with too many failed token logins waits, whatever it sends next.
        wait = throttle_blocked(scope="auth_failure", ident=client_ip(request) or "unknown")
        if wait is not None:
            raise exceptions.Throttled(wait, "Too many failed token logins from your address.")
        token = token_authenticate(secret=header[1].decode(errors="replace"))
        if token is None:
            throttle_hit(scope="auth_failure", ident=client_ip(request) or "unknown")
            raise exceptions.AuthenticationFailed("Invalid or revoked API token.")
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="mlboard"'


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents the bearer scheme in the OpenAPI schema (Swagger UI's Authorize button)."""

    target_class = "experiments.api.auth.TokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Personal API token from Account > API tokens: `Authorization: Bearer mlb_...`.",
        }
