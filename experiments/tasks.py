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
