"""Orthogonal Procrustes similarity and the angular shape metric with partial whitening.

* :func:`procrustes`: ‖X̃ᵀỸ‖_* (nuclear norm) for centred, Frobenius-normalised X̃, Ỹ; the cosine of
  the angle left after the best rotation of one onto the other (Schönemann 1966; Ding et al. 2021;
  Williams et al. 2021). 1 when X and Y are equal up to a rotation, a reflection and a scale.
* :func:`shape_similarity` / :func:`angular_shape_distance`: Williams et al. (2021), *Generalized
  Shape Metrics on Neural Representations*, the angular metric of netrep's ``LinearMetric``:
  each side is centred and partially whitened, X_w = X Z with Z = V diag(a + (1 − a) λ^(−1/2)) Vᵀ
  (λ, V the eigenpairs of XᵀX, λ clipped at 1e-7; ``whitening`` = 1 − a), then the distance is
  arccos(‖X_wᵀY_w‖_* / (‖X_w‖_F ‖Y_w‖_F)). ``whitening=0`` is :func:`procrustes` (as a cosine),
  ``whitening=1`` is the mean canonical correlation (CCA). The registry reports the similarity
  cos(angle), so higher means more aligned, as for every registered metric.

Sides of different widths need no zero padding: the nuclear norm of the (Dx, Dy) cross product is
what netrep's padded square alignment gives.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_pair, check_permutation

# netrep's eigenvalue floor (netrep.utils.whiten: eigval_tol)
EIGENVALUE_FLOOR = 1e-7


@dataclass(frozen=True)
class ShapeState:
    """A layer centred, (partially) whitened and scaled to unit Frobenius norm, kept as its N x r
    left singular factor U S (r = rank): cross products with another state keep their singular values."""

    factor: np.ndarray

    @property
    def n_samples(self) -> int:
        return self.factor.shape[0]

    def permuted(self, perm) -> "ShapeState":
        """State of X[perm]: centring, whitening (XᵀX is unchanged) and the SVD commute with a row permutation."""
        return ShapeState(self.factor[check_permutation(perm, self.n_samples)])


def check_whitening(whitening) -> float:
    if isinstance(whitening, bool) or not isinstance(whitening, numbers.Real) or not 0.0 <= float(whitening) <= 1.0:
        raise RepalignError(f"whitening={whitening!r} is invalid; pass a number in [0, 1] "
                            "(0: rotations only, Procrustes; 1: fully whitened, CCA)")
    return float(whitening)


def partial_whitening(Xc: np.ndarray, whitening: float) -> np.ndarray:
    """Xc Z, netrep's partial whitening of centred Xc (alpha = 1 - whitening), up to a scale."""
    alpha = 1.0 - whitening
    if alpha > 1.0 - EIGENVALUE_FLOOR:
        return Xc
    lam, V = np.linalg.eigh(Xc.T @ Xc)
    lam = np.maximum(lam, EIGENVALUE_FLOOR)
    d = alpha + (1.0 - alpha) * lam ** -0.5
    return Xc @ ((V * d[None, :]) @ V.T)


def shape_state(X: np.ndarray, whitening: float = 0.0, side: str = "X") -> ShapeState:
    """The layer's :class:`ShapeState` (internal: ``X`` validated, ``whitening`` checked)."""
    Z = np.asarray(X, dtype=np.float64)
    Z = Z - Z.mean(axis=0)
    if whitening > 0.0:
        Z = partial_whitening(Z, whitening)
    norm = np.linalg.norm(Z)
    if not norm > 0:
        raise RepalignError(f"{side} has zero variance after centring (all rows identical); the shape metric is undefined, check the input")
    U, s, _ = np.linalg.svd(Z / norm, full_matrices=False)
    keep = s > s[0] * max(Z.shape) * np.finfo(np.float64).eps
    return ShapeState(U[:, keep] * s[keep])


def shape_from_states(a: ShapeState, b: ShapeState) -> float:
    """cos(angle) = ‖AᵀB‖_* of two unit-norm states, in [0, 1]."""
    value = float(np.sum(np.linalg.svd(a.factor.T @ b.factor, compute_uv=False)))
    return min(max(value, 0.0), 1.0)


def _check_samples(X: np.ndarray, what: str) -> None:
    if X.shape[0] < 2:
        raise RepalignError(f"{what} needs at least 2 samples; got {X.shape[0]}")


def procrustes(X, Y) -> float:
    """Orthogonal Procrustes similarity ‖X̃ᵀỸ‖_* in [0, 1].

    X̃, Ỹ: columns centred, whole matrix divided by its Frobenius norm. Equals
    max over orthogonal Q of tr(QᵀX̃ᵀỸ), the cosine of the angle between X̃ and Ỹ after the best
    rotation; 1 when X and Y are equal up to rotation, reflection, translation and scale.
    The squared Procrustes distance is 2 − 2·procrustes(X, Y).
    """
    X, Y = as_pair(X, Y)
    _check_samples(X, "procrustes")
    return shape_from_states(shape_state(X, 0.0, "X"), shape_state(Y, 0.0, "Y"))


def shape_similarity(X, Y, whitening=0.0) -> float:
    """cos of Williams et al.'s angular shape distance with partial whitening ``whitening`` in [0, 1].

    whitening=0: rotations only (equals :func:`procrustes`); whitening=1: any invertible linear map
    (the mean canonical correlation when both sides have full column rank). netrep's ``alpha`` is
    1 − whitening.
    """
    X, Y = as_pair(X, Y)
    _check_samples(X, "shape_similarity")
    whitening = check_whitening(whitening)
    return shape_from_states(shape_state(X, whitening, "X"), shape_state(Y, whitening, "Y"))


def angular_shape_distance(X, Y, whitening=0.0) -> float:
    """Williams et al.'s angular shape distance arccos(:func:`shape_similarity`), in radians [0, π/2];
    the number netrep's ``LinearMetric(alpha=1 - whitening).fit_score(X, Y)`` reports."""
    return float(np.arccos(shape_similarity(X, Y, whitening)))
