"""Every API error is JSON: {"error": {"code", "message", "fields"?}} with a 4xx status.

`message` always names the first problem ("metrics[3].value: Must be a number...") so a person
reading a log line understands it; `fields` keeps the full per-field detail for programs."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..errors import ConflictError, DomainError

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
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
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
