"""Procrustes, the shape metric, RSA, PWCCA, information imbalance and intrinsic dimension against
textbook float64 formulas written here, against peers' numbers (netrep, DADApy: tests/data) and
rsatoolbox, and their invariances."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sstats

from repalign.errors import RepalignError
from repalign.metrics.cca import pwcca
from repalign.metrics.imbalance import information_imbalance, information_imbalances
from repalign.metrics.intrinsic import intrinsic_dimension
from repalign.metrics.rsa import rsa
from repalign.metrics.shape import angular_shape_distance, procrustes, shape_similarity

DATA = Path(__file__).parent / "data"


def centred(X):
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n  # explicit centring matrix
    return H @ np.asarray(X, dtype=np.float64)


def inv_sqrt(S):
    w, V = np.linalg.eigh(S)
    return V @ np.diag(w ** -0.5) @ V.T


def pair(seed, n=60, dx=7, dy=9, noise=0.7):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dx))
    Y = X @ rng.standard_normal((dx, dy)) + noise * rng.standard_normal((n, dy))
    return X, Y


# ----------------------------------------------------------------------------- Procrustes and shape
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_procrustes_is_the_nuclear_norm_of_centred_unit_matrices(seed):
    X, Y = pair(seed)
    Xt, Yt = centred(X), centred(Y)
    Xt, Yt = Xt / np.sqrt(np.trace(Xt.T @ Xt)), Yt / np.sqrt(np.trace(Yt.T @ Yt))
    expected = np.linalg.svd(Xt.T @ Yt, compute_uv=False).sum()
    assert procrustes(X, Y) == pytest.approx(expected, abs=1e-10)
    # the best rotation: max_Q tr(Q^T Xt^T Yt) is reached at Q = U V^T (Schönemann 1966)
    Y7 = centred(Y[:, :7])
    Y7 /= np.linalg.norm(Y7)
    U, _, Vt = np.linalg.svd(Xt.T @ Y7)
    assert procrustes(X, Y[:, :7]) == pytest.approx(np.trace((U @ Vt).T @ Xt.T @ Y7), abs=1e-10)


def test_procrustes_is_one_under_rotation_scale_and_translation():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 6))
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert procrustes(X, 3.7 * X @ Q + rng.standard_normal(6)) == pytest.approx(1.0, abs=1e-12)
    assert procrustes(X, X @ rng.standard_normal((6, 6))) < 0.99  # not any linear map
    assert shape_similarity(X, X @ rng.standard_normal((6, 6)), whitening=1.0) == pytest.approx(1.0, abs=1e-9)


def netrep_pair(case):
    rs = np.random.RandomState(case["seed"])
    m, nx, ny = case["n_samples"], case["width_x"], case["width_y"]
    X = rs.randn(m, nx)
    return X, X[:, :min(nx, ny)] @ rs.randn(min(nx, ny), ny) + 0.8 * rs.randn(m, ny)


def test_shape_distance_matches_netrep_linear_metric():
    cases = json.loads((DATA / "netrep" / "linear_metric.json").read_text())
    assert len(cases) == 9
    for case in cases:
        X, Y = netrep_pair(case)
        assert angular_shape_distance(X, Y, whitening=1 - case["alpha"]) == pytest.approx(case["distance"], abs=1e-10)


@pytest.mark.parametrize("seed", [0, 3])
def test_shape_similarity_ends_are_procrustes_and_mean_canonical_correlation(seed):
    X, Y = pair(seed, n=80)
    assert shape_similarity(X, Y, whitening=0.0) == pytest.approx(procrustes(X, Y), abs=1e-12)
    # textbook CCA: singular values of Sxx^-1/2 Sxy Syy^-1/2
    Xc, Yc = centred(X), centred(Y)
    rho = np.linalg.svd(inv_sqrt(Xc.T @ Xc) @ Xc.T @ Yc @ inv_sqrt(Yc.T @ Yc), compute_uv=False)
    # full whitening: X_w has orthonormal columns (norm sqrt(dx)); cos = sum(rho) / sqrt(dx * dy)
    assert shape_similarity(X, Y, whitening=1.0) == pytest.approx(rho.sum() / np.sqrt(7 * 9), abs=1e-9)


def test_shape_similarity_refuses_bad_whitening():
    X, Y = pair(0)
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(RepalignError, match="whitening"):
            shape_similarity(X, Y, whitening=bad)


# ----------------------------------------------------------------------------- RSA
def textbook_rdm(X, rdm):
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    D = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        a, b = X[i], X[j]
        if rdm == "euclidean":
            d = np.sum((a - b) ** 2) / X.shape[1]
        elif rdm == "correlation":
            d = 1 - np.corrcoef(a, b)[0, 1]
        else:
            d = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        D[i, j] = D[j, i] = d
    return D[np.triu_indices(n, 1)]


def textbook_compare(a, b, how):
    if how == "pearson":
        return sstats.pearsonr(a, b)[0]
    if how == "spearman":
        return sstats.spearmanr(a, b)[0]
    if how == "cosine":
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    if how == "rho_a":
        ra, rb = sstats.rankdata(a), sstats.rankdata(b)
        m = len(a)
        return 12 * np.sum((ra - ra.mean()) * (rb - rb.mean())) / (m ** 3 - m)
    # tau_a: every pair of pairs, concordant minus discordant over all of them
    s = sum(np.sign(a[p] - a[q]) * np.sign(b[p] - b[q]) for p, q in itertools.combinations(range(len(a)), 2))
    return s / (len(a) * (len(a) - 1) / 2)


@pytest.mark.parametrize("rdm", ["correlation", "euclidean", "cosine"])
@pytest.mark.parametrize("how", ["pearson", "spearman", "cosine", "rho_a", "tau_a"])
def test_rsa_matches_the_textbook_rdm_and_comparison(rdm, how):
    X, Y = pair(1, n=18)
    expected = textbook_compare(textbook_rdm(X, rdm), textbook_rdm(Y, rdm), how)
    assert rsa(X, Y, rdm=rdm, compare=how) == pytest.approx(expected, abs=1e-10)


def test_rsa_ties_in_the_rdm_follow_rank_conventions():
    # a rounded RDM has many tied dissimilarities: tau_a counts ties in neither, rho_a uses average ranks
    rng = np.random.default_rng(2)
    X = rng.integers(0, 3, (16, 3)).astype(float)
    X[:, 0] += np.arange(16) % 2
    Y = X + rng.integers(0, 2, X.shape)
    for how in ("tau_a", "rho_a", "spearman"):
        expected = textbook_compare(textbook_rdm(X, "euclidean"), textbook_rdm(Y, "euclidean"), how)
        assert rsa(X, Y, rdm="euclidean", compare=how) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("rdm", ["correlation", "euclidean"])
@pytest.mark.parametrize("how", ["pearson", "spearman", "cosine", "rho_a", "tau_a"])
def test_rsa_matches_rsatoolbox(rdm, how):
    import rsatoolbox  # the `test` extra installs it (pinned in constraints-dev.txt)
    X, Y = pair(4, n=30)
    peer = {"pearson": "corr", "spearman": "spearman", "cosine": "cosine", "rho_a": "rho-a", "tau_a": "tau-a"}[how]
    rdms = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(Z), method=rdm) for Z in (X, Y)]
    expected = rsatoolbox.rdm.compare(rdms[0], rdms[1], method=peer)[0, 0]
    assert rsa(X, Y, rdm=rdm, compare=how) == pytest.approx(expected, abs=1e-10)


def test_rsa_is_unchanged_by_permuting_features_and_follows_permuted_samples():
    X, Y = pair(6, n=25)
    rng = np.random.default_rng(0)
    base = rsa(X, Y, rdm="euclidean", compare="spearman")
    assert rsa(X[:, rng.permutation(7)], Y[:, rng.permutation(9)], rdm="euclidean", compare="spearman") == pytest.approx(base, abs=1e-12)
    perm = rng.permutation(25)
    assert rsa(X[perm], Y[perm], rdm="euclidean", compare="spearman") == pytest.approx(base, abs=1e-12)
    assert abs(rsa(X, Y[perm], rdm="euclidean", compare="spearman")) < base


def test_rsa_errors_name_the_parameter():
    X, Y = pair(0)
    with pytest.raises(RepalignError, match="rdm='manhattan'"):
        rsa(X, Y, rdm="manhattan")
    with pytest.raises(RepalignError, match="compare='kendall'"):
        rsa(X, Y, compare="kendall")
    Z = X.copy()
    Z[3] = 1.0
    with pytest.raises(RepalignError, match="constant row"):
        rsa(Z, Y, rdm="correlation")


# ----------------------------------------------------------------------------- PWCCA
def textbook_pwcca_one_side(X, Y):
    """Morcos et al.: CCA of centred X, Y; weights of X's canonical variates by their projections on X's neurons."""
    Xc, Yc = centred(X), centred(Y)
    Sxx, Syy, Sxy = Xc.T @ Xc, Yc.T @ Yc, Xc.T @ Yc
    U, rho, _ = np.linalg.svd(inv_sqrt(Sxx) @ Sxy @ inv_sqrt(Syy), full_matrices=False)
    H = Xc @ inv_sqrt(Sxx) @ U  # canonical variates of X (columns), one per correlation
    H = H / np.linalg.norm(H, axis=0)
    alpha = np.abs(H.T @ Xc).sum(axis=1)
    return np.sum(alpha * rho) / np.sum(alpha)


@pytest.mark.parametrize("seed", [0, 1])
def test_pwcca_matches_the_textbook_weighting(seed):
    X, Y = pair(seed, n=90, dx=5, dy=8)
    assert pwcca(X, Y) == pytest.approx(textbook_pwcca_one_side(X, Y), abs=1e-10)  # X has fewer dimensions
    assert pwcca(Y, X) == pytest.approx(textbook_pwcca_one_side(X, Y), abs=1e-10)
    X, Y = pair(seed, n=90, dx=6, dy=6)
    both = 0.5 * (textbook_pwcca_one_side(X, Y) + textbook_pwcca_one_side(Y, X))
    assert pwcca(X, Y) == pytest.approx(both, abs=1e-10)
    assert pwcca(Y, X) == pytest.approx(both, abs=1e-10)


def test_pwcca_is_one_for_invertible_maps_and_lower_than_svcca_for_noise_directions():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 6))
    assert pwcca(X, X @ rng.standard_normal((6, 6)) + 2.0) == pytest.approx(1.0, abs=1e-10)
    # one strong shared direction, one weak unrelated one: the weighting favours the shared one
    s = rng.standard_normal(200)
    X = np.column_stack([10 * s, rng.standard_normal(200)])
    Y = np.column_stack([s + 0.1 * rng.standard_normal(200), rng.standard_normal(200)])
    rho = np.linalg.svd(inv_sqrt(centred(X).T @ centred(X)) @ centred(X).T @ centred(Y) @ inv_sqrt(centred(Y).T @ centred(Y)),
                        compute_uv=False)
    assert pwcca(X, Y) > rho.mean() + 0.15


# ----------------------------------------------------------------------------- information imbalance
def textbook_imbalance(X, Y):
    """Glielmo et al. 2022 with full distance matrices and explicit ranks (data without ties)."""
    n = len(X)
    dx = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    dy = np.sqrt(((Y[:, None] - Y[None]) ** 2).sum(-1))
    ranks = []
    for i in range(n):
        nn = min((j for j in range(n) if j != i), key=lambda j: dx[i, j])
        order = sorted((j for j in range(n) if j != i), key=lambda j: dy[i, j])
        ranks.append(order.index(nn) + 1)
    return 2 / n * np.mean(ranks)


@pytest.mark.parametrize("seed", [0, 1])
def test_information_imbalance_matches_the_textbook_ranks(seed):
    X, Y = pair(seed, n=70, dx=3, dy=4, noise=1.0)
    assert information_imbalance(X, Y) == pytest.approx(textbook_imbalance(X, Y), abs=1e-12)
    assert information_imbalances(X, Y) == pytest.approx((textbook_imbalance(X, Y), textbook_imbalance(Y, X)), abs=1e-12)


def test_information_imbalance_matches_dadapy():
    X = np.load(DATA / "dadapy" / "3d_gauss_small_z_var.npy")
    subsets = [[0], [1], [2], [0, 1], [0, 2], [1, 2]]
    to_subset = [0.144, 0.15, 0.968, 0.02, 0.1426, 0.1492]
    from_subset = [0.5978, 0.5128, 0.9696, 0.02, 0.6208, 0.5434]
    for cols, a, b in zip(subsets, to_subset, from_subset):
        assert information_imbalance(X, X[:, cols]) == pytest.approx(a, abs=1e-12)
        assert information_imbalance(X[:, cols], X) == pytest.approx(b, abs=1e-12)


def test_information_imbalance_ties_are_the_expectation_over_random_tie_breaking():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 4, (24, 2)).astype(float)  # a 4 x 4 grid: many equal distances and duplicates
    X, Y = base, base + rng.integers(0, 2, base.shape)
    n = len(X)
    dx = ((X[:, None] - X[None]) ** 2).sum(-1)
    dy = ((Y[:, None] - Y[None]) ** 2).sum(-1)
    draws = []
    for _ in range(4000):  # explicit random tie-breaking: a tiny random jitter of each pair's order
        jx, jy = rng.random((n, n)) * 1e-6, rng.random((n, n)) * 1e-6
        ranks = []
        for i in range(n):
            others = [j for j in range(n) if j != i]
            nn = min(others, key=lambda j: dx[i, j] + jx[i, j])
            order = sorted(others, key=lambda j: dy[i, j] + jy[i, j])
            ranks.append(order.index(nn) + 1)
        draws.append(2 / n * np.mean(ranks))
    assert information_imbalance(X, Y) == pytest.approx(np.mean(draws), abs=4 * np.std(draws) / np.sqrt(len(draws)) + 1e-3)
    perm = rng.permutation(n)
    assert information_imbalance(X[perm], Y[perm]) == pytest.approx(information_imbalance(X, Y), abs=1e-12)


def test_information_imbalance_of_unrelated_data_is_one_on_average():
    rng = np.random.default_rng(8)
    values = [information_imbalance(rng.standard_normal((60, 5)), rng.standard_normal((60, 5))) for _ in range(200)]
    assert np.mean(values) == pytest.approx(1.0, abs=4 * np.std(values) / np.sqrt(200))


# ----------------------------------------------------------------------------- intrinsic dimension
def sorted_neighbour_distances(X):
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    return np.sort(D, axis=1)


def test_twonn_matches_the_facco_fit_and_dadapy():
    X = np.load(DATA / "dadapy" / "2gaussians_in_2d.npy")
    T = sorted_neighbour_distances(X)
    mu = np.sort(T[:, 1] / T[:, 0])
    n, keep = len(X), int(0.9 * len(X))
    x, y = np.log(mu[:keep]), -np.log(1 - np.arange(1, keep + 1) / n)
    slope = np.linalg.lstsq(x[:, None], y, rcond=None)[0][0]  # line through the origin
    assert intrinsic_dimension(X) == pytest.approx(slope, abs=1e-10)
    assert intrinsic_dimension(X) == pytest.approx(1.85491, abs=1e-5)  # DADApy compute_id_2NN


def test_mle_matches_levina_bickel():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 10))
    T = sorted_neighbour_distances(X)
    k = 12
    per_sample = [1 / np.mean([np.log(T[i, k - 1] / T[i, j]) for j in range(k - 1)]) for i in range(len(X))]
    assert intrinsic_dimension(X, method="mle", k=k) == pytest.approx(np.mean(per_sample), abs=1e-10)


@pytest.mark.parametrize("d", [2, 5])
def test_intrinsic_dimension_of_a_plane_is_its_dimension(d):
    rng = np.random.default_rng(d)
    X = rng.uniform(size=(2000, d)) @ np.linalg.qr(rng.standard_normal((40, 40)))[0][:d]  # a d-dim plane in 40-D
    assert intrinsic_dimension(X, method="twonn") == pytest.approx(d, rel=0.1)
    assert intrinsic_dimension(X, method="mle", k=20) == pytest.approx(d, rel=0.15)


def test_intrinsic_dimension_counts_duplicates_once_and_refuses_bad_options():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    assert intrinsic_dimension(np.vstack([X, X[:50]])) == pytest.approx(intrinsic_dimension(X), abs=1e-12)
    with pytest.raises(RepalignError, match="method='pca'"):
        intrinsic_dimension(X, method="pca")
    with pytest.raises(RepalignError, match="fraction"):
        intrinsic_dimension(X, fraction=0)
    with pytest.raises(RepalignError, match="distinct samples"):
        intrinsic_dimension(np.ones((10, 3)))


def test_square_matrix_measures_refuse_too_many_samples_before_allocating():
    X = np.zeros((16385, 1))
    X[:, 0] = np.arange(16385)
    with pytest.raises(RepalignError, match="N = 16385 needs 2.0 GiB"):
        rsa(X, X, rdm="euclidean")
    with pytest.raises(RepalignError, match="information imbalance holds an N x N matrix"):
        information_imbalance(X, X)


def test_pwcca_matches_google_svcca_canonical_variates():
    cases = json.loads((DATA / "svcca" / "pwcca.json").read_text())
    assert len(cases) == 3
    for case in cases:
        rng = np.random.default_rng(case["seed"])
        n, dx, dy = case["n_samples"], case["width_x"], case["width_y"]
        X = rng.standard_normal((n, dx))
        Y = X[:, :min(dx, dy)] @ rng.standard_normal((min(dx, dy), dy)) + 0.8 * rng.standard_normal((n, dy))
        X -= X.mean(0)
        Y -= Y.mean(0)
        assert pwcca(X, Y) == pytest.approx(case["pwcca_canonical_variates"], abs=1e-10)
        assert pwcca(X, Y) != pytest.approx(case["mean_cca"], abs=1e-3)  # the weighting matters on these pairs
