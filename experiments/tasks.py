"""Celery tasks: thin, take ids, idempotent; enqueued with transaction.on_commit."""

from __future__ import annotations

from celery import shared_task
from django.db import transaction


def enqueue_verdict_evaluation(card_id: int) -> None:
    transaction.on_commit(lambda: evaluate_verdict.delay(card_id))


@shared_task(acks_late=True)
def evaluate_verdict(card_id: int) -> int | None:
    """Propose a verdict for a hypothesis from its linked runs. Re-running with the same runs is a no-op."""
    from .models import Card
    from .services.verdicts import verdict_propose

    card = Card.objects.filter(pk=card_id).first()
    if card is None:
        return None
    proposal = verdict_propose(card=card)
    return proposal.pk if proposal else None


# --- MLflow import ------------------------------------------------------------------------------


@shared_task(acks_late=True)
def sync_all_mlflow_sources() -> list[int]:
    """Beat tick (every 15 min): one sync task per enabled source, so a slow server delays only itself."""
    from .models import MlflowSource

    ids = list(MlflowSource.objects.filter(enabled=True).order_by("pk").values_list("pk", flat=True))
    for source_id in ids:
        transaction.on_commit(lambda source_id=source_id: sync_mlflow_source.delay(source_id))
    return ids


@shared_task(acks_late=True)
def sync_mlflow_source(source_id: int) -> dict | None:
    """Incremental import of one source; re-running imports nothing twice. Failures land in last_error."""
    from .models import MlflowSource
    from .services.mlflow_import import MlflowImportError, mlflow_source_sync

    source = MlflowSource.objects.select_related("team").filter(pk=source_id, enabled=True).first()
    if source is None:
        return None
    try:
        summary = mlflow_source_sync(source=source)
    except MlflowImportError as exc:
        return {"error": exc.message}
    return {
        "experiments": summary.experiments,
        "runs_created": summary.runs_created,
        "runs_updated": summary.runs_updated,
        "runs_unchanged": summary.runs_unchanged,
        "metric_points": summary.metric_points,
        "problems": len(summary.problems),
    }
