"""The demo team is what a new user sees first: it must tell a coherent two-week story."""

import datetime as dt

import pytest
from django.core.management import call_command

from experiments.demo import DEMO_PASSWORD, demo_seed
from experiments.models import (
    Card,
    CardKind,
    Iteration,
    IterationState,
    Metric,
    Run,
    RunStatus,
    Stage,
    Team,
    VerdictProposal,
    VerdictStatus,
)
from experiments.selectors.standup import standup_window

NOW = dt.datetime(2026, 11, 23, 9, 15, tzinfo=dt.UTC)


@pytest.fixture
def demo(transactional_db):
    # Real commits: verdicts are proposed on commit of each run update, as in production.
    return demo_seed(now=NOW)


def test_demo_has_a_history_of_decided_hypotheses_and_daily_iterations(demo):
    decided = Card.objects.filter(board__team=demo, kind=CardKind.HYPOTHESIS, column__stage=Stage.DONE)
    assert decided.count() >= 5
    assert set(decided.values_list("verdict", flat=True)) == {"supported", "refuted", "inconclusive"}
    # Every decided hypothesis got its Result card.
    assert Card.objects.filter(board__team=demo, kind=CardKind.RESULT).count() == decided.count()
    closed = Iteration.objects.filter(team=demo, state=IterationState.CLOSED)
    assert closed.count() == 14
    assert Iteration.objects.filter(team=demo, state=IterationState.ACTIVE).count() == 1
    assert any(i.summary["carried_over"] for i in closed)


def test_demo_morning_has_overnight_results_waiting_for_the_standup(demo):
    window = standup_window(team=demo, now=NOW)
    overnight = Run.objects.filter(team=demo, end_time__gte=window.start, end_time__lte=NOW)
    assert overnight.filter(status=RunStatus.FINISHED).count() >= 6
    assert Run.objects.filter(team=demo, status=RunStatus.RUNNING, start_time__gte=window.start).exists()
    pending = VerdictProposal.objects.filter(card__board__team=demo, status=VerdictStatus.PROPOSED)
    assert {p.proposed for p in pending} == {"supported", "refuted"}
    # A failed seed flags its card, as the run-event rules say.
    assert Card.objects.filter(board__team=demo, flagged=True).exists()


def test_demo_runs_have_metric_curves_and_reproducibility_fields(demo):
    run = Run.objects.filter(team=demo, status=RunStatus.FINISHED).first()
    assert Metric.objects.filter(run=run, key="train_loss").count() >= 60
    assert run.code_version and run.data_version and run.seed is not None
    assert run.card_links.exists()


def test_demo_is_idempotent_and_users_can_log_in(demo, client):
    runs = Run.objects.count()
    assert demo_seed(now=NOW).pk == demo.pk
    assert Run.objects.count() == runs
    assert client.login(username="alice", password=DEMO_PASSWORD)
    assert client.get("/").status_code == 200


def test_demo_command_sets_up_without_serving(transactional_db, capsys):
    call_command("demo", "--no-serve")
    assert Team.objects.filter(slug="demo").exists()
    assert "password 'demo'" in capsys.readouterr().out


def test_demo_maturity_times_the_same_decisions_as_velocity(demo):
    """The demo's runs link to experiment cards; maturity must count them through their hypotheses."""
    from experiments.selectors.maturity import maturity_report
    from experiments.selectors.velocity import parse_report_params, velocity_report

    latency = maturity_report(team=demo, as_of=NOW).evidence.metrics["decision_latency"]
    velocity = velocity_report(team=demo, params=parse_report_params(team=demo, data={}, now=NOW)).totals
    assert latency.sample == len(velocity.decision_hours) >= 5
    assert latency.sufficient and latency.value == pytest.approx(velocity.decision_median, abs=0.01)
    assert latency.value < 24  # decided at the next morning's standup


def test_demo_has_standup_history_and_a_discussion(demo):
    from experiments.models import Comment, Notification, NotificationKind, StandupDigest

    digests = list(StandupDigest.objects.filter(team=demo, board=None).order_by("window_end"))
    assert len(digests) == 3 and all(d.window_end < NOW for d in digests)
    assert digests[-1].window_end.date() == (NOW - dt.timedelta(days=1)).date()
    assert Comment.objects.filter(team=demo).count() == 2
    assert Notification.objects.filter(user__username="alice", kind=NotificationKind.MENTION).count() == 1
