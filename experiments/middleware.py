"""Refuse query strings and form fields that no page can store (NUL characters, lone surrogates)
with a 400 before any view runs: JSON in the right shape under the APIs, a short text elsewhere.
And django-csp, minus building a policy for a response that brings its own."""

from __future__ import annotations

from collections.abc import Callable

from csp.constants import HEADER
from csp.middleware import CSPMiddleware as BaseCSPMiddleware
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from .inputs import HostileInputError, check_mapping


class HostileInputMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            check_mapping(request.GET)
            if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                check_mapping(request.POST)
        except HostileInputError as exc:
            return self._refuse(request, exc.message)
        return self.get_response(request)

    @staticmethod
    def _refuse(request: HttpRequest, message: str) -> HttpResponse:
        if request.path.startswith("/mlflow/"):
            return JsonResponse({"error_code": "INVALID_PARAMETER_VALUE", "message": message}, status=400)
        if request.path.startswith("/api/"):
            return JsonResponse({"error": {"code": "invalid", "message": f"Invalid input: {message}"}}, status=400)
        return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")


class CSPMiddleware(BaseCSPMiddleware):
    """django-csp builds the policy for every response before it looks whether the response already
    has one. Responses that set their own (the MLflow API's JSON, artifact downloads) answer at
    training-loop rates, where building it cost a tenth of a log-metric request: they skip it."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if HEADER in response:
            return response
        return super().process_response(request, response)
