"""{% run_artifacts run %} on the run page and {% card_run_images rows %} on the card page: the
artifact sections, each one query whatever the number of files or runs."""

from __future__ import annotations

from typing import Any

from django import template

from ..selectors import artifacts as artifact_selectors

register = template.Library()


@register.inclusion_tag("runs/_artifacts.html")
def run_artifacts(run: Any) -> dict[str, Any]:
    nodes, count = artifact_selectors.run_artifacts(run=run)
    return {"run": run, "nodes": nodes, "count": count}


@register.inclusion_tag("cards/_run_images.html")
def card_run_images(linked: list[Any]) -> dict[str, Any]:
    """`linked` are the card page's rows (each with .run and .color)."""
    runs = [row.run for row in linked]
    images = artifact_selectors.runs_images(runs=runs)
    columns = [{"run": row.run, "color": getattr(row, "color", ""), "images": images.get(row.run.pk, [])}
               for row in linked]
    return {"columns": [c for c in columns if c["images"]]}
