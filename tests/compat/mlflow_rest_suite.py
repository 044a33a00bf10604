"""MLflow's own REST tracking tests against `mlflow server --serve-artifacts` and against mlboard; by hand,
not in CI (it needs the full mlflow package and MLflow's test sources).

    MLFLOW_SRC=/path/to/mlflow-checkout MLFLOW_BIN=/path/to/venv/bin/mlflow \\
        .venv/bin/python tests/compat/mlflow_rest_suite.py [--target both|mlflow|mlboard] [-k EXPR]

MLFLOW_SRC is a checkout of MLflow's repository (only its tests/ folder is read: the test module
tests/tracking/test_rest_tracking.py and the helpers it imports); nothing of it is copied here.
The tests run with the Python of MLFLOW_BIN's venv, which needs mlflow and pytest. Which tests are
run, and why, is in mlflow_rest_plugin.py (SELECTION). mlboard is served from this worktree on a
throw-away SQLite database unless DATABASE_URL is set; every test gets a team and token of its own.
Prints pass/fail per test for each server and "X of N pass on mlflow server, Y of N on mlboard".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
os.environ.setdefault("ARTIFACT_ROOT", tempfile.mkdtemp(prefix="mlboard-compat-artifacts-"))
import _bootstrap  # noqa: E402,F401  (Django set up on a throw-away database unless DATABASE_URL)
from _server import free_port  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

from experiments.models import User  # noqa: E402
from experiments.services.boards import membership_set, team_create  # noqa: E402
from experiments.services.tokens import token_create  # noqa: E402

# Imports the upstream module into a throw-away test file, then shadows its fixture with ours.
WRAPPER = """\
from tests.tracking.test_rest_tracking import *  # noqa: F403
from mlflow_rest_plugin import mlflow_client  # noqa: F401
"""


def pytest_run(python: str, src: Path, work: Path, target: str, extra: list[str], env: dict[str, str]) -> dict:
    """Runs the wrapper under the mlflow venv's pytest; returns {test name: outcome}."""
    (work / "test_upstream_rest_tracking.py").write_text(WRAPPER)
    (work / "pytest.ini").write_text("[pytest]\n")
    report = work / f"{target}.xml"
    command = [
        python, "-m", "pytest", "-c", str(work / "pytest.ini"), "--rootdir", str(work), "--noconftest",
        "-p", "mlflow_rest_plugin", "-p", "no:cacheprovider", "-q", "-rN", f"--junitxml={report}",
        str(work / "test_upstream_rest_tracking.py"), *extra,
    ]
    env = {
        **os.environ, **env, "MLBOARD_COMPAT_TARGET": target, "PYTHONPATH": f"{src}{os.pathsep}{HERE}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("DATABASE_URL", None)
    with open(work / f"{target}.log", "w") as log:
        subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcomes[case.get("name")] = (
            "fail" if kinds & {"failure", "error"} else "skip" if "skipped" in kinds else "pass"
        )
    return outcomes


def mlboard_serve(teams: int) -> tuple[str, list[str], ThreadedWSGIServer]:
    call_command("migrate", verbosity=0)
    user = User.objects.create_user(f"compat-{os.getpid()}", password="x")
    tokens = []
    for i in range(teams):
        team = team_create(name=f"Compat {os.getpid()} {i}", slug=f"compat-{os.getpid()}-{i}")
        membership_set(team=team, user=user, role="member")
        tokens.append(token_create(user=user, name="compat", team=team)[1])
    port = free_port()
    httpd = ThreadedWSGIServer(("127.0.0.1", port), WSGIRequestHandler, allow_reuse_address=True)
    httpd.set_app(get_wsgi_application())
    # After get_wsgi_application(), which configures logging again: no line per request or 4xx answer.
    for name in ("django.server", "django.request"):
        logging.getLogger(name).setLevel(logging.ERROR)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/mlflow", tokens, httpd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlflow-src", default=os.environ.get("MLFLOW_SRC"), required=not os.environ.get("MLFLOW_SRC"))
    parser.add_argument("--mlflow-bin", default=os.environ.get("MLFLOW_BIN", "mlflow"))
    parser.add_argument("--target", choices=("both", "mlflow", "mlboard"), default="both")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression, to run fewer tests")
    args = parser.parse_args()
    src = Path(args.mlflow_src).resolve()
    if not (src / "tests/tracking/test_rest_tracking.py").is_file():
        parser.error(f"{src} has no tests/tracking/test_rest_tracking.py")
    python = str(Path(args.mlflow_bin).resolve().parent / "python")
    extra = ["-k", args.keyword] if args.keyword else []
    work = Path(tempfile.mkdtemp(prefix="mlboard-mlflow-rest-"))
    results: dict[str, dict[str, str]] = {}
    if args.target in ("both", "mlflow"):
        results["mlflow"] = pytest_run(python, src, work, "mlflow", extra, {"MLFLOW_BIN": args.mlflow_bin})
    if args.target in ("both", "mlboard"):
        url, tokens, httpd = mlboard_serve(teams=200)
        tokens_file = work / "tokens.json"
        tokens_file.write_text(json.dumps(tokens))
        results["mlboard"] = pytest_run(
            python, src, work, "mlboard", extra, {"MLBOARD_COMPAT_URL": url, "MLBOARD_COMPAT_TOKENS": str(tokens_file)}
        )
        httpd.shutdown()
    names = sorted({name for outcomes in results.values() for name in outcomes})
    print(f"{'test':70} " + " ".join(f"{t:8}" for t in results))
    for name in names:
        print(f"{name:70} " + " ".join(f"{results[t].get(name, '-'):8}" for t in results))
    total = len(names)
    summary = [f"{sum(o == 'pass' for o in results[t].values())} of {total} pass on "
               f"{'mlflow server' if t == 'mlflow' else 'mlboard'}" for t in results]
    print(", ".join(summary))
    print(f"logs and JUnit reports: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
