"""Run ingestion, shared by the REST API, the MLflow-compatible endpoint and the MLflow importer.

Semantics follow MLflow's tracking store: params are immutable, metric points are
(key, value, step, timestamp) and a retried batch adds no duplicates, NaN/Inf are kept.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..errors import DomainError
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
from .cards import card_flag, card_move_to_stage, event_record

CARD_TAG = "mlboard.card"
# Tags that fill first-class reproducibility fields (MLflow's own names where they exist).
CODE_VERSION_TAGS = ("mlflow.source.git.commit", "mlboard.code_version", "git_commit")
DATA_VERSION_TAGS = ("mlboard.data_version", "data_version", "dataset_version", "mlflow.data.version")
SEED_KEYS = ("seed", "random_seed", "mlboard.seed")
TRIGGER_TAG = "mlboard.trigger"
ENV_TAG_PREFIXES = ("mlflow.source.", "mlflow.user", "mlboard.env.")
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000


class IngestError(DomainError):
    """Bad tracking input; `mlflow_code` is the MLflow error_code to report."""

    def __init__(self, message: str, *, mlflow_code: str = "INVALID_PARAMETER_VALUE", field: str | None = None):
        super().__init__(message, field=field)
        self.mlflow_code = mlflow_code


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    step: int = 0
    timestamp: int | None = None  # ms since epoch; now if omitted


def now_ms() -> int:
    return int(time.time() * 1000)


def ms_to_dt(ms: int | None) -> datetime | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=dt_timezone.utc)


def dt_to_ms(value: datetime | None) -> int | None:
    return int(value.timestamp() * 1000) if value else None


def _check_key(key: Any, what: str) -> str:
    if not isinstance(key, str) or not key:
        raise IngestError(f"{what} key must be a non-empty string, got {key!r}.")
    if len(key) > MAX_KEY_LENGTH:
        raise IngestError(f"{what} key '{key[:40]}…' is longer than {MAX_KEY_LENGTH} characters.")
    if key.startswith("/") or ".." in key.split("/"):
        raise IngestError(f"Invalid {what.lower()} key {key!r}: no leading '/' or '..' path parts.")
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
                    except (TypeError, ValueError):
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
    if tags.get("mlflow.runName") and not run.name:
        run.name = str(tags["mlflow.runName"])[:250]
    if tags.get("mlflow.user") and not run.user_name:
        run.user_name = str(tags["mlflow.user"])[:150]


@transaction.atomic
def tracking_experiment_get_or_create(*, team: Team, name: str, source: str = "mlboard") -> TrackingExperiment:
    name = (name or "").strip()
    if not name:
        raise IngestError("Experiment name must be a non-empty string.")
    experiment, _ = TrackingExperiment.objects.get_or_create(team=team, source=source, name=name)
    return experiment


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
) -> Run:
    if status not in RunStatus.values:
        raise IngestError(f"Unknown run status {status!r}; use one of {', '.join(RunStatus.values)}.")
    if experiment is not None and experiment.team_id != team.pk:
        raise IngestError("That experiment belongs to another team.", mlflow_code="RESOURCE_DOES_NOT_EXIST")
    clean_tags = {_check_key(k, "Tag"): str(v) for k, v in (tags or {}).items()}
    run = Run(
        team=team,
        experiment=experiment,
        source=source,
        external_id=external_id or uuid.uuid4().hex,
        name=(name or "")[:250],
        status=status,
        start_time=start_time or timezone.now(),
        end_time=end_time,
        user=user,
        user_name=(user.username if user else "")[:150],
        tags=clean_tags,
        code_version=code_version,
        data_version=data_version,
        seed=seed,
        environment=dict(environment or {}),
        trigger=trigger if trigger in Trigger.values else Trigger.MANUAL,
        created_at=created_at or timezone.now(),
    )
    _derive_fields(run, params={k: str(v) for k, v in (params or {}).items()})
    run.save()
    if params:
        run_log_params(run=run, params=params)
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
    if name is not None:
        run.name = name[:250]
        tags = dict(run.tags)
        tags["mlflow.runName"] = run.name
        run.tags = tags
    run.save()
    if run.status != previous:
        _on_status(run=run, previous=previous)
    return run


def run_log_params(*, run: Run, params: Mapping[str, Any]) -> None:
    """Params are immutable: re-logging the same value is fine, a different value is an error."""
    if not params:
        return
    clean: dict[str, str] = {}
    for key, value in params.items():
        _check_key(key, "Param")
        text = "" if value is None else str(value)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            raise IngestError(f"Param {key!r} value is longer than {MAX_PARAM_VALUE_LENGTH} characters.")
        clean[key] = text
    existing = dict(Param.objects.filter(run=run, key__in=list(clean)).values_list("key", "value"))
    for key, value in clean.items():
        if key in existing and existing[key] != value:
            raise IngestError(
                f"Changing param values is not allowed. Param with key='{key}' was already logged with "
                f"value='{existing[key]}' for run ID='{run.external_id}'. Attempted logging new value '{value}'."
            )
    new = [Param(run=run, key=k, value=v) for k, v in clean.items() if k not in existing]
    if new:
        Param.objects.bulk_create(new, ignore_conflicts=True)
        if run.seed is None and any(k in SEED_KEYS for k in clean):
            _derive_fields(run, params=clean)
            Run.objects.filter(pk=run.pk).update(seed=run.seed)


def run_log_metrics(*, run: Run, points: Iterable[MetricPoint]) -> int:
    """Append metric points; returns how many were new. Idempotent for retried batches."""
    rows: list[Metric] = []
    latest: dict[str, Metric] = {}
    stamp = now_ms()
    for point in points:
        _check_key(point.key, "Metric")
        value = _coerce_float(point.value, point.key)
        is_nan = math.isnan(value)
        try:
            step = int(point.step or 0)
            ts = int(point.timestamp) if point.timestamp is not None else stamp
        except (TypeError, ValueError):
            raise IngestError(f"Metric {point.key!r}: step and timestamp must be integers.") from None
        row = Metric(run=run, key=point.key, value=0.0 if is_nan else value, is_nan=is_nan, step=step, timestamp=ts)
        rows.append(row)
        best = latest.get(point.key)
        if best is None or (step, ts) >= (best.step, best.timestamp):
            latest[point.key] = row
    if not rows:
        return 0
    # Deduplicate within the batch too (ignore_conflicts handles the rest).
    unique = {(r.key, r.step, r.timestamp, r.value, r.is_nan): r for r in rows}
    before = Metric.objects.filter(run=run).count()
    Metric.objects.bulk_create(list(unique.values()), ignore_conflicts=True, batch_size=1000)
    added = Metric.objects.filter(run=run).count() - before
    _latest_update(run=run, candidates=latest)
    return added


def _latest_update(*, run: Run, candidates: Mapping[str, Metric]) -> None:
    current = {
        lm.key: lm for lm in LatestMetric.objects.select_for_update().filter(run=run, key__in=list(candidates))
    }
    create, update = [], []
    for key, row in candidates.items():
        existing = current.get(key)
        if existing is None:
            create.append(
                LatestMetric(run=run, key=key, value=row.value, is_nan=row.is_nan, step=row.step, timestamp=row.timestamp)
            )
        elif (row.step, row.timestamp) >= (existing.step, existing.timestamp):
            existing.value, existing.is_nan = row.value, row.is_nan
            existing.step, existing.timestamp = row.step, row.timestamp
            update.append(existing)
    if create:
        LatestMetric.objects.bulk_create(create, ignore_conflicts=True)
    if update:
        LatestMetric.objects.bulk_update(update, ["value", "is_nan", "step", "timestamp"])


def run_set_tags(*, run: Run, tags: Mapping[str, Any]) -> Run:
    if not tags:
        return run
    clean = {_check_key(k, "Tag"): "" if v is None else str(v) for k, v in tags.items()}
    run = Run.objects.select_for_update().get(pk=run.pk)
    merged = dict(run.tags)
    merged.update(clean)
    run.tags = merged
    if "mlflow.runName" in clean:
        run.name = clean["mlflow.runName"][:250]
    _derive_fields(run)
    run.save()
    if CARD_TAG in clean:
        _link_from_tags(run=run)
    return run


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
    return run


@transaction.atomic
def run_log_batch(
    *,
    run: Run,
    metrics: Iterable[MetricPoint] = (),
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> int:
    if run.lifecycle_stage != "active":
        raise IngestError(f"The run {run.external_id} must be in the 'active' state.")
    if params:
        run_log_params(run=run, params=params)
    added = run_log_metrics(run=run, points=metrics)
    if tags:
        run_set_tags(run=run, tags=tags)
    return added


# --- Linking runs to cards ---------------------------------------------------------------------


def _card_for_key(*, team_id: int, key: str) -> Card | None:
    key = (key or "").strip().upper()
    if not key:
        return None
    return Card.objects.select_related("board", "column").filter(board__team_id=team_id, key=key).first()


def _link_from_tags(*, run: Run) -> None:
    key = (run.tags or {}).get(CARD_TAG)
    if not key:
        return
    for part in str(key).replace(";", ",").split(","):
        card = _card_for_key(team_id=run.team_id, key=part)
        if card is not None:
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


def _on_status(*, run: Run, previous: str | None) -> None:
    cards = Card.objects.filter(run_links__run=run, run_links__is_baseline=False).select_related("board", "column")
    for card in cards:
        _react_to_runs(card=card, trigger_run=run)


def _react_to_runs(*, card: Card, trigger_run: Run) -> None:
    """Cards move on run events: first run starts -> Running; all finished -> Analyzing; failures flagged."""
    statuses = list(
        CardRun.objects.filter(card=card, is_baseline=False).values_list("run__status", flat=True)
    )
    if not statuses:
        return
    stage = card.column.stage
    if trigger_run.status == RunStatus.FAILED or trigger_run.status == RunStatus.KILLED:
        if not card.flagged:
            card_flag(
                card=card, actor=None, flagged=True,
                reason=f"Run {trigger_run.name or trigger_run.external_id} {trigger_run.status.lower()}",
            )
    all_terminal = all(s in TERMINAL_STATUSES for s in statuses)
    any_active = any(s in (RunStatus.RUNNING, RunStatus.SCHEDULED) for s in statuses)
    if any_active and stage in (Stage.BACKLOG, Stage.READY):
        card_move_to_stage(card=card, stage=Stage.RUNNING, actor=None, reason="first run started")
    elif all_terminal and stage in (Stage.BACKLOG, Stage.READY, Stage.RUNNING):
        card_move_to_stage(card=card, stage=Stage.ANALYZING, actor=None, reason="all linked runs finished")
    if all_terminal:
        hypothesis = card if card.kind == CardKind.HYPOTHESIS else _hypothesis_of(card)
        if hypothesis is not None:
            from ..tasks import enqueue_verdict_evaluation

            enqueue_verdict_evaluation(hypothesis.pk)


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
