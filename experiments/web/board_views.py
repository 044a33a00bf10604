"""The team Kanban board in the browser: board page, drag-and-drop moves, quick view, card forms,
board settings. Views stay thin: reads through selectors.board, writes through the services.

Access: other teams' boards are 404 (get_board_or_404); viewers read only, so every write (and
every form page) answers 403 with a message; board settings are for managers."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from ..access import ensure_can_edit, ensure_manager, get_board_or_404, get_membership_or_404
from ..errors import ConflictError, DomainError, PermissionDeniedError, WipLimitError
from ..models import AnalysisScale, Board, Card, CardKind, Column, Membership, Role, Stage
from ..selectors.board import (
    SWIMLANES,
    BoardFilters,
    archived_cards,
    board_card,
    board_cell_cards,
    board_lanes,
    board_stamp,
    board_view,
    card_quick_view,
    column_card_ids,
    column_totals,
)
from ..selectors.verdicts import sample_size_hint
from ..services.boards import board_create, column_create, column_delete, column_update, columns_reorder
from ..services.cards import card_create, card_flag, card_move, card_restore, card_update
from .forms import CARD_FORMS, BoardForm, ColumnForm, apply_domain_error

View = Callable[..., HttpResponse]


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _error(request: HttpRequest, message: str, status: int, **extra: Any) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"ok": False, "error": message, **extra}, status=status)
    if getattr(request, "htmx", False):
        return render(request, "board/_error.html", {"message": message}, status=status)
    return render(request, "board/error.html", {"message": message, "status": status}, status=status)


def board_endpoint(view: View) -> View:
    """Login required; PermissionDeniedError from access checks or services becomes a 403 with its message."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except PermissionDeniedError as exc:
            return _error(request, exc.message, 403)

    return wrapper


def _board_card(board: Board, card_id: int) -> Card:
    card = Card.objects.select_related("column", "board__team").filter(pk=card_id, board=board).first()
    if card is None:
        raise Http404("No such card on this board.")
    return card


def _safe_next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return default


def _roles(membership: Membership) -> dict[str, bool]:
    return {"can_edit": membership.can_edit, "is_manager": membership.role == Role.MANAGER}


# --- Board page ---------------------------------------------------------------------------------


@require_GET
@board_endpoint
def board_page(request: HttpRequest, board_id: int) -> HttpResponse:
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    filters = BoardFilters.from_params(request.GET)
    view = board_view(board=board, filters=filters)
    context = {
        "team": board.team,
        "board": board,
        "membership": membership,
        "view": view,
        "kinds": CardKind.choices,
        "swimlanes": SWIMLANES,
        "team_boards": list(Board.objects.filter(team_id=board.team_id, archived=False).only("id", "key", "name")),
        "stamp": board_stamp(board),
        **_roles(membership),
    }
    return render(request, "board/board.html", context)


@login_required
@require_GET
def board_archive_page(request: HttpRequest, board_id: int) -> HttpResponse:
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    return render(
        request, "board/archive.html",
        {"team": board.team, "board": board, "cards": archived_cards(board=board), **_roles(membership)},
    )


@login_required
@require_POST
def card_restore_view(request: HttpRequest, board_id: int, card_id: int) -> HttpResponse:
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    if not membership.can_edit:
        return HttpResponse("Viewers cannot change anything on this team.", status=403)
    card = _board_card(board, card_id)
    if card_restore(card=card, actor=request.user):
        messages.success(request, f"{card.key} is back on the board.")
    return redirect("board_archive", board.pk)


@require_GET
@board_endpoint
def board_cell_cards_view(request: HttpRequest, board_id: int) -> HttpResponse:
    """The next cards of one cell ("show more"), under the page's filters and swimlanes."""
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    filters = BoardFilters.from_params(request.GET)
    column_id, offset = _int(request.GET.get("column")), _int(request.GET.get("offset"))
    page = None
    if column_id is not None and offset is not None:
        page = board_cell_cards(
            board=board, filters=filters, column_id=column_id, lane=request.GET.get("lane", "all"), offset=offset
        )
    if page is None:
        return HttpResponse("That column is not on this board any more; reload the board.", status=404)
    context = {
        "board": board,
        "page": page,
        "lanes": filters.lanes,
        "query": filters.querystring(),
        "next_offset": page.offset + len(page.cards),
        **_roles(membership),
    }
    return render(request, "board/_cell_cards.html", context)


@require_GET
@board_endpoint
def board_lanes_view(request: HttpRequest, board_id: int) -> HttpResponse:
    """The next swimlanes ("show more lanes"), under the page's filters and swimlane mode."""
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    filters = BoardFilters.from_params(request.GET)
    page = board_lanes(board=board, filters=filters, offset=_int(request.GET.get("offset")) or 0)
    context = {
        "board": board,
        "lanes": page.lanes,
        "mode": filters.lanes,
        "query": filters.querystring(),
        "lanes_hidden": page.hidden,
        "lanes_next": page.next,
        **_roles(membership),
    }
    return render(request, "board/_lanes.html", context)


@require_GET
@board_endpoint
def board_state(request: HttpRequest, board_id: int) -> HttpResponse:
    """What an open board page polls: a stamp that changes whenever any card on the board changes.
    Cheap (access check plus one query) and never cached, so polling every few seconds is fine."""
    board, _membership = get_board_or_404(user=request.user, board_id=board_id)
    response = JsonResponse({"board": board.pk, "stamp": board_stamp(board)})
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@board_endpoint
def card_move_view(request: HttpRequest, board_id: int, card_id: int) -> HttpResponse:
    """Move a card (drag and drop or keyboard). Answers JSON; a stale version is a 409 with the
    service's message, so the browser can put the card back and tell who changed it."""
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    ensure_can_edit(membership)
    card = _board_card(board, card_id)
    column = Column.objects.filter(board=board, pk=_int(request.POST.get("to_column"))).first()
    if column is None:
        return JsonResponse({"ok": False, "error": "That column is not on this board any more; reload."}, status=400)
    version = _int(request.POST.get("version"))
    if version is None:
        return JsonResponse(
            {"ok": False, "error": "The card's version is missing; reload the board and try again."}, status=400
        )
    index = _target_index(request, column, card)
    stamp_before = board_stamp(board)
    try:
        moved = card_move(
            card=card, to_column=column, actor=request.user, expected_version=version, index=index,
            confirm_over_limit=request.POST.get("confirm_over_limit") == "1",
        )
    except WipLimitError as exc:
        return JsonResponse({"ok": False, "needs_confirm": True, "error": exc.message}, status=409)
    except ConflictError as exc:
        return JsonResponse(
            {"ok": False, "conflict": True, "error": exc.message, "current_version": exc.current_version},
            status=409,
        )
    except DomainError as exc:
        return JsonResponse({"ok": False, "error": exc.message}, status=400)
    position = column_card_ids(column).index(moved.pk) + 1
    totals = column_totals(board)
    target = next((c for c in totals if c["id"] == column.pk), None)
    warning = (
        f"{column.name} is now over its WIP limit ({target['total']} of {target['wip_limit']})."
        if target and target["over_limit"] and moved.column_id != card.column_id
        else ""
    )
    return JsonResponse(
        {
            "ok": True,
            "card": {"id": moved.pk, "key": moved.key, "version": moved.version, "column": column.pk},
            "columns": totals,
            "wip_warning": warning,
            "message": f"{moved.key} moved to {column.name}, position {position}.",
            # Lets the page adopt the new stamp when nothing else changed, so its own move does not
            # look like a teammate's change on the next poll.
            "stamp_before": stamp_before,
            "stamp": board_stamp(board),
        }
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _target_index(request: HttpRequest, column: Column, card: Card) -> int | None:
    """Index among all cards of the target column. The browser may only see some of them (filters,
    swimlanes), so it names its visible neighbours and the index is worked out here."""
    explicit = _int(request.POST.get("index"))
    after, before = _int(request.POST.get("after")), _int(request.POST.get("before"))
    if explicit is not None and after is None and before is None:
        return explicit
    ids = column_card_ids(column, exclude_id=card.pk)
    if after is not None and after in ids:
        return ids.index(after) + 1
    if before is not None and before in ids:
        return ids.index(before)
    return None


# --- Quick view and flag ------------------------------------------------------------------------


def _board_back_url(request: HttpRequest, board: Board) -> str:
    """The board URL the quick view was opened from, filters included, so Edit comes back to it."""
    default = reverse("board", args=[board.pk])
    current = request.htmx.current_url if getattr(request, "htmx", None) else None
    if current:
        parts = urlsplit(current)
        if parts.path == default and parts.query:
            return f"{default}?{parts.query}"
    return default


def _quick_context(request: HttpRequest, board: Board, card: Card, membership: Membership) -> dict[str, Any]:
    return {
        "board": board,
        "team": board.team,
        "quick": card_quick_view(card=card),
        "back_url": _board_back_url(request, board),
        **_roles(membership),
    }


@require_GET
@board_endpoint
def card_quick(request: HttpRequest, board_id: int, card_id: int) -> HttpResponse:
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    card = _board_card(board, card_id)
    context = _quick_context(request, board, card, membership)
    template = "board/_quick_view.html" if request.htmx else "board/quick_page.html"
    return render(request, template, context)


@require_POST
@board_endpoint
def card_flag_view(request: HttpRequest, board_id: int, card_id: int) -> HttpResponse:
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    ensure_can_edit(membership)
    card = _board_card(board, card_id)
    flagged = request.POST.get("flagged") == "1"
    card = card_flag(card=card, actor=request.user, flagged=flagged, reason=request.POST.get("reason", "").strip())
    if request.htmx:
        context = _quick_context(request, board, card, membership)
        context["oob_card"] = board_card(board=board, card_id=card.pk)
        return render(request, "board/_quick_view.html", context)
    messages.success(request, f"{card.key} {'flagged' if flagged else 'unflagged'}.")
    return redirect("board", board_id=board.pk)


# --- Card forms ---------------------------------------------------------------------------------


@board_endpoint
def card_create_view(request: HttpRequest, board_id: int, kind: str) -> HttpResponse:
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    form_class = CARD_FORMS.get(kind)
    if form_class is None:
        raise Http404("No such card kind.")
    ensure_can_edit(membership)
    status = 200
    if request.method == "POST":
        form = form_class(request.POST, board=board)
        if form.is_valid():
            fields = form.service_fields()
            title = fields.pop("title")
            try:
                card = card_create(
                    board=board,
                    kind=kind,
                    title=title,
                    actor=request.user,
                    column=form.cleaned_data.get("column"),
                    tags=form.cleaned_data["tags"],
                    **fields,
                )
            except DomainError as exc:
                apply_domain_error(form, exc)
            else:
                messages.success(request, f"Created {card.key} · {card.title}.")
                return HttpResponseRedirect(_safe_next(request, reverse("board", args=[board.pk])))
        status = 400
    else:
        initial: dict[str, Any] = {"column": _int(request.GET.get("column")), "owner": request.user.pk}
        if request.GET.get("parent"):
            initial["parent"] = _int(request.GET.get("parent"))
        form = form_class(initial=initial, board=board)
    context = {
        "board": board,
        "team": board.team,
        "form": form,
        "kind": kind,
        "kind_label": CardKind(kind).label,
        "next": _safe_next(request, ""),
    }
    return render(request, "board/card_form.html", context, status=status)


def _float_param(request: HttpRequest, name: str) -> float | None:
    try:
        value = float(request.GET.get(name, ""))
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


@login_required
@require_GET
def card_sample_size(request: HttpRequest, board_id: int) -> HttpResponse:
    """The suggested runs per arm for a hypothesis being written (htmx, as its plan is typed in)."""
    board, _membership = get_board_or_404(user=request.user, board_id=board_id)
    draft = Card(
        board=board,
        kind=CardKind.HYPOTHESIS,
        metric_key=request.GET.get("metric_key", "").strip()[:250],
        min_delta=_float_param(request, "min_delta"),
        smallest_effect=_float_param(request, "smallest_effect"),
        equivalence_margin=_float_param(request, "equivalence_margin"),
        analysis_scale=AnalysisScale.LOG if request.GET.get("analysis_scale") == "log" else AnalysisScale.RAW,
        paired=request.GET.get("paired") in ("on", "true", "1"),
    )
    return render(request, "board/_sample_size.html", {"board": board, "sample_size": sample_size_hint(card=draft)})


@board_endpoint
def card_edit_view(request: HttpRequest, board_id: int, card_id: int) -> HttpResponse:
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    card = _board_card(board, card_id)
    ensure_can_edit(membership)
    form_class = CARD_FORMS[card.kind]
    status, conflict = 200, False
    if request.method == "POST":
        form = form_class(request.POST, board=board, card=card)
        if form.is_valid():
            fields = form.service_fields()
            try:
                card = card_update(
                    card=card,
                    actor=request.user,
                    expected_version=form.cleaned_data["version"],
                    tags=form.cleaned_data["tags"],
                    amendment_reason=form.cleaned_data.get("amendment_reason") or "",
                    **fields,
                )
            except ConflictError as exc:
                conflict = True
                form.add_error(None, exc.message)
            except DomainError as exc:
                apply_domain_error(form, exc)
            else:
                messages.success(request, f"Saved {card.key} · {card.title}.")
                return HttpResponseRedirect(_safe_next(request, reverse("board", args=[board.pk])))
        status = 409 if conflict else 400
    else:
        form = form_class(initial=form_class.initial_for(card), board=board, card=card)
    context = {
        "board": board,
        "team": board.team,
        "form": form,
        "card": card,
        "kind": card.kind,
        "kind_label": card.get_kind_display(),
        "conflict": conflict,
        "next": _safe_next(request, ""),
        "sample_size": sample_size_hint(card=card) if card.kind == CardKind.HYPOTHESIS else None,
    }
    return render(request, "board/card_form.html", context, status=status)


# --- Board settings (managers) ------------------------------------------------------------------


def _settings_response(
    request: HttpRequest,
    board: Board,
    *,
    row_forms: dict[int, ColumnForm] | None = None,
    add_form: ColumnForm | None = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    columns = list(board.columns.annotate(card_count=Count("cards")).order_by("position", "id"))
    row_forms = row_forms or {}
    rows = [
        (
            column,
            row_forms.get(column.pk)
            or ColumnForm(
                initial={"name": column.name, "wip_limit": column.wip_limit, "stage": column.stage},
                prefix=f"col{column.pk}",
                form_id=f"col-form-{column.pk}",
            ),
        )
        for column in columns
    ]
    context = {
        "board": board,
        "team": board.team,
        "rows": rows,
        "add_form": add_form or ColumnForm(initial={"stage": Stage.BACKLOG}, prefix="new"),
        "page_error": error,
    }
    return render(request, "board/settings.html", context, status=status)


def _manager_board(request: HttpRequest, board_id: int) -> Board:
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    ensure_manager(membership)
    return board


def _board_column(board: Board, column_id: int) -> Column:
    return get_object_or_404(Column, pk=column_id, board=board)


@require_GET
@board_endpoint
def board_settings(request: HttpRequest, board_id: int) -> HttpResponse:
    return _settings_response(request, _manager_board(request, board_id))


@require_POST
@board_endpoint
def column_update_view(request: HttpRequest, board_id: int, column_id: int) -> HttpResponse:
    board = _manager_board(request, board_id)
    column = _board_column(board, column_id)
    form = ColumnForm(request.POST, prefix=f"col{column.pk}", form_id=f"col-form-{column.pk}")
    if form.is_valid():
        wip = form.cleaned_data["wip_limit"]
        try:
            column_update(
                column=column,
                name=form.cleaned_data["name"] or "",
                wip_limit=wip,
                clear_wip=wip is None,
                stage=form.cleaned_data["stage"],
            )
        except DomainError as exc:
            apply_domain_error(form, exc)
        else:
            messages.success(request, f"Saved column {column.name}.")
            return redirect("board_settings", board_id=board.pk)
    return _settings_response(request, board, row_forms={column.pk: form}, status=400)


@require_POST
@board_endpoint
def column_add_view(request: HttpRequest, board_id: int) -> HttpResponse:
    board = _manager_board(request, board_id)
    form = ColumnForm(request.POST, prefix="new")
    if form.is_valid():
        try:
            column = column_create(
                board=board,
                name=form.cleaned_data["name"] or "",
                stage=form.cleaned_data["stage"],
                wip_limit=form.cleaned_data["wip_limit"],
            )
        except DomainError as exc:
            apply_domain_error(form, exc)
        else:
            messages.success(request, f"Added column {column.name}.")
            return redirect("board_settings", board_id=board.pk)
    return _settings_response(request, board, add_form=form, status=400)


@require_POST
@board_endpoint
def column_move_view(request: HttpRequest, board_id: int, column_id: int) -> HttpResponse:
    board = _manager_board(request, board_id)
    column = _board_column(board, column_id)
    ids = list(board.columns.order_by("position", "id").values_list("pk", flat=True))
    i = ids.index(column.pk)
    j = i - 1 if request.POST.get("direction") == "left" else i + 1
    if 0 <= j < len(ids):
        ids[i], ids[j] = ids[j], ids[i]
        columns_reorder(board=board, column_ids=ids)
        messages.success(request, f"Moved column {column.name} {'left' if j < i else 'right'}.")
    return redirect("board_settings", board_id=board.pk)


@require_POST
@board_endpoint
def column_delete_view(request: HttpRequest, board_id: int, column_id: int) -> HttpResponse:
    board = _manager_board(request, board_id)
    column = _board_column(board, column_id)
    name = column.name
    try:
        column_delete(column=column)
    except DomainError as exc:
        return _settings_response(request, board, error=f"Cannot delete column: {exc.message}", status=400)
    messages.success(request, f"Deleted column {name}.")
    return redirect("board_settings", board_id=board.pk)


@board_endpoint
def board_new(request: HttpRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    ensure_manager(membership)
    team = membership.team
    status = 200
    if request.method == "POST":
        form = BoardForm(request.POST)
        if form.is_valid():
            try:
                board = board_create(
                    team=team,
                    name=form.cleaned_data["name"] or "",
                    key=form.cleaned_data["key"] or "",
                    problem=form.cleaned_data["problem"] or "",
                )
            except DomainError as exc:
                apply_domain_error(form, exc)
            else:
                messages.success(request, f"Created board {board.key} · {board.name}.")
                return redirect("board", board_id=board.pk)
        status = 400
    else:
        form = BoardForm()
    return render(request, "board/board_new.html", {"team": team, "form": form}, status=status)
