"""Information imbalance (Glielmo et al. 2022, *Ranking the information content of distance
measures*, PNAS Nexus 1): how well the nearest neighbours under one representation predict the
distances under the other.

Δ(X→Y) = (2/N) · (1/N) Σᵢ r^Y_i(nn_X(i)), where nn_X(i) is i's nearest neighbour under X (Euclidean
distance, self excluded) and r^Y_i(j) the rank of j among i's neighbours under Y (1 = nearest).
Δ ≈ 0: X's neighbourhoods are Y's (X predicts Y); Δ ≈ 1: unrelated (the rank is uniform on 1..N−1,
mean N/2). It is asymmetric: Δ(X→Y) small and Δ(Y→X) near 1 means X holds Y's information and more.

Ties follow the rule of every neighbour metric here (docs/metrics.md, "Ties"): exact duplicate rows
are one group with distance 0 between its members; when several samples are i's nearest at the
same distance, each counts with weight 1/m; a rank tied with t − 1 other samples is its expectation
under uniformly random tie-breaking (1 + #closer + (t − 1)/2). Without ties this is DADApy's
``MetricComparisons`` value with ``maxk = N − 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_features, as_pair, check_permutation, check_square_size
from repalign.metrics.neighbors import row_groups

# Query rows per rank-counting chunk (a chunk compares P x N distances).
_CHUNK = 1024


@dataclass(frozen=True)
class DistanceState:
    """Squared Euclidean distances (N, N) of a layer, float64, +inf on the diagonal (self excluded),
    exactly 0 between duplicate rows; a row permutation permutes rows and columns exactly."""

    squared: np.ndarray

    @property
    def n_samples(self) -> int:
        return self.squared.shape[0]

    def permuted(self, perm) -> "DistanceState":
        perm = check_permutation(perm, self.n_samples)
        return DistanceState(np.ascontiguousarray(self.squared[np.ix_(perm, perm)]))


def squared_distances(X: np.ndarray) -> np.ndarray:
    """(N, N) squared Euclidean distances in float64, computed once per distinct row (duplicates
    share every value and are 0 apart), with +inf on the diagonal."""
    check_square_size(X.shape[0], "information imbalance")
    Z = np.asarray(X, dtype=np.float64)
    groups = row_groups(Z)
    U = Z[groups.first]
    sq = np.einsum("ij,ij->i", U, U)
    Du = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (U @ U.T), 0.0)
    np.fill_diagonal(Du, 0.0)
    D = Du[np.ix_(groups.group, groups.group)]
    np.fill_diagonal(D, np.inf)
    return D


def distance_state(X: np.ndarray) -> DistanceState:
    """The layer's :class:`DistanceState` (internal: X validated)."""
    return DistanceState(squared_distances(X))


def imbalance_from_states(a: DistanceState, b: DistanceState) -> float:
    """Δ(A→B) from two distance states (see the module docstring for ties)."""
    Da, Db = a.squared, b.squared
    n = Da.shape[0]
    nearest = Da == Da.min(axis=1, keepdims=True)
    rows, cols = np.nonzero(nearest)
    weights = 1.0 / np.bincount(rows, minlength=n)[rows]
    ranks = np.empty(rows.size)
    for s in range(0, rows.size, _CHUNK):
        r, c = rows[s:s + _CHUNK], cols[s:s + _CHUNK]
        rows_b = Db[r]
        target = rows_b[np.arange(r.size), c][:, None]
        closer = np.count_nonzero(rows_b < target, axis=1)
        tied = np.count_nonzero(rows_b == target, axis=1)  # j itself included
        ranks[s:s + _CHUNK] = 1.0 + closer + (tied - 1) / 2.0
    return float(2.0 / n * np.sum(weights * ranks) / n)


def _check(n: int) -> None:
    if n < 3:
        raise RepalignError(f"information imbalance needs at least 3 samples; got {n}")


def information_imbalance(X, Y) -> float:
    """Δ(X→Y), Glielmo et al.'s information imbalance from X to Y, in [2/N, 2(N−1)/N]: about 1 for
    unrelated X and Y, 0 when X's nearest neighbours are Y's. Memory O(N²)."""
    X, Y = as_pair(X, Y)
    _check(X.shape[0])
    return imbalance_from_states(distance_state(X), distance_state(Y))


def information_imbalances(X, Y) -> tuple[float, float]:
    """(Δ(X→Y), Δ(Y→X)), each layer's distances computed once."""
    X, Y = as_pair(X, Y)
    _check(X.shape[0])
    a, b = distance_state(X), distance_state(Y)
    return imbalance_from_states(a, b), imbalance_from_states(b, a)


def imbalance_similarity(X, Y) -> float:
    """1 − Δ(X→Y): the registered similarity form (higher = X predicts Y better; 0 for unrelated data)."""
    return 1.0 - information_imbalance(as_features(X, "X"), as_features(Y, "Y"))
