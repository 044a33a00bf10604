"""Request limits for the REST API, the MLflow API and token guessing, counted in the Django cache
(Redis when REDIS_URL is set, so every web worker shares the count).

Fixed one-period windows with an atomic counter per key: one Redis round trip per request, unlike
DRF's sliding-window throttles that store every request's timestamp (too heavy at MLflow logging rates).
Rates are settings.MLBOARD_THROTTLE_RATES ("N/sec|min|hour|day"); an empty rate disables a scope.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from rest_framework.throttling import BaseThrottle

PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "d": 86400,
           "day": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    count, _, period = rate.partition("/")
    return int(count), PERIODS[period.strip().lower()]


def _rate(scope: str) -> tuple[int, int] | None:
    rate = getattr(settings, "MLBOARD_THROTTLE_RATES", {}).get(scope)
    return parse_rate(rate) if rate else None


def _key(scope: str, ident: str, period: int, now: float) -> str:
    # The namespace keeps two deployments (or test runs) that share one Redis from counting together.
    namespace = getattr(settings, "MLBOARD_THROTTLE_NAMESPACE", "")
    return f"throttle:{namespace}:{scope}:{ident}:{int(now // period)}"


def throttle_hit(*, scope: str, ident: str) -> float | None:
    """Count one request; the seconds to wait if this one is over the limit, else None."""
    rate = _rate(scope)
    if rate is None:
        return None
    limit, period = rate
    now = time.time()
    key = _key(scope, ident, period, now)
    count_in_window = getattr(cache, "count_in_window", None)  # Redis (mlboard.cache): one round trip
    if count_in_window is not None:
        count = count_in_window(key, period + 1)
    else:
        cache.add(key, 0, timeout=period + 1)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=period + 1)
            count = 1
    return period - (now % period) if count > limit else None


def throttle_blocked(*, scope: str, ident: str) -> float | None:
    """Like throttle_hit without counting: the seconds to wait if the limit is already reached."""
    rate = _rate(scope)
    if rate is None:
        return None
    limit, period = rate
    now = time.time()
    count = cache.get(_key(scope, ident, period, now)) or 0
    return period - (now % period) if count >= limit else None


def client_ip(request: HttpRequest) -> str | None:
    """The caller's address. Behind TRUSTED_PROXY_COUNT proxies, the address the outermost trusted proxy
    saw (entries further left in X-Forwarded-For are client-supplied and could be forged)."""
    proxies = getattr(settings, "TRUSTED_PROXY_COUNT", 0)
    if proxies > 0:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR") or None  # None: no address (e.g. a test client's force_login)


class ApiThrottle(BaseThrottle):
    """REST API: per user when authenticated (session or token), per address otherwise."""

    def allow_request(self, request, view) -> bool:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            self.delay = throttle_hit(scope="api_user", ident=f"user:{user.pk}")
        else:
            self.delay = throttle_hit(scope="api_anon", ident=client_ip(request) or "unknown")
        return self.delay is None

    def wait(self) -> float | None:
        return self.delay
