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
    check_prepare_options(normalize, clip_quantile)
    return prepare_valid(as_features(X, "X"), normalize, clip_quantile)


def check_prepare_options(normalize, clip_quantile) -> None:
    if normalize not in NORMALIZE_CHOICES:
        raise RepalignError(f"normalize={normalize!r} is not supported; use one of 'l2', 'center' or None")
    if clip_quantile is not None:
        # ignore: typeshed's numbers.Real has no __gt__, so mypy rejects 0.5 < Real (fine at runtime)
        if isinstance(clip_quantile, bool) or not isinstance(clip_quantile, numbers.Real) or not 0.5 < clip_quantile < 1:  # type: ignore[operator]
            raise RepalignError(f"clip_quantile={clip_quantile!r} is invalid; pass a number in (0.5, 1), e.g. 0.95, or None")


def prepare_valid(X: np.ndarray, normalize="l2", clip_quantile=None) -> np.ndarray:
    """:func:`prepare` on an array already checked by ``as_features`` (internal: no checks)."""
    out = X
    if clip_quantile is not None:
        threshold = np.quantile(np.abs(X), float(clip_quantile), axis=1).mean()
        out = np.clip(X, -threshold, threshold).astype(X.dtype, copy=False)
    if normalize == "l2":
        # Norms accumulate in float64; the scaling stays in the storage precision.
        norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64))
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise RepalignError(
                f"{zero.size} row(s) of X are all zeros (first: row {zero[0]}) and cannot be L2-normalised; drop them or use normalize=None"
            )
        return np.ascontiguousarray(out * (1.0 / norms).astype(X.dtype)[:, None])
    if normalize == "center":
        return (out - out.mean(axis=0, dtype=np.float64)).astype(X.dtype, copy=False)
    return out.copy() if out is X else out
