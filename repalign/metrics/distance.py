"""Distance correlation: the V-statistic of Székely, Rizzo & Bakirov (2007) and the bias-corrected
statistic of Székely & Rizzo (2014)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_pair, check_min_samples, check_permutation


@dataclass(frozen=True)
class DistanceState:
    """Centred Euclidean distance matrix A (N, N) (doubly centred, or U-centred) and the
    distance variance of A with itself."""

    centred: np.ndarray
    dvar: float

    @property
    def n_samples(self) -> int:
        return self.centred.shape[0]

    def permuted(self, perm) -> "DistanceState":
        """State of X[perm]: rows and columns of the centred distances follow the permutation."""
        perm = check_permutation(perm, self.n_samples)
        return DistanceState(self.centred[np.ix_(perm, perm)], self.dvar)


def _pairwise_distances(X: np.ndarray) -> np.ndarray:
    X = X.astype(np.float64)
    sq = np.einsum("ij,ij->i", X, X)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def distance_state(X: np.ndarray) -> DistanceState:
    a = _pairwise_distances(X)
    A = a - a.mean(axis=0) - a.mean(axis=1, keepdims=True) + a.mean()
    return DistanceState(A, float(np.mean(A * A)))


def distance_correlation_from_states(a: DistanceState, b: DistanceState) -> float:
    for side, state in (("X", a), ("Y", b)):
        if not state.dvar > 0.0:
            raise RepalignError(f"{side} has zero distance variance (all rows identical after preprocessing); "
                                "distance correlation is undefined, check the input")
    dcov2 = float(np.mean(a.centred * b.centred))
    return float(np.sqrt(max(dcov2, 0.0) / np.sqrt(a.dvar * b.dvar)))


def distance_correlation(X, Y) -> float:
    """Distance correlation dCor(X, Y) of Székely, Rizzo & Bakirov (2007), biased (V-statistic) form.

    With a_ij = ‖x_i − x_j‖, A = a − row means − column means + grand mean (likewise B from Y):

        dCov²(X, Y) = (1/N²) Σ_ij A_ij B_ij,   dCor = √( dCov²(X, Y) / √(dCov²(X, X) · dCov²(Y, Y)) )

    In [0, 1]; 1 for X = Y (and for X, Y related by a similarity transform); it tends to 0 for
    independent data as N grows but is positive at finite N (no chance correction). Same value
    as ``dcor.distance_correlation`` (the V-statistic). It is strongly biased upwards for wide
    features and small N (about 0.99 for independent 512-wide data at N = 48): compare it with its
    null mean, or use :func:`bias_corrected_distance_correlation`. Memory is O(N²) per side.
    """
    X, Y = as_pair(X, Y)
    check_min_samples(X.shape[0], 2, "distance correlation")
    return distance_correlation_from_states(distance_state(X), distance_state(Y))


def u_centred_state(X: np.ndarray) -> DistanceState:
    """U-centred distances Ã (zero diagonal) and (Ã·Ã) of Székely & Rizzo (2014)."""
    a = _pairwise_distances(X)
    n = a.shape[0]
    rows = a.sum(axis=1)
    A = a - rows[:, None] / (n - 2) - rows[None, :] / (n - 2) + rows.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(A, 0.0)
    return DistanceState(A, float(np.sum(A * A) / (n * (n - 3))))


def bias_corrected_distance_correlation_from_states(a: DistanceState, b: DistanceState) -> float:
    for side, state in (("X", a), ("Y", b)):
        if not state.dvar > 0.0:
            raise RepalignError(f"{side} has zero distance variance (all rows identical after preprocessing); "
                                "distance correlation is undefined, check the input")
    n = a.n_samples
    return float(np.sum(a.centred * b.centred) / (n * (n - 3)) / np.sqrt(a.dvar * b.dvar))


def bias_corrected_distance_correlation(X, Y) -> float:
    """Bias-corrected squared distance correlation R*(X, Y) of Székely & Rizzo (2014), "Partial
    distance correlation with methods for dissimilarities", Ann. Statist. 42(6).

    With U-centred distance matrices (a_ij = ‖x_i − x_j‖, row sums a_i·, total a_··)

        Ã_ij = a_ij − a_i·/(N − 2) − a_·j/(N − 2) + a_··/((N − 1)(N − 2)),  Ã_ii = 0,
        (Ã·B̃) = Σ_{i≠j} Ã_ij B̃_ij / (N(N − 3)),
        R*    = (Ã·B̃) / √((Ã·Ã)(B̃·B̃))

    (Ã·B̃) is an unbiased estimator of dCov²(X, Y), so R* estimates the squared distance
    correlation dCor² without the upward bias of the V-statistic: about 0 for independent data
    at any N and any width, and it can be slightly negative. Same value as
    ``dcor.u_distance_correlation_sqr``. Needs N ≥ 4.
    """
    X, Y = as_pair(X, Y)
    check_min_samples(X.shape[0], 4, "bias-corrected distance correlation")
    return bias_corrected_distance_correlation_from_states(u_centred_state(X), u_centred_state(Y))
