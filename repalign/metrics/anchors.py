"""Relative representations: each sample described by its similarities to a fixed set of anchors.

Moschella et al., "Relative representations enable zero-shot latent space communication", ICLR 2023:
with anchors a_1..a_m drawn from the data, a sample x becomes r(x) = (cos(x, a_1), ..., cos(x, a_m)).
Two models see the same anchor samples, so their relative representations share coordinates and
are invariant to rotations and rescalings of either model's space. The method put several
interatomic potentials in one space with atomic anchors (the ICL convergence study). Used as a
transform before any metric: ``compare_models(..., engine=EngineOptions(anchors=N or ids))``, ``repalign compare --anchors``.
"""

from __future__ import annotations

import numbers

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_features


def draw_anchors(n_samples: int, n_anchors: int, seed: int = 0) -> np.ndarray:
    """``n_anchors`` distinct row indices out of ``n_samples``, uniformly at random (sorted), as
    Moschella et al. draw their anchors; the same ``seed`` gives the same anchors."""
    if not isinstance(n_anchors, numbers.Integral) or isinstance(n_anchors, bool) or n_anchors < 1:
        raise RepalignError(f"anchors must be a positive number of samples, got {n_anchors!r}")
    if n_anchors >= n_samples:
        raise RepalignError(f"{n_anchors} anchors leave no sample to compare out of {n_samples}; "
                            f"use fewer anchors (e.g. {max(1, n_samples // 10)})")
    rng = np.random.default_rng([int(seed), 0x616E63])  # a stream of its own: permutations use `seed` too
    return np.sort(rng.choice(n_samples, size=int(n_anchors), replace=False))


def relative_representation(X, anchors) -> np.ndarray:
    """Cosine similarity of every row of ``X`` (N, D) to every row of ``anchors`` (M, D): (N, M).

    r(x)_j = <x, a_j> / (|x| |a_j|). A zero row (in ``X`` or the anchors) has no direction and
    raises a one-line error. float32 input stays float32.
    """
    X = as_features(X, "X")
    A = as_features(anchors, "anchors")
    if A.shape[1] != X.shape[1]:
        raise RepalignError(f"anchors have {A.shape[1]} features and X has {X.shape[1]}; take the anchors from the same layer")
    dtype = np.result_type(X.dtype, A.dtype)
    norms_x = np.linalg.norm(X, axis=1)
    norms_a = np.linalg.norm(A, axis=1)
    if not (norms_x > 0).all() or not (norms_a > 0).all():
        which = "an anchor" if not (norms_a > 0).all() else "a sample"
        raise RepalignError(f"{which} has an all-zero feature row, which has no cosine similarity; "
                            "choose other anchors or drop that sample")
    # the product in float64 keeps r within [-1, 1] to rounding for float32 features too
    R = (X / norms_x[:, None]).astype(np.float64) @ (A / norms_a[:, None]).astype(np.float64).T
    return np.clip(R, -1.0, 1.0).astype(dtype, copy=False)
