"""The Models page (the team's registry) and the run page's datasets and logged models: content,
team isolation, and query counts that stay flat at N and 2N rows."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from experiments.services.cards import card_create
from experiments.services.logged_models import DatasetSpec, logged_model_create, run_log_inputs
from experiments.services.registry import model_version_create, registered_model_create, registered_model_set_alias
from experiments.services.runs import card_link_run, run_create, tracking_experiment_get_or_create


def _queries(client, url) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries), response.content.decode()


def _add_models(team, member, board, n: int, offset: int) -> None:
    experiment = tracking_experiment_get_or_create(team=team, name="registry")
    for i in range(offset, offset + n):
        card = card_create(board=board, kind="hypothesis", title=f"Try {i}", actor=member)
        run = run_create(team=team, user=member, experiment=experiment, name=f"run-{i}")
        card_link_run(card=card, run=run, actor=member)
        logged = logged_model_create(team=team, experiment=experiment, user=member, name=f"m{i}", source_run=run)
        registered = registered_model_create(team=team, name=f"model-{i}")
        model_version_create(model=registered, source=f"models:/{logged.model_id}", run=run)
        model_version_create(model=registered, source=f"runs:/{run.external_id}/model", run=run)
        registered_model_set_alias(model=registered, alias="champion", version=2)


def test_models_page_shows_versions_runs_cards_and_aliases_in_constant_queries(client_for, member, team, board):
    client = client_for(member)
    url = reverse("models", args=[team.slug])
    _add_models(team, member, board, 2, 0)
    client.get(url)  # warm session caches
    count_n, body = _queries(client, url)
    assert "model-0" in body and "run-1" in body and "@champion" in body and "CHURN-1" in body
    _add_models(team, member, board, 2, 2)
    count_2n, body = _queries(client, url)
    assert count_2n == count_n
    assert body.count("@champion</span>") >= 4 and "model-3" in body


def test_models_page_is_team_scoped(client_for, member, team, board, outsider, other_team):
    _add_models(team, member, board, 1, 0)
    assert client_for(outsider).get(reverse("models", args=[team.slug])).status_code == 404
    body = client_for(outsider).get(reverse("models", args=[other_team.slug])).content.decode()
    assert "model-0" not in body and "No registered models yet" in body


def test_run_page_shows_datasets_and_logged_models_in_constant_queries(client_for, member, team):
    client = client_for(member)
    experiment = tracking_experiment_get_or_create(team=team, name="e")
    run = run_create(team=team, user=member, experiment=experiment, name="with-models")
    url = reverse("run_detail", args=[run.pk])

    def add(n: int, offset: int) -> None:
        run_log_inputs(run=run, datasets=[
            DatasetSpec(f"ds-{i}", f"{i:08x}", "local", "/data", tags={"mlflow.data.context": "training"})
            for i in range(offset, offset + n)
        ])
        for i in range(offset, offset + n):
            logged = logged_model_create(team=team, experiment=experiment, user=member, name=f"lm-{i}", source_run=run)
            registered = registered_model_create(team=team, name=f"reg-{i}")
            model_version_create(model=registered, source=f"models:/{logged.model_id}")

    add(2, 0)
    client.get(url)
    count_n, body = _queries(client, url)
    assert "ds-1" in body and "training" in body and "lm-1" in body and "reg-1 v1" in body
    add(2, 2)
    count_2n, body = _queries(client, url)
    assert count_2n == count_n and "ds-3" in body and "reg-3 v1" in body
