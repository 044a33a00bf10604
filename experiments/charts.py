"""Plotly figure builders for run views. Figures are built server-side and shipped as JSON;
the browser only calls Plotly.newPlot on them. Series arrive already downsampled."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import cache
from typing import Any

import plotly.colors as plotly_colors
import plotly.graph_objects as go
from plotly.utils import PlotlyJSONEncoder

from .models import Direction
from .selectors.metrics import Series
from .selectors.runs import CompareRow, Comparison
from .services.runs import FLOAT_MAX

# Distinguishable on white, colour-blind friendly first (Okabe-Ito), then extra hues.
PALETTE = (
    "#4f46e5", "#e69f00", "#009e73", "#d55e00", "#0072b2", "#cc79a7", "#56b4e9", "#8c564b",
    "#7f7f7f", "#bcbd22", "#17becf", "#9467bd",
)
FONT = dict(family="-apple-system, BlinkMacSystemFont, 'Segoe UI', Roboto, Arial, sans-serif", size=12, color="#1d2330")
GRID = "#eef0f3"
MAX_PARCOORDS_DIMENSIONS = 24


def run_color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _base_layout(**extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = dict(
        template="none",
        font=FONT,
        paper_bgcolor="#ffffff",
        plot_bgcolor="#ffffff",
        margin=dict(l=56, r=16, t=30, b=44),
        height=300,
        showlegend=True,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0, font=dict(size=11), bgcolor="rgba(0,0,0,0)"),
    )
    layout.update(extra)
    return layout


def metric_chart_spec(
    *,
    key: str,
    series: Sequence[Series],
    colors: dict[int, str] | None = None,
    threshold: float | None = None,
    direction: str = "",
) -> dict[str, Any]:
    """One line per run, x = step, as Plotly's JSON in plain dicts (JSON-safe: gaps are null).

    Gaps (NaN/Inf) break the line; baselines are dashed. The chart endpoints send this as is:
    going through plotly.graph_objects validates every property and array of every trace (~10 ms a
    trace here, ~1 s for a card of 50 runs) to produce the same JSON."""
    colors = colors or {}
    data = []
    for index, s in enumerate(series):
        color = colors.get(s.run_id, run_color(index))
        name = f"{s.label} (baseline)" if s.is_baseline else s.label
        data.append(dict(
            type="scatter",
            x=list(s.steps),
            # Stored ±Inf (±FLOAT_MAX) is a gap, like NaN, instead of an axis at 1.8e308.
            y=[v if v is None or abs(v) < FLOAT_MAX else None for v in s.values],
            mode="lines+markers" if len(s.steps) <= 1 else "lines",
            name=name,
            connectgaps=False,
            line=dict(color=color, width=1.8, dash="dash" if s.is_baseline else "solid"),
            marker=dict(size=6, color=color),
            hovertemplate=f"<b>{_escape(name)}</b><br>step %{{x}}<br>{_escape(key)} %{{y:.5g}}<extra></extra>",
            meta=dict(run_id=s.run_id),
        ))
    shapes, annotations = [], []
    if threshold is not None:
        better = "≥" if direction == Direction.MAXIMIZE else "≤" if direction == Direction.MINIMIZE else "="
        shapes.append(
            dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=threshold, y1=threshold,
                 line=dict(color="#c0362c", width=1.2, dash="dot"))
        )
        annotations.append(
            dict(xref="paper", x=1, xanchor="right", yref="y", y=threshold, yanchor="bottom",
                 text=f"target {better} {threshold:g}", showarrow=False, font=dict(size=11, color="#c0362c"))
        )
    layout = _base_layout(
        hovermode="closest",
        showlegend=len(series) > 1,
        margin=dict(l=56, r=16, t=30 if len(series) > 1 else 10, b=44),
        xaxis=dict(title=dict(text="step", font=dict(size=11)), gridcolor=GRID, zeroline=False,
                   showline=True, linecolor="#d0d5dd", ticks="outside", tickcolor="#d0d5dd"),
        yaxis=dict(gridcolor=GRID, zeroline=False, showline=True, linecolor="#d0d5dd", automargin=True),
        meta=dict(metric=key),
        **(dict(shapes=shapes, annotations=annotations) if shapes else {}),
    )
    layout["template"] = _template_json(layout["template"])
    return {"data": data, "layout": layout}


@cache
def _template_json(name: str) -> dict[str, Any]:
    # What plotly.graph_objects writes for a named template (the browser has no named templates).
    return go.Figure(layout=dict(template=name)).to_plotly_json()["layout"]["template"]


def metric_chart(**kwargs: Any) -> go.Figure:
    """metric_chart_spec as a plotly Figure (same JSON; for callers that work with figures)."""
    return go.Figure(metric_chart_spec(**kwargs))


def _escape(text: str) -> str:
    # Plotly hover templates treat %{...} as placeholders and accept a small HTML subset.
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("%{", "%&#123;")
    )


MISSING_LABEL = "— missing"
MISSING_COLOR = "#b8bec9"


def _finite(value: float | None) -> bool:
    """A drawable number: not NaN, not ±Inf, and not ±FLOAT_MAX (how ±Inf is stored, as in MLflow)."""
    return value is not None and math.isfinite(value) and abs(value) < FLOAT_MAX


def finite_count(series: Sequence[Series]) -> int:
    return sum(1 for s in series for v in s.values if _finite(v))


def _numeric_dimension(label: str, numbers: Sequence[float | None]) -> dict[str, Any] | None:
    """A numeric axis; runs without a finite value sit on a labelled 'missing' tick below the range
    instead of falling off the axis."""
    finite = [n for n in numbers if _finite(n)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    if len(finite) == len(numbers):
        return dict(label=label, values=list(numbers))
    span = (hi - lo) or abs(hi) or 1.0
    missing = lo - span * 0.15
    ticks = sorted({lo, hi})
    return dict(
        label=label,
        values=[n if _finite(n) else missing for n in numbers],
        range=[missing, hi],
        tickvals=[missing, *ticks],
        ticktext=[MISSING_LABEL, *(f"{t:.4g}" for t in ticks)],
    )


def _dimension(row: CompareRow, label: str) -> dict[str, Any] | None:
    """A parcoords axis: numeric if every present value parses as a number, else categorical."""
    present = [v for v in row.values if v is not None]
    if not present:
        return None
    if all(n is not None for v, n in zip(row.values, row.numbers, strict=True) if v is not None):
        return _numeric_dimension(label, row.numbers)
    categories = sorted(set(present))
    has_missing = len(present) < len(row.values)
    if has_missing:
        categories = [MISSING_LABEL, *categories]
    index = {c: i for i, c in enumerate(categories)}
    return dict(
        label=label,
        values=[index[v] if v is not None else 0 for v in row.values],
        tickvals=list(range(len(categories))),
        ticktext=[c if len(c) <= 18 else c[:17] + "…" for c in categories],
        range=[-0.5, max(len(categories) - 0.5, 0.5)],
    )


def _line_colors(numbers: Sequence[float | None], key: str) -> dict[str, Any] | None:
    """Parcoords colours must all be numbers: runs lacking the metric (or with NaN/Inf) are drawn grey
    on a band below the Viridis scale rather than breaking the figure."""
    finite = [n for n in numbers if _finite(n)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    colorbar = dict(title=dict(text=key, side="right"), thickness=12)
    if len(finite) == len(numbers):
        return dict(color=list(numbers), colorscale="Viridis", showscale=True, colorbar=colorbar)
    span = (hi - lo) or abs(hi) or 1.0
    missing = lo - span * 0.1
    cut = (lo - missing) / (hi - missing)
    viridis = plotly_colors.sequential.Viridis
    scale: list[list[Any]] = [[0.0, MISSING_COLOR], [cut, MISSING_COLOR]]
    for i, color in enumerate(viridis):
        scale.append([cut + (1 - cut) * i / (len(viridis) - 1), color])
    colorbar.update(tickvals=[missing, lo, hi], ticktext=[MISSING_LABEL, f"{lo:.4g}", f"{hi:.4g}"])
    return dict(
        color=[n if _finite(n) else missing for n in numbers], colorscale=scale, cmin=missing, cmax=hi,
        showscale=True, colorbar=colorbar,
    )


def parallel_coordinates(*, comparison: Comparison, color_metric: str | None = None) -> go.Figure | None:
    """Params (those that differ, if any do) then final metrics, one line per run."""
    if len(comparison.runs) < 2:
        return None
    params = [r for r in comparison.params if r.differs] or comparison.params
    dims: list[dict[str, Any]] = []
    labels = [run.name or run.external_id[:8] for run in comparison.runs]
    dims.append(
        dict(label="run", values=list(range(len(labels))), tickvals=list(range(len(labels))),
             ticktext=[t if len(t) <= 18 else t[:17] + "…" for t in labels])
    )
    for row in params:
        dim = _dimension(row, row.key)
        if dim:
            dims.append(dim)
    metric_rows = [r for r in comparison.metrics if any(_finite(n) for n in r.numbers)]
    for row in metric_rows:
        dim = _numeric_dimension(row.key, row.numbers)
        if dim:
            dims.append(dim)
    dims = dims[:MAX_PARCOORDS_DIMENSIONS]
    if len(dims) < 2:
        return None
    color_row = next((r for r in metric_rows if r.key == color_metric), metric_rows[0] if metric_rows else None)
    line = _line_colors(color_row.numbers, color_row.key) if color_row is not None else None
    if line is None:
        line = dict(color=list(range(len(labels))), colorscale="Viridis", showscale=False)
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line=line,
            labelangle=-20,
            labelside="top",
            labelfont=dict(size=11),
            tickfont=dict(size=10),
        )
    )
    fig.update_layout(_base_layout(height=420, margin=dict(l=110, r=70, t=70, b=24), showlegend=False))
    return fig


def figure_payload(fig: go.Figure | dict[str, Any] | None, **meta: Any) -> dict[str, Any]:
    """JSON-ready {figure, meta}; NaN/Inf become null through plotly's encoder (a spec dict from
    metric_chart_spec is JSON-ready already)."""
    if isinstance(fig, dict):
        return {"figure": fig, "meta": meta}
    figure = json.loads(json.dumps(fig.to_plotly_json(), cls=PlotlyJSONEncoder)) if fig is not None else None
    return {"figure": figure, "meta": meta}


def param_effect_chart(*, key: str, metric: str, points: Sequence[tuple[str, float]], numeric: bool) -> go.Figure:
    """How one param relates to the metric: a scatter for numeric params, a strip per value otherwise."""
    fig = go.Figure()
    xs = [float(v) for v, _ in points] if numeric else [v for v, _ in points]
    fig.add_trace(go.Scatter(
        x=xs, y=[m for _, m in points], mode="markers", name=key,
        marker=dict(size=7, color=PALETTE[0], opacity=0.7),
        hovertemplate=f"{_escape(key)} %{{x}}<br>{_escape(metric)} %{{y:.5g}}<extra></extra>",
    ))
    fig.update_layout(_base_layout(
        height=240, showlegend=False, margin=dict(l=56, r=16, t=10, b=44),
        xaxis=dict(title=dict(text=key, font=dict(size=11)), gridcolor=GRID, type="linear" if numeric else "category"),
        yaxis=dict(title=dict(text=metric, font=dict(size=11)), gridcolor=GRID, automargin=True),
    ))
    return fig
