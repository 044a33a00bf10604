"""MetricBlock rollups: exact whatever the arrival order, and charts drawn from blocks equal charts
drawn from raw points (same bucket grid), on the test database's backend (SQLite or PostgreSQL)."""

from __future__ import annotations

import math
import random

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.models import Metric, MetricBlock
from experiments.selectors.metrics import _downsampled_in_db, metric_series
from experiments.services.cards import card_create
from experiments.services.runs import MetricPoint, card_link_run, run_create, run_log_batch, run_log_metrics

BLOCK = 64  # steps per block, written out so a change of METRIC_BLOCK_SHIFT is a visible decision


def _finite(value: float, is_nan: bool) -> bool:
    return not is_nan and math.isfinite(value)


def _reference_blocks(run) -> dict[tuple[str, int], tuple]:
    """Blocks recomputed by brute force from the stored points."""
    groups: dict[tuple[str, int], list[tuple[int, float, bool]]] = {}
    for key, step, value, is_nan in Metric.objects.filter(run=run).values_list("key", "step", "value", "is_nan"):
        groups.setdefault((key, step // BLOCK), []).append((step, value, is_nan))
    out = {}
    for where, points in groups.items():
        finite = [(s, v) for s, v, nan in points if _finite(v, nan)]
        gaps = [s for s, v, nan in points if not _finite(v, nan)]
        first, last = (min(finite), max(finite)) if finite else (None, None)
        lo = min(finite, key=lambda p: (p[1], p[0])) if finite else None
        hi = max(finite, key=lambda p: (p[1], p[0])) if finite else None
        out[where] = (len(points), first, last, lo, hi, min(gaps) if gaps else None)
    return out


def _stored_blocks(run) -> dict[tuple[str, int], tuple]:
    def pair(step, value):
        return None if step is None else (step, value)

    return {
        (b.key, b.block): (b.points, pair(b.first_step, b.first_value), pair(b.last_step, b.last_value),
                           pair(b.min_step, b.min_value), pair(b.max_step, b.max_value), b.gap_step)
        for b in MetricBlock.objects.filter(run=run)
    }


def _reference_chart(points: list[tuple[int, float, bool, int]], max_points: int) -> tuple[list, list, int]:
    """The chart of one series by brute force: per bucket first, last, min, max and first gap."""
    points = sorted(points, key=lambda p: (p[0], p[3], p[1], p[2]))
    if len(points) <= max_points:
        return [p[0] for p in points], [p[1] if _finite(p[1], p[2]) else None for p in points], len(points)
    buckets = max_points // 4
    lo, hi = points[0][0], points[-1][0]
    shift = 6 if hi - lo + 1 >= buckets * BLOCK else 0  # long series: whole 64-step blocks per bucket
    units = (hi >> shift) - (lo >> shift) + 1
    groups: dict[int, list] = {}
    for p in points:
        groups.setdefault(((p[0] >> shift) - (lo >> shift)) * buckets // units, []).append(p)
    drawn = []
    for group in groups.values():
        finite = [(s, v) for s, v, nan, _ in group if _finite(v, nan)]
        gaps = [s for s, v, nan, _ in group if not _finite(v, nan)]
        keep = set()
        if finite:
            keep |= {min(finite), min(finite, key=lambda p: (p[1], p[0])), max(finite, key=lambda p: (p[1], p[0]))}
            if not gaps:
                keep.add(max(finite))
        if gaps:
            keep.add((min(gaps), None))
        drawn += sorted(keep, key=lambda p: (p[0], p[1] is None))
    drawn.sort(key=lambda p: (p[0], p[1] is None))
    return [s for s, _ in drawn], [v for _, v in drawn], len(points)


values = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, -1.0]),  # ties between steps
    st.sampled_from([math.nan, math.inf, -math.inf, 1e9, -1e9]),  # gaps and spikes
)
series = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(-300, 4_000), values, st.integers(0, 2)),
    min_size=1, max_size=300,
)


@pytest.mark.django_db
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=series, rnd=st.randoms(use_true_random=False), max_points=st.sampled_from([16, 40, 100]))
def test_blocks_and_charts_are_exact_in_any_arrival_order(team, member, points, rnd, max_points):
    with transaction.atomic():
        run = run_create(team=team, user=member, name="prop")
        batches = [points[i:i + rnd.randint(1, 60)] for i in range(0, len(points), 60)]
        rnd.shuffle(batches)
        batches.append(rnd.choice(batches))  # a retried batch adds nothing
        for batch in batches:
            run_log_batch(run=run, metrics=[MetricPoint(k, v, s, t) for k, s, v, t in batch])

        assert _stored_blocks(run) == _reference_blocks(run)
        for key in ("a", "b"):
            stored = [(s, v, nan, t) for s, v, nan, t in
                      Metric.objects.filter(run=run, key=key).values_list("step", "value", "is_nan", "timestamp")]
            if not stored:
                continue
            expected = _reference_chart(stored, max_points)
            from_blocks = _downsampled_in_db([run.pk], key, max_points)[run.pk]
            from_points = _downsampled_in_db([run.pk], key, max_points, source="raw")[run.pk]
            assert from_blocks == from_points == expected
        transaction.set_rollback(True)


def _log_shuffled(run, points: list[MetricPoint], batch: int = 1_000, seed: int = 3) -> None:
    batches = [points[i:i + batch] for i in range(0, len(points), batch)]
    random.Random(seed).shuffle(batches)
    for part in batches:
        run_log_metrics(run=run, points=part)


def test_long_series_from_blocks_keeps_spikes_off_any_grid(team, member):
    rng = random.Random(5)
    run = run_create(team=team, user=member, name="spiky")
    steps = sorted(rng.sample(range(7, 400_000), 30_000))  # irregular steps, 16k+ steps: block buckets
    points = [MetricPoint("loss", math.exp(-s / 1e5) + rng.gauss(0, 0.01), s, 1_000 + i) for i, s in enumerate(steps)]
    spikes = {steps[i]: v for i, v in ((1_234, 50.0), (17_771, -40.0), (29_999, 12.5), (0, -7.0))}
    points = [MetricPoint("loss", spikes.get(p.step, p.value), p.step, p.timestamp) for p in points]
    points[9_001] = MetricPoint("loss", math.nan, points[9_001].step, points[9_001].timestamp)
    _log_shuffled(run, points)

    from_blocks = _downsampled_in_db([run.pk], "loss", 1_000)[run.pk]
    assert from_blocks == _downsampled_in_db([run.pk], "loss", 1_000, source="raw")[run.pk]
    out_steps, out_values, total = from_blocks
    assert total == 30_000 and len(out_steps) <= 1_000
    drawn = set(zip(out_steps, out_values, strict=True))
    assert all((s, v) in drawn for s, v in spikes.items())
    assert (points[9_001].step, None) in drawn
    assert out_steps == sorted(out_steps) and out_steps[0] == steps[0] and out_steps[-1] == steps[-1]


def test_cached_long_series_sees_a_late_spike(team, member, django_capture_on_commit_callbacks):
    run = run_create(team=team, user=member, name="late")
    with django_capture_on_commit_callbacks(execute=True):
        _log_shuffled(run, [MetricPoint("loss", 1.0 / (s + 1), s, s) for s in range(0, 40_000, 2)])
    (before,) = metric_series(runs=[run], key="loss", max_points=400)
    assert max(before.values) == 1.0 and before.total_points == 20_000
    with django_capture_on_commit_callbacks(execute=True):
        run_log_metrics(run=run, points=[MetricPoint("loss", 9.0, 12_345, 5)])  # odd step, into an old block
    (after,) = metric_series(runs=[run], key="loss", max_points=400)
    assert after.total_points == 20_001 and (12_345, 9.0) in set(zip(after.steps, after.values, strict=True))


def test_backfill_rebuilds_blocks_from_points(team, member):
    run = run_create(team=team, user=member, name="old")
    rng = random.Random(2)
    run_log_metrics(run=run, points=[
        MetricPoint(k, rng.choice([rng.random(), math.nan, math.inf]), rng.randint(0, 9_000), rng.randint(0, 3))
        for k in ("x", "y") for _ in range(2_000)
    ])
    expected = _reference_blocks(run)
    assert _stored_blocks(run) == expected
    MetricBlock.objects.filter(run=run).delete()  # points stored before blocks existed
    MetricBlock.objects.create(run=run, key="x", block=10**6, points=1)  # and a stale block
    call_command("metric_blocks_backfill", run=[run.external_id])
    assert _stored_blocks(run) == expected


def _long_run(team, member, name: str, kind: str) -> object:
    run = run_create(team=team, user=member, name=name)
    sizes = {"long": (2_000, 20), "medium": (1_500, 1), "short": (30, 1)}  # (points, step spacing)
    n, spacing = sizes[kind]
    run_log_metrics(run=run, points=[MetricPoint("loss", math.sin(i / 7), i * spacing, i) for i in range(n)])
    return run


def test_card_chart_query_count_is_the_same_for_n_and_2n_runs(client_for, member, team, board):
    card = card_create(board=board, kind="hypothesis", title="H", actor=member)
    client = client_for(member)
    url = reverse("card_metric_chart", args=[card.pk]) + "?key=loss"

    def cold_count() -> tuple[int, dict]:
        cache.clear()
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(url)
        assert response.status_code == 200
        return len(ctx.captured_queries), response.json()

    for i, kind in enumerate(("long", "medium", "short")):  # blocks, raw buckets, whole series
        card_link_run(card=card, run=_long_run(team, member, f"a{i}", kind), actor=member)
    count_n, payload = cold_count()
    for i, kind in enumerate(("long", "medium", "short")):
        card_link_run(card=card, run=_long_run(team, member, f"b{i}", kind), actor=member)
    count_2n, payload = cold_count()
    assert count_2n == count_n
    assert len(payload["figure"]["data"]) == 6
    assert sorted(len(trace["x"]) for trace in payload["figure"]["data"])[:2] == [30, 30]
