"""Growth measurements shared by the scale benchmarks: run a script once per size (N, 2N, 4N) in a
child process with its own fresh PostgreSQL database, collect the RESULT line each child prints, and
print a table with the log-log growth exponent (1.0 = linear, 0 = constant, 2 = quadratic).

Plain module without Django, so it can drive children before any settings are loaded."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

BASE_URL = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")


def fresh_database(name: str) -> str:
    """Drop and create `name`; returns its DATABASE_URL."""
    import psycopg

    with psycopg.connect(f"{BASE_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{BASE_URL}/{name}"


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{BASE_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def exponent(sizes: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(value) over log(size)."""
    pairs = [(math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if s > 0 and v > 0]
    if len(pairs) < 2:
        return None
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    den = sum((x - mx) ** 2 for x, _ in pairs)
    return sum((x - mx) * (y - my) for x, y in pairs) / den if den else None


def emit(result: dict) -> None:
    """A child's machine-readable result, one line."""
    print("RESULT " + json.dumps(result), flush=True)


def run_sizes(script: str, sizes: Sequence[int], db_prefix: str, args: Sequence[str] = ()) -> list[dict]:
    """Run `script <size> *args` per size against a fresh database; returns the children's results."""
    results = []
    for size in sizes:
        name = f"{db_prefix}_{size}"
        env = {**os.environ, "DATABASE_URL": fresh_database(name)}
        print(f"\n=== {Path(script).name} size {size} (database {name}) ===", flush=True)
        proc = subprocess.run(
            [sys.executable, script, str(size), *args], env=env, capture_output=True, text=True, check=False
        )
        sys.stdout.write(proc.stdout)
        if proc.returncode:
            sys.stdout.write(proc.stderr)
            raise SystemExit(f"size {size} failed")
        drop_database(name)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        results.append(json.loads(lines[-1][len("RESULT "):]))
    return results


def print_growth(sizes: Sequence[int], results: Sequence[dict], unit: str = "ms", label: str = "size") -> None:
    """One row per measure (the keys of the results' "times" dicts), one column per size, then the exponent."""
    names = list(results[0]["times"])
    width = max(len(n) for n in names)
    print(f"\n{'measure':<{width}}  " + "  ".join(f"{label} {s:>8,}" for s in sizes) + "  exponent")
    for name in names:
        values = [r["times"][name] for r in results]
        exp = exponent(sizes, values)
        cells = "  ".join(f"{v:>{len(label) + 6}.1f}{unit}" for v in values)
        print(f"{name:<{width}}  {cells}  {exp:8.2f}" if exp is not None else f"{name:<{width}}  {cells}       —")
