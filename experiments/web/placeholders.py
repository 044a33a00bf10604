"""Temporary pages so URL names exist while areas are built; each area's module replaces its entry."""

from django.http import HttpRequest, HttpResponse


def placeholder(request: HttpRequest, **kwargs: object) -> HttpResponse:
    return HttpResponse("Not built yet.", status=501)
