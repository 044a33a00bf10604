"""Standup: window computation, overview sections, decisions from the page, query counts."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from experiments.errors import DomainError
from experiments.models import (
    Card,
    CardKind,
    CardRun,
    Column,
    Run,
    RunStatus,
    Stage,
    StandupDigest,
    VerdictChoice,
    VerdictProposal,
    VerdictStatus,
)
from experiments.selectors.standup import (
    digest_window,
    parse_since,
    standup_overview,
    standup_today,
    standup_window,
    teams_due_for_digest,
    window_start_before,
)
from experiments.services.boards import board_create
from experiments.services.cards import card_create
from experiments.services.runs import MetricPoint, card_link_run, run_create, run_log_metrics

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
LA = ZoneInfo("America/Los_Angeles")
METRIC = "val_auc"


# --- helpers ------------------------------------------------------------------------------------


def hypothesis(board, title="Tenure features lift AUC", owner=None, **fields) -> Card:
    defaults = {"metric_key": METRIC, "direction": "maximize", "min_delta": 0.01}
    defaults.update(fields)
    return card_create(board=board, kind=CardKind.HYPOTHESIS, title=title, actor=None, owner=owner, **defaults)


def experiment(parent, title="Add tenure buckets", owner=None, **fields) -> Card:
    return card_create(
        board=parent.board, kind=CardKind.EXPERIMENT, title=title, actor=None, owner=owner, parent=parent, **fields
    )


def add_run(
    team, card=None, *, status=RunStatus.FINISHED, ago_hours: float = 1, value=None, user=None, name="",
    baseline=False, seed=None,
) -> Run:
    now = timezone.now()
    end = now - dt.timedelta(hours=ago_hours)
    terminal = status in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)
    run = run_create(
        team=team, user=user, name=name, status=status, start_time=end - dt.timedelta(hours=2),
        end_time=end if terminal else None, seed=seed,
    )
    if value is not None:
        run_log_metrics(run=run, points=[MetricPoint(METRIC, value, step=1)])
    if card is not None:
        card_link_run(card=card, run=run, actor=None, is_baseline=baseline)
    return run


@pytest.fixture
def recent_window(team):
    """Make the team's default window start exactly 3 hours ago, whatever the time of day."""
    now = timezone.now().astimezone(UTC)
    team.timezone = "UTC"
    team.standup_window_start = (now - dt.timedelta(hours=3)).time().replace(microsecond=0)
    team.save()
    return team


def column(board, stage) -> Column:
    return board.columns.get(stage=stage)


# --- window -------------------------------------------------------------------------------------


def test_default_window_is_18h_yesterday_in_team_timezone(team):
    team.timezone = "Europe/Berlin"
    now = dt.datetime(2025, 5, 14, 7, 0, tzinfo=UTC)  # 09:00 in Berlin (CEST)
    start = window_start_before(team, now)
    assert start == dt.datetime(2025, 5, 13, 18, 0, tzinfo=BERLIN)
    assert start.astimezone(UTC) == dt.datetime(2025, 5, 13, 16, 0, tzinfo=UTC)
    window = standup_window(team=team, now=now)
    assert (window.start, window.end, window.custom) == (start, now, False)
    assert window.hours == 15


def test_window_restarts_in_the_evening(team):
    team.timezone = "Europe/Berlin"
    now = dt.datetime(2025, 5, 14, 19, 30, tzinfo=BERLIN)
    assert window_start_before(team, now) == dt.datetime(2025, 5, 14, 18, 0, tzinfo=BERLIN)
    just_before = dt.datetime(2025, 5, 14, 17, 59, tzinfo=BERLIN)
    assert window_start_before(team, just_before) == dt.datetime(2025, 5, 13, 18, 0, tzinfo=BERLIN)


def test_window_uses_the_team_timezone_not_utc(team):
    team.timezone = "America/Los_Angeles"
    now = dt.datetime(2025, 5, 14, 6, 0, tzinfo=UTC)  # still 23:00 on the 13th in Los Angeles
    assert window_start_before(team, now) == dt.datetime(2025, 5, 13, 18, 0, tzinfo=LA)
    assert window_start_before(team, now).astimezone(UTC) == dt.datetime(2025, 5, 14, 1, 0, tzinfo=UTC)


def test_window_across_daylight_saving_change(team):
    team.timezone = "Europe/Berlin"
    now = dt.datetime(2025, 3, 30, 9, 0, tzinfo=BERLIN)  # clocks went forward at 02:00 that night
    window = standup_window(team=team, now=now)
    assert window.start.astimezone(UTC) == dt.datetime(2025, 3, 29, 17, 0, tzinfo=UTC)
    assert window.hours == 14  # 18:00 CET -> 09:00 CEST is 14 real hours, not 15


def test_custom_window_start_time(team):
    team.timezone = "UTC"
    team.standup_window_start = dt.time(20, 30)
    now = dt.datetime(2025, 5, 14, 9, 0, tzinfo=UTC)
    assert window_start_before(team, now) == dt.datetime(2025, 5, 13, 20, 30, tzinfo=UTC)


def test_unknown_timezone_falls_back_to_utc(team):
    team.timezone = "Mars/Olympus"
    now = dt.datetime(2025, 5, 14, 9, 0, tzinfo=UTC)
    assert window_start_before(team, now) == dt.datetime(2025, 5, 13, 18, 0, tzinfo=UTC)


def test_digest_window_ends_at_the_standup(team):
    team.timezone = "Europe/Berlin"
    team.standup_time = dt.time(9, 30)
    now = dt.datetime(2025, 5, 14, 12, 0, tzinfo=BERLIN)
    end = standup_today(team, now)
    assert end == dt.datetime(2025, 5, 14, 9, 30, tzinfo=BERLIN)
    assert digest_window(team, end) == (dt.datetime(2025, 5, 13, 18, 0, tzinfo=BERLIN), end)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12h", dt.datetime(2025, 5, 13, 21, 0, tzinfo=UTC)),
        ("3d", dt.datetime(2025, 5, 11, 9, 0, tzinfo=UTC)),
        ("2025-05-13", dt.datetime(2025, 5, 13, 0, 0, tzinfo=BERLIN)),
        ("2025-05-13T18:00", dt.datetime(2025, 5, 13, 18, 0, tzinfo=BERLIN)),
        ("2025-05-13T18:00+00:00", dt.datetime(2025, 5, 13, 18, 0, tzinfo=UTC)),
        ("2025-05-13T18:00Z", dt.datetime(2025, 5, 13, 18, 0, tzinfo=UTC)),
    ],
)
def test_parse_since(team, raw, expected):
    team.timezone = "Europe/Berlin"
    now = dt.datetime(2025, 5, 14, 9, 0, tzinfo=UTC)
    assert parse_since(raw, team=team, now=now) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [("yesterday-ish", "Could not read"), ("2025-05-15", "in the past"), ("2025-01-01", "last 31 days")],
)
def test_parse_since_rejects_bad_input(team, raw, message):
    now = dt.datetime(2025, 5, 14, 9, 0, tzinfo=UTC)
    with pytest.raises(DomainError, match=message):
        parse_since(raw, team=team, now=now)
    assert parse_since("", team=team, now=now) is None


def test_teams_due_for_digest(team, other_team):
    team.timezone, team.standup_time = "Europe/Berlin", dt.time(9, 30)
    team.save()
    other_team.timezone, other_team.standup_time = "America/Los_Angeles", dt.time(9, 30)
    other_team.save()
    before = dt.datetime(2025, 5, 14, 7, 0, tzinfo=UTC)  # 09:00 Berlin, 00:00 LA
    assert teams_due_for_digest(now=before) == []
    after = dt.datetime(2025, 5, 14, 8, 0, tzinfo=UTC)  # 10:00 Berlin, 01:00 LA
    end = dt.datetime(2025, 5, 14, 9, 30, tzinfo=BERLIN)
    assert teams_due_for_digest(now=after) == [(team.pk, end)]
    StandupDigest.objects.create(team=team, window_start=end - dt.timedelta(hours=15), window_end=end)
    assert teams_due_for_digest(now=after) == []
    la_morning = dt.datetime(2025, 5, 14, 17, 0, tzinfo=UTC)  # 10:00 in Los Angeles
    assert teams_due_for_digest(now=la_morning) == [(other_team.pk, dt.datetime(2025, 5, 14, 9, 30, tzinfo=LA))]


# --- overview -----------------------------------------------------------------------------------


def test_sections_group_runs_by_card_and_owner(recent_window, board, manager, member):
    team = recent_window
    hyp_a = hypothesis(board, "A", owner=manager)
    hyp_b = hypothesis(board, "B", owner=member)
    add_run(team, hyp_a, value=0.8, name="a-ok-1")
    add_run(team, hyp_a, value=0.82, name="a-ok-2")
    add_run(team, hyp_a, status=RunStatus.FAILED, name="a-oom")
    add_run(team, hyp_b, status=RunStatus.RUNNING, name="b-long")
    add_run(team, hyp_b, status=RunStatus.KILLED, name="b-killed")
    add_run(team, hyp_b, value=0.7, ago_hours=5, name="b-old")  # ended before the window
    add_run(team, None, name="orphan", user=member)

    data = standup_overview(team=team, window=standup_window(team=team))
    assert data.counts["finished"] == 3  # a-ok-1, a-ok-2 and the unlinked orphan
    assert data.counts["failed"] == 2 and data.counts["running"] == 1
    assert [(g.card.title, g.owner_label, g.total) for g in data.finished] == [("A", "maya", 2)]
    assert [(g.card.title, sorted(r.label for r in g.runs)) for g in data.failed] == [
        ("A", ["a-oom"]), ("B", ["b-killed"])
    ]
    assert [(g.card.title, [r.label for r in g.runs]) for g in data.running] == [("B", ["b-long"])]
    assert [r.label for r in data.unlinked] == ["orphan"] and data.unlinked_total == 1
    assert "b-old" not in {r.label for g in data.finished + data.failed for r in g.runs}


def test_running_run_that_started_before_the_window_is_still_listed(recent_window, board):
    card = hypothesis(board)
    run = add_run(recent_window, card, status=RunStatus.RUNNING, ago_hours=30)
    data = standup_overview(team=recent_window, window=standup_window(team=recent_window))
    assert [r.id for g in data.running for r in g.runs] == [run.pk]


def test_board_filter_limits_everything_to_that_board(recent_window, board):
    other = board_create(team=recent_window, name="Fraud", key="FRAUD")
    mine, theirs = hypothesis(board, "mine"), hypothesis(other, "theirs")
    add_run(recent_window, mine, value=0.9)
    add_run(recent_window, theirs, value=0.9)
    add_run(recent_window, None)
    data = standup_overview(team=recent_window, board=board, window=standup_window(team=recent_window))
    assert [g.card.title for g in data.finished] == ["mine"]
    assert data.counts["finished"] == 1 and data.unlinked_total == 0


def test_change_vs_baseline_with_spread_across_seeds(recent_window, board, member):
    hyp = hypothesis(board)
    exp = experiment(hyp, owner=member, baseline_value=0.80)
    for seed, value in enumerate([0.82, 0.84, 0.86]):
        add_run(recent_window, exp, value=value, seed=seed)
    add_run(recent_window, exp, value=float("nan"), name="diverged")
    data = standup_overview(team=recent_window, window=standup_window(team=recent_window))
    (group,) = data.finished
    s = group.stats
    assert s.metric_key == METRIC  # the experiment is judged on its hypothesis's metric
    assert (s.n, s.new_n, s.nan_n) == (3, 3, 1)
    assert s.mean == pytest.approx(0.84) and s.std == pytest.approx(0.02)
    assert s.baseline == 0.80 and s.delta == pytest.approx(0.04) and s.improved is True
    assert s.mean_display == "0.84" and s.delta_display == "+0.04"
    assert {r.label: r.value_display for r in group.runs}["diverged"] == "NaN"


def test_baseline_precedence_matches_the_verdict(recent_window, board):
    from experiments.services.verdicts import verdict_evaluate

    hyp = hypothesis(board)
    reference = add_run(recent_window, value=0.78, ago_hours=40)
    exp = experiment(hyp, baseline_value=0.70)
    Card.objects.filter(pk=exp.pk).update(baseline_run=reference)
    for seed, value in enumerate([0.80, 0.81, 0.82]):
        add_run(recent_window, exp, value=value, seed=seed)
    data = standup_overview(team=recent_window, window=standup_window(team=recent_window))
    s = data.finished[0].stats
    # The experiment's baseline run wins over its typed-in baseline value, as in the verdict.
    assert (s.baseline, s.baseline_source) == (pytest.approx(0.78), "baseline run")
    assert verdict_evaluate(card=hyp).stats["baseline"] == pytest.approx(s.baseline)


def test_baseline_from_baseline_runs_and_minimize_direction(recent_window, board):
    hyp = hypothesis(board, direction="minimize", metric_key=METRIC)
    add_run(recent_window, hyp, value=0.30, baseline=True, ago_hours=40)
    add_run(recent_window, hyp, value=0.32, baseline=True, ago_hours=40)
    add_run(recent_window, hyp, value=0.35)
    add_run(recent_window, hyp, value=0.37, ago_hours=20)  # older run still counts as evidence
    data = standup_overview(team=recent_window, window=standup_window(team=recent_window))
    s = data.finished[0].stats
    assert (s.n, s.new_n) == (2, 1)
    assert s.baseline == pytest.approx(0.31) and s.delta == pytest.approx(0.05)
    assert s.improved is False  # lower is better and the mean went up


def test_stuck_cards(recent_window, board):
    team = recent_window
    running = column(board, Stage.RUNNING)
    idle = card_create(board=board, kind=CardKind.HYPOTHESIS, title="idle", actor=None, column=running)
    busy = card_create(board=board, kind=CardKind.HYPOTHESIS, title="busy", actor=None, column=running)
    old = timezone.now() - dt.timedelta(hours=30)
    Card.objects.filter(pk__in=[idle.pk, busy.pk]).update(started_at=old, created_at=old)
    hung = add_run(team, idle, status=RunStatus.RUNNING)  # a run that never reported back
    CardRun.objects.filter(run=hung).update(created_at=old)
    Run.objects.filter(pk=hung.pk).update(start_time=old - dt.timedelta(hours=1))
    add_run(team, busy, status=RunStatus.RUNNING, ago_hours=1)
    idle.refresh_from_db()
    assert idle.column.stage == Stage.RUNNING

    data = standup_overview(team=team, window=standup_window(team=team))
    assert [s.card.title for s in data.stuck] == ["idle"]
    assert data.stuck[0].idle_hours == 30 and data.stuck[0].active_runs == 1
    team.stuck_after_hours = 48
    data = standup_overview(team=team, window=standup_window(team=team))
    assert data.stuck == []


def test_stuck_cards_with_missing_moments(recent_window, board):
    """Cards without runs or a start time are judged on what they have (the SQL filter keeps NULLs)."""
    team = recent_window
    running = column(board, Stage.RUNNING)
    old = timezone.now() - dt.timedelta(hours=30)
    never_ran = card_create(board=board, kind=CardKind.HYPOTHESIS, title="never ran", actor=None, column=running)
    fresh = card_create(board=board, kind=CardKind.HYPOTHESIS, title="fresh", actor=None, column=running)
    restarted = card_create(board=board, kind=CardKind.HYPOTHESIS, title="restarted", actor=None, column=running)
    ended_recently = card_create(board=board, kind=CardKind.HYPOTHESIS, title="ended", actor=None, column=running)
    Card.objects.filter(pk=never_ran.pk).update(started_at=None, created_at=old)
    Card.objects.filter(pk=fresh.pk).update(started_at=None)  # created just now
    Card.objects.filter(pk__in=[restarted.pk, ended_recently.pk]).update(created_at=old)
    Card.objects.filter(pk=restarted.pk).update(started_at=timezone.now() - dt.timedelta(hours=1))
    for card in (restarted, ended_recently):
        run = add_run(team, card, ago_hours=30)
        CardRun.objects.filter(run=run).update(created_at=old)
    Card.objects.filter(pk=ended_recently.pk).update(started_at=old)
    Run.objects.filter(card_links__card=ended_recently).update(end_time=timezone.now() - dt.timedelta(hours=2))

    data = standup_overview(team=team, window=standup_window(team=team))
    assert [s.card.title for s in data.stuck] == ["never ran"]
    assert data.stuck[0].idle_hours == 30 and data.counts["stuck"] == 1


def test_wip_over_limit(recent_window, board):
    running = column(board, Stage.RUNNING)  # default limit 4
    for i in range(5):
        card_create(board=board, kind=CardKind.HYPOTHESIS, title=f"h{i}", actor=None, column=running)
    card_create(board=board, kind=CardKind.HYPOTHESIS, title="ready", actor=None, column=column(board, Stage.READY))
    data = standup_overview(team=recent_window, window=standup_window(team=recent_window))
    assert [(c.name, c.card_count, c.wip_limit, c.over_by) for c in data.wip_over] == [("Running", 5, 4, 1)]


def make_proposal(card, proposed=VerdictChoice.SUPPORTED) -> VerdictProposal:
    return VerdictProposal.objects.create(
        card=card, proposed=proposed,
        stats={"metric_key": METRIC, "n": 3, "min_runs": 3, "mean": 0.84, "std": 0.02, "ci_low": 0.79,
               "ci_high": 0.89, "ci_level": 0.95, "baseline": 0.8, "delta": 0.04},
        explanation="Supported: mean above the threshold.",
    )


def test_verdict_section_lists_only_waiting_proposals(recent_window, board, member, client_for):
    waiting = make_proposal(hypothesis(board, "waiting"))
    decided = make_proposal(hypothesis(board, "decided"))
    VerdictProposal.objects.filter(pk=decided.pk).update(status=VerdictStatus.CONFIRMED)
    data = standup_overview(team=recent_window, window=standup_window(team=recent_window))
    assert [p.pk for p in data.proposals] == [waiting.pk]
    assert ("mean ± std", "0.84 ± 0.02") in data.proposals[0].stat_items
    assert ("Δ vs baseline", "+0.04") in data.proposals[0].stat_items

    html = client_for(member).get(reverse("standup", args=[recent_window.slug])).content.decode()
    assert "waiting" in html and f'id="proposal-{waiting.pk}"' in html
    assert f'id="proposal-{decided.pk}"' not in html
    assert "Confirm supported" in html


# --- page ---------------------------------------------------------------------------------------


def test_page_renders_sections_for_member(recent_window, board, member, client_for):
    hyp = hypothesis(board, "Tenure buckets", owner=member)
    add_run(recent_window, hyp, value=0.81, name="seed-1")
    add_run(recent_window, hyp, status=RunStatus.FAILED, name="seed-2-oom")
    response = client_for(member).get(reverse("standup", args=[recent_window.slug]))
    assert response.status_code == 200
    html = response.content.decode()
    expected = (
        "Tenure buckets", "seed-1", "seed-2-oom", "Still running", "Stuck cards", "Columns over their WIP limit",
        "Runs not linked to any card", 'class="su-move"', "Add a learning note",
    )
    for text in expected:
        assert text in html, text
    assert reverse("standup_sparkline", args=[recent_window.slug, hyp.pk]) in html
    assert "plotly/plotly.min.js" in html  # loaded lazily by standup.js, not by a script tag
    assert '<script src="/static/plotly' not in html


def test_page_for_viewer_is_read_only(recent_window, board, viewer, client_for):
    hyp = hypothesis(board)
    add_run(recent_window, hyp, value=0.81)
    make_proposal(hyp)
    html = client_for(viewer).get(reverse("standup", args=[recent_window.slug])).content.decode()
    assert hyp.key in html
    assert 'class="su-move"' not in html and "Add a learning note" not in html and "su-decide" not in html


def test_page_for_other_team_is_404(team, board, outsider, client_for):
    assert client_for(outsider).get(reverse("standup", args=[team.slug])).status_code == 404


def test_page_board_scoping(recent_window, board, member, client_for, other_team):
    foreign = board_create(team=other_team, name="Secret", key="SEC")
    client = client_for(member)
    assert client.get(reverse("standup_board", args=[recent_window.slug, board.pk])).status_code == 200
    assert client.get(reverse("standup", args=[recent_window.slug]), {"board": board.pk}).status_code == 200
    assert client.get(reverse("standup_board", args=[recent_window.slug, foreign.pk])).status_code == 404
    assert client.get(reverse("standup", args=[recent_window.slug]), {"board": "x"}).status_code == 404


def test_page_since_override_and_bad_since(recent_window, board, member, client_for):
    hyp = hypothesis(board, "Old work")
    add_run(recent_window, hyp, value=0.81, ago_hours=10, name="ten-hours-ago")
    client = client_for(member)
    url = reverse("standup", args=[recent_window.slug])
    assert "ten-hours-ago" not in client.get(url).content.decode()
    assert "ten-hours-ago" in client.get(url, {"since": "24h"}).content.decode()
    bad = client.get(url, {"since": "last tuesday"})
    assert bad.status_code == 400
    assert "Could not read since=" in bad.content.decode() and "Showing the default window" in bad.content.decode()


def _seed_night(team, board, n: int, owner) -> None:
    for i in range(n):
        hyp = hypothesis(board, f"H{i}", owner=owner)
        exp = experiment(hyp, owner=owner, baseline_value=0.7)
        add_run(team, exp, value=0.7 + i / 100, seed=i)
        add_run(team, exp, value=0.71 + i / 100, seed=i + 100)
        add_run(team, hyp, status=RunStatus.FAILED)
        add_run(team, hyp, status=RunStatus.RUNNING)
        add_run(team, None)
        make_proposal(hyp)
    running = column(board, Stage.RUNNING)
    for i in range(n):
        card_create(board=board, kind=CardKind.HYPOTHESIS, title=f"wip{i}", actor=None, column=running)


def test_page_query_count_is_independent_of_runs_and_cards(
    recent_window, board, member, client_for, django_assert_num_queries
):
    client = client_for(member)
    url = reverse("standup", args=[recent_window.slug])
    _seed_night(recent_window, board, 3, member)
    client.get(url)  # warm the session
    with CaptureQueriesContext(connection) as first:
        response = client.get(url)
    assert response.status_code == 200
    n = len(first)
    assert response.content.decode().count('class="su-card') >= 6
    _seed_night(recent_window, board, 3, member)  # twice the cards and runs
    with django_assert_num_queries(n):
        response = client.get(url)
    assert response.content.decode().count('class="su-card') >= 12
    assert n <= 16, [q["sql"] for q in first.captured_queries]


def test_sparkline_endpoint(recent_window, board, member, outsider, client_for):
    hyp = hypothesis(board)
    exp = experiment(hyp, baseline_value=0.8)
    add_run(recent_window, exp, value=0.82, ago_hours=20, name="old", seed=1)
    add_run(recent_window, exp, value=0.86, ago_hours=1, name="new", seed=2)
    url = reverse("standup_sparkline", args=[recent_window.slug, exp.pk])
    body = client_for(member).get(url, {"since": "12h"}).json()
    assert body["metric"] == METRIC and body["baseline"] == 0.8
    assert [(p["name"], p["value"], p["new"]) for p in body["points"]] == [("old", 0.82, False), ("new", 0.86, True)]
    assert body["mean"] == pytest.approx(0.84)
    assert client_for(member).get(url, {"since": "nonsense"}).status_code == 400
    assert client_for(outsider).get(url).status_code == 404


def test_sparkline_query_count_independent_of_runs(recent_window, board, member, client_for,
                                                   django_assert_num_queries):
    hyp = hypothesis(board)
    client = client_for(member)
    url = reverse("standup_sparkline", args=[recent_window.slug, hyp.pk])
    for i in range(3):
        add_run(recent_window, hyp, value=0.8 + i / 100)
    client.get(url)
    with CaptureQueriesContext(connection) as first:
        client.get(url)
    for i in range(3):
        add_run(recent_window, hyp, value=0.9 + i / 100)
    with django_assert_num_queries(len(first)):
        assert len(client.get(url).json()["points"]) == 6


# --- decisions ----------------------------------------------------------------------------------


def test_move_card_from_the_page(recent_window, board, member, client_for):
    card = hypothesis(board)
    analyzing = column(board, Stage.ANALYZING)
    url = reverse("standup_card_move", args=[recent_window.slug, card.pk])
    response = client_for(member).post(url, {"column": analyzing.pk, "version": card.version}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "Moved to Analyzing." in response.content.decode()
    card.refresh_from_db()
    assert card.column == analyzing and card.version == 2
    trigger = json.loads(response["HX-Trigger"])["standup:card-changed"]
    assert trigger == {"cards": [{"card": card.pk, "column": "Analyzing", "version": 2}]}
    assert f'value="{card.version}"' in response.content.decode()


def test_move_with_stale_version_shows_conflict(recent_window, board, member, manager, client_for):
    card = hypothesis(board)
    url = reverse("standup_card_move", args=[recent_window.slug, card.pk])
    client_for(manager).post(url, {"column": column(board, Stage.READY).pk, "version": 1})
    response = client_for(member).post(url, {"column": column(board, Stage.DONE).pk, "version": 1})
    assert response.status_code == 409
    html = response.content.decode()
    assert "was changed by maya since you loaded it" in html
    assert 'value="2"' in html  # the form now carries the current version
    card.refresh_from_db()
    assert card.column.stage == Stage.READY


def test_move_rejects_bad_input(recent_window, board, member, client_for):
    card = hypothesis(board)
    other = board_create(team=recent_window, name="Other", key="OTH")
    url = reverse("standup_card_move", args=[recent_window.slug, card.pk])
    client = client_for(member)
    response = client.post(url, {"column": other.columns.first().pk, "version": 1})
    assert response.status_code == 400 and "Choose a column on this card" in response.content.decode()
    response = client.post(url, {"column": column(board, Stage.READY).pk})
    assert response.status_code == 400 and "missing the card version" in response.content.decode()
    assert client.get(url).status_code == 405


def test_viewer_cannot_decide_and_outsider_gets_404(recent_window, board, viewer, outsider, client_for):
    card = hypothesis(board)
    proposal = make_proposal(card)
    slug = recent_window.slug
    posts = [
        (reverse("standup_card_move", args=[slug, card.pk]), {"column": column(board, Stage.READY).pk, "version": 1}),
        (reverse("standup_card_note", args=[slug, card.pk]), {"text": "hello"}),
        (reverse("standup_verdict_decide", args=[slug, proposal.pk]), {"action": "confirm"}),
    ]
    for url, data in posts:
        response = client_for(viewer).post(url, data)
        assert response.status_code == 403, url
        assert "Viewers cannot change anything" in response.content.decode()
        assert client_for(outsider).post(url, data).status_code == 404, url
    # The outsider's own team slug does not open this team's cards either.
    assert client_for(outsider).post(reverse("standup_card_note", args=["rivals", card.pk]),
                                     {"text": "x"}).status_code == 404
    card.refresh_from_db()
    proposal.refresh_from_db()
    assert card.version == 1 and card.learnings == "" and proposal.status == VerdictStatus.PROPOSED


def test_add_note_from_the_page(recent_window, board, member, client_for):
    card = hypothesis(board)
    url = reverse("standup_card_note", args=[recent_window.slug, card.pk])
    response = client_for(member).post(url, {"text": "Seed 3 diverged after epoch 4."})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Seed 3 diverged after epoch 4." in html and "Note added to" in html
    card.refresh_from_db()
    assert card.learnings.endswith("mo] Seed 3 diverged after epoch 4.")
    assert json.loads(response["HX-Trigger"])["standup:card-changed"]["cards"][0]["version"] == card.version
    empty = client_for(member).post(url, {"text": "   "})
    assert empty.status_code == 400 and "The note is empty." in empty.content.decode()


def test_confirm_verdict_from_the_page(recent_window, board, member, client_for):
    card = hypothesis(board)
    proposal = make_proposal(card)
    url = reverse("standup_verdict_decide", args=[recent_window.slug, proposal.pk])
    response = client_for(member).post(url, {"action": "confirm", "verdict": "refuted"})
    assert response.status_code == 200
    assert "Confirmed" in response.content.decode()
    proposal.refresh_from_db()
    card.refresh_from_db()
    assert proposal.status == VerdictStatus.CONFIRMED and proposal.decided == VerdictChoice.SUPPORTED
    assert card.verdict == VerdictChoice.SUPPORTED and card.column.stage == Stage.DONE
    again = client_for(member).post(url, {"action": "confirm"})
    assert again.status_code == 409 and "already decided" in again.content.decode()


def test_override_verdict_from_the_page(recent_window, board, member, client_for):
    card = hypothesis(board)
    proposal = make_proposal(card)
    url = reverse("standup_verdict_decide", args=[recent_window.slug, proposal.pk])
    missing = client_for(member).post(url, {"action": "override", "verdict": ""})
    assert missing.status_code == 400 and "Pick the verdict" in missing.content.decode()
    response = client_for(member).post(url, {"action": "override", "verdict": "inconclusive", "note": "Leak found."})
    assert response.status_code == 200 and "Overridden" in response.content.decode()
    proposal.refresh_from_db()
    assert (proposal.status, proposal.decided, proposal.note) == (
        VerdictStatus.OVERRIDDEN, VerdictChoice.INCONCLUSIVE, "Leak found."
    )


def test_long_sections_show_the_first_cards_and_a_show_all_link(recent_window, board, member, client_for,
                                                                 monkeypatch):
    monkeypatch.setattr("experiments.web.standup_views.CARDS_PER_SECTION", 2)
    for i in range(3):
        add_run(recent_window, hypothesis(board, f"card {i}", owner=member), value=0.8)
    url = reverse("standup", args=[recent_window.slug])
    html = client_for(member).get(url).content.decode()
    assert html.count('<article class="su-card') == 2
    assert "Showing 2 of 3 cards." in html and "all=1#finished" in html
    html = client_for(member).get(url, {"all": "1"}).content.decode()
    assert html.count('<article class="su-card') == 3 and "Showing 2 of 3" not in html
