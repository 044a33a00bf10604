"""Every API error is JSON: {"error": {"code", "message", "fields"?}} with a 4xx status."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..errors import ConflictError, DomainError


def exception_handler(exc, context):
    if isinstance(exc, DomainError):
        body = {"error": {"code": exc.code, "message": exc.message}}
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
        response.data = {"error": {"code": "invalid", "message": "Invalid input.", "fields": response.data}}
    else:
        code = getattr(exc, "default_code", "error")
        if isinstance(exc, Http404):
            code = "not_found"
        detail = response.data.get("detail", str(exc)) if isinstance(response.data, dict) else str(exc)
        response.data = {"error": {"code": code, "message": str(detail)}}
    if response.status_code == status.HTTP_500_INTERNAL_SERVER_ERROR:
        return response
    return response
