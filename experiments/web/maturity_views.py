"""Maturity report pages: overview (two heatmaps + levels), questionnaire, trend, printable report."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from .. import maturity as mm
from ..access import get_membership_or_404
from ..errors import DomainError, PermissionDeniedError
from ..models import Membership, Role
from ..selectors.maturity import (
    MaturityReport,
    assessment_for,
    maturity_report,
    maturity_trend,
    repro_tolerance,
)
from ..services.maturity import (
    AnswersError,
    maturity_assessment_submit,
    maturity_snapshot_take,
    maturity_tolerance_set,
)

COLORSCALE = [[0.0, "#c0362c"], [0.5, "#f2b441"], [1.0, "#12805c"]]
EMPTY_CELL = "#eef0f3"
GAP_LINE = "#111827"  # dark outline shows on red and green cells alike


# --- Figures (plain dicts for Plotly.newPlot) -----------------------------------------------------

def _cell_label(cell: mm.CellScore) -> str:
    if cell.score is not None:
        return f"{cell.score:.1f}"
    if cell.state == "insufficient":
        return "insufficient<br>evidence"
    if cell.state == "not_observable":
        return "n/a"
    return "-"


def heatmap_figure(
    cells: dict[mm.Cell, mm.CellScore], *, title: str, gap_cells: set[mm.Cell]
) -> dict[str, Any]:
    """Stage x attribute heatmap on the 1-5 scale. Cells without a score stay grey; insufficient
    evidence is hatched and labelled (never drawn as a low score); gaps get a red outline."""
    stages, attrs = mm.STAGE_KEYS, mm.ATTRIBUTE_KEYS
    z = [[cells[s, a].score for a in attrs] for s in stages]
    hover = [[f"<b>{mm.STAGE_LABELS[s]} · {mm.ATTRIBUTE_LABELS[a]}</b><br>{cells[s, a].detail}"
              for a in attrs] for s in stages]
    traces: list[dict[str, Any]] = [{
        "type": "heatmap", "x": list(range(len(attrs))), "y": list(range(len(stages))), "z": z,
        "zmin": 1, "zmax": 5, "colorscale": COLORSCALE, "xgap": 2, "ygap": 2,
        "customdata": hover, "hovertemplate": "%{customdata}<extra></extra>",
        "colorbar": {"title": {"text": "1-5"}, "tickvals": [1, 2, 3, 4, 5], "thickness": 12},
    }]
    hatch_x: list[float | None] = []
    hatch_y: list[float | None] = []
    hatch_text: list[str] = []
    annotations: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    for yi, s in enumerate(stages):
        for xi, a in enumerate(attrs):
            cell = cells[s, a]
            light = cell.score is None or 2.2 <= cell.score <= 3.8
            annotations.append({
                "x": xi, "y": yi, "text": _cell_label(cell), "showarrow": False,
                "font": {"size": 9 if cell.state == "insufficient" else 12, "color": "#344054" if light else "#fff"},
            })
            if cell.state == "insufficient":
                hatch_x += [xi - .47, xi + .47, xi + .47, xi - .47, xi - .47, None]
                hatch_y += [yi - .45, yi - .45, yi + .45, yi + .45, yi - .45, None]
                hatch_text += [cell.detail] * 6
            if (s, a) in gap_cells:
                shapes.append({"type": "rect", "x0": xi - .48, "x1": xi + .48, "y0": yi - .46, "y1": yi + .46,
                               "line": {"color": GAP_LINE, "width": 3}})
    if hatch_x:
        traces.append({
            "type": "scatter", "mode": "lines", "x": hatch_x, "y": hatch_y, "fill": "toself",
            "fillcolor": "rgba(0,0,0,0)",
            "fillpattern": {"shape": "/", "fgcolor": "#98a2b3", "size": 8, "solidity": .15},
            "line": {"width": 0}, "hoverinfo": "text", "text": hatch_text, "showlegend": False,
            "name": "insufficient evidence",
        })
    return {
        "data": traces,
        "layout": {
            "title": {"text": title, "font": {"size": 14}},
            "margin": {"l": 150, "r": 10, "t": 40, "b": 90}, "height": 470,
            "plot_bgcolor": EMPTY_CELL, "paper_bgcolor": "rgba(0,0,0,0)",
            "xaxis": {"tickvals": list(range(len(attrs))), "ticktext": [mm.ATTRIBUTE_LABELS[a] for a in attrs],
                      "tickangle": -30, "showgrid": False, "zeroline": False, "range": [-.5, len(attrs) - .5],
                      "fixedrange": True},
            "yaxis": {"tickvals": list(range(len(stages))), "ticktext": [mm.STAGE_LABELS[s] for s in stages],
                      "range": [len(stages) - .5, -.5], "showgrid": False, "zeroline": False, "fixedrange": True},
            "annotations": annotations, "shapes": shapes,
        },
    }


def trend_figure(snapshots: list[Any]) -> dict[str, Any]:
    dates = [s.date.isoformat() for s in snapshots]

    def series(key: str) -> list[Any]:
        return [s.data.get(key) for s in snapshots]

    mode = "lines+markers" if len(snapshots) < 60 else "lines"
    return {
        "data": [
            {"type": "scatter", "mode": mode, "name": "Evidence index (1-5)", "x": dates,
             "y": series("evidence_index"), "line": {"color": "#4f46e5", "width": 2.5}},
            {"type": "scatter", "mode": mode, "name": "Self-assessed AMI (1-5)", "x": dates,
             "y": series("self_index"), "line": {"color": "#7c3aed", "dash": "dot", "width": 2}},
            {"type": "scatter", "mode": "lines", "name": "Google MLOps level (0-2)", "x": dates,
             "y": series("google_level"), "yaxis": "y2", "line": {"color": "#0e7490", "shape": "hv"}},
            {"type": "scatter", "mode": "lines", "name": "Azure MLOps level (0-4)", "x": dates,
             "y": series("azure_level"), "yaxis": "y2", "line": {"color": "#b25e09", "shape": "hv"}},
        ],
        "layout": {
            "height": 360, "margin": {"l": 50, "r": 50, "t": 20, "b": 40},
            "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "#fff", "hovermode": "x unified",
            "legend": {"orientation": "h", "y": -0.18},
            "yaxis": {"title": {"text": "Index"}, "range": [0.8, 5.2], "dtick": 1},
            "yaxis2": {"title": {"text": "Level"}, "overlaying": "y", "side": "right", "range": [-0.2, 4.2],
                       "dtick": 1, "showgrid": False},
        },
    }


# --- Helpers --------------------------------------------------------------------------------------

def _grid_rows(cells: dict[mm.Cell, mm.CellScore], gap_cells: set[mm.Cell],
               by_stage: dict[str, float | None]) -> list[dict[str, Any]]:
    """Rows for the accessible/printable table version of a heatmap."""
    rows = []
    for key, label, _ in mm.STAGES:
        rows.append({
            "label": label,
            "index": by_stage.get(key),
            "cells": [{"cell": cells[key, a], "gap": (key, a) in gap_cells,
                       "band": _band(cells[key, a].score)} for a in mm.ATTRIBUTE_KEYS],
        })
    return rows


def _band(score: float | None) -> str:
    if score is None:
        return ""
    return f"b{min(5, max(1, round(score)))}"


def _report_context(report: MaturityReport, membership: Membership) -> dict[str, Any]:
    gap_cells = {(g.stage, g.attribute) for g in report.gaps}
    mapping = [
        {"metric": report.evidence.metrics[m.key], "definition": m,
         "cells": [f"{mm.STAGE_LABELS[s]} · {mm.ATTRIBUTE_LABELS[a]}" for s, a in m.cells]}
        for m in mm.EVIDENCE_METRICS
    ]
    return {
        "team": report.team,
        "membership": membership,
        "can_edit": membership.can_edit,
        "report": report,
        "attributes": mm.ATTRIBUTES,
        "self_rows": _grid_rows(report.self_cells, gap_cells, report.self_by_stage),
        "evidence_rows": _grid_rows(report.evidence_cells, gap_cells, report.evidence_by_stage),
        "self_figure": heatmap_figure(report.self_cells, title="Self-assessed", gap_cells=gap_cells),
        "evidence_figure": heatmap_figure(report.evidence_cells, title="From evidence", gap_cells=gap_cells),
        "mapping": mapping,
        "stage_labels": mm.STAGE_LABELS,
        "attribute_labels": mm.ATTRIBUTE_LABELS,
        "min_runs": mm.MIN_RUNS,
        "min_cards": mm.MIN_CARDS,
        "gap_abs": mm.GAP_ABS,
        "repro_tolerance_percent": f"{repro_tolerance(report.team) * 100:g}",
        "team_tolerance_set": report.team.maturity_repro_tolerance is not None,
        "is_manager": membership.role == Role.MANAGER,
    }


# --- Views ----------------------------------------------------------------------------------------

@login_required
@require_http_methods(["GET", "POST"])
def maturity_overview(request: HttpRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    if request.method == "POST":  # the reproduction tolerance (managers)
        raw = request.POST.get("repro_tolerance_percent", "").strip()
        try:
            tolerance = None if raw == "" else float(raw) / 100
            maturity_tolerance_set(team=membership.team, actor=request.user, tolerance=tolerance)
        except ValueError:
            messages.error(request, f"“{raw}” is not a number; enter a percentage such as 2.")
        except (DomainError, PermissionDeniedError) as error:
            messages.error(request, error.message)
        else:
            messages.success(request, "Reproduction tolerance saved.")
        return redirect("maturity", team_slug=membership.team.slug)
    report = maturity_report(team=membership.team)
    context = _report_context(report, membership)
    context["tab"] = "overview"
    return render(request, "maturity/overview.html", context)


@login_required
def maturity_print(request: HttpRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    report = maturity_report(team=membership.team)
    context = _report_context(report, membership)
    snapshots = maturity_trend(team=membership.team, limit=366)
    context.update({
        "snapshots": snapshots[-12:][::-1],
        "trend_figure": trend_figure(snapshots) if len(snapshots) >= 2 else None,
        "printed_at": timezone.now(),
        "printable": True,
    })
    return render(request, "maturity/print.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def maturity_trend_view(request: HttpRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    team = membership.team
    if request.method == "POST":
        if not membership.can_edit:
            messages.error(request, "Viewers cannot take snapshots; ask a member or manager.")
            return redirect("maturity_trend", team_slug=team.slug)
        snapshot = maturity_snapshot_take(team=team)
        messages.success(request, f"Snapshot for {snapshot.date:%b %d, %Y} saved.")
        return redirect("maturity_trend", team_slug=team.slug)
    snapshots = maturity_trend(team=team)
    return render(request, "maturity/trend.html", {
        "team": team,
        "membership": membership,
        "can_edit": membership.can_edit,
        "tab": "trend",
        "snapshots": snapshots[::-1],
        "trend_figure": trend_figure(snapshots) if snapshots else None,
    })


def _answers_from_post(data: Any) -> dict[str, dict[str, Any]]:
    """Form fields a__<stage>__<attribute> to answers; bad values are kept so validation can name them."""
    answers: dict[str, dict[str, Any]] = {}
    for stage in mm.STAGE_KEYS:
        row: dict[str, Any] = {}
        for attribute in mm.ATTRIBUTE_KEYS:
            raw = (data.get(f"a__{stage}__{attribute}") or "").strip()
            if not raw:
                continue
            row[attribute] = int(raw) if raw.lstrip("-").isdigit() else raw
        answers[stage] = row
    return answers


def _questionnaire(answers: dict[str, dict[str, Any]], errors: dict[str, str]) -> list[dict[str, Any]]:
    stages = []
    for key, label, description in mm.STAGES:
        rows = []
        for attr, attr_label, attr_help in mm.ATTRIBUTES:
            current = (answers.get(key) or {}).get(attr)
            rows.append({
                "name": f"a__{key}__{attr}",
                "id": f"q-{key}-{attr}",
                "label": attr_label,
                "help": attr_help,
                "error": errors.get(f"{key}.{attr}", ""),
                "options": [
                    {"value": i + 1, "short": mm.LEVEL_SHORT[i], "wording": mm.LEVEL_WORDING[attr][i],
                     "checked": current == i + 1}
                    for i in range(mm.LIKERT_MAX)
                ],
            })
        answered = sum(1 for r in rows if any(o["checked"] for o in r["options"]))
        stages.append({"key": key, "label": label, "description": description, "rows": rows,
                       "answered": answered, "has_error": any(r["error"] for r in rows)})
    return stages


@login_required
@require_http_methods(["GET", "POST"])
def maturity_assess(request: HttpRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_or_404(user=request.user, team_slug=team_slug)
    team = membership.team
    errors: dict[str, str] = {}
    status = 200
    previous = assessment_for(team=team, user=request.user)
    answers: dict[str, dict[str, Any]] = previous.answers if previous else {}
    summary = ""
    if request.method == "POST":
        answers = _answers_from_post(request.POST)
        try:
            assessment = maturity_assessment_submit(team=team, respondent=request.user, answers=answers)
        except PermissionDeniedError as exc:
            summary, status = exc.message, 403
        except AnswersError as exc:
            errors, summary, status = exc.errors, exc.message, 400
        else:
            stage_ami = mm.ami_by_stage(assessment.answers)
            weakest = min(stage_ami, key=lambda s: stage_ami[s])
            messages.success(
                request,
                f"Assessment saved. Your AMI is {mm.ami_overall(assessment.answers):.2f}; "
                f"lowest stage: {mm.STAGE_LABELS[weakest]} ({stage_ami[weakest]:.2f}).",
            )
            return redirect(reverse("maturity", args=[team.slug]))
    ami = None
    if previous and not mm.answers_errors(previous.answers):
        by_stage = mm.ami_by_stage(previous.answers)
        ami = {"overall": mm.ami_overall(previous.answers),
               "stages": [(mm.STAGE_LABELS[s], by_stage[s]) for s in mm.STAGE_KEYS]}
    return render(request, "maturity/assess.html", {
        "team": team,
        "membership": membership,
        "can_edit": membership.can_edit,
        "tab": "assess",
        "stages": _questionnaire(answers, errors),
        "errors": errors,
        "error_list": [(f"q-{key.replace('.', '-')}", message) for key, message in errors.items()],
        "summary": summary,
        "previous": previous,
        "ami": ami,
        "legend": [(label, mm.LEVEL_WORDING[key]) for key, label, _ in mm.ATTRIBUTES],
        "level_short": mm.LEVEL_SHORT,
        "total_questions": len(mm.STAGE_KEYS) * len(mm.ATTRIBUTE_KEYS),
    }, status=status)
