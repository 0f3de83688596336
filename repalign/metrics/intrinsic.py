"""Intrinsic dimension of one layer's samples: a per-layer profile, not a pair metric.

* ``method="twonn"``: Facco, d'Errico, Rodriguez & Laio (2017), *Estimating the intrinsic dimension
  of datasets by a minimal neighborhood information*, Sci. Rep. 7: with r₁, r₂ the distances of a
  sample to its two nearest neighbours, μ = r₂/r₁ follows a Pareto law F(μ) = 1 − μ^(−d). Sort the μ,
  drop the largest (1 − ``fraction``) of them, and fit −log(1 − i/N) = d·log μ₍ᵢ₎ through the origin
  by least squares, as DADApy's ``compute_id_2NN`` (algorithm ``"base"``, mu_fraction 0.9) does.
* ``method="mle"``: Levina & Bickel (2004), *Maximum likelihood estimation of intrinsic dimension*:
  per sample m̂ = [(1/(k−1)) Σ_{j<k} log(T_k/T_j)]⁻¹ with T_j the distance to the j-th neighbour;
  the estimate is the mean of m̂ over the samples.

Distances are Euclidean on the rows as given. Exact duplicate rows are one point (their distance 0
would make μ infinite; DADApy removes them too), so N counts distinct rows.
"""

from __future__ import annotations

import numbers

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_features, check_int
from repalign.metrics.neighbors import row_groups

METHODS = ("twonn", "mle")
# Query rows per block of the distance search.
_BLOCK = 1024


def neighbour_distances(X: np.ndarray, k: int) -> np.ndarray:
    """(G, k) Euclidean distances of each distinct row to its k nearest other distinct rows, sorted.

    Candidates come from the BLAS Gram formula; the k + 2 best are recomputed as explicit
    differences in float64, so small distances carry no cancellation error."""
    Z = np.asarray(X, dtype=np.float64)
    U = Z[row_groups(Z).first]
    g = U.shape[0]
    if g - 1 < k:
        raise RepalignError(f"only {g} distinct samples; {k} neighbours of each are needed, add samples")
    width = min(k + 2, g - 1)
    sq = np.einsum("ij,ij->i", U, U)
    out = np.empty((g, k))
    for s in range(0, g, _BLOCK):
        block = U[s:s + _BLOCK]
        D = sq[s:s + _BLOCK, None] + sq[None, :] - 2.0 * (block @ U.T)
        D[np.arange(block.shape[0]), np.arange(s, s + block.shape[0])] = np.inf
        cand = np.argpartition(D, width - 1, axis=1)[:, :width]
        exact = np.sqrt(np.sum((U[cand] - block[:, None, :]) ** 2, axis=2))
        out[s:s + _BLOCK] = np.sort(exact, axis=1)[:, :k]
    return out


def twonn(distances: np.ndarray, fraction: float = 0.9) -> float:
    """TwoNN estimate from (G, ≥2) sorted neighbour distances (Facco et al.; DADApy's linear fit)."""
    n = distances.shape[0]
    log_mu = np.sort(np.log(distances[:, 1] / distances[:, 0]))
    keep = int(n * fraction)
    if keep < 2:
        raise RepalignError(f"TwoNN keeps {keep} of {n} samples at fraction={fraction}; add samples or raise fraction")
    x = log_mu[:keep]
    y = -np.log(1.0 - np.arange(1, keep + 1) / n)
    if not np.dot(x, x) > 0:
        raise RepalignError("every sample's two nearest neighbours are equally far; TwoNN is undefined for these data")
    return float(np.dot(x, y) / np.dot(x, x))


def levina_bickel(distances: np.ndarray, k: int) -> float:
    """Levina-Bickel estimate from (G, ≥k) sorted neighbour distances: mean over samples of
    [(1/(k−1)) Σ_{j<k} log(T_k/T_j)]⁻¹."""
    logs = np.log(distances[:, k - 1:k] / distances[:, :k - 1])
    mean_log = logs.mean(axis=1)
    if np.any(mean_log <= 0):
        raise RepalignError(f"some samples have their {k} nearest neighbours all equally far; the MLE is undefined, raise k")
    return float(np.mean(1.0 / mean_log))


def check_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < float(fraction) <= 1.0:
        raise RepalignError(f"fraction={fraction!r} is invalid; pass the share of the smallest ratios r2/r1 TwoNN fits, in (0, 1], e.g. 0.9")
    return float(fraction)


def intrinsic_dimension(X, method="twonn", fraction=0.9, k=20) -> float:
    """Intrinsic dimension of the rows of X (see the module docstring).

    method: "twonn" (Facco et al. 2017; ``fraction`` of the ratios fitted, default 0.9) or "mle"
    (Levina & Bickel 2004; ``k`` neighbours, default 20, k ≥ 2). Needs at least 3 distinct rows
    (TwoNN) or k + 1 (MLE).
    """
    X = as_features(X, "X")
    if method not in METHODS:
        raise RepalignError(f"method={method!r} is not known; use one of {', '.join(METHODS)}")
    if method == "twonn":
        fraction = check_fraction(fraction)
        return twonn(neighbour_distances(X, 2), fraction)
    k = check_int(k, "k", 2, None, " (the MLE averages over k - 1 ratios)")
    return levina_bickel(neighbour_distances(X, k), k)
