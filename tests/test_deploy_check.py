"""`manage.py check --deploy` is clean with the production env the README documents, and that env
really turns on HTTPS redirect, HSTS and the proxy header."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_production_env() -> dict[str, str]:
    block = re.search(r"```sh\n# production env\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    env = dict(line.split("=", 1) for line in block.strip().splitlines() if line and not line.startswith("#"))
    env["SECRET_KEY"] = secrets.token_urlsafe(50)
    return env


def _run(code: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess:
    # DJANGO_ALLOW_ASYNC_UNSAFE is the browser fixture's, for this test process only; a deployment never has it.
    dropped = ("DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(extra)
    return subprocess.run([sys.executable, *code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_the_readme_production_env():
    result = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], readme_production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_without_it():
    env = {"DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "x.example.com"}
    result = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode != 0
    assert "security.W004" in result.stderr + result.stdout  # no HSTS
    assert "security.W008" in result.stderr + result.stdout  # no SSL redirect


def test_production_env_redirects_and_sets_hsts():
    script = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "c = Client()\n"
        "r = c.get('/accounts/login/', HTTP_HOST='mlboard.example.com')\n"
        "print(r.status_code, r['Location'])\n"
        "r = c.get('/accounts/login/', HTTP_HOST='mlboard.example.com', HTTP_X_FORWARDED_PROTO='https')\n"
        "print(r.status_code, r['Strict-Transport-Security'], 'default-src' in r['Content-Security-Policy'])\n"
    )
    result = _run(["-c", script], {**readme_production_env(), "DJANGO_SETTINGS_MODULE": "mlboard.settings"})
    assert result.returncode == 0, result.stderr
    redirect, secure = result.stdout.strip().splitlines()[-2:]
    assert redirect == "301 https://mlboard.example.com/accounts/login/"
    assert secure == "200 max-age=31536000; includeSubDomains; preload True"
