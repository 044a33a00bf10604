"""experiments.stats against scipy.stats and textbook formulas on random cases (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import stats as sps

from experiments import stats as st

finite = hs.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False)


def _spread(values: list[float]) -> bool:
    return len(values) >= 2 and np.std(values) > 1e-6 * max(1.0, max(abs(v) for v in values))


samples = hs.lists(finite, min_size=2, max_size=12).filter(_spread)
FAST = settings(max_examples=25, deadline=None)


@FAST
@given(samples, samples)
def test_welch_matches_scipy(a, b):
    c = st.compare(a, b, design="welch")
    res = sps.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert c.estimate == pytest.approx(np.mean(a) - np.mean(b), abs=1e-9)
    assert (c.ci_low, c.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    greater = sps.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    assert c.p_value(0.0, "greater") == pytest.approx(greater)
    assert c.p_value(0.0, "less") == pytest.approx(sps.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)


@FAST
@given(samples, samples, finite)
def test_pooled_matches_scipy_with_a_shifted_target(a, b, target):
    c = st.compare(a, b, design="pooled")
    ci = sps.ttest_ind(a, b).confidence_interval(0.95)
    assert (c.ci_low, c.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    expected = sps.ttest_ind(np.asarray(a) - target, b, alternative="greater").pvalue
    assert c.p_value(target, "greater") == pytest.approx(expected)


@FAST
@given(samples, finite)
def test_one_baseline_run_pools_the_candidates_variance(a, base):
    c = st.compare(a, [base])
    assert c.design == "pooled" and c.df == len(a) - 1
    s, n = float(np.std(a, ddof=1)), len(a)
    se = s * math.sqrt(1 / n + 1)
    t = (np.mean(a) - base) / se
    assert c.p_value(0.0, "greater") == pytest.approx(sps.t.sf(t, n - 1), rel=1e-6, abs=1e-12)
    half = sps.t.ppf(0.975, n - 1) * se
    assert c.ci_low == pytest.approx(np.mean(a) - base - half) and c.ci_high == pytest.approx(np.mean(a) - base + half)
    # Same as scipy's two-sample test from summary statistics with the baseline weighted zero.
    res = sps.ttest_ind_from_stats(np.mean(a), s, n, base, 0.0, 1, alternative="greater")
    assert c.p_value(0.0, "greater") == pytest.approx(res.pvalue)


@FAST
@given(hs.integers(min_value=2, max_value=10).flatmap(
    lambda n: hs.tuples(hs.lists(finite, min_size=n, max_size=n), hs.lists(finite, min_size=n, max_size=n))
).filter(lambda ab: _spread([x - y for x, y in zip(*ab, strict=True)])))
def test_paired_matches_ttest_rel(ab):
    a, b = ab
    c = st.compare(a, b, design="paired")
    res = sps.ttest_rel(a, b)
    ci = res.confidence_interval(0.95)
    assert (c.ci_low, c.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert c.p_value(0.0, "greater") == pytest.approx(sps.ttest_rel(a, b, alternative="greater").pvalue)


@FAST
@given(samples, finite)
def test_constant_matches_ttest_1samp(a, constant):
    c = st.compare(a, constant=constant)
    ci = sps.ttest_1samp(a, constant).confidence_interval(0.95)
    assert c.ci_low == pytest.approx(ci.low - constant, abs=1e-9)
    assert c.ci_high == pytest.approx(ci.high - constant, abs=1e-9)
    assert c.p_value(0.5, "less") == pytest.approx(sps.ttest_1samp(a, constant + 0.5, alternative="less").pvalue)


def test_typed_in_constant_is_not_deduplicated():
    assert st.mean([0.70, 0.70, 0.90]) == pytest.approx(0.7667, abs=1e-4)


@FAST
@given(samples, samples)
def test_hedges_g_against_formula_and_noncentral_t(a, b):
    g, low, high = st.hedges_g(a, b)
    na, nb = len(a), len(b)
    df = na + nb - 2
    sp = math.sqrt(((na - 1) * np.var(a, ddof=1) + (nb - 1) * np.var(b, ddof=1)) / df)
    d = (np.mean(a) - np.mean(b)) / sp
    j = math.gamma(df / 2) / (math.sqrt(df / 2) * math.gamma((df - 1) / 2)) if df < 300 else 1 - 3 / (4 * df - 1)
    assert g == pytest.approx(d * j, rel=1e-6)
    if math.isfinite(low):
        scale = math.sqrt(1 / na + 1 / nb)
        t_obs = d / scale
        # The interval's ends are the noncentrality parameters that put t_obs at the 97.5th / 2.5th percentile.
        assert sps.nct.cdf(t_obs, df, low / scale / j) == pytest.approx(0.975, abs=1e-6)
        assert sps.nct.cdf(t_obs, df, high / scale / j) == pytest.approx(0.025, abs=1e-6)
        assert low < g < high


def test_bootstrap_matches_scipy_bootstrap_with_the_same_seed():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 1, 8), rng.normal(0, 1, 8)
    c = st.compare(a, b, design="welch", test="bootstrap", seed=11)
    ref = sps.bootstrap((a, b), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                        n_resamples=st.BOOTSTRAP_RESAMPLES, random_state=np.random.default_rng(11))
    ci = ref.confidence_interval
    assert (c.ci_low, c.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    dist = ref.bootstrap_distribution
    assert c.p_value(0.0, "greater") == pytest.approx((np.sum(dist <= 0) + 1) / (len(dist) + 1))


@FAST
@given(hs.lists(finite, min_size=2, max_size=7).filter(_spread))
def test_sign_flip_permutation_matches_scipy(d):
    c = st.compare(d, constant=0.0, test="permutation")
    ref = sps.permutation_test((np.asarray(d),), np.mean, permutation_type="samples", alternative="greater")
    assert c.p_value(0.0, "greater") == pytest.approx(ref.pvalue)


def test_two_sample_permutation_matches_scipy():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1, 1, 5), rng.normal(0, 1, 4)
    c = st.compare(a, b, design="welch", test="permutation")
    ref = sps.permutation_test((a, b), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                               alternative="greater", permutation_type="independent")
    assert c.p_value(0.0, "greater") == pytest.approx(ref.pvalue)


def test_zero_width_never_supports():
    c = st.compare([0.8, 0.8, 0.8], constant=0.5)
    assert c.zero_width and c.p_value(0.0, "greater") == 1.0 and c.ci_low == c.ci_high


@FAST
@given(hs.floats(min_value=0.1, max_value=3), hs.integers(min_value=2, max_value=40),
       hs.sampled_from(["constant", "paired", "pooled"]))
def test_power_matches_noncentral_t_and_sample_size_is_minimal(effect, n, design):
    p = st.power(effect=effect, sd=1.0, design=design, n_a=n, n_b=n)
    df = n - 1 if design != "pooled" else 2 * n - 2
    ncp = effect * math.sqrt(n) if design != "pooled" else effect / math.sqrt(2 / n)
    assert p == pytest.approx(sps.nct.sf(sps.t.ppf(0.975, df), df, ncp))
    needed = st.sample_size(effect=effect, sd=1.0, design=design)
    assert st.power(effect=effect, sd=1.0, design=design, n_a=needed, n_b=needed) >= 0.8
    if needed > 2:
        assert st.power(effect=effect, sd=1.0, design=design, n_a=needed - 1, n_b=needed - 1) < 0.8


@FAST
@given(hs.lists(hs.floats(min_value=0, max_value=1), min_size=1, max_size=30))
def test_bh_qvalues_match_scipy_and_definition(ps):
    q = st.bh_qvalues(ps)
    assert q == pytest.approx(list(sps.false_discovery_control(ps)))
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    # Definition: q_(i) = min over j >= i of p_(j) * m / j, capped at 1.
    for rank, i in enumerate(order, start=1):
        expected = min(min(ps[order[j - 1]] * m / j for j in range(rank, m + 1)), 1.0)
        assert q[i] == pytest.approx(expected)


def test_summarize_and_welch_interval_match_scipy():
    s = st.summarize([0.80, 0.82, 0.84])
    ci = sps.ttest_1samp([0.80, 0.82, 0.84], 0.82).confidence_interval(0.95)
    assert (s.ci_low, s.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    d = st.welch_interval([0.80, 0.81, 0.82], [0.70, 0.72, 0.74])
    assert d.df == pytest.approx(50 / 17)


def test_pooled_sd_over_groups():
    sd, n = st.pooled_sd([[1.0, 3.0], [10.0, 12.0, 14.0], [5.0]])
    assert n == 5 and sd == pytest.approx(math.sqrt((2 + 8) / 3))
