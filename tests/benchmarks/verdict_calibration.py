"""Verdict calibration: false "supported" under no effect, and power, driven through the services.

Each simulated hypothesis is created with card_create and a pre-registered plan. Its baseline (runs
bulk-inserted, or an experiment card's typed-in value) exists first; candidate runs then arrive one
at a time the way a tracking client sends them: run_create (RUNNING, linked by the mlboard.card tag),
run_log_metrics, run_update(FINISHED), which enqueues the verdict task (eager here). After every run
the simulated team looks at the board and confirms the first "supported" proposal it sees. Each
hypothesis gets `planned n + EXTRA` candidate runs, so later runs (which must not re-decide) are
looked at too.

Settings: threshold; 1 baseline run (pooled); 3 baseline runs (Welch); paired (baseline runs with the
same seeds; per-seed correlation RHO); typed-in baseline value (exact). Data: normal, or lognormal
analysed on the log scale. Both directions. Planned n of 2, 3, 5 and 10. Under no effect the true
value sits exactly on the criterion's boundary (mean = threshold, or candidate = baseline with
min_delta 0), so a calibrated one-sided test says "supported" 2.5% of the time.

    .venv/bin/python tests/benchmarks/verdict_calibration.py [--sims 200] [--power-sims 100] [--quick]

Runs on an in-memory SQLite database.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("DATABASE_URL", "sqlite://:memory:")
os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "1")

from _bootstrap import TMP  # noqa: F401  (sets up Django)
from django.core.management import call_command
from django.utils import timezone

from experiments.models import (
    CardKind,
    CardRun,
    LatestMetric,
    LinkVia,
    Run,
    RunStatus,
    User,
    VerdictProposal,
    VerdictStatus,
)
from experiments.services.boards import board_create, team_create
from experiments.services.cards import card_create
from experiments.services.runs import MetricPoint, run_create, run_log_metrics, run_update
from experiments.services.verdicts import verdict_decide

METRIC = "score"
EXTRA = 1  # runs after the planned n: a team keeps looking, they must not re-decide
RHO = 0.8  # correlation of two runs with the same seed (same init and data order)
SETTINGS = ("threshold", "1 baseline run", "3 baseline runs", "paired", "typed-in value")
SIGMA = {"normal": 0.02, "lognormal": 0.3}  # run-to-run SD (lognormal: of log values)
CENTER = {"normal": 0.80, "lognormal": 0.5}


@dataclass
class Env:
    team: object
    board: object
    user: object
    rng: random.Random
    counter: itertools.count


def setup() -> Env:
    call_command("migrate", verbosity=0)
    user = User.objects.create_user("sim", password="x")
    team = team_create(name="Sim", slug="sim", owner=user)
    board = board_create(team=team, name="Calibration", key="CAL")
    return Env(team, board, user, random.Random(20261201), itertools.count(1))


def _draw(env: Env, dist: str, *, shift_sd: float, seed_effect: float | None, rho: float) -> float:
    """One run's metric: center + shift (in run SDs) + seed component (paired) + noise."""
    sd = SIGMA[dist]
    if seed_effect is None:
        z = env.rng.gauss(0, 1)
    else:
        z = math.sqrt(rho) * seed_effect + math.sqrt(1 - rho) * env.rng.gauss(0, 1)
    x = shift_sd + z
    return CENTER[dist] + sd * x if dist == "normal" else CENTER[dist] * math.exp(sd * x)


def _bulk_baseline(env: Env, card, values: list[float], seeds: list[int | None]) -> None:
    now = timezone.now()
    runs = Run.objects.bulk_create(
        Run(team=env.team, external_id=f"b{next(env.counter)}", name="baseline", status=RunStatus.FINISHED,
            start_time=now, end_time=now - timezone.timedelta(days=1), seed=seed)
        for seed in seeds
    )
    LatestMetric.objects.bulk_create(
        LatestMetric(run=run, key=METRIC, value=value, step=1, timestamp=1) for run, value in zip(runs, values,
                                                                                               strict=True)
    )
    CardRun.objects.bulk_create(CardRun(card=card, run=run, via=LinkVia.MANUAL, is_baseline=True) for run in runs)


def simulate(env: Env, *, setting: str, dist: str, direction: str, n: int, effect_sd: float,
             rho: float = RHO) -> bool:
    """One hypothesis through the services; True if the team confirmed a 'supported' verdict."""
    sign = 1.0 if direction == "maximize" else -1.0
    log = dist == "lognormal"
    plan = {"metric_key": METRIC, "direction": direction, "min_runs": n, "analysis_scale": "log" if log else "raw"}
    if setting == "threshold":
        plan["threshold"] = CENTER[dist]
    else:
        plan["min_delta"] = 0.0
    card = card_create(board=env.board, kind=CardKind.HYPOTHESIS, title="sim", actor=env.user, **plan)
    seed_effects = [env.rng.gauss(0, 1) for _ in range(n + EXTRA)]
    if setting == "1 baseline run":
        _bulk_baseline(env, card, [_draw(env, dist, shift_sd=0, seed_effect=None, rho=rho)], [None])
    elif setting == "3 baseline runs":
        _bulk_baseline(env, card, [_draw(env, dist, shift_sd=0, seed_effect=None, rho=rho) for _ in range(3)],
                       [None] * 3)
    elif setting == "paired":
        _bulk_baseline(env, card, [_draw(env, dist, shift_sd=0, seed_effect=s, rho=rho) for s in seed_effects],
                       list(range(n + EXTRA)))
    elif setting == "typed-in value":
        card_create(board=env.board, kind=CardKind.EXPERIMENT, title="baseline", actor=env.user, parent=card,
                    baseline_value=CENTER[dist])
    for i in range(n + EXTRA):
        seed = i if setting == "paired" else next(env.counter)
        value = _draw(env, dist, shift_sd=sign * effect_sd,
                      seed_effect=seed_effects[i] if setting == "paired" else None, rho=rho)
        run = run_create(team=env.team, tags={"mlboard.card": card.key}, seed=seed)
        run_log_metrics(run=run, points=[MetricPoint(METRIC, value, step=1)])
        run_update(run=run, status=RunStatus.FINISHED)
        proposal = VerdictProposal.objects.filter(card=card, status=VerdictStatus.PROPOSED).first()
        if proposal is not None and proposal.proposed == "supported":
            verdict_decide(proposal=proposal, actor=env.user)
            return True
    return False


def _rate(env: Env, sims: int, **kw: object) -> float:
    return sum(simulate(env, **kw) for _ in range(sims)) / sims  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sims", type=int, default=40, help="hypotheses per cell and direction under no effect")
    parser.add_argument("--power-sims", type=int, default=30, help="hypotheses per power cell")
    parser.add_argument("--quick", action="store_true", help="n=5 only, for a smoke run")
    parser.add_argument("--part", choices=("all", "null", "power"), default="all",
                        help="only the no-effect table or only the power table (to run them side by side)")
    args = parser.parse_args()
    env = setup()
    ns = (5,) if args.quick else (2, 3, 5, 10)
    started = time.perf_counter()
    hypotheses = 0
    worst, total_hits, total = 0.0, 0, 0
    if args.part == "power":
        args.sims = 0
    print(f"False 'supported' under no effect: higher-is-better / lower-is-better, {args.sims} hypotheses each "
          "(target <= 5%, nominal 2.5%)")
    print(f"{'setting':<16} {'data':<10} " + " ".join(f"{'n=' + str(n):<13}" for n in ns))
    for setting, dist in itertools.product(SETTINGS, ("normal", "lognormal")):
        if not args.sims:
            break
        cells = []
        for n in ns:
            rates = [_rate(env, args.sims, setting=setting, dist=dist, direction=d, n=n, effect_sd=0.0)
                     for d in ("maximize", "minimize")]
            hypotheses += 2 * args.sims
            total_hits += round(sum(rates) * args.sims)
            total += 2 * args.sims
            worst = max(worst, *rates)
            cells.append(f"{rates[0]:5.1%}/{rates[1]:5.1%}".ljust(13))
        print(f"{setting:<16} {dist:<10} " + " ".join(cells), flush=True)
    if total:
        print(f"all cells pooled: {total_hits / total:.2%} of {total}; worst cell {worst:.1%}")
    print()
    if args.part == "null":
        args.power_sims = 0
    print(f"Power: share 'supported' with a true improvement of 0.5 / 1 / 2 run SDs ({args.power_sims} per cell; "
          f"normal data, higher is better; paired: same-seed correlation rho={RHO})")
    print(f"{'setting':<16} {'n':>3}   {'0.5 SD':>7} {'1 SD':>7} {'2 SD':>7}")
    up = {"dist": "normal", "direction": "maximize"}
    rows = [(setting, 5) for setting in SETTINGS] + [("paired", n) for n in ns if n != 5]
    for setting, n in rows if args.power_sims else ():
        cells = [f"{_rate(env, args.power_sims, **up, setting=setting, n=n, effect_sd=e):7.0%}" for e in (0.5, 1, 2)]
        hypotheses += 3 * args.power_sims
        print(f"{setting:<16} {n:>3}   " + " ".join(cells), flush=True)
    if args.power_sims:
        cells = [f"{_rate(env, args.power_sims, **up, setting='paired', n=5, effect_sd=e, rho=0.5):7.0%}"
                 for e in (0.5, 1, 2)]
        hypotheses += 3 * args.power_sims
        print(f"{'paired rho=0.5':<16} {5:>3}   " + " ".join(cells))
    elapsed = time.perf_counter() - started
    print(f"\n{hypotheses} hypotheses through the services in {elapsed:.0f} s "
          f"({elapsed / max(hypotheses, 1) * 1000:.0f} ms each)")
    sys.exit(0)


if __name__ == "__main__":
    main()
