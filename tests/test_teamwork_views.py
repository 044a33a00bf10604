"""Teamwork pages: status codes, scoping, and query counts at N and 2N rows."""

from __future__ import annotations

import math

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from experiments.models import (
    ApiToken,
    Card,
    CardKind,
    Notification,
    NotificationKind,
    NotificationPreference,
    RunStatus,
    StandupDigest,
)
from experiments.services.cards import card_archive, card_create
from experiments.services.comments import comment_create
from experiments.services.notifications import notify
from experiments.services.runs import MetricPoint, card_link_run, run_create, run_log_metrics
from experiments.services.verdicts import verdict_decide, verdict_propose

METRIC = "val_auc"


def count_queries(client, url) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return len(ctx.captured_queries), response.content.decode()


def hyp(board, member, **kw) -> Card:
    fields = {"metric_key": METRIC, "direction": "maximize", "threshold": 0.8, "min_runs": 3}
    fields.update(kw)
    title = fields.pop("title", "Tenure lifts AUC")
    return card_create(board=board, kind=CardKind.HYPOTHESIS, title=title, actor=member, **fields)


def add_run(card, value, *, params=None, name="", status=RunStatus.FINISHED):
    run = run_create(team=card.board.team, status=status, params=params or {}, name=name)
    if value is not None:
        run_log_metrics(run=run, points=[MetricPoint(METRIC, value, step=1, timestamp=1)])
    card_link_run(card=card, run=run, actor=None)
    return run


def test_compare_page_no_longer_500s_on_missing_or_nan_colour_metric(client_for, member, board, team):
    card = hyp(board, member)
    a = add_run(card, 0.9, params={"lr": "0.1"})
    b = add_run(card, None, params={"lr": "0.2", "depth": "3"})
    c = run_create(team=team, params={"lr": "0.3"})
    run_log_metrics(run=c, points=[MetricPoint(METRIC, math.nan, step=0, timestamp=1)])
    url = reverse("run_compare", args=[team.slug]) + f"?run={a.pk},{b.pk},{c.pk}&color={METRIC}"
    response = client_for(member).get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert f'href="/cards/{card.pk}/"' in html and "not linked" in html and "parcoords-data" in html


def test_notification_list_and_bell_query_counts(client_for, member, manager, board, team):
    card = hyp(board, manager)
    client = client_for(manager)

    def add(n, offset):
        for i in range(n):
            notify(user_ids=[manager.pk], team_id=team.pk, kind=NotificationKind.COMMENT, text=f"note {offset + i}",
                   dedupe_key=f"t:{offset + i}", actor=member, card=card)

    add(5, 0)
    first, html = count_queries(client, reverse("notifications"))
    assert html.count('class="notification unread"') == 5
    add(5, 5)
    second, html = count_queries(client, reverse("notifications"))
    assert first == second and html.count('class="notification unread"') == 10
    bell = client.get(reverse("notifications_bell")).content.decode()
    assert 'data-unread="10"' in bell
    one = Notification.objects.filter(user=manager).first()
    response = client.get(reverse("notification_open", args=[one.pk]))
    assert response.status_code == 302 and response["Location"] == f"/cards/{card.pk}/"
    client.post(reverse("notifications_read"))
    assert 'data-unread' not in client.get(reverse("notifications_bell")).content.decode()
    assert client_for(member).get(reverse("notification_open", args=[one.pk])).status_code == 404


def test_notification_preferences_page(client_for, member):
    client = client_for(member)
    assert client.get(reverse("notification_prefs")).status_code == 200
    response = client.post(reverse("notification_prefs"), {"kind_mention": "1", "webhook_url": "https://hooks.example/x"})
    assert response.status_code == 302
    pref = NotificationPreference.objects.get(user=member)
    assert not pref.email and pref.webhook_url == "https://hooks.example/x"
    assert NotificationKind.MENTION not in pref.muted_kinds and NotificationKind.COMMENT in pref.muted_kinds
    bad = client.post(reverse("notification_prefs"), {"webhook_url": "ftp://x"})
    assert bad.status_code == 400


def test_card_comments_query_count_and_rendering(client_for, member, manager, board):
    card = hyp(board, member)
    client = client_for(member)
    url = reverse("card_detail", args=[card.pk])

    def add(n, offset):
        for i in range(n):
            comment_create(author=member if i % 2 else manager, body=f"**c{offset + i}** @maya @mo", card=card)

    add(4, 0)
    client.get(url)
    first, html = count_queries(client, url)
    assert html.count('class="comment"') == 4 and "<strong>c0</strong>" in html
    add(4, 4)
    second, html = count_queries(client, url)
    assert first == second and html.count('class="comment"') == 8
    assert '<span class="mention">@maya</span>' in html


def test_comment_post_edit_history_and_members_json(client_for, member, manager, viewer, board, team):
    card = hyp(board, member)
    client = client_for(member)
    response = client.post(reverse("card_comment_create", args=[card.pk]), {"body": "Look @maya"},
                           HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and '<span class="mention">@maya</span>' in response.content.decode()
    comment = card.comments.get()
    client.post(reverse("comment_edit", args=[comment.pk]), {"body": "Look again @maya"})
    history = client.get(reverse("comment_history", args=[comment.pk])).content.decode()
    assert "Look @maya" in history
    assert client_for(manager).post(reverse("comment_edit", args=[comment.pk]), {"body": "x"}).status_code == 302
    comment.refresh_from_db()
    assert comment.body == "Look again @maya"
    members = client.get(reverse("team_members_json", args=[team.slug]), {"q": "ma"}).json()["members"]
    assert [m["username"] for m in members] == ["maya"]
    everyone = client.get(reverse("team_members_json", args=[team.slug])).json()["members"]
    assert {m["username"] for m in everyone} == {"maya", "mo", "vic"}


def test_run_comments(client_for, member, board):
    card = hyp(board, member)
    run = add_run(card, 0.9, name="r1")
    client = client_for(member)
    client.post(reverse("run_comment_create", args=[run.pk]), {"body": "Loss spikes at step 40"})
    html = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "Loss spikes at step 40" in html


def test_comments_of_other_teams_are_404(client_for, outsider, member, board):
    card = hyp(board, member)
    comment = comment_create(author=member, body="secret", card=card)
    client = client_for(outsider)
    assert client.post(reverse("card_comment_create", args=[card.pk]), {"body": "x"}).status_code == 404
    assert client.get(reverse("comment_history", args=[comment.pk])).status_code == 404


def test_search_query_count_and_scoping(client_for, member, board, other_team, outsider):
    client = client_for(member)
    url = reverse("search") + "?q=tenure"

    def add(n, offset):
        for i in range(n):
            card = hyp(board, member, title=f"Tenure idea {offset + i}")
            add_run(card, 0.8, params={"feature": "tenure"}, name=f"tenure-run-{offset + i}")
            comment_create(author=member, body=f"tenure thought {offset + i}", card=card)

    add(3, 0)
    run_create(team=other_team, name="tenure-secret")
    first, html = count_queries(client, url)
    assert html.count('data-kind="card"') == 3 and html.count('data-kind="run"') == 3
    assert html.count('data-kind="comment"') == 3 and "tenure-secret" not in html
    add(3, 3)
    second, html = count_queries(client, url)
    assert first == second and html.count('data-kind="card"') == 6


def test_leaderboard_query_count(client_for, member, board, team):
    client = client_for(member)
    url = reverse("leaderboard", args=[team.slug]) + f"?metric={METRIC}&group=lr"

    def add(n, offset):
        card = hyp(board, member, title=f"h{offset}")
        for i in range(n):
            add_run(card, 0.5 + (offset + i) / 100, params={"lr": str((offset + i) % 3), "seed": str(i)})

    add(6, 0)
    first, html = count_queries(client, url)
    assert html.count('<td class="num mono">') >= 6 and "mean ± std" in html
    add(6, 6)
    second, html = count_queries(client, url)
    assert first == second
    assert "0.6100" in html  # best run first
    assert client_for(member).get(reverse("leaderboard", args=[team.slug])).status_code == 200


def test_evidence_pages_and_dead_ends(client_for, member, board, outsider):
    card = hyp(board, member)
    for v in (0.6, 0.61, 0.62):
        add_run(card, v)
    proposal = verdict_propose(card=card)
    verdict_decide(proposal=proposal, actor=member)
    result = Card.objects.get(parent=card, kind=CardKind.RESULT)
    client = client_for(member)
    page = client.get(reverse("card_evidence", args=[result.pk]))
    assert page.status_code == 200 and "Evidence for" in page.content.decode()
    body = client.get(reverse("card_evidence_json", args=[result.pk])).json()
    assert body["card"] == result.key and len(body["runs"]) == 3
    assert client.get(reverse("card_detail", args=[result.pk])).content.decode().count("Evidence snapshot") == 1
    ends = client.get(reverse("board_dead_ends", args=[board.pk])).content.decode()
    assert card.key in ends and "Refuted" in ends
    assert client_for(outsider).get(reverse("card_evidence", args=[result.pk])).status_code == 404
    assert client.get(reverse("card_evidence", args=[card.pk])).status_code == 404  # hypothesis has none


def test_similar_panel_while_typing(client_for, member, board):
    old = hyp(board, member, title="Tenure buckets lift AUC", statement="tenure buckets", tags=["tenure"])
    Card.objects.filter(pk=old.pk).update(verdict="refuted")
    html = client_for(member).get(
        reverse("board_similar", args=[board.pk]), {"title": "Tenure buckets again", "tags": "tenure"}
    ).content.decode()
    assert old.key in html and "similar-refuted" in html


def test_archive_page_and_restore(client_for, member, viewer, board):
    done = board.columns.get(stage="done")
    card = card_create(board=board, kind="hypothesis", title="old news", actor=member, column=done)
    card_archive(card=card, actor=member)
    client = client_for(member)
    assert "old news" not in client.get(reverse("board", args=[board.pk])).content.decode()
    assert "old news" in client.get(reverse("board_archive", args=[board.pk])).content.decode()
    assert client_for(viewer).post(reverse("board_card_restore", args=[board.pk, card.pk])).status_code == 403
    client.post(reverse("board_card_restore", args=[board.pk, card.pk]))
    assert "old news" in client.get(reverse("board", args=[board.pk])).content.decode()


def test_connect_page_creates_a_token_and_status_sees_the_first_run(client_for, member, viewer, team):
    client = client_for(member)
    page = client.get(reverse("team_connect", args=[team.slug])).content.decode()
    assert "MLFLOW_TRACKING_URI" in page and "http://testserver/mlflow" in page
    created = client.post(reverse("team_connect", args=[team.slug])).content.decode()
    token = ApiToken.objects.get(user=member)
    assert token.team == team and token.prefix in created
    status_url = reverse("team_connect_status", args=[team.slug])
    since = "2000-01-01T00:00:00+00:00"
    assert "Waiting" in client.get(status_url, {"since": "2999-01-01T00:00:00+00:00"}).content.decode()
    run_create(team=team, name="hello-mlboard")
    assert "Received" in client.get(status_url, {"since": since}).content.decode()
    assert client_for(viewer).post(reverse("team_connect", args=[team.slug])).status_code == 403


def test_standup_history_builds_todays_digest(client_for, member, team):
    client = client_for(member)
    history = client.get(reverse("standup_history", args=[team.slug])).content.decode()
    assert "Build today" in history and "manage.py" not in history
    response = client.post(reverse("standup_build_now", args=[team.slug]))
    digest = StandupDigest.objects.get(team=team)
    assert response.status_code == 302 and response["Location"].endswith(f"/history/{digest.pk}/")


def test_watch_toggle(client_for, member, board):
    card = hyp(board, None)
    client = client_for(member)
    client.post(reverse("card_watch", args=[card.pk]), {"watch": "1"})
    assert card.watches.filter(user=member).exists()
    client.post(reverse("card_watch", args=[card.pk]), {"watch": "0"})
    assert not card.watches.filter(user=member).exists()


def test_board_rules_page(client_for, manager, member, team):
    from experiments.models import TeamworkSettings

    url = reverse("team_board_rules", args=[team.slug])
    assert client_for(member).get(url).status_code == 200
    assert client_for(member).post(url, {"wip_strict": "1"}).status_code == 403
    client = client_for(manager)
    assert client.post(url, {"wip_strict": "1", "archive_done_after_days": "30"}).status_code == 302
    rules = TeamworkSettings.objects.get(team=team)
    assert rules.wip_strict and rules.archive_done_after_days == 30
    assert client.post(url, {"archive_done_after_days": "0"}).status_code == 400
    assert client.post(url, {"archive_done_after_days": ""}).status_code == 302
    assert TeamworkSettings.objects.get(team=team).archive_done_after_days is None
