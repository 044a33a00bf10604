"""Import from an existing MLflow tracking server over its REST API 2.0, incrementally and idempotently.

- Experiments, runs (status, times, user, tags, params) and full metric histories are copied into the
  source's team. Runs are keyed by (team, source='import:<name>', external_id=<mlflow run id>), so a
  re-run never duplicates; metric points are deduplicated by their unique constraint.
- Incremental: MLflowSource.cursor keeps, per MLflow experiment id, the newest start_time and end_time
  seen and the ids of runs that were still active. The next sync asks only for runs started or ended
  since then (MLflow runs have no update time) and re-reads the active ones. A run that comes back
  unchanged (same status, end time, tags and latest metric steps) costs no further request.
- Servers that reject the attribute filters get a full listing instead; the unchanged check keeps
  that correct, just slower. The same full listing (`full=True`, `import_mlflow --full`) picks up
  tags added to old, finished runs, which the time-based incremental query cannot see. The periodic
  task does such a full pass once a day per source (`mlflow_full_sync_due`); the time of the last
  completed full pass is kept in cursor["last_full_sync"] (ISO 8601), next to the per-experiment cursors.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import outbound
from ..errors import DomainError
from ..models import (
    TERMINAL_STATUSES,
    ArtifactFile,
    ImportedRunArtifacts,
    LatestMetric,
    MlflowSource,
    Param,
    Run,
    RunStatus,
    Team,
    TrackingExperiment,
    User,
)
from . import artifacts
from .runs import (
    IngestError,
    MetricPoint,
    ms_to_dt,
    run_create,
    run_log_metrics,
    run_log_params,
    run_set_tags,
    run_update,
)

API_PREFIX = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
ARTIFACT_MAX_BYTES = 100 * 1024**3  # the storage's own limit (ARTIFACT_MAX_FILE_SIZE) applies too
ARTIFACT_DEADLINE = 6 * 3600.0
RUNS_PAGE_SIZE = 1000  # MLflow's default for runs/search
HISTORY_PAGE_SIZE = 25000  # MLflow's largest get-history page
EXPERIMENTS_PAGE_SIZE = 1000
DEFAULT_TIMEOUT = 30.0
ACTIVE_STATUSES = (RunStatus.RUNNING, RunStatus.SCHEDULED)
FULL_SYNC_INTERVAL = timedelta(hours=24)
# Cursor key for the last full pass; MLflow experiment ids (the other keys) are numeric strings.
LAST_FULL_SYNC_KEY = "last_full_sync"
# Cursor key for the pass under way (the chunked import resumes from it).
PASS_KEY = "pass"
# MLflow error codes are enum names; anything else in that field is not shown.
ERROR_CODE_RE = re.compile(r"[A-Z][A-Z_]{0,63}")


class MlflowImportError(DomainError):
    """The server cannot be read (unreachable, bad credentials, not MLflow, bad experiment name)."""


def source_label(source: MlflowSource) -> str:
    return f"import:{source.name}"


def mlflow_last_full_sync(*, source: MlflowSource) -> datetime | None:
    """When the last complete full pass of `source` started, or None (never, or an unreadable value)."""
    value = (source.cursor or {}).get(LAST_FULL_SYNC_KEY)
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


def mlflow_full_sync_due(*, source: MlflowSource, now: datetime | None = None) -> bool:
    """The periodic sync is incremental, which never sees tags added later to old finished runs
    (e.g. a late `mlboard.card`); so once a day per source it lists everything instead."""
    last = mlflow_last_full_sync(source=source)
    now = now or timezone.now()
    # A time in the future (clock change) counts as stale rather than postponing full passes forever.
    return last is None or last > now or now - last >= FULL_SYNC_INTERVAL


# --- REST client ----------------------------------------------------------------------------------


class MlflowRestClient:
    """Minimal MLflow REST 2.0 reader over the guarded outbound client, with errors phrased for people.

    Error messages name the status and MLflow's error code only; the server's own text is never shown."""

    def __init__(self, tracking_uri: str, *, token: str = "", timeout: float = DEFAULT_TIMEOUT) -> None:
        uri = (tracking_uri or "").strip().rstrip("/")
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise MlflowImportError(
                f"Tracking URI {tracking_uri!r} is not an http(s) URL; use e.g. http://mlflow.example.com:5000."
            )
        self.uri = uri
        self.timeout = timeout
        headers = {"User-Agent": "mlboard-import"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = outbound.OutboundClient(headers=headers, read_timeout=timeout)

    def _call(self, method: str, endpoint: str, *, params: dict | None = None, body: dict | None = None) -> dict:
        return self._call_url(method, f"{self.uri}{API_PREFIX}/{endpoint}", params=params, body=body, what=endpoint)

    def _call_url(self, method: str, url: str, *, params: dict | None = None, body: dict | None = None,
                  what: str) -> dict:
        endpoint = what
        try:
            response = self.http.request(method, url, params=params, json=body)
        except outbound.OutboundRefused as exc:
            raise MlflowImportError(f"Calls to the MLflow server at {self.uri} are refused: {exc.message}") from None
        except outbound.OutboundError as exc:
            raise MlflowImportError(f"Cannot reach the MLflow server at {self.uri}: {exc.message}") from None
        if response.status in (401, 403):
            raise MlflowImportError(
                f"The MLflow server at {self.uri} rejected the credentials ({outbound.status_text(response.status)}). "
                "Check the token (--token) and that it may read these experiments."
            )
        payload: Any
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status >= 400:
            code = payload.get("error_code", "") if isinstance(payload, dict) else ""
            code = code if isinstance(code, str) and ERROR_CODE_RE.fullmatch(code) else ""
            if response.status == 404 and not code:
                raise MlflowImportError(
                    f"{self.uri} does not look like an MLflow tracking server "
                    f"(HTTP 404 for {urlsplit(url).path}). Check the tracking URI."
                )
            error = MlflowImportError(
                f"MLflow server error on {endpoint} ({outbound.status_text(response.status)}"
                f"{', ' + code if code else ''})."
            )
            error.error_code = code  # type: ignore[attr-defined]
            raise error
        if not isinstance(payload, dict):
            raise MlflowImportError(
                f"{self.uri} answered {endpoint} with something that is not MLflow JSON. Check the tracking URI."
            )
        return payload

    def _paged(self, method: str, endpoint: str, key: str, request: dict) -> Iterator[dict]:
        token = None
        seen_tokens: set[str] = set()
        while True:
            args = dict(request)
            if token:
                args["page_token"] = token
            if method == "GET":
                payload = self._call("GET", endpoint, params=args)
            else:
                payload = self._call("POST", endpoint, body=args)
            yield from payload.get(key) or []
            token = payload.get("next_page_token") or None
            if not token:
                return
            if token in seen_tokens:  # A broken server repeating a token would loop forever.
                raise MlflowImportError(f"MLflow server returned the same page token twice on {endpoint}.")
            seen_tokens.add(token)

    def experiments(self) -> Iterator[dict]:
        return self._paged("POST", "experiments/search", "experiments", {"max_results": EXPERIMENTS_PAGE_SIZE})

    def search_runs(self, experiment_id: str, *, filter_string: str = "") -> Iterator[dict]:
        request: dict[str, Any] = {"experiment_ids": [experiment_id], "max_results": RUNS_PAGE_SIZE}
        if filter_string:
            request["filter"] = filter_string
        return self._paged("POST", "runs/search", "runs", request)

    def get_run(self, run_id: str) -> dict | None:
        try:
            return self._call("GET", "runs/get", params={"run_id": run_id}).get("run")
        except MlflowImportError as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def list_artifacts(self, path: str) -> list[dict]:
        """One directory of the server's artifact proxy (`mlflow server --serve-artifacts`)."""
        payload = self._call_url("GET", f"{self.uri}{ARTIFACTS_API}", params={"path": path}, what="artifact listing")
        return [f for f in payload.get("files") or [] if isinstance(f, dict) and f.get("path")]

    def download_artifact(self, path: str, sink: Callable[[Iterator[bytes], int | None], Any]) -> Any:
        """Stream one file from the artifact proxy into `sink(chunks, length)`, never whole in memory."""
        return self._download(f"{self.uri}{ARTIFACTS_API}/{quote(path)}", None, path, sink)

    def list_run_artifacts(self, run_id: str, path: str) -> list[dict]:
        """One directory of a run's artifacts through the tracking API (paths relative to the run's
        root). The server reads its store itself (s3://, file://, ...): the way to runs it does not proxy."""
        params = {"run_id": run_id, **({"path": path} if path else {})}
        payload = self._call("GET", "artifacts/list", params=params)
        return [f for f in payload.get("files") or [] if isinstance(f, dict) and f.get("path")]

    def download_run_artifact(self, run_id: str, path: str, sink: Callable[[Iterator[bytes], int | None], Any]) -> Any:
        """One file of a run through the server's `get-artifact` route (what its web UI downloads with)."""
        return self._download(f"{self.uri}/get-artifact", {"run_id": run_id, "path": path}, path, sink)

    def _download(self, url: str, params: dict | None, path: str,
                  sink: Callable[[Iterator[bytes], int | None], Any]) -> Any:
        try:
            with self.http.stream("GET", url, params=params) as response:
                if response.status_code != 200:
                    raise MlflowImportError(
                        f"Artifact {path!r}: the server answered {outbound.status_text(response.status_code)}."
                    )
                declared = response.headers.get("Content-Length", "")
                chunks = self.http.iter_body(response, max_bytes=ARTIFACT_MAX_BYTES, chunk_size=1 << 20,
                                             deadline=ARTIFACT_DEADLINE)
                return sink(chunks, int(declared) if declared.isdigit() else None)
        except outbound.OutboundRefused as exc:
            raise MlflowImportError(f"Calls to the MLflow server at {self.uri} are refused: {exc.message}") from None
        except outbound.OutboundError as exc:
            raise MlflowImportError(f"Cannot reach the MLflow server at {self.uri}: {exc.message}") from None

    def metric_history(self, run_id: str, key: str) -> Iterator[dict]:
        request = {"run_id": run_id, "metric_key": key, "max_results": HISTORY_PAGE_SIZE}
        return self._paged("GET", "metrics/get-history", "metrics", request)


# --- Progress and summary -------------------------------------------------------------------------


class SyncProgress(Protocol):
    def experiment_started(self, name: str, total_runs: int) -> None: ...
    def run_done(self, run_id: str, outcome: str) -> None: ...
    def experiment_finished(self, name: str) -> None: ...


class _NoProgress:
    def experiment_started(self, name: str, total_runs: int) -> None:
        pass

    def run_done(self, run_id: str, outcome: str) -> None:
        pass

    def experiment_finished(self, name: str) -> None:
        pass


@dataclass
class SyncSummary:
    experiments: int = 0
    runs_created: int = 0
    runs_updated: int = 0
    runs_unchanged: int = 0
    metric_points: int = 0
    problems: list[str] = field(default_factory=list)

    def as_text(self) -> str:
        text = (
            f"{self.experiments} experiment(s): {self.runs_created} new run(s), {self.runs_updated} updated, "
            f"{self.runs_unchanged} unchanged; {self.metric_points} new metric point(s)."
        )
        if self.problems:
            text += f" {len(self.problems)} run(s) could not be imported."
        return text


# --- Parsing MLflow JSON --------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    # MLflow serialises int64 as numbers, protobuf's JSON as strings; accept both.
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float:
    if isinstance(value, str):
        specials = {"nan": math.nan, "infinity": math.inf, "-infinity": -math.inf, "inf": math.inf, "-inf": -math.inf}
        if value.strip().lower() in specials:
            return specials[value.strip().lower()]
    return float(value)


def _pairs(items: Any) -> dict[str, str]:
    return {str(i["key"]): "" if i.get("value") is None else str(i["value"]) for i in items or [] if "key" in i}


def _run_id(run: dict) -> str:
    info = run.get("info") or {}
    return str(info.get("run_id") or info.get("run_uuid") or "")


def _status(value: Any) -> str:
    text = str(value or RunStatus.RUNNING).upper()
    return text if text in RunStatus.values else RunStatus.FAILED


def _dt_ms(value: Any) -> datetime | None:
    ms = _int(value)
    return ms_to_dt(ms) if ms else None


# --- Sync -----------------------------------------------------------------------------------------


@dataclass
class _Context:
    source: MlflowSource
    team: Team
    client: MlflowRestClient
    label: str
    progress: SyncProgress
    summary: SyncSummary
    users: dict[str, User | None] = field(default_factory=dict)
    filters_supported: bool = True
    full: bool = False
    # The pass being worked on (cursor[PASS_KEY]); chunk limits: runs that needed work, and seconds.
    state: dict[str, Any] = field(default_factory=dict)
    max_runs: int | None = None
    stop_at: float | None = None
    work: int = 0

    def chunk_full(self) -> bool:
        if self.max_runs is not None and self.work >= self.max_runs:
            return True
        return self.stop_at is not None and time.monotonic() >= self.stop_at


class _ChunkFull(Exception):
    """The chunk's budget is spent; the pass state says where the next chunk goes on."""


@dataclass
class ChunkResult:
    done: bool
    summary: SyncSummary
    pass_id: str = ""
    seq: int = 0
    busy: bool = False


def mlflow_sync_pass(*, source: MlflowSource) -> dict[str, Any] | None:
    """The unfinished pass of `source` (id, seq, full, started_at, touched_at, ...), or None."""
    state = (source.cursor or {}).get(PASS_KEY)
    return state if isinstance(state, dict) and state.get("id") else None


def _summary_from(state: dict[str, Any]) -> SyncSummary:
    saved = state.get("summary") or {}
    return SyncSummary(
        experiments=saved.get("experiments", 0), runs_created=saved.get("runs_created", 0),
        runs_updated=saved.get("runs_updated", 0), runs_unchanged=saved.get("runs_unchanged", 0),
        metric_points=saved.get("metric_points", 0), problems=list(saved.get("problems", [])),
    )


def _save_state(ctx: _Context) -> None:
    summary = ctx.summary
    ctx.state["summary"] = {
        "experiments": summary.experiments, "runs_created": summary.runs_created,
        "runs_updated": summary.runs_updated, "runs_unchanged": summary.runs_unchanged,
        "metric_points": summary.metric_points, "problems": summary.problems[:100],
    }
    ctx.state["touched_at"] = timezone.now().isoformat()
    ctx.source.cursor = {**(ctx.source.cursor or {}), PASS_KEY: ctx.state}
    MlflowSource.objects.filter(pk=ctx.source.pk).update(cursor=ctx.source.cursor)


def mlflow_source_sync(
    *,
    source: MlflowSource,
    progress: SyncProgress | None = None,
    client: MlflowRestClient | None = None,
    full: bool = False,
) -> SyncSummary:
    """Import everything new from `source` in one go; errors that stop the sync are stored in last_error
    and raised. (The periodic task imports in chunks instead, `mlflow_source_sync_chunk`.)

    `full` lists every run instead of only those started/ended since the cursor; a full pass that
    completes records its start time in cursor["last_full_sync"].
    """
    return mlflow_source_sync_chunk(source=source, progress=progress, client=client, full=full).summary


def mlflow_source_sync_chunk(
    *,
    source: MlflowSource,
    progress: SyncProgress | None = None,
    client: MlflowRestClient | None = None,
    full: bool = False,
    max_runs: int | None = None,
    max_seconds: float | None = None,
) -> ChunkResult:
    """One bounded step of a pass: continues the unfinished pass (or starts one), imports until
    `max_runs` runs needed work or `max_seconds` passed, and saves where it stopped in
    cursor["pass"]. Every step is idempotent, so a step that dies is simply done again.

    The per-experiment cursors advance only when an experiment is complete, capped at the pass's
    start, so runs that appear while a pass is under way are seen by the next one."""
    state = mlflow_sync_pass(source=source)
    if state is None or (full and not state.get("full")):
        state = {"id": uuid.uuid4().hex, "seq": 0, "full": full, "started_at": timezone.now().isoformat(), "done": []}
    state["seq"] = int(state.get("seq", 0)) + 1
    summary = _summary_from(state)
    try:
        ctx = _Context(
            source=source,
            team=source.team,
            client=client or MlflowRestClient(source.tracking_uri, token=source.token),
            label=source_label(source),
            progress=progress or _NoProgress(),
            summary=summary,
            full=bool(state.get("full")),
            state=state,
            max_runs=max_runs,
            stop_at=time.monotonic() + max_seconds if max_seconds else None,
        )
        try:
            for experiment in _selected_experiments(ctx):
                if str(experiment.get("experiment_id", "")) in state["done"]:
                    continue
                _sync_experiment(ctx, experiment)
                summary.experiments += 1
            _copy_artifacts(ctx)
        except _ChunkFull:
            return ChunkResult(done=False, summary=summary, pass_id=state["id"], seq=state["seq"])
    except MlflowImportError as exc:
        MlflowSource.objects.filter(pk=source.pk).update(last_error=exc.message)
        source.last_error = exc.message
        raise
    source.last_synced_at = timezone.now()
    source.last_error = "\n".join(summary.problems[:20])
    if len(summary.problems) > 20:
        source.last_error += f"\n… and {len(summary.problems) - 20} more."
    cursor = {k: v for k, v in (source.cursor or {}).items() if k != PASS_KEY}
    if state.get("full"):
        # The start time, not the end: a tag set while the pass ran may have been missed by it.
        # Runs that failed to import are in the experiments' "active" lists, so they are retried anyway.
        cursor[LAST_FULL_SYNC_KEY] = state["started_at"]
    source.cursor = cursor
    MlflowSource.objects.filter(pk=source.pk).update(
        last_synced_at=source.last_synced_at, last_error=source.last_error, cursor=cursor
    )
    return ChunkResult(done=True, summary=summary, pass_id=state["id"], seq=state["seq"])


def _touched_recently(state: dict[str, Any], now: datetime) -> bool:
    try:
        touched = datetime.fromisoformat(state.get("touched_at") or state.get("started_at") or "")
    except ValueError:
        return False
    # A live chain touches its pass at least once per chunk, and a chunk ends well inside the time limit.
    return timedelta(0) <= now - touched < timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)


def mlflow_source_sync_step(*, source_id: int, pass_id: str | None = None, seq: int | None = None) -> dict | None:
    """One chunk of the periodic import, for the Celery task. The source row is locked for the chunk
    (a duplicate delivery finds it busy and stops) and the chunk is one transaction, so a worker killed
    mid-chunk leaves nothing half-done: the redelivered task does the same chunk again.

    `pass_id`/`seq` name the chunk a chain asked for; a message for an older chunk (a duplicate chain)
    stops. Without them (beat tick, "Sync now") a pass under way is left to its chain unless it stalled.
    Returns a summary dict with "next": (pass_id, seq) when another chunk should follow."""
    with transaction.atomic():
        source = (
            MlflowSource.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("team").filter(pk=source_id, enabled=True).first()
        )
        if source is None:
            exists = MlflowSource.objects.filter(pk=source_id, enabled=True).exists()
            return {"skipped": "busy"} if exists else None
        state = mlflow_sync_pass(source=source)
        if pass_id is None:
            if state is not None and _touched_recently(state, timezone.now()):
                return {"skipped": "a pass is under way"}
        elif state is None or state.get("id") != pass_id or int(state.get("seq", 0)) != seq:
            return {"skipped": "stale chain"}
        full = bool(state["full"]) if state is not None else mlflow_full_sync_due(source=source)
        try:
            chunk = mlflow_source_sync_chunk(
                source=source, full=full, max_runs=settings.MLFLOW_IMPORT_CHUNK_RUNS,
                max_seconds=settings.MLFLOW_IMPORT_CHUNK_SECONDS,
            )
        except MlflowImportError as exc:
            # Committed with what this chunk stored; the pass stays, and a later tick resumes it.
            return {"error": exc.message, "full": full}
    summary = chunk.summary
    result: dict[str, Any] = {
        "full": full, "done": chunk.done, "experiments": summary.experiments,
        "runs_created": summary.runs_created, "runs_updated": summary.runs_updated,
        "runs_unchanged": summary.runs_unchanged, "metric_points": summary.metric_points,
        "problems": len(summary.problems),
    }
    if not chunk.done:
        result["next"] = (chunk.pass_id, chunk.seq)
    return result


def _selected_experiments(ctx: _Context) -> list[dict]:
    experiments = [e for e in ctx.client.experiments() if e.get("lifecycle_stage", "active") == "active"]
    wanted = [line.strip() for line in ctx.source.experiment_names.splitlines() if line.strip()]
    if not wanted:
        return experiments
    by_name = {e.get("name"): e for e in experiments}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        available = ", ".join(sorted(str(n) for n in by_name)[:15]) or "none"
        raise MlflowImportError(
            f"No experiment named {', '.join(repr(m) for m in missing)} on {ctx.client.uri}. Available: {available}."
        )
    return [by_name[name] for name in wanted]


def _tracking_experiment(ctx: _Context, data: dict) -> TrackingExperiment:
    external_id = str(data.get("experiment_id", ""))
    name = str(data.get("name") or f"experiment {external_id}")[:500]
    experiment = TrackingExperiment.objects.filter(team=ctx.team, source=ctx.label, external_id=external_id).first()
    if experiment is None:
        experiment, _ = TrackingExperiment.objects.get_or_create(
            team=ctx.team, source=ctx.label, name=name, defaults={"external_id": external_id}
        )
    fields = {
        "name": name,
        "external_id": external_id,
        "artifact_location": str(data.get("artifact_location") or "")[:1000],
        "lifecycle_stage": str(data.get("lifecycle_stage") or "active")[:10],
        "tags": _pairs(data.get("tags")),
    }
    created = _dt_ms(data.get("creation_time"))
    if created:
        fields["created_at"] = created
    changed = [k for k, v in fields.items() if getattr(experiment, k) != v]
    if changed:
        for key in changed:
            setattr(experiment, key, fields[key])
        experiment.save(update_fields=[*changed, "updated_at"])
    return experiment


def _runs_to_consider(ctx: _Context, experiment_id: str, cursor: dict) -> list[dict]:
    """Runs new or changed since the cursor, plus the ones that were still active last time."""
    if not cursor or ctx.full:
        return list(ctx.client.search_runs(experiment_id))
    runs: dict[str, dict] = {}
    if ctx.filters_supported:
        try:
            for clause in (
                f"attributes.start_time >= {int(cursor.get('start_time', 0))}",
                f"attributes.end_time >= {int(cursor.get('end_time', 0))}",
            ):
                for run in ctx.client.search_runs(experiment_id, filter_string=clause):
                    runs[_run_id(run)] = run
        except MlflowImportError as exc:
            if getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
                raise
            ctx.filters_supported = False
    if not ctx.filters_supported:
        return list(ctx.client.search_runs(experiment_id))
    for run_id in cursor.get("active", []):
        if run_id not in runs:
            run = ctx.client.get_run(run_id)
            if run is not None:
                runs[run_id] = run
    return list(runs.values())


def _sync_experiment(ctx: _Context, data: dict) -> None:
    experiment_id = str(data.get("experiment_id", ""))
    experiment = _tracking_experiment(ctx, data)
    cursor = dict((ctx.source.cursor or {}).get(experiment_id) or {})
    state = ctx.state
    resuming = state.get("experiment") == experiment_id
    # Sorted by id, so a chunk can say "everything up to this id is done".
    remote_runs = sorted((r for r in _runs_to_consider(ctx, experiment_id, cursor) if _run_id(r)), key=_run_id)
    if resuming:
        remote_runs = [r for r in remote_runs if _run_id(r) > state.get("after", "")]
        start_cursor, end_cursor = int(state.get("start_time", 0)), int(state.get("end_time", 0))
        active = list(state.get("active", []))
    else:
        start_cursor, end_cursor = int(cursor.get("start_time", 0)), int(cursor.get("end_time", 0))
        active = []
    ctx.progress.experiment_started(experiment.name, len(remote_runs))
    ids = [_run_id(r) for r in remote_runs]
    local = {r.external_id: r for r in Run.objects.filter(team=ctx.team, source=ctx.label, external_id__in=ids)}
    latest: dict[int, dict[str, tuple[int, int]]] = {}
    for run_pk, key, step, ts in LatestMetric.objects.filter(run__in=list(local.values())).values_list(
        "run_id", "key", "step", "timestamp"
    ):
        latest.setdefault(run_pk, {})[key] = (step, ts)

    after = state.get("after", "") if resuming else ""
    for remote in remote_runs:
        if ctx.chunk_full():
            state.update(experiment=experiment_id, after=after, start_time=start_cursor, end_time=end_cursor,
                         active=sorted(set(active)))
            _save_state(ctx)
            raise _ChunkFull
        run_id = _run_id(remote)
        info = remote.get("info") or {}
        start_cursor = max(start_cursor, _int(info.get("start_time")) or 0)
        end_cursor = max(end_cursor, _int(info.get("end_time")) or 0)
        if _status(info.get("status")) in ACTIVE_STATUSES:
            active.append(run_id)
        try:
            outcome = _sync_run(ctx, experiment, remote, local.get(run_id), latest)
        except (IngestError, MlflowImportError, IntegrityError) as exc:
            if isinstance(exc, MlflowImportError) and _is_fatal(exc):
                raise
            # IntegrityError: another sync of this source stored the run at the same moment.
            message = exc.message if isinstance(exc, DomainError) else "stored concurrently by another sync"
            outcome = "failed"
            ctx.summary.problems.append(f"Run {run_id} in {experiment.name!r}: {message}")
            active.append(run_id)  # try again next time
        if outcome != "unchanged":
            ctx.work += 1
        after = run_id
        ctx.progress.run_done(run_id, outcome)
    # Runs that start or end while a pass is under way may sort before where it stood; capping at
    # the pass's start lets the next pass's time filter see them (at worst a few are re-read, unchanged).
    started_ms = int(datetime.fromisoformat(state["started_at"]).timestamp() * 1000) if state.get("started_at") else 0
    if started_ms:
        start_cursor = max(int(cursor.get("start_time", 0)), min(start_cursor, started_ms))
        end_cursor = max(int(cursor.get("end_time", 0)), min(end_cursor, started_ms))
    # Persist per experiment so an interruption later keeps the work done so far.
    cursors = dict(ctx.source.cursor or {})
    cursors[experiment_id] = {"start_time": start_cursor, "end_time": end_cursor, "active": sorted(set(active))}
    ctx.source.cursor = cursors
    for key in ("experiment", "after", "start_time", "end_time", "active"):
        state.pop(key, None)
    state.setdefault("done", []).append(experiment_id)
    _save_state(ctx)
    ctx.progress.experiment_finished(experiment.name)


def _is_fatal(exc: MlflowImportError) -> bool:
    # A per-run server error (e.g. one history fails) is recorded and retried; connectivity is not.
    return not getattr(exc, "error_code", "")


def _user_for(ctx: _Context, name: str) -> User | None:
    if not name:
        return None
    if name not in ctx.users:
        ctx.users[name] = User.objects.filter(username=name, memberships__team=ctx.team).first()
    return ctx.users[name]


def _unchanged(local: Run, remote: dict, latest: dict[str, tuple[int, int]]) -> bool:
    info, data = remote.get("info") or {}, remote.get("data") or {}
    if local.status != _status(info.get("status")) or local.status not in TERMINAL_STATUSES:
        return False
    if local.end_time != _dt_ms(info.get("end_time")):
        return False
    tags = _pairs(data.get("tags"))
    if any(local.tags.get(k) != v for k, v in tags.items()):
        return False
    for metric in data.get("metrics") or []:
        if latest.get(metric.get("key")) != (_int(metric.get("step")) or 0, _int(metric.get("timestamp")) or 0):
            return False
    return True


def _history(ctx: _Context, run_id: str, keys: list[str]) -> list[MetricPoint]:
    points: list[MetricPoint] = []
    for key in keys:
        for m in ctx.client.metric_history(run_id, key):
            try:
                value = _float(m.get("value", "nan"))
            except (TypeError, ValueError):
                raise IngestError(f"Metric {key!r} has an unreadable value {m.get('value')!r}.") from None
            step, timestamp = _int(m.get("step")) or 0, _int(m.get("timestamp")) or 0
            points.append(MetricPoint(key=key, value=value, step=step, timestamp=timestamp))
    return points


def _sync_run(
    ctx: _Context,
    experiment: TrackingExperiment,
    remote: dict,
    local: Run | None,
    latest: dict[int, dict[str, tuple[int, int]]],
) -> str:
    run_id = _run_id(remote)
    info, data = remote.get("info") or {}, remote.get("data") or {}
    if local is not None and _unchanged(local, remote, latest.get(local.pk, {})):
        ctx.summary.runs_unchanged += 1
        return "unchanged"
    tags = _pairs(data.get("tags"))
    params = _pairs(data.get("params"))
    status = _status(info.get("status"))
    end_time = _dt_ms(info.get("end_time"))
    # The mlflow.runName tag is what MLflow itself displays; run_name mirrors it on current servers.
    name = str(tags.get("mlflow.runName") or info.get("run_name") or "")
    known = latest.get(local.pk, {}) if local is not None else {}
    keys = sorted(
        {
            str(m["key"])
            for m in data.get("metrics") or []
            if "key" in m and known.get(m["key"]) != (_int(m.get("step")) or 0, _int(m.get("timestamp")) or 0)
        }
    )
    # Network first, then one short transaction per run: the write never waits on the server, and the
    # verdict evaluation enqueued on commit sees the run with all its metrics.
    points = _history(ctx, run_id, keys)
    if local is None:
        with transaction.atomic():
            user_name = str(info.get("user_id") or tags.get("mlflow.user") or "")
            run = run_create(
                team=ctx.team,
                user=_user_for(ctx, user_name),
                experiment=experiment,
                name=name,
                status=status,
                start_time=_dt_ms(info.get("start_time")),
                end_time=end_time,
                tags=tags,
                params=params,
                source=ctx.label,
                external_id=run_id,
            )
            # Artifacts are copied here, under the team's own space, wherever the source stored them.
            local_uri = f"{artifacts.SCHEME}:/{artifacts.team_prefix(ctx.team.pk)}/{experiment.pk}/{run_id}/artifacts"
            extra = {
                "artifact_uri": local_uri,
                "lifecycle_stage": str(info.get("lifecycle_stage") or "active")[:10],
            }
            if not run.user_name and user_name:
                extra["user_name"] = user_name[:150]
            Run.objects.filter(pk=run.pk).update(**extra)
            added = run_log_metrics(run=run, points=points)
            _note_artifacts(ctx, run, info, status)
        ctx.summary.runs_created += 1
        ctx.summary.metric_points += added
        return "created"
    with transaction.atomic():
        run = local
        changed = False
        changed_tags = {k: v for k, v in tags.items() if local.tags.get(k) != v}
        if changed_tags:
            run = run_set_tags(run=run, tags=changed_tags)
            changed = True
        existing = set(Param.objects.filter(run=run).values_list("key", flat=True))
        new_params = {k: v for k, v in params.items() if k not in existing}
        if new_params:
            run_log_params(run=run, params=new_params)
            changed = True
        if run.status != status or run.end_time != end_time or (name and run.name != name):
            run = run_update(
                run=run, status=status if run.status != status else None, end_time=end_time,
                name=name if name and run.name != name else None,
            )
            changed = True
        added = run_log_metrics(run=run, points=points)
        _note_artifacts(ctx, run, info, status)
    ctx.summary.metric_points += added
    if changed or added:
        ctx.summary.runs_updated += 1
        return "updated"
    ctx.summary.runs_unchanged += 1
    return "unchanged"


# --- Artifacts ------------------------------------------------------------------------------------


def _proxied_root(info: dict) -> str | None:
    """The path on the server's artifact proxy for a run whose artifact URI is `mlflow-artifacts:`;
    None for artifacts the client wrote elsewhere itself (s3://, file://, ...), which are read through
    the run-scoped tracking API instead. A host in the URI is ignored: only the source's own server is
    ever asked."""
    uri = str(info.get("artifact_uri") or "")
    if not uri.startswith(artifacts.SCHEME + ":"):
        return None
    path = urlsplit(uri).path.strip("/")
    try:
        return artifacts.clean_path(path) or None
    except IngestError:
        return None


def _note_artifacts(ctx: _Context, run: Run, info: dict, status: str) -> None:
    """A finished run's artifacts are copied once (the copy step of the pass does it)."""
    if status not in TERMINAL_STATUSES:
        return
    ImportedRunArtifacts.objects.get_or_create(
        run=run, defaults={"source": ctx.source, "remote_root": _proxied_root(info) or ""}
    )


def _copy_artifacts(ctx: _Context) -> None:
    """Copy pending runs' artifacts, file by file, streamed; stops (resumably) when the chunk is full."""
    pending = (
        ImportedRunArtifacts.objects.filter(source=ctx.source, done_at__isnull=True)
        .select_related("run").order_by("pk")
    )
    for copy in pending:
        if ctx.chunk_full():
            _save_state(ctx)
            raise _ChunkFull
        _copy_run_artifacts(ctx, copy)


def _copy_run_artifacts(ctx: _Context, copy: ImportedRunArtifacts) -> None:
    run = copy.run
    local_root = artifacts.run_artifact_root(run)
    if local_root is None:
        ImportedRunArtifacts.objects.filter(pk=copy.pk).update(done_at=timezone.now(), error="No local artifact root.")
        return
    have = dict(ArtifactFile.objects.filter(path__startswith=local_root + "/").values_list("path", "size"))
    client, remote = ctx.client, copy.remote_root
    if remote:  # behind the server's artifact proxy
        def listing(relative: str) -> list[dict]:
            return client.list_artifacts(f"{remote}/{relative}".rstrip("/"))

        def fetch(relative: str, sink: Callable[[Iterator[bytes], int | None], Any]) -> Any:
            return client.download_artifact(f"{remote}/{relative}", sink)
    else:  # a store the server does not proxy: its run-scoped tracking API reads it for us
        def listing(relative: str) -> list[dict]:
            return client.list_run_artifacts(run.external_id, relative)

        def fetch(relative: str, sink: Callable[[Iterator[bytes], int | None], Any]) -> Any:
            return client.download_run_artifact(run.external_id, relative, sink)

    files = size = 0
    directories = [""]
    while directories:
        relative = directories.pop()
        try:
            entries = listing(relative)
        except MlflowImportError as exc:
            if _is_fatal(exc):
                raise
            # The server cannot list them (no access to its store, an older server): said once, not retried.
            ctx.summary.problems.append(f"Run {run.external_id}: artifacts not copied: {exc.message}")
            ImportedRunArtifacts.objects.filter(pk=copy.pk).update(done_at=timezone.now(), error=exc.message[:300])
            return
        for entry in entries:
            name = str(entry["path"]).rsplit("/", 1)[-1]
            child = f"{relative}/{name}".strip("/")
            try:
                child = artifacts.clean_path(child)
            except IngestError:
                ctx.summary.problems.append(f"Run {run.external_id}: artifact {child!r} has an unsafe path; skipped.")
                continue
            if entry.get("is_dir"):
                directories.append(child)
                continue
            key = f"{local_root}/{child}"
            expected = _int(entry.get("file_size"))
            if key in have and (expected is None or have[key] == expected):
                files, size = files + 1, size + have[key]
                continue  # copied before (an interrupted copy resumes here)
            if ctx.chunk_full():
                _save_state(ctx)
                raise _ChunkFull
            try:
                stored = fetch(
                    child,
                    lambda chunks, length, key=key: artifacts.artifact_upload(
                        team=ctx.team, key=key, chunks=chunks, length=length),
                )
            except IngestError as exc:
                ctx.summary.problems.append(f"Run {run.external_id}: artifact {child!r}: {exc.message}")
                continue
            except MlflowImportError as exc:
                if _is_fatal(exc) and "answered" not in exc.message:
                    raise
                ctx.summary.problems.append(f"Run {run.external_id}: {exc.message}")
                continue
            ctx.work += 1
            files, size = files + 1, size + stored  # artifact_upload returns the stored size
    ImportedRunArtifacts.objects.filter(pk=copy.pk).update(done_at=timezone.now(), files=files, size=size, error="")


@transaction.atomic
def mlflow_source_upsert(
    *,
    team: Team,
    name: str,
    tracking_uri: str | None = None,
    token: str | None = None,
    experiment_names: list[str] | None = None,
) -> MlflowSource:
    """Create or update a source; only the given settings change, so a re-run keeps its cursor."""
    name = (name or "").strip()
    if not name:
        raise DomainError("Give the MLflow source a name.", field="name")
    source = MlflowSource.objects.filter(team=team, name=name).first()
    if source is None:
        if not tracking_uri:
            raise DomainError("A tracking URI is required for a new MLflow source.", field="tracking_uri")
        source = MlflowSource(team=team, name=name[:80])
    if tracking_uri is not None:
        MlflowRestClient(tracking_uri)  # validates the URL shape
        problem = outbound.url_problem(tracking_uri.strip())
        if problem:
            raise DomainError(f"The tracking URI cannot be used: {problem}", field="tracking_uri")
        new_uri = tracking_uri.strip()
        if source.pk and source.token and token is None and uri_origin(source.tracking_uri) != uri_origin(new_uri):
            source.token = ""  # a token given for one server is not sent to another
        source.tracking_uri = new_uri
    if token is not None:
        source.token = token
    if experiment_names is not None:
        source.experiment_names = "\n".join(n.strip() for n in experiment_names if n.strip())
    source.save()
    return source


def uri_origin(uri: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URI: a stored token belongs to one origin."""
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower().rstrip("."), port or {"http": 80, "https": 443}.get(scheme)


def default_source_name(tracking_uri: str) -> str:
    return (urlsplit(tracking_uri).netloc or "mlflow").split("@")[-1][:80]

