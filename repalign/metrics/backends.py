"""Compute backends: where the heavy per-layer work of the engine runs.

A backend is any object with the small protocol :class:`ComputeBackend`: it builds a layer's
tie-aware neighbour lists (:class:`~repalign.metrics.neighbors.KnnState`), its kernel (CKA) state,
and gives the candidate search of the out-of-core neighbour lists. Two are built in, named by
strings (:func:`get_backend`):

* ``"numba"`` (default): BLAS Gram blocks and numba top-k merges on the CPU
  (:mod:`repalign.metrics.neighbors`, :mod:`repalign.metrics.kernel`);
* ``"torch"`` with a ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``): Gram blocks, top-k candidates,
  CKA/HSIC statistics and their permutations on that device
  (:mod:`repalign.metrics.torch_engine`).

Every backend finishes neighbour candidates with the same float64 tie rule
(:func:`repalign.metrics.neighbors.build_knn_state`), so kNN lists and scores are identical
across backends; kernel statistics agree to float32 rounding.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics import kernel, neighbors

#: the key under which :func:`repalign.metrics.engine.layer_state` puts the backend into a layer's state cache
BACKEND_KEY = "compute_backend"
BACKEND_NAMES = ("numba", "torch")


@runtime_checkable
class ComputeBackend(Protocol):
    """What the engine asks of a backend (the preprocessed layer ``X`` is a float (N, D) array)."""

    name: str

    def knn_state(self, X: np.ndarray, k: int) -> neighbors.KnnState:
        """Tie-aware neighbour lists of ``X`` (as :func:`repalign.metrics.neighbors.knn_state`)."""
        ...

    def kernel_state(self, X: np.ndarray, kernel_name: str, sigma: float | None, unbiased: bool) -> Any:
        """A CKA state: any object with ``n_samples``, ``self_hsic``, ``hsic_with(other)`` and ``permuted(perm)``."""
        ...

    def candidate_search(self) -> neighbors.CandidateSearch | None:
        """The candidate search of out-of-core neighbour lists (None: the default BLAS search)."""
        ...


class NumbaBackend:
    """The CPU engine: BLAS Gram blocks, numba top-k merges and kernels."""

    name = "numba"
    device = "cpu"

    def knn_state(self, X: np.ndarray, k: int) -> neighbors.KnnState:
        return neighbors.knn_state(X, k)

    def kernel_state(self, X: np.ndarray, kernel_name: str, sigma: float | None, unbiased: bool) -> kernel.KernelState:
        return kernel.kernel_state(X, kernel_name, sigma, unbiased)

    def candidate_search(self) -> neighbors.CandidateSearch | None:
        return None

    def __repr__(self) -> str:
        return "NumbaBackend()"


NUMBA = NumbaBackend()


def get_backend(engine: Any = "numba", device: str | None = None) -> ComputeBackend:
    """The backend named ``engine`` (``"numba"`` or ``"torch"``) on ``device``, or ``engine`` itself when
    it already is a backend object (then ``device`` must be None)."""
    if not isinstance(engine, str):
        if not isinstance(engine, ComputeBackend):
            raise RepalignError(f"engine={engine!r} is neither one of {', '.join(BACKEND_NAMES)} nor an object with "
                                "knn_state, kernel_state and candidate_search; pass engine='numba' or 'torch'")
        if device is not None:
            raise RepalignError("device applies to a built-in backend named by a string; drop device with a backend object")
        return engine
    if engine == "numba":
        if device not in (None, "cpu"):
            raise RepalignError(f"device={device!r} needs engine='torch' (numba runs on the CPU); add engine='torch' or drop device")
        return NUMBA
    if engine == "torch":
        from repalign.metrics.torch_engine import TorchBackend  # lazy: torch loads in about a second

        return TorchBackend(device)
    raise RepalignError(f"engine={engine!r} is not one of {', '.join(BACKEND_NAMES)}; pass e.g. engine='torch'")


def backend_of(cache: dict) -> ComputeBackend:
    """The backend of a layer's state cache (the numba engine when none was set)."""
    return cache.get(BACKEND_KEY) or NUMBA
