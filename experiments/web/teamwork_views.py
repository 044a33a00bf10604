"""Daily-teamwork pages: comments, @mention candidates, notifications and watching. Views stay thin
over services.comments / services.notifications and selectors.comments / selectors.notifications."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ..access import get_card_or_404, get_membership_or_404, membership_for
from ..errors import DomainError
from ..models import Comment, NotificationKind
from ..selectors import comments as comment_selectors
from ..selectors import notifications as notification_selectors
from ..selectors.runs import get_run_or_404
from ..services import comments as comment_services
from ..services import notifications as notification_services


def _comments_response(request: HttpRequest, *, card=None, run=None, error: str = "") -> HttpResponse:
    if request.htmx:
        return render(request, "comments/_section.html", comments_context(request, card=card, run=run, error=error))
    if error:
        messages.error(request, error)
    target = reverse("card_detail", args=[card.pk]) if card is not None else reverse("run_detail", args=[run.pk])
    return HttpResponseRedirect(target + "#comments")


def comments_context(request: HttpRequest, *, card=None, run=None, error: str = "") -> dict:
    """What comments/_section.html needs; the card and run pages include it too."""
    if card is not None:
        comments = comment_selectors.card_comments(card)
        post_url = reverse("card_comment_create", args=[card.pk])
        team = card.board.team
    else:
        comments = comment_selectors.run_comments(run)
        post_url = reverse("run_comment_create", args=[run.pk])
        team = run.team
    return {
        "comments": comments,
        "comment_post_url": post_url,
        "mention_url": reverse("team_members_json", args=[team.slug]),
        "comment_error": error,
        "user": request.user,
    }


@login_required
@require_POST
def card_comment_create(request: HttpRequest, card_id: int) -> HttpResponse:
    card, _membership = get_card_or_404(user=request.user, card_id=card_id)
    try:
        comment_services.comment_create(author=request.user, body=request.POST.get("body", ""), card=card)
    except DomainError as error:
        return _comments_response(request, card=card, error=error.message)
    return _comments_response(request, card=card)


@login_required
@require_POST
def run_comment_create(request: HttpRequest, run_id: int) -> HttpResponse:
    run, _membership = get_run_or_404(user=request.user, run_id=run_id)
    try:
        comment_services.comment_create(author=request.user, body=request.POST.get("body", ""), run=run)
    except DomainError as error:
        return _comments_response(request, run=run, error=error.message)
    return _comments_response(request, run=run)


def _comment_or_404(request: HttpRequest, comment_id: int) -> Comment:
    comment = Comment.objects.select_related("card__board__team", "run__team").filter(pk=comment_id).first()
    if comment is None or membership_for(user=request.user, team=comment.team_id) is None:
        raise Http404("No such comment.")
    return comment


@login_required
@require_POST
def comment_edit(request: HttpRequest, comment_id: int) -> HttpResponse:
    comment = _comment_or_404(request, comment_id)
    error = ""
    try:
        comment_services.comment_update(comment=comment, editor=request.user, body=request.POST.get("body", ""))
    except DomainError as exc:
        error = exc.message
    return _comments_response(request, card=comment.card, run=comment.run if comment.card is None else None,
                              error=error)


@login_required
@require_GET
def comment_history(request: HttpRequest, comment_id: int) -> HttpResponse:
    comment = _comment_or_404(request, comment_id)
    return render(
        request, "comments/_history.html",
        {"comment": comment, "revisions": comment_selectors.comment_revisions(comment)},
    )


@login_required
@require_GET
def team_members_json(request: HttpRequest, team_slug: str) -> JsonResponse:
    """@mention autocomplete: teammates whose username or name starts with ?q=."""
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    people = comment_selectors.team_mention_candidates(team_id=membership.team_id, prefix=request.GET.get("q", ""))
    return JsonResponse({"members": people})


# --- Notifications -------------------------------------------------------------------------------


@login_required
@require_GET
def notifications_page(request: HttpRequest) -> HttpResponse:
    page = notification_selectors.notifications_for(user=request.user, unread_only=request.GET.get("unread") == "1")
    return render(request, "notifications/list.html", {"page": page, "unread_only": request.GET.get("unread") == "1"})


@login_required
@require_GET
def notifications_bell(request: HttpRequest) -> HttpResponse:
    """The header bell's count; polled by htmx."""
    count = notification_selectors.unread_count(user=request.user)
    response = render(request, "notifications/_bell.html", {"unread_count": count})
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def notifications_read(request: HttpRequest) -> HttpResponse:
    ids = [int(i) for i in request.POST.getlist("id") if i.isdigit()] or None
    notification_services.notifications_mark_read(user=request.user, ids=ids)
    return redirect("notifications")


@login_required
@require_GET
def notification_open(request: HttpRequest, notification_id: int) -> HttpResponse:
    notification = notification_selectors.notification_for(user=request.user, notification_id=notification_id)
    if notification is None:
        raise Http404("No such notification.")
    notification_services.notifications_mark_read(user=request.user, ids=[notification.pk])
    return HttpResponseRedirect(notification_services.notification_url(notification))


@login_required
@require_http_methods(["GET", "POST"])
def notification_prefs(request: HttpRequest) -> HttpResponse:
    pref = notification_services.preference_for(request.user)
    error = ""
    if request.method == "POST":
        muted = [k for k in NotificationKind.values if request.POST.get(f"kind_{k}") != "1"]
        try:
            notification_services.preference_update(
                user=request.user, email=request.POST.get("email") == "1",
                webhook_url=request.POST.get("webhook_url", ""), muted_kinds=muted,
            )
        except DomainError as exc:
            error = exc.message
        else:
            messages.success(request, "Notification preferences saved.")
            return redirect("notification_prefs")
    kinds = [(value, label, value not in (pref.muted_kinds or [])) for value, label in NotificationKind.choices]
    return render(request, "notifications/prefs.html", {"pref": pref, "kinds": kinds, "error": error},
                  status=400 if error else 200)


@login_required
@require_POST
def card_watch(request: HttpRequest, card_id: int) -> HttpResponse:
    card, _membership = get_card_or_404(user=request.user, card_id=card_id)
    watching = request.POST.get("watch", "1") == "1"
    notification_services.watch_set(user=request.user, card=card, watching=watching)
    if request.htmx:
        return render(request, "notifications/_watch.html", {"card": card, "watching": watching})
    nxt = request.POST.get("next") or reverse("card_detail", args=[card.pk])
    if not url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}):
        nxt = reverse("card_detail", args=[card.pk])
    return HttpResponseRedirect(nxt)


@login_required
@require_http_methods(["GET", "POST"])
def team_board_rules(request: HttpRequest, team_slug: str) -> HttpResponse:
    """Team settings for WIP strictness and Done archiving (managers change them)."""
    from ..models import Role
    from ..services.teams import teamwork_settings, teamwork_settings_update

    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    is_manager = membership.role == Role.MANAGER
    rules = teamwork_settings(team_id=membership.team_id)
    error = ""
    if request.method == "POST":
        if not is_manager:
            return HttpResponse("Only team managers can change board rules.", status=403)
        raw = request.POST.get("archive_done_after_days", "").strip()
        try:
            days = int(raw) if raw else None
            teamwork_settings_update(
                team=membership.team, wip_strict=request.POST.get("wip_strict") == "1", archive_done_after_days=days
            )
        except ValueError:
            error = "Archive age must be a whole number of days, or empty."
        except DomainError as exc:
            error = exc.message
        else:
            messages.success(request, "Board rules saved.")
            return redirect("team_board_rules", team_slug)
    return render(request, "team/board_rules.html", {
        "team": membership.team, "membership": membership, "is_manager": is_manager, "tab": "board_rules",
        "rules": rules, "error": error,
    }, status=400 if error else 200)
