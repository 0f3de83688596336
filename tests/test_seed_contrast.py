"""repalign.stats.seed_contrast: the rank test of a trained score against control seeds and its bounds.

Under H0 the trained score is one more draw from the controls' distribution, so its rank among the
n + 1 scores is uniform whatever that distribution is: P(p <= alpha) = floor(alpha·(n + 1))/(n + 1)
exactly. The simulations below check the implementation against that exact value (binomial bands),
for normal, Gumbel and log-normal (sigma = 1) controls; they call seed_contrast about 30,000 times
(~3 s)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps

from repalign.errors import RepalignError
from repalign.stats import min_draws, seed_contrast

DISTRIBUTIONS = {
    "normal": lambda rng, size: rng.normal(size=size),
    "gumbel": lambda rng, size: rng.gumbel(size=size),
    "lognormal": lambda rng, size: rng.lognormal(0.0, 1.0, size=size),
}
LEVELS = (0.01, 0.05, 0.1, 0.2, 0.5)


def exact_size(n: int, alpha: float) -> float:
    """P(p <= alpha) under H0 for continuous scores: the rank of x is uniform on 1..n+1."""
    return math.floor(alpha * (n + 1) + 1e-9) / (n + 1)


@pytest.mark.parametrize("n", [5, 10, 20])
@pytest.mark.parametrize("family", sorted(DISTRIBUTIONS))
def test_type_one_error_holds_for_skewed_controls(family, n):
    """x and the n controls drawn from the same distribution: the rejection rate at each level is
    the exact discrete-uniform value (<= alpha), within the 99.9% binomial band of 2,000 draws."""
    rng = np.random.default_rng(100 * n + sorted(DISTRIBUTIONS).index(family))
    draws = 2000
    scores = DISTRIBUTIONS[family](rng, (draws, n + 1))
    p = np.array([seed_contrast(row[0], row[1:]).p_value for row in scores])
    np.testing.assert_allclose(np.unique(p), np.arange(1, n + 2) / (n + 1))  # the p-values are the ranks
    for alpha in LEVELS:
        size = exact_size(n, alpha)
        assert size <= alpha
        low, high = sps.binom.ppf([0.0005, 0.9995], draws, size)
        assert low <= np.sum(p <= alpha) <= high, (family, n, alpha, np.mean(p <= alpha), size)


def test_the_t_prediction_test_it_replaces_was_anti_conservative_for_gumbel_controls():
    """Why a rank test: the one-sided t prediction test (n − 1 = 4 df) rejects about 8% of Gumbel nulls at 5%."""
    rng = np.random.default_rng(7)
    scores = rng.gumbel(size=(20000, 6))
    x, c = scores[:, 0], scores[:, 1:]
    t = (x - c.mean(axis=1)) / (c.std(axis=1, ddof=1) * math.sqrt(1 + 1 / 5))
    assert np.mean(sps.t.sf(t, 4) <= 0.05) > 0.07
    rank_p = (1 + np.sum(c >= x[:, None], axis=1)) / 6
    assert np.mean(rank_p <= 0.05) == 0.0  # 5 seeds: the smallest p is 1/6


def test_power_with_twenty_normal_seeds_four_sds_above():
    """p < 0.05 needs every one of 20 controls below x: Φ(4)^20 = 0.9994 exactly; simulated too."""
    assert sps.norm.cdf(4.0) ** 20 >= 0.90
    rng = np.random.default_rng(11)
    draws = 2000
    p = np.array([seed_contrast(4.0, rng.normal(size=20)).p_value for _ in range(draws)])
    assert np.mean(p < 0.05) >= 0.99
    # at 2 SDs the power is only Φ(2)^20 = 0.63
    p2 = np.array([seed_contrast(2.0, rng.normal(size=20)).p_value for _ in range(draws)])
    low, high = sps.binom.ppf([0.0005, 0.9995], draws, sps.norm.cdf(2.0) ** 20)
    assert low <= np.sum(p2 < 0.05) <= high


@pytest.mark.parametrize("n", [2, 5, 19, 20, 40])
def test_smallest_p_value(n):
    rng = np.random.default_rng(n)
    controls = rng.normal(size=n)
    top = seed_contrast(controls.max() + 1.0, controls)
    assert top.p_value == top.min_p_value == 1.0 / (n + 1)
    assert seed_contrast(controls.max(), controls).p_value == 2.0 / (n + 1)  # a tie counts against x
    assert seed_contrast(controls.min() - 1.0, controls).p_value == 1.0
    assert (top.ci_low > 0) if n >= 19 else (top.ci_low == -math.inf)  # 95%: needs 1/(n + 1) <= 0.05


def test_bound_is_the_test_inverted_on_random_inputs_with_ties():
    """ci_low > 0 exactly when p <= 1 − ci; the test of x − δ rejects exactly when δ < ci_low (ci_low
    itself not rejected); ci_high is the same for the mirrored scores; ±inf when n + 1 < 1/(1 − ci)."""
    rng = np.random.default_rng(5)
    for trial in range(400):
        n = int(rng.integers(2, 60))
        ci = float(rng.choice([0.8, 0.9, 0.95, 0.975, 0.99]))
        controls = rng.integers(0, 8, size=n).astype(float)  # few distinct values: many ties
        x = float(rng.integers(0, 10))
        res = seed_contrast(x, controls, ci=ci)
        alpha = 1.0 - ci
        assert (res.ci_low > 0) == (res.p_value <= alpha + 1e-12), (trial, res)
        if not math.isclose(alpha * (n + 1), round(alpha * (n + 1))):  # no p-value lands on alpha itself
            assert (res.ci_low > 0) == (res.p_value < alpha)
        if (n + 1) * alpha < 1 - 1e-9:
            assert res.ci_low == -math.inf and res.ci_high == math.inf
            continue
        assert res.ci_low <= res.ci_high
        for delta in np.arange(-12.0, 12.5, 0.5):  # halves and integers: every shift is exact in binary
            rejects = seed_contrast(x - delta, controls, ci=ci).p_value <= alpha + 1e-12
            assert rejects == (delta < res.ci_low), (trial, delta, res)
        mirrored = seed_contrast(-x, -controls, ci=ci)
        assert mirrored.ci_low == -res.ci_high and mirrored.ci_high == -res.ci_low


def test_bound_coverage_under_a_shift():
    """x = δ + a control draw: ci_low <= δ in at least ci of the cases (exactly 1 − floor(alpha(n+1))/(n+1))."""
    rng = np.random.default_rng(2)
    draws, n, delta = 2000, 20, 0.7
    scores = rng.lognormal(0.0, 1.0, size=(draws, n + 1))
    lows = np.array([seed_contrast(delta + row[0], row[1:]).ci_low for row in scores])
    covered = np.sum(lows <= delta)
    low, high = sps.binom.ppf([0.0005, 0.9995], draws, 1 - exact_size(n, 0.05))
    assert low <= covered <= high and 1 - exact_size(n, 0.05) >= 0.95


def test_fields_edges_and_bad_input():
    res = seed_contrast(0.3, [0.1, 0.2, 0.3, 0.6])
    assert res.difference == pytest.approx(0.3 - 0.3) and res.control_mean == pytest.approx(0.3)
    assert res.control_sd == pytest.approx(np.std([0.1, 0.2, 0.3, 0.6], ddof=1)) and res.n_seeds == 4
    assert res.p_value == 3 / 5 and res.ci == 0.95
    assert seed_contrast(0.3, [0.1, 0.1, 0.1]).p_value == 0.25  # no spread, above every control: still 1/(n+1)
    assert seed_contrast(0.1, [0.1, 0.1, 0.1]).p_value == 1.0
    assert seed_contrast(0.1 + 1e-15, [0.1, 0.05]).p_value == 2 / 3  # last-bit differences are ties
    wide = seed_contrast(1.0, np.arange(19.0) / 100, ci=0.95)  # 19 seeds: p = 1/20 = 0.05 is a rejection at 5%
    assert wide.p_value == 0.05 and wide.ci_low == pytest.approx(1.0 - 0.18)
    nine = seed_contrast(10.0, np.arange(9.0), ci=0.9)  # 1 − 0.9 is 0.0999... in binary; p = 0.1 still rejects
    assert nine.p_value == 0.1 and nine.ci_low == 2.0
    for controls, fragment in (([0.1], "at least 2 control seeds"), ([0.1, np.nan], "NaN or infinite")):
        with pytest.raises(RepalignError, match=fragment):
            seed_contrast(0.2, controls)
    with pytest.raises(RepalignError, match="ci="):
        seed_contrast(0.2, [0.1, 0.3], ci=1.0)



@pytest.mark.parametrize(("alpha", "exact"), [
    (0.05, Fraction(1, 20)), (0.01, Fraction(1, 100)), (0.1, Fraction(1, 10)), (0.2, Fraction(1, 5)),
    (0.5, Fraction(1, 2)), (0.3, Fraction(3, 10)), (0.07, Fraction(7, 100)), (0.001, Fraction(1, 1000)),
    (1 - 0.9, Fraction(1, 10)), (1 - 0.95, Fraction(1, 20)), (1 - 0.99, Fraction(1, 100)), (1 - 0.8, Fraction(1, 5)),
])
def test_min_draws_is_the_smallest_count_whose_smallest_p_reaches_alpha(alpha, exact):
    """min_draws is the smallest n with 1/(n + 1) <= alpha, alpha read as the decimal level it is
    written as (1 - 0.9 is 0.09999999999999998 in binary, the level 1/10), and the rank test agrees:
    with n controls all below the trained score its p-value is 1/(n + 1), within alpha and with a
    finite ci = 1 - alpha bound at min_draws seeds, above alpha and without a bound one seed fewer."""
    smallest = next(n for n in range(1, 10_000) if Fraction(1, n + 1) <= exact)
    assert min_draws(alpha) == smallest
    if smallest < 3:  # seed_contrast needs 2 seeds, also one fewer
        return
    at = seed_contrast(1.0, np.linspace(0.0, 0.5, smallest), ci=1.0 - alpha)
    assert at.p_value == pytest.approx(1.0 / (smallest + 1)) and at.p_value <= float(exact) + 1e-15
    assert math.isfinite(at.ci_low)
    fewer = seed_contrast(1.0, np.linspace(0.0, 0.5, smallest - 1), ci=1.0 - alpha)
    assert fewer.p_value > float(exact) and fewer.ci_low == -math.inf


def test_min_draws_refuses_a_level_outside_0_1():
    with pytest.raises(RepalignError, match="alpha"):
        min_draws(1.5)
