"""Plotly figure builders: metric line charts and the parallel-coordinates comparison."""

from __future__ import annotations

import json
import math

from experiments.charts import figure_payload, metric_chart, metric_chart_spec, parallel_coordinates, run_color
from experiments.selectors.metrics import Series
from experiments.selectors.runs import CompareRow, Comparison


def test_metric_chart_one_line_per_run_with_gaps_and_baseline_dashed():
    series = [
        Series(run_id=1, label="seed-1", steps=[0, 1, 2], values=[0.5, None, 0.7], total_points=3),
        Series(run_id=2, label="base", steps=[0, 1, 2], values=[0.4, 0.45, 0.5], total_points=3, is_baseline=True),
    ]
    fig = metric_chart(key="val_auc", series=series, colors={2: "#123456"})
    traces = fig.data
    assert [t.name for t in traces] == ["seed-1", "base (baseline)"]
    assert list(traces[0].x) == [0, 1, 2] and traces[0].y[1] is None
    assert traces[0].connectgaps is False  # NaN stays a visible gap
    assert traces[0].line.dash == "solid" and traces[1].line.dash == "dash"
    assert traces[0].line.color == run_color(0) and traces[1].line.color == "#123456"
    assert fig.layout.xaxis.title.text == "step"
    assert not fig.layout.shapes


def test_metric_chart_draws_the_success_threshold():
    fig = metric_chart(
        key="val_auc", series=[Series(run_id=1, label="r", steps=[0], values=[0.8], total_points=1)],
        threshold=0.85, direction="maximize",
    )
    assert fig.layout.shapes[0].y0 == 0.85
    assert "≥ 0.85" in fig.layout.annotations[0].text
    assert fig.data[0].mode == "lines+markers"  # a single point must still be visible


def test_hover_template_escapes_run_names():
    fig = metric_chart(
        key="a<b>", series=[Series(run_id=1, label="%{y}<script>", steps=[0, 1], values=[1.0, 2.0], total_points=2)]
    )
    template = fig.data[0].hovertemplate
    assert "<script>" not in template and "&lt;script&gt;" in template
    assert "%&#123;y}" in template


def test_payload_is_plain_json_with_nulls_for_non_finite():
    fig = metric_chart(
        key="loss", series=[Series(run_id=1, label="r", steps=[0, 1], values=[math.nan, 1.0], total_points=2)]
    )
    payload = figure_payload(fig, points=2)
    text = json.dumps(payload, allow_nan=False)  # would raise on NaN/Infinity
    assert json.loads(text)["figure"]["data"][0]["y"] == [None, 1.0]
    assert payload["meta"] == {"points": 2}


class _Run:
    def __init__(self, pk: int, name: str) -> None:
        self.pk, self.name, self.external_id = pk, name, f"ext{pk:06d}"


def _comparison() -> Comparison:
    runs = [_Run(1, "a"), _Run(2, "b"), _Run(3, "c")]
    params = [
        CompareRow("lr", ["0.01", "0.1", "0.1"], True, "param", [0.01, 0.1, 0.1]),
        CompareRow("optimizer", ["adam", "sgd", None], True, "param", [None, None, None]),
        CompareRow("depth", ["6", "6", "6"], False, "param", [6.0, 6.0, 6.0]),
    ]
    metrics = [
        CompareRow("val_auc", ["0.8", "0.9", "NaN"], True, "metric", [0.8, 0.9, None]),
        CompareRow("loss", ["0.3", "0.2", "0.1"], True, "metric", [0.3, 0.2, 0.1]),
    ]
    return Comparison(runs=runs, params=params, metrics=metrics, missing_ids=[])  # type: ignore[arg-type]


def test_parallel_coordinates_axes_for_differing_params_and_metrics():
    fig = parallel_coordinates(comparison=_comparison(), color_metric="loss")
    trace = fig.data[0]
    dims = {d.label: d for d in trace.dimensions}
    assert list(dims) == ["run", "lr", "optimizer", "val_auc", "loss"]  # identical 'depth' has no axis
    assert list(dims["run"].ticktext) == ["a", "b", "c"]
    assert list(dims["lr"].values) == [0.01, 0.1, 0.1] and dims["lr"].ticktext is None  # numeric axis
    # Categorical axis; run c has no optimizer and sits on a labelled 'missing' tick, not off the axis.
    assert list(dims["optimizer"].ticktext) == ["— missing", "adam", "sgd"]
    assert list(dims["optimizer"].values) == [1, 2, 0]
    assert list(trace.line.color) == [0.3, 0.2, 0.1] and trace.line.colorbar.title.text == "loss"


def test_parallel_coordinates_needs_two_runs():
    comparison = _comparison()
    comparison.runs = comparison.runs[:1]
    assert parallel_coordinates(comparison=comparison) is None


def test_metric_chart_spec_is_the_json_plotly_would_send():
    # The chart endpoints send the plain spec (no plotly validation); it must be what the Figure gives.
    series = [
        Series(run_id=1, label="a<b>", steps=[0, 1, 2, 3], values=[0.5, None, 2.0, 1.7976931348623157e308],
               total_points=4),
        Series(run_id=2, label="base", steps=[5], values=[1.0], total_points=1, is_baseline=True),
    ]
    for extra in ({}, {"threshold": 0.5, "direction": "maximize"}):
        spec = metric_chart_spec(key="loss", series=series, colors={2: "#123456"}, **extra)
        through_plotly = figure_payload(metric_chart(key="loss", series=series, colors={2: "#123456"}, **extra))
        assert json.loads(json.dumps(spec, allow_nan=False)) == through_plotly["figure"]
        assert spec["data"][0]["y"] == [0.5, None, 2.0, None]
