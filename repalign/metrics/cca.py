"""SVCCA (Raghu et al., 2017), computed deterministically with exact SVD and exact CCA."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_pair, check_int


@dataclass(frozen=True)
class SvccaState:
    """Orthonormal basis U (N, dim) of the top-``dim`` singular directions of the standardised features."""

    basis: np.ndarray


def svcca_state(X: np.ndarray, dim: int, side: str = "X") -> SvccaState:
    """Top-``dim`` left singular vectors of X after standardising each feature (internal: no checks).

    Standardisation: subtract each column's mean and divide by its standard deviation
    (ddof=1); constant columns stay zero (platonic-rep divides by std + 1e-8, same effect).
    """
    Z = X.astype(np.float64)
    Z -= Z.mean(axis=0)
    std = Z.std(axis=0, ddof=1) if Z.shape[0] > 1 else np.zeros(Z.shape[1])
    Z[:, std > 0] /= std[std > 0]
    U, s, _ = np.linalg.svd(Z, full_matrices=False)
    tol = s[0] * max(Z.shape) * np.finfo(np.float64).eps if s.size and s[0] > 0 else np.inf
    rank = int(np.count_nonzero(s > tol))
    if rank < dim:
        raise RepalignError(f"{side} has rank {rank} after centring, below dim={dim}; lower dim to at most {rank}")
    return SvccaState(U[:, :dim])


def svcca_from_states(a: SvccaState, b: SvccaState) -> float:
    # Canonical correlations of two orthonormal bases are the singular values of UaᵀUb.
    rho = np.linalg.svd(a.basis.T @ b.basis, compute_uv=False)
    return float(np.mean(np.clip(rho, 0.0, 1.0)))


def svcca(X, Y, dim=10) -> float:
    """Singular-vector canonical correlation analysis (Raghu et al., 2017), deterministic.

    1. Standardise each feature (centre; divide by its sample std, ddof=1).
    2. SVD-reduce each side to its top ``dim`` left singular vectors U_X, U_Y (N, dim), by exact
       LAPACK SVD.
    3. Return the mean of the ``dim`` canonical correlations between U_X and U_Y, i.e. the mean
       singular value of U_Xᵀ U_Y (the bases are orthonormal and centred).

    Differences from platonic-rep's ``svcca``: it uses ``torch.svd_lowrank`` (randomised) and
    scikit-learn's iterative ``CCA`` plus 1e-10 random jitter, so its value varies from run to run;
    ours is exact and reproducible. Requires dim ≤ rank of each centred side (< N).
    """
    X, Y = as_pair(X, Y)
    n = X.shape[0]
    limit = min(n - 1, X.shape[1], Y.shape[1])
    if limit < 1:
        raise RepalignError(f"svcca needs at least 2 samples; got {n}")
    dim = check_int(dim, "dim", 1, limit, f" (at most min(N - 1, Dx, Dy) = {limit}); lower dim")
    return svcca_from_states(svcca_state(X, dim, "X"), svcca_state(Y, dim, "Y"))
