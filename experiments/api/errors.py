"""Every API error is JSON: {"error": {"code", "message", "fields"?}} with a 4xx status.

`message` always names the first problem ("metrics[3].value: Must be a number...") so a person
reading a log line understands it; `fields` keeps the full per-field detail for programs."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..errors import ConflictError, DomainError

logger = logging.getLogger(__name__)

NOT_AUTHENTICATED = (
    "Authentication required: log in, or send 'Authorization: Bearer <token>' "
    "with a personal API token (create one under Account > API tokens)."
)


def first_problem(data: Any, path: str = "") -> str | None:
    """The first leaf message of a DRF error structure, prefixed with where it is."""
    if isinstance(data, dict):
        for key, value in data.items():
            name = "" if key in ("non_field_errors", "detail") else str(key)
            found = first_problem(value, f"{path}.{name}" if path and name else (name or path))
            if found:
                return found
        return None
    if isinstance(data, list):
        for index, value in enumerate(data):
            if isinstance(value, dict | list):
                found = first_problem(value, f"{path}[{index}]")
                if found:
                    return found
            elif value:
                return f"{path}: {value}" if path else str(value)
        return None
    if data:
        return f"{path}: {data}" if path else str(data)
    return None


def exception_handler(exc, context):
    if isinstance(exc, DomainError):
        body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
        fields = getattr(exc, "errors", None) or ({exc.field: exc.message} if exc.field else None)
        if fields:
            body["error"]["fields"] = fields
        if isinstance(exc, ConflictError) and exc.current_version is not None:
            body["error"]["current_version"] = exc.current_version
        return Response(body, status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    if isinstance(exc, DataError | OverflowError):
        # The database (or SQLite's driver) refused a value, too long or out of range, that validation let through.
        logger.warning("API %s: value refused by the database: %s", context["request"].path, exc)
        return Response(
            {"error": {"code": "invalid", "message": "A value in the request is too long or out of range."}},
            status=400,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        # Unexpected failure: still JSON (never Django's HTML page) and logged with the traceback.
        logger.error("API %s failed", context["request"].path, exc_info=exc)
        return Response({"error": {"code": "server_error", "message": SERVER_ERROR}}, status=500)
    if isinstance(exc, exceptions.ValidationError):
        detail = first_problem(response.data)
        message = f"Invalid input: {detail}" if detail else "Invalid input."
        fields = response.data if isinstance(response.data, dict) else {"non_field_errors": response.data}
        response.data = {"error": {"code": "invalid", "message": message, "fields": fields}}
        return response
    code = getattr(exc, "default_code", "error")
    if isinstance(exc, Http404):
        code = "not_found"
    detail = response.data.get("detail", str(exc)) if isinstance(response.data, dict) else str(exc)
    if isinstance(exc, exceptions.NotAuthenticated):
        detail = NOT_AUTHENTICATED
    response.data = {"error": {"code": code, "message": str(detail)}}
    return response


SERVER_ERROR = "Internal error in mlboard; the server log has the details."


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/mlflow/"))


def _mlflow_error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error_code": code, "message": message}, status=status)


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 hook: JSON under /api/ and /mlflow/ (in each API's error shape), HTML elsewhere."""
    if request.path.startswith("/mlflow/"):
        return _mlflow_error("ENDPOINT_NOT_FOUND", f"No MLflow-compatible endpoint at {request.path}.", 404)
    if _is_api(request):
        return JsonResponse({"error": {"code": "not_found", "message": f"No API endpoint at {request.path}."}},
                            status=404)
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/mlflow/"):
        return _mlflow_error("INTERNAL_ERROR", SERVER_ERROR, 500)
    if _is_api(request):
        return JsonResponse({"error": {"code": "server_error", "message": SERVER_ERROR}}, status=500)
    return defaults.server_error(request)


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/mlflow/"):
        return _mlflow_error("BAD_REQUEST", "Bad request.", 400)
    if _is_api(request):
        return JsonResponse({"error": {"code": "bad_request", "message": "Bad request."}}, status=400)
    return defaults.bad_request(request, exception)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: JSON under the APIs (send a token, or the CSRF header with a session)."""
    if _is_api(request):
        message = "CSRF check failed: send 'Authorization: Bearer <token>', or the X-CSRFToken header with a session."
        if request.path.startswith("/mlflow/"):
            return _mlflow_error("PERMISSION_DENIED", message, 403)
        return JsonResponse({"error": {"code": "permission_denied", "message": message}}, status=403)
    from django.views.csrf import csrf_failure as html_csrf_failure

    return html_csrf_failure(request, reason)


def _error_ref() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


STANDARD_ERRORS = {
    "400": "Invalid input or query parameters; `fields` says what is wrong.",
    "401": "No or invalid credentials.",
    "403": "Not allowed for your role (or a failed CSRF check with a session).",
    "404": "No such object on your teams.",
    "429": "Request limit reached; retry after the `Retry-After` seconds.",
}


def document_standard_errors(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every operation documents the error statuses any endpoint
    can answer (400 where it takes input, 404 where it addresses an object), all in the Error shape."""
    for path, operations in result.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            takes_input = bool(operation.get("parameters")) or "requestBody" in operation
            for status, description in STANDARD_ERRORS.items():
                if status == "400" and not takes_input:
                    continue
                if status == "404" and "{" not in path:
                    continue
                operation["responses"].setdefault(status, {"description": description, "content": _error_ref()})
    return result
