"""Teamwork services: board polish, Markdown, comments and mentions, notifications and their batched
delivery, evidence snapshots, memory of what was tried, leaderboard, search."""

from __future__ import annotations

import datetime as dt
import json
import math

import plotly.graph_objects as go
import pytest
from django.core import mail
from django.core.cache import cache
from django.utils import timezone

from experiments import charts
from experiments.errors import DomainError, PermissionDeniedError, WipLimitError
from experiments.markdown import mentioned_usernames, render_markdown
from experiments.models import (
    Card,
    CardKind,
    Column,
    EvidenceSnapshot,
    LatestMetric,
    Notification,
    NotificationKind,
    Param,
    Role,
    Run,
    RunStatus,
    Stage,
    Watch,
)
from experiments.selectors.board import BoardFilters, board_view, owner_choices
from experiments.selectors.insights import dead_ends, similar_hypotheses, team_leaderboard
from experiments.selectors.runs import runs_compare
from experiments.selectors.search import search_everything
from experiments.services.cards import (
    card_create,
    card_move,
    card_restore,
    card_update,
    cards_archive_done,
)
from experiments.services.comments import comment_create, comment_update
from experiments.services.evidence import evidence_snapshot_create
from experiments.services.notifications import (
    _schedule_key,
    digest_schedule,
    notification_digest_send,
    notifications_mark_read,
    preference_update,
)
from experiments.services.runs import (
    MetricPoint,
    card_link_run,
    run_create,
    run_delete,
    run_log_metrics,
    run_update,
)
from experiments.services.teams import membership_set_role, teamwork_settings_update
from experiments.services.verdicts import verdict_decide, verdict_propose

METRIC = "val_auc"


def hypothesis_card(board, actor=None, **fields) -> Card:
    defaults = {"metric_key": METRIC, "direction": "maximize", "threshold": 0.8, "min_runs": 3}
    defaults.update(fields)
    title = defaults.pop("title", "Tenure features lift AUC")
    return card_create(board=board, kind=CardKind.HYPOTHESIS, title=title, actor=actor, **defaults)


def add_run(card, value, *, params=None, status=RunStatus.FINISHED, user=None, name=""):
    run = run_create(team=card.board.team, status=status, params=params or {}, user=user, name=name)
    if value is not None:
        run_log_metrics(run=run, points=[MetricPoint(METRIC, 0.5, step=0, timestamp=1),
                                         MetricPoint(METRIC, value, step=9, timestamp=2)])
    card_link_run(card=card, run=run, actor=None)
    return run


def column(board, stage) -> Column:
    return board.columns.filter(stage=stage).order_by("position").first()


# --- Run comparison / charts defects ----------------------------------------------------------


def test_parcoords_with_missing_and_nan_colour_metric_builds_a_valid_figure(board, member):
    card = hypothesis_card(board)
    a = add_run(card, 0.9, params={"lr": "0.1", "opt": "adam"})
    b = add_run(card, None, params={"lr": "0.2"})  # lacks the colour metric and the opt param
    c = run_create(team=board.team, params={"lr": "0.3", "opt": "sgd"})
    run_log_metrics(run=c, points=[MetricPoint(METRIC, math.nan, step=0, timestamp=1)])
    comparison = runs_compare(team=board.team, run_ids=[a.pk, b.pk, c.pk])
    fig = charts.parallel_coordinates(comparison=comparison, color_metric=METRIC)
    # plotly validates on construction: this used to raise "Invalid element(s) ... 'color' property".
    go.Figure(fig.to_dict())
    trace = fig.data[0]
    colors = list(trace.line.color)
    assert all(isinstance(v, float) for v in colors)
    assert colors[0] == 0.9 and colors[1] < 0.9 and colors[2] == colors[1]
    opt = next(d for d in trace.dimensions if d.label == "opt")
    assert opt.ticktext[0] == charts.MISSING_LABEL and list(opt.values)[1] == 0
    metric = next(d for d in trace.dimensions if d.label == METRIC)
    assert None not in list(metric.values) and metric.ticktext[0] == charts.MISSING_LABEL
    assert [c.key for c in comparison.runs[0].linked_cards] == [card.key]


def test_chart_payload_counts_finite_points(client_for, member, board):
    card = hypothesis_card(board)
    run = run_create(team=board.team)
    run_log_metrics(run=run, points=[MetricPoint("loss", v, step=i, timestamp=i) for i, v in
                                     enumerate([math.nan, math.inf, -math.inf])])
    card_link_run(card=card, run=run, actor=None)
    body = client_for(member).get(f"/cards/{card.pk}/metrics.json?key=loss").json()
    assert body["figure"]["data"][0]["y"] == [None, None, None]  # stored ±Inf is drawn as a gap
    assert body["meta"]["finite_points"] == 0 and body["meta"]["total_points"] == 3


# --- Board polish -------------------------------------------------------------------------------


def test_done_column_lists_newest_first(board, member):
    done = column(board, Stage.DONE)
    cards = [card_create(board=board, kind="hypothesis", title=f"h{i}", actor=member, column=done) for i in range(3)]
    for i, card in enumerate(cards):
        Card.objects.filter(pk=card.pk).update(completed_at=timezone.now() - dt.timedelta(days=3 - i))
    view = board_view(board=board, filters=BoardFilters())
    cell = next(c for c in view.lanes[0].cells if c.column.pk == done.pk)
    assert [c.title for c in cell.cards] == ["h2", "h1", "h0"]


def test_done_cards_are_archived_after_the_team_age_and_can_be_restored(board, team, member):
    done = column(board, Stage.DONE)
    old = card_create(board=board, kind="hypothesis", title="old", actor=member, column=done)
    new = card_create(board=board, kind="hypothesis", title="new", actor=member, column=done)
    Card.objects.filter(pk=old.pk).update(completed_at=timezone.now() - dt.timedelta(days=20))
    assert cards_archive_done(team=team) == 1
    assert cards_archive_done(team=team) == 0  # idempotent
    titles = [c.title for lane in board_view(board=board, filters=BoardFilters()).lanes for cell in lane.cells
              for c in cell.cards]
    assert "old" not in titles and "new" in titles
    assert card_restore(card=old, actor=member)
    assert cards_archive_done(team=team) == 0  # restored: its age restarts
    teamwork_settings_update(team=team, wip_strict=False, archive_done_after_days=None)
    Card.objects.filter(pk=new.pk).update(completed_at=timezone.now() - dt.timedelta(days=400))
    assert cards_archive_done(team=team) == 0  # archiving off


def test_strict_wip_limit_asks_before_a_person_overfills_a_column(board, team, member):
    running = column(board, Stage.RUNNING)
    Column.objects.filter(pk=running.pk).update(wip_limit=1)
    running.refresh_from_db()
    card_create(board=board, kind="hypothesis", title="a", actor=member, column=running)
    b = card_create(board=board, kind="hypothesis", title="b", actor=member)
    # Not strict: moves, the view flags it.
    moved = card_move(card=b, to_column=running, actor=member, expected_version=1, confirm_over_limit=False)
    assert moved.column_id == running.pk
    teamwork_settings_update(team=team, wip_strict=True, archive_done_after_days=14)
    c = card_create(board=board, kind="hypothesis", title="c", actor=member)
    with pytest.raises(WipLimitError, match="WIP limit of 1"):
        card_move(card=c, to_column=running, actor=member, expected_version=1, confirm_over_limit=False)
    assert card_move(card=c, to_column=running, actor=member, expected_version=1).column_id == running.pk


def test_move_endpoint_flags_over_limit_and_strict_needs_confirmation(client_for, board, team, member):
    running = column(board, Stage.RUNNING)
    Column.objects.filter(pk=running.pk).update(wip_limit=0)
    card = card_create(board=board, kind="hypothesis", title="a", actor=member)
    client = client_for(member)
    url = f"/boards/{board.pk}/cards/{card.pk}/move/"
    body = client.post(url, {"to_column": running.pk, "version": 1}).json()
    assert body["ok"] and "over its WIP limit" in body["wip_warning"]
    teamwork_settings_update(team=team, wip_strict=True, archive_done_after_days=14)
    other = card_create(board=board, kind="hypothesis", title="b", actor=member)
    url = f"/boards/{board.pk}/cards/{other.pk}/move/"
    refused = client.post(url, {"to_column": running.pk, "version": 1})
    assert refused.status_code == 409 and refused.json()["needs_confirm"]
    confirmed = client.post(url, {"to_column": running.pk, "version": 1, "confirm_over_limit": "1"}).json()
    assert confirmed["ok"]


def test_viewers_cannot_own_cards(board, team, member, viewer):
    with pytest.raises(DomainError, match="Viewers cannot own cards"):
        card_create(board=board, kind="hypothesis", title="x", actor=member, owner=viewer)
    assert viewer not in owner_choices(team.pk) and member in owner_choices(team.pk)
    card = card_create(board=board, kind="hypothesis", title="x", actor=member, owner=member)
    with pytest.raises(DomainError, match="Viewers cannot own cards"):
        card_update(card=card, actor=member, expected_version=None, owner=viewer)
    membership_set_role(membership=member.memberships.get(team=team), role=Role.VIEWER)
    card.refresh_from_db()
    assert card.owner is None  # demoted to viewer: cards handed back


# --- Verdict follow-ups -------------------------------------------------------------------------


def decided_hypothesis(board, member, values=(0.61, 0.62, 0.63)):
    hyp = hypothesis_card(board, owner=member)
    exp = card_create(board=board, kind="experiment", title="GBM", actor=member, parent=hyp)
    runs = [add_run(exp, v, params={"lr": f"0.0{i + 1}", "seed": str(i)}) for i, v in enumerate(values)]
    proposal = verdict_propose(card=hyp)
    return hyp, exp, runs, proposal


def test_confirmed_verdict_moves_experiments_and_freezes_evidence(board, member):
    hyp, exp, runs, proposal = decided_hypothesis(board, member)
    exp.refresh_from_db()
    assert exp.column.stage == Stage.ANALYZING
    verdict_decide(proposal=proposal, actor=member)
    exp.refresh_from_db()
    assert exp.column.stage == Stage.DONE
    result = Card.objects.get(parent=hyp, kind=CardKind.RESULT)
    snapshot = EvidenceSnapshot.objects.get(card=result)
    data = snapshot.data
    assert data["verdict"]["decided"] == "refuted"
    assert sorted(r["id"] for r in data["runs"]) == sorted(r.pk for r in runs)
    assert {r["final_metrics"][METRIC] for r in data["runs"]} == {0.61, 0.62, 0.63}
    assert data["runs"][0]["params"]["lr"] == "0.01"
    assert data["statistics"]["n"] == 3 and data["statistics"] == json.loads(json.dumps(proposal.stats))
    assert len(data["charts"][METRIC]) == 3
    # Immutable, and independent of the runs from now on.
    with pytest.raises(ValueError, match="immutable"):
        snapshot.save()
    assert evidence_snapshot_create(result=result, hypothesis=hyp, proposal=proposal, actor=member).pk == snapshot.pk
    # A re-import rewrites the runs' values, then they are deleted: the frozen copy stays as it was.
    LatestMetric.objects.filter(run__in=runs).update(value=0.99)
    Param.objects.filter(run__in=runs).update(value="changed")
    for run in runs:
        run_delete(run=run)
    assert EvidenceSnapshot.objects.get(pk=snapshot.pk).data == data
    # The dead-ends view shows it with its snapshot.
    ends = dead_ends(board=board)
    assert [e.card.pk for e in ends] == [hyp.pk] and ends[0].snapshot_id == snapshot.pk


# --- Markdown -----------------------------------------------------------------------------------


def test_markdown_is_rendered_and_sanitised():
    html = render_markdown(
        "**bold** <script>alert(1)</script> [x](javascript:alert(1)) [ok](https://e.x) <img src=x onerror=alert(1)>"
    )
    assert "<strong>bold</strong>" in html
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert "&lt;script&gt;" in html  # shown as text, not run
    assert 'href="https://e.x"' in html and "noopener" in html
    assert mentioned_usernames("hi @mo, `@code` and mail a@b.c and @vic.") == ["mo", "vic"]
    assert '<span class="mention">@mo</span>' in render_markdown("hi @mo `@mo`", mentions=["mo"])
    assert "<code>@mo</code>" in render_markdown("hi @mo `@mo`", mentions=["mo"])


# --- Comments, mentions, notifications ----------------------------------------------------------


def test_comment_mentions_notify_and_watch(board, member, manager, viewer, outsider):
    card = hypothesis_card(board, owner=manager)
    comment = comment_create(author=member, body="@maya look, and @vic too. @otto is not on the team.", card=card)
    assert set(comment.mentions.values_list("username", flat=True)) == {"maya", "vic"}
    kinds = dict(Notification.objects.filter(comment=comment).values_list("user__username", "kind"))
    # The owner is mentioned (one notification, the mention); the viewer is mentioned; the author is not told.
    assert kinds == {"maya": NotificationKind.MENTION, "vic": NotificationKind.MENTION}
    assert Watch.objects.filter(user=member, card=card).exists()  # commenters watch
    reply = comment_create(author=manager, body="Thanks!", card=card)
    assert list(Notification.objects.filter(comment=reply).values_list("user__username", "kind")) == [
        ("mo", NotificationKind.COMMENT)
    ]
    with pytest.raises(PermissionDeniedError):
        comment_create(author=outsider, body="hi", card=card)
    with pytest.raises(DomainError, match="empty"):
        comment_create(author=member, body="  ", card=card)


def test_comment_edit_keeps_history_and_only_the_author_edits(board, member, manager):
    card = hypothesis_card(board)
    comment = comment_create(author=member, body="first", card=card)
    comment_update(comment=comment, editor=member, body="second @maya")
    comment.refresh_from_db()
    assert comment.body == "second @maya" and comment.edited_at is not None
    assert list(comment.revisions.values_list("body", flat=True)) == ["first"]
    assert Notification.objects.filter(user=manager, kind=NotificationKind.MENTION, comment=comment).count() == 1
    with pytest.raises(PermissionDeniedError):
        comment_update(comment=comment, editor=manager, body="hijack")


def test_failed_run_verdict_and_muting(board, member, manager):
    hyp = hypothesis_card(board, owner=manager)
    preference_update(user=member, email=True, webhook_url="", muted_kinds=[NotificationKind.RUN_FAILED])
    Watch.objects.create(user=member, card=hyp)
    run = add_run(hyp, None, status=RunStatus.RUNNING)
    run_update(run=run, status=RunStatus.FAILED)
    assert list(Notification.objects.filter(kind=NotificationKind.RUN_FAILED).values_list("user__username",
                                                                                         flat=True)) == ["maya"]
    add_run(hyp, 0.9)
    add_run(hyp, 0.91)
    add_run(hyp, 0.92)
    verdict_propose(card=hyp)
    proposed = Notification.objects.filter(kind=NotificationKind.VERDICT_PROPOSED)
    assert set(proposed.values_list("user__username", flat=True)) == {"maya", "mo"}


def test_a_burst_of_failures_is_one_email_per_user(board, manager, django_capture_on_commit_callbacks):
    hyp = hypothesis_card(board, owner=manager)
    cache.delete(_schedule_key(manager.pk))
    with django_capture_on_commit_callbacks() as scheduled:
        for i in range(5):
            run = add_run(hyp, None, status=RunStatus.RUNNING, name=f"r{i}")
            run_update(run=run, status=RunStatus.FAILED)
    digest_tasks = [c for c in scheduled if "apply_async" in repr(c.__code__.co_names)]
    assert len(digest_tasks) == 1  # one digest task for the whole burst
    assert digest_schedule(user_id=manager.pk) is False
    assert Notification.objects.filter(user=manager, delivered_at__isnull=True).count() == 5
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_digest_send(user_id=manager.pk) == 5
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [manager.email] and message.subject == "5 updates on mlboard"
    assert message.body.count("/cards/") == 5
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_digest_send(user_id=manager.pk) == 0  # idempotent
    assert len(mail.outbox) == 1
    assert digest_schedule(user_id=manager.pk) is True  # the window reopened once the digest ran


def test_digest_respects_email_preference_and_read_state(board, member, manager, django_capture_on_commit_callbacks):
    card = hypothesis_card(board, owner=manager)
    preference_update(user=manager, email=False, webhook_url="", muted_kinds=[])
    comment_create(author=member, body="one", card=card)
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_digest_send(user_id=manager.pk) == 1
    assert mail.outbox == []
    preference_update(user=manager, email=True, webhook_url="", muted_kinds=[])
    comment_create(author=member, body="two", card=card)
    notifications_mark_read(user=manager)
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_digest_send(user_id=manager.pk) == 0  # read in the app already: no mail
    assert mail.outbox == []


def test_mark_read(board, member, manager):
    card = hypothesis_card(board, owner=manager)
    comment_create(author=member, body="one", card=card)
    comment_create(author=member, body="two", card=card)
    assert notifications_mark_read(user=manager) == 2
    assert not Notification.objects.filter(user=manager, read_at__isnull=True).exists()


# --- Memory of what was tried, leaderboard, search ---------------------------------------------


def test_similar_hypotheses_put_refuted_first(board, member):
    tried = hypothesis_card(board, title="Tenure buckets lift churn AUC", statement="Bucketed tenure features.",
                            tags=["tenure"])
    Card.objects.filter(pk=tried.pk).update(verdict="refuted", decided_at=timezone.now())
    supported = hypothesis_card(board, title="Tenure buckets and usage lift AUC", statement="tenure usage buckets")
    Card.objects.filter(pk=supported.pk).update(verdict="supported")
    hypothesis_card(board, title="Unrelated calibration idea", statement="Platt scaling.", metric_key="brier",
                    direction="minimize", threshold=0.1)
    found = similar_hypotheses(team=board.team, text="Tenure buckets for churn", tags=["tenure"], metric_key=METRIC)
    assert [s.card.pk for s in found][:2] == [tried.pk, supported.pk]
    assert found[0].refuted and found[0].shared_tags == ["tenure"]
    assert all(s.card.title != "Unrelated calibration idea" for s in found)


def test_leaderboard_groups_by_params_with_mean_and_std(board, member):
    card = hypothesis_card(board)
    other = card_create(board=board, kind="hypothesis", title="Other", actor=member)
    values = {("0.1", "1"): 0.80, ("0.1", "2"): 0.84, ("0.2", "1"): 0.90, ("0.2", "2"): 0.92}
    for (lr, seed), v in values.items():
        add_run(card if lr == "0.1" else other, v, params={"lr": lr, "seed": seed})
    board_ = team_leaderboard(team=board.team, metric=METRIC, group_by=["lr"])
    assert [r.value for r in board_.best] == [0.92, 0.90, 0.84, 0.80]
    assert board_.best[0].cards[0].pk == other.pk  # across cards
    top, low = board_.groups
    assert top.values == ("0.2",) and top.n == 2 and math.isclose(top.mean, 0.91)
    assert math.isclose(top.std, 0.0141421356, rel_tol=1e-6) and math.isclose(low.mean, 0.82)
    assert board_.param_keys == ["lr"]  # seeds are what varies within a group, not a param to group by
    assert [e.key for e in board_.effects] == ["lr"]
    lower = team_leaderboard(team=board.team, metric=METRIC, direction="minimize")
    assert lower.best[0].value == 0.80


def test_search_finds_cards_runs_and_comments_of_own_teams_only(board, member, other_team, outsider):
    card = hypothesis_card(board, title="Calibrate churn scores", statement="Isotonic regression helps.",
                           learnings="Isotonic overfits small folds.")
    run = add_run(card, 0.8, params={"optimizer": "isotonicish"}, name="calib-run")
    Run.objects.filter(pk=run.pk).update(tags={"note": "nightly"})
    comment_create(author=member, body="Isotonic looked better on fold 2", card=card)
    foreign = run_create(team=other_team, name="isotonic-secret", params={"x": "isotonic"})
    results = search_everything(user=member, text="isotonic")
    assert [h.obj.pk for h in results.cards] == [card.pk]
    assert [h.obj.pk for h in results.runs] == [run.pk]
    assert len(results.comments) == 1
    assert foreign.pk not in [h.obj.pk for h in results.runs]
    assert [h.obj.pk for h in search_everything(user=member, text=card.key).cards] == [card.pk]
    assert [h.obj.pk for h in search_everything(user=member, text="nightly").runs] == [run.pk]
    assert search_everything(user=outsider, text="isotonic").runs[0].obj.pk == foreign.pk
    assert search_everything(user=member, text="i").total == 0



def test_personal_webhook_gets_one_message_per_digest(board, member, manager, django_capture_on_commit_callbacks):
    import http.server
    import threading

    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        preference_update(user=manager, email=False, webhook_url=url, muted_kinds=[])
        card = hypothesis_card(board, owner=manager)
        comment_create(author=member, body="first", card=card)
        comment_create(author=member, body="second @maya", card=card)
        with django_capture_on_commit_callbacks(execute=True):
            assert notification_digest_send(user_id=manager.pk) == 2
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 1
    assert "2 updates" in received[0]["text"] and received[0]["text"].count(f"/cards/{card.pk}/") == 2


def test_owner_hears_once_when_a_card_gets_stuck(board, team, manager):
    from experiments.services.notifications import notify_stuck_cards

    running = column(board, Stage.RUNNING)
    card = card_create(board=board, kind="hypothesis", title="stalled", actor=manager, owner=manager, column=running)
    from experiments.models import CardEvent

    long_ago = timezone.now() - dt.timedelta(hours=team.stuck_after_hours + 2)
    Card.objects.filter(pk=card.pk).update(started_at=long_ago, updated_at=long_ago)
    CardEvent.objects.filter(card=card).update(created_at=long_ago)
    assert notify_stuck_cards(team_id=team.pk) == 1
    assert notify_stuck_cards(team_id=team.pk) == 0  # same stall, no repeat
    n = Notification.objects.get(user=manager)
    assert n.kind == NotificationKind.CARD_STUCK and n.card_id == card.pk
