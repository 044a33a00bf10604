"""Board page, filters, swimlanes, moves, quick view, card forms and board settings (server side)."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from experiments.models import Board, Card, CardEvent, CardRun, Column, EventKind, Run, Stage
from experiments.selectors.board import BoardFilters, board_view
from experiments.services.cards import card_create, card_flag, card_move


def make_run(team, name: str) -> Run:
    return Run.objects.create(team=team, external_id=name, name=name)


def populate(board: Board, users: list, n: int) -> list[Card]:
    """n cards over all columns: hypotheses with experiments and results under them, owners
    (some unassigned), two tags each and a linked run on every experiment."""
    columns = list(board.columns.order_by("position"))
    cards: list[Card] = []
    hypothesis = experiment = None
    start = Card.objects.filter(board=board).count()
    for i in range(n):
        kind = ("hypothesis", "experiment", "result")[i % 3]
        parent = None if kind == "hypothesis" else (hypothesis if kind == "experiment" else experiment)
        card = card_create(
            board=board,
            kind=kind,
            title=f"Card {start + i}",
            actor=users[0],
            owner=None if i % 4 == 3 else users[i % len(users)],
            column=columns[i % len(columns)],
            tags=[f"tag{i % 3}", "shared"],
            parent=parent,
        )
        if kind == "hypothesis":
            hypothesis = card
        elif kind == "experiment":
            experiment = card
            CardRun.objects.create(card=card, run=make_run(board.team, f"run-{board.pk}-{start + i}"))
        cards.append(card)
    return cards


def board_url(board: Board, query: str = "") -> str:
    return reverse("board", args=[board.pk]) + (f"?{query}" if query else "")


def card_ids_in_order(html: str) -> list[str]:
    return re.findall(r'id="card-(\d+)"', html)


# --- Board page -----------------------------------------------------------------------------------


def test_board_shows_columns_counts_and_wip_state(client_for, member, board):
    running = board.columns.get(stage=Stage.RUNNING)  # WIP limit 4
    for i in range(5):
        card_create(board=board, kind="hypothesis", title=f"H{i}", actor=member, column=running)
    html = client_for(member).get(board_url(board)).content.decode()
    names = re.findall(r'<h2 class="col-name">([^<]+)</h2>', html)
    assert names == ["Backlog", "Ready", "Running", "Analyzing", "Done"]
    head_re = r'<div class="col-head([^"]*)" data-column-id="{}"[^>]*aria-label="([^"]+)"'
    head = re.search(head_re.format(running.pk), html)
    assert head is not None
    assert "over-limit" in head.group(1)
    assert head.group(2) == "Running: 5 cards, WIP limit 4, over the limit by 1"
    assert '<span class="col-total">5</span><span class="col-wip"> / 4</span>' in html
    ready = board.columns.get(stage=Stage.READY)
    ready_head = re.search(head_re.format(ready.pk), html)
    assert "over-limit" not in ready_head.group(1)
    assert ready_head.group(2) == "Ready: 0 cards, WIP limit 5"


def test_card_shows_key_kind_title_owner_tags_flag_and_runs(client_for, member, board, team):
    hyp = card_create(board=board, kind="hypothesis", title="Tenure lifts AUC", actor=member, owner=member,
                      tags=["features", "xgb"])
    card_flag(card=hyp, actor=member, flagged=True, reason="Waiting for data")
    for i in range(3):
        CardRun.objects.create(card=hyp, run=make_run(team, f"r{i}"))
    html = client_for(member).get(board_url(board)).content.decode()
    card = html[html.index(f'id="card-{hyp.pk}"'):]
    card = card[: card.index("</article>")]
    assert "CHURN-1" in card and 'class="badge hypothesis">Hypothesis<' in card
    assert "Tenure lifts AUC" in card
    assert '<span class="avatar" aria-hidden="true">M</span>mo</span>' in card
    assert "<li>features</li><li>xgb</li>" in card
    assert "Flagged" in card and 'title="Waiting for data"' in card and "is-flagged" in html
    assert "3 runs" in card
    assert f'data-version="{hyp.version}"' in card


def test_empty_board_has_an_empty_state(client_for, member, board):
    html = client_for(member).get(board_url(board)).content.decode()
    assert "No cards yet" in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("kind=experiment", {"E tenure"}),
        ("owner=maya", {"H tenure"}),
        ("owner=none", {"R orphan"}),
        ("tag=loss", {"E tenure", "R orphan"}),
        ("q=BUCKET", {"H tenure"}),  # statement, case-insensitive
        ("q=churn-2", {"E tenure"}),  # key
        ("q=orph", {"R orphan"}),  # title
        ("kind=result&tag=loss", {"R orphan"}),
        ("kind=nonsense", {"H tenure", "E tenure", "R orphan"}),  # unknown values are ignored
    ],
)
def test_filters(client_for, member, manager, board, query, expected):
    hyp = card_create(board=board, kind="hypothesis", title="H tenure", actor=member, owner=manager,
                      statement="Tenure buckets help")
    exp = card_create(board=board, kind="experiment", title="E tenure", actor=member, owner=member, parent=hyp,
                      tags=["loss"])
    card_create(board=board, kind="result", title="R orphan", actor=member, parent=exp, tags=["Loss"])
    html = client_for(member).get(board_url(board, query)).content.decode()
    shown = set(re.findall(r'<p class="card-title">([^<]+)</p>', html))
    assert shown == expected
    if expected != {"H tenure", "E tenure", "R orphan"}:
        assert f"<strong>{len(expected)}</strong> of 3 cards match" in html
        assert "Clear filters" in html


def test_filters_keep_wip_totals_of_the_whole_column(client_for, member, board):
    running = board.columns.get(stage=Stage.RUNNING)
    for i in range(5):
        card_create(board=board, kind="hypothesis", title=f"H{i}", actor=member, column=running, tags=[f"t{i}"])
    html = client_for(member).get(board_url(board, "tag=t1")).content.decode()
    assert len(card_ids_in_order(html)) == 1
    assert "Running: 5 cards, WIP limit 4, over the limit by 1" in html


def test_filter_form_reflects_the_url(client_for, member, manager, board):
    card_create(board=board, kind="hypothesis", title="H", actor=member, tags=["loss"])
    url = board_url(board, "kind=result&owner=maya&tag=loss&q=abc&lanes=owner")
    html = client_for(member).get(url).content.decode()
    assert '<option value="result" selected>' in html
    assert '<option value="maya" selected>' in html
    assert '<option value="loss" selected>' in html
    assert 'value="abc"' in html
    assert 'value="owner" checked' in html


def test_no_match_state(client_for, member, board):
    card_create(board=board, kind="hypothesis", title="H", actor=member)
    html = client_for(member).get(board_url(board, "q=zzz")).content.decode()
    assert "No cards match these filters" in html


def test_cards_are_in_position_order(client_for, member, board):
    ready = board.columns.get(stage=Stage.READY)
    a = card_create(board=board, kind="hypothesis", title="A", actor=member, column=ready)
    b = card_create(board=board, kind="hypothesis", title="B", actor=member, column=ready)
    card_move(card=b, to_column=ready, actor=member, expected_version=1, index=0)
    html = client_for(member).get(board_url(board)).content.decode()
    assert card_ids_in_order(html) == [str(b.pk), str(a.pk)]


# --- Swimlanes ------------------------------------------------------------------------------------


def test_hypothesis_lanes_group_experiments_and_results(board, member, manager):
    h1 = card_create(board=board, kind="hypothesis", title="H1", actor=member)
    h2 = card_create(board=board, kind="hypothesis", title="H2", actor=member)
    e1 = card_create(board=board, kind="experiment", title="E1", actor=member, parent=h1,
                     column=board.columns.get(stage=Stage.RUNNING))
    r1 = card_create(board=board, kind="result", title="R1", actor=member, parent=e1,
                     column=board.columns.get(stage=Stage.DONE))
    r2 = card_create(board=board, kind="result", title="R2", actor=member, parent=h2)
    view = board_view(board=board, filters=BoardFilters(lanes="hypothesis"))
    lanes = {lane.title: {c.title for cell in lane.cells for c in cell.cards} for lane in view.lanes}
    assert lanes == {"CHURN-1 · H1": {"H1", "E1", "R1"}, "CHURN-2 · H2": {"H2", "R2"}}
    lane1 = view.lanes[0]
    assert lane1.lead == h1
    assert [c.title for c in lane1.cells[2].cards] == ["E1"] and [c.title for c in lane1.cells[4].cards] == ["R1"]
    assert r1.pk and r2.pk

    # Filtering out the hypotheses keeps their lanes, headed by the hypothesis.
    view = board_view(board=board, filters=BoardFilters(lanes="hypothesis", kind="result"))
    assert [(lane.title, lane.count) for lane in view.lanes] == [("CHURN-1 · H1", 1), ("CHURN-2 · H2", 1)]


def test_owner_lanes(board, member, manager):
    card_create(board=board, kind="hypothesis", title="Mine", actor=member, owner=member)
    card_create(board=board, kind="hypothesis", title="Hers", actor=member, owner=manager)
    card_create(board=board, kind="hypothesis", title="Nobody's", actor=member)
    view = board_view(board=board, filters=BoardFilters(lanes="owner"))
    assert [(lane.title, lane.count) for lane in view.lanes] == [("maya", 1), ("mo", 1), ("Unassigned", 1)]


def test_lanes_render_with_headers(client_for, member, board):
    h = card_create(board=board, kind="hypothesis", title="Tenure", actor=member)
    card_create(board=board, kind="experiment", title="XGB", actor=member, parent=h)
    html = client_for(member).get(board_url(board, "lanes=hypothesis")).content.decode()
    assert f'class="lane-head" data-lane="h{h.pk}"' in html
    assert f'aria-controls="lane-h{h.pk}"' in html
    assert html.count(f'data-lane="h{h.pk}"') == 1 + 5  # header + one cell per column
    html = client_for(member).get(board_url(board, "lanes=owner")).content.decode()
    assert "Unassigned" in html and 'data-lane="u-none"' in html


# --- Query counts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", 13), ("lanes=hypothesis", 14), ("lanes=owner", 13), ("lanes=owner&tag=shared&q=card", 14)],
)
def test_board_query_count_does_not_grow_with_cards(
    client_for, member, manager, viewer, board, query, expected, django_assert_num_queries
):
    client = client_for(member)
    users = [member, manager]  # viewers cannot own cards
    populate(board, users, 30)
    with django_assert_num_queries(expected):
        first = client.get(board_url(board, query))
    assert len(card_ids_in_order(first.content.decode())) == 30
    populate(board, users, 30)
    with django_assert_num_queries(expected):
        second = client.get(board_url(board, query))
    html = second.content.decode()
    assert len(card_ids_in_order(html)) == 60
    assert "1 run<" in html and "<li>shared</li>" in html


def test_quick_view_query_count_is_constant(client_for, member, board, team, django_assert_num_queries):
    hyp = card_create(board=board, kind="hypothesis", title="H", actor=member, tags=["a", "b"])
    client = client_for(member)
    url = reverse("board_card_quick", args=[board.pk, hyp.pk])

    def grow(k: int) -> None:
        for i in range(k):
            e = card_create(board=board, kind="experiment", title=f"E{i}", actor=member, parent=hyp)
            card_move(card=e, to_column=board.columns.get(stage=Stage.READY), actor=member, expected_version=1)
            CardRun.objects.create(card=hyp, run=make_run(team, f"q{hyp.children.count()}-{i}"))

    grow(5)
    with django_assert_num_queries(11):
        client.get(url, HTTP_HX_REQUEST="true")
    grow(10)
    with django_assert_num_queries(11):
        client.get(url, HTTP_HX_REQUEST="true")


# --- Move endpoint --------------------------------------------------------------------------------


def move(client, board, card, column, **extra):
    data = {"to_column": column.pk, **extra}
    return client.post(reverse("board_card_move", args=[board.pk, card.pk]), data, HTTP_ACCEPT="application/json")


def test_move_endpoint_moves_and_reports_columns(client_for, member, board):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    running = board.columns.get(stage=Stage.RUNNING)
    response = move(client_for(member), board, card, running, version=1)
    assert response.status_code == 200
    data = response.json()
    assert data["ok"] is True
    assert data["card"] == {"id": card.pk, "key": "CHURN-1", "version": 2, "column": running.pk}
    assert data["message"] == "CHURN-1 moved to Running, position 1."
    totals = {c["id"]: c["total"] for c in data["columns"]}
    assert totals[running.pk] == 1 and totals[board.columns.get(stage=Stage.BACKLOG).pk] == 0
    card.refresh_from_db()
    assert card.column == running
    event = CardEvent.objects.get(card=card, kind=EventKind.MOVED)
    assert event.actor == member


def test_move_endpoint_places_card_between_visible_neighbours(client_for, member, board):
    ready = board.columns.get(stage=Stage.READY)
    a, b, c = (card_create(board=board, kind="hypothesis", title=t, actor=member, column=ready) for t in "ABC")
    x = card_create(board=board, kind="hypothesis", title="X", actor=member)
    client = client_for(member)
    # The browser shows only A and C (say, filtered) and drops X between them.
    assert move(client, board, x, ready, version=1, after=a.pk, before=c.pk).status_code == 200
    assert list(ready.cards.order_by("position").values_list("title", flat=True)) == ["A", "X", "B", "C"]
    # Dropped above C with nothing visible above: lands right before C.
    assert move(client, board, x, ready, version=2, before=c.pk).status_code == 200
    assert list(ready.cards.order_by("position").values_list("title", flat=True)) == ["A", "B", "X", "C"]
    # A raw index works too.
    assert move(client, board, x, ready, version=3, index=0).status_code == 200
    assert list(ready.cards.order_by("position").values_list("title", flat=True)) == ["X", "A", "B", "C"]
    assert b.pk


def test_move_endpoint_stale_version_is_409_with_who_changed_it(client_for, member, manager, board):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    card_move(card=card, to_column=board.columns.get(stage=Stage.READY), actor=manager, expected_version=1)
    response = move(client_for(member), board, card, board.columns.get(stage=Stage.DONE), version=1)
    assert response.status_code == 409
    data = response.json()
    assert data["conflict"] is True and data["current_version"] == 2
    assert data["error"].startswith("CHURN-1 was changed by maya since you loaded it")
    assert "Reload" in data["error"]
    card.refresh_from_db()
    assert card.column.stage == Stage.READY


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 1, "to_column": 999999}, "not on this board"),
        ({"to_column": None}, "version is missing"),
        ({"version": "abc", "to_column": None}, "version is missing"),
    ],
)
def test_move_endpoint_bad_input(client_for, member, board, data, message):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    column = board.columns.get(stage=Stage.READY)
    payload = {k: (column.pk if k == "to_column" and v is None else v) for k, v in data.items()}
    response = client_for(member).post(
        reverse("board_card_move", args=[board.pk, card.pk]), payload, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_move_endpoint_requires_post(client_for, member, board):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    assert client_for(member).get(reverse("board_card_move", args=[board.pk, card.pk])).status_code == 405


# --- Quick view -----------------------------------------------------------------------------------


def test_quick_view_shows_fields_events_and_full_card_link(client_for, member, manager, board):
    hyp = card_create(board=board, kind="hypothesis", title="Tenure lifts AUC", actor=member, owner=manager,
                      statement="Tenure buckets help", metric_key="val_auc", direction="maximize", threshold=0.8,
                      min_runs=5, tags=["features"])
    card_move(card=hyp, to_column=board.columns.get(stage=Stage.READY), actor=manager, expected_version=1)
    card_create(board=board, kind="experiment", title="XGB run", actor=member, parent=hyp)
    response = client_for(member).get(reverse("board_card_quick", args=[board.pk, hyp.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html  # a fragment for htmx
    assert "Tenure lifts AUC" in html and "Tenure buckets help" in html
    assert "<code>val_auc</code> higher is better; must reach ≥ 0.8; over at least 5 runs" in html
    assert "maya" in html and "features" in html
    moved = r'ev-who">maya</span>\s*moved it <span class="ev-from">Backlog</span> → <span class="ev-to">Ready'
    assert re.search(moved, html)
    assert re.search(r'ev-who">mo</span>\s*created it in Backlog', html)
    assert "<time datetime=" in html
    assert reverse("card_detail", args=[hyp.pk]) in html
    assert "XGB run" in html
    assert reverse("board_card_edit", args=[board.pk, hyp.pk]) + "?next=/boards/" in html
    # Opened from a filtered board, Edit returns to that same filtered board.
    filtered = client_for(member).get(
        reverse("board_card_quick", args=[board.pk, hyp.pk]),
        HTTP_HX_REQUEST="true",
        HTTP_HX_CURRENT_URL=f"http://testserver{board_url(board, 'kind=hypothesis&lanes=owner')}",
    ).content.decode()
    assert f"?next=/boards/{board.pk}/%3Fkind%3Dhypothesis%26lanes%3Downer" in filtered
    # Without htmx it is a full page.
    page = client_for(member).get(reverse("board_card_quick", args=[board.pk, hyp.pk])).content.decode()
    assert "<html" in page and "Tenure lifts AUC" in page


def test_flag_from_quick_view_swaps_the_board_card(client_for, member, board):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    response = client_for(member).post(
        reverse("board_card_flag", args=[board.pk, card.pk]),
        {"flagged": "1", "reason": "GPU quota"},
        HTTP_HX_REQUEST="true",
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert f'id="card-{card.pk}"' in html and 'hx-swap-oob="true"' in html
    assert "Flagged: GPU quota" in html and "Remove flag" in html
    card.refresh_from_db()
    assert card.flagged and card.flag_reason == "GPU quota"
    client_for(member).post(reverse("board_card_flag", args=[board.pk, card.pk]), {"flagged": "0"})
    card.refresh_from_db()
    assert not card.flagged


# --- Card forms -----------------------------------------------------------------------------------


def create_url(board, kind):
    return reverse("board_card_create", args=[board.pk, kind])


def test_create_hypothesis(client_for, member, manager, board):
    ready = board.columns.get(stage=Stage.READY)
    client = client_for(member)
    response = client.post(
        create_url(board, "hypothesis"),
        {
            "title": "Tenure lifts AUC",
            "statement": "Tenure buckets help",
            "rationale": "Churn depends on tenure",
            "metric_key": "val_auc",
            "direction": "maximize",
            "min_delta": "0.01",
            "min_runs": "5",
            "owner": manager.pk,
            "tags": "Features, xgb ,, ",
            "column": ready.pk,
            "description": "Details",
        },
    )
    assert response.status_code == 302 and response["Location"] == board_url(board)
    card = Card.objects.get()
    assert (card.kind, card.key, card.title, card.column) == ("hypothesis", "CHURN-1", "Tenure lifts AUC", ready)
    assert (card.metric_key, card.direction, card.min_delta, card.threshold, card.min_runs) == (
        "val_auc", "maximize", 0.01, None, 5,
    )
    assert card.owner == manager and card.created_by == member
    assert sorted(card.tags.values_list("name", flat=True)) == ["features", "xgb"]
    assert card.criteria_set_at is not None
    follow = client.get(board_url(board)).content.decode()
    assert "Created CHURN-1" in follow


def test_create_experiment_and_result(client_for, member, board):
    hyp = card_create(board=board, kind="hypothesis", title="H", actor=member)
    client = client_for(member)
    form = client.get(create_url(board, "experiment") + f"?parent={hyp.pk}").content.decode()
    assert f'<option value="{hyp.pk}" selected>CHURN-1 · Hypothesis · H</option>' in form
    response = client.post(
        create_url(board, "experiment"),
        {"title": "XGB", "parent": hyp.pk, "plan": "5 seeds", "baseline_value": "0.71", "tags": ""},
    )
    assert response.status_code == 302
    exp = Card.objects.get(kind="experiment")
    assert (exp.parent, exp.plan, exp.baseline_value) == (hyp, "5 seeds", 0.71)
    response = client.post(
        create_url(board, "result"),
        {"title": "It works", "parent": exp.pk, "verdict": "supported", "evidence": "AUC +0.02", "learnings": "Yes"},
    )
    assert response.status_code == 302
    res = Card.objects.get(kind="result")
    assert (res.parent, res.verdict, res.evidence, res.learnings) == (exp, "supported", "AUC +0.02", "Yes")


def field_error(html: str, field: str) -> str:
    match = re.search(rf'id="id_{field}_error">([^<]+)<', html)
    return match.group(1) if match else ""


def test_create_shows_field_errors_from_the_services(client_for, member, board):
    client = client_for(member)
    response = client.post(
        create_url(board, "hypothesis"), {"title": "", "metric_key": "auc", "min_runs": "3", "tags": "ok"}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert field_error(html, "title") == "A title is required."
    assert field_error(html, "direction") == "Say whether higher or lower is better for the metric."
    assert field_error(html, "threshold") == "Give a threshold, or a minimum delta over the baseline."
    assert 'value="auc"' in html and 'value="ok"' in html, "input is kept"
    assert 'aria-invalid="true"' in html

    html = client.post(create_url(board, "experiment"), {"title": "E"}).content.decode()
    assert field_error(html, "parent") == "An experiment belongs to a hypothesis; choose one."

    html = client.post(
        create_url(board, "hypothesis"), {"title": "H", "threshold": "abc", "min_runs": "0", "tags": "x" * 41}
    ).content.decode()
    assert field_error(html, "threshold") == "Enter a number."
    assert "greater than or equal to 1" in field_error(html, "min_runs")
    assert "at most 40 characters" in field_error(html, "tags")
    assert not Card.objects.exists()


def test_owner_must_be_on_the_team(client_for, member, outsider, board):
    html = client_for(member).post(
        create_url(board, "hypothesis"), {"title": "H", "min_runs": "3", "owner": outsider.pk}
    ).content.decode()
    assert "Select a valid choice" in field_error(html, "owner")
    form = client_for(member).get(create_url(board, "hypothesis")).content.decode()
    assert "otto" not in form and "mo" in form


def test_parent_choices_are_this_boards_cards_only(client_for, member, board, team):
    from experiments.services.boards import board_create

    other = board_create(team=team, name="Other", key="OTH")
    foreign = card_create(board=other, kind="hypothesis", title="Foreign", actor=member)
    html = client_for(member).post(
        create_url(board, "experiment"), {"title": "E", "parent": foreign.pk}
    ).content.decode()
    assert "Select a valid choice" in field_error(html, "parent")


def test_unknown_kind_is_404(client_for, member, board):
    assert client_for(member).get(create_url(board, "epic")).status_code == 404


def test_edit_saves_with_version(client_for, member, manager, board):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member, tags=["a"])
    client = client_for(member)
    url = reverse("board_card_edit", args=[board.pk, card.pk])
    form = client.get(url).content.decode()
    assert 'name="version" value="1"' in form and 'value="a"' in form
    response = client.post(
        url + "?next=" + board_url(board, "lanes=owner"),
        {"title": "H2", "version": 1, "min_runs": 3, "tags": "a, b", "owner": manager.pk},
    )
    assert response.status_code == 302 and response["Location"] == board_url(board, "lanes=owner")
    card.refresh_from_db()
    assert (card.title, card.version, card.owner) == ("H2", 2, manager)
    assert sorted(card.tags.values_list("name", flat=True)) == ["a", "b"]
    assert CardEvent.objects.get(card=card, kind=EventKind.EDITED).actor == member


def test_edit_with_stale_version_shows_conflict_and_keeps_input(client_for, member, manager, board):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    url = reverse("board_card_edit", args=[board.pk, card.pk])
    client_for(manager).post(url, {"title": "Manager's", "version": 1, "min_runs": 3})
    response = client_for(member).post(url, {"title": "Mine", "version": 1, "min_runs": 3})
    assert response.status_code == 409
    html = response.content.decode()
    assert "CHURN-1 was changed by maya since you loaded it" in html
    assert "Load the latest version" in html and 'value="Mine"' in html
    card.refresh_from_db()
    assert card.title == "Manager's" and card.version == 2


def test_edit_shows_validation_errors(client_for, member, board):
    hyp = card_create(board=board, kind="hypothesis", title="H", actor=member)
    exp = card_create(board=board, kind="experiment", title="E", actor=member, parent=hyp)
    url = reverse("board_card_edit", args=[board.pk, exp.pk])
    response = client_for(member).post(url, {"title": "E", "version": 1, "parent": ""})
    assert response.status_code == 400
    assert field_error(response.content.decode(), "parent") == "An experiment belongs to a hypothesis; choose one."
    form = client_for(member).get(url).content.decode()
    assert f'<option value="{exp.pk}"' not in form, "a card is never offered as its own parent"


def test_edit_refuses_open_redirect(client_for, member, board):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    url = reverse("board_card_edit", args=[board.pk, card.pk]) + "?next=https://evil.example/"
    response = client_for(member).post(url, {"title": "H2", "version": 1, "min_runs": 3})
    assert response["Location"] == board_url(board)


# --- Settings -------------------------------------------------------------------------------------


def settings_post(client, name, board, column=None, data=None):
    args = [board.pk] if column is None else [board.pk, column.pk]
    return client.post(reverse(name, args=args), data or {})


def test_settings_rename_wip_and_stage(client_for, manager, board):
    client = client_for(manager)
    ready = board.columns.get(stage=Stage.READY)
    prefix = f"col{ready.pk}"
    response = settings_post(client, "board_column_update", board, ready,
                             {f"{prefix}-name": "Up next", f"{prefix}-wip_limit": "2", f"{prefix}-stage": Stage.READY})
    assert response.status_code == 302
    ready.refresh_from_db()
    assert (ready.name, ready.wip_limit) == ("Up next", 2)
    settings_post(client, "board_column_update", board, ready,
                  {f"{prefix}-name": "Up next", f"{prefix}-wip_limit": "", f"{prefix}-stage": Stage.RUNNING})
    ready.refresh_from_db()
    assert (ready.wip_limit, ready.stage) == (None, Stage.RUNNING)
    response = settings_post(client, "board_column_update", board, ready,
                             {f"{prefix}-name": " ", f"{prefix}-wip_limit": "0", f"{prefix}-stage": Stage.READY})
    assert response.status_code == 400
    html = response.content.decode()
    assert "greater than or equal to 1" in html
    ready.refresh_from_db()
    assert ready.name == "Up next"
    response = settings_post(client, "board_column_update", board, ready,
                             {f"{prefix}-name": " ", f"{prefix}-stage": Stage.READY})
    assert "Column name cannot be empty." in response.content.decode()


def test_settings_reorder_add_and_delete(client_for, manager, member, board):
    client = client_for(manager)
    done = board.columns.get(stage=Stage.DONE)
    settings_post(client, "board_column_move", board, done, {"direction": "left"})
    names = list(board.columns.order_by("position").values_list("name", flat=True))
    assert names == ["Backlog", "Ready", "Running", "Done", "Analyzing"]
    settings_post(client, "board_column_move", board, done, {"direction": "right"})
    settings_post(client, "board_column_move", board, done, {"direction": "right"})  # already last: no-op
    names = list(board.columns.order_by("position").values_list("name", flat=True))
    assert names == ["Backlog", "Ready", "Running", "Analyzing", "Done"]

    response = settings_post(client, "board_column_add", board, data={"new-name": "Review", "new-stage": "analyzing",
                                                                         "new-wip_limit": "3"})
    assert response.status_code == 302
    review = board.columns.get(name="Review")
    assert (review.stage, review.wip_limit, review.position) == (Stage.ANALYZING, 3, 5)
    response = settings_post(client, "board_column_add", board, data={"new-name": "", "new-stage": "analyzing"})
    assert response.status_code == 400 and "Column name cannot be empty." in response.content.decode()

    card_create(board=board, kind="hypothesis", title="H", actor=member, column=review)
    response = settings_post(client, "board_column_delete", board, review)
    assert response.status_code == 400
    assert "Cannot delete column: &#x27;Review&#x27; still has 1 card" in response.content.decode()
    assert Column.objects.filter(pk=review.pk).exists()
    empty = board.columns.get(name="Analyzing")
    assert settings_post(client, "board_column_delete", board, empty).status_code == 302
    assert not Column.objects.filter(pk=empty.pk).exists()
    page = client.get(reverse("board_settings", args=[board.pk])).content.decode()
    assert "Deleted column Analyzing." in page and "Review" in page


def test_board_new(client_for, manager, team):
    client = client_for(manager)
    url = reverse("board_new", args=[team.slug])
    response = client.post(url, {"name": "Search ranking", "key": "rank", "problem": "Rank results"})
    board = Board.objects.get(key="RANK")
    assert response.status_code == 302 and response["Location"] == board_url(board)
    assert board.team == team and board.columns.count() == 5
    response = client.post(url, {"name": "Again", "key": "RANK"})
    assert response.status_code == 400
    assert "This team already has a board with key RANK." in response.content.decode()
    response = client.post(url, {"name": "", "key": "1bad"})
    html = response.content.decode()
    assert field_error(html, "name") == "Give the board a name."
    assert "uppercase letters or digits" in field_error(html, "key")


# --- Paged cells ("show more") --------------------------------------------------------------------


def cells_url(board: Board, column: Column, offset: int, query: str = "", lane: str = "all") -> str:
    return reverse("board_cell_cards", args=[board.pk]) + f"?column={column.pk}&lane={lane}&offset={offset}" + (
        f"&{query}" if query else ""
    )


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr("experiments.selectors.board.CELL_PAGE", 5)
    monkeypatch.setattr("experiments.selectors.board.LANE_CELL_PAGE", 5)
    monkeypatch.setattr("experiments.selectors.board.CELL_MORE_PAGE", 4)


def test_long_cells_render_a_first_page_with_exact_counts(client_for, member, board, small_pages):
    backlog = board.columns.get(stage=Stage.BACKLOG)
    cards = [card_create(board=board, kind="hypothesis", title=f"Idea {i}", actor=member) for i in range(12)]
    html = client_for(member).get(board_url(board)).content.decode()
    assert card_ids_in_order(html) == [str(c.pk) for c in cards[:5]]
    assert "Show 7 more" in html and 'data-offset="5"' in html
    assert re.search(rf'data-column-id="{backlog.pk}"[^>]*>.*?<span class="col-total">12<', html, re.S)


def test_show_more_loads_the_next_page_in_board_order(client_for, member, board, small_pages):
    backlog = board.columns.get(stage=Stage.BACKLOG)
    cards = [card_create(board=board, kind="hypothesis", title=f"Idea {i}", actor=member) for i in range(12)]
    client = client_for(member)
    html = client.get(cells_url(board, backlog, 5), HTTP_HX_REQUEST="true").content.decode()
    assert card_ids_in_order(html) == [str(c.pk) for c in cards[5:9]]
    assert "Show 3 more" in html and "offset=9" in html
    last = client.get(cells_url(board, backlog, 9)).content.decode()
    assert card_ids_in_order(last) == [str(c.pk) for c in cards[9:]] and "more</button>" not in last


def test_show_more_keeps_filters_and_swimlanes(client_for, member, manager, board, small_pages):
    backlog = board.columns.get(stage=Stage.BACKLOG)
    mine = [card_create(board=board, kind="hypothesis", title=f"Mine {i}", actor=member, owner=member)
            for i in range(8)]
    for i in range(6):
        card_create(board=board, kind="hypothesis", title=f"Theirs {i}", actor=member, owner=manager)
    client = client_for(member)
    page = client.get(board_url(board, f"owner={member.username}")).content.decode()
    assert "Show 3 more" in page and f"owner={member.username}" in page
    more = client.get(cells_url(board, backlog, 5, f"owner={member.username}")).content.decode()
    assert card_ids_in_order(more) == [str(c.pk) for c in mine[5:]]
    lane = f"u{member.pk}"
    lanes = client.get(cells_url(board, backlog, 5, "lanes=owner", lane=lane)).content.decode()
    assert card_ids_in_order(lanes) == [str(c.pk) for c in mine[5:]]


def test_show_more_of_a_missing_column_is_404(client_for, member, board):
    response = client_for(member).get(reverse("board_cell_cards", args=[board.pk]) + "?column=999999&offset=5")
    assert response.status_code == 404


def test_show_more_query_count_does_not_grow_with_cards(
    client_for, member, manager, viewer, board, small_pages, django_assert_num_queries
):
    client = client_for(member)
    users = [member, manager]  # viewers cannot own cards
    backlog = board.columns.order_by("position").first()
    populate(board, users, 40)
    client.get(cells_url(board, backlog, 5))
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as small:
        first = client.get(cells_url(board, backlog, 5))
    assert len(card_ids_in_order(first.content.decode())) == 3  # 8 backlog cards: 5 shown, 3 more
    populate(board, users, 40)
    with django_assert_num_queries(len(small.captured_queries)):
        second = client.get(cells_url(board, backlog, 5))
    assert len(card_ids_in_order(second.content.decode())) == 4


# --- Paged swimlanes ("show more lanes") ----------------------------------------------------------


def lanes_url(board: Board, offset: int, query: str) -> str:
    return reverse("board_lanes", args=[board.pk]) + f"?offset={offset}&{query}"


def lane_keys(html: str) -> list[str]:
    return re.findall(r'class="lane-head" data-lane="([^"]+)"', html)


@pytest.fixture
def small_lanes(monkeypatch):
    monkeypatch.setattr("experiments.selectors.board.LANE_PAGE", 2)
    monkeypatch.setattr("experiments.selectors.board.LANE_CELL_PAGE", 2)


def hypotheses_with_children(board, member, n: int, children: int = 1) -> list[Card]:
    running = board.columns.get(stage=Stage.RUNNING)
    leads = []
    for i in range(n):
        lead = card_create(board=board, kind="hypothesis", title=f"H{i}", actor=member)
        for j in range(children):
            card_create(board=board, kind="experiment", title=f"E{i}.{j}", actor=member, parent=lead, column=running)
        leads.append(lead)
    return leads


def test_hypothesis_lanes_are_paged_with_exact_counts(client_for, member, board, small_lanes):
    leads = hypotheses_with_children(board, member, 5, children=3)
    client = client_for(member)
    html = client.get(board_url(board, "lanes=hypothesis")).content.decode()
    assert lane_keys(html) == [f"h{leads[0].pk}", f"h{leads[1].pk}"]
    assert "Show 3 more lanes" in html and "4 cards" in html  # the lead and its 3 experiments
    assert "Show 1 more" in html  # 2 of the 3 experiments in the lane's Running cell
    assert re.search(r'<span class="col-total">15</span>', html)  # column totals count every lane
    more = client.get(lanes_url(board, 2, "lanes=hypothesis"), HTTP_HX_REQUEST="true").content.decode()
    assert lane_keys(more) == [f"h{leads[2].pk}", f"h{leads[3].pk}"]
    assert "Show 1 more lane<" in more and "offset=4" in more
    last = client.get(lanes_url(board, 4, "lanes=hypothesis")).content.decode()
    assert lane_keys(last) == [f"h{leads[4].pk}"] and "more lane" not in last
    assert client.get(lanes_url(board, 9, "lanes=hypothesis")).content.decode().strip() == ""


def test_lane_pages_keep_filters_and_stop_at_the_card_budget(client_for, member, manager, board, monkeypatch):
    monkeypatch.setattr("experiments.selectors.board.LANE_BUDGET", 3)
    for i in range(4):
        card_create(board=board, kind="hypothesis", title=f"Mine {i}", actor=member, owner=member)
        card_create(board=board, kind="hypothesis", title=f"Hers {i}", actor=member, owner=manager)
    card_create(board=board, kind="hypothesis", title="Nobody's", actor=member)
    client = client_for(member)
    html = client.get(board_url(board, "lanes=owner")).content.decode()
    # Each owner lane shows 4 cards, over the budget of 3: one lane per page (never none); by name.
    assert lane_keys(html) == [f"u{manager.pk}"] and "Show 2 more lanes" in html
    more = client.get(lanes_url(board, 1, "lanes=owner")).content.decode()
    assert lane_keys(more) == [f"u{member.pk}"]
    unassigned = client.get(lanes_url(board, 2, "lanes=owner")).content.decode()
    assert lane_keys(unassigned) == ["u-none"] and "Unassigned" in unassigned
    filtered = client.get(lanes_url(board, 0, "lanes=owner&q=Hers")).content.decode()
    assert lane_keys(filtered) == [f"u{manager.pk}"] and "Nobody" not in filtered
    assert "more lane" not in filtered


def test_lanes_endpoint_without_swimlanes_is_empty(client_for, member, board):
    card_create(board=board, kind="hypothesis", title="H", actor=member)
    html = client_for(member).get(lanes_url(board, 0, "")).content.decode()
    assert card_ids_in_order(html) == []


def test_lanes_endpoint_is_for_members_only(client_for, outsider, board):
    assert client_for(outsider).get(lanes_url(board, 0, "lanes=owner")).status_code == 404


@pytest.mark.parametrize("query", ["lanes=hypothesis", "lanes=owner", "lanes=hypothesis&tag=shared&q=card"])
def test_lanes_endpoint_query_count_does_not_grow_with_cards(
    client_for, member, manager, board, small_lanes, query, django_assert_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(member)
    populate(board, [member, manager], 30)
    client.get(lanes_url(board, 1, query))
    with CaptureQueriesContext(connection) as small:
        first = client.get(lanes_url(board, 1, query))
    assert card_ids_in_order(first.content.decode())
    populate(board, [member, manager], 30)
    with django_assert_num_queries(len(small.captured_queries)):
        second = client.get(lanes_url(board, 1, query))
    assert card_ids_in_order(second.content.decode())


def test_hypothesis_lane_cell_shows_more_of_that_lane_only(client_for, member, board, small_lanes):
    leads = hypotheses_with_children(board, member, 2, children=4)
    running = board.columns.get(stage=Stage.RUNNING)
    lane = f"h{leads[1].pk}"
    html = client_for(member).get(cells_url(board, running, 2, "lanes=hypothesis", lane=lane)).content.decode()
    expected = Card.objects.filter(parent=leads[1]).order_by("position", "id")[2:]
    assert card_ids_in_order(html) == [str(c.pk) for c in expected]
    bad = client_for(member).get(cells_url(board, running, 0, "lanes=hypothesis", lane="u1")).content.decode()
    assert card_ids_in_order(bad) == []


def test_card_text_is_escaped(client_for, member, board):
    parent = card_create(board=board, kind="hypothesis", title='<b>"bold"</b> & co', actor=member, tags=["x<y"])
    card_create(board=board, kind="experiment", title="<script>alert(1)</script>", actor=member, parent=parent)
    html = client_for(member).get(board_url(board)).content.decode()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;&quot;bold&quot;&lt;/b&gt; &amp; co" in html and "<b>" not in html
    assert "<li>x&lt;y</li>" in html


@pytest.mark.parametrize("mode", ["owner", "hypothesis"])
def test_lane_cell_show_more_query_count_does_not_grow_with_cards(
    client_for, member, manager, board, small_pages, mode, django_assert_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(member)
    backlog = board.columns.order_by("position").first()
    populate(board, [member, manager], 60)
    lead = Card.objects.filter(board=board, kind="hypothesis").order_by("number").first()
    lane = f"u{member.pk}" if mode == "owner" else f"h{lead.pk}"
    url = cells_url(board, backlog, 0, f"lanes={mode}", lane=lane)
    client.get(url)
    with CaptureQueriesContext(connection) as small:
        first = client.get(url)
    assert card_ids_in_order(first.content.decode())
    populate(board, [member, manager], 60)
    with django_assert_num_queries(len(small.captured_queries)):
        second = client.get(url)
    assert card_ids_in_order(second.content.decode())
