from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from ..access import user_teams
from ..selectors.search import MIN_LENGTH, search_everything


@login_required
@require_GET
def search_page(request: HttpRequest) -> HttpResponse:
    """Results grouped by kind, only from the user's teams."""
    q = request.GET.get("q", "")
    results = search_everything(user=request.user, text=q)
    return render(
        request, "search/results.html",
        {"results": results, "q": q, "min_length": MIN_LENGTH, "team": user_teams(request.user).first()},
    )
