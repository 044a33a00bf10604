"""Real headless Chromium: the run page's artifact tree previews files in place (htmx), and the
card page shows each run's images side by side."""

from __future__ import annotations

import os

import pytest

from experiments.demo_artifacts import confusion_matrix, roc_curve
from experiments.services.artifacts import artifact_upload, run_artifact_root
from experiments.services.cards import card_create
from experiments.services.runs import card_link_run, run_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SHOTS = os.environ.get("MLBOARD_SCREENSHOTS")


def _shot(page, name: str) -> None:
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def _put(run, relative: str, data: bytes) -> None:
    artifact_upload(team=run.team, key=f"{run_artifact_root(run)}/{relative}", chunks=[data], length=len(data))


def test_tree_preview_and_card_images(page, login, live_server, member, team, board):
    card = card_create(board=board, kind="hypothesis", title="Bigger trees help", actor=member)
    runs = []
    for seed, auc in enumerate((0.71, 0.84)):
        run = run_create(team=team, user=member, name=f"gbm-seed{seed}")
        _put(run, "plots/confusion_matrix.png", confusion_matrix([[500, 100 - 40 * seed], [80, 320 + 40 * seed]]))
        _put(run, "plots/roc_curve.png", roc_curve(auc))
        _put(run, "predictions.csv", b"id,score\n1,0.9\n2,0.1\n")
        _put(run, "config.json", b'{"depth": 6}')
        card_link_run(card=card, run=run, actor=member)
        runs.append(run)
    page.set_default_timeout(30_000)  # the shared CI machine can be slow to serve the first page
    login(member)

    page.goto(f"{live_server.url}/runs/{runs[1].pk}/")
    tree = page.locator("#artifacts .artifact-tree")
    assert tree.locator("summary", has_text="plots/").is_visible()
    tree.get_by_role("link", name="predictions.csv", exact=True).click()
    preview = page.locator("#artifact-preview")
    preview.locator("table th", has_text="score").wait_for()
    assert page.url.endswith(f"/runs/{runs[1].pk}/")  # previewed in place
    tree.locator("summary", has_text="plots/").click()
    tree.get_by_role("link", name="roc_curve.png", exact=True).click()
    image = preview.locator("img.artifact-image")
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    _shot(page, "run-artifacts")

    page.goto(f"{live_server.url}/cards/{card.pk}/")
    columns = page.locator(".run-images-column")
    assert columns.count() == 2
    for index in range(2):
        images = columns.nth(index).locator("img")
        assert images.count() == 2
        for i in range(2):
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=images.nth(i).element_handle())
    first, second = (columns.nth(i).bounding_box() for i in range(2))
    assert abs(first["y"] - second["y"]) < 2 and second["x"] > first["x"]  # side by side
    _shot(page, "card-images")
