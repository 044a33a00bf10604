"""schemathesis over /api/schema/ against a live server: no server errors, and responses, statuses and
content types as documented; requests that break the schema are refused.

`positive_data_acceptance` is left out on purpose: schema-valid bodies that name ids which do not exist
(board 0), an end time before the start, or a param key with characters MLflow forbids are a 400 with a
field message by design, which no JSON schema can express.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from experiments.services.cards import card_create
from experiments.services.runs import MetricPoint, card_link_run, run_create, run_log_batch
from experiments.services.tokens import token_create

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]
EXAMPLES = os.environ.get("MLBOARD_SCHEMATHESIS_EXAMPLES", "2")


def test_schemathesis_finds_no_failures(live_server, team, board, member, tmp_path):
    hyp = card_create(board=board, kind="hypothesis", title="Bigger model helps", actor=member)
    card_create(board=board, kind="experiment", title="Width 2x", actor=member, parent=hyp)
    run = run_create(team=team, user=member, name="r1")
    run_log_batch(run=run, metrics=[MetricPoint("acc", 0.5, 0, 1)], params={"lr": "0.1"})
    card_link_run(card=hyp, run=run, actor=member)
    secret = token_create(user=member, name="schemathesis", team=team)[1]
    # The schema from a file: generating it over HTTP can pass schemathesis' load timeout on a busy machine.
    schema = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(schema))
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    result = subprocess.run(
        [
            binary, "run", str(schema), "--url", live_server.url, "-H", f"Authorization: Bearer {secret}",
            "--request-timeout", "60",
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            # Revoking the token the run authenticates with would turn the rest of the run into 401s.
            "--exclude-path-regex", r"^/api/(tokens/\{id\}|schema)/$",  # and the schema document itself
            "-n", EXAMPLES, "--seed", "1", "--no-color", "--workers", "1", "--phases", "coverage,fuzzing",
        ],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"},
    )
    summary = result.stdout[result.stdout.find("SUMMARY"):]
    print(summary)
    assert "Server error" not in result.stdout
    assert result.returncode == 0, result.stdout[-6000:]
    operations = re.search(r"Tested: (\d+)", summary)
    assert operations and int(operations.group(1)) >= 20
