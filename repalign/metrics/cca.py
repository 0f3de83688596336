"""SVCCA and PWCCA, computed deterministically with exact SVD and exact CCA.

Two SVCCA variants:

* :func:`svcca`, the definition of Raghu et al. (2017), "SVCCA: Singular Vector Canonical
  Correlation Analysis for Deep Learning Dynamics and Interpretability": centre each feature, keep
  the top singular directions that explain ``variance`` (99%) of each side's variance, and average
  the canonical correlations of the two reduced subspaces.
* :func:`svcca_platonic`, the variant of platonic-rep (minyoungg/platonic-rep, ``metrics.py``):
  standardise each feature, keep a fixed number ``dim`` of singular directions.

and :func:`pwcca`, Morcos et al. (2018): canonical correlations weighted by how much of each side
their canonical variates account for.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_pair, check_int, check_permutation


@dataclass(frozen=True)
class SvccaState:
    """Orthonormal basis U (N, d) of the kept singular directions of the centred features."""

    basis: np.ndarray

    @property
    def n_samples(self) -> int:
        return self.basis.shape[0]

    def permuted(self, perm) -> "SvccaState":
        """State of X[perm]: centring, standardising and the SVD commute with a row permutation."""
        return SvccaState(self.basis[check_permutation(perm, self.n_samples)])


def _centred_svd(X: np.ndarray, standardize: bool):
    """(U, s, Vt, rank) of X centred (and standardised) in float64; rank counts s above the LAPACK tolerance."""
    Z = X.astype(np.float64)
    Z -= Z.mean(axis=0)
    if standardize:
        std = Z.std(axis=0, ddof=1) if Z.shape[0] > 1 else np.zeros(Z.shape[1])
        Z[:, std > 0] /= std[std > 0]
    U, s, Vt = np.linalg.svd(Z, full_matrices=False)
    tol = s[0] * max(Z.shape) * np.finfo(np.float64).eps if s.size and s[0] > 0 else np.inf
    return U, s, Vt, int(np.count_nonzero(s > tol))


def svcca_state(X: np.ndarray, variance: float = 0.99, side: str = "X") -> SvccaState:
    """Raghu et al.'s SV step: the fewest top singular directions of the centred X whose squared
    singular values reach ``variance`` of the total (internal: no checks)."""
    U, s, _, rank = _centred_svd(X, standardize=False)
    if rank == 0:
        raise RepalignError(f"{side} has zero variance after centring (all rows identical); SVCCA is undefined, check the input")
    share = np.cumsum(s[:rank] ** 2) / np.sum(s[:rank] ** 2)
    dim = int(np.searchsorted(share, variance - 1e-12) + 1)
    return SvccaState(U[:, :min(dim, rank)])


def svcca_platonic_state(X: np.ndarray, dim: int, side: str = "X") -> SvccaState:
    """Top-``dim`` left singular vectors of X after standardising each feature (internal: no checks).

    Standardisation: subtract each column's mean and divide by its standard deviation
    (ddof=1); constant columns stay zero (platonic-rep divides by std + 1e-8, same effect).
    """
    U, _, _, rank = _centred_svd(X, standardize=True)
    if rank < dim:
        raise RepalignError(f"{side} has rank {rank} after centring, below dim={dim}; lower dim to at most {rank}")
    return SvccaState(U[:, :dim])


def svcca_from_states(a: SvccaState, b: SvccaState) -> float:
    # Canonical correlations of two orthonormal (centred) bases are the singular values of UaᵀUb;
    # there are min(da, db) of them.
    rho = np.linalg.svd(a.basis.T @ b.basis, compute_uv=False)
    return float(np.mean(np.clip(rho, 0.0, 1.0)))


def check_variance(variance) -> float:
    if isinstance(variance, bool) or not isinstance(variance, numbers.Real) or not 0.0 < float(variance) <= 1.0:
        raise RepalignError(f"variance={variance!r} is invalid; pass the share of variance the kept directions explain, in (0, 1], e.g. 0.99")
    return float(variance)


def svcca(X, Y, variance=0.99) -> float:
    """Singular-vector canonical correlation analysis (Raghu et al., 2017), deterministic.

    1. Centre each feature of X and Y.
    2. SV step: keep the top left singular vectors U_X (N, d_X) whose squared singular values
       explain ``variance`` (default 99%) of X's total variance; likewise U_Y.
    3. CCA step: the canonical correlations ρ_1..ρ_m, m = min(d_X, d_Y), of the two subspaces are
       the singular values of U_Xᵀ U_Y; return their mean.

    In [0, 1]. Caveat: when d_X + d_Y approaches N − 1 (wide layers, few samples) the two subspaces
    share directions by dimension alone and the score approaches 1 for unrelated data; use N well
    above the kept dimensions (``check_reliability`` warns). Exact LAPACK SVDs: reproducible.
    """
    X, Y = as_pair(X, Y)
    if X.shape[0] < 2:
        raise RepalignError(f"svcca needs at least 2 samples; got {X.shape[0]}")
    variance = check_variance(variance)
    return svcca_from_states(svcca_state(X, variance, "X"), svcca_state(Y, variance, "Y"))


def svcca_platonic(X, Y, dim=10) -> float:
    """SVCCA as platonic-rep computes it (``svcca`` in minyoungg/platonic-rep ``metrics.py``), deterministic.

    1. Standardise each feature (centre; divide by its sample std, ddof=1).
    2. SVD-reduce each side to its top ``dim`` left singular vectors U_X, U_Y (N, dim), by exact
       LAPACK SVD.
    3. Return the mean of the ``dim`` canonical correlations between U_X and U_Y, i.e. the mean
       singular value of U_Xᵀ U_Y (the bases are orthonormal and centred).

    platonic-rep uses ``torch.svd_lowrank`` (randomised) and scikit-learn's iterative ``CCA`` plus
    1e-10 random jitter, so its value varies from run to run; this one is exact and reproducible.
    Requires dim ≤ rank of each centred side (< N).
    """
    X, Y = as_pair(X, Y)
    n = X.shape[0]
    limit = min(n - 1, X.shape[1], Y.shape[1])
    if limit < 1:
        raise RepalignError(f"svcca_platonic needs at least 2 samples; got {n}")
    dim = check_int(dim, "dim", 1, limit, f" (at most min(N - 1, Dx, Dy) = {limit}); lower dim")
    return svcca_from_states(svcca_platonic_state(X, dim, "X"), svcca_platonic_state(Y, dim, "Y"))


@dataclass(frozen=True)
class PwccaState:
    """Centred X = U S Vᵀ at its numerical rank: basis U (N, r) and loadings S Vᵀ (r, D), the
    coordinates of every centred feature (neuron) in that basis."""

    basis: np.ndarray
    loadings: np.ndarray

    @property
    def n_samples(self) -> int:
        return self.basis.shape[0]

    def permuted(self, perm) -> "PwccaState":
        """State of X[perm]: the basis's rows move with the samples; the loadings do not depend on their order."""
        return PwccaState(self.basis[check_permutation(perm, self.n_samples)], self.loadings)


def pwcca_state(X: np.ndarray, side: str = "X") -> PwccaState:
    """The layer's :class:`PwccaState` (internal: X validated)."""
    U, s, Vt, rank = _centred_svd(X, standardize=False)
    if rank == 0:
        raise RepalignError(f"{side} has zero variance after centring (all rows identical); PWCCA is undefined, check the input")
    return PwccaState(U[:, :rank], s[:rank, None] * Vt[:rank])


def _weighted_correlation(rho: np.ndarray, rotation: np.ndarray, state: PwccaState) -> float:
    # Canonical variates H = basis @ rotation (orthonormal); weight of variate i: Σ_j |<h_i, x_j>|.
    weights = np.sum(np.abs(rotation.T @ state.loadings), axis=1)
    return float(np.sum(weights * rho) / np.sum(weights))


def pwcca_from_states(a: PwccaState, b: PwccaState) -> float:
    A, rho, Bt = np.linalg.svd(a.basis.T @ b.basis, full_matrices=False)
    rho = np.clip(rho, 0.0, 1.0)
    ra, rb = a.basis.shape[1], b.basis.shape[1]
    if ra < rb:
        return _weighted_correlation(rho, A, a)
    if rb < ra:
        return _weighted_correlation(rho, Bt.T, b)
    return 0.5 * (_weighted_correlation(rho, A, a) + _weighted_correlation(rho, Bt.T, b))


def pwcca(X, Y) -> float:
    """Projection-weighted CCA (Morcos, Raghu & Bengio 2018, *Insights on representational
    similarity in neural networks with canonical correlation*), deterministic.

    1. Centre each feature; CCA of the two column spaces (at their numerical ranks r_X, r_Y):
       canonical correlations ρ_1..ρ_m, m = min(r_X, r_Y), and unit-norm canonical variates h_i
       (N-vectors) of each side.
    2. On the side of lower rank, weight each variate by how much of that side it accounts for:
       α_i = Σ_j |⟨h_i, x_j⟩| over its centred features x_j.
    3. Return Σ α_i ρ_i / Σ α_i, in [0, 1].

    google/svcca's ``compute_pwcca`` weights by X when both sides have the same rank; here that
    case averages the two weightings, so pwcca(X, Y) = pwcca(Y, X). Like CCA it needs N well
    above r_X + r_Y: when they approach N − 1 every canonical correlation tends to 1.
    """
    X, Y = as_pair(X, Y)
    if X.shape[0] < 2:
        raise RepalignError(f"pwcca needs at least 2 samples; got {X.shape[0]}")
    return pwcca_from_states(pwcca_state(X, "X"), pwcca_state(Y, "Y"))
