"""Nearest-neighbour alignment metrics: mutual kNN, cycle kNN, LCS kNN, edit-distance kNN.

Neighbour convention (all four metrics): neighbours are ranked by the inner product of rows,
i.e. cosine similarity once rows are L2-normalised (``prepare(X, normalize="l2")``, which
:func:`repalign.metrics.align_layers` does by default); a sample is never its own neighbour;
lists are ordered by decreasing similarity; equal similarities are broken in favour of the lower
sample index. platonic-rep (minyoungg/platonic-rep, ``metrics.py``) uses the same ranking but
leaves ties to ``torch.argsort``, so results can differ there only when exact ties occur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics import _numba
from repalign.metrics._validate import as_features, as_pair, check_k

# Rows per block of the similarity matrix: a float32 block is 16 MiB, small next to the features.
DEFAULT_BLOCK = 2048


@dataclass(frozen=True)
class KnnState:
    """Neighbour lists of one feature matrix, computed once and reused for every comparison.

    indices: int64 (N, k), neighbours of each sample by decreasing similarity (ties: lower index).
    similarities: float64 (N, k), the matching inner products (CKNNA uses them as kernel values).
    """

    indices: np.ndarray
    similarities: np.ndarray

    @property
    def n_samples(self) -> int:
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def truncated(self, k: int) -> "KnnState":
        """The lists of the k nearest neighbours (lists are sorted, so a prefix is exact)."""
        if k > self.k:
            raise RepalignError(f"neighbour lists hold k={self.k} entries but k={k} was asked; compute the state with a larger k")
        return KnnState(self.indices[:, :k], self.similarities[:, :k])

    def permuted(self, perm) -> "KnnState":
        """State of X[perm] without a new neighbour search: sample i of the result is old sample perm[i].

        Lists are relabelled, which is exact except that the order among exactly tied
        neighbours keeps the old labels' order rather than the new lower-index rule.
        """
        perm = np.asarray(perm)
        n = self.n_samples
        if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
            raise RepalignError(f"perm must be a permutation of 0..{n - 1}; pass e.g. numpy.random.default_rng(seed).permutation({n})")
        inverse = np.empty(n, dtype=np.int64)
        inverse[perm] = np.arange(n)
        return KnnState(inverse[self.indices[perm]], self.similarities[perm])


def knn_state(X: np.ndarray, k: int, block: int = DEFAULT_BLOCK) -> KnnState:
    """Neighbour lists of an already validated matrix (internal: no checks)."""
    indices, sims = _numba.topk_blocked(X, k, block)
    return KnnState(indices, sims)


def nearest_neighbors(X, k=10, block=DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row of X by inner product (cosine for unit rows).

    Self excluded, lists by decreasing similarity, ties broken by the lower index. The search
    runs over blocks of X Xᵀ, so memory is O(N·k + block²) rather than O(N²).

    Returns (indices int64 (N, k), similarities float64 (N, k)).
    """
    X = as_features(X, "X")
    k = check_k(k, X.shape[0])
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise RepalignError(f"block={block!r} is invalid; pass a positive number of rows, e.g. 2048")
    state = knn_state(X, k, block)
    return state.indices, state.similarities


def _states(X, Y, k):
    X, Y = as_pair(X, Y)
    k = check_k(k, X.shape[0])
    return knn_state(X, k), knn_state(Y, k), k


# ----------------------------------------------------------------------------- pair scores from states
def mutual_knn_from_states(a: KnnState, b: KnnState, k: int) -> float:
    counts = _numba.overlap_counts(a.indices[:, :k], b.indices[:, :k])
    return float(counts.sum(dtype=np.float64) / (k * counts.shape[0]))


def cycle_knn_from_states(a: KnnState, b: KnnState, k: int) -> float:
    hits = _numba.cycle_hits(np.ascontiguousarray(a.indices[:, :k]), np.ascontiguousarray(b.indices[:, :k]))
    return float(hits.mean(dtype=np.float64))


def lcs_knn_from_states(a: KnnState, b: KnnState, k: int) -> float:
    lengths = _numba.lcs_lengths(a.indices[:, :k], b.indices[:, :k])
    return float(lengths.mean(dtype=np.float64) / k)


def edit_distance_knn_from_states(a: KnnState, b: KnnState, k: int) -> float:
    distances = _numba.levenshtein_distances(a.indices[:, :k], b.indices[:, :k])
    return float(1.0 - distances.mean(dtype=np.float64) / k)


# ----------------------------------------------------------------------------- public metrics
def mutual_knn(X, Y, k=10) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al., 2024, "The Platonic Representation Hypothesis").

        mknn = (1/N) Σ_i |N_X(i) ∩ N_Y(i)| / k

    where N_X(i) are the k nearest neighbours of sample i in X (inner product, self excluded,
    ties to the lower index). 1 means identical neighbourhoods; for independent X and Y the
    expected value is k/(N-1). Same value as platonic-rep's ``mutual_knn``.
    """
    a, b, k = _states(X, Y, k)
    return mutual_knn_from_states(a, b, k)


mknn = mutual_knn


def cycle_knn(X, Y, k=10) -> float:
    """Cycle kNN: fraction of samples i that are among the X-neighbours of at least one Y-neighbour of i.

        cycle = (1/N) Σ_i [ ∃ j ∈ N_Y(i) : i ∈ N_X(j) ]

    Asymmetric in (X, Y). As in platonic-rep's ``cycle_knn`` (``knn_A[knn_B]``). cycle_knn(X, X)
    is the fraction of samples having at least one mutual neighbour, which can be below 1.
    """
    a, b, k = _states(X, Y, k)
    return cycle_knn_from_states(a, b, k)


def lcs_knn(X, Y, k=10) -> float:
    """Longest-common-subsequence kNN: mean LCS length of the two ordered neighbour lists, divided by k.

        lcs = (1/N) Σ_i LCS(N_X(i), N_Y(i)) / k,  in [0, 1]

    platonic-rep's ``lcs_knn`` does NOT divide by k (it reports the raw mean length in [0, k]);
    multiply our value by k to compare.
    """
    a, b, k = _states(X, Y, k)
    return lcs_knn_from_states(a, b, k)


def edit_distance_knn(X, Y, k=10) -> float:
    """Edit-distance kNN: 1 − mean Levenshtein distance between the ordered neighbour lists / k.

        ed = 1 − (1/N) Σ_i Lev(N_X(i), N_Y(i)) / k,  in [0, 1]

    Unit cost for insertion, deletion and substitution of a neighbour index. Same value as
    platonic-rep's ``edit_distance_knn``.
    """
    a, b, k = _states(X, Y, k)
    return edit_distance_knn_from_states(a, b, k)
