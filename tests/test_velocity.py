"""Velocity report: hand-checkable scenario for every metric, CSV, pages, permissions, query counts."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from experiments.models import (
    CardKind,
    Iteration,
    RunStatus,
    Stage,
    VerdictProposal,
    VerdictStatus,
)
from experiments.selectors.velocity import (
    VELOCITY_CSV_HEADER,
    format_hours,
    parse_report_params,
    percentile,
    velocity_csv_rows,
    velocity_report,
)
from experiments.services.boards import board_create
from experiments.services.iterations import (
    iteration_close,
    iteration_commit_card,
    iteration_create,
    iteration_start,
)
from experiments.services.verdicts import verdict_decide
from tests.test_velocity_support import clock, history, make_card, move, run_for, t

pytestmark = pytest.mark.django_db


def params_for(team, boards=(), **data):
    data = {"from": "2025-03-03", "to": "2025-03-05", **data}
    return parse_report_params(team=team, data=data, boards=list(boards))


@pytest.fixture
def scenario(team, other_team, board, member):
    """Mon 3 - Wed 5 March 2025 (UTC):

    Mon 3: E1 running 08:00, run R1 finishes 10:00 (first signal 2 h), R2 (unlinked) fails 11:00,
           E1 reaches Done 12:00, H1 verdict "supported" confirmed 15:00 (5 h after R1 ended).
           Iteration I1 (Mon) commits E1 and E2 and closes with E1 done, E2 carried over.
    Tue 4: E2 running 08:00, R3 finishes 14:00 (first signal 6 h); H2 refuted at 09:00 (proposal only).
           Iteration I2 (Tue) is still open with E2 carried into it.
    Wed 5: E1 bounced back to Analyzing on Tue and reaches Done again (not a second completion);
           an unlinked run R5 finishes 12:00.
    """
    h1 = make_card(board, CardKind.HYPOTHESIS, "Dropout helps", t(1, 10), actor=member)
    e1 = make_card(board, CardKind.EXPERIMENT, "Dropout 0.3", t(1, 11), actor=member, parent=h1)
    h2 = make_card(board, CardKind.HYPOTHESIS, "Wider layers help", t(2), actor=member)
    e2 = make_card(board, CardKind.EXPERIMENT, "Width 2x", t(2, 1), actor=member, parent=h2)

    i1 = iteration_create(team=team, start=t(3), end=t(4), name="I1")
    i2 = iteration_create(team=team, start=t(4), end=t(5), name="I2")
    with clock(t(2, 20)):
        iteration_start(iteration=i1)
        iteration_commit_card(iteration=i1, card=e1, actor=member)
        iteration_commit_card(iteration=i1, card=e2, actor=member)

    move(e1, Stage.RUNNING, t(3, 8))
    run_for(e1, team, start=t(3, 8), end=t(3, 10), name="R1")
    run_for(None, team, end=t(3, 11), status=RunStatus.FAILED, name="R2")
    move(e1, Stage.DONE, t(3, 12))
    proposal = VerdictProposal.objects.create(card=h1, proposed="supported", created_at=t(3, 10, 5))
    with clock(t(3, 15)):
        verdict_decide(proposal=proposal, actor=member)

    with clock(t(4)):
        iteration_close(iteration=i1, actor=member)
        iteration_start(iteration=i2)

    move(e2, Stage.RUNNING, t(4, 8))
    run_for(e2, team, start=t(4, 8), end=t(4, 14), name="R3")
    run_for(e2, team, start=t(4, 9), end=None, status=RunStatus.RUNNING, name="R4")
    VerdictProposal.objects.create(
        card=h2, proposed="refuted", decided="refuted", status=VerdictStatus.CONFIRMED,
        created_at=t(4, 8), decided_at=t(4, 9),
    )
    move(e1, Stage.ANALYZING, t(4, 10))
    move(e1, Stage.DONE, t(5, 10))
    run_for(None, team, end=t(5, 12), name="R5")
    run_for(None, other_team, end=t(3, 12), name="theirs")  # another team's run never counts
    return {"h1": h1, "e1": e1, "h2": h2, "e2": e2, "i1": i1, "i2": i2}


def test_percentile_nearest_rank():
    values = list(range(1, 11))
    assert [percentile(values, p) for p in (50, 85, 95)] == [5, 9, 10]
    assert percentile([7.0], 95) == 7.0
    assert percentile([4, 1, 3, 2], 50) == 2  # sorts first
    assert percentile([], 50) is None


def test_format_hours():
    assert format_hours(None) == "—"
    assert format_hours(0.5) == "30 min"
    assert format_hours(5) == "5.0 h"
    assert format_hours(72) == "3.0 d"


def test_daily_rows(team, scenario):
    report = velocity_report(team=team, params=params_for(team))
    mon, tue, wed = report.rows
    assert [r.period.label for r in report.rows] == ["Mon 03 Mar", "Tue 04 Mar", "Wed 05 Mar"]

    assert (mon.committed, mon.completed, mon.carried_over, mon.completion_rate) == (2, 1, 1, 0.5)
    assert (mon.supported, mon.refuted, mon.inconclusive) == (1, 0, 0)
    assert mon.experiments_completed == 1
    assert (mon.runs_finished, mon.runs_failed) == (1, 1)
    assert mon.first_signal_hours == [2.0]  # H1 only "started" when closed at 15:00: left out
    assert mon.decision_hours == [5.0]

    assert (tue.committed, tue.completed, tue.open_iterations) == (1, None, 1)
    assert tue.completion_rate is None
    assert (tue.supported, tue.refuted) == (0, 1)  # decided through the proposal only
    assert tue.experiments_completed == 0
    assert tue.runs_finished == 1
    assert tue.first_signal_hours == [6.0]
    assert tue.decision_hours == []  # H2 had no runs

    assert wed.experiments_completed == 0  # E1 reaching Done again is not a second completion
    assert wed.runs_finished == 1
    assert wed.committed is None

    tot = report.totals
    assert (tot.committed, tot.committed_closed, tot.completed, tot.carried_over) == (3, 2, 1, 1)
    assert tot.completion_rate == 0.5
    assert (tot.hypotheses_resolved, tot.experiments_completed, tot.runs_finished, tot.runs_failed) == (2, 1, 3, 1)
    assert tot.first_signal_median == 4.0
    assert tot.decision_median == 5.0


def test_committed_vs_completed_stays_frozen_after_cards_move(team, scenario):
    before = velocity_report(team=team, params=params_for(team)).rows[0]
    move(scenario["e2"], Stage.DONE, t(5, 9))  # the carried-over card finishes later...
    move(scenario["e1"], Stage.BACKLOG, t(5, 11))  # ...and the completed one is reopened
    after = velocity_report(team=team, params=params_for(team)).rows[0]
    assert (before.committed, before.completed, before.carried_over) == (2, 1, 1)
    assert (after.committed, after.completed, after.carried_over) == (2, 1, 1)


def test_grouped_by_iteration(team, scenario):
    report = velocity_report(team=team, params=params_for(team, group="iteration"))
    assert [r.period.label for r in report.rows] == ["I1", "I2 (active)"]
    i1, i2 = report.rows
    assert (i1.committed, i1.completed, i1.carried_over) == (2, 1, 1)
    assert (i2.committed, i2.completed) == (1, None)
    assert i1.runs_finished == 1 and i2.runs_finished == 1
    assert report.outside_iterations == 1  # R5 ended on Wednesday, after I2


def test_grouped_by_week_covers_whole_iso_weeks(team, scenario):
    params = params_for(team, group="week")
    assert (params.date_from, params.date_to) == (dt.date(2025, 3, 3), dt.date(2025, 3, 9))
    report = velocity_report(team=team, params=params)
    (week,) = report.rows
    assert week.period.key == "2025-W10"
    assert (week.hypotheses_resolved, week.experiments_completed, week.runs_finished) == (2, 1, 3)
    assert (week.committed, week.completed) == (3, 1)


def test_board_filter(team, board, scenario, member):
    other = board_create(team=team, name="Ranking", key="RANK")
    h = make_card(other, CardKind.HYPOTHESIS, "Elsewhere", t(1), actor=member)
    VerdictProposal.objects.create(card=h, proposed="inconclusive", decided="inconclusive",
                                   status=VerdictStatus.CONFIRMED, decided_at=t(3, 9))
    everything = velocity_report(team=team, params=params_for(team)).totals
    only_churn = velocity_report(team=team, params=params_for(team, [board, other], board=str(board.pk))).totals
    assert everything.hypotheses_resolved == 3 and everything.inconclusive == 1
    assert only_churn.hypotheses_resolved == 2 and only_churn.inconclusive == 0
    assert only_churn.runs_finished == 2  # R1 and R3 are linked to this board; R5 is not


def test_team_timezone_shifts_day_boundaries(team, board, member):
    team.timezone = "America/New_York"
    team.save()
    # 02:00 UTC on Tue 4 March is still Monday evening in New York.
    run_for(None, team, end=t(4, 2))
    report = velocity_report(team=team, params=params_for(team))
    assert [r.runs_finished for r in report.rows] == [1, 0, 0]


def test_params_fall_back_with_messages(team):
    now = t(10, 12)
    p = parse_report_params(team=team, data={"from": "yesterday", "group": "month"}, now=now)
    assert p.group == "day"
    assert p.date_to == dt.date(2025, 3, 10) and p.date_from == dt.date(2025, 2, 25)
    assert any("not a valid start date" in e for e in p.errors)
    assert any("Unknown grouping" in e for e in p.errors)
    swapped = parse_report_params(team=team, data={"from": "2025-03-05", "to": "2025-03-01"}, now=now)
    assert (swapped.date_from, swapped.date_to) == (dt.date(2025, 3, 1), dt.date(2025, 3, 5))
    assert swapped.errors
    huge = parse_report_params(team=team, data={"from": "2020-01-01", "to": "2025-03-01"}, now=now)
    assert (huge.date_to - huge.date_from).days + 1 == 400
    foreign = parse_report_params(team=team, data={"board": "999"}, now=now)
    assert foreign.board is None and "not on this team" in foreign.errors[0]


def test_csv_content(team, scenario, client_for, member):
    response = client_for(member).get(
        reverse("velocity_csv", args=[team.slug]), {"from": "2025-03-03", "to": "2025-03-05"}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert 'filename="vision-velocity-day-2025-03-03-2025-03-05.csv"' in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == VELOCITY_CSV_HEADER
    col = {name: i for i, name in enumerate(rows[0])}
    mon = rows[1]
    assert mon[col["period"]] == "2025-03-03"
    assert mon[col["start"]] == "2025-03-03T00:00:00+00:00"
    assert [mon[col[k]] for k in ("committed", "completed", "carried_over", "completion_rate")] == [
        "2", "1", "1", "0.5000"
    ]
    assert [mon[col[k]] for k in ("supported", "refuted", "experiments_completed", "runs_finished", "runs_failed")] == [
        "1", "0", "1", "1", "1"
    ]
    assert mon[col["time_to_first_signal_median_hours"]] == "2.00"
    assert mon[col["decision_latency_median_hours"]] == "5.00"
    tue = rows[2]
    assert tue[col["completed"]] == ""  # open iteration: nothing frozen yet
    total = rows[-1]
    assert total[col["period"]] == "Total"
    assert total[col["hypotheses_resolved"]] == "2"
    assert total[col["time_to_first_signal_median_hours"]] == "4.00"
    assert len(rows) == 5


def test_csv_rows_match_report(team, scenario):
    report = velocity_report(team=team, params=params_for(team, group="iteration"))
    rows = velocity_csv_rows(report)
    assert [r[3] for r in rows] == ["I1", "I2", ""]
    assert [r[4] for r in rows] == ["closed", "active", ""]


def test_page_renders_numbers_charts_and_explanations(team, scenario, client_for, member):
    response = client_for(member).get(reverse("velocity", args=[team.slug]), {"from": "2025-03-03", "to": "2025-03-05"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Committed vs completed" in html
    assert "How each number is measured" in html
    assert "1 / 2" in html  # completed / committed in closed iterations
    assert "50% of commitments" in html
    assert 'data-figure="commitment"' in html and 'data-figure="latency"' in html
    assert "plotly/plotly.min.js" in html
    figures = response.context["figures"]
    assert figures["verdicts"]["data"][0]["y"] == [1, 0, 0]
    assert figures["commitment"]["data"][1]["y"] == [1, None, None]
    payload = html.split('id="report-figures" type="application/json">')[1].split("</script>")[0]
    assert set(json.loads(payload)) == {"commitment", "verdicts", "output", "latency"}
    assert f'href="{reverse("iteration_detail", args=[team.slug, scenario["i1"].pk])}"' not in html  # day grouping
    by_it = client_for(member).get(
        reverse("velocity", args=[team.slug]), {"group": "iteration", "from": "2025-03-03", "to": "2025-03-05"}
    )
    assert reverse("iteration_detail", args=[team.slug, scenario["i1"].pk]) in by_it.content.decode()


def test_empty_state(team, client_for, member):
    response = client_for(member).get(reverse("velocity", args=[team.slug]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "Nothing to report for this range yet" in html
    assert response.context["figures"] == {}


def test_bad_input_is_explained(team, client_for, member):
    response = client_for(member).get(reverse("velocity", args=[team.slug]), {"from": "31/02/2025"})
    assert response.status_code == 200
    assert "is not a valid start date" in response.content.decode()


def test_other_team_is_404_and_viewers_can_read(team, client_for, outsider, viewer, scenario):
    for name in ("velocity", "velocity_csv"):
        assert client_for(outsider).get(reverse(name, args=[team.slug])).status_code == 404
        assert client_for(viewer).get(reverse(name, args=[team.slug])).status_code == 200
    assert client_for(outsider).get(reverse("velocity", args=["no-such-team"])).status_code == 404


def test_login_required(client, team):
    response = client.get(reverse("velocity", args=[team.slug]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# --- Query counts: constant at N and 2N iterations/cards/events/runs ----------------------------


@pytest.mark.parametrize("group", ["day", "week", "iteration"])
def test_selector_query_count_is_constant(team, board, django_assert_num_queries, group):
    data = {"from": "2025-03-01", "to": "2025-04-30", "group": group}
    history(team, board, 10, base=t(1))
    params = parse_report_params(team=team, data=data)
    with django_assert_num_queries(7):
        small = velocity_report(team=team, params=params)
    history(team, board, 10, base=t(11))
    with django_assert_num_queries(7):
        large = velocity_report(team=team, params=params)
    assert small.totals.committed == 20 and large.totals.committed == 40
    assert large.totals.hypotheses_resolved == 20 and large.totals.runs_finished == 40
    assert large.totals.completed == 20


def test_page_query_count_is_constant(team, board, client_for, member, django_assert_num_queries):
    client = client_for(member)
    url = reverse("velocity", args=[team.slug])
    data = {"from": "2025-03-01", "to": "2025-04-30", "group": "iteration"}
    client.get(url, data)  # warm the session
    history(team, board, 15, base=t(1))
    with CaptureQueriesContext(connection) as baseline:
        client.get(url, data)
    history(team, board, 15, base=t(16))
    assert Iteration.objects.count() == 30
    with django_assert_num_queries(len(baseline.captured_queries)):
        response = client.get(url, data)
    assert len(baseline.captured_queries) == 12  # + the Benjamini-Hochberg panel's decided verdicts
    assert len(response.context["rows"]) == 30


def test_hypothesis_gets_first_signal_from_its_experiments(team, scenario):
    move(scenario["h2"], Stage.RUNNING, t(4, 7))  # H2 started before E2's run R3 finished at 14:00
    tue = velocity_report(team=team, params=params_for(team)).rows[1]
    assert sorted(tue.first_signal_hours) == [6.0, 7.0]


def test_decision_latency_uses_the_last_run_before_the_decision(team, scenario):
    # A run linked to the hypothesis itself ends at 13:00, after E1's R1 (10:00): latency 2 h, not 5 h.
    run_for(scenario["h1"], team, end=t(3, 13), status=RunStatus.FAILED)
    # A run that ended after the decision is not evidence for it.
    run_for(scenario["h1"], team, end=t(3, 16))
    mon = velocity_report(team=team, params=params_for(team)).rows[0]
    assert mon.decision_hours == [2.0]
