from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from ..models import Board


@login_required
def home(request: HttpRequest) -> HttpResponse:
    boards = Board.objects.filter(team__memberships__user=request.user, archived=False).select_related("team")
    return render(request, "home.html", {"boards": boards})
