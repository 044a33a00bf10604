"""mlboard.cache against the real Redis (REDIS_URL, as in CI): one client per pool, and a window
counter that is atomic, one round trip, and expires."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
from django.core.cache import caches

from experiments.throttles import throttle_hit
from mlboard.cache import RedisCache

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (a real Redis)")


@pytest.fixture
def cache():
    backend = RedisCache(os.environ["REDIS_URL"], {"KEY_PREFIX": f"test-{uuid.uuid4().hex}"})
    yield backend
    backend.close()


def test_one_client_per_pool(cache):
    client = cache._cache.get_client(write=True)
    assert cache._cache.get_client(write=True) is client
    assert cache._cache.get_client("k") is client  # a single server: reads use the same pool


def test_count_in_window_counts_and_expires(cache):
    assert [cache.count_in_window("w", 2) for _ in range(3)] == [1, 2, 3]
    assert cache.get("w") == 3  # readable by the ordinary cache API (throttle_blocked)
    client = cache._cache.get_client(write=True)
    ttl = client.ttl(cache.make_and_validate_key("w"))
    assert 0 < ttl <= 2  # set on the first count, not renewed by later ones
    time.sleep(2.2)
    assert cache.count_in_window("w", 2) == 1


def test_count_in_window_is_one_round_trip(cache, monkeypatch):
    client = cache._cache.get_client(write=True)
    sent = []
    original = client.connection_pool.get_connection

    def counting(*args, **kwargs):
        sent.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(client.connection_pool, "get_connection", counting)
    cache.count_in_window("r", 5)
    assert len(sent) == 1


def test_count_in_window_is_atomic_across_threads(cache):
    counts: list[int] = []
    lock = threading.Lock()

    def work():
        mine = [cache.count_in_window("c", 5) for _ in range(50)]
        with lock:
            counts.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(counts) == list(range(1, 401))  # every count handed out once


def test_throttle_uses_the_window_counter(settings, monkeypatch):
    settings.MLBOARD_THROTTLE_RATES = {"mlflow": "3/min"}
    settings.MLBOARD_THROTTLE_NAMESPACE = uuid.uuid4().hex
    assert isinstance(caches["default"], RedisCache)
    calls = []
    original = RedisCache.count_in_window
    monkeypatch.setattr(RedisCache, "count_in_window",
                        lambda self, key, timeout: calls.append(timeout) or original(self, key, timeout))
    waits = [throttle_hit(scope="mlflow", ident="token:1") for _ in range(4)]
    assert calls == [61] * 4  # the window and a second's grace
    assert waits[:3] == [None, None, None]
    assert waits[3] is not None and 0 < waits[3] <= 60
