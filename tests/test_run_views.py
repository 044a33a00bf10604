"""Runs list, run detail, run comparison and the card page (server side)."""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from experiments.models import CardEvent, CardRun, EventKind, Run, RunStatus, VerdictProposal, VerdictStatus
from experiments.services.cards import card_create, card_move_to_stage
from experiments.services.runs import (
    MetricPoint,
    card_link_run,
    run_create,
    run_log_batch,
    tracking_experiment_get_or_create,
)

METRIC_KEYS = ("val_auc", "train_loss", "lr")
# session + user + membership/team, then the page's own reads (see the selectors' docstrings).
# PostgreSQL asks the planner for a row estimate first (estimated counts at large sizes). The metric
# keys are one query (the recent-run sample is a subquery).
RUNS_LIST_QUERIES = 10 + (connection.vendor == "postgresql")
# 13 for the card, +5 teamwork (comments, mentions, watching, snapshot, similar hypotheses),
# +5 verdict plan (progress (3), amendments, sample-size spread), +1 artifacts (the runs' images).
CARD_PAGE_QUERIES = 24
CARD_CHART_QUERIES = 8


def make_run(team, user, name, *, status=RunStatus.FINISHED, params=None, auc=0.8, steps=5, start=None, **kw):
    start = start or timezone.now() - dt.timedelta(hours=2)
    run = run_create(
        team=team, user=user, name=name, status=status, start_time=start,
        end_time=start + dt.timedelta(minutes=42) if status != RunStatus.RUNNING else None,
        params=params or {"lr": "0.01", "depth": "6"}, code_version=kw.pop("code_version", "abc1234def"),
        seed=kw.pop("seed", 7), **kw,
    )
    points = []
    for step in range(steps):
        ts = 1_700_000_000_000 + step * 1000
        points.append(MetricPoint("val_auc", auc - 0.1 + 0.1 * step / max(steps - 1, 1), step, ts))
        points.append(MetricPoint("train_loss", 1.0 / (step + 1), step, ts))
        points.append(MetricPoint("lr", 0.01, step, ts))
    run_log_batch(run=run, metrics=points)
    return run


@pytest.fixture
def hypothesis(board, member):
    return card_create(
        board=board, kind="hypothesis", title="Tenure features lift AUC", actor=member,
        statement="Adding tenure buckets raises AUC.", rationale="Churn depends on tenure.",
        metric_key="val_auc", direction="maximize", threshold=0.85, min_runs=2,
    )


@pytest.fixture
def experiment(board, member, hypothesis):
    return card_create(
        board=board, kind="experiment", title="GBM with tenure buckets", actor=member, parent=hypothesis,
        plan="Train 3 seeds.",
    )


# --- Runs list ----------------------------------------------------------------------------------


def test_runs_list_shows_team_runs_with_metric_columns(client_for, member, team, other_team, outsider, experiment):
    run = make_run(team, member, "gbm-seed-1", auc=0.91)
    card_link_run(card=experiment, run=run, actor=member)
    make_run(other_team, outsider, "secret-run")

    response = client_for(member).get(reverse("runs", args=[team.slug]))

    assert response.status_code == 200
    body = response.content.decode()
    assert "gbm-seed-1" in body and "secret-run" not in body
    assert experiment.key in body  # linked card chip
    assert "val_auc" in body and "0.91" in body  # latest value column
    assert reverse("run_detail", args=[run.pk]) in body


def test_runs_list_of_other_team_is_404(client_for, outsider, team):
    assert client_for(outsider).get(reverse("runs", args=[team.slug])).status_code == 404


def _names(response) -> list[str]:
    return re.findall(r'href="/runs/\d+/">([^<]+)</a>', response.content.decode())


def test_runs_list_filters(client_for, member, manager, team, experiment):
    exp = tracking_experiment_get_or_create(team=team, name="churn-gbm")
    now = timezone.now()
    a = make_run(team, member, "alpha", experiment=exp, start=now - dt.timedelta(days=3))
    make_run(team, manager, "beta", status=RunStatus.FAILED, start=now - dt.timedelta(days=1))
    make_run(team, member, "gamma", status=RunStatus.RUNNING, start=now - dt.timedelta(hours=1))
    card_link_run(card=experiment, run=a, actor=member)
    client = client_for(member)
    url = reverse("runs", args=[team.slug])

    assert _names(client.get(url, {"status": "FAILED"})) == ["beta"]
    assert sorted(_names(client.get(url, {"status": ["FAILED", "RUNNING"]}))) == ["beta", "gamma"]
    assert sorted(_names(client.get(url, {"user": member.pk}))) == ["alpha", "gamma"]
    assert _names(client.get(url, {"experiment": exp.pk})) == ["alpha"]
    assert _names(client.get(url, {"card": experiment.key.lower()})) == ["alpha"]
    assert _names(client.get(url, {"q": "gam"})) == ["gamma"]
    two_days_ago = (now - dt.timedelta(days=2)).date().isoformat()
    assert sorted(_names(client.get(url, {"date_from": two_days_ago}))) == ["beta", "gamma"]
    assert _names(client.get(url, {"date_to": two_days_ago})) == ["alpha"]
    empty = client.get(url, {"q": "nothing-like-this"})
    assert "No runs match these filters" in empty.content.decode()


def test_runs_list_reports_bad_filter_input_and_keeps_the_rest(client_for, member, team):
    make_run(team, member, "alpha")
    response = client_for(member).get(
        reverse("runs", args=[team.slug]), {"date_from": "2026-13-45", "q": "alp", "sort": "bogus"}
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "Enter a valid date" in body
    assert "Unknown sort column" in body
    assert _names(response) == ["alpha"]


def test_runs_list_rejects_reversed_date_range(client_for, member, team):
    response = client_for(member).get(
        reverse("runs", args=[team.slug]), {"date_from": "2026-02-10", "date_to": "2026-02-01"}
    )
    assert "The end date is before the start date." in response.content.decode()


def test_runs_list_sorting(client_for, member, team):
    now = timezone.now()
    make_run(team, member, "b-run", auc=0.70, start=now - dt.timedelta(hours=3))
    make_run(team, member, "a-run", auc=0.95, start=now - dt.timedelta(hours=1))
    make_run(team, member, "c-run", auc=0.80, start=now - dt.timedelta(hours=2))
    nometric = run_create(team=team, user=member, name="d-run", start_time=now - dt.timedelta(hours=4))
    assert nometric.pk
    client = client_for(member)
    url = reverse("runs", args=[team.slug])
    assert _names(client.get(url)) == ["a-run", "c-run", "b-run", "d-run"]  # newest first
    assert _names(client.get(url, {"sort": "name"})) == ["a-run", "b-run", "c-run", "d-run"]
    assert _names(client.get(url, {"sort": "-m:val_auc"})) == ["a-run", "c-run", "b-run", "d-run"]
    # Runs without the metric sort last both ways.
    assert _names(client.get(url, {"sort": "m:val_auc"})) == ["b-run", "c-run", "a-run", "d-run"]


def test_runs_list_paginates_and_htmx_gets_results_only(client_for, member, team):
    for i in range(53):
        run_create(team=team, user=member, name=f"run-{i:02d}", start_time=timezone.now() - dt.timedelta(minutes=i))
    client = client_for(member)
    url = reverse("runs", args=[team.slug])
    first = client.get(url)
    assert len(_names(first)) == 50 and "Page 1 · runs 1\u201350 of 53" in first.content.decode()
    token = re.search(r'after=([^"&]+)" hx-get', first.content.decode()).group(1)
    second = client.get(url + "?after=" + token, HTTP_HX_REQUEST="true")
    body = second.content.decode()
    assert _names(second) == ["run-50", "run-51", "run-52"]
    assert "Page 2 · runs 51\u201353 of 53" in body and "Next →" not in body
    assert "<html" not in body and 'hx-swap-oob="true"' in body


def count_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def _runs_list_queries(django_assert_num_queries, client, url, expected):
    with django_assert_num_queries(expected):
        response = client.get(url)
    assert response.status_code == 200
    return response


def test_runs_list_query_count_is_constant(client_for, member, team, board, django_assert_num_queries):
    hyp = card_create(board=board, kind="hypothesis", title="H", actor=member)
    client = client_for(member)
    url = reverse("runs", args=[team.slug])

    def add_runs(n, offset):
        for i in range(n):
            run = make_run(team, member, f"r{offset + i}", params={"lr": str(i), "depth": "4"})
            card_link_run(card=hyp, run=run, actor=member)

    add_runs(5, 0)
    client.get(url)  # warm the session and content-type caches
    count_n = count_queries(client, url)
    assert count_n == RUNS_LIST_QUERIES
    add_runs(5, 5)
    response = _runs_list_queries(django_assert_num_queries, client, url, count_n)
    assert len(_names(response)) == 10
    filtered = url + "?status=FINISHED&sort=-m:val_auc&q=r"
    # Sorted by a metric: runs with it, then (the page is not full) the runs without it.
    assert count_queries(client, filtered) == RUNS_LIST_QUERIES + 1
    add_runs(10, 10)
    _runs_list_queries(django_assert_num_queries, client, filtered, RUNS_LIST_QUERIES + 1)


# --- Run detail ---------------------------------------------------------------------------------


def test_run_detail_shows_everything_about_the_run(client_for, member, team, experiment):
    run = make_run(
        team, member, "gbm-seed-3", params={"lr": "0.05", "n_estimators": "400"},
        tags={"team_note": "try deeper", "mlboard.data_version": "customers-v7", "mlflow.source.name": "train.py"},
        trigger="scheduled", seed=1234, code_version="deadbeefcafe",
    )
    run_log_batch(run=run, metrics=[MetricPoint("grad_norm", math.nan, 9, 1)])
    card_link_run(card=experiment, run=run, actor=member)

    response = client_for(member).get(reverse("run_detail", args=[run.pk]))
    body = response.content.decode()

    assert response.status_code == 200
    for text in ("gbm-seed-3", "n_estimators", "400", "try deeper", "customers-v7", "deadbeefcafe", "1234",
                 "Scheduled", "train.py", experiment.key, "NaN"):
        assert text in body, text
    # Every metric gets a lazy chart placeholder pointing at the JSON endpoint.
    assert body.count("data-chart-src=") == 4


def test_run_detail_of_other_team_is_404(client_for, outsider, member, team):
    run = make_run(team, member, "mine")
    assert client_for(outsider).get(reverse("run_detail", args=[run.pk])).status_code == 404
    assert client_for(outsider).get(
        reverse("run_metric_chart", args=[team.slug]), {"key": "val_auc", "run": run.pk}
    ).status_code == 404


def test_run_metric_chart_endpoint(client_for, member, team, other_team, outsider):
    mine = make_run(team, member, "mine", steps=3000)
    theirs = make_run(other_team, outsider, "theirs")
    client = client_for(member)
    url = reverse("run_metric_chart", args=[team.slug])

    response = client.get(url, {"key": "train_loss", "run": [mine.pk, theirs.pk]})
    payload = response.json()
    assert response.status_code == 200
    traces = payload["figure"]["data"]
    assert [t["name"] for t in traces] == ["mine"]  # other team's run is silently out of scope
    assert len(traces[0]["x"]) <= 1000
    assert payload["meta"]["total_points"] == 3000 and payload["meta"]["downsampled"] is True
    assert client.get(url, {"run": mine.pk}).status_code == 400
    assert client.get(url, {"key": "x", "run": "abc"}).status_code == 400


# --- Comparison ---------------------------------------------------------------------------------


def test_compare_highlights_differing_params(client_for, member, team, other_team, outsider):
    a = make_run(team, member, "run-a", params={"lr": "0.01", "depth": "6", "optimizer": "adam"}, auc=0.8)
    b = make_run(team, member, "run-b", params={"lr": "0.1", "depth": "6", "optimizer": "sgd"}, auc=0.9)
    hidden = make_run(other_team, outsider, "rival-secret-run")
    response = client_for(member).get(
        reverse("run_compare", args=[team.slug]), {"run": [a.pk, b.pk, hidden.pk, "x1"]}
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "rival-secret-run" not in body
    assert "1 selected run(s) were not found on this team." in body
    assert "Ignored run ids that are not numbers: x1." in body
    assert "2 of 3 parameters differ" in body
    params_part = body.split(">Parameters<", 1)[1].split(">Final metrics<", 1)[0]
    row_re = r'<tr class="(?:diff|same)"><th scope="row" class="mono">([^<]+)<.*?</tr>'
    rows = {m.group(1).strip(): m.group(0) for m in re.finditer(row_re, params_part, re.S)}
    assert 'class="diff"' in rows["lr"] and 'class="diff"' in rows["optimizer"]
    assert 'class="same"' in rows["depth"]
    figure = json.loads(re.search(r'id="parcoords-data" type="application/json">(.*?)</script>', body, re.S).group(1))
    trace = figure["figure"]["data"][0]
    assert trace["type"] == "parcoords"
    labels = [d["label"] for d in trace["dimensions"]]
    assert labels[0] == "run" and "lr" in labels and "optimizer" in labels and "val_auc" in labels
    assert "depth" not in labels  # identical everywhere: not worth an axis


def test_compare_with_fewer_than_two_runs_explains_what_to_do(client_for, member, team):
    a = make_run(team, member, "solo")
    body = client_for(member).get(reverse("run_compare", args=[team.slug]), {"run": a.pk}).content.decode()
    assert "Select at least two runs to compare" in body


# --- Card page ----------------------------------------------------------------------------------


def test_card_page_hypothesis_fields_tree_history_and_runs(client_for, member, manager, hypothesis, experiment, team):
    linked = make_run(team, member, "gbm-seed-1", params={"lr": "0.01", "depth": "6"}, auc=0.88)
    on_child = make_run(team, member, "gbm-seed-2", params={"lr": "0.05", "depth": "6"}, auc=0.86)
    card_link_run(card=hypothesis, run=linked, actor=manager)
    card_link_run(card=experiment, run=on_child, actor=member)

    response = client_for(member).get(reverse("card_detail", args=[hypothesis.pk]))
    body = response.content.decode()

    assert response.status_code == 200
    for text in ("Tenure features lift AUC", "Adding tenure buckets raises AUC.", "Churn depends on tenure.",
                 "val_auc ≥ 0.85 (higher is better), decided on the first 2 run(s)", experiment.key,
                 "GBM with tenure buckets", "gbm-seed-1", "gbm-seed-2", "abc1234d"):
        assert text in body, text
    # History: who did what.
    assert "created the card in Backlog" in body
    assert f"{manager} </strong>" not in body  # actor markup is tidy
    assert re.search(rf"<strong>{manager}</strong>\s*linked run", body)
    # Key params: lr differs, depth does not.
    assert 'title="Parameter lr"' in body and 'title="Parameter depth"' not in body
    # The child experiment's run is shown as coming from it and cannot be unlinked here.
    assert f"via <a href=\"{reverse('card_detail', args=[experiment.pk])}\">{experiment.key}</a>" in body
    assert reverse("card_run_unlink", args=[hypothesis.pk, linked.pk]) in body
    assert reverse("card_run_unlink", args=[hypothesis.pk, on_child.pk]) not in body
    # Lazy chart per metric key, threshold drawn on the criterion metric.
    assert body.count("data-chart-src=") == len(METRIC_KEYS)
    chart = client_for(member).get(reverse("card_metric_chart", args=[hypothesis.pk]), {"key": "val_auc"}).json()
    assert {t["name"] for t in chart["figure"]["data"]} == {"gbm-seed-1", "gbm-seed-2"}
    assert chart["figure"]["layout"]["shapes"][0]["y0"] == 0.85


def test_card_page_experiment_and_result_fields(client_for, member, board, hypothesis, experiment, team):
    base = make_run(team, member, "baseline-lr", auc=0.75)
    card_link_run(card=experiment, run=base, actor=member, is_baseline=True)
    result = card_create(
        board=board, kind="result", title="Tenure helps", actor=member, parent=experiment,
        verdict="supported", evidence="Mean AUC 0.87 over 3 seeds.", learnings="Bucket width matters.",
    )
    client = client_for(member)
    exp_body = client.get(reverse("card_detail", args=[experiment.pk])).content.decode()
    assert "Train 3 seeds." in exp_body and "baseline-lr" in exp_body and "Unmark baseline" in exp_body
    assert "Tenure helps" in exp_body  # child result
    res_body = client.get(reverse("card_detail", args=[result.pk])).content.decode()
    for text in ("Supported", "Mean AUC 0.87 over 3 seeds.", "Bucket width matters.", experiment.key):
        assert text in res_body, text


def test_card_page_other_team_is_404_and_viewer_is_read_only(client_for, outsider, viewer, member, experiment, team):
    run = make_run(team, member, "r1")
    card_link_run(card=experiment, run=run, actor=member)
    assert client_for(outsider).get(reverse("card_detail", args=[experiment.pk])).status_code == 404
    assert client_for(outsider).get(
        reverse("card_metric_chart", args=[experiment.pk]), {"key": "val_auc"}
    ).status_code == 404
    body = client_for(viewer).get(reverse("card_detail", args=[experiment.pk])).content.decode()
    assert "r1" in body
    assert "Link a run" not in body and "Unlink" not in body and "Mark baseline" not in body
    viewer_client = client_for(viewer)
    for url, data in (
        (reverse("card_run_link", args=[experiment.pk]), {"run": run.pk}),
        (reverse("card_run_unlink", args=[experiment.pk, run.pk]), {}),
        (reverse("card_run_baseline", args=[experiment.pk, run.pk]), {"baseline": "1"}),
    ):
        response = viewer_client.post(url, data)
        assert response.status_code == 403
        assert "Viewers cannot change anything" in response.content.decode()
    assert CardRun.objects.filter(card=experiment, run=run, is_baseline=False).exists()
    outsider_post = client_for(outsider).post(reverse("card_run_unlink", args=[experiment.pk, run.pk]))
    assert outsider_post.status_code == 404


def test_link_search_link_unlink_and_baseline(client_for, member, experiment, team, other_team, outsider):
    already = make_run(team, member, "tenure-gbm-1")
    candidate = make_run(team, member, "tenure-gbm-2")
    make_run(team, member, "unrelated")
    foreign = make_run(other_team, outsider, "tenure-foreign")
    card_link_run(card=experiment, run=already, actor=member)
    client = client_for(member)

    search = client.get(reverse("card_run_search", args=[experiment.pk]), {"q": "tenure"}).content.decode()
    assert "tenure-gbm-2" in search and "tenure-gbm-1" not in search and "tenure-foreign" not in search
    by_id = client.get(reverse("card_run_search", args=[experiment.pk]), {"run": str(candidate.pk)}).content.decode()
    assert "tenure-gbm-2" in by_id
    none = client.get(reverse("card_run_search", args=[experiment.pk]), {"q": "zzz"}).content.decode()
    assert "No unlinked run of this team matches" in none

    # htmx link returns the refreshed section with the new row and a notice.
    linked = client.post(reverse("card_run_link", args=[experiment.pk]), {"run": candidate.pk}, HTTP_HX_REQUEST="true")
    body = linked.content.decode()
    assert linked.status_code == 200 and 'id="runs"' in body and "<html" not in body
    assert "Linked tenure-gbm-2." in body
    link = CardRun.objects.get(card=experiment, run=candidate)
    assert link.linked_by == member and link.via == "manual"
    assert CardEvent.objects.filter(card=experiment, kind=EventKind.LINKED, actor=member).count() == 2

    # Linking by external id works too; a run of another team does not.
    foreign_try = client.post(
        reverse("card_run_link", args=[experiment.pk]), {"run": foreign.external_id}, HTTP_HX_REQUEST="true"
    )
    assert "No run with that id on this team." in foreign_try.content.decode()
    assert not CardRun.objects.filter(run=foreign).exists()

    # Plain form posts redirect back with a message.
    marked = client.post(reverse("card_run_baseline", args=[experiment.pk, candidate.pk]), {"baseline": "1"})
    assert marked.status_code == 302 and marked["Location"].endswith("#runs")
    assert CardRun.objects.get(card=experiment, run=candidate).is_baseline
    client.post(reverse("card_run_baseline", args=[experiment.pk, candidate.pk]), {"baseline": "0"})
    assert not CardRun.objects.get(card=experiment, run=candidate).is_baseline

    unlinked = client.post(reverse("card_run_unlink", args=[experiment.pk, candidate.pk]), HTTP_HX_REQUEST="true")
    assert "Unlinked tenure-gbm-2." in unlinked.content.decode()
    assert not CardRun.objects.filter(card=experiment, run=candidate).exists()
    assert CardEvent.objects.filter(card=experiment, kind=EventKind.UNLINKED, actor=member).exists()
    again = client.post(reverse("card_run_unlink", args=[experiment.pk, candidate.pk]), HTTP_HX_REQUEST="true")
    assert "That run is not linked to this card." in again.content.decode()


def test_card_page_query_count_is_constant(client_for, member, hypothesis, experiment, team, django_assert_num_queries):
    client = client_for(member)
    url = reverse("card_detail", args=[hypothesis.pk])

    def add_runs(n, offset):
        for i in range(n):
            run = make_run(team, member, f"r{offset + i}", params={"lr": str(offset + i), "depth": "4"})
            card_link_run(card=experiment if i % 2 else hypothesis, run=run, actor=member)

    add_runs(4, 0)
    client.get(url)
    count_n = count_queries(client, url)
    assert count_n == CARD_PAGE_QUERIES
    first = client.get(url)
    assert first.content.decode().count("data-chart-src=") == len(METRIC_KEYS)
    add_runs(4, 4)
    with django_assert_num_queries(count_n):
        second = client.get(url)
    body = second.content.decode()
    assert body.count('name="run" value=') == 8
    assert body.count("data-chart-src=") == len(METRIC_KEYS)


def test_card_chart_query_count_is_constant(client_for, member, hypothesis, team, django_assert_num_queries):
    client = client_for(member)
    url = reverse("card_metric_chart", args=[hypothesis.pk]) + "?key=val_auc"
    for i in range(3):
        card_link_run(card=hypothesis, run=make_run(team, member, f"a{i}"), actor=member)
    count_n = count_queries(client, url)
    assert count_n == CARD_CHART_QUERIES
    for i in range(3):
        card_link_run(card=hypothesis, run=make_run(team, member, f"b{i}"), actor=member)
    with django_assert_num_queries(count_n):
        payload = client.get(url).json()
    assert len(payload["figure"]["data"]) == 6


# --- Verdict proposal on the card page ----------------------------------------------------------


@pytest.fixture
def proposed(hypothesis, team, member):
    from experiments.services.verdicts import verdict_propose

    for i, auc in enumerate((0.90, 0.91, 0.92)):
        card_link_run(card=hypothesis, run=make_run(team, member, f"seed-{i}", auc=auc, seed=i), actor=member)
    proposal = verdict_propose(card=hypothesis)
    assert proposal is not None
    return proposal


def test_pending_proposal_is_shown_with_numbers_and_buttons(client_for, member, viewer, hypothesis, proposed):
    body = client_for(member).get(reverse("card_detail", args=[hypothesis.pk])).content.decode()
    assert "Proposed verdict" in body and proposed.get_proposed_display() in body
    assert proposed.explanation[:40] in body
    assert "Runs used" in body and ">3<" in body  # n
    assert "Mean" in body and "0.91" in body
    assert "Confirm" in body and "Override" in body
    viewer_body = client_for(viewer).get(reverse("card_detail", args=[hypothesis.pk])).content.decode()
    assert "Proposed verdict" in viewer_body and "Override verdict" not in viewer_body
    response = client_for(viewer).post(
        reverse("card_verdict_decide", args=[hypothesis.pk, proposed.pk]), {"action": "confirm"}
    )
    assert response.status_code == 403


def test_confirm_button_decides_the_verdict(client_for, member, hypothesis, proposed):
    response = client_for(member).post(
        reverse("card_verdict_decide", args=[hypothesis.pk, proposed.pk]), {"action": "confirm"}, follow=True
    )
    proposed.refresh_from_db()
    hypothesis.refresh_from_db()
    assert proposed.status == VerdictStatus.CONFIRMED and proposed.decided_by == member
    assert hypothesis.verdict == proposed.proposed
    body = response.content.decode()
    assert "Verdict confirmed" in body
    assert "Proposed verdict" not in body  # nothing pending any more
    assert "confirmed verdict" in body  # history


def test_override_needs_a_verdict_and_records_it(client_for, member, hypothesis, proposed):
    client = client_for(member)
    url = reverse("card_verdict_decide", args=[hypothesis.pk, proposed.pk])
    missing = client.post(url, {"action": "override"}, follow=True)
    assert "Choose the verdict you want instead" in missing.content.decode()
    other = "refuted" if proposed.proposed != "refuted" else "supported"
    client.post(url, {"action": "override", "verdict": other, "note": "Leak found in tenure feature."})
    proposed.refresh_from_db()
    assert proposed.status == VerdictStatus.OVERRIDDEN and proposed.decided == other
    again = client.post(url, {"action": "confirm"}, follow=True)
    assert "already decided" in again.content.decode()
    assert VerdictProposal.objects.filter(card=hypothesis).count() == 1


def test_card_moves_show_in_history(client_for, member, hypothesis):
    card_move_to_stage(card=hypothesis, stage="running", actor=member, reason="")
    body = client_for(member).get(reverse("card_detail", args=[hypothesis.pk])).content.decode()
    assert "moved it from Backlog to Running" in body


def test_run_list_counts_runs_not_rows(client_for, member, team, board):
    # A run linked to two cards must appear once (card filter joins CardRun).
    a = card_create(board=board, kind="hypothesis", title="A", actor=member)
    b = card_create(board=board, kind="hypothesis", title="B", actor=member)
    run = make_run(team, member, "shared")
    card_link_run(card=a, run=run, actor=member)
    card_link_run(card=b, run=run, actor=member)
    response = client_for(member).get(reverse("runs", args=[team.slug]))
    assert _names(response) == ["shared"]
    assert Run.objects.filter(team=team).count() == 1


def test_baseline_toggle_and_unlink_re_judge_the_hypothesis(
    client_for, member, hypothesis, proposed, django_capture_on_commit_callbacks
):
    client = client_for(member)
    run_ids = list(CardRun.objects.filter(card=hypothesis).order_by("run_id").values_list("run_id", flat=True))
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("card_run_baseline", args=[hypothesis.pk, run_ids[0]]), {"baseline": "1"})
    proposed.refresh_from_db()
    assert proposed.status == VerdictStatus.SUPERSEDED
    latest = VerdictProposal.objects.filter(card=hypothesis).order_by("-id").first()
    assert latest.status == VerdictStatus.PROPOSED and latest.stats["n"] == 2  # the baseline is not evidence
    body = client.get(reverse("card_detail", args=[hypothesis.pk])).content.decode()
    assert re.search(rf"<strong>{member}</strong>\s*marked run \w+ as baseline", body)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("card_run_unlink", args=[hypothesis.pk, run_ids[1]]))
    # One usable run is left of the two planned: the open proposal no longer stands and none is made;
    # the card shows the progress instead.
    latest.refresh_from_db()
    assert latest.status == VerdictStatus.SUPERSEDED
    assert not VerdictProposal.objects.filter(card=hypothesis, status=VerdictStatus.PROPOSED).exists()
    assert "1 of 2 runs" in client.get(reverse("card_detail", args=[hypothesis.pk])).content.decode()


def test_unknown_metric_column_is_reported_by_its_label(client_for, member, team):
    make_run(team, member, "alpha")
    body = client_for(member).get(reverse("runs", args=[team.slug]), {"col": "nope"}).content.decode()
    assert "<strong>Metric columns:</strong> Select a valid choice. nope is not one of the available choices." in body
    assert _names_from(body) == ["alpha"]


def _names_from(body: str) -> list[str]:
    return re.findall(r'href="/runs/\d+/">([^<]+)</a>', body)


def test_card_page_edit_button_returns_to_the_card(client_for, member, viewer, experiment):
    page_url = reverse("card_detail", args=[experiment.pk])
    edit_url = reverse("board_card_edit", args=[experiment.board_id, experiment.pk])
    body = client_for(member).get(page_url).content.decode()
    assert f'{edit_url}?next={page_url}' in body
    assert edit_url not in client_for(viewer).get(page_url).content.decode()
    # Saving the edit form lands back on the card page.
    experiment.refresh_from_db()
    response = client_for(member).post(
        edit_url,
        {"title": "Renamed experiment", "version": experiment.version, "parent": experiment.parent_id,
         "plan": experiment.plan, "next": page_url},
    )
    assert response.status_code == 302, response.content.decode()[:500]
    assert response["Location"] == page_url
    experiment.refresh_from_db()
    assert experiment.title == "Renamed experiment"


# --- Keyset pages and estimated counts -----------------------------------------------------------


def _all_pages(client, url, query) -> tuple[list[str], int]:
    names, pages, after = [], 0, None
    while True:
        body = client.get(url, {**query, **({"after": after} if after else {})}).content.decode()
        names += _names_from(body)
        pages += 1
        found = re.search(r'after=([^"&]+)" hx-get', body)
        if not found:
            return names, pages
        after = found.group(1).replace("%3D", "=")


@pytest.mark.parametrize("sort", ["-m:val_auc", "m:val_auc", "-start", "name", "-duration", "status"])
def test_keyset_pages_walk_the_whole_order_once(client_for, member, team, monkeypatch, sort):
    monkeypatch.setattr("experiments.web.run_views.PAGE_SIZE", 3)
    now = timezone.now()
    aucs = [0.7, 0.9, 0.8, 0.9, 0.6, 0.8, 0.75]
    for i, auc in enumerate(aucs):  # ties on purpose: two 0.9s, two 0.8s
        make_run(team, member, f"run-{i}", auc=auc, start=now - dt.timedelta(hours=i % 3))
    for i in range(3):  # no metric, and one without a start time: they sort last
        run_create(team=team, user=member, name=f"bare-{i}", start_time=None if i == 0 else now - dt.timedelta(days=i))
    client = client_for(member)
    url = reverse("runs", args=[team.slug])
    monkeypatch.setattr("experiments.web.run_views.PAGE_SIZE", 100)
    expected = _names(client.get(url, {"sort": sort}))
    monkeypatch.setattr("experiments.web.run_views.PAGE_SIZE", 3)
    names, pages = _all_pages(client, url, {"sort": sort})
    assert names == expected and len(expected) == 10 and pages == 4


def test_large_lists_show_an_estimated_count(client_for, member, team, monkeypatch):
    for i in range(4):
        make_run(team, member, f"run-{i}")
    client = client_for(member)
    url = reverse("runs", args=[team.slug])
    assert "about <strong>" not in client.get(url).content.decode()
    monkeypatch.setattr("experiments.selectors.runs.EXACT_COUNT_BELOW", 0)
    body = client.get(url).content.decode()
    if connection.vendor == "postgresql":
        assert "about <strong>" in body  # the planner's estimate, not COUNT(*)
    else:
        assert "<strong>4</strong> runs" in body  # SQLite has no cheap estimate: always exact
