"""Maturity writes: questionnaire submissions and the nightly snapshot."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import maturity as mm
from ..access import ensure_can_edit, ensure_manager, membership_for
from ..errors import DomainError
from ..models import MaturityAssessment, MaturitySnapshot, Team, User


class AnswersError(DomainError):
    """Questionnaire problems; `errors` maps 'stage.attribute' to a message for each bad cell."""

    def __init__(self, errors: dict[str, str]) -> None:
        count = len(errors)
        first = next(iter(errors.values()))
        message = first if count == 1 else f"{count} answers need attention. First: {first}"
        super().__init__(message, field=next(iter(errors)))
        self.errors = errors


def answers_clean(answers: Any) -> dict[str, dict[str, int]]:
    """Validated copy of the answers (only known stages/attributes), or AnswersError listing every problem."""
    errors = mm.answers_errors(answers)
    if errors:
        raise AnswersError(errors)
    return {s: {a: int(answers[s][a]) for a in mm.ATTRIBUTE_KEYS} for s in mm.STAGE_KEYS}


@transaction.atomic
def maturity_assessment_submit(*, team: Team, respondent: User, answers: Mapping[str, Any]) -> MaturityAssessment:
    """Store one completed questionnaire. Managers and members may answer; viewers may not."""
    ensure_can_edit(membership_for(user=respondent, team=team))
    cleaned = answers_clean(answers)
    return MaturityAssessment.objects.create(team=team, respondent=respondent, answers=cleaned)


def maturity_tolerance_set(*, team: Team, actor: User, tolerance: float | None) -> Team:
    """Set the team's relative tolerance for reproduced runs (None: the site default). Managers only."""
    ensure_manager(membership_for(user=actor, team=team))
    if tolerance is not None and not 0.0 <= tolerance <= 1.0:  # NaN fails the comparison too
        raise DomainError("The tolerance is a share between 0 and 1, e.g. 0.02 for 2%.",
                          field="maturity_repro_tolerance")
    team.maturity_repro_tolerance = tolerance
    team.save(update_fields=["maturity_repro_tolerance"])
    return team


def _as_of(date: dt.date) -> dt.datetime:
    """A snapshot for today is taken now; one for a past day looks at the end of that day."""
    now = timezone.now()
    if date >= timezone.localdate(now):
        return now
    end = dt.datetime.combine(date + dt.timedelta(days=1), dt.time.min)
    return timezone.make_aware(end) - dt.timedelta(microseconds=1)


def maturity_snapshot_take(*, team: Team, date: dt.date | None = None) -> MaturitySnapshot:
    """Store (or refresh) the team's snapshot for `date`; one row per (team, date) however often it runs."""
    from ..selectors.maturity import maturity_report

    date = date or timezone.localdate()
    data = maturity_report(team=team, as_of=_as_of(date)).snapshot_data()
    try:
        with transaction.atomic():
            snapshot, _ = MaturitySnapshot.objects.update_or_create(
                team=team, date=date, defaults={"data": data, "created_at": timezone.now()}
            )
    except IntegrityError:
        # A concurrent worker created the row between our read and insert: update theirs.
        with transaction.atomic():
            snapshot = MaturitySnapshot.objects.select_for_update().get(team=team, date=date)
            snapshot.data = data
            snapshot.save(update_fields=["data"])
    return snapshot
