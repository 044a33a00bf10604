"""Flow report: CFD and WIP replayed from events, cycle/lead time percentiles, age, CSV, pages, queries."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from experiments.models import CardKind, Stage
from experiments.selectors.flow import FLOW_CSV_HEADER, flow_report
from experiments.selectors.velocity import parse_report_params
from experiments.services.boards import column_create
from tests.test_velocity_support import clock, history, make_card, move, t

pytestmark = pytest.mark.django_db
NOW = t(5, 12)


def params_for(team, boards=(), **data):
    data = {"from": "2025-03-03", "to": "2025-03-05", **data}
    return parse_report_params(team=team, data=data, boards=list(boards), kinds=("work", "hypothesis", "experiment"))


@pytest.fixture
def scenario(board, member):
    """A: created Sat 1, Ready Sun 2, Running Mon 3 10:00, Analyzing Tue 4 10:00, Done Wed 5 10:00.
    B: created Mon 3 12:00, Running Wed 5 09:00.  D: created Sun 2, Ready Mon 3 09:00, Done Tue 4 12:00
    (never started).  C: a result card, never counted as work."""
    a = make_card(board, CardKind.HYPOTHESIS, "Augmentation helps", t(1), actor=member)
    move(a, Stage.READY, t(2))
    d = make_card(board, CardKind.HYPOTHESIS, "Label smoothing", t(2), actor=member)
    move(a, Stage.RUNNING, t(3, 10))
    move(d, Stage.READY, t(3, 9))
    b = make_card(board, CardKind.EXPERIMENT, "Random crops", t(3, 12), actor=member, parent=a)
    move(a, Stage.ANALYZING, t(4, 10))
    c = make_card(board, CardKind.RESULT, "Crops: supported", t(4), actor=member, parent=a)
    move(d, Stage.DONE, t(4, 12))
    move(b, Stage.RUNNING, t(5, 9))
    move(a, Stage.DONE, t(5, 10))
    return {"a": a, "b": b, "c": c, "d": d}


def test_cfd_counts_per_day(team, scenario):
    report = flow_report(team=team, params=params_for(team), now=NOW)
    assert [d.isoformat() for d in report.days] == ["2025-03-03", "2025-03-04", "2025-03-05"]
    assert report.cfd == {
        "backlog": [1, 1, 0],
        "ready": [1, 0, 0],
        "running": [1, 0, 1],
        "analyzing": [0, 1, 0],
        "done": [0, 1, 2],
    }
    assert report.wip == [1, 1, 1]


def test_cycle_lead_throughput_and_age(team, scenario):
    report = flow_report(team=team, params=params_for(team), now=NOW)
    done = {i.key: i for i in report.done}
    a, d = done[scenario["a"].key], done[scenario["d"].key]
    assert (a.started_at, a.done_at) == (t(3, 10), t(5, 10))
    assert (a.cycle_hours, a.lead_hours) == (48.0, 106.0)
    assert (d.cycle_hours, d.lead_hours) == (None, 60.0)  # went straight from Ready to Done
    assert report.throughput == [0, 1, 1]
    assert report.stats["throughput"] == 2
    assert report.stats["without_cycle"] == 1
    assert report.stats["cycle"] == {50: 48.0, 85: 48.0, 95: 48.0}
    assert report.stats["lead"] == {50: 60.0, 85: 106.0, 95: 106.0}
    ((item, age),) = report.aging
    assert item.key == scenario["b"].key and age == 3.0
    assert report.stats["wip_now"] == 1


def test_percentiles_over_finished_cards(team, board):
    # Four cards with cycle times 2, 4, 6 and 20 hours, all finished on Tue 4 March.
    for hours in (2, 4, 6, 20):
        card = make_card(board, CardKind.HYPOTHESIS, f"{hours}h", t(1))
        move(card, Stage.RUNNING, t(4, 22) - dt.timedelta(hours=hours))
        move(card, Stage.DONE, t(4, 22))
    report = flow_report(team=team, params=params_for(team), now=NOW)
    assert sorted(report.cycle_hours) == [2.0, 4.0, 6.0, 20.0]
    # Nearest rank: 50th = 2nd of 4, 85th = ceil(3.4) = 4th, 95th = 4th.
    assert report.stats["cycle"] == {50: 4.0, 85: 20.0, 95: 20.0}


def test_moving_between_done_columns_is_not_a_new_completion(team, board, scenario):
    released = column_create(board=board, name="Released", stage=Stage.DONE)
    from experiments.services.cards import card_move

    a = scenario["a"]
    a.refresh_from_db()
    with clock(t(5, 11)):
        card_move(card=a, to_column=released, actor=None, expected_version=a.version)
    report = flow_report(team=team, params=params_for(team), now=NOW)
    done = {i.key: i for i in report.done}
    assert done[a.key].done_at == t(5, 10)
    assert report.cfd["done"] == [0, 1, 2]


def test_reopened_card_counts_when_it_is_done_again(team, scenario):
    move(scenario["d"], Stage.ANALYZING, t(5, 1))
    move(scenario["d"], Stage.DONE, t(5, 2))
    report = flow_report(team=team, params=params_for(team), now=NOW)
    d = {i.key: i for i in report.done}[scenario["d"].key]
    assert (d.started_at, d.done_at) == (t(5, 1), t(5, 2))
    assert report.throughput == [0, 0, 2]
    assert report.cfd["done"] == [0, 1, 2]


def test_kind_and_board_filters(team, board, scenario):
    only_exp = flow_report(team=team, params=params_for(team, kind="experiment"), now=NOW)
    assert [i.key for i in only_exp.in_progress] == [scenario["b"].key]
    assert only_exp.done == []
    assert only_exp.cfd["backlog"] == [1, 1, 0]
    from experiments.services.boards import board_create

    other = board_create(team=team, name="Other", key="OTH")
    make_card(other, CardKind.HYPOTHESIS, "Elsewhere", t(3))
    both = flow_report(team=team, params=params_for(team), now=NOW)
    one = flow_report(team=team, params=params_for(team, [board, other], board=str(board.pk)), now=NOW)
    assert both.cfd["backlog"] == [2, 2, 1]
    assert one.cfd["backlog"] == [1, 1, 0]


def test_future_days_are_not_drawn(team, scenario):
    report = flow_report(team=team, params=params_for(team, to="2025-03-09"), now=NOW)
    assert report.days[-1].isoformat() == "2025-03-05"


def test_grouped_by_iteration_throughput(team, scenario):
    from experiments.services.iterations import iteration_create, iteration_start

    it = iteration_create(team=team, start=t(4), end=t(6), name="Sprint")
    iteration_start(iteration=it)
    report = flow_report(team=team, params=params_for(team, group="iteration"), now=NOW)
    assert [p.label for p in report.periods] == ["Sprint (active)"]
    assert report.throughput == [2]


def test_csv_content(team, scenario, client_for, member):
    url = reverse("flow_csv", args=[team.slug])
    with clock(NOW):
        response = client_for(member).get(url, {"from": "2025-03-03", "to": "2025-03-05"})
    assert response.status_code == 200
    assert 'filename="vision-flow-work-2025-03-03-2025-03-05.csv"' in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == FLOW_CSV_HEADER
    by_key = {r[0]: dict(zip(FLOW_CSV_HEADER, r, strict=True)) for r in rows[1:]}
    assert set(by_key) == {scenario["a"].key, scenario["b"].key, scenario["d"].key}
    a = by_key[scenario["a"].key]
    assert (a["kind"], a["stage"], a["cycle_time_hours"], a["lead_time_hours"], a["age_hours"]) == (
        "hypothesis", "done", "48.00", "106.00", ""
    )
    assert a["started_at"] == "2025-03-03T10:00:00+00:00"
    b = by_key[scenario["b"].key]
    assert (b["stage"], b["done_at"], b["cycle_time_hours"], b["age_hours"]) == ("running", "", "", "3.00")
    assert by_key[scenario["d"].key]["cycle_time_hours"] == ""


def test_page_renders_charts_tables_and_explanations(team, scenario, client_for, member):
    with clock(NOW):
        response = client_for(member).get(reverse("flow", args=[team.slug]), {"from": "2025-03-03", "to": "2025-03-05"})
    assert response.status_code == 200
    html = response.content.decode()
    for name in ("cfd", "wip", "throughput", "cycle", "aging"):
        assert f'data-figure="{name}"' in html
    assert set(response.context["figures"]) == {"cfd", "wip", "throughput", "cycle", "aging"}
    cfd = {trace["name"]: trace["y"] for trace in response.context["figures"]["cfd"]["data"]}
    assert cfd["Done"] == [0, 1, 2]
    assert "Cumulative flow" in html and "Work-item age" in html
    assert "How each number is measured" in html
    assert "2.0 d" in html  # A's cycle time
    assert "4.4 d" in html  # A's lead time
    assert "1 skipped straight to Done" in html
    assert reverse("card_detail", args=[scenario["b"].pk]) in html


def test_empty_state(team, client_for, member):
    response = client_for(member).get(reverse("flow", args=[team.slug]))
    assert response.status_code == 200
    assert "No flow to show for this range" in response.content.decode()
    assert response.context["figures"] == {}


def test_permissions(team, client_for, outsider, viewer):
    for name in ("flow", "flow_csv"):
        assert client_for(outsider).get(reverse(name, args=[team.slug])).status_code == 404
        assert client_for(viewer).get(reverse(name, args=[team.slug])).status_code == 200


@pytest.mark.parametrize(("group", "queries"), [("day", 4), ("week", 4), ("iteration", 5)])
def test_selector_query_count_is_constant(team, board, django_assert_num_queries, group, queries):
    params = parse_report_params(team=team, data={"from": "2025-03-03", "to": "2025-04-30", "group": group})
    history(team, board, 10, base=t(1))
    with django_assert_num_queries(queries):
        small = flow_report(team=team, params=params, now=t(30, 0, 0, month=4))
    history(team, board, 10, base=t(11))
    with django_assert_num_queries(queries):
        large = flow_report(team=team, params=params, now=t(30, 0, 0, month=4))
    assert len(large.in_progress) == 2 * len(small.in_progress) == 20
    # Cards done before the range starts are in the Done band from the first day (Mar 1, 2 and 3).
    assert small.cfd["done"][0] == 3 and large.cfd["done"][0] == 3
    assert large.cfd["done"][-1] == 20


def test_page_query_count_is_constant(team, board, client_for, member, django_assert_num_queries):
    client = client_for(member)
    url = reverse("flow", args=[team.slug])
    data = {"from": "2025-03-01", "to": "2025-04-30"}
    client.get(url, data)
    history(team, board, 15, base=t(1))
    with CaptureQueriesContext(connection) as baseline:
        client.get(url, data)
    history(team, board, 15, base=t(16))
    with django_assert_num_queries(len(baseline.captured_queries)):
        response = client.get(url, data)
    assert len(baseline.captured_queries) == 8
    assert len(response.context["done_rows"]) == 30


def test_long_finished_table_is_capped_with_a_pointer_to_the_csv(team, scenario, client_for, member, monkeypatch):
    monkeypatch.setattr("experiments.web.report_views.FLOW_TABLE_ROWS", 1)
    with clock(NOW):
        response = client_for(member).get(reverse("flow", args=[team.slug]), {"from": "2025-03-03", "to": "2025-03-05"})
    html = response.content.decode()
    assert [r["item"].key for r in response.context["done_rows"]] == [scenario["a"].key]  # most recent first
    assert "The 1 most recent are listed" in html and "for all 2" in html
