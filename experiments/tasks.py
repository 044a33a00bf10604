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


# --- Standup digests ---------------------------------------------------------------------------


@shared_task(acks_late=True)
def build_due_standup_digests(now_iso: str | None = None) -> list[int]:
    """Beat tick (every 5 min): enqueue one digest task per team whose standup time passed today
    (in its own timezone) and that has no digest for today's window yet."""
    import datetime as dt

    from .selectors.standup import teams_due_for_digest

    now = dt.datetime.fromisoformat(now_iso) if now_iso else None
    due = teams_due_for_digest(now=now)
    for team_id, window_end in due:
        end_iso = window_end.isoformat()
        transaction.on_commit(lambda team_id=team_id, end_iso=end_iso: build_standup_digest.delay(team_id, end_iso))
    return [team_id for team_id, _ in due]


def _standup_retry_errors() -> tuple[type[BaseException], ...]:
    from .services.standup import DeliveryError

    return (DeliveryError, OSError)


@shared_task(
    bind=True,
    acks_late=True,
    autoretry_for=_standup_retry_errors(),
    retry_backoff=30,
    retry_backoff_max=900,
    retry_jitter=True,
    max_retries=6,
)
def build_standup_digest(self, team_id: int, window_end_iso: str, board_id: int | None = None) -> int | None:
    """Build (or find) the team's digest for the window, then send the channels not sent yet.

    Safe to retry: the digest is unique per window and each channel is guarded by its *_sent_at.
    """
    import datetime as dt

    from .models import Board, Team
    from .services.standup import standup_digest_build, standup_digest_deliver

    team = Team.objects.filter(pk=team_id).first()
    if team is None:
        return None
    board = Board.objects.filter(pk=board_id, team=team).first() if board_id else None
    digest = standup_digest_build(team=team, board=board, window_end=dt.datetime.fromisoformat(window_end_iso))
    standup_digest_deliver(digest=digest)
    return digest.pk


# --- Maturity (nightly snapshots) -----------------------------------------------------------------


@shared_task(acks_late=True)
def snapshot_all_maturity() -> int:
    """Nightly: one snapshot task per team, all for the same date so a late worker stores the right day."""
    from django.utils import timezone

    from .selectors.maturity import team_ids_for_snapshot

    date_iso = timezone.localdate().isoformat()
    team_ids = list(team_ids_for_snapshot())
    for team_id in team_ids:
        transaction.on_commit(lambda team_id=team_id: snapshot_team_maturity.delay(team_id, date_iso))
    return len(team_ids)


@shared_task(acks_late=True)
def snapshot_team_maturity(team_id: int, date_iso: str | None = None) -> int | None:
    """Store the team's MaturitySnapshot for the date; unique per (team, date), so re-running only refreshes it."""
    import datetime as dt

    from .models import Team
    from .services.maturity import maturity_snapshot_take

    team = Team.objects.filter(pk=team_id).first()
    if team is None:
        return None
    date = dt.date.fromisoformat(date_iso) if date_iso else None
    return maturity_snapshot_take(team=team, date=date).pk


# --- MLflow import ------------------------------------------------------------------------------


@shared_task(acks_late=True)
def sync_all_mlflow_sources() -> list[int]:
    """Beat tick (every 15 min): one sync task per enabled source, so a slow server delays only itself."""
    from .models import MlflowSource

    ids = list(MlflowSource.objects.filter(enabled=True).order_by("pk").values_list("pk", flat=True))
    for source_id in ids:
        transaction.on_commit(lambda source_id=source_id: sync_mlflow_source.delay(source_id))
    return ids


@shared_task(bind=True, acks_late=True, max_retries=24)
def sync_mlflow_source(self, source_id: int, pass_id: str | None = None, seq: int | None = None) -> dict | None:
    """One bounded chunk of the import of one source (incremental, plus a full pass once a day), then
    the next chunk re-enqueued with the pass cursor kept on the source row. Re-running a chunk imports
    nothing twice; a duplicate or outdated message stops. Failures land in last_error."""
    from .services.mlflow_import import mlflow_source_sync_step

    result = mlflow_source_sync_step(source_id=source_id, pass_id=pass_id, seq=seq)
    if result == {"skipped": "busy"}:
        # The row is locked: another chunk runs, or a killed worker's transaction is not gone yet.
        # Ask again shortly; a duplicate then finds its chunk done and stops.
        raise self.retry(countdown=5)
    if result and result.get("next"):
        next_pass, next_seq = result["next"]
        queue = (self.request.delivery_info or {}).get("routing_key") or None  # the chain stays on its queue
        transaction.on_commit(
            lambda: sync_mlflow_source.apply_async((source_id, next_pass, next_seq), queue=queue)
        )
    return result


# --- Iterations ---------------------------------------------------------------------------------


@shared_task(acks_late=True)
def roll_iterations() -> list[int]:
    """Beat tick (every 10 min): one roll task per team with an open iteration."""
    from .services.iterations import teams_with_iterations

    team_ids = teams_with_iterations()
    for team_id in team_ids:
        transaction.on_commit(lambda team_id=team_id: roll_team_iterations.delay(team_id))
    return team_ids


@shared_task(acks_late=True)
def roll_team_iterations(team_id: int, now_iso: str | None = None) -> int | None:
    """Close the team's ended iterations and open the next; repeating it changes nothing."""
    import datetime as dt

    from .models import Team
    from .services.iterations import iteration_roll

    team = Team.objects.filter(pk=team_id).first()
    if team is None:
        return None
    now = dt.datetime.fromisoformat(now_iso) if now_iso else None
    active = iteration_roll(team=team, now=now)
    return active.pk if active else None


# --- Teamwork: notification digests, stuck-card notices, Done archiving ------------------------


@shared_task(acks_late=True)
def send_notification_digest(user_id: int) -> int:
    """Mail / post everything pending for one user as one digest (idempotent: nothing pending, nothing sent)."""
    from .services.notifications import notification_digest_send

    return notification_digest_send(user_id=user_id)


@shared_task(acks_late=True)
def send_pending_notification_digests() -> list[int]:
    """Beat safety net: a digest for anyone whose scheduled task was lost (worker restart)."""
    from .services.notifications import users_with_pending

    users = users_with_pending()
    for user_id in users:
        transaction.on_commit(lambda user_id=user_id: send_notification_digest.delay(user_id))
    return users


@shared_task(acks_late=True)
def notify_all_stuck_cards() -> list[int]:
    from .models import Team

    ids = list(Team.objects.values_list("pk", flat=True))
    for team_id in ids:
        transaction.on_commit(lambda team_id=team_id: notify_team_stuck_cards.delay(team_id))
    return ids


@shared_task(acks_late=True)
def notify_team_stuck_cards(team_id: int) -> int:
    from .services.notifications import notify_stuck_cards

    return notify_stuck_cards(team_id=team_id)


@shared_task(acks_late=True)
def archive_all_done_cards() -> list[int]:
    from .models import Team

    ids = list(Team.objects.values_list("pk", flat=True))
    for team_id in ids:
        transaction.on_commit(lambda team_id=team_id: archive_team_done_cards.delay(team_id))
    return ids


@shared_task(acks_late=True)
def archive_team_done_cards(team_id: int) -> int:
    from .models import Team
    from .services.cards import cards_archive_done

    team = Team.objects.filter(pk=team_id).first()
    return cards_archive_done(team=team) if team is not None else 0
