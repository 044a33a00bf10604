"""Small statistics toolkit for verdicts: mean, sample std, Student-t quantiles and confidence intervals.

Written here instead of pulling in scipy (a large dependency for one function). The t quantile is
computed exactly (to ~1e-10) by inverting the t CDF, which is expressed through the regularised
incomplete beta function evaluated with a continued fraction (modified Lentz method).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-15
_TINY = 1e-300


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def sample_variance(values: Sequence[float]) -> float:
    """Unbiased (n - 1) variance; needs at least two values."""
    n = len(values)
    if n < 2:
        raise ValueError("sample variance needs at least two values")
    m = mean(values)
    return math.fsum((x - m) ** 2 for x in values) / (n - 1)


def sample_std(values: Sequence[float]) -> float:
    return math.sqrt(sample_variance(values))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b) (converges quickly for x < (a + 1) / (a + b + 2))."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        # Even step.
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        # Odd step.
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # Use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges faster.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df may be fractional, e.g. Welch)."""
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of t_cdf: the t with P(T <= t) = p. E.g. t_quantile(0.975, 4) = 2.776."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be strictly between 0 and 1")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:  # Heavy tails at df=1 need a wide bracket (t_0.9995,1 ~ 636).
        low, high = high, high * 2.0
        if high > 1e12:
            return math.inf
    for _ in range(200):  # Bisection: monotone and robust; ~60 halvings reach float precision.
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    std: float | None  # sample std; None below two values
    ci_low: float | None  # Student-t interval for the mean; None below two values
    ci_high: float | None
    level: float = 0.95


def summarize(values: Sequence[float], *, level: float = 0.95) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None, None, level)
    m = mean(values)
    if n == 1:
        return Summary(1, m, None, None, None, level)
    s = sample_std(values)
    half = t_quantile(0.5 + level / 2.0, n - 1) * s / math.sqrt(n)
    return Summary(n, m, s, m - half, m + half, level)


@dataclass(frozen=True)
class Difference:
    """Welch's interval for mean(a) - mean(b) with unequal variances."""

    delta: float
    ci_low: float
    ci_high: float
    df: float


def welch_interval(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> Difference:
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's interval needs at least two values in each group")
    va, vb = sample_variance(a) / len(a), sample_variance(b) / len(b)
    delta = mean(a) - mean(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Difference(delta, delta, delta, math.inf)
    # Welch-Satterthwaite degrees of freedom.
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(0.5 + level / 2.0, df) * se
    return Difference(delta, delta - half, delta + half, df)
