"""Plumbing shared by the MLflow-compatible endpoints: auth, team resolution, request parsing and
MLflow's error format ({"error_code": ..., "message": ...} with MLflow's HTTP status per code).

Plain Django views rather than DRF: the tracking API is the ingestion hot path and MLflow's wire
format (proto-JSON) is not DRF's, so there is nothing for serializers or negotiation to do.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import wraps
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import DataError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from ..errors import ConflictError, DomainError, PermissionDeniedError, WriterRefused
from ..inputs import INT64_MAX, INT64_MIN, check_mapping, json_loads
from ..models import ApiToken, Membership, Run, Team, User
from ..services.runs import FLOAT_MAX, IngestError
from ..services.tokens import token_authenticate, token_bind_team, token_digest
from ..throttles import client_ip, throttle_blocked, throttle_hit

logger = logging.getLogger(__name__)

# MLflow's mapping of error codes to HTTP statuses (the subset this API can produce).
STATUS_FOR_CODE = {
    "INVALID_PARAMETER_VALUE": 400,
    "BAD_REQUEST": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "RESOURCE_CONFLICT": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INVALID_STATE": 400,
    "INTERNAL_ERROR": 500,
    "NOT_IMPLEMENTED": 501,
}


class MlflowApiError(Exception):
    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


def invalid(message: str) -> MlflowApiError:
    return MlflowApiError("INVALID_PARAMETER_VALUE", message)


def not_found(message: str) -> MlflowApiError:
    return MlflowApiError("RESOURCE_DOES_NOT_EXIST", message)


# JSON for scripts: nothing in it may load or frame anything (and django-csp need not build its policy).
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def error_response(code: str, message: str, *, retry_after: float | None = None) -> HttpResponse:
    response = HttpResponse(
        json.dumps({"error_code": code, "message": message}),
        status=STATUS_FOR_CODE.get(code, 500),
        content_type="application/json",
        headers={"Content-Security-Policy": API_CSP},
    )
    if code == "UNAUTHENTICATED":
        response["WWW-Authenticate"] = 'Bearer realm="mlboard"'
    if retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def _too_many(wait: float, what: str) -> MlflowApiError:
    return MlflowApiError("RESOURCE_EXHAUSTED", f"{what} Retry in {max(1, math.ceil(wait))} s.", retry_after=wait)


def json_number(value: float) -> float | str:
    """Proto-JSON doubles: NaN travels as a string; an infinity as the largest double, which is what
    `mlflow server`'s SQL store gives back for one (services/runs.FLOAT_MAX)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return FLOAT_MAX if value > 0 else -FLOAT_MAX
    return value


def json_response(payload: dict[str, Any]) -> HttpResponse:
    return HttpResponse(json.dumps(payload, allow_nan=False, separators=(",", ":")), content_type="application/json",
                        headers={"Content-Security-Policy": API_CSP})


# --- Auth and team -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    user: User
    token: ApiToken
    membership: Membership
    # The team's run named by the body's run_id, loaded with the token (None: not found or not asked).
    run: Run | None = None
    # Read for an earlier request (the caller cache): a write must check the token where it lands.
    recheck: bool = False

    @property
    def writer_token_id(self) -> int | None:
        """For services that re-check the writer (writer_token_id): set when the caller came from the cache."""
        return self.token.pk if self.recheck else None

    @property
    def team(self) -> Team:
        return self.membership.team

    @property
    def can_write(self) -> bool:
        return self.membership.can_edit

    def ensure_can_write(self) -> None:
        if not self.can_write:
            raise MlflowApiError(
                "PERMISSION_DENIED",
                f"You are a viewer on team '{self.team.slug}'; viewers cannot log runs. "
                "Ask a team manager for the member role.",
            )


def _secret_from(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return None
    if scheme.lower() in ("bearer", "token"):
        return credentials
    if scheme.lower() == "basic":
        # MLFLOW_TRACKING_USERNAME/PASSWORD also work: the password is the API token.
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


# Recent callers, per process: {(token digest, run id): (expiry, caller)}. Only for requests whose
# write re-checks the token in the statement that makes it visible (services.artifacts._index and
# services.runs.run_log_batch with writer_token_id), so a revoked token, a changed role or a deleted
# run still never stores anything; the request then authenticates afresh.
_RECENT_CALLERS: dict[tuple[str, str | None], tuple[float, Caller]] = {}
RECENT_CALLER_SECONDS = 10.0
_RECENT_CALLERS_MAX = 1000


def _cached_caller(secret: str, run_id: str | None) -> Caller | None:
    found = _RECENT_CALLERS.get((token_digest(secret), run_id))
    if found is None or found[0] < time.monotonic():
        return None
    return found[1]


def _remember_caller(secret: str, run_id: str | None, caller: Caller) -> None:
    if len(_RECENT_CALLERS) >= _RECENT_CALLERS_MAX:
        _RECENT_CALLERS.clear()
    _RECENT_CALLERS[(token_digest(secret), run_id)] = (
        time.monotonic() + RECENT_CALLER_SECONDS,
        replace(caller, recheck=True),
    )


def forget_caller(request: HttpRequest, run_id: str | None = None) -> None:
    secret = _secret_from(request)
    if secret is not None:
        _RECENT_CALLERS.pop((token_digest(secret), run_id), None)


def authenticate(request: HttpRequest, *, run_id: str | None = None, for_checked_write: bool = False) -> Caller:
    """The caller of an MLflow request; with `run_id`, that run of the token's team comes in the same
    query (Caller.run). `for_checked_write`: the request's only effect is a write that re-checks the
    token when it lands (artifact PUT, metric logging), so a caller read in the last few seconds
    serves without a database round trip (Caller.recheck)."""
    secret = _secret_from(request)
    if secret is None:
        raise MlflowApiError(
            "UNAUTHENTICATED",
            "Missing API token. Set MLFLOW_TRACKING_TOKEN to an mlboard API token "
            "(create one under Account → API tokens).",
        )
    # A caller from the cache showed a token that authenticated seconds ago, which is no guess: the
    # lockout for failed token logins is consulted only when the database is.
    caller = _cached_caller(secret, run_id) if for_checked_write else None
    if caller is None:
        ip = client_ip(request) or "unknown"
        wait = throttle_blocked(scope="auth_failure", ident=ip)
        if wait is not None:
            raise _too_many(wait, "Too many failed token logins from your address.")
        token = token_authenticate(secret=secret, team_run_id=run_id)
        if token is None:
            throttle_hit(scope="auth_failure", ident=ip)
            raise MlflowApiError("UNAUTHENTICATED", "Invalid or revoked API token.")
        caller = Caller(user=token.user, token=token, membership=_membership_for(token), run=token.team_run)
        # A viewer is refused, and a run not found is an error: both always ask again.
        if for_checked_write and caller.can_write and (run_id is None or caller.run is not None):
            _remember_caller(secret, run_id, caller)
    wait = throttle_hit(scope="mlflow", ident=f"token:{caller.token.pk}")
    if wait is not None:
        raise _too_many(wait, "Request rate limit for this API token reached (THROTTLE_MLFLOW).")
    return caller


def _membership_for(token: ApiToken) -> Membership:
    """The token's team; a token without one logs into the user's only team, and is pinned to it
    from then on (a running job must not stop logging when its user joins a second team)."""
    if token.team_id is not None:
        # No query: token_authenticate brought the membership along.
        if token.team_role is None:
            raise MlflowApiError(
                "PERMISSION_DENIED",
                f"This token is bound to team '{token.team.slug}', which you are no longer a member of.",
            )
        return Membership(pk=token.team_membership_id, team=token.team, user=token.user, role=token.team_role)
    memberships = list(Membership.objects.select_related("team").filter(user_id=token.user_id).order_by("team__slug"))
    if len(memberships) == 1:
        token_bind_team(token=token, team=memberships[0].team)
        return memberships[0]
    if not memberships:
        raise MlflowApiError("PERMISSION_DENIED", "You are not a member of any team, so there is nowhere to log runs.")
    slugs = ", ".join(m.team.slug for m in memberships)
    raise MlflowApiError(
        "PERMISSION_DENIED",
        f"This token is not bound to a team and you belong to {len(memberships)} teams ({slugs}). "
        "Create a token for the team you want to log into (Account → API tokens → team).",
    )


# --- Request parsing ---------------------------------------------------------------------------


def invalid_value(name: str, value: Any) -> MlflowApiError:
    """MLflow's wording for a field of the wrong type, which clients and MLflow's tests match on."""
    formatted = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return invalid(
        f"Invalid value {formatted} for parameter '{name}' supplied: Hint: Value was of type "
        f"'{type(value).__name__}'. See the API docs for more information about request parameters."
    )


class Body:
    """Request fields from the JSON body (POST) or the query string (GET), as MLflow sends them."""

    def __init__(self, data: dict[str, Any], *, from_query: bool) -> None:
        self.data = data
        self.from_query = from_query

    def get(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name, default)
        if self.from_query and isinstance(value, list):
            return value[-1] if value else default
        return value

    def list(self, name: str) -> list[Any]:
        value = self.data.get(name)
        if value is None:
            return []
        return value if isinstance(value, list) else [value]

    def array(self, name: str) -> list[Any]:
        """A repeated field: a JSON body must send a list (MLflow refuses "tags": "5"); a query string
        may repeat the name or give it once."""
        value = self.data.get(name)
        if value is not None and not isinstance(value, list) and not self.from_query:
            raise invalid_value(name, value)
        return self.list(name)

    def string(self, name: str, *, required: bool = False, default: str = "") -> str:
        value = self.get(name)
        if value is None or value == "":
            if required:
                raise invalid(f"Missing value for required parameter '{name}'.")
            return default
        if not isinstance(value, str):
            raise invalid(f"Invalid value {json.dumps(value)} for parameter '{name}' supplied: expected a string.")
        return value

    def string_value(self, name: str) -> str:
        """A string field checked as MLflow's request schema does (set-tag's value: 123 is refused)."""
        value = self.get(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise invalid_value(name, value)
        return value

    def integer(self, name: str, *, required: bool = False, default: int | None = None) -> int | None:
        value = self.get(name)
        if value is None or value == "":
            if required:
                raise invalid(f"Missing value for required parameter '{name}'.")
            return default
        if isinstance(value, bool) or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
            raise invalid_value(name, value)
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise invalid_value(name, str(value)[:40]) from None
        if not INT64_MIN <= number <= INT64_MAX:
            raise invalid(f"Parameter '{name}' is out of range: it must fit in a 64-bit integer.")
        return number

    def run_id(self) -> str:
        value = self.get("run_id") or self.get("run_uuid")
        if not value:
            raise invalid("Missing value for required parameter 'run_id'.")
        if not isinstance(value, str):
            raise invalid(f"Invalid value {json.dumps(value)} for parameter 'run_id' supplied: expected a string.")
        return value


def parse_body(request: HttpRequest, *, max_bytes: int | None = None) -> Body:
    if request.method == "GET":
        check_mapping(request.GET)
        return Body({key: request.GET.getlist(key) for key in request.GET}, from_query=True)
    try:
        raw = request.body
    except RequestDataTooBig:
        raise invalid("The request body is too large; split it into smaller requests.") from None
    if max_bytes is not None and len(raw) > max_bytes:
        raise invalid(f"Batched logging API requests must be at most {max_bytes} bytes, got {len(raw)}.")
    if not raw.strip():
        return Body({}, from_query=False)
    try:
        # HostileInputError (NUL, lone surrogates, depth, out-of-range numbers) propagates as a DomainError.
        data = json_loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MlflowApiError("BAD_REQUEST", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise MlflowApiError("BAD_REQUEST", "The request body must be a JSON object.")
    return Body(data, from_query=False)


# --- The decorator -----------------------------------------------------------------------------

Handler = Callable[..., dict[str, Any]]


def mlflow_endpoint(
    *methods: str, max_bytes: int | None = None, checked_write: Callable[[Body], bool] | None = None
) -> Callable[[Handler], Callable[..., HttpResponse]]:
    """Authenticate, parse, run the handler, and turn every failure into MLflow's error JSON.

    `checked_write(body)` true: the handler's only effect is a write that re-checks the caller where
    it lands (Caller.writer_token_id), so the caller may come from the cache; when that check
    refuses (WriterRefused), the request is authenticated afresh and handled again, and answers as
    it would have without the cache."""

    def decorate(handler: Handler) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @wraps(handler)
        def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return error_response(
                    "ENDPOINT_NOT_FOUND", f"{request.method} is not supported here; use {' or '.join(methods)}."
                )
            try:
                # The body first, so the run it names comes with the token's query; a bad body is
                # still reported only after authentication.
                try:
                    body, problem = parse_body(request, max_bytes=max_bytes), None
                except (MlflowApiError, DomainError) as exc:
                    body, problem = None, exc
                run_id = (body.get("run_id") or body.get("run_uuid")) if body else None
                run_id = run_id if isinstance(run_id, str) else None
                checked = body is not None and checked_write is not None and checked_write(body)
                caller = authenticate(request, run_id=run_id, for_checked_write=checked)
                if problem is not None:
                    raise problem
                try:
                    return json_response(handler(caller, body, **kwargs))
                except WriterRefused:
                    # The cached caller's access changed (revoked, left, viewer, run deleted).
                    forget_caller(request, run_id)
                    return json_response(handler(authenticate(request, run_id=run_id), body, **kwargs))
            except Exception as exc:
                return exception_response(request, exc)

        view.mlflow_methods = methods  # type: ignore[attr-defined]  # the fuzz tests read which methods to send
        return view

    return decorate


def exception_response(request: HttpRequest, exc: Exception) -> HttpResponse:
    """Every failure of an MLflow endpoint as MLflow's error JSON (never an HTML page)."""
    if isinstance(exc, MlflowApiError):
        return error_response(exc.code, exc.message, retry_after=exc.retry_after)
    if isinstance(exc, IngestError):
        return error_response(exc.mlflow_code, exc.message)
    if isinstance(exc, PermissionDeniedError):
        return error_response("PERMISSION_DENIED", exc.message)
    if isinstance(exc, ConflictError):
        return error_response("RESOURCE_CONFLICT", exc.message)
    if isinstance(exc, DomainError):
        return error_response("INVALID_PARAMETER_VALUE", exc.message)
    if isinstance(exc, DataError | OverflowError):
        # The database refused a value (too long, out of range) that validation let through.
        logger.warning("MLflow-compatible endpoint %s: value refused by the database", request.path)
        return error_response(
            "INVALID_PARAMETER_VALUE", "A value in the request is too long or out of range for mlboard."
        )
    logger.error("MLflow-compatible endpoint %s failed", request.path, exc_info=exc)
    return error_response("INTERNAL_ERROR", "Internal error in mlboard; the server log has the details.")
