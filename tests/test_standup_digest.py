"""Standup digests: idempotent build, email and Slack-compatible webhook sent once, retries, command, history."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from experiments.models import CardKind, RunStatus, StandupDigest
from experiments.services.cards import card_create
from experiments.services.standup import (
    DeliveryError,
    digest_recipients,
    standup_digest_build,
    standup_digest_deliver,
    standup_slack_payload,
)
from experiments.tasks import build_due_standup_digests, build_standup_digest

from .test_standup import add_run, experiment, hypothesis, make_proposal

BERLIN = ZoneInfo("Europe/Berlin")


class Hook:
    """A real HTTP endpoint on 127.0.0.1 that answers with the queued statuses and records bodies."""

    def __init__(self, statuses: list[int]):
        self.statuses = list(statuses)
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                hook.bodies.append(json.loads(self.rfile.read(length)))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"invalid_payload")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/standup"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_factory():
    hooks: list[Hook] = []

    def make(statuses=()):
        hook = Hook(list(statuses))
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


@pytest.fixture
def night(team, board, manager, member):
    """A team with a standup at 09:30 and activity in the hours before the window end.

    The window opens 3 hours before now, so the runs (ended 1 hour ago) fall inside it whatever the time
    of day; a fixed opening time would leave them outside for an hour each day.
    """
    team.timezone = "UTC"
    team.standup_time = dt.time(9, 30)
    opens = timezone.now().astimezone(dt.UTC) - dt.timedelta(hours=3)
    team.standup_window_start = opens.time().replace(microsecond=0)
    team.digest_emails = "lead@example.com\nMO@example.com\n"
    team.save()
    hyp = hypothesis(board, "Tenure features lift AUC", owner=member)
    exp = experiment(hyp, owner=member, baseline_value=0.8)
    for value in (0.82, 0.84, 0.86):
        add_run(team, exp, value=value)
    add_run(team, hyp, status=RunStatus.FAILED, name="seed-7-oom", user=member)
    add_run(team, None, name="scratch-notebook")
    make_proposal(hyp)
    return team


def window_end_now() -> dt.datetime:
    return timezone.now().replace(microsecond=0)


def test_build_is_idempotent_per_window(night):
    end = window_end_now()
    first = standup_digest_build(team=night, window_end=end)
    second = standup_digest_build(team=night, window_end=end)
    assert first.pk == second.pk and StandupDigest.objects.count() == 1
    assert first.window_end == end and first.window_start < end
    counts = first.content["counts"]
    assert (counts["finished"], counts["failed"], counts["proposals"], counts["unlinked"]) == (4, 1, 1, 1)
    (card,) = [c for c in first.content["cards"] if c["finished"]]
    assert card["mean"] == pytest.approx(0.84) and card["baseline"] == 0.8 and card["delta"] == pytest.approx(0.04)
    assert "CHURN-2 Add tenure buckets" in first.text and "0.84 ± 0.02 (n=3) vs baseline 0.8, Δ +0.04" in first.text
    assert "seed-7-oom [FAILED] on CHURN-1 by mo" in first.text
    json.dumps(first.content)  # stored as JSON as is


def test_a_board_digest_is_separate_from_the_team_digest(night, board):
    end = window_end_now()
    team_digest = standup_digest_build(team=night, window_end=end)
    board_digest = standup_digest_build(team=night, board=board, window_end=end)
    assert team_digest.pk != board_digest.pk
    assert board_digest.content["board"] == {"id": board.pk, "name": board.name}
    assert board_digest.content["unlinked"]["total"] == 0


def test_email_content_and_recipients(night, viewer):
    assert digest_recipients(night) == ["lead@example.com", "maya@example.com", "mo@example.com", "vic@example.com"]
    digest = standup_digest_build(team=night, window_end=window_end_now())
    assert standup_digest_deliver(digest=digest) == {"email": True, "webhook": False}
    (message,) = mail.outbox
    assert message.to == ["lead@example.com", "maya@example.com", "mo@example.com", "vic@example.com"]
    assert message.subject.startswith("[mlboard] Standup Vision — ")
    assert "4 finished, 1 failed, 1 verdicts waiting" in message.subject
    assert "Verdicts waiting for a decision (1)" in message.body
    assert "CHURN-1 Tenure features lift AUC: proposed supported (mo)" in message.body
    html, mimetype = message.alternatives[0]
    assert mimetype == "text/html" and "seed-7-oom" in html and "Tenure features lift AUC" in html
    digest.refresh_from_db()
    assert digest.email_sent_at is not None
    assert standup_digest_deliver(digest=digest) == {"email": False, "webhook": False}
    assert len(mail.outbox) == 1


def test_slack_payload_shape(night):
    digest = standup_digest_build(team=night, window_end=window_end_now())
    payload = standup_slack_payload(digest.content)
    assert set(payload) == {"text", "blocks"}
    assert payload["text"].startswith("Standup Vision — ") and "4 finished, 1 failed" in payload["text"]
    assert payload["blocks"][0]["type"] == "header"
    sections = [b["text"]["text"] for b in payload["blocks"] if b["type"] == "section"]
    assert any(s.startswith("*Verdicts waiting*") and "CHURN-1" in s for s in sections)
    assert all(len(s) <= 3000 for s in sections)


@pytest.fixture
def eager_retries():
    """Let eager tasks retry in-process like a worker would, instead of propagating Retry."""
    from mlboard.celery import app

    before = app.conf.task_eager_propagates
    app.conf.task_eager_propagates = False
    yield
    app.conf.task_eager_propagates = before


def test_task_retries_without_duplicate_sends(night, hook_factory, eager_retries):
    hook = hook_factory([500, 502])  # the webhook fails twice, then accepts
    night.webhook_url = hook.url
    night.save()
    end = window_end_now()
    result = build_standup_digest.delay(night.pk, end.isoformat())
    assert result.successful()
    digest_id = result.get()
    digest = StandupDigest.objects.get(pk=digest_id)
    assert len(hook.bodies) == 3  # two failures, one success
    assert len(mail.outbox) == 1  # the email went out on the first attempt and was not repeated
    assert digest.webhook_sent_at is not None and digest.email_sent_at is not None and digest.webhook_error == ""
    assert hook.bodies[-1]["blocks"][0]["type"] == "header" and "text" in hook.bodies[-1]
    # Running the task again (e.g. a duplicate beat tick) builds and sends nothing new.
    assert build_standup_digest.delay(night.pk, end.isoformat()).get() == digest_id
    assert len(hook.bodies) == 3 and len(mail.outbox) == 1 and StandupDigest.objects.count() == 1


def test_retries_stop_after_the_limit(night, hook_factory, eager_retries):
    hook = hook_factory([500] * 20)
    night.webhook_url = hook.url
    night.save()
    result = build_standup_digest.delay(night.pk, window_end_now().isoformat())
    assert result.failed() and isinstance(result.result, DeliveryError)
    assert len(hook.bodies) == build_standup_digest.max_retries + 1
    assert len(mail.outbox) == 1
    digest = StandupDigest.objects.get()
    assert digest.webhook_sent_at is None and "HTTP 500" in digest.webhook_error


def test_failed_webhook_is_recorded_and_email_not_resent(night, hook_factory):
    hook = hook_factory([500] * 20)
    night.webhook_url = hook.url
    night.save()
    digest = standup_digest_build(team=night, window_end=window_end_now())
    with pytest.raises(DeliveryError, match="HTTP 500"):
        standup_digest_deliver(digest=digest)
    digest.refresh_from_db()
    assert digest.email_sent_at is not None and digest.webhook_sent_at is None
    assert "HTTP 500" in digest.webhook_error
    with pytest.raises(DeliveryError):
        standup_digest_deliver(digest=digest)
    assert len(mail.outbox) == 1 and len(hook.bodies) == 2


def test_unreachable_webhook_raises_for_retry(night):
    import socket

    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    night.webhook_url = f"http://127.0.0.1:{port}/services/T000/B000/xyz"
    night.save()
    digest = standup_digest_build(team=night, window_end=window_end_now())
    with pytest.raises(DeliveryError, match="connection refused"):
        standup_digest_deliver(digest=digest)
    digest.refresh_from_db()
    assert digest.webhook_sent_at is None
    assert "connection refused" in digest.webhook_error
    delivery = digest.deliveries.get(channel="webhook")
    assert delivery.sent_at is None and delivery.attempts == 1


def test_beat_tick_builds_for_due_teams_only(night, other_team, django_capture_on_commit_callbacks):
    other_team.timezone, other_team.standup_time = "America/Los_Angeles", dt.time(9, 30)
    other_team.save()
    now = timezone.now().astimezone(dt.UTC)
    night.standup_time = (now - dt.timedelta(minutes=10)).time().replace(second=0, microsecond=0)
    night.save()
    # Keep the other team's standup in the future so only one team is due.
    la_now = now.astimezone(ZoneInfo("America/Los_Angeles"))
    other_team.standup_time = (la_now + dt.timedelta(minutes=30)).time().replace(second=0, microsecond=0)
    if other_team.standup_time < la_now.time():  # crossing midnight: the standup is tomorrow
        other_team.standup_time = dt.time(23, 59)
    other_team.save()
    with django_capture_on_commit_callbacks(execute=True):
        due = build_due_standup_digests.delay().get()
    assert due == [night.pk]
    digest = StandupDigest.objects.get()
    assert digest.team == night and digest.email_sent_at is not None
    with django_capture_on_commit_callbacks(execute=True):
        assert build_due_standup_digests.delay().get() == []
    assert StandupDigest.objects.count() == 1 and len(mail.outbox) == 1


def test_command_prints_the_digest(night, board):
    out = io.StringIO()
    call_command("standup_digest", "vision", "--since", "24h", stdout=out)
    text = out.getvalue()
    assert text.startswith("Standup Vision — ")
    assert "Runs: 4 finished, 1 failed, 0 still running" in text
    assert "CHURN-2 Add tenure buckets (mo, Analyzing)" in text
    assert StandupDigest.objects.count() == 0  # printing stores nothing

    out = io.StringIO()
    call_command("standup_digest", "vision", "--board", str(board.pk), "--json", stdout=out)
    content = json.loads(out.getvalue())
    assert content["board"]["id"] == board.pk and content["counts"]["unlinked"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["nope"], "No team with slug 'nope'"), (["vision", "--board", "999"], "no board with id 999"),
     (["vision", "--since", "soon"], "Could not read since")],
)
def test_command_errors(night, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("standup_digest", *args, stdout=io.StringIO())


def test_command_quiet_night(team):
    out = io.StringIO()
    call_command("standup_digest", "vision", stdout=out)
    assert "Quiet night" in out.getvalue()


# --- history pages ------------------------------------------------------------------------------


def _digests(team, count: int, start_day: int = 1) -> None:
    for day in range(start_day, start_day + count):
        end = dt.datetime(2025, 5, day, 9, 30, tzinfo=BERLIN)
        standup_digest_build(team=team, window_end=end)


def test_history_lists_digests_newest_first(night, member, client_for):
    _digests(night, 3)
    response = client_for(member).get(reverse("standup_history", args=[night.slug]))
    assert response.status_code == 200
    html = response.content.decode()
    assert html.index("Sat 3 May 2025") < html.index("Fri 2 May 2025") < html.index("Thu 1 May 2025")
    digest = StandupDigest.objects.get(window_end=dt.datetime(2025, 5, 2, 9, 30, tzinfo=BERLIN))
    assert reverse("standup_digest_detail", args=[night.slug, digest.pk]) in html


def test_history_empty_state(team, member, client_for):
    html = client_for(member).get(reverse("standup_history", args=[team.slug])).content.decode()
    assert "No standup digest yet" in html


def test_history_query_count(night, member, client_for, django_assert_num_queries):
    client = client_for(member)
    url = reverse("standup_history", args=[night.slug])
    _digests(night, 3)
    client.get(url)
    with CaptureQueriesContext(connection) as first:
        client.get(url)
    _digests(night, 3, start_day=10)
    with django_assert_num_queries(len(first)):
        assert client.get(url).content.decode().count("standup/history/") >= 6


def test_digest_detail_and_scoping(night, member, outsider, client_for, hook_factory):
    digest = standup_digest_build(team=night, window_end=window_end_now())
    url = reverse("standup_digest_detail", args=[night.slug, digest.pk])
    html = client_for(member).get(url).content.decode()
    assert "Tenure features lift AUC" in html and "seed-7-oom" in html and "0.84 ± 0.02" in html
    assert "Email: not sent" in html
    assert client_for(outsider).get(url).status_code == 404
    assert client_for(outsider).get(reverse("standup_digest_detail", args=["rivals", digest.pk])).status_code == 404


def test_digest_detail_query_count(night, member, client_for, django_assert_num_queries, board):
    client = client_for(member)
    digest = standup_digest_build(team=night, window_end=window_end_now())
    url = reverse("standup_digest_detail", args=[night.slug, digest.pk])
    client.get(url)
    with CaptureQueriesContext(connection) as first:
        client.get(url)
    for i in range(6):
        card = card_create(board=board, kind=CardKind.HYPOTHESIS, title=f"more {i}", actor=None)
        add_run(night, card, value=0.5)
    bigger = standup_digest_build(team=night, window_end=window_end_now() + dt.timedelta(seconds=5))
    assert len(bigger.content["cards"]) > len(digest.content["cards"])
    with django_assert_num_queries(len(first)):
        client.get(reverse("standup_digest_detail", args=[night.slug, bigger.pk]))


# --- Links back to the app ---------------------------------------------------------------------

SITE = "https://mlboard.example.com"


@pytest.fixture
def site_url(settings):
    settings.SITE_URL = SITE
    return SITE


def card_url(card_id: int) -> str:
    return SITE + reverse("card_detail", kwargs={"card_id": card_id})


def night_cards(digest: StandupDigest) -> tuple[int, int]:
    """(hypothesis id, experiment id) of the night fixture, from the stored content."""
    by_key = {c["key"]: c["id"] for c in digest.content["cards"]}
    return by_key["CHURN-1"], by_key["CHURN-2"]


def test_email_links_to_the_standup_and_each_card(night, site_url):
    digest = standup_digest_build(team=night, window_end=window_end_now())
    hyp_id, exp_id = night_cards(digest)
    standup_url = SITE + reverse("standup", kwargs={"team_slug": night.slug})
    assert standup_digest_deliver(digest=digest)["email"] is True
    (message,) = mail.outbox
    # Plain text: the standup page under the window, each card's link on the line after it.
    body = message.body
    assert f"Open the standup: {standup_url}\n" in body
    assert f"CHURN-1 Tenure features lift AUC: proposed supported (mo)\n    {card_url(hyp_id)}\n" in body
    assert f"seed-7-oom [FAILED] on CHURN-1 by mo\n    {card_url(hyp_id)}\n" in body
    assert f"Δ +0.04\n    {card_url(exp_id)}\n" in body
    assert "scratch-notebook\n    http" not in body  # unlinked runs have no card to link to
    html, _ = message.alternatives[0]
    assert f'href="{standup_url}"' in html
    assert f'<a href="{card_url(exp_id)}" style="color:#3557d6"><strong>CHURN-2</strong></a>' in html
    assert f'<a href="{card_url(hyp_id)}" style="color:#3557d6">CHURN-1</a> by' in html  # the failed run's card
    assert html.count(f'href="{card_url(hyp_id)}"') == 3  # proposal, failed run, card list


def test_stored_text_links_match_the_email(night, site_url):
    digest = standup_digest_build(team=night, window_end=window_end_now())
    _, exp_id = night_cards(digest)
    assert card_url(exp_id) in digest.text
    standup_digest_deliver(digest=digest)
    assert mail.outbox[0].body == digest.text  # the history page shows exactly what was emailed


def test_board_digest_links_to_the_board_standup(night, board, site_url):
    digest = standup_digest_build(team=night, board=board, window_end=window_end_now())
    board_url = SITE + reverse("standup_board", kwargs={"team_slug": night.slug, "board_id": board.pk})
    assert f"Open the standup: {board_url}\n" in digest.text
    payload = standup_slack_payload(digest.content)
    assert f"<{board_url}|Open the standup>" in payload["blocks"][2]["text"]["text"]


def test_default_site_url_is_local(night, settings):
    settings.SITE_URL = "http://127.0.0.1:8000/"  # a trailing slash does not double up
    digest = standup_digest_build(team=night, window_end=window_end_now())
    assert "Open the standup: http://127.0.0.1:8000/teams/vision/standup/\n" in digest.text


def test_slack_blocks_link_cards_and_the_standup(night, site_url):
    digest = standup_digest_build(team=night, window_end=window_end_now())
    hyp_id, exp_id = night_cards(digest)
    payload = standup_slack_payload(digest.content)
    sections = {b["text"]["text"].split("\n", 1)[0]: b["text"]["text"] for b in payload["blocks"]
                if b["type"] == "section"}
    summary = payload["blocks"][2]["text"]["text"]
    assert summary.endswith(f"<{SITE}/teams/vision/standup/|Open the standup>")
    assert f"• <{card_url(hyp_id)}|CHURN-1> Tenure features lift AUC: supported" in sections["*Verdicts waiting*"]
    assert f"• seed-7-oom on <{card_url(hyp_id)}|CHURN-1>" in sections["*Failed runs*"]
    assert f"• <{card_url(exp_id)}|CHURN-2> Add tenure buckets (mo, " in sections["*Cards*"]


def test_slack_escapes_text_but_not_links(night, site_url):
    digest = standup_digest_build(team=night, window_end=window_end_now())
    content = digest.content
    content["cards"][0]["title"] = "AUC <0.9 & rising>"
    cards = next(b["text"]["text"] for b in standup_slack_payload(content)["blocks"]
                 if b["type"] == "section" and b["text"]["text"].startswith("*Cards*"))
    assert "AUC &lt;0.9 &amp; rising&gt;" in cards
    assert f"<{card_url(content['cards'][0]['id'])}|{content['cards'][0]['key']}>" in cards


def test_long_slack_sections_drop_items_instead_of_cutting_links(night, site_url):
    digest = standup_digest_build(team=night, window_end=window_end_now())
    content = digest.content
    template = content["cards"][0]
    content["cards"] = [{**template, "id": 1000 + i, "key": f"CHURN-{100 + i}", "title": "x" * 200, "column": "y" * 100}
                        for i in range(10)]
    cards = next(b["text"]["text"] for b in standup_slack_payload(content)["blocks"]
                 if b["type"] == "section" and b["text"]["text"].startswith("*Cards*"))
    assert len(cards) <= 3000
    shown = cards.count("• <")
    assert 1 <= shown < 10 and cards.endswith(f"… and {10 - shown} more")
    assert cards.count("<") == cards.count(">") == shown  # every link complete


def test_digests_stored_before_links_still_send(night, site_url):
    """Content from before cards carried ids (retries of an older digest) renders without card links."""
    digest = standup_digest_build(team=night, window_end=window_end_now())
    content = digest.content
    for entry in content["cards"] + content["stuck"]:
        entry.pop("id", None)
    for entry in content["proposals"] + content["failed_runs"]:
        entry.pop("card_id", None)
    StandupDigest.objects.filter(pk=digest.pk).update(content=content)
    digest.refresh_from_db()
    payload = standup_slack_payload(digest.content)
    assert "/cards/" not in json.dumps(payload) and "Open the standup>" in json.dumps(payload)
    assert standup_digest_deliver(digest=digest)["email"] is True
    html, _ = mail.outbox[0].alternatives[0]
    assert "/cards/" not in html and "<strong>CHURN-2</strong>" in html


def test_stuck_cards_link_to_their_card(night, board, site_url):
    from experiments.models import Card, Stage

    stuck = card_create(board=board, kind=CardKind.HYPOTHESIS, title="Idle idea", actor=None,
                        column=board.columns.get(stage=Stage.RUNNING))
    old = timezone.now() - dt.timedelta(hours=30, minutes=30)
    Card.objects.filter(pk=stuck.pk).update(started_at=old, created_at=old)
    digest = standup_digest_build(team=night, window_end=window_end_now())
    assert digest.content["stuck"][0]["id"] == stuck.pk
    assert f"{stuck.key} Idle idea — no new runs for 30 h (Unassigned)\n    {card_url(stuck.pk)}\n" in digest.text
    stuck_block = next(b["text"]["text"] for b in standup_slack_payload(digest.content)["blocks"]
                       if b["type"] == "section" and b["text"]["text"].startswith("*Stuck*"))
    assert f"<{card_url(stuck.pk)}|{stuck.key}> Idle idea (30 h)" in stuck_block


def test_slack_payload_is_escaped_everywhere_including_top_level_text(night, board, site_url):
    night.name = "<!channel> & <@U123>"
    night.save()
    board.name = "<https://evil.example|click> board"
    board.save()
    digest = standup_digest_build(team=night, board=board, window_end=window_end_now())
    content = digest.content
    content["cards"][0]["title"] = "<!here> ship it"
    payload = standup_slack_payload(content)
    assert payload["text"].startswith("Standup &lt;!channel&gt; &amp; &lt;@U123&gt; / &lt;https://evil.example|click&gt;")

    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    for text in strings(payload):
        # The only control sequences left are mlboard's own links.
        for piece in text.split("<")[1:]:
            assert piece.startswith(SITE), text
        assert "<!" not in text and "<@" not in text
