from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from ..access import get_board_or_404


@login_required
def board_page(request: HttpRequest, board_id: int) -> HttpResponse:
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    return render(request, "home.html", {"boards": [board]})
