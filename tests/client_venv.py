"""Separate virtualenvs for client-side tests: a training script runs in its own interpreter with
the packages a user's job would have (the full mlflow package, scikit-learn, torch...), talking to a
live mlboard over HTTP only.

A venv is built once per requirements file content and reused (MLBOARD_CLIENT_VENV_DIR, default
~/.cache/mlboard/client-venvs), so only the first session pays for the install."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent / "client_envs"


def venv_root() -> Path:
    default = Path.home() / ".cache" / "mlboard" / "client-venvs"
    return Path(os.environ.get("MLBOARD_CLIENT_VENV_DIR") or default)


def ensure_venv(requirements: str, *, extra_args: tuple[str, ...] = ()) -> Path:
    """Python executable of a venv with `requirements` (a file in tests/client_envs/) installed."""
    spec = (HERE / requirements).read_bytes()
    digest = hashlib.sha256(spec + repr(extra_args).encode() + sys.version.encode()).hexdigest()[:16]
    root = venv_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{Path(requirements).stem}-{digest}"
    python = target / "bin" / "python"
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions wait for one build
        if python.exists() and (target / ".complete").exists():
            return python
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *extra_args,
             "-r", str(HERE / requirements)],
            check=True,
        )
        (target / ".complete").write_text("ok\n")
    return python


def run_script(python: Path, script: str, *, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a training script; stdout and stderr together, as a user would see them."""
    return subprocess.run(
        [str(python), "-c", script],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
