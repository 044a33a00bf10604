"""Run ingestion, shared by the REST API, the MLflow-compatible endpoint and the MLflow importer.

Semantics follow MLflow's tracking store: params are immutable, metric points are
(key, value, step, timestamp) and a retried batch adds no duplicates, NaN/Inf are kept,
names are checked with MLflow's rules so anything MLflow accepts is accepted here and the reverse.

Logging is the hot path: a batch of any size costs a fixed handful of statements (one
INSERT ... ON CONFLICT DO NOTHING for the points, one upsert for the latest values).
"""

from __future__ import annotations

import json
import math
import posixpath
import random
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from ..errors import DomainError, WriterRefused
from ..inputs import INT64_MAX, INT64_MIN
from ..models import (
    TERMINAL_STATUSES,
    Card,
    CardKind,
    CardRun,
    EventKind,
    LatestMetric,
    LinkVia,
    Metric,
    Param,
    Run,
    RunStatus,
    Stage,
    Team,
    TrackingExperiment,
    Trigger,
    User,
)
from ..selectors.metrics import series_version_bump
from . import prepared_cursor
from .cards import card_flag, card_move_to_stage, event_record
from .metric_blocks import metric_blocks_add
from .metric_blocks import postgresql_upsert_cte as metric_blocks_upsert_cte
from .tokens import token_writer_sql
from .verdicts import hypothesis_freeze, verdict_progress

CARD_TAG = "mlboard.card"
RUN_NAME_TAG = "mlflow.runName"
# Tags that fill first-class reproducibility fields (MLflow's own names where they exist).
CODE_VERSION_TAGS = ("mlflow.source.git.commit", "mlboard.code_version", "git_commit")
DATA_VERSION_TAGS = ("mlboard.data_version", "data_version", "dataset_version", "mlflow.data.version")
SEED_KEYS = ("seed", "random_seed", "mlboard.seed")
TRIGGER_TAG = "mlboard.trigger"
ENV_TAG_PREFIXES = ("mlflow.source.", "mlflow.user", "mlboard.env.")
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_EXPERIMENT_NAME_LENGTH = 500
DEFAULT_EXPERIMENT_NAME = "Default"
# MLflow's SQL store keeps +/-Inf as the largest finite double. mlboard keeps the infinity itself (a
# diverged run is evidence, and the largest double would read as a finite value to the statistics
# and charts) and answers the MLflow API with the largest double (mlflow_api/http.json_number), so a
# script reads back exactly what `mlflow server` would give it.
FLOAT_MAX = 1.7976931348623157e308
ACTIVE = "active"
DELETED = "deleted"

# MLflow's rule for metric, param and tag names: these characters only, and the name must be a
# normalised relative path (names become file paths in some stores).
_KEY_CHARS = re.compile(r"^[/\w.\- :]*$")


class IngestError(DomainError):
    """Bad tracking input; `mlflow_code` is the MLflow error_code to report."""

    def __init__(self, message: str, *, mlflow_code: str = "INVALID_PARAMETER_VALUE", field: str | None = None):
        super().__init__(message, field=field)
        self.mlflow_code = mlflow_code
        if mlflow_code == "RESOURCE_DOES_NOT_EXIST":
            self.status_code = 404
            self.code = "not_found"
        elif mlflow_code == "RESOURCE_ALREADY_EXISTS":
            self.code = "already_exists"


class MetricPoint(NamedTuple):
    """One point to log. A NamedTuple (not a dataclass): batches build thousands of these per request."""

    key: str
    value: float
    step: int = 0
    timestamp: int | None = None  # ms since epoch; now if omitted


def now_ms() -> int:
    return int(time.time() * 1000)


def ms_to_dt(ms: int | None) -> datetime | None:
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        raise IngestError(f"The time {ms} (milliseconds since the epoch) is out of range.") from None


def dt_to_ms(value: datetime | None) -> int | None:
    return int(value.timestamp() * 1000) if value else None


def _check_key(key: Any, what: str) -> str:
    if not isinstance(key, str) or not key:
        raise IngestError(f"{what} key must be a non-empty string, got {key!r}.")
    if len(key) > MAX_KEY_LENGTH:
        raise IngestError(f"{what} key '{key[:40]}…' is longer than {MAX_KEY_LENGTH} characters.")
    if not _KEY_CHARS.match(key):
        raise IngestError(
            f"Invalid {what.lower()} key {key!r}: names may only contain letters, digits, underscores (_), "
            "dashes (-), periods (.), spaces ( ), colons (:) and slashes (/)."
        )
    normalised = posixpath.normpath(key)
    if normalised != key or normalised == "." or normalised.startswith(("..", "/")):
        raise IngestError(
            f"Invalid {what.lower()} key {key!r}: it would resolve to {normalised!r} as a path "
            "(no leading or doubled '/', no '.' or '..' parts)."
        )
    return key


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise IngestError(f"Metric {key!r} value must be a number, got {value!r}.")
    if isinstance(value, str):
        lowered = value.strip().lower()
        specials = {"nan": math.nan, "infinity": math.inf, "inf": math.inf, "-infinity": -math.inf, "-inf": -math.inf}
        if lowered in specials:
            return specials[lowered]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise IngestError(f"Metric {key!r} value must be a number, got {value!r}.") from None


def _coerce_int(value: Any, what: str, key: str) -> int:
    if isinstance(value, bool):
        raise IngestError(f"Metric {key!r}: {what} must be an integer, got {value!r}.")
    try:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            number = int(value)
        else:
            number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise IngestError(f"Metric {key!r}: {what} must be an integer, got {str(value)[:40]!r}.") from None
    if not INT64_MIN <= number <= INT64_MAX:
        raise IngestError(f"Metric {key!r}: {what} {number} is out of range for a 64-bit integer.")
    return number


_ADJECTIVES = (
    "amber", "bold", "brisk", "calm", "clever", "crisp", "daring", "eager", "fuzzy", "gentle", "glad", "keen",
    "lucky", "merry", "nimble", "polite", "quiet", "rapid", "sharp", "shy", "steady", "sunny", "swift", "tidy",
    "vivid", "warm", "wise", "witty", "zesty", "plucky",
)
_NOUNS = (
    "otter", "heron", "lynx", "falcon", "badger", "panda", "koala", "finch", "gecko", "marten", "ibis", "bison",
    "orca", "puffin", "stoat", "wren", "yak", "zebra", "tapir", "quokka", "mole", "newt", "owl", "seal",
)


def run_name_generate() -> str:
    """A memorable default name (like MLflow's) so unnamed runs are still easy to tell apart."""
    rng = random.SystemRandom()
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}-{rng.randint(100, 999)}"


def _derive_fields(run: Run, *, params: Mapping[str, str] | None = None) -> None:
    """Fill code/data version, seed, trigger and environment from tags and params."""
    tags = run.tags or {}
    for key in CODE_VERSION_TAGS:
        if tags.get(key):
            run.code_version = str(tags[key])[:64]
            break
    for key in DATA_VERSION_TAGS:
        if tags.get(key):
            run.data_version = str(tags[key])[:200]
            break
    sources = [tags, params or {}]
    if run.seed is None:
        for source in sources:
            for key in SEED_KEYS:
                if key in source:
                    try:
                        run.seed = int(float(source[key]))
                    except (TypeError, ValueError, OverflowError):
                        pass
                    break
            if run.seed is not None:
                break
    trigger = str(tags.get(TRIGGER_TAG, "")).lower()
    if trigger in Trigger.values:
        run.trigger = trigger
    env = dict(run.environment or {})
    for key, value in tags.items():
        if key.startswith(ENV_TAG_PREFIXES) and key not in CODE_VERSION_TAGS:
            env[key] = value
    run.environment = env
    if tags.get(RUN_NAME_TAG) and not run.name:
        run.name = str(tags[RUN_NAME_TAG])[:250]
    if tags.get("mlflow.user") and not run.user_name:
        run.user_name = str(tags["mlflow.user"])[:150]


def _clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    clean: dict[str, str] = {}
    for key, value in tags.items():
        _check_key(key, "Tag")
        text = "" if value is None else str(value)
        if len(text) > MAX_TAG_VALUE_LENGTH:
            raise IngestError(f"Tag {key!r} value is longer than {MAX_TAG_VALUE_LENGTH} characters.")
        clean[key] = text
    return clean


# --- Tracking experiments ----------------------------------------------------------------------


def _check_experiment_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise IngestError(f"Invalid experiment name: {name!r}. Give a non-empty name.")
    name = name.strip()
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise IngestError(f"Experiment name is longer than {MAX_EXPERIMENT_NAME_LENGTH} characters.")
    return name


@transaction.atomic
def tracking_experiment_get_or_create(*, team: Team, name: str, source: str = "mlboard") -> TrackingExperiment:
    name = _check_experiment_name(name)
    experiment, _ = TrackingExperiment.objects.get_or_create(team=team, source=source, name=name)
    return experiment


@transaction.atomic
def tracking_experiment_create(
    *,
    team: Team,
    name: str,
    artifact_location: str = "",
    tags: Mapping[str, Any] | None = None,
    source: str = "mlboard",
) -> TrackingExperiment:
    """Create a named experiment; a name already used by the team is RESOURCE_ALREADY_EXISTS."""
    name = _check_experiment_name(name)
    clean_tags = _clean_tags(tags or {})
    if source == "mlboard" and artifact_location:
        from .artifacts import artifact_location_check  # artifacts imports this module

        artifact_location = artifact_location_check(team=team, location=artifact_location)
    try:
        with transaction.atomic():
            return TrackingExperiment.objects.create(
                team=team, source=source, name=name, artifact_location=artifact_location or "", tags=clean_tags
            )
    except IntegrityError:
        raise IngestError(
            f"Experiment(name={name}) already exists.", mlflow_code="RESOURCE_ALREADY_EXISTS", field="name"
        ) from None


@transaction.atomic
def tracking_experiment_default(*, team: Team) -> TrackingExperiment:
    """The team's 'Default' experiment: where MLflow clients log when no experiment is set (id 0)."""
    return tracking_experiment_get_or_create(team=team, name=DEFAULT_EXPERIMENT_NAME)


@transaction.atomic
def tracking_experiment_set_tag(*, experiment: TrackingExperiment, key: str, value: Any) -> TrackingExperiment:
    clean = _clean_tags({key: value})
    experiment = TrackingExperiment.objects.select_for_update().get(pk=experiment.pk)
    experiment.tags = {**(experiment.tags or {}), **clean}
    experiment.save(update_fields=["tags", "updated_at"])
    return experiment


@transaction.atomic
def tracking_experiment_delete_tag(*, experiment: TrackingExperiment, key: str) -> TrackingExperiment:
    """As MLflow's SQL store: only on an active experiment, and the tag must exist."""
    experiment = TrackingExperiment.objects.select_for_update().get(pk=experiment.pk)
    if experiment.lifecycle_stage != ACTIVE:
        raise IngestError(
            f"The experiment {experiment.pk} must be in the 'active' state. "
            f"Current state is {experiment.lifecycle_stage}.",
            mlflow_code="INVALID_PARAMETER_VALUE",
        )
    if key not in (experiment.tags or {}):
        raise IngestError(
            f"No tag with name: {key} in experiment with id {experiment.pk}", mlflow_code="RESOURCE_DOES_NOT_EXIST"
        )
    experiment.tags = {k: v for k, v in experiment.tags.items() if k != key}
    experiment.save(update_fields=["tags", "updated_at"])
    return experiment


@transaction.atomic
def tracking_experiment_delete(*, experiment: TrackingExperiment) -> TrackingExperiment:
    """Soft delete as MLflow: the experiment and all its runs become 'deleted', restorable."""
    if experiment.lifecycle_stage != ACTIVE:
        raise IngestError(f"No Experiment with id={experiment.pk} exists", mlflow_code="RESOURCE_DOES_NOT_EXIST")
    now = timezone.now()
    Run.objects.filter(experiment=experiment).update(lifecycle_stage=DELETED, updated_at=now)
    experiment.lifecycle_stage = DELETED
    experiment.save(update_fields=["lifecycle_stage", "updated_at"])
    return experiment


@transaction.atomic
def tracking_experiment_restore(*, experiment: TrackingExperiment) -> TrackingExperiment:
    if experiment.lifecycle_stage == ACTIVE:
        raise IngestError(
            f"Cannot restore an active experiment: experiment {experiment.pk} is not deleted.",
            mlflow_code="INVALID_STATE",
        )
    now = timezone.now()
    Run.objects.filter(experiment=experiment).update(lifecycle_stage=ACTIVE, updated_at=now)
    experiment.lifecycle_stage = ACTIVE
    experiment.save(update_fields=["lifecycle_stage", "updated_at"])
    return experiment


@transaction.atomic
def tracking_experiment_rename(*, experiment: TrackingExperiment, new_name: str) -> TrackingExperiment:
    name = _check_experiment_name(new_name)
    if experiment.lifecycle_stage != ACTIVE:
        raise IngestError("Cannot rename a non-active experiment.", mlflow_code="INVALID_STATE")
    if TrackingExperiment.objects.filter(team_id=experiment.team_id, source=experiment.source, name=name).exclude(
        pk=experiment.pk
    ).exists():
        raise IngestError(f"Experiment(name={name}) already exists.", mlflow_code="RESOURCE_ALREADY_EXISTS")
    experiment.name = name
    experiment.save(update_fields=["name", "updated_at"])
    return experiment


# --- Runs --------------------------------------------------------------------------------------


@transaction.atomic
def run_create(
    *,
    team: Team,
    user: User | None = None,
    experiment: TrackingExperiment | None = None,
    name: str = "",
    status: str = RunStatus.RUNNING,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    source: str = "mlboard",
    external_id: str | None = None,
    trigger: str | None = None,
    code_version: str = "",
    data_version: str = "",
    seed: int | None = None,
    environment: Mapping[str, Any] | None = None,
    created_at: datetime | None = None,
    user_name: str = "",
) -> Run:
    if status not in RunStatus.values:
        raise IngestError(f"Unknown run status {status!r}; use one of {', '.join(RunStatus.values)}.")
    if experiment is not None and experiment.team_id != team.pk:
        raise IngestError("That experiment belongs to another team.", mlflow_code="RESOURCE_DOES_NOT_EXIST")
    clean_tags = _clean_tags(tags or {})
    name = (name or "").strip()
    tag_name = clean_tags.get(RUN_NAME_TAG, "").strip()
    if name and tag_name and name != tag_name:
        raise IngestError(
            f"Both 'run_name' ({name!r}) and tag '{RUN_NAME_TAG}' ({tag_name!r}) were given and they differ; "
            "give one, or the same value for both."
        )
    if source == "mlboard":
        # Imported runs keep exactly what the other server had; new runs always get a readable name.
        name = name or tag_name or run_name_generate()
    run = Run(
        team=team,
        experiment=experiment,
        source=source,
        external_id=external_id or uuid.uuid4().hex,
        name=name[:250],
        status=status,
        start_time=start_time or timezone.now(),
        end_time=end_time,
        user=user,
        # MLflow's user_id is what the client sends (its mlflow.user tag, else "unknown"); mlboard's own
        # attribution is `user`, the token's owner.
        user_name=(user_name or clean_tags.get("mlflow.user") or (user.username if user else ""))[:150],
        tags=clean_tags,
        code_version=code_version,
        data_version=data_version,
        seed=seed,
        environment=dict(environment or {}),
        trigger=trigger if trigger in Trigger.values else Trigger.MANUAL,
        created_at=created_at or timezone.now(),
    )
    _derive_fields(run, params={k: str(v) for k, v in (params or {}).items()})
    if source == "mlboard":
        from .artifacts import run_artifact_uri_for_new  # artifacts imports this module

        run.artifact_uri = run_artifact_uri_for_new(team=team, experiment=experiment, run_id=run.external_id)
    run.save()
    if params:
        _log_params(run=run, params=params)
    _link_from_tags(run=run)
    _on_status(run=run, previous=None)
    return run


@transaction.atomic
def run_update(
    *,
    run: Run,
    status: str | None = None,
    end_time: datetime | None = None,
    name: str | None = None,
) -> Run:
    run = Run.objects.select_for_update().get(pk=run.pk)
    previous = run.status
    if status is not None:
        if status not in RunStatus.values:
            raise IngestError(f"Unknown run status {status!r}; use one of {', '.join(RunStatus.values)}.")
        run.status = status
    if end_time is not None:
        run.end_time = end_time
    elif status in TERMINAL_STATUSES and run.end_time is None:
        run.end_time = timezone.now()
    if name is not None and name.strip():
        run.name = name.strip()[:250]
        run.tags = {**run.tags, RUN_NAME_TAG: run.name}
    run.save()
    if run.status != previous:
        _on_status(run=run, previous=previous)
    return run


def _ensure_active(run: Run) -> None:
    if run.lifecycle_stage != ACTIVE:
        raise IngestError(
            f"The run {run.external_id} must be in the 'active' state. Current state is {run.lifecycle_stage}."
        )


@transaction.atomic
def run_delete(*, run: Run) -> Run:
    """Soft delete (MLflow semantics): hidden from searches, restorable, data kept."""
    Run.objects.filter(pk=run.pk).update(lifecycle_stage=DELETED, updated_at=timezone.now())
    run.lifecycle_stage = DELETED
    return run


@transaction.atomic
def run_restore(*, run: Run) -> Run:
    Run.objects.filter(pk=run.pk).update(lifecycle_stage=ACTIVE, updated_at=timezone.now())
    run.lifecycle_stage = ACTIVE
    return run


# --- Params ------------------------------------------------------------------------------------


def _clean_params(params: Mapping[str, Any]) -> dict[str, str]:
    clean: dict[str, str] = {}
    for key, value in params.items():
        _check_key(key, "Param")
        text = "" if value is None else str(value)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            raise IngestError(f"Param {key!r} value is longer than {MAX_PARAM_VALUE_LENGTH} characters.")
        clean[key] = text
    return clean


def _log_params(*, run: Run, params: Mapping[str, Any]) -> None:
    """Insert first, then compare: two writers racing on one key cannot both 'win' silently.
    Raising rolls the whole batch back, as MLflow does."""
    clean = _clean_params(params)
    if not clean:
        return
    Param.objects.bulk_create([Param(run=run, key=k, value=v) for k, v in clean.items()], ignore_conflicts=True)
    stored = dict(Param.objects.filter(run=run, key__in=list(clean)).values_list("key", "value"))
    changed = [(k, stored[k], v) for k, v in clean.items() if k in stored and stored[k] != v]
    if changed:
        key, old, new = changed[0]
        more = f" ({len(changed) - 1} more param(s) differ too)" if len(changed) > 1 else ""
        raise IngestError(
            f"Changing param values is not allowed. Param with key='{key}' was already logged with "
            f"value='{old}' for run ID='{run.external_id}'. Attempted logging new value '{new}'.{more}"
        )
    if run.seed is None and any(k in SEED_KEYS for k in clean):
        _derive_fields(run, params=clean)
        if run.seed is not None:
            Run.objects.filter(pk=run.pk).update(seed=run.seed)


@transaction.atomic
def run_log_params(*, run: Run, params: Mapping[str, Any]) -> None:
    """Params are immutable: re-logging the same value is fine, a different value is an error."""
    _log_params(run=run, params=params)


# --- Metrics -----------------------------------------------------------------------------------


def _metric_rows(run: Run, points: Iterable[MetricPoint]) -> tuple[dict[tuple, None], dict[str, tuple]]:
    """Validated rows (run_id, key, value, is_nan, step, timestamp), deduplicated in order,
    and the candidate latest row per key (highest step, then timestamp; later wins a tie)."""
    rows: dict[tuple, None] = {}
    latest: dict[str, tuple] = {}
    stamp = now_ms()
    run_id = run.pk
    checked: set[str] = set()
    for point in points:
        key, value, step, ts = point
        if type(key) is not str or key not in checked:
            _check_key(key, "Metric")
            checked.add(key)
        # Fast paths for what JSON decoding produces; anything else goes through full coercion.
        if type(value) is not float:
            value = float(value) if type(value) is int else _coerce_float(value, key)
        is_nan = value != value
        if type(step) is not int:
            step = _coerce_int(step or 0, "step", key)
        if ts is None:
            ts = stamp
        elif type(ts) is not int:
            ts = _coerce_int(ts, "timestamp", key)
        row = (run_id, key, 0.0 if is_nan else value, is_nan, step, ts)
        rows[row] = None
        best = latest.get(key)
        if best is None or (step, ts) >= (best[4], best[5]):
            latest[key] = row
    return rows, latest


def _sqlite_max_params() -> int:
    raw = getattr(connection.connection, "getlimit", None)
    if raw is not None:
        import sqlite3

        return raw(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return connection.features.max_query_params or 999


_METRIC_COLUMNS = ("run_id", "key", "value", "is_nan", "step", "timestamp")


def _insert_rows(table: str, rows: Sequence[tuple], conflict: str) -> int:
    """One multi-row INSERT (chunked only by the driver's parameter limit); returns rows written."""
    qn = connection.ops.quote_name
    columns = ", ".join(qn(c) for c in _METRIC_COLUMNS)
    written = 0
    if connection.vendor == "postgresql":
        return _insert_rows_postgresql(f"INSERT INTO {qn(table)} ({columns})", rows, conflict)
    with connection.cursor() as cursor:
        per_row = len(_METRIC_COLUMNS)
        chunk = max(1, _sqlite_max_params() // per_row)
        placeholder = "(" + ", ".join(["%s"] * per_row) + ")"
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            values = ", ".join([placeholder] * len(part))
            cursor.execute(
                f"INSERT INTO {qn(table)} ({columns}) VALUES {values} {conflict}",
                [v for row in part for v in row],
            )
            written += max(cursor.rowcount, 0)
    return written


def _insert_rows_postgresql(insert: str, rows: Sequence[tuple], conflict: str) -> int:
    """All points of one run as a single JSON parameter, unpacked by PostgreSQL: one short
    statement whatever the batch size, and json.dumps is far cheaper than adapting thousands
    of values one by one."""
    with connection.cursor() as cursor:
        cursor.execute(f"{insert} {_PG_UNPACK} {conflict}", [rows[0][0], _json_rows(rows)])
        return max(cursor.rowcount, 0)


def _bulk_insert_metrics(rows: Sequence[tuple]) -> int:
    if connection.vendor not in ("postgresql", "sqlite"):
        before = Metric.objects.filter(run_id=rows[0][0]).count()
        Metric.objects.bulk_create(
            [Metric(run_id=r[0], key=r[1], value=r[2], is_nan=r[3], step=r[4], timestamp=r[5]) for r in rows],
            ignore_conflicts=True,
            batch_size=1000,
        )
        return Metric.objects.filter(run_id=rows[0][0]).count() - before
    return _insert_rows(Metric._meta.db_table, rows, "ON CONFLICT DO NOTHING")


def _latest_conflict() -> str:
    """Replace the latest value only for a point at a higher (step, timestamp), so out-of-order or
    retried batches never move it back."""
    qn = connection.ops.quote_name
    table = qn(LatestMetric._meta.db_table)
    updates = ", ".join(f"{qn(c)} = excluded.{qn(c)}" for c in ("value", "is_nan", "step", "timestamp"))
    return (
        f"ON CONFLICT ({qn('run_id')}, {qn('key')}) DO UPDATE SET {updates} "
        f"WHERE (excluded.{qn('step')}, excluded.{qn('timestamp')}) "
        f">= ({table}.{qn('step')}, {table}.{qn('timestamp')})"
    )


def _upsert_latest(rows: Sequence[tuple]) -> None:
    """Latest value per (run, key) in one statement."""
    if connection.vendor not in ("postgresql", "sqlite"):
        _latest_update_orm(rows)
        return
    _insert_rows(LatestMetric._meta.db_table, rows, _latest_conflict())


def _latest_update_orm(rows: Sequence[tuple]) -> None:
    run_id = rows[0][0]
    by_key = {r[1]: r for r in rows}
    current = {lm.key: lm for lm in LatestMetric.objects.select_for_update().filter(run_id=run_id, key__in=by_key)}
    create, update = [], []
    for key, r in by_key.items():
        existing = current.get(key)
        if existing is None:
            create.append(LatestMetric(run_id=run_id, key=key, value=r[2], is_nan=r[3], step=r[4], timestamp=r[5]))
        elif (r[4], r[5]) >= (existing.step, existing.timestamp):
            existing.value, existing.is_nan, existing.step, existing.timestamp = r[2], r[3], r[4], r[5]
            update.append(existing)
    if create:
        LatestMetric.objects.bulk_create(create, ignore_conflicts=True)
    if update:
        LatestMetric.objects.bulk_update(update, ["value", "is_nan", "step", "timestamp"])


def _log_metrics(*, run: Run, points: Iterable[MetricPoint], writer_token_id: int | None = None) -> int:
    rows, latest = _metric_rows(run, points)
    if not rows:
        return 0
    if connection.vendor == "postgresql":
        # The writer check, if any, is part of the statement.
        added = _log_metrics_postgresql(list(rows), list(latest.values()), writer_token_id=writer_token_id)
    else:
        _check_writer(run, writer_token_id)
        added = _bulk_insert_metrics(list(rows))
        _upsert_latest(list(latest.values()))
        # Chart rollups (MetricBlock): a trigger on SQLite, the statement itself on PostgreSQL.
        if added:
            metric_blocks_add(run_id=run.pk, keys=latest)
    if added:
        # Cached chart series of this run go stale once the new points are visible to readers.
        transaction.on_commit(partial(series_version_bump, run.pk))
    return added


def _writer_check() -> tuple[str, list[Any]]:
    """token_writer_sql for a run, which must also be active (parameters: token id, run id, then these)."""
    check, params = token_writer_sql(run=True)
    return f"{check} AND r.{connection.ops.quote_name('lifecycle_stage')} = %s", [*params, ACTIVE]


def _check_writer(run: Run, writer_token_id: int | None) -> None:
    """Inside the write's transaction: the token still writes to this active run (WriterRefused if not)."""
    if writer_token_id is None:
        return
    check, params = _writer_check()
    with connection.cursor() as cursor:
        cursor.execute(check, [writer_token_id, run.pk, *params])
        if cursor.fetchone() is None:
            raise WriterRefused()


def _json_rows(rows: Sequence[tuple]) -> str:
    # Non-finite values travel as text that float8 parses ('Infinity'); NaN is already is_nan + 0.
    return json.dumps(
        [[r[1], r[2] if math.isfinite(r[2]) else str(r[2]).replace("inf", "Infinity"), r[3], r[4], r[5]] for r in rows],
        separators=(",", ":"),
    )


_PG_UNPACK = (
    "SELECT %s::bigint, e->>0, (e->>1)::double precision, (e->>2)::boolean, (e->>3)::bigint, (e->>4)::bigint "
    "FROM jsonb_array_elements(%s::jsonb) AS e"
)


_log_metrics_sql: dict[bool, str] = {}


def _log_metrics_statement(checked: bool) -> str:
    """Built once per process: one fixed string, so PostgreSQL prepares it once per connection.
    `checked`: a writer CTE (token id, run id) gates both inserts, and the first column says
    whether it passed."""
    if checked not in _log_metrics_sql:
        qn = connection.ops.quote_name
        columns = ", ".join(qn(c) for c in _METRIC_COLUMNS)
        metric, latest_table = qn(Metric._meta.db_table), qn(LatestMetric._meta.db_table)
        writer, gate, passed = "", "", "true"
        if checked:
            writer = f"writer AS ({_writer_check()[0]}), "
            gate, passed = " WHERE EXISTS (SELECT 1 FROM writer)", "EXISTS (SELECT 1 FROM writer)"
        _log_metrics_sql[checked] = (
            f"WITH {writer}"
            f"added AS (INSERT INTO {metric} ({columns}) {_PG_UNPACK}{gate} ON CONFLICT DO NOTHING "
            f"RETURNING {qn('key')}, {qn('value')}, {qn('is_nan')}, {qn('step')}), "
            f"latest AS (INSERT INTO {latest_table} ({columns}) {_PG_UNPACK}{gate} {_latest_conflict()}), "
            # Chart rollups (MetricBlock) of the points that were new: see services/metric_blocks.py.
            f"blocks AS ({metric_blocks_upsert_cte('added')}) "
            f"SELECT {passed}, count(*) FROM added"
        )
        _log_metrics_sql[checked] = " ".join(_log_metrics_sql[checked].split())
    return _log_metrics_sql[checked]


def _log_metrics_postgresql(
    rows: Sequence[tuple], latest: Sequence[tuple], *, writer_token_id: int | None = None
) -> int:
    """Points and latest values in ONE statement (a data-modifying CTE): one round trip per batch,
    with the writer check (if any) in the same statement."""
    checked = writer_token_id is not None
    run_id = rows[0][0]
    params = [run_id, _json_rows(rows), run_id, _json_rows(latest), run_id]
    if checked:
        params = [writer_token_id, run_id, *_writer_check()[1], *params]
    with prepared_cursor() as cursor:
        cursor.execute(_log_metrics_statement(checked), params)
        passed, added = cursor.fetchone()
    if not passed:
        raise WriterRefused()
    return added


@transaction.atomic
def run_log_metrics(*, run: Run, points: Iterable[MetricPoint]) -> int:
    """Append metric points; returns how many were new. Idempotent for retried batches."""
    return _log_metrics(run=run, points=points)


# --- Tags --------------------------------------------------------------------------------------


def _set_tags(*, run: Run, tags: Mapping[str, Any]) -> Run:
    clean = _clean_tags(tags)
    if not clean:
        return run
    locked = Run.objects.select_for_update().get(pk=run.pk)
    locked.tags = {**locked.tags, **clean}
    if clean.get(RUN_NAME_TAG, "").strip():
        locked.name = clean[RUN_NAME_TAG].strip()[:250]
    _derive_fields(locked)
    locked.save()
    if CARD_TAG in clean:
        _link_from_tags(run=locked)
    return locked


@transaction.atomic
def run_set_tags(*, run: Run, tags: Mapping[str, Any]) -> Run:
    return _set_tags(run=run, tags=tags)


@transaction.atomic
def run_delete_tag(*, run: Run, key: str) -> Run:
    run = Run.objects.select_for_update().get(pk=run.pk)
    if key not in run.tags:
        raise IngestError(
            f"No tag with name: {key} in run with id {run.external_id}", mlflow_code="RESOURCE_DOES_NOT_EXIST"
        )
    tags = dict(run.tags)
    tags.pop(key)
    run.tags = tags
    run.save(update_fields=["tags", "updated_at"])
    if key == CARD_TAG:
        _link_from_tags(run=run)
    return run


def run_log_batch(
    *,
    run: Run,
    metrics: Iterable[MetricPoint] = (),
    params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
    tags: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
    writer_token_id: int | None = None,
) -> int:
    """Params, metrics and tags in one transaction; returns the number of new metric points.

    `params` and `tags` may be pairs so a duplicated key in one batch is caught (MLflow rejects
    a batch that gives one param two values).

    `writer_token_id`: the caller was not looked up for this request (the MLflow API's caller cache),
    so the write checks that this token may still write to the run (live, user active, manager or
    member of its team, run active) where it becomes visible, and raises WriterRefused having
    stored nothing if not."""
    _ensure_active(run)
    param_map = _pairs_to_map(params, what="param")
    tag_map = dict(tags.items() if isinstance(tags, Mapping) else (tags or ()))
    if not param_map and not tag_map and connection.vendor == "postgresql":
        # Metrics only (every log-metric, most log-batch calls): on PostgreSQL the points and the
        # latest values are ONE statement, atomic by itself, so no BEGIN and COMMIT round trips.
        added = _log_metrics(run=run, points=metrics, writer_token_id=writer_token_id)
        _touch(run)
        return added
    with transaction.atomic():
        _check_writer(run, writer_token_id)
        if param_map:
            _log_params(run=run, params=param_map)
        added = _log_metrics(run=run, points=metrics)
        if tag_map:
            _set_tags(run=run, tags=tag_map)
        else:
            _touch(run)
    return added


TOUCH_EVERY_SECONDS = 10


def _touch(run: Run) -> None:
    """Keep the run's last activity roughly right for the runs list without writing the row on
    every batch (a training loop may send several batches a second)."""
    now = timezone.now()
    if run.updated_at is None or (now - run.updated_at).total_seconds() >= TOUCH_EVERY_SECONDS:
        Run.objects.filter(pk=run.pk).update(updated_at=now)
        run.updated_at = now


def _pairs_to_map(items: Mapping[str, Any] | Iterable[tuple[str, Any]] | None, *, what: str) -> dict[str, Any]:
    if not items:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    result: dict[str, Any] = {}
    dupes: list[str] = []
    for key, value in items:
        if key in result and str(result[key]) != str(value):
            dupes.append(key)
        result[key] = value
    if dupes:
        raise IngestError(
            f"Duplicate {what} keys with different values in one batch: {sorted(set(dupes))}. "
            f"Send one value per {what} key."
        )
    return result


# --- Linking runs to cards ---------------------------------------------------------------------


def _card_keys(value: Any) -> list[str]:
    return [p.strip().upper() for p in str(value or "").replace(";", ",").split(",") if p.strip()]


def _link_from_tags(*, run: Run) -> None:
    """The mlboard.card tag is the source of truth for tag links: link what it names (a comma
    separated list of card keys) and drop tag links to cards it no longer names."""
    keys = _card_keys((run.tags or {}).get(CARD_TAG))
    stale = CardRun.objects.filter(run=run, via=LinkVia.TAG).exclude(card__key__in=keys).select_related("card")
    for link in stale:
        card_unlink_run(card=link.card, run=run, actor=None)
    if not keys:
        return
    cards = Card.objects.select_related("board", "column").filter(board__team_id=run.team_id, key__in=keys)
    for card in cards:
        card_link_run(card=card, run=run, via=LinkVia.TAG, actor=None)


@transaction.atomic
def card_link_run(
    *, card: Card, run: Run, actor: User | None, via: str = LinkVia.MANUAL, is_baseline: bool = False
) -> CardRun:
    if run.team_id != card.board.team_id:
        raise DomainError("That run belongs to another team.", field="run")
    link, created = CardRun.objects.get_or_create(
        card=card, run=run, defaults={"via": via, "linked_by": actor, "is_baseline": is_baseline}
    )
    if not created and link.is_baseline != is_baseline and via == LinkVia.MANUAL:
        link.is_baseline = is_baseline
        link.save(update_fields=["is_baseline"])
        # The run moved between evidence and baseline: record who did it and re-judge the hypothesis.
        event_record(
            card=card, kind=EventKind.EDITED, actor=actor,
            data={"changed": {"baseline": [not is_baseline, is_baseline]}, "run": run.external_id, "run_id": run.pk},
        )
        _reevaluate_verdict(card)
    if created:
        event_record(
            card=card, kind=EventKind.LINKED, actor=actor,
            data={"run": run.external_id, "run_id": run.pk, "via": via, "baseline": is_baseline},
        )
        if not is_baseline:
            _react_to_runs(card=card, trigger_run=run)
    return link


@transaction.atomic
def card_unlink_run(*, card: Card, run: Run, actor: User | None) -> None:
    deleted, _ = CardRun.objects.filter(card=card, run=run).delete()
    if deleted:
        event_record(card=card, kind=EventKind.UNLINKED, actor=actor, data={"run": run.external_id, "run_id": run.pk})
        _reevaluate_verdict(card)


def _reevaluate_verdict(card: Card) -> None:
    """Evidence changed by hand (unlink, baseline toggle): a pending proposal may be stale."""
    hypothesis = card if card.kind == CardKind.HYPOTHESIS else _hypothesis_of(card)
    if hypothesis is not None:
        from ..tasks import enqueue_verdict_evaluation

        enqueue_verdict_evaluation(hypothesis.pk)


def _on_status(*, run: Run, previous: str | None) -> None:
    cards = Card.objects.filter(run_links__run=run, run_links__is_baseline=False).select_related("board", "column")
    for card in cards:
        _react_to_runs(card=card, trigger_run=run)


def _enqueue_verdict(card_id: int) -> None:
    # robust: a failing verdict task must not turn an already committed ingestion into an
    # error response (MLflow clients would retry the whole request).
    from ..tasks import evaluate_verdict

    transaction.on_commit(lambda: evaluate_verdict.delay(card_id), robust=True)


def _react_to_runs(*, card: Card, trigger_run: Run) -> None:
    """Cards move on run events: first run starts -> Running; all finished -> Analyzing; failures flagged.
    A hypothesis follows the runs of its experiments too, so the board shows where each idea stands."""
    statuses = list(
        CardRun.objects.filter(card=card, is_baseline=False).values_list("run__status", flat=True)
    )
    if not statuses:
        return
    if trigger_run.status == RunStatus.FAILED or trigger_run.status == RunStatus.KILLED:
        from .notifications import notify_run_failed

        notify_run_failed(card=card, run=trigger_run)
        if not card.flagged:
            card_flag(
                card=card, actor=None, flagged=True,
                reason=f"Run {trigger_run.name or trigger_run.external_id} {trigger_run.status.lower()}",
            )
    hypothesis = card if card.kind == CardKind.HYPOTHESIS else _hypothesis_of(card)
    if hypothesis is not None:
        # Pre-registration: the criterion and plan freeze when the first evidence run is linked.
        hypothesis_freeze(card=hypothesis)
    _move_by_run_statuses(card=card, statuses=statuses)
    if hypothesis is not None and hypothesis.pk != card.pk:
        hypothesis_statuses = list(
            CardRun.objects.filter(
                Q(card=hypothesis) | Q(card__parent=hypothesis), is_baseline=False
            ).values_list("run__status", flat=True)
        )
        _move_by_run_statuses(card=hypothesis, statuses=hypothesis_statuses)
    # The decision is taken when the planned runs are in (first n by finish time), whether or not
    # other linked runs are still going; the evaluation itself is idempotent and waits for the plan.
    if trigger_run.status in TERMINAL_STATUSES and hypothesis is not None:
        _enqueue_verdict(hypothesis.pk)


def _move_by_run_statuses(*, card: Card, statuses: list[str]) -> None:
    stage = Card.objects.filter(pk=card.pk).values_list("column__stage", flat=True).first()
    all_terminal = all(s in TERMINAL_STATUSES for s in statuses)
    any_active = any(s in (RunStatus.RUNNING, RunStatus.SCHEDULED) for s in statuses)
    if any_active and stage in (Stage.BACKLOG, Stage.READY):
        card_move_to_stage(card=card, stage=Stage.RUNNING, actor=None, reason="first run started")
    elif all_terminal and stage in (Stage.BACKLOG, Stage.READY, Stage.RUNNING):
        if card.kind == CardKind.HYPOTHESIS:
            # A hypothesis waits for its planned runs ("2 of 5 runs") before it is analysed.
            progress = verdict_progress(card=card)
            if progress is not None and not progress.ready:
                return
        card_move_to_stage(card=card, stage=Stage.ANALYZING, actor=None, reason="all linked runs finished")


def _hypothesis_of(card: Card) -> Card | None:
    node: Card | None = card
    seen = 0
    while node is not None and node.kind != CardKind.HYPOTHESIS and seen < 5:
        node = node.parent
        seen += 1
    return node if node is not None and node.kind == CardKind.HYPOTHESIS else None


def runs_for_hypothesis(hypothesis: Card) -> Q:
    """Runs that test a hypothesis: linked to it or to any of its experiments."""
    return Q(card_links__card=hypothesis) | Q(card_links__card__parent=hypothesis)
