"""Shared start-up for benchmark scripts: repo on sys.path, a throw-away SQLite database unless
DATABASE_URL is set, quiet logs, Django set up. Import it before any Django or mlboard import."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
TMP = tempfile.mkdtemp(prefix="mlboard-bench-")
os.environ.setdefault("DATABASE_URL", f"sqlite:///{TMP}/bench.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlboard.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()
