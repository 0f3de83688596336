"""Kernel alignment metrics: HSIC, CKA (linear / RBF, biased / unbiased) and CKNNA.

References
----------
Gretton et al. (2005), "Measuring statistical dependence with Hilbert-Schmidt norms" (biased HSIC).
Song et al. (2012), "Feature selection via dependence maximization", JMLR 13 (unbiased HSIC).
Kornblith et al. (2019), "Similarity of neural network representations revisited" (CKA).
Huh et al. (2024), "The Platonic Representation Hypothesis" (CKNNA); code: minyoungg/platonic-rep.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics import _numba
from repalign.metrics._validate import as_features, as_pair, check_k, check_min_samples, check_permutation
from repalign.metrics.knn import KnnState, knn_state

KERNELS = ("linear", "rbf")


# ----------------------------------------------------------------------------- HSIC on matrices
def hsic(K, L, unbiased=False) -> float:
    """HSIC between two kernel matrices K, L (N, N).

    Biased (Gretton et al., 2005):   HSIC = tr(K H L H) / (N − 1)²,  H = I − 11ᵀ/N.
    Unbiased (Song et al., 2012), with K̃, L̃ the kernels with zeroed diagonals:
        HSIC = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((N−1)(N−2)) − 2·1ᵀK̃L̃1/(N−2)] / (N(N−3)).
    The normalisation cancels in CKA; platonic-rep's biased HSIC omits the 1/(N−1)².
    """
    K = as_features(K, "K")
    L = as_features(L, "L")
    n = K.shape[0]
    if K.shape != (n, n) or L.shape != (n, n):
        raise RepalignError(f"K and L must be square matrices of the same size; got {K.shape} and {L.shape}")
    K = K.astype(np.float64)
    L = L.astype(np.float64)
    if unbiased:
        check_min_samples(n, 4, "unbiased HSIC")
        return float(_numba.hsic_unbiased_numpy(K, L))
    check_min_samples(n, 2, "HSIC")
    Kc = K - K.mean(axis=0) - K.mean(axis=1, keepdims=True) + K.mean()
    return float(np.sum(Kc * L.T) / (n - 1) ** 2)


# ----------------------------------------------------------------------------- CKA states
@dataclass(frozen=True)
class KernelState:
    """Per-layer statistics for CKA, computed once and reused for every pair.

    Linear kernel: ``features`` holds the column-centred features (CKA is computed in feature
    space from ‖XcᵀYc‖_F², never forming N×N Grams) and, when N < D, ``gram`` holds the
    (cheaper) N×N Gram. RBF kernel: ``gram`` only. For biased HSIC ``gram`` is the doubly centred
    kernel HKH; for unbiased HSIC it is K with a zeroed diagonal, with its row sums and total.
    """

    n: int
    unbiased: bool
    features: np.ndarray | None
    row_sq: np.ndarray | None  # ‖x_i − mean‖², for the unbiased statistics in feature space
    gram: np.ndarray | None
    gram_row_sums: np.ndarray | None
    gram_total: float
    self_hsic: float
    sigma: float | None

    @property
    def n_samples(self) -> int:
        return self.n

    def permuted(self, perm) -> "KernelState":
        """State of X[perm]: rows of the centred features and rows and columns of the Gram follow
        the permutation; column means, totals and the self-HSIC do not change."""
        perm = check_permutation(perm, self.n)
        return dataclasses.replace(
            self,
            features=None if self.features is None else self.features[perm],
            row_sq=None if self.row_sq is None else self.row_sq[perm],
            gram=None if self.gram is None else self.gram[np.ix_(perm, perm)],
            gram_row_sums=None if self.gram_row_sums is None else self.gram_row_sums[perm],
        )

    def hsic_with(self, other: "KernelState") -> float:
        """HSIC of this layer's kernel with ``other``'s (states of the same kind)."""
        return _hsic_from_states(self, other)


def _overflow_safe_scale(X: np.ndarray) -> float:
    """1, or a power of two bringing max|X| to about 1 when squares summed in float32 could overflow."""
    top = float(np.max(np.abs(X))) if X.size else 0.0
    if top < 2.0**40:
        return 1.0
    return 2.0 ** -np.ceil(np.log2(top))


def _median_distance(X: np.ndarray) -> float:
    sq = np.sum(X.astype(np.float64) ** 2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (X.astype(np.float64) @ X.astype(np.float64).T), 0.0)
    iu = np.triu_indices(X.shape[0], 1)
    return float(np.median(np.sqrt(d2[iu])))  # median of distances (not of squared ones: even counts average)


def _rbf_gram(X: np.ndarray, sigma: float) -> np.ndarray:
    X64 = X.astype(np.float64)
    sq = np.sum(X64**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (X64 @ X64.T), 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.exp(-d2 / (2.0 * sigma * sigma))


def _gram_stats(K: np.ndarray, unbiased: bool):
    """(gram, row_sums, total) as stored in KernelState, from a symmetric float64 kernel."""
    if unbiased:
        Kt = K.copy()
        np.fill_diagonal(Kt, 0.0)
        row_sums = Kt.sum(axis=1)
        return Kt, row_sums, float(row_sums.sum())
    Kc = K - K.mean(axis=0) - K.mean(axis=1, keepdims=True) + K.mean()
    return Kc, None, 0.0


def kernel_state(X: np.ndarray, kernel: str = "linear", sigma=None, unbiased: bool = False) -> KernelState:
    """Statistics of one validated feature matrix for :func:`cka_from_states` (internal: no checks)."""
    n = X.shape[0]
    if kernel == "linear":
        Xc64 = X.astype(np.float64)
        Xc64 -= Xc64.mean(axis=0)
        # CKA is scale-invariant: a power-of-two rescaling (exact) keeps the products of huge
        # activations (~1e38 in float32) from overflowing, and changes nothing otherwise.
        Xc64 *= _overflow_safe_scale(Xc64)
        features = Xc64.astype(X.dtype, copy=False)
        row_sq = np.einsum("ij,ij->i", Xc64, Xc64)
        gram = row_sums = None
        total = 0.0
        if n < X.shape[1]:
            K = Xc64 @ Xc64.T
            gram, row_sums, total = _gram_stats(K, unbiased)
        state = KernelState(n, unbiased, features, row_sq, gram, row_sums, total, 0.0, None)
    else:
        if sigma is None:
            sigma = _median_distance(X)
            if sigma == 0.0:
                raise RepalignError("the median pairwise distance of X is 0, so the RBF bandwidth is undefined; pass sigma explicitly or remove duplicate rows")
        gram, row_sums, total = _gram_stats(_rbf_gram(X, float(sigma)), unbiased)
        state = KernelState(n, unbiased, None, None, gram, row_sums, total, 0.0, float(sigma))
    return dataclasses.replace(state, self_hsic=_hsic_from_states(state, state))


def _frobenius_cross(a: KernelState, b: KernelState) -> float:
    """‖XcᵀYc‖_F² (= ⟨XcXcᵀ, YcYcᵀ⟩) from centred features: product in the input precision, squares summed in float64."""
    assert a.features is not None and b.features is not None  # linear-kernel states only
    G = a.features.T @ b.features
    G64 = G.astype(np.float64, copy=False)
    return float(np.einsum("ij,ij->", G64, G64))


def _hsic_from_states(a: KernelState, b: KernelState) -> float:
    n = a.n
    if a.features is not None and b.features is not None and not (a.gram is not None and b.gram is not None):
        # Linear kernel in feature space. With centred features (HSIC is unchanged by centring:
        # biased HSIC centres anyway, unbiased HSIC is invariant to it), K̃1 = −row_sq.
        cross = _frobenius_cross(a, b)
        if not a.unbiased:
            return cross / (n - 1) ** 2
        assert a.row_sq is not None and b.row_sq is not None  # set with the features
        rq = float(np.dot(a.row_sq, b.row_sq))
        return float(_numba.hsic_unbiased_from_stats(cross - rq, -a.row_sq.sum(), -b.row_sq.sum(), rq, float(n)))
    assert a.gram is not None and b.gram is not None  # RBF states, or linear ones with N < D
    if not a.unbiased:
        return float(np.sum(a.gram * b.gram, dtype=np.float64)) / (n - 1) ** 2
    trace = float(np.sum(a.gram * b.gram, dtype=np.float64))  # kernels are symmetric: tr(K̃L̃) = ⟨K̃, L̃⟩
    assert a.gram_row_sums is not None and b.gram_row_sums is not None  # kept for unbiased HSIC
    sum_kl = float(np.dot(a.gram_row_sums, b.gram_row_sums))
    return float(_numba.hsic_unbiased_from_stats(trace, a.gram_total, b.gram_total, sum_kl, float(n)))


def _check_self(value: float, side: str, what: str) -> None:
    if not value > 0.0:
        raise RepalignError(
            f"{side} has zero (or negative) {what} self-similarity ({value:.3g}), e.g. all rows identical after preprocessing; "
            "the score is undefined, check the input or preprocessing"
        )


def cka_from_states(a: KernelState, b: KernelState) -> float:
    """CKA = HSIC(K, L) / √(HSIC(K, K)·HSIC(L, L)), exactly (no epsilon)."""
    _check_self(a.self_hsic, "X", "HSIC")
    _check_self(b.self_hsic, "Y", "HSIC")
    return float(a.hsic_with(b) / np.sqrt(a.self_hsic * b.self_hsic))


def _check_kernel_params(kernel, sigma, unbiased):
    if kernel not in KERNELS:
        raise RepalignError(f"kernel={kernel!r} is not supported; use 'linear' or 'rbf'")
    if sigma is not None:
        if kernel != "rbf":
            raise RepalignError("sigma only applies to kernel='rbf'; drop sigma or set kernel='rbf'")
        if isinstance(sigma, str) and sigma == "median":
            pass
        elif isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not np.isfinite(sigma) or sigma <= 0:
            raise RepalignError(f"sigma={sigma!r} is invalid; pass a positive bandwidth, or None / 'median' for the median pairwise distance")
    if not isinstance(unbiased, (bool, np.bool_)):
        raise RepalignError(f"unbiased={unbiased!r} must be True or False")


def cka(X, Y, kernel="linear", sigma=None, unbiased=False) -> float:
    """Centered kernel alignment (Kornblith et al., 2019).

        CKA = HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L))

    kernel="linear": K = X Xᵀ. kernel="rbf": K_ij = exp(−‖x_i − x_j‖² / (2σ²)) with σ = ``sigma``,
    or, when ``sigma`` is None (or "median"), the median pairwise Euclidean distance of that matrix (each side
    its own σ; platonic-rep instead fixes σ = 1, pass sigma=1.0 to match it).
    ``unbiased=False`` uses the biased HSIC tr(KHLH)/(N−1)²; ``unbiased=True`` the unbiased
    estimator of Song et al. (2012) (needs N ≥ 4; its chance level is 0 and it can be negative).

    Linear CKA is computed from feature-space statistics (‖XcᵀYc‖_F² on column-centred data),
    which equals the Gram-matrix formula. Differences from platonic-rep: no 1e-6 in the
    denominator (values agree to ~1e-6 relative), and a zero-variance input raises
    RepalignError instead of returning 0 or NaN.
    """
    _check_kernel_params(kernel, sigma, unbiased)
    if isinstance(sigma, str):
        sigma = None  # "median"
    X, Y = as_pair(X, Y)
    check_min_samples(X.shape[0], 4 if unbiased else 2, "unbiased CKA" if unbiased else "CKA")
    a = kernel_state(X, kernel, sigma, bool(unbiased))
    b = kernel_state(Y, kernel, sigma, bool(unbiased))
    return cka_from_states(a, b)


def unbiased_cka(X, Y, kernel="linear", sigma=None) -> float:
    """CKA with the unbiased HSIC of Song et al. (2012); see :func:`cka`."""
    return cka(X, Y, kernel=kernel, sigma=sigma, unbiased=True)


# ----------------------------------------------------------------------------- CKNNA
@dataclass(frozen=True)
class CknnaState:
    """Neighbour lists with similarities plus the masked self-HSIC sim(K, K) of one layer."""

    knn: KnnState
    self_sim: float

    @property
    def n_samples(self) -> int:
        return self.knn.n_samples

    def permuted(self, perm) -> "CknnaState":
        """State of X[perm]: relabelled lists; the self-term does not depend on sample order."""
        return CknnaState(self.knn.permuted(perm), self.self_sim)


def cknna_state(X: np.ndarray, k: int, knn: KnnState | None = None) -> CknnaState:
    """CKNNA statistics of one validated matrix; reuses ``knn`` lists (same k) if given (internal: no checks)."""
    knn = knn_state(X, k) if knn is None else knn
    return CknnaState(knn, _masked_hsic(knn, knn))


def _masked_hsic(a: KnnState, b: KnnState) -> float:
    # unpacked by name: mypy cannot match *stats against the jitted function's parameters
    trace, sum_a, sum_b, sum_ab = _numba.masked_kernel_stats(a.indices, a.similarities, a.weights, b.indices, b.similarities, b.weights)
    return float(_numba.hsic_unbiased_from_stats(trace, sum_a, sum_b, sum_ab, float(a.n_samples)))


def cknna_from_states(a: CknnaState, b: CknnaState) -> float:
    _check_self(a.self_sim, "X", "kNN-masked HSIC")
    _check_self(b.self_sim, "Y", "kNN-masked HSIC")
    return float(_masked_hsic(a.knn, b.knn) / np.sqrt(a.self_sim * b.self_sim))


def cknna(X, Y, k=10) -> float:
    """Centered kernel nearest-neighbour alignment (Huh et al., 2024).

    With K = X Xᵀ, L = Y Yᵀ and mask_P[i, j] = 1 iff j is among the k nearest neighbours of i
    under P (self excluded; with exact ties at the k-th neighbour, the probability of that under
    uniformly random tie-breaking, docs/metrics.md):

        sim(K, L) = HSIC_u(M ⊙ K, M ⊙ L),  M = mask_K ⊙ mask_L
        CKNNA     = sim(K, L) / √(sim(K, K) · sim(L, L))

    where HSIC_u is the full unbiased HSIC of Song et al. (2012) (all three terms) and
    sim(K, K) uses mask_K ⊙ mask_K = mask_K (so each self-term uses only its own neighbours),
    exactly as platonic-rep's ``cknna(..., unbiased=True)``. The masked kernels are not
    symmetric; tr(AB) = Σ_ij A_ij B_ji is used as written. Differences from platonic-rep: no 1e-6
    in the denominator, a non-positive self-term raises RepalignError. Needs k ≥ 2 and N ≥ 4.
    """
    X, Y = as_pair(X, Y)
    check_min_samples(X.shape[0], 4, "CKNNA (unbiased HSIC)")
    k = check_k(k, X.shape[0], low=2)
    return cknna_from_states(cknna_state(X, k), cknna_state(Y, k))
