"""repalign.stats: permutation nulls, calibrated scores, subsampling intervals, reliability warnings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import repalign.metrics as M
from repalign.errors import RepalignError
from repalign.stats import (
    STATS_COLUMNS,
    check_reliability,
    holm,
    participation_ratio,
    permutation_test,
    permute_state,
    stats_columns,
    subsample_interval,
    subsample_intervals,
)

ALL_METRICS = [
    ("mknn", {"k": 5}), ("cycle_knn", {"k": 4}), ("lcs_knn", {"k": 4}), ("edit_distance_knn", {"k": 4}),
    ("cknna", {"k": 5}), ("cka", {}), ("unbiased_cka", {}), ("cka_rbf", {}), ("svcca_platonic", {"dim": 3}), ("svcca", {}), ("dcor", {}),
]


def shared_layers(n, dims, seed, noise=0.3, latent=None):
    """Layers that all read the same latent factors (plus noise): aligned within and across models."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 3)) if latent is None else latent
    return [Z @ rng.standard_normal((3, d)) + noise * rng.standard_normal((n, d)) for d in dims]


def independent_layers(rng, n, dims):
    return [rng.standard_normal((n, d)) for d in dims]


def brute_neighbours(X, k):
    """Reference neighbour lists: full inner-product matrix, self excluded, stable sort (ties to the lower index)."""
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


# ----------------------------------------------------------------------------- relabelling
def test_permuted_neighbour_lists_equal_a_fresh_search_on_permuted_rows():
    rng = np.random.default_rng(0)
    X = M.prepare(rng.standard_normal((60, 7)))  # continuous data: no exact ties
    perm = rng.permutation(60)
    state = M.get_metric("mknn").state(X, {"k": 6})
    moved = permute_state(state, perm)
    ordered, sims = moved.ordered()
    np.testing.assert_array_equal(ordered, brute_neighbours(X[perm], 6))
    np.testing.assert_allclose(sims, np.take_along_axis(X[perm] @ X[perm].T, ordered, axis=1))
    # the rule written out: new list of i = perm⁻¹ applied to the old list of perm[i]
    inverse = np.argsort(perm)
    for i in (0, 17, 59):
        assert list(moved.indices[i]) == sorted(inverse[j] for j in state.indices[perm[i]])


@pytest.mark.parametrize("metric, params", ALL_METRICS)
def test_relabelled_state_scores_equal_recomputation_on_permuted_data(metric, params):
    A = M.prepare(shared_layers(40, [6], seed=1)[0])
    B = M.prepare(shared_layers(40, [5], seed=2)[0])
    perm = np.random.default_rng(3).permutation(40)
    m = M.get_metric(metric)
    p = m.resolve(40, **params)
    relabelled = m.score(m.state(A, p), permute_state(m.state(B, p), perm), p)
    fresh = m.function(A, B[perm], **params)  # the public function on permuted rows: a full recomputation
    if m.is_knn and m.name != "cknna":
        assert relabelled == fresh  # exact: integer counts on lists that are identical without ties
    else:
        assert relabelled == pytest.approx(fresh, rel=1e-10, abs=1e-12)  # sums taken in another order


@pytest.mark.parametrize("metric", ["cka", "unbiased_cka"])
def test_relabelled_gram_states_of_wide_layers_equal_recomputation(metric):
    """N < D: linear CKA states hold an N×N Gram, which a permutation reorders in rows and columns."""
    rng = np.random.default_rng(6)
    A, B = M.prepare(rng.standard_normal((12, 30))), M.prepare(rng.standard_normal((12, 25)))
    perm = rng.permutation(12)
    m = M.get_metric(metric)
    p = m.resolve(12)
    state_b = m.state(B, p)
    assert state_b.gram is not None
    relabelled = m.score(m.state(A, p), permute_state(state_b, perm), p)
    assert relabelled == pytest.approx(m.function(A, B[perm]), rel=1e-10)


def test_permute_state_rejects_a_non_permutation():
    state = M.get_metric("mknn").state(M.prepare(np.random.default_rng(0).standard_normal((10, 3))), {"k": 2})
    with pytest.raises(RepalignError, match="permutation of 0..9"):
        permute_state(state, [0] * 10)
    with pytest.raises(RepalignError, match="permutation"):
        permute_state(state, np.arange(9))


# ----------------------------------------------------------------------------- permutation test
def reference_permutation_test(A, B, func, permutations, seed, alpha, **params):
    """Written from the definitions: recompute every score from scratch on permuted rows of B."""
    A = [M.prepare(a) for a in A]
    B = [M.prepare(b) for b in B]
    observed = np.array([[func(a, b, **params) for b in B] for a in A])
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(permutations):
        perm = rng.permutation(A[0].shape[0])
        null.append([[func(a, b[perm], **params) for b in B] for a in A])
    null = np.array(null)
    p = (1 + (null >= observed).sum(axis=0)) / (1 + permutations)
    # calibration of Groeger, Wen & Brbic (2026): tau = the ceil((1 - alpha)(T + 1))-th smallest of observed and null
    combined = np.sort(np.concatenate([observed[None], null]), axis=0)
    q = combined[int(np.ceil((1 - alpha) * (permutations + 1))) - 1]
    calibrated = np.clip((observed - q) / (1 - q), 0, 1)
    null_max = null.max(axis=(1, 2))
    p_best = (1 + np.sum(null_max >= observed.max())) / (1 + permutations)
    return observed, null, p, calibrated, null_max, p_best


@pytest.mark.parametrize("metric, func, params", [("mknn", M.mutual_knn, {"k": 4}), ("cka", M.cka, {}), ("unbiased_cka", M.unbiased_cka, {})])
def test_permutation_test_equals_a_from_scratch_reference(metric, func, params):
    # weakly aligned layers, so that p-values and calibrated scores are neither all minimal nor all zero
    A = shared_layers(30, [5, 4], seed=4, noise=2.0)
    B = shared_layers(30, [6, 3, 5], seed=5, noise=2.0)
    res = permutation_test(A, B, metric, permutations=30, seed=7, alpha=0.1, **params)
    observed, null, p, calibrated, null_max, p_best = reference_permutation_test(A, B, func, 30, 7, 0.1, **params)
    np.testing.assert_allclose(res.scores, observed, rtol=1e-12)
    np.testing.assert_allclose(res.null, null, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(res.p_value, p)
    np.testing.assert_allclose(res.null_mean, null.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.calibrated, calibrated, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.null_max, null_max, rtol=1e-9, atol=1e-12)
    assert res.p_value_best == p_best
    assert res.best == np.unravel_index(np.argmax(observed), observed.shape)
    assert (res.permutations, res.seed, res.alpha, res.n_samples) == (30, 7, 0.1, 30)
    assert 0 < p.min() and p.max() > 1 / 31  # the case is not degenerate


@pytest.mark.parametrize("metric, func", [("cka", M.cka), ("unbiased_cka", M.unbiased_cka)])
def test_linear_cka_null_from_grams_equals_the_reference(metric, func):
    """N ≥ D but N < Da·Db: the null loop switches linear CKA from centred features to N×N Grams."""
    from repalign.stats import _gram_states

    A = shared_layers(200, [150], seed=30, noise=3.0)
    B = shared_layers(200, [140], seed=31, noise=3.0)
    resolved = M.resolve_metrics([metric], 200, {})
    a, b = (M.layer_state(X, resolved) for X in (A[0], B[0]))
    assert a.states[0].gram is None
    assert all(layer.states[0].gram is not None for layer in sum(_gram_states([a], [b], 200), []))
    res = permutation_test(A, B, metric, permutations=4, seed=2)
    _, null, p, calibrated, _, _ = reference_permutation_test(A, B, func, 4, 2, 0.05)
    np.testing.assert_allclose(res.null, null, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(res.p_value, p)


def test_scores_and_params_match_the_layer_engine():
    A = shared_layers(30, [5, 4], seed=8)
    B = shared_layers(30, [6, 3], seed=9)
    res = permutation_test(A, B, "cknna", permutations=5, k=4, clip_quantile=0.95, names_a=["x", "y"])
    al = M.align_layers(A, B, "cknna", k=4, clip_quantile=0.95)
    np.testing.assert_array_equal(res.scores, al.scores)
    assert res.params == al.params
    assert res.metric == "cknna" and res.names_a == ["x", "y"] and res.names_b == ["0", "1"]


def test_strongly_aligned_layers_reach_the_smallest_p_value():
    latent = np.random.default_rng(10).standard_normal((50, 3))
    A = shared_layers(50, [6, 8], seed=11, noise=0.05, latent=latent)
    B = shared_layers(50, [5, 7], seed=12, noise=0.05, latent=latent)
    for metric in ("mknn", "cka"):
        res = permutation_test(A, B, metric, permutations=49, seed=1)
        np.testing.assert_array_equal(res.p_value, np.full((2, 2), 1 / 50))
        assert res.p_value_best == 1 / 50
        assert (res.calibrated > 0.3).all() and res.calibrated_best > 0.3


def test_identical_layers_calibrate_to_one():
    A = shared_layers(40, [6, 5], seed=13)
    res = permutation_test(A, A, "mknn", permutations=20, k=5)
    np.testing.assert_array_equal(np.diag(res.scores), [1.0, 1.0])
    np.testing.assert_array_equal(np.diag(res.calibrated), [1.0, 1.0])
    assert res.calibrated_best == 1.0


def test_null_means_sit_at_the_chance_levels():
    rng = np.random.default_rng(14)
    A = [rng.standard_normal((60, 5))]
    B = [rng.standard_normal((60, 4))]
    res = permutation_test(A, B, "mknn", permutations=400, seed=2, k=6)
    assert res.chance_level == pytest.approx(6 / 59)
    # under random relabelling the expectation of mknn is exactly k/(N-1)
    assert abs(res.null_mean[0, 0] - 6 / 59) < 4 * res.null[:, 0, 0].std() / np.sqrt(400)
    res = permutation_test(A, B, "unbiased_cka", permutations=400, seed=2)
    assert res.chance_level == 0.0
    assert abs(res.null_mean[0, 0]) < 4 * res.null[:, 0, 0].std() / np.sqrt(400)


def test_best_pair_p_value_is_never_below_its_single_pair_p_value():
    rng = np.random.default_rng(15)
    A = independent_layers(rng, 30, [4, 4, 4])
    B = independent_layers(rng, 30, [4, 4, 4])
    res = permutation_test(A, B, "cka", permutations=99, seed=3)
    i, j = res.best
    assert res.p_value_best >= res.p_value[i, j]
    assert (res.null_max >= res.null[:, i, j]).all()


def test_seed_makes_the_test_reproducible():
    rng = np.random.default_rng(16)
    A, B = independent_layers(rng, 25, [4]), independent_layers(rng, 25, [3])
    first = permutation_test(A, B, "mknn", permutations=20, seed=5, k=3)
    np.testing.assert_array_equal(first.null, permutation_test(A, B, "mknn", permutations=20, seed=5, k=3).null)
    assert not np.array_equal(first.null, permutation_test(A, B, "mknn", permutations=20, seed=6, k=3).null)
    drawn = permutation_test(A, B, "mknn", permutations=20, seed=None, k=3)
    np.testing.assert_array_equal(drawn.null, permutation_test(A, B, "mknn", permutations=20, seed=drawn.seed, k=3).null)


def rejection_bounds(repeats, level=0.05, confidence=0.999):
    tail = (1 - confidence) / 2
    return sps.binom.ppf(tail, repeats, level), sps.binom.ppf(1 - tail, repeats, level)


@pytest.mark.parametrize("metric, params, n", [("cka", {}, 20), ("mknn", {"k": 5}, 40)])
def test_type_one_error_is_nominal_for_single_pairs_and_the_best_pair(metric, params, n):
    """Independent data: p <= 0.05 in about 5% of repeats, for one pair and for the best of 2x2 pairs."""
    repeats = 200
    single = best = 0
    for r in range(repeats):
        rng = np.random.default_rng(1000 + r)
        res = permutation_test(independent_layers(rng, n, [4, 4]), independent_layers(rng, n, [4, 4]), metric, permutations=99, seed=r, **params)
        single += res.p_value[0, 0] <= 0.05
        best += res.p_value_best <= 0.05
    low, high = rejection_bounds(repeats)
    assert low <= single <= high, (single, low, high)
    assert low <= best <= high, (best, low, high)


def test_uncorrected_best_pair_would_be_inflated():
    """Why the max null matters: the single-pair p-value of the best of 4x4 pairs rejects far too often."""
    naive = corrected = 0
    for r in range(40):
        rng = np.random.default_rng(2000 + r)
        res = permutation_test(independent_layers(rng, 16, [3] * 4), independent_layers(rng, 16, [3] * 4), "cka", permutations=39, seed=r)
        naive += res.p_value[res.best] <= 0.05
        corrected += res.p_value_best <= 0.05
    assert naive >= 10 and corrected <= 6


# ----------------------------------------------------------------------------- subsampling intervals
def test_bootstrap_with_replacement_inflates_mknn_and_knn_metrics_get_no_interval():
    rng = np.random.default_rng(20)
    n, k = 100, 10
    X, Y = M.prepare(rng.standard_normal((n, 8))), M.prepare(rng.standard_normal((n, 8)))
    full = M.mutual_knn(X, Y, k=k)
    boot = []
    for _ in range(30):
        rows = rng.integers(0, n, size=n)  # with replacement: copies of a sample are each other's nearest neighbours
        boot.append(M.mutual_knn(X[rows] + 0.0, Y[rows] + 0.0, k=k))
    boot = np.array(boot)
    assert np.quantile(boot, 0.025) > full + 0.05  # the bootstrap distribution lies entirely above the data's score
    # at fixed k a subsample estimates another quantity (chance k/(m-1) instead of k/(N-1)): no interval, and why
    for metric in ("mknn", "cknna", "cka", "dcor", "svcca"):
        resolved = M.resolve_metrics([metric], n, {"k": k} if M.get_metric(metric).is_knn else {})
        low, high, note = subsample_intervals([X], [Y], resolved, n_subsamples=5)[0]
        assert np.isnan(low).all() and np.isnan(high).all() and note.startswith(f"no valid interval for {M.get_metric(metric).name}")


def draw_pair(rng, n, width, loadings):
    """X (n, width) Gaussian and Y = X·loadings + unit noise: population values are known."""
    X = rng.standard_normal((n, width))
    return X, X @ loadings + rng.standard_normal((n, loadings.shape[1]))


def test_interval_coverage_is_nominal_where_intervals_are_offered():
    """Nominal 90% intervals cover the population value in 85-95% of 200 simulated data sets.

    X (N=150, width 40) Gaussian, Y = XW + E: linear CKA's population value (the target of unbiased
    CKA) is ‖W‖²_F / (‖I‖_F ‖WᵀW + I‖_F); the bias-corrected distance correlation's target is its
    value on 4,000 samples (its estimate is unbiased)."""
    n, width, repeats = 150, 40, 200
    loadings = np.random.default_rng(123).standard_normal((width, 4)) * 0.15
    population = {"unbiased_cka": np.sum(loadings**2) / np.sqrt(width * np.sum((loadings.T @ loadings + np.eye(4)) ** 2))}
    population["bias_corrected_distance_correlation"] = M.bias_corrected_distance_correlation(
        *draw_pair(np.random.default_rng(9), 4000, width, loadings))
    resolved = M.resolve_metrics(list(population), n, {})
    hits = dict.fromkeys(population, 0)
    for r in range(repeats):
        X, Y = draw_pair(np.random.default_rng(r), n, width, loadings)
        for (metric, _), (low, high, note) in zip(resolved, subsample_intervals([X], [Y], resolved, ci=0.9, n_subsamples=40,
                                                                                seed=r, normalize=None)):
            assert note == ""
            hits[metric.name] += low[0, 0] <= population[metric.name] <= high[0, 0]
    for name, count in hits.items():
        assert 0.85 * repeats <= count <= 0.95 * repeats, (name, count / repeats)


def test_biased_estimators_sit_far_from_their_population_value_so_get_no_interval():
    """Independent 512-wide layers at N = 48: population CKA and dCor are 0, the biased estimates
    are near 1; an interval around them could not cover, so none is offered."""
    rng = np.random.default_rng(8)
    X, Y = rng.standard_normal((48, 512)), rng.standard_normal((48, 512))
    assert M.cka(X, Y) > 0.8 and M.distance_correlation(X, Y) > 0.9
    assert abs(M.unbiased_cka(X, Y)) < 0.1 and abs(M.bias_corrected_distance_correlation(X, Y)) < 0.1
    for metric in ("cka", "dcor"):
        low, high = subsample_interval([X], [Y], metric, n_subsamples=5)
        assert np.isnan(low).all() and np.isnan(high).all()


def test_interval_brackets_every_metric_that_has_one_and_is_reproducible():
    A = shared_layers(40, [6, 5], seed=21, noise=1.0)
    B = shared_layers(40, [4], seed=22, noise=1.0)
    for metric, params in ALL_METRICS:
        low, high = subsample_interval(A, B, metric, n_subsamples=10, seed=3, **params)
        full = M.align_layers(A, B, metric, **params).scores
        assert low.shape == high.shape == (2, 1)
        m = M.get_metric(metric)
        if not m.has_interval(m.resolve(40, **params)):
            assert np.isnan(low).all() and np.isnan(high).all(), metric
            continue
        assert (low <= full + 1e-12).all() and (full <= high + 1e-12).all(), metric
        assert (low >= m.bounds[0]).all() and (high <= m.bounds[1]).all(), metric  # clipped to the metric's range
    again = subsample_interval(A, B, "unbiased_cka", n_subsamples=10, seed=3)
    np.testing.assert_array_equal(again[0], subsample_interval(A, B, "unbiased_cka", n_subsamples=10, seed=3)[0])


def test_interval_is_clipped_to_the_metric_range():
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((30, 2))
    A, B = [Z + 0.01 * rng.standard_normal((30, 2))], [Z + 0.01 * rng.standard_normal((30, 2))]
    low, high = subsample_interval(A, B, "unbiased_cka", n_subsamples=20, normalize=None)
    assert high[0, 0] <= 1.0 and low[0, 0] >= -1.0


def test_interval_rejects_bad_settings():
    A = shared_layers(20, [4], seed=23)
    with pytest.raises(RepalignError, match="too small for unbiased_cka"):
        subsample_interval(A, A, "unbiased_cka", fraction=0.16)
    with pytest.raises(RepalignError, match="fraction"):
        subsample_interval(A, A, "unbiased_cka", fraction=1.0)
    with pytest.raises(RepalignError, match="keeps m=1"):
        subsample_interval(A, A, "unbiased_cka", fraction=0.09)
    with pytest.raises(RepalignError, match="ci"):
        subsample_interval(A, A, "unbiased_cka", ci=95)
    with pytest.raises(RepalignError, match="n_subsamples"):
        subsample_interval(A, A, "unbiased_cka", n_subsamples=1)


# ----------------------------------------------------------------------------- validation
def test_permutation_test_rejects_bad_input():
    A = shared_layers(20, [4, 3], seed=24)
    with pytest.raises(RepalignError, match="permutations"):
        permutation_test(A, A, permutations=0)
    with pytest.raises(RepalignError, match="alpha"):
        permutation_test(A, A, alpha=1.5)
    with pytest.raises(RepalignError, match="seed"):
        permutation_test(A, A, seed=-1)
    with pytest.raises(RepalignError, match="same samples"):
        permutation_test(A, [np.ones((19, 3))])
    with pytest.raises(RepalignError, match="single 2-D matrix"):
        permutation_test(A[0], A)
    with pytest.raises(RepalignError, match="unknown metric"):
        permutation_test(A, A, "nope")
    with pytest.raises(RepalignError, match="k not accepted by metric"):
        permutation_test(A, A, "cka", k=3)
    with pytest.raises(RepalignError, match="NaN"):
        permutation_test(A, [np.full((20, 3), np.nan)])
    with pytest.raises(RepalignError, match="names_a"):
        permutation_test(A, A, names_a=["only one"])


# ----------------------------------------------------------------------------- reliability
def test_participation_ratio_equals_the_eigenvalue_formula():
    rng = np.random.default_rng(25)
    for shape in ((50, 6), (8, 30)):  # both Gram orientations
        X = rng.standard_normal(shape) * rng.uniform(0.1, 3.0, shape[1])
        lam = np.linalg.eigvalsh(np.cov(X, rowvar=False))
        assert participation_ratio(X) == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-10)
    X = rng.standard_normal((40, 5))
    Q = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    assert participation_ratio(X @ Q * 7.0 + 3.0) == pytest.approx(participation_ratio(X), rel=1e-10)  # rotation, scale, shift
    assert participation_ratio(np.outer(rng.standard_normal(30), rng.standard_normal(6))) == pytest.approx(1.0)
    with pytest.raises(RepalignError, match="zero variance"):
        participation_ratio(np.ones((5, 3)))


def test_check_reliability_warns_only_where_it_should():
    rng = np.random.default_rng(26)
    assert check_reliability(500, "mknn", {"k": 10}) == []
    (warning,) = check_reliability(50, "mknn", {"k": 10})
    assert "N=50" in warning and "k=10" in warning and "0.204" in warning
    spiky = np.c_[100 * rng.standard_normal((80, 1)), rng.standard_normal((80, 30))]  # one outlier dimension
    healthy = rng.standard_normal((80, 30))
    warnings = check_reliability(80, "cka", {}, layers={"spiky": spiky, "healthy": healthy}, normalize=None)
    assert len(warnings) == 1 and "'spiky'" in warnings[0] and "meaningless" in warnings[0]
    assert check_reliability(80, "cka", {}, layers=[spiky], normalize=None, clip_quantile=0.95) == []
    assert check_reliability(80, "mknn", {"k": 5}, layers=[spiky]) == []  # the PR rule is for linear CKA only
    (warning,) = check_reliability(500, "cka", {}, permutations=10)
    assert "0.0909" in warning and "19 permutations" in warning
    with pytest.raises(RepalignError, match="n_samples=80"):
        check_reliability(80, "cka", {}, layers=[healthy[:40]])


def test_summary_prints_chance_level_beside_scores():
    A = shared_layers(30, [4], seed=27)
    res = permutation_test(A, A, "mknn", permutations=9, k=3, names_a=["l0"], names_b=["m0"])
    text = res.summary()
    assert f"chance level {3 / 29:.4f}" in text and "l0 ~ m0: score 1.0000" in text and "best l0 ~ m0" in text


# ----------------------------------------------------------------------------- table columns
def test_stats_columns_line_up_with_the_layer_table():
    A = shared_layers(30, [4, 5, 3], seed=28, noise=1.0)
    B = shared_layers(30, [6, 2], seed=29, noise=1.0)
    names_a, names_b = ["a0", "a1", "a2"], ["b0", "b1"]
    res = permutation_test(A, B, "unbiased_cka", permutations=19, names_a=names_a, names_b=names_b)
    interval = subsample_interval(A, B, "unbiased_cka", n_subsamples=5)
    table = pd.concat([M.align_layers(A, B, "unbiased_cka", names_a=names_a, names_b=names_b).to_frame("A", "B"),
                       stats_columns(res, interval)], axis=1)
    assert list(table.columns[-len(STATS_COLUMNS):]) == list(STATS_COLUMNS)
    for i, a in enumerate(names_a):
        for j, b in enumerate(names_b):
            row = table[(table.layer_a == a) & (table.layer_b == b)].iloc[0]
            assert row.score == res.scores[i, j]
            assert (row.p_value, row.null_mean, row.calibrated) == (res.p_value[i, j], res.null_mean[i, j], res.calibrated[i, j])
            assert row.p_value_adjusted == res.p_value_adjusted[i, j] >= row.p_value
            assert (row.ci_low, row.ci_high) == (interval[0][i, j], interval[1][i, j])
            assert row.chance_level == 0.0
    # p_value_best only on the best pair's row, which the layer table's "best" column marks
    assert table.p_value_best.notna().sum() == 1
    assert table.loc[table.best, "p_value_best"].iloc[0] == res.p_value_best
    assert table.loc[table.best, ["layer_a", "layer_b"]].values.tolist() == [[names_a[res.best[0]], names_b[res.best[1]]]]
    only_ci = stats_columns(interval=interval)
    assert only_ci.p_value.isna().all() and not only_ci.ci_low.isna().any()
    with pytest.raises(RepalignError, match="same layers"):
        stats_columns(res, (interval[0][:2], interval[1][:2]))
    with pytest.raises(RepalignError, match="needs"):
        stats_columns()


# ----------------------------------------------------------------------------- trained vs control seeds
def test_holm_equals_its_definition():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.2, 12)
    p[[2, 7]] = np.nan
    got = holm(p)
    valid = [i for i in range(p.size) if not np.isnan(p[i])]
    ranked = sorted(valid, key=lambda i: p[i])
    m = len(ranked)
    for r, i in enumerate(ranked):  # max over the first r+1 ranks of min(1, (m - j) p_(j))
        assert got[i] == pytest.approx(max(min(1.0, (m - j) * p[ranked[j]]) for j in range(r + 1)))
    assert np.isnan(got[[2, 7]]).all()
    assert (got[valid] >= p[valid]).all()
