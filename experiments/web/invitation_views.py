"""The invitation accept page: set a username and password, join the team, land on its boards."""

from __future__ import annotations

from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from ..errors import DomainError
from ..selectors.invitations import invitation_for
from ..services.invitations import invitation_accept


@require_http_methods(["GET", "POST"])
def invitation_accept_view(request: HttpRequest, secret: str) -> HttpResponse:
    invitation = invitation_for(secret=secret)
    if invitation is None:
        return render(request, "registration/invitation.html", {"invitation": None}, status=404)
    context = {"invitation": invitation, "username": ""}
    if request.method == "POST":
        context["username"] = request.POST.get("username", "")
        if request.POST.get("password1", "") != request.POST.get("password2", ""):
            context["error"] = "The two passwords differ."
        else:
            try:
                user = invitation_accept(secret=secret, username=context["username"],
                                         password=request.POST.get("password1", ""))
            except DomainError as exc:
                context["error"] = exc.message
            else:
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                return redirect("home")
        return render(request, "registration/invitation.html", context, status=400)
    return render(request, "registration/invitation.html", context)
