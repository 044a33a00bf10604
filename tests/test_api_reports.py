"""REST report endpoints: velocity, flow and maturity as JSON, over the same selectors as the pages.

A small hand-made scenario (cards moved and decided through the services) checks the JSON against
hand-computed numbers and against the selectors; then bad parameters, scoping, auth and query counts.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from experiments import maturity as mm
from experiments.models import (
    CardKind,
    CardRun,
    MaturitySnapshot,
    Run,
    RunStatus,
    Stage,
    VerdictProposal,
)
from experiments.selectors.flow import flow_report
from experiments.selectors.maturity import maturity_report
from experiments.selectors.velocity import parse_report_params, velocity_report
from experiments.services.boards import board_create
from experiments.services.iterations import (
    iteration_close,
    iteration_commit_card,
    iteration_create,
    iteration_start,
)
from experiments.services.maturity import maturity_assessment_submit, maturity_snapshot_take
from experiments.services.runs import run_create
from experiments.services.tokens import token_create
from experiments.services.verdicts import verdict_decide
from tests.test_velocity_support import clock, history, make_card, move, t

pytestmark = pytest.mark.django_db

RANGE = {"start": "2025-03-03", "end": "2025-03-05"}
NOW = t(6, 12)  # Thu 6 March 2025, after the scenario
_ids = itertools.count(1)


def url(team, report: str) -> str:
    return f"/api/teams/{team.slug}/reports/{report}/"


@pytest.fixture
def api_for():
    def make(user) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client

    return make


def finished_run(team, card, *, start: dt.datetime, end: dt.datetime, status: str = RunStatus.FINISHED) -> Run:
    """A run through the run service; linked directly so the scenario's explicit card moves stand."""
    run = run_create(team=team, name=f"run-{next(_ids)}", status=status, start_time=start, end_time=end)
    if card is not None:
        CardRun.objects.create(card=card, run=run)
    return run


@pytest.fixture
def scenario(team, other_team, board, member):
    """Mon 3 - Wed 5 March 2025 (UTC team):

    Mon 3: E1 running 08:00, its run finishes 10:00 (first signal 2 h), an unlinked run fails 11:00,
           E1 Done 12:00 (cycle 4 h, lead 49 h), H1 verdict "supported" confirmed at 15:00 (5 h after the run),
           which moves H1 to Done.
           Iteration I1 (Mon) commits E1 and E2 and closes with E1 done, E2 carried over.
    Tue 4: E2 running 08:00 and still running (in progress), its run finishes 14:00 (first signal 6 h).
    """
    h1 = make_card(board, CardKind.HYPOTHESIS, "Dropout helps", t(1, 10), actor=member)
    e1 = make_card(board, CardKind.EXPERIMENT, "Dropout 0.3", t(1, 11), actor=member, parent=h1)
    h2 = make_card(board, CardKind.HYPOTHESIS, "Wider layers help", t(2), actor=member)
    e2 = make_card(board, CardKind.EXPERIMENT, "Width 2x", t(2, 1), actor=member, parent=h2)
    i1 = iteration_create(team=team, start=t(3), end=t(4), name="I1")
    with clock(t(2, 20)):
        iteration_start(iteration=i1)
        iteration_commit_card(iteration=i1, card=e1, actor=member)
        iteration_commit_card(iteration=i1, card=e2, actor=member)
    move(e1, Stage.RUNNING, t(3, 8))
    finished_run(team, e1, start=t(3, 8), end=t(3, 10))
    finished_run(team, None, start=t(3, 9), end=t(3, 11), status=RunStatus.FAILED)
    move(e1, Stage.DONE, t(3, 12))
    proposal = VerdictProposal.objects.create(card=h1, proposed="supported", created_at=t(3, 10, 5))
    with clock(t(3, 15)):
        verdict_decide(proposal=proposal, actor=member)
    with clock(t(4)):
        iteration_close(iteration=i1, actor=member)
    move(e2, Stage.RUNNING, t(4, 8))
    finished_run(team, e2, start=t(4, 8), end=t(4, 14))
    finished_run(other_team, None, start=t(3, 9), end=t(3, 12))  # never counted for this team
    return {"h1": h1, "e1": e1, "h2": h2, "e2": e2, "i1": i1}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()["error"]
    assert body["code"] == code and body["message"]
    return body


# --- Velocity ----------------------------------------------------------------------------------------


def test_velocity_daily_values(api_for, member, team, scenario):
    body = api_for(member).get(url(team, "velocity"), RANGE).json()
    assert body["team"] == "vision"
    assert body["params"] == {"group": "day", "start": "2025-03-03", "end": "2025-03-05", "board": None,
                              "kind": "work", "timezone": team.timezone}
    mon, tue, wed = body["periods"]
    assert [p["key"] for p in body["periods"]] == ["2025-03-03", "2025-03-04", "2025-03-05"]
    assert mon["start"] == "2025-03-03T00:00:00Z" and mon["end"] == "2025-03-04T00:00:00Z"
    assert (mon["committed"], mon["completed"], mon["carried_over"], mon["completion_rate"]) == (2, 1, 1, 0.5)
    assert mon["hypotheses_resolved"] == {"total": 1, "supported": 1, "refuted": 0, "inconclusive": 0}
    assert (mon["experiments_completed"], mon["runs_finished"], mon["runs_failed"]) == (1, 1, 1)
    assert (mon["time_to_first_signal_hours"], mon["first_signal_cards"]) == (2.0, 1)
    assert (mon["decision_latency_hours"], mon["decisions_timed"]) == (5.0, 1)
    assert (tue["committed"], tue["completed"], tue["runs_finished"]) == (None, None, 1)
    assert tue["time_to_first_signal_hours"] == 6.0
    assert wed["runs_finished"] == 0 and body["has_data"] is True
    tot = body["totals"]
    assert (tot["key"], tot["committed"], tot["completed"], tot["runs_finished"], tot["runs_failed"]) == (
        "total", 2, 1, 2, 1)
    assert (tot["time_to_first_signal_hours"], tot["first_signal_cards"]) == (4.0, 2)


@pytest.mark.parametrize("group", ["day", "week", "iteration"])
def test_velocity_matches_the_selector(api_for, member, team, scenario, group):
    body = api_for(member).get(url(team, "velocity"), {**RANGE, "group": group}).json()
    params = parse_report_params(team=team, data={"from": RANGE["start"], "to": RANGE["end"], "group": group})
    report = velocity_report(team=team, params=params)
    assert body["params"]["start"] == params.date_from.isoformat()  # weeks widen to whole ISO weeks
    assert len(body["periods"]) == len(report.rows)
    for got, row in zip([*body["periods"], body["totals"]], [*report.rows, report.totals], strict=True):
        assert got["key"] == row.period.key and got["label"] == row.period.label
        assert (got["committed"], got["completed"], got["carried_over"]) == (
            row.committed, row.completed, row.carried_over)
        assert got["hypotheses_resolved"]["total"] == row.hypotheses_resolved
        assert got["experiments_completed"] == row.experiments_completed
        assert (got["runs_finished"], got["runs_failed"]) == (row.runs_finished, row.runs_failed)
        assert got["time_to_first_signal_hours"] == row.first_signal_median
        assert got["decision_latency_hours"] == row.decision_median
    if group == "iteration":
        assert body["periods"][0]["iteration"] == {"id": scenario["i1"].pk, "name": "I1", "state": "closed"}


def test_velocity_board_filter(api_for, member, team, board, scenario):
    other = board_create(team=team, name="Other", key="OTH")
    client = api_for(member)
    mine = client.get(url(team, "velocity"), {**RANGE, "board": board.pk}).json()
    assert mine["totals"]["hypotheses_resolved"]["supported"] == 1
    body = client.get(url(team, "velocity"), {**RANGE, "board": other.pk}).json()
    assert body["params"]["board"] == other.pk
    assert body["totals"]["hypotheses_resolved"]["total"] == 0 and body["totals"]["runs_finished"] == 0


def test_times_are_in_the_team_time_zone(api_for, member, team, scenario):
    team.timezone = "Europe/Berlin"
    team.save()
    body = api_for(member).get(url(team, "velocity"), RANGE).json()
    assert body["params"]["timezone"] == "Europe/Berlin"
    assert body["periods"][0]["start"] == "2025-03-03T00:00:00+01:00"


# --- Flow --------------------------------------------------------------------------------------------


def test_flow_values_match_the_selector(api_for, member, team, scenario):
    with clock(NOW):
        body = api_for(member).get(url(team, "flow"), RANGE).json()
        params = parse_report_params(team=team, data={"from": RANGE["start"], "to": RANGE["end"]},
                                     kinds=("work", "hypothesis", "experiment"))
        report = flow_report(team=team, params=params)
    # E1: created Sat 1 11:00, started Mon 08:00, done Mon 12:00 (cycle 4 h, lead 49 h).
    # H1: created Sat 1 10:00, never in progress, moved to Done by its verdict Mon 15:00 (lead 53 h).
    assert body["throughput"]["total"] == 2
    assert [p["done"] for p in body["throughput"]["periods"]] == report.throughput == [2, 0, 0]
    assert body["cycle_time_hours"] == {"p50": 4.0, "p85": 4.0, "p95": 4.0, "count": 1}
    assert body["lead_time_hours"] == {"p50": 49.0, "p85": 53.0, "p95": 53.0, "count": 2}  # nearest rank
    assert body["without_cycle_time"] == 1
    assert [d["key"] for d in body["done"]] == [scenario["e1"].key, scenario["h1"].key]
    assert body["done"][0]["cycle_time_hours"] == 4.0 and body["done"][1]["cycle_time_hours"] is None
    assert body["done"][0]["started_at"] == "2025-03-03T08:00:00Z" and body["done"][0]["stage"] == "done"
    # E2 has been running since Tue 08:00; at Thu 12:00 that is 52 h.
    assert body["wip"] == {"now": 1, "oldest_age_hours": 52.0}
    assert [(i["key"], i["age_hours"]) for i in body["in_progress"]] == [(scenario["e2"].key, 52.0)]
    assert [d["date"] for d in body["cfd"]] == ["2025-03-03", "2025-03-04", "2025-03-05"]
    for i, day in enumerate(body["cfd"]):
        assert {s: day[s] for s in report.cfd} == {s: v[i] for s, v in report.cfd.items()}
        assert day["wip"] == report.wip[i]
    assert [(d["backlog"], d["running"], d["done"], d["wip"]) for d in body["cfd"]] == [
        (2, 0, 2, 0), (1, 1, 2, 1), (1, 1, 2, 1)]


def test_flow_kind_filter(api_for, member, team, scenario):
    with clock(NOW):
        body = api_for(member).get(url(team, "flow"), {**RANGE, "kind": "hypothesis"}).json()
    assert body["params"]["kind"] == "hypothesis"
    assert [d["key"] for d in body["done"]] == [scenario["h1"].key]  # H1 only; H2 waits in the backlog
    assert body["throughput"]["total"] == 1 and body["in_progress"] == []


# --- Maturity ----------------------------------------------------------------------------------------


def test_maturity_matches_the_selector(api_for, member, team, board):
    now = dt.datetime.now(dt.UTC)
    for i in range(12):  # enough runs for the run-based cells to be scored
        run_create(team=team, name=f"r{i}", status=RunStatus.FINISHED, start_time=now - dt.timedelta(hours=i + 2),
                   end_time=now - dt.timedelta(hours=i + 1), code_version="abc", seed=i,
                   trigger="ci" if i % 2 else "manual")
    answers = {s: {a: 5 for a in mm.ATTRIBUTE_KEYS} for s in mm.STAGE_KEYS}
    maturity_assessment_submit(team=team, respondent=member, answers=answers)
    with clock(now):
        body = api_for(member).get(url(team, "maturity")).json()
        report = maturity_report(team=team)
    evidence = body["evidence"]
    metrics = {m["key"]: m for m in evidence["metrics"]}
    assert list(metrics) == [m.key for m in mm.EVIDENCE_METRICS]
    assert (metrics["code_version"]["value"], metrics["code_version"]["sample"]) == (1.0, 12)
    assert metrics["code_version"]["sufficient"] is True and metrics["ci"]["value"] == 0.5
    assert metrics["criteria_first"]["sufficient"] is False
    assert evidence["index"] == report.evidence_index and evidence["by_stage"] == report.evidence_by_stage
    assert len(evidence["cells"]) == len(mm.STAGE_KEYS) * len(mm.ATTRIBUTE_KEYS)
    assert evidence["insufficient_cells"] == report.insufficient_count > 0
    got_cells = {(c["stage"], c["attribute"]): (c["score"], c["state"]) for c in evidence["cells"]}
    assert got_cells == {k: (c.score, c.state) for k, c in report.evidence_cells.items()}
    assert body["self_assessment"]["index"] == 5.0 and body["self_assessment"]["respondents"] == 1
    assert len(body["gaps"]) == len(report.gaps) > 0  # self-assessed 5 everywhere, evidence lower
    assert {(g["stage"], g["attribute"], g["diff"]) for g in body["gaps"]} == {
        (g.stage, g.attribute, g.diff) for g in report.gaps}
    google, azure = body["levels"]
    assert (google["model"], google["level"], google["max_level"]) == ("google", report.google.level, 2)
    assert (azure["model"], azure["level"]) == ("azure", report.azure.level)
    assert google["next"]["number"] == report.google.level + 1
    assert [s["key"] for s in google["next_steps"]] == [g.gate.key for g in report.google.next_steps]
    assert all(s["next_step"] and s["state"] in ("unmet", "insufficient") for s in google["next_steps"])
    assert [(s["weeks_met"], s["weeks_needed"]) for s in google["next_steps"]] == [
        (g.weeks_met, g.weeks_needed) for g in report.google.next_steps]
    assert [lv["level"] for lv in google["gates"]] == [1, 2]


def test_maturity_snapshots_trend(api_for, member, team):
    assert api_for(member).get(url(team, "maturity/snapshots")).json() == {"team": "vision", "snapshots": []}
    maturity_snapshot_take(team=team, date=dt.date(2025, 3, 1))
    maturity_snapshot_take(team=team, date=dt.date(2025, 3, 2))
    body = api_for(member).get(url(team, "maturity/snapshots")).json()
    assert [s["date"] for s in body["snapshots"]] == ["2025-03-01", "2025-03-02"]  # oldest first
    first = body["snapshots"][0]
    stored = MaturitySnapshot.objects.get(team=team, date=dt.date(2025, 3, 1)).data
    assert first["google_level"] == stored["google_level"] and first["evidence_index"] == stored["evidence_index"]
    assert first["data"]["metrics"].keys() == stored["metrics"].keys()
    limited = api_for(member).get(url(team, "maturity/snapshots"), {"limit": 1}).json()
    assert [s["date"] for s in limited["snapshots"]] == ["2025-03-02"]


# --- Bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("report", "query", "field", "needle"),
    [
        ("velocity", {"group": "month"}, "group", "day, week, iteration"),
        ("velocity", {"start": "2025-13-01"}, "start", "YYYY-MM-DD"),
        ("velocity", {"end": "yesterday"}, "end", "YYYY-MM-DD"),
        ("velocity", {"start": "2025-03-10", "end": "2025-03-01"}, "start", "after the end date"),
        ("velocity", {"start": "2023-01-01", "end": "2025-03-01"}, "start", "limited to 400 days"),
        ("velocity", {"board": "abc"}, "board", "valid integer"),
        ("velocity", {"from": "2025-03-01"}, "from", "Unknown field"),
        ("flow", {"kind": "result"}, "kind", "work, hypothesis, experiment"),
        ("flow", {"group": "year"}, "group", "not a valid grouping"),
        ("maturity", {"as_of": "2025-03-01"}, "as_of", "Unknown field"),
        ("maturity/snapshots", {"limit": "0"}, "limit", "greater than or equal to 1"),
    ],
)
def test_bad_params_are_400_json_naming_the_parameter(api_for, member, team, report, query, field, needle):
    body = assert_error(api_for(member).get(url(team, report), query), 400, "invalid")
    assert field in body["fields"]
    assert needle in body["message"], body["message"]
    assert body["message"].startswith(f"Invalid input: {field}:")


def test_board_of_another_team_is_400(api_for, member, team, other_team):
    theirs = board_create(team=other_team, name="Secret", key="SEC")
    body = assert_error(api_for(member).get(url(team, "flow"), {"board": theirs.pk}), 400, "invalid")
    assert body["fields"] == {"board": [f"No board with id {theirs.pk} on this team."]}


def test_start_after_today_without_end_is_400(api_for, member, team):
    future = (dt.date.today() + dt.timedelta(days=10)).isoformat()
    body = assert_error(api_for(member).get(url(team, "velocity"), {"start": future}), 400, "invalid")
    assert "after the end date" in body["message"]


# --- Scoping and authentication ------------------------------------------------------------------------

REPORTS = ["velocity", "flow", "maturity", "maturity/snapshots"]


@pytest.mark.parametrize("report", REPORTS)
def test_other_team_is_404_and_viewer_reads(api_for, outsider, viewer, team, report):
    assert_error(api_for(outsider).get(url(team, report)), 404, "not_found")
    assert api_for(viewer).get(url(team, report)).status_code == 200


@pytest.mark.parametrize("report", REPORTS)
def test_anonymous_is_401(team, report):
    body = assert_error(APIClient().get(url(team, report)), 401, "not_authenticated")
    assert "Bearer" in body["message"]


def test_unknown_team_is_404(api_for, member, team):
    assert_error(api_for(member).get("/api/teams/nope/reports/velocity/"), 404, "not_found")


@pytest.mark.parametrize("report", REPORTS)
def test_bearer_token_works(member, team, report):
    _, secret = token_create(user=member, name="dashboards")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get(url(team, report)).status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Bearer mlb_wrong")
    assert_error(client.get(url(team, report)), 401, "authentication_failed")


def test_reports_are_read_only(api_for, member, team):
    response = api_for(member).post(url(team, "velocity"), {}, format="json")
    assert_error(response, 405, "method_not_allowed")


# --- Query counts: the same at N and 2N rows ---------------------------------------------------------


def _counted(client, path, query, django_assert_num_queries, grow) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as small:
        assert client.get(path, query).status_code == 200
    grow()
    with django_assert_num_queries(len(small.captured_queries)):
        response = client.get(path, query)
    assert response.status_code == 200
    return len(small.captured_queries), response.json()


@pytest.mark.parametrize(("group", "expected"), [("day", 8), ("week", 8), ("iteration", 8)])
def test_velocity_query_count_is_constant(api_for, member, team, board, django_assert_num_queries, group, expected):
    history(team, board, 10, base=t(1))
    query = {"start": "2025-03-01", "end": "2025-04-30", "group": group}
    count, body = _counted(api_for(member), url(team, "velocity"), query, django_assert_num_queries,
                           lambda: history(team, board, 10, base=t(11)))
    assert count == expected  # membership + the selector's seven
    assert body["totals"]["committed"] == 40 and body["totals"]["runs_finished"] == 40


def test_velocity_board_filter_query_count(api_for, member, team, board, django_assert_num_queries):
    history(team, board, 10, base=t(1))
    query = {"start": "2025-03-01", "end": "2025-04-30", "board": board.pk}
    count, body = _counted(api_for(member), url(team, "velocity"), query, django_assert_num_queries,
                           lambda: history(team, board, 10, base=t(11)))
    assert count == 9  # membership + board + seven
    assert body["totals"]["committed"] == 40


@pytest.mark.parametrize(("group", "expected"), [("day", 5), ("iteration", 6)])
def test_flow_query_count_is_constant(api_for, member, team, board, django_assert_num_queries, group, expected):
    history(team, board, 10, base=t(1))
    query = {"start": "2025-03-01", "end": "2025-04-30", "group": group}
    with clock(t(30, 0, 0, month=4)):
        count, body = _counted(api_for(member), url(team, "flow"), query, django_assert_num_queries,
                               lambda: history(team, board, 10, base=t(11)))
    assert count == expected
    assert len(body["in_progress"]) == 20 and len(body["done"]) == 20


def _maturity_rows(team, board, member, n: int, offset: int) -> None:
    now = dt.datetime.now(dt.UTC)
    Run.objects.bulk_create([
        Run(team=team, external_id=f"m{offset + i}", status=RunStatus.FINISHED, code_version=f"c{i % 3}",
            data_version="d", seed=i, start_time=now - dt.timedelta(hours=i + 1), end_time=now)
        for i in range(n)
    ])
    MaturitySnapshot.objects.bulk_create([
        MaturitySnapshot(team=team, date=dt.date(2025, 1, 1) + dt.timedelta(days=offset + i),
                         data={"evidence_index": 3.0, "google_level": 0, "azure_level": 1})
        for i in range(n)
    ])


def test_maturity_query_counts_are_constant(api_for, member, team, board, django_assert_num_queries):
    maturity_assessment_submit(team=team, respondent=member,
                               answers={s: {a: 3 for a in mm.ATTRIBUTE_KEYS} for s in mm.STAGE_KEYS})
    _maturity_rows(team, board, member, 15, 0)
    client = api_for(member)
    count, body = _counted(client, url(team, "maturity"), {}, django_assert_num_queries,
                           lambda: _maturity_rows(team, board, member, 15, 15))
    assert count == 10  # membership + 8 evidence queries + latest assessments
    assert {m["key"]: m["sample"] for m in body["evidence"]["metrics"]}["code_version"] == 30
    _maturity_rows(team, board, member, 30, 30)
    count, body = _counted(client, url(team, "maturity/snapshots"), {}, django_assert_num_queries,
                           lambda: _maturity_rows(team, board, member, 60, 60))
    assert count == 2 and len(body["snapshots"]) == 120


# --- OpenAPI ---------------------------------------------------------------------------------------------


def test_schema_documents_the_report_endpoints(tmp_path):
    import yaml
    from django.core.management import call_command
    from drf_spectacular.drainage import GENERATOR_STATS

    GENERATOR_STATS.reset()
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    paths = yaml.safe_load(out.read_text())["paths"]
    expected = {
        "velocity": {"slug", "group", "start", "end", "board"},
        "flow": {"slug", "group", "start", "end", "board", "kind"},
        "maturity": {"slug"},
        "maturity/snapshots": {"slug", "limit"},
    }
    for report, params in expected.items():
        operation = paths[f"/api/teams/{{slug}}/reports/{report}/"]["get"]
        assert {p["name"] for p in operation["parameters"]} == params
        assert {"200", "400", "404"} <= set(operation["responses"])
        assert "$ref" in operation["responses"]["200"]["content"]["application/json"]["schema"]


def test_format_parameter_is_not_a_report_filter(api_for, member, team):
    assert api_for(member).get(url(team, "velocity"), {"format": "json"}).status_code == 200
