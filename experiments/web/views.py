from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from ..selectors.home import home_overview


@login_required
def home(request: HttpRequest) -> HttpResponse:
    teams = home_overview(user=request.user)
    # With a single team the top nav can show that team's pages right away.
    context = {"teams": teams, "team": teams[0].membership.team if len(teams) == 1 else None}
    return render(request, "home.html", context)
