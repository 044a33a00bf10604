import pytest

from experiments.models import Column, Stage
from experiments.services.boards import board_create
from experiments.services.cards import card_create
from experiments.services.runs import run_create


def test_home_lists_only_my_teams_boards(client_for, member, board, outsider, other_team):
    board_create(team=other_team, name="Secret", key="SEC")
    response = client_for(member).get("/")
    assert response.status_code == 200
    assert b"Churn model" in response.content
    assert b"Secret" not in response.content
    assert b"Rivals" not in response.content


def test_home_counts_open_cards_running_runs_and_new_board_link(client_for, manager, member, board, team):
    done = Column.objects.get(board=board, stage=Stage.DONE)
    card_create(board=board, kind="hypothesis", title="Open one", actor=member)
    card_create(board=board, kind="hypothesis", title="Closed one", actor=member, column=done)
    hyp = card_create(board=board, kind="hypothesis", title="Running", actor=member)
    run_create(team=team, tags={"mlboard.card": hyp.key})
    page = client_for(manager).get("/").content.decode()
    assert "2 open cards" in page
    assert "1 running" in page
    assert f"/teams/{team.slug}/boards/new/" in page
    assert "/boards/new/" not in client_for(member).get("/").content.decode()


def test_anonymous_is_sent_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("boards", [3, 6])
def test_home_query_count_is_constant(client_for, member, team, boards, django_assert_num_queries):
    for i in range(boards):
        b = board_create(team=team, name=f"Board {i}", key=f"B{i}")
        for j in range(3):
            card = card_create(board=b, kind="hypothesis", title=f"H{j}", actor=member)
            run_create(team=team, tags={"mlboard.card": card.key})
    client = client_for(member)
    # session + user + memberships + boards with counts
    with django_assert_num_queries(4):
        response = client.get("/")
    assert response.content.decode().count('class="board-counts"') == boards
