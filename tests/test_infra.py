"""Settings are env-driven and the deployment files are valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _settings_with(env: dict[str, str]) -> dict:
    code = (
        "import json, django; from django.conf import settings; django.setup();"
        "print(json.dumps({'engine': settings.DATABASES['default']['ENGINE'],"
        "'name': str(settings.DATABASES['default']['NAME']),"
        "'eager': settings.CELERY_TASK_ALWAYS_EAGER, 'broker': settings.CELERY_BROKER_URL,"
        "'cache': settings.CACHES['default']['BACKEND']}))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY"}}
    clean.update(env, DJANGO_SETTINGS_MODULE="mlboard.settings")
    out = subprocess.run([sys.executable, "-c", code], env=clean, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_embedded_defaults_are_sqlite_and_eager_celery():
    s = _settings_with({})
    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["eager"] is True
    assert s["broker"] == "memory://"


def test_database_and_redis_urls_switch_to_real_services():
    s = _settings_with({"DATABASE_URL": "postgres://u:p@db:5432/prod", "REDIS_URL": "redis://cache:6379/1"})
    assert s["engine"] == "mlboard.db_backends.postgresql"  # Django's backend, retrying connects
    assert s["name"] == "prod"
    assert s["eager"] is False
    assert s["broker"] == "redis://cache:6379/1"
    assert s["cache"].endswith("RedisCache")


def test_production_refuses_to_start_without_secret_key():
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY"}}
    clean.update(DEBUG="0", DJANGO_SETTINGS_MODULE="mlboard.settings")
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=clean, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_docker_compose_defines_the_whole_stack():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"web", "worker", "beat", "redis", "postgres"}
    assert "gunicorn" in services["web"]["command"]
    assert "worker" in services["worker"]["command"]
    assert "beat" in services["beat"]["command"]
    for name in ("web", "worker", "beat"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"].startswith("redis://")
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (ROOT / "Dockerfile").read_text().startswith("FROM python:3.11")
