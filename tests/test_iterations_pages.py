"""Iteration pages: list, plan (commit cards), start, close; permissions and query counts."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from experiments.models import CardKind, Iteration, IterationItem, IterationState, Stage
from experiments.services.boards import board_create
from experiments.services.iterations import iteration_close, iteration_commit_card, iteration_create, iteration_start
from experiments.services.purge import card_purge
from tests.test_velocity_support import history, make_card, move, t

pytestmark = pytest.mark.django_db


def detail_url(team, it, action: str = "") -> str:
    name = f"iteration_{action}" if action else "iteration_detail"
    return reverse(name, args=[team.slug, it.pk])


@pytest.fixture
def plan(team, board, member):
    hyp = make_card(board, CardKind.HYPOTHESIS, "Mixup helps", t(2), actor=member)
    exp = make_card(board, CardKind.EXPERIMENT, "Mixup alpha 0.2", t(2), actor=member, parent=hyp)
    it = iteration_create(team=team, start=t(3), end=t(4), name="Monday", goal="Decide on mixup")
    return hyp, exp, it


def test_list_empty_state_and_form_defaults(team, client_for, member):
    response = client_for(member).get(reverse("iterations", args=[team.slug]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "No iterations yet" in html
    assert "No iteration is active" in html
    assert 'name="start"' in html and response.context["form"].initial["days"] == 1


def test_create_and_start_from_the_form(team, client_for, member):
    start = timezone.now().replace(microsecond=0, second=0) - dt.timedelta(hours=1)
    response = client_for(member).post(
        reverse("iterations", args=[team.slug]),
        {"name": "", "goal": "Ship features", "start": start.strftime("%Y-%m-%dT%H:%M"), "days": "1",
         "start_now": "on"},
    )
    it = Iteration.objects.get(team=team)
    assert response.status_code == 302 and response["Location"] == detail_url(team, it)
    assert it.state == IterationState.ACTIVE
    assert it.goal == "Ship features" and it.name.startswith("Day ")
    assert it.end - it.start == dt.timedelta(days=1)


def test_create_shows_clear_errors(team, client_for, member, plan):
    client = client_for(member)
    url = reverse("iterations", args=[team.slug])
    bad = client.post(url, {"start": "tomorrow", "days": "0"})
    assert bad.status_code == 200
    html = bad.content.decode()
    assert "Enter a start date and time" in html and "at least 1 day" in html
    clash = client.post(url, {"start": "2025-03-03T12:00", "days": "1"})
    assert "overlap &#x27;Monday&#x27;" in clash.content.decode()
    assert Iteration.objects.count() == 1


def test_commit_uncommit_start_close_through_the_pages(team, client_for, member, plan):
    hyp, exp, it = plan
    client = client_for(member)
    page = client.get(detail_url(team, it))
    assert page.status_code == 200
    assert {c.pk for c in page.context["candidates"]} == {hyp.pk, exp.pk}
    assert "No cards committed yet" in page.content.decode()

    response = client.post(detail_url(team, it, "commit"), {"card": [hyp.pk, exp.pk]})
    assert response.status_code == 302
    assert set(IterationItem.objects.filter(iteration=it).values_list("card_id", flat=True)) == {hyp.pk, exp.pk}
    client.post(detail_url(team, it, "uncommit"), {"card": hyp.pk})
    assert list(IterationItem.objects.filter(iteration=it).values_list("card_id", flat=True)) == [exp.pk]

    assert client.post(detail_url(team, it, "start")).status_code == 302
    it.refresh_from_db()
    assert it.state == IterationState.ACTIVE
    move(exp, Stage.DONE, t(3, 12))
    response = client.post(detail_url(team, it, "close"), {"unfinished": "carry"}, follow=True)
    it.refresh_from_db()
    assert it.state == IterationState.CLOSED
    html = response.content.decode()
    assert "closed: 1 of 1 committed cards done" in html
    assert "Frozen when the iteration closed" in html
    assert "100% of commitments" in html
    assert "Commit cards" not in html  # a closed plan is read-only


def test_commit_errors_are_reported_and_nothing_half_done(team, client_for, member, plan, other_team):
    hyp, _, it = plan
    client = client_for(member)
    foreign = make_card(board_create(team=other_team, name="X", key="X"), CardKind.HYPOTHESIS, "Theirs", t(2))
    response = client.post(detail_url(team, it, "commit"), {"card": [hyp.pk, foreign.pk]}, follow=True)
    assert "not on this team" in response.content.decode()
    assert not IterationItem.objects.exists()
    response = client.post(detail_url(team, it, "commit"), {}, follow=True)
    assert "Tick at least one card" in response.content.decode()
    iteration_close(iteration=it)
    response = client.post(detail_url(team, it, "commit"), {"card": [hyp.pk]}, follow=True)
    assert "Nothing was committed" in response.content.decode() and "is closed" in response.content.decode()


def test_starting_while_another_is_active_explains_why(team, client_for, member, plan):
    _, _, it = plan
    other = iteration_create(team=team, start=t(4), end=t(5), name="Tuesday")
    iteration_start(iteration=it)
    response = client_for(member).post(detail_url(team, other, "start"), follow=True)
    assert "&#x27;Monday&#x27; is still active" in response.content.decode()
    other.refresh_from_db()
    assert other.state == IterationState.PLANNED


def test_closed_iteration_keeps_rows_of_deleted_cards(team, client_for, member, plan):
    hyp, _, it = plan
    iteration_commit_card(iteration=it, card=hyp, actor=member)
    iteration_close(iteration=it)
    card_purge(card=hyp, actor=member)
    html = client_for(member).get(detail_url(team, it)).content.decode()
    assert "Mixup helps" in html and "(deleted since)" in html


def test_viewer_reads_but_cannot_change(team, client_for, viewer, plan):
    hyp, _, it = plan
    client = client_for(viewer)
    page = client.get(detail_url(team, it))
    assert page.status_code == 200 and "Commit cards" not in page.content.decode()
    assert "Plan an iteration" not in client.get(reverse("iterations", args=[team.slug])).content.decode()
    for action, data in (("commit", {"card": hyp.pk}), ("start", {}), ("close", {})):
        response = client.post(detail_url(team, it, action), data)
        assert response.status_code == 403
        assert "Viewers cannot change anything" in response.content.decode()
    create = client.post(reverse("iterations", args=[team.slug]), {"start": "2025-04-01T09:00", "days": "1"})
    assert create.status_code == 403
    it.refresh_from_db()
    assert it.state == IterationState.PLANNED and not it.items.exists()


def test_other_team_is_404(team, client_for, outsider, plan, other_team):
    _, _, it = plan
    client = client_for(outsider)
    assert client.get(reverse("iterations", args=[team.slug])).status_code == 404
    assert client.get(detail_url(team, it)).status_code == 404
    assert client.post(detail_url(team, it, "close")).status_code == 404
    # Their own slug with our iteration id is a 404 too.
    assert client.get(reverse("iteration_detail", args=[other_team.slug, it.pk])).status_code == 404
    assert client.post(reverse("iteration_close", args=[other_team.slug, it.pk])).status_code == 404
    it.refresh_from_db()
    assert it.state == IterationState.PLANNED


def test_list_query_count_is_constant(team, board, client_for, member, django_assert_num_queries):
    client = client_for(member)
    url = reverse("iterations", args=[team.slug])
    client.get(url)
    history(team, board, 10, base=t(1))
    with CaptureQueriesContext(connection) as baseline:
        client.get(url)
    history(team, board, 10, base=t(11))
    with django_assert_num_queries(len(baseline.captured_queries)):
        response = client.get(url)
    assert len(baseline.captured_queries) == 5
    assert len(response.context["iterations"]) == 20
    assert response.context["iterations"][0].n_items == 2


def test_detail_query_count_is_constant(team, board, client_for, member, django_assert_num_queries):
    client = client_for(member)
    it = iteration_create(team=team, start=t(3), end=t(4))

    def commit(n: int) -> None:
        for i in range(n):
            card = make_card(board, CardKind.HYPOTHESIS, f"Card {i}", t(2))
            iteration_commit_card(iteration=it, card=card, actor=member)
            make_card(board, CardKind.HYPOTHESIS, f"Candidate {i}", t(2))

    commit(5)
    with CaptureQueriesContext(connection) as baseline:
        client.get(detail_url(team, it))
    commit(5)
    with django_assert_num_queries(len(baseline.captured_queries)):
        response = client.get(detail_url(team, it))
    assert len(response.context["items"]) == 10 and len(response.context["candidates"]) == 10
    assert len(baseline.captured_queries) == 7


def test_start_time_is_read_in_the_team_time_zone(team, client_for, member):
    team.timezone = "America/New_York"
    team.save()
    client_for(member).post(reverse("iterations", args=[team.slug]), {"start": "2025-04-01T09:30", "days": "2"})
    it = Iteration.objects.get(team=team)
    assert it.start == dt.datetime(2025, 4, 1, 13, 30, tzinfo=dt.UTC)  # 09:30 EDT
    assert it.end - it.start == dt.timedelta(days=2)
