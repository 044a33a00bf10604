"""Every statistic mlboard shows or decides on, in one place, computed with scipy.stats.

Conventions used by the verdicts:
- Values are oriented so that larger is better (the caller negates "lower is better" metrics), so an
  effect is always an *improvement*: mean(candidate) - reference.
- Decisions are one-sided at ALPHA (2.5%), which matches "the whole two-sided 95% interval is on the
  good side" for the t-tests.
- Designs: "constant" (one sample against a typed-in value or a threshold), "paired" (seed-matched
  differences), "pooled" (two samples, pooled variance; with one baseline run its variance is the
  candidate's), "welch" (two samples, unequal variances).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize
from scipy import stats as sps

ALPHA = 0.025  # one-sided
LEVEL = 0.95  # two-sided interval shown with it
BOOTSTRAP_RESAMPLES = 4999
PERMUTATION_RESAMPLES = 9999

TESTS = ("t", "bootstrap", "permutation")
DESIGNS = ("constant", "paired", "pooled", "welch")


def mean(values: Sequence[float]) -> float:
    if not len(values):
        raise ValueError("mean of no values")
    return float(np.mean(np.asarray(values, dtype=float)))


def sample_variance(values: Sequence[float]) -> float:
    """Unbiased (n - 1) variance; needs at least two values."""
    if len(values) < 2:
        raise ValueError("sample variance needs at least two values")
    return float(np.var(np.asarray(values, dtype=float), ddof=1))


def sample_std(values: Sequence[float]) -> float:
    return math.sqrt(sample_variance(values))


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p for Student's t with df degrees of freedom."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be strictly between 0 and 1")
    return float(sps.t.ppf(p, df))


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    std: float | None  # sample std; None below two values
    ci_low: float | None  # Student-t interval for the mean; None below two values
    ci_high: float | None
    level: float = LEVEL


def summarize(values: Sequence[float], *, level: float = LEVEL) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None, None, level)
    m = mean(values)
    if n == 1:
        return Summary(1, m, None, None, None, level)
    s = sample_std(values)
    if s == 0.0:
        return Summary(n, m, 0.0, m, m, level)
    ci = sps.ttest_1samp(np.asarray(values, dtype=float), m).confidence_interval(level)
    return Summary(n, m, s, float(ci.low), float(ci.high), level)


@dataclass(frozen=True)
class Difference:
    """Welch's interval for mean(a) - mean(b) with unequal variances."""

    delta: float
    ci_low: float
    ci_high: float
    df: float


def welch_interval(a: Sequence[float], b: Sequence[float], *, level: float = LEVEL) -> Difference:
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's interval needs at least two values in each group")
    delta = mean(a) - mean(b)
    if sample_variance(a) == 0.0 and sample_variance(b) == 0.0:
        return Difference(delta, delta, delta, math.inf)
    res = sps.ttest_ind(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_var=False)
    ci = res.confidence_interval(level)
    return Difference(delta, float(ci.low), float(ci.high), float(res.df))


# --- Comparisons ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """An improvement estimate with its interval, one-sided p-values, Hedges' g and the design used."""

    test: str
    design: str
    estimate: float
    ci_low: float
    ci_high: float
    n_a: int
    n_b: int  # 0 for a constant reference
    df: float | None
    sd: float | None  # the SD behind the standard error (differences' SD for paired, pooled SD otherwise)
    zero_width: bool
    hedges_g: float | None
    g_ci_low: float | None
    g_ci_high: float | None
    _p: Callable[[float, str], float] = field(repr=False, compare=False)

    def p_value(self, target: float = 0.0, alternative: str = "greater") -> float:
        """One-sided p for H0 'improvement <= target' (greater) or 'improvement >= target' (less)."""
        if self.zero_width:
            return 1.0  # identical values carry no information about the noise
        return float(self._p(target, alternative))

    @property
    def label(self) -> str:
        names = {
            ("t", "constant"): "one-sample t-test",
            ("t", "paired"): "paired t-test on seed-matched differences",
            ("t", "pooled"): "two-sample t-test (pooled variance)",
            ("t", "welch"): "Welch's t-test",
            ("bootstrap", "constant"): "bootstrap (BCa) interval, one sample",
            ("bootstrap", "paired"): "bootstrap (BCa) interval of seed-matched differences",
            ("bootstrap", "pooled"): "bootstrap interval of the difference of means",
            ("bootstrap", "welch"): "bootstrap interval of the difference of means",
            ("permutation", "constant"): "sign-flip permutation test",
            ("permutation", "paired"): "sign-flip permutation test on seed-matched differences",
            ("permutation", "pooled"): "two-sample permutation test",
            ("permutation", "welch"): "two-sample permutation test",
        }
        return names[(self.test, self.design)]


def _arr(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=float)


def _diff_of_means(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def hedges_g(
    a: Sequence[float], b: Sequence[float] | None = None, *, constant: float = 0.0, paired: bool = False,
    level: float = LEVEL,
) -> tuple[float, float, float] | None:
    """Hedges' g (bias-corrected standardised effect) with a noncentral-t interval.

    One sample / paired: d = mean(differences) / SD(differences). Two samples: d = difference of means /
    pooled SD (with one baseline run the pooled SD is the candidate's). None when the SD is zero or
    there are too few values.
    """
    x = _arr(a)
    if b is None or paired:
        diffs = x - (constant if b is None else _arr(b))
        n = len(diffs)
        if n < 2:
            return None
        sd = float(np.std(diffs, ddof=1))
        df = n - 1
        scale = math.sqrt(1.0 / n)
        d = (float(np.mean(diffs))) / sd if sd > 0 else None
    else:
        y = _arr(b)
        na, nb = len(x), len(y)
        df = na + nb - 2
        if na < 2 or df < 1:
            return None
        ss = float(np.sum((x - x.mean()) ** 2) + np.sum((y - y.mean()) ** 2))
        sd = math.sqrt(ss / df)
        scale = math.sqrt(1.0 / na + 1.0 / nb)
        d = (float(x.mean() - y.mean())) / sd if sd > 0 else None
    if d is None or df < 2:  # the small-sample correction is undefined with one degree of freedom
        return None
    j = math.exp(math.lgamma(df / 2) - math.log(math.sqrt(df / 2)) - math.lgamma((df - 1) / 2))
    t_obs = d / scale
    tail = (1 - level) / 2

    def cdf(ncp: float) -> float:
        value = float(sps.nct.cdf(t_obs, df, ncp))
        if math.isnan(value):  # far tails: scipy gives NaN where the probability is 0 or 1
            return 0.0 if ncp > t_obs else 1.0
        return value

    def ncp_for(prob: float) -> float:
        # nct.cdf(t_obs; ncp) decreases in ncp: find the ncp where it equals prob.
        width = 40.0 + abs(t_obs) * 4
        return float(optimize.brentq(lambda ncp: cdf(ncp) - prob, t_obs - width, t_obs + width, xtol=1e-10))

    try:
        low, high = ncp_for(1 - tail), ncp_for(tail)
    except ValueError:
        return d * j, math.nan, math.nan
    return d * j, low * scale * j, high * scale * j


def compare(
    a: Sequence[float],
    b: Sequence[float] | None = None,
    *,
    constant: float | None = None,
    design: str | None = None,
    test: str = "t",
    level: float = LEVEL,
    seed: int = 0,
) -> Comparison:
    """Improvement of sample `a` over sample `b` (or over `constant`), with the chosen test."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}")
    x = _arr(a)
    if b is None:
        design = "constant"
        ref = float(constant or 0.0)
    else:
        y = _arr(b)
        if design is None:
            design = "pooled" if len(y) == 1 else "welch"
        if design == "paired" and len(x) != len(y):
            raise ValueError("a paired comparison needs one baseline value per candidate value")
        ref = float(y.mean())
    if len(x) < 2:
        raise ValueError("a comparison needs at least two candidate values")
    estimate = float(x.mean()) - ref
    paired_like = design in ("constant", "paired")
    diffs = x - (ref if design == "constant" else y) if paired_like else None

    # The standard error and degrees of freedom of the t designs (also used for power).
    if paired_like:
        n_b = 0 if design == "constant" else len(y)
        sd = float(np.std(diffs, ddof=1))
        se, df = sd / math.sqrt(len(x)), float(len(x) - 1)
    elif design == "pooled":
        n_b = len(y)
        ss = float(np.sum((x - x.mean()) ** 2) + np.sum((y - y.mean()) ** 2))
        df = float(len(x) + len(y) - 2)
        sd = math.sqrt(ss / df)
        se = sd * math.sqrt(1 / len(x) + 1 / len(y))
    else:
        n_b = len(y)
        if len(y) < 2:
            raise ValueError("Welch's test needs at least two baseline values")
        va, vb = float(np.var(x, ddof=1)), float(np.var(y, ddof=1))
        se = math.sqrt(va / len(x) + vb / len(y))
        df = None
        ss = float(np.sum((x - x.mean()) ** 2) + np.sum((y - y.mean()) ** 2))
        sd = math.sqrt(ss / (len(x) + len(y) - 2))
    # Identical values leave only rounding noise (0.9 * 3 / 3 != 0.9): treat a standard error at float
    # precision as zero, so no verdict rests on a zero-width interval.
    magnitude = max(1.0, float(np.max(np.abs(x))), abs(ref))
    zero_width = not se > 1e-12 * magnitude

    g = hedges_g(x, None if design == "constant" else y, constant=ref, paired=design == "paired", level=level)
    g_est, g_low, g_high = g if g is not None else (None, None, None)

    def shifted(target: float) -> np.ndarray:
        return x - target

    if zero_width:
        return Comparison(test, design, estimate, estimate, estimate, len(x), n_b, df, sd, True,
                          None, None, None, lambda _t, _a: 1.0)

    if test == "t":
        if design == "constant":
            res = sps.ttest_1samp(x, ref)

            def p(target: float, alt: str) -> float:
                return sps.ttest_1samp(x, ref + target, alternative=alt).pvalue
        elif design == "paired":
            res = sps.ttest_rel(x, y)

            def p(target: float, alt: str) -> float:
                return sps.ttest_rel(shifted(target), y, alternative=alt).pvalue
        elif design == "welch":
            res = sps.ttest_ind(x, y, equal_var=False)
            df = float(res.df)

            def p(target: float, alt: str) -> float:
                return sps.ttest_ind(shifted(target), y, equal_var=False, alternative=alt).pvalue
        elif len(y) >= 2:
            res = sps.ttest_ind(x, y, equal_var=True)

            def p(target: float, alt: str) -> float:
                return sps.ttest_ind(shifted(target), y, equal_var=True, alternative=alt).pvalue
        else:
            # One baseline run: scipy's sample variance of a single value is undefined, so use the
            # summary-statistics form where it carries weight zero (pooled variance = candidate's).
            s_a, n_a = float(np.std(x, ddof=1)), len(x)
            res = None

            def p(target: float, alt: str) -> float:
                return sps.ttest_ind_from_stats(
                    x.mean() - target, s_a, n_a, y[0], 0.0, 1, equal_var=True, alternative=alt
                ).pvalue
        if res is not None:
            ci = res.confidence_interval(level)
            low, high = float(ci.low) - (ref if design == "constant" else 0.0), float(ci.high) - (
                ref if design == "constant" else 0.0
            )
        else:
            half = float(sps.t.ppf(0.5 + level / 2, df)) * se
            low, high = estimate - half, estimate + half
        return Comparison(test, design, estimate, low, high, len(x), n_b, df, sd, False, g_est, g_low, g_high, p)

    rng_seed = seed
    if test == "bootstrap":
        rng = np.random.default_rng(rng_seed)
        if paired_like:
            data: tuple[np.ndarray, ...] = (diffs,)
            statistic: Callable[..., np.ndarray] = _mean
        else:
            data, statistic = (x, y), _diff_of_means
        method = "BCa" if (paired_like or len(y) >= 2) else "percentile"
        res = sps.bootstrap(data, statistic, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=level,
                            method=method, random_state=rng)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isfinite(low) and math.isfinite(high)):
            rng = np.random.default_rng(rng_seed)
            res = sps.bootstrap(data, statistic, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=level,
                                method="percentile", random_state=rng)
            low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        dist = np.asarray(res.bootstrap_distribution)

        def p(target: float, alt: str) -> float:
            # Bootstrap p-value: share of resampled effects on the null side (+1 so it is never 0).
            hits = np.sum(dist <= target) if alt == "greater" else np.sum(dist >= target)
            return float((hits + 1) / (len(dist) + 1))

        return Comparison(test, design, estimate, low, high, len(x), n_b, df, sd, low == high,
                          g_est, g_low, g_high, p)

    # Permutation: p-values from scipy's permutation_test (exact for small n); the interval shown is
    # the t interval of the same design, since a permutation test by itself gives no interval.
    t_side = compare(a, b, constant=constant, design=design, test="t", level=level)

    def p(target: float, alt: str) -> float:
        rng = np.random.default_rng(rng_seed)
        if paired_like:
            res = sps.permutation_test((diffs - target,), _mean, permutation_type="samples", alternative=alt,
                                       n_resamples=PERMUTATION_RESAMPLES, vectorized=True, random_state=rng)
        else:
            res = sps.permutation_test((x - target, y), _diff_of_means, permutation_type="independent",
                                       alternative=alt, n_resamples=PERMUTATION_RESAMPLES, vectorized=True,
                                       random_state=rng)
        return float(res.pvalue)

    return Comparison(test, design, estimate, t_side.ci_low, t_side.ci_high, len(x), n_b, t_side.df, sd, False,
                      g_est, g_low, g_high, p)


# --- Power and sample size -----------------------------------------------------------------------


def _se_unit(design: str, n_a: int, n_b: int) -> tuple[float, float]:
    """(standard error per unit SD, degrees of freedom) of a t design."""
    if design in ("constant", "paired"):
        return math.sqrt(1.0 / n_a), float(n_a - 1)
    return math.sqrt(1.0 / n_a + 1.0 / n_b), float(n_a + n_b - 2)


def power(*, effect: float, sd: float, design: str, n_a: int, n_b: int = 0, alpha: float = ALPHA) -> float | None:
    """Probability that the one-sided t-test at `alpha` detects a true improvement `effect` (noncentral t)."""
    if sd is None or not sd > 0 or n_a < 2 or (design in ("pooled", "welch") and n_a + n_b < 3):
        return None
    unit, df = _se_unit("pooled" if design == "welch" else design, n_a, max(n_b, 1))
    ncp = effect / (sd * unit)
    return float(sps.nct.sf(sps.t.ppf(1 - alpha, df), df, ncp))


def sample_size(
    *, effect: float, sd: float, design: str, target_power: float = 0.8, alpha: float = ALPHA, n_b: int | None = None,
    max_n: int = 1000,
) -> int | None:
    """Smallest n per arm reaching target_power (baseline arm of size n too, unless n_b is fixed)."""
    if not effect > 0 or sd is None or not sd > 0:
        return None
    for n in range(2, max_n + 1):
        achieved = power(effect=effect, sd=sd, design=design, n_a=n, n_b=n if n_b is None else n_b, alpha=alpha)
        if achieved is not None and achieved >= target_power:
            return n
    return None


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float | None, int]:
    """Pooled within-group SD of several groups (each group one configuration, varying only the seed)."""
    ss, df, n = 0.0, 0, 0
    for g in groups:
        if len(g) >= 2:
            arr = _arr(g)
            ss += float(np.sum((arr - arr.mean()) ** 2))
            df += len(g) - 1
            n += len(g)
    return (math.sqrt(ss / df) if df else None), n


# --- Many hypotheses -----------------------------------------------------------------------------


def bh_qvalues(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values)."""
    if not len(pvalues):
        return []
    return [float(q) for q in sps.false_discovery_control(np.asarray(pvalues, dtype=float), method="bh")]
