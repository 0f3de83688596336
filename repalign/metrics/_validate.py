"""Input checks shared by every public metric function (run once, at the public boundary)."""

from __future__ import annotations

import numbers

import numpy as np

from repalign.errors import RepalignError


def as_features(X, name: str = "X") -> np.ndarray:
    """Return X as a C-contiguous float32 or float64 (N, D) array, or raise a one-line RepalignError.

    float32 input stays float32 (the storage type of cached activations); anything else becomes
    float64. Torch tensors on any device are accepted (detached, moved to the CPU; bfloat16 and
    float16 widened to float32). Rejects non-numeric, non-2-D, empty, zero-width and non-finite arrays.
    """
    X = _from_tensor(X)
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise RepalignError(f"{name} is not an array ({exc}); pass a 2-D numeric array of shape (n_samples, n_features)") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise RepalignError(f"{name} has dtype {arr.dtype}; pass a numeric 2-D array of shape (n_samples, n_features)")
    if np.iscomplexobj(arr):
        raise RepalignError(f"{name} is complex; pass real-valued features")
    if arr.ndim != 2:
        raise RepalignError(f"{name} has {arr.ndim} dimension(s) with shape {arr.shape}; "
                            "pass a 2-D array (n_samples, n_features), e.g. pooled per-sample features")
    n, d = arr.shape
    if n == 0:
        raise RepalignError(f"{name} has no rows (shape {arr.shape}); pass at least one sample per row")
    if d == 0:
        raise RepalignError(f"{name} has zero features (shape {arr.shape}); pass at least one feature column")
    arr = storage_array(arr)
    if not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr).all(axis=1)))
        raise RepalignError(f"{name} contains NaN or infinite values in {bad} row(s); drop or repair those samples before computing alignment")
    return arr


def _from_tensor(X):
    """A torch tensor as a numpy array (torch is not imported: any object with detach/cpu/numpy)."""
    if type(X).__module__.split(".")[0] != "torch" or not hasattr(X, "detach"):
        return X
    t = X.detach().cpu()
    if t.is_floating_point() and t.element_size() < 4:  # bfloat16 / float16: numpy has no bfloat16
        t = t.float()
    return t.numpy()


def storage_array(X) -> np.ndarray:
    """The C-contiguous float32 / float64 array ``as_features`` returns, for input it already accepted."""
    arr = np.asarray(X)
    return np.ascontiguousarray(arr, dtype=np.float32 if arr.dtype == np.float32 else np.float64)


def as_pair(X, Y) -> tuple[np.ndarray, np.ndarray]:
    """Validate two feature matrices whose row i is the same sample."""
    X = as_features(X, "X")
    Y = as_features(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise RepalignError(
            f"X has {X.shape[0]} samples but Y has {Y.shape[0]}; both must hold the same samples in the same row order"
        )
    return X, Y


def check_int(value, name: str, low: int, high: int | None = None, why: str = "") -> int:
    """Return value as int if low <= value <= high, else raise a one-line RepalignError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RepalignError(f"{name}={value!r} is not an integer; pass a whole number >= {low}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise RepalignError(f"{name}={value} is out of range; {name} must be {bound}{why}")
    return value


def check_k(k, n: int, low: int = 1) -> int:
    """Number of neighbours: low <= k <= n - 1 (self is excluded, so only n - 1 candidates exist)."""
    if n - 1 < low:
        raise RepalignError(f"only {n} sample(s); kNN metrics need at least {low + 1} samples")
    return check_int(k, "k", low, n - 1, f" for {n} samples (self is excluded); lower k or add samples")


def check_min_samples(n: int, minimum: int, what: str) -> None:
    if n < minimum:
        raise RepalignError(f"{what} needs at least {minimum} samples but got {n}; add samples")


def check_permutation(perm, n: int) -> np.ndarray:
    """perm as int64 if it is a permutation of 0..n-1, else a one-line RepalignError."""
    perm = np.asarray(perm)
    if perm.shape != (n,) or not np.issubdtype(perm.dtype, np.integer) or not np.array_equal(np.sort(perm), np.arange(n)):
        raise RepalignError(f"perm must be a permutation of 0..{n - 1}; pass e.g. numpy.random.default_rng(seed).permutation({n})")
    return np.ascontiguousarray(perm, dtype=np.int64)


# Samples above which a per-layer N x N float64 matrix (RSA, information imbalance) is refused: 2 GiB.
MAX_SQUARE_SAMPLES = 16384


def check_square_size(n: int, what: str) -> None:
    """A one-line error when an N x N float64 matrix per layer would exceed :data:`MAX_SQUARE_SAMPLES`."""
    if n > MAX_SQUARE_SAMPLES:
        gib = n * n * 8 / 2**30
        raise RepalignError(f"{what} holds an N x N matrix per layer: N = {n} needs {gib:.1f} GiB each; "
                            f"compare at most {MAX_SQUARE_SAMPLES} samples (a random subset, or fewer token rows)")
