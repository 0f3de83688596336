"""Distance correlation (Székely, Rizzo & Bakirov, 2007)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_pair, check_min_samples


@dataclass(frozen=True)
class DistanceState:
    """Doubly centred Euclidean distance matrix A (N, N) and the distance variance mean(A∘A)."""

    centred: np.ndarray
    dvar: float


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
            raise RepalignError(f"{side} has zero distance variance (all rows identical after preprocessing); distance correlation is undefined, check the input")
    dcov2 = float(np.mean(a.centred * b.centred))
    return float(np.sqrt(max(dcov2, 0.0) / np.sqrt(a.dvar * b.dvar)))


def distance_correlation(X, Y) -> float:
    """Distance correlation dCor(X, Y) of Székely, Rizzo & Bakirov (2007), biased (V-statistic) form.

    With a_ij = ‖x_i − x_j‖, A = a − row means − column means + grand mean (likewise B from Y):

        dCov²(X, Y) = (1/N²) Σ_ij A_ij B_ij,   dCor = √( dCov²(X, Y) / √(dCov²(X, X) · dCov²(Y, Y)) )

    In [0, 1]; 1 for X = Y (and for X, Y related by a similarity transform); it tends to 0 for
    independent data as N grows but is positive at finite N (no chance correction). Same value
    as ``dcor.distance_correlation`` (the V-statistic); the bias-corrected version of Székely &
    Rizzo (2013) is not provided. Memory is O(N²) per side.
    """
    X, Y = as_pair(X, Y)
    check_min_samples(X.shape[0], 2, "distance correlation")
    return distance_correlation_from_states(distance_state(X), distance_state(Y))
