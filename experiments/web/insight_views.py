"""Cross-card pages: evidence snapshots, similar earlier hypotheses, dead ends, the team leaderboard."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .. import charts
from ..access import get_board_or_404, get_card_or_404, get_membership_or_404
from ..models import EvidenceSnapshot
from ..selectors import insights
from ..selectors.runs import team_metric_keys


def _snapshot_or_404(request: HttpRequest, card_id: int) -> tuple[EvidenceSnapshot, object]:
    card, membership = get_card_or_404(user=request.user, card_id=card_id)
    snapshot = EvidenceSnapshot.objects.filter(card=card).first()
    if snapshot is None:
        raise Http404("This card has no evidence snapshot.")
    return snapshot, membership


@login_required
@require_GET
def card_evidence(request: HttpRequest, card_id: int) -> HttpResponse:
    """The frozen bundle as a printable page."""
    snapshot, membership = _snapshot_or_404(request, card_id)
    data = snapshot.data
    metric_keys = sorted({k for run in data.get("runs", []) for k in run.get("final_metrics", {})})
    chart = None
    hyp = data.get("hypothesis", {})
    series = data.get("charts", {}).get(hyp.get("metric_key") or "", [])
    if series:
        fig = charts.go.Figure()
        for index, s in enumerate(series):
            fig.add_trace(charts.go.Scatter(x=s["steps"], y=s["values"], mode="lines", name=s["label"],
                                            line=dict(color=charts.run_color(index),
                                                      dash="dash" if s.get("baseline") else "solid")))
        fig.update_layout(charts._base_layout(height=300))
        chart = charts.figure_payload(fig)
    stats_rows = [(k, v) for k, v in (data.get("statistics") or {}).items() if not isinstance(v, dict | list)]
    return render(request, "insights/evidence.html", {
        "snapshot": snapshot, "card": snapshot.card, "data": data, "team": snapshot.card.board.team,
        "membership": membership, "metric_keys": metric_keys, "chart": chart, "stats_rows": stats_rows,
        "stats_json": json.dumps(data.get("statistics") or {}, indent=2, sort_keys=True),
    })


@login_required
@require_GET
def card_evidence_json(request: HttpRequest, card_id: int) -> JsonResponse:
    snapshot, _membership = _snapshot_or_404(request, card_id)
    response = JsonResponse({"card": snapshot.card.key, "created_at": snapshot.created_at.isoformat(),
                             **snapshot.data}, json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="{snapshot.card.key}-evidence.json"'
    return response


@login_required
@require_GET
def card_similar(request: HttpRequest, board_id: int) -> HttpResponse:
    """Earlier hypotheses like the one being written (htmx, as the form is typed in)."""
    board, _membership = get_board_or_404(user=request.user, board_id=board_id)
    text = f"{request.GET.get('title', '')} {request.GET.get('statement', '')}"
    tags = [t for t in request.GET.get("tags", "").split(",") if t.strip()]
    exclude = request.GET.get("card")
    similar = insights.similar_hypotheses(
        team=board.team, text=text, tags=tags, metric_key=request.GET.get("metric_key", "").strip(),
        exclude_id=int(exclude) if exclude and exclude.isdigit() else None,
    )
    return render(request, "cards/_similar.html", {"similar": similar})


@login_required
@require_GET
def board_dead_ends(request: HttpRequest, board_id: int) -> HttpResponse:
    board, membership = get_board_or_404(user=request.user, board_id=board_id)
    return render(request, "insights/dead_ends.html", {
        "board": board, "team": board.team, "membership": membership, "items": insights.dead_ends(board=board),
    })


@login_required
@require_GET
def leaderboard(request: HttpRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    team = membership.team
    metrics = team_metric_keys(team=team)
    metric = request.GET.get("metric") or (metrics[0] if metrics else "")
    lb = None
    effect_charts = []
    if metric:
        lb = insights.team_leaderboard(
            team=team, metric=metric, direction=request.GET.get("direction") or None,
            group_by=request.GET.getlist("group"),
        )
        for effect in lb.effects:
            fig = charts.param_effect_chart(key=effect.key, metric=metric, points=effect.points, numeric=effect.numeric)
            effect_charts.append({"effect": effect, "payload": charts.figure_payload(fig),
                                  "id": f"effect-{len(effect_charts)}"})
    return render(request, "insights/leaderboard.html", {
        "team": team, "membership": membership, "metrics": metrics, "metric": metric, "lb": lb,
        "effect_charts": effect_charts,
        "compare_ids": ",".join(str(r.run.pk) for r in lb.best[:10]) if lb else "",
    })
