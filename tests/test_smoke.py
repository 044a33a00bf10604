from experiments.services.cards import card_create


def test_home_lists_only_my_boards(client_for, member, board, outsider, other_team):
    from experiments.services.boards import board_create

    board_create(team=other_team, name="Secret", key="SEC")
    response = client_for(member).get("/")
    assert response.status_code == 200
    assert b"Churn model" in response.content
    assert b"Secret" not in response.content


def test_card_keys_increment_per_board(board, member):
    first = card_create(board=board, kind="hypothesis", title="A", actor=member)
    second = card_create(board=board, kind="hypothesis", title="B", actor=member)
    assert (first.key, second.key) == ("CHURN-1", "CHURN-2")
