"""Explicit feature preprocessing, applied before a metric and recorded with its scores."""

from __future__ import annotations

import numbers

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_features

NORMALIZE_CHOICES = ("l2", "center", None)


def prepare(X, normalize="l2", clip_quantile=None) -> np.ndarray:
    """Preprocess a feature matrix (N, D) the way the alignment metrics expect.

    Steps, in this order:

    1. ``clip_quantile=q`` (0.5 < q < 1, e.g. 0.95): outlier clipping as in platonic-rep's
       ``remove_outliers``: the threshold t is the q-quantile of |x| within each row (linear
       interpolation), averaged over rows; every value is clipped to [-t, t]. It damps the few
       huge activation dimensions transformers are known for.
    2. ``normalize``: ``"l2"`` divides every row by its Euclidean norm (cosine geometry, what
       platonic-rep does before every metric); ``"center"`` subtracts the column means; ``None``
       leaves the rows as they are.

    Returns a new float32 array for float32 input, float64 otherwise. A row of zeros cannot be
    L2-normalised and raises RepalignError.
    """
    if normalize not in NORMALIZE_CHOICES:
        raise RepalignError(f"normalize={normalize!r} is not supported; use one of 'l2', 'center' or None")
    X = as_features(X, "X")
    out = X.astype(np.float64)
    if clip_quantile is not None:
        if isinstance(clip_quantile, bool) or not isinstance(clip_quantile, numbers.Real) or not 0.5 < clip_quantile < 1:
            raise RepalignError(f"clip_quantile={clip_quantile!r} is invalid; pass a number in (0.5, 1), e.g. 0.95, or None")
        threshold = np.quantile(np.abs(out), float(clip_quantile), axis=1).mean()
        np.clip(out, -threshold, threshold, out=out)
    if normalize == "l2":
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        zero = np.flatnonzero(norms[:, 0] == 0)
        if zero.size:
            raise RepalignError(
                f"{zero.size} row(s) of X are all zeros (first: row {zero[0]}) and cannot be L2-normalised; drop them or use normalize=None"
            )
        out /= norms
    elif normalize == "center":
        out -= out.mean(axis=0)
    return out.astype(X.dtype, copy=False)
