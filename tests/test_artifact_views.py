"""Artifacts in the UI: the run page's tree and previews, streamed downloads behind team access,
the card page's images per run; query counts constant at N and 2N."""

from __future__ import annotations

import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from experiments.models import Run
from experiments.services.artifacts import artifact_upload, run_artifact_root
from experiments.services.cards import card_create
from experiments.services.runs import card_link_run, run_create

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82"
)


@pytest.fixture(autouse=True)
def local_storage(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "experiments.storage.LocalArtifactStorage",
            "OPTIONS": {"location": str(tmp_path / "artifacts")},
        },
    }


def put(run: Run, relative: str, data: bytes) -> None:
    artifact_upload(team=run.team, key=f"{run_artifact_root(run)}/{relative}", chunks=[data], length=len(data))


def count_queries(client, url) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries), response.content.decode()


@pytest.mark.django_db
def test_run_page_shows_the_tree_with_constant_queries(client_for, member, team):
    run = run_create(team=team, user=member, name="r")
    client = client_for(member)
    url = reverse("run_detail", args=[run.pk])

    def add(n: int, offset: int) -> None:
        for i in range(offset, offset + n):
            put(run, f"plots/epoch-{i:03d}.png", PNG)
            put(run, f"ckpt/{i:03d}/weights.bin", b"w" * 10)

    add(5, 0)
    client.get(url)
    count_n, body = count_queries(client, url)
    assert "Artifacts <span class=\"count\">10</span>" in body and "epoch-004.png" in body and "ckpt/" in body
    add(5, 5)
    count_2n, body = count_queries(client, url)
    assert count_2n == count_n and "epoch-009.png" in body and "Artifacts <span class=\"count\">20</span>" in body


@pytest.mark.django_db
def test_run_page_without_artifacts_says_so(client_for, member, team):
    run = run_create(team=team, user=member, name="r")
    body = client_for(member).get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "No artifacts." in body


@pytest.mark.django_db
def test_previews_image_text_json_yaml_csv(client_for, member, team):
    run = run_create(team=team, user=member, name="r")
    put(run, "roc_curve.png", PNG)
    put(run, "notes.txt", b"<script>alert(1)</script> hello")
    put(run, "config.json", b'{"b": 1, "a": [1, 2]}')
    put(run, "params.yaml", b"lr: 0.1\nlayers: 3\n")
    rows = "\n".join(f"{i},{i * i}" for i in range(500))
    put(run, "preds.csv", f"x,y\n{rows}\n".encode())
    client = client_for(member)
    view = reverse("run_artifact_preview", args=[run.pk])

    image = client.get(view, {"path": "roc_curve.png"}).content.decode()
    assert f'{reverse("run_artifact_file", args=[run.pk])}?path=roc_curve.png' in image and "<img" in image
    text = client.get(view, {"path": "notes.txt"}).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; hello" in text and "<script>alert(1)" not in text
    pretty = client.get(view, {"path": "config.json"}).content.decode()
    assert "&quot;a&quot;: [\n    1," in pretty
    assert "lr: 0.1" in client.get(view, {"path": "params.yaml"}).content.decode()
    table = client.get(view, {"path": "preds.csv"}, HTTP_HX_REQUEST="true").content.decode()
    assert "<th>x</th><th>y</th>" in table and "<td class=\"mono\">199</td>" in table
    assert "<td class=\"mono\">200</td>" not in table and "Showing the first 200 rows" in table
    assert "<html" not in table  # htmx gets the fragment only


@pytest.mark.django_db
def test_file_is_streamed_and_access_checked(client_for, member, outsider, team):
    run = run_create(team=team, user=member, name="r")
    blob = bytes(range(256)) * 8000
    put(run, "model/weights.bin", blob)
    put(run, "cm.png", PNG)
    url = reverse("run_artifact_file", args=[run.pk])
    response = client_for(member).get(url, {"path": "model/weights.bin"})
    assert response.streaming and b"".join(response.streaming_content) == blob
    assert response["Content-Disposition"].startswith("attachment") and response["Content-Length"] == str(len(blob))
    assert "sandbox" in response["Content-Security-Policy"]
    inline = client_for(member).get(url, {"path": "cm.png"})
    assert inline["Content-Type"] == "image/png" and inline["Content-Disposition"].startswith("inline")
    for who, path in ((outsider, "cm.png"), (member, "../../../etc/passwd"), (member, "missing.png")):
        assert client_for(who).get(url, {"path": path}).status_code == 404
        assert client_for(who).get(reverse("run_artifact_preview", args=[run.pk]), {"path": path}).status_code == 404
    assert client_for(outsider).get(reverse("run_detail", args=[run.pk])).status_code == 404


@pytest.mark.django_db
def test_card_page_shows_images_side_by_side_per_run_with_constant_queries(client_for, member, team, board):
    card = card_create(board=board, kind="hypothesis", title="Bigger trees help", actor=member)
    client = client_for(member)
    url = reverse("card_detail", args=[card.pk])

    def add(n: int, offset: int) -> list[Run]:
        runs = []
        for i in range(offset, offset + n):
            run = run_create(team=team, user=member, name=f"run-{i}")
            put(run, "confusion_matrix.png", PNG)
            put(run, "plots/roc_curve.png", PNG)
            put(run, "model.pkl", b"not an image")
            card_link_run(card=card, run=run, actor=member)
            runs.append(run)
        return runs

    first = add(3, 0)
    client.get(url)
    count_n, body = count_queries(client, url)
    assert "Images from the runs" in body
    assert body.count("confusion_matrix.png\" alt=") == 3 and body.count("roc_curve.png\" alt=") == 3
    assert "model.pkl\" alt=" not in body
    assert f'{reverse("run_artifact_file", args=[first[0].pk])}?path=plots/roc_curve.png' in body
    add(3, 3)
    count_2n, body = count_queries(client, url)
    assert count_2n == count_n and body.count("confusion_matrix.png\" alt=") == 6


@pytest.mark.django_db
def test_listing_api_query_count_is_constant(client, member, team, django_assert_num_queries):
    """The MLflow list endpoint reads the index: same queries for N and 2N files."""
    from experiments.services.tokens import token_create

    run = run_create(team=team, user=member, name="r")
    secret = token_create(user=member, name="t", team=team)[1]
    url = "/mlflow/api/2.0/mlflow-artifacts/artifacts"
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}

    def listing() -> tuple[int, list]:
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(url, {"path": run_artifact_root(run) + "/d"}, **headers)
        return len(ctx.captured_queries), response.json()["files"]

    for i in range(4):
        put(run, f"d/f{i}.txt", b"x")
    listing()  # the token's first use is recorded once
    count_n, files = listing()
    for i in range(4, 8):
        put(run, f"d/sub/f{i}.txt", b"xy")
    count_2n, files = listing()
    assert count_2n == count_n and len(files) == 5 and files[-1] == {"path": "sub", "is_dir": True}
    assert files[0] == {"path": "f0.txt", "is_dir": False, "file_size": 1}


def test_png_fixture_is_an_image():
    from PIL import Image

    assert Image.open(io.BytesIO(PNG)).size == (1, 1)
