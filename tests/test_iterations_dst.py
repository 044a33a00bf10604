"""Iterations roll in the team's local time: across DST changes a daily (or weekly) cadence keeps
its local start time, so days are 23 or 25 hours long there, never an hour adrift."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from experiments.models import Iteration, IterationState
from experiments.services.iterations import iteration_create, iteration_roll, iteration_start, local_days_after

BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


def local(zone: ZoneInfo, y: int, m: int, d: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, hour, tzinfo=zone)


def set_zone(team, name: str, days: int = 1) -> None:
    team.timezone = name
    team.iteration_days = days
    team.save()


def roll_days(team, first_start: dt.datetime, days: int, step_days: int = 1) -> list[Iteration]:
    """Start a cadence at `first_start` and roll it just after each iteration ends."""
    it = iteration_start(iteration=iteration_create(team=team, start=first_start))
    for _ in range(days):
        it = iteration_roll(team=team, now=it.end + dt.timedelta(minutes=1))
    return list(Iteration.objects.filter(team=team).order_by("start"))


@pytest.mark.parametrize(
    ("zone_name", "first", "short", "long"),
    [
        # Europe: clocks go forward on the last Sunday of March and back on the last Sunday of October.
        ("Europe/Berlin", (2025, 3, 28), (2025, 3, 30), None),
        ("Europe/Berlin", (2025, 10, 24), None, (2025, 10, 26)),
        # America: second Sunday of March, first Sunday of November.
        ("America/New_York", (2025, 3, 7), (2025, 3, 9), None),
        ("America/New_York", (2025, 10, 31), None, (2025, 11, 2)),
    ],
)
def test_daily_cadence_keeps_local_midnight_across_dst(team, zone_name, first, short, long):
    set_zone(team, zone_name)
    zone = ZoneInfo(zone_name)
    iterations = roll_days(team, local(zone, *first), 4)
    assert len(iterations) == 5
    for i, it in enumerate(iterations):
        start, end = it.start.astimezone(zone), it.end.astimezone(zone)
        assert (start.hour, start.minute, end.hour, end.minute) == (0, 0, 0, 0), it
        assert start.date() == dt.date(*first) + dt.timedelta(days=i)
        assert (end.date() - start.date()).days == 1
        hours = (it.end - it.start).total_seconds() / 3600
        day = start.date().timetuple()[:3]
        assert hours == (23 if day == short else 25 if day == long else 24), (it, hours)
        assert it.name == f"Day {start:%a %d %b %Y}"
    assert [it.state for it in iterations] == [IterationState.CLOSED] * 4 + [IterationState.ACTIVE]


@pytest.mark.parametrize("first", [(2025, 3, 7), (2025, 10, 31)])
def test_nine_oclock_cadence_in_new_york_keeps_nine_local(team, first):
    set_zone(team, "America/New_York")
    for it in roll_days(team, local(NEW_YORK, *first, 9), 4):
        assert it.start.astimezone(NEW_YORK).hour == 9 and it.end.astimezone(NEW_YORK).hour == 9
        assert it.name == f"Day {it.start.astimezone(NEW_YORK):%a %d %b %Y}"


def test_weekly_iterations_start_on_local_monday_morning_across_the_change(team):
    set_zone(team, "Europe/Berlin", days=7)
    iterations = roll_days(team, local(BERLIN, 2025, 3, 24, 9), 2)
    starts = [it.start.astimezone(BERLIN) for it in iterations]
    assert [(s.date(), s.hour) for s in starts] == [(dt.date(2025, 3, 24), 9), (dt.date(2025, 3, 31), 9),
                                                   (dt.date(2025, 4, 7), 9)]
    assert iterations[0].end - iterations[0].start == dt.timedelta(days=7, hours=-1)


def test_outage_across_dst_skips_whole_local_days(team):
    set_zone(team, "Europe/Berlin")
    it = iteration_start(iteration=iteration_create(team=team, start=local(BERLIN, 2025, 3, 28)))
    nxt = iteration_roll(team=team, now=local(BERLIN, 2025, 4, 2, 15))
    assert it.end == local(BERLIN, 2025, 3, 29)
    assert (nxt.start, nxt.end) == (local(BERLIN, 2025, 4, 2), local(BERLIN, 2025, 4, 3))


def test_create_defaults_end_to_local_calendar_days(team):
    set_zone(team, "America/New_York", days=2)
    it = iteration_create(team=team, start=local(NEW_YORK, 2025, 11, 1, 8))
    assert it.end == local(NEW_YORK, 2025, 11, 3, 8)
    assert it.end - it.start == dt.timedelta(hours=49)


def test_local_days_after_resolves_gap_and_fold():
    # 02:30 does not exist in Berlin on 30 March 2025: it resolves to 03:30 summer time.
    assert local_days_after(local(BERLIN, 2025, 3, 29, 2) + dt.timedelta(minutes=30), 1, BERLIN) == dt.datetime(
        2025, 3, 30, 1, 30, tzinfo=dt.UTC)
    # 01:30 happens twice in New York on 2 November 2025: the first (daylight) one.
    assert local_days_after(dt.datetime(2025, 11, 1, 5, 30, tzinfo=dt.UTC), 1, NEW_YORK) == dt.datetime(
        2025, 11, 2, 5, 30, tzinfo=dt.UTC)
    assert local_days_after(dt.datetime(2025, 6, 1, 12, tzinfo=dt.UTC), 3, dt.UTC) == dt.datetime(
        2025, 6, 4, 12, tzinfo=dt.UTC)


def test_maturity_weeks_are_local_calendar_weeks(team):
    """Maturity judges gates per local week: a run late on Sunday evening in New York (Monday in UTC)
    belongs to the week it was in for the team, also in the week the clocks change."""
    from experiments.models import Run
    from experiments.selectors.maturity import maturity_evidence

    set_zone(team, "America/New_York")
    sunday_night = local(NEW_YORK, 2025, 11, 2, 23)  # the first day of standard time
    monday = local(NEW_YORK, 2025, 11, 3, 1)
    for i, at in enumerate((sunday_night, sunday_night, monday)):
        Run.objects.create(team=team, external_id=f"w{i}", status="FINISHED", start_time=at, end_time=at,
                           code_version="c")
    evidence = maturity_evidence(team=team, as_of=local(NEW_YORK, 2025, 11, 5), window_days=14)
    counts = {week: tally.runs for week, tally in evidence.weeks.items() if tally.runs}
    assert counts == {dt.date(2025, 10, 27): 2, dt.date(2025, 11, 3): 1}
    assert all(week.weekday() == 0 for week in evidence.weeks)
