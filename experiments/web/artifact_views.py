"""Run artifacts in the UI: a file streamed (download, or inline for <img>) and a preview
(image, text/JSON/YAML, CSV as a capped table). Access: the run must belong to one of the user's
teams (selectors.runs.get_run_or_404, over experiments/access.py); anything else is a 404."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from ..mlflow_api.artifacts import download_response
from ..selectors import artifacts as artifact_selectors
from ..selectors import runs as run_selectors
from ..services.runs import IngestError

TEXT_PREVIEW_BYTES = 256 * 1024
TABLE_ROWS = 200
TABLE_COLUMNS = 50


def _artifact_of(request: HttpRequest, run_id: int) -> tuple[Any, Any, str]:
    run, membership = run_selectors.get_run_or_404(user=request.user, run_id=run_id)
    run.membership = membership  # type: ignore[attr-defined]
    relative = request.GET.get("path", "")
    row = artifact_selectors.run_artifact_file(run=run, relative=relative) if relative else None
    if row is None:
        raise Http404("No such artifact.")
    return run, row, relative


@login_required
@require_GET
def run_artifact_file(request: HttpRequest, run_id: int) -> HttpResponse:
    """The file's bytes, streamed. Images open inline (for <img>); everything else downloads."""
    _run, row, _relative = _artifact_of(request, run_id)
    try:
        opened = artifact_selectors.artifact_open(key=row.path)
    except IngestError:
        raise Http404("The artifact is indexed but missing from storage.") from None
    inline = request.GET.get("download") != "1" and row.content_type in artifact_selectors.IMAGE_TYPES
    return download_response(opened, inline=inline)


def _read_head(key: str, limit: int) -> tuple[bytes, bool]:
    opened = artifact_selectors.artifact_open(key=key)
    try:
        data = opened.stream.read(limit + 1)
    finally:
        opened.stream.close()
    return data[:limit], len(data) > limit


@login_required
@require_GET
def run_artifact_preview(request: HttpRequest, run_id: int) -> HttpResponse:
    run, row, relative = _artifact_of(request, run_id)
    kind = artifact_selectors.preview_kind(row.path, row.content_type)
    context: dict[str, Any] = {
        "run": run, "team": run.team, "membership": run.membership, "row": row, "relative": relative,
        "kind": kind, "name": relative.rsplit("/", 1)[-1],
    }
    if kind in ("text", "table"):
        try:
            data, truncated = _read_head(row.path, TEXT_PREVIEW_BYTES)
        except IngestError:
            raise Http404("The artifact is indexed but missing from storage.") from None
        text = data.decode("utf-8", errors="replace")
        context["truncated"] = truncated
        if kind == "table":
            dialect = "excel-tab" if relative.lower().endswith(".tsv") else "excel"
            lines = text.splitlines()
            if truncated and lines:
                lines = lines[:-1]  # the last line may be cut in the middle
            rows = list(csv.reader(io.StringIO("\n".join(lines)), dialect=dialect))
            context["header"] = rows[0][:TABLE_COLUMNS] if rows else []
            context["rows"] = [r[:TABLE_COLUMNS] for r in rows[1 : TABLE_ROWS + 1]]
            context["more_rows"] = truncated or len(rows) > TABLE_ROWS + 1
        else:
            if relative.lower().endswith(".json") and not truncated:
                try:
                    text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
                except ValueError:
                    pass
            context["text"] = text
    template = "runs/_artifact_preview.html" if request.htmx else "runs/artifact.html"
    return render(request, template, context)
