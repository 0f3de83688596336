"""Nearest-neighbour alignment metrics: mutual kNN, cycle kNN, LCS kNN, edit-distance kNN.

Neighbour convention (all four metrics): neighbours are ranked by the inner product of rows,
i.e. cosine similarity once rows are L2-normalised (``prepare(X, normalize="l2")``, which
:func:`repalign.metrics.align_layers` does by default); a sample is never its own neighbour.
Exact ties (duplicate rows above all) are part of the definition, not left to sample order: see
:mod:`repalign.metrics.neighbors` and docs/metrics.md. Without ties the values are platonic-rep's
(minyoungg/platonic-rep, ``metrics.py``).
"""

from __future__ import annotations

import math

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics import _numba
from repalign.metrics._validate import as_features, as_pair, check_k
from repalign.metrics.neighbors import DEFAULT_BLOCK, KnnState, knn_state

__all__ = ["KnnState", "cycle_knn", "edit_distance_knn", "knn_state", "lcs_knn", "mknn", "mutual_knn", "nearest_neighbors"]


def nearest_neighbors(X, k=10, block=DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row of X by inner product (cosine for unit rows).

    Self excluded, lists by decreasing similarity; samples tied with the k-th neighbour are taken
    in increasing index (the kNN metrics themselves use every tied sample, weighted). The search
    runs over blocks of X Xᵀ, so memory is O(N·k + block²) rather than O(N²); similarities are
    float64 sums in index order.

    Returns (indices int64 (N, k), similarities float64 (N, k)).
    """
    X = as_features(X, "X")
    k = check_k(k, X.shape[0])
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise RepalignError(f"block={block!r} is invalid; pass a positive number of rows, e.g. 2048")
    return knn_state(X, k, block).ordered()


def _states(X, Y, k):
    X, Y = as_pair(X, Y)
    k = check_k(k, X.shape[0])
    return knn_state(X, k), knn_state(Y, k), k


# ----------------------------------------------------------------------------- pair scores from states
def _mean(values: np.ndarray) -> float:
    """Correctly rounded mean (math.fsum): the same for any order of the samples."""
    return math.fsum(values.tolist()) / values.shape[0]


def mutual_knn_from_states(a: KnnState, b: KnnState, k: int) -> float:
    overlap = _numba.expected_overlap(a.indices, a.weights, b.indices, b.weights)
    return _mean(overlap) / k


def cycle_knn_from_states(a: KnnState, b: KnnState, k: int) -> float:
    return _mean(_numba.cycle_probabilities(a.indices, a.weights, b.indices, b.weights, k))


def lcs_knn_from_states(a: KnnState, b: KnnState, k: int) -> float:
    lengths = _numba.group_lcs(a.indices, a.weights, a.levels, b.indices, b.weights, b.levels)
    return _mean(lengths) / k


def edit_distance_knn_from_states(a: KnnState, b: KnnState, k: int) -> float:
    distances = _numba.group_levenshtein(a.indices, a.weights, a.levels, b.indices, b.weights, b.levels)
    return 1.0 - _mean(distances) / k


# ----------------------------------------------------------------------------- public metrics
def mutual_knn(X, Y, k=10) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al., 2024, "The Platonic Representation Hypothesis").

        mknn = (1/N) Σ_i |N_X(i) ∩ N_Y(i)| / k

    where N_X(i) are the k nearest neighbours of sample i in X (inner product, self excluded).
    With exact ties at the k-th neighbour the score is its expectation under independent, uniformly
    random tie-breaking in X and Y (docs/metrics.md). 1 means identical neighbourhoods; for
    independent X and Y the expected value is k/(N-1). Same value as platonic-rep's ``mutual_knn``
    when there are no ties.
    """
    a, b, k = _states(X, Y, k)
    return mutual_knn_from_states(a, b, k)


mknn = mutual_knn


def cycle_knn(X, Y, k=10) -> float:
    """Cycle kNN: fraction of samples i that are among the X-neighbours of at least one Y-neighbour of i.

        cycle = (1/N) Σ_i [ ∃ j ∈ N_Y(i) : i ∈ N_X(j) ]

    Asymmetric in (X, Y). As in platonic-rep's ``cycle_knn`` (``knn_A[knn_B]``). cycle_knn(X, X)
    is the fraction of samples having at least one mutual neighbour, which can be below 1. With
    exact ties: the probability of the event under independent random tie-breaking of every list.
    """
    a, b, k = _states(X, Y, k)
    return cycle_knn_from_states(a, b, k)


def lcs_knn(X, Y, k=10) -> float:
    """Longest-common-subsequence kNN: mean LCS length of the two ordered neighbour lists, divided by k.

        lcs = (1/N) Σ_i LCS(N_X(i), N_Y(i)) / k,  in [0, 1]

    platonic-rep's ``lcs_knn`` does NOT divide by k (it reports the raw mean length in [0, k]);
    multiply our value by k to compare. With exact ties the lists are sequences of tie levels
    (unordered sets) and levels are matched with levels (docs/metrics.md).
    """
    a, b, k = _states(X, Y, k)
    return lcs_knn_from_states(a, b, k)


def edit_distance_knn(X, Y, k=10) -> float:
    """Edit-distance kNN: 1 − mean Levenshtein distance between the ordered neighbour lists / k.

        ed = 1 − (1/N) Σ_i Lev(N_X(i), N_Y(i)) / k,  in [0, 1]

    Unit cost for insertion, deletion and substitution of a neighbour index. Same value as
    platonic-rep's ``edit_distance_knn`` without ties; with exact ties the lists are sequences of
    tie levels (docs/metrics.md).
    """
    a, b, k = _states(X, Y, k)
    return edit_distance_knn_from_states(a, b, k)
