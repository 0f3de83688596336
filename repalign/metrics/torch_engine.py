"""The torch compute backend: Gram blocks, top-k candidates and CKA/HSIC statistics on a torch device.

``TorchBackend("cpu")`` runs on torch's CPU kernels, ``TorchBackend("cuda")`` / ``"cuda:1"`` on a GPU;
nothing here needs CUDA to run. What stays on the CPU, and why:

* row hashing into duplicate groups and the float64 finish of the candidates
  (:func:`repalign.metrics.neighbors.build_knn_state`, the same code as the numba engine): the
  candidates are only proposals, and the finish, a function of the rows alone, makes the lists
  identical to the numba engine's whatever the device's summation order;
* the list-based kNN scores and their relabelling under permutations (O(N·k) work on lists the
  finish leaves on the CPU).

Kernel (CKA) states keep their centred features or Gram matrix on the device; a pair's HSIC and
every permutation of it (``permuted``: one ``index_select`` on the device) are computed there.
Matrix products run in full float32 precision (TF32 off) so that the rounding bound the finish
relies on, (D + 2)·u·‖x‖·‖y‖, holds on GPUs too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from repalign.errors import RepalignError
from repalign.metrics import _numba, kernel, neighbors
from repalign.metrics._validate import check_permutation

#: rows per Gram block on the CPU (a float32 block of 16 MiB, as the numba engine) and on a GPU (256 MiB)
CPU_BLOCK = 2048
GPU_BLOCK = 8192


def torch_device(device: str | None) -> torch.device:
    """The torch device named ``device`` (None: the CPU), checked to exist; a one-line error otherwise."""
    name = "cpu" if device is None else device
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise RepalignError(f"device={device!r} is not understood by torch; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise RepalignError(f"device={device!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise RepalignError(f"device={device!r}: torch sees no CUDA GPU here; use device='cpu'")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise RepalignError(f"device={device!r}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; pick one of them")
    return dev


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """float32 products in full precision (no TF32) inside; the caller's setting is restored."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class TorchBackend:
    """The engine on a torch device (see the module docstring). ``block``: rows per Gram block
    (memory O(block²) for the products; default by device type)."""

    name = "torch"

    def __init__(self, device: str | None = None, block: int | None = None):
        self.device = torch_device(device)
        self.block = int(block) if block else (CPU_BLOCK if self.device.type == "cpu" else GPU_BLOCK)

    def __repr__(self) -> str:
        return f"TorchBackend(device={str(self.device)!r})"

    # ------------------------------------------------------------------ neighbour lists
    def knn_state(self, X: np.ndarray, k: int) -> neighbors.KnnState:
        return neighbors.knn_state(X, k, search=self.search)

    def candidate_search(self) -> neighbors.CandidateSearch:
        return self.search

    def search(self, rows: neighbors.DistinctRows, ks: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-ks candidates of every distinct row by inner products on the device (a
        :data:`~repalign.metrics.neighbors.CandidateSearch`): per row block, the products with each
        column block and a running ``topk``; sorted by decreasing similarity, the row itself left out."""
        g = rows.n
        out_idx = np.empty((g, ks), dtype=np.int64)
        out_sim = np.empty((g, ks))
        with torch.no_grad(), _full_precision():
            columns = self._column_blocks(rows)
            for r0, Xr in neighbors.rechunked_rows(rows, self.block):
                idx, sim = self._row_block_topk(self._upload(Xr), r0, columns(), ks, g)
                out_idx[r0:r0 + Xr.shape[0]] = idx.cpu().numpy()
                out_sim[r0:r0 + Xr.shape[0]] = sim.double().cpu().numpy()
        return out_idx, out_sim

    def _upload(self, block: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(block)).to(self.device)

    def _column_blocks(self, rows: neighbors.DistinctRows):
        """A callable giving (first row, device block) pairs: rows held in memory are uploaded once;
        rows read in blocks (out of core) are uploaded block by block on every pass."""
        first_two = list(itertools.islice(rows.blocks(), 2))
        if len(first_two) == 1:
            whole = self._upload(first_two[0][1])
            return lambda: ((c0, whole[c0:c0 + self.block]) for c0 in range(0, rows.n, self.block))
        return lambda: ((c0, self._upload(Xc)) for c0, Xc in neighbors.rechunked_rows(rows, self.block))

    @staticmethod
    def _row_block_topk(Xr: torch.Tensor, r0: int, columns, ks: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows_here = Xr.shape[0]
        best_sim = torch.full((rows_here, ks), -torch.inf, dtype=Xr.dtype, device=Xr.device)
        best_idx = torch.full((rows_here, ks), g, dtype=torch.int64, device=Xr.device)
        for c0, Xc in columns:
            S = Xr @ Xc.T
            lo, hi = max(r0, c0), min(r0 + rows_here, c0 + Xc.shape[0])
            if lo < hi:  # the block holds some rows' own similarities: leave them out
                own = torch.arange(lo, hi, device=Xr.device)
                S[own - r0, own - c0] = -torch.inf
            top_sim, top_col = S.topk(min(ks, S.shape[1]), dim=1)
            merged_sim = torch.cat([best_sim, top_sim], dim=1)
            merged_idx = torch.cat([best_idx, top_col + c0], dim=1)
            best_sim, pick = merged_sim.topk(ks, dim=1)
            best_idx = merged_idx.gather(1, pick)
            del S
        return best_idx, best_sim

    # ------------------------------------------------------------------ kernel states
    def kernel_state(self, X: np.ndarray, kernel_name: str, sigma: float | None, unbiased: bool) -> "DeviceKernelState":
        with torch.no_grad():
            if kernel_name == "linear":
                return _linear_state(self._upload(X), unbiased)
            if sigma is None:
                sigma = kernel._median_distance(X)
                if sigma == 0.0:
                    raise RepalignError("the median pairwise distance of X is 0, so the RBF bandwidth is undefined; "
                                        "pass sigma explicitly or remove duplicate rows")
            return _rbf_state(self._upload(X), float(sigma), unbiased)


@dataclass(frozen=True)
class DeviceKernelState:
    """A CKA state whose arrays live on a torch device (fields as in
    :class:`repalign.metrics.kernel.KernelState`): linear kernels keep the column-centred features
    and the squared row norms, RBF kernels the (centred, or zero-diagonal) Gram with its row sums."""

    n: int
    unbiased: bool
    features: Any
    row_sq: Any
    gram: Any
    gram_row_sums: Any
    gram_total: float
    self_hsic: float
    sigma: float | None

    @property
    def n_samples(self) -> int:
        return self.n

    def permuted(self, perm) -> "DeviceKernelState":
        """State of X[perm], relabelled on the device."""
        perm = check_permutation(perm, self.n)
        device = (self.features if self.features is not None else self.gram).device
        p = torch.from_numpy(np.ascontiguousarray(perm, dtype=np.int64)).to(device)
        with torch.no_grad():
            return dataclasses.replace(
                self,
                features=None if self.features is None else self.features.index_select(0, p),
                row_sq=None if self.row_sq is None else self.row_sq.index_select(0, p),
                gram=None if self.gram is None else self.gram.index_select(0, p).index_select(1, p),
                gram_row_sums=None if self.gram_row_sums is None else self.gram_row_sums.index_select(0, p),
            )

    def hsic_with(self, other: "DeviceKernelState") -> float:
        """HSIC of this layer's kernel with ``other``'s (the formulas of :mod:`repalign.metrics.kernel`)."""
        n = self.n
        with torch.no_grad(), _full_precision():
            if self.features is not None and other.features is not None:
                cross = _frobenius_cross(self.features, other.features)
                if not self.unbiased:
                    return cross / (n - 1) ** 2
                rq = float(torch.dot(self.row_sq, other.row_sq))
                return float(_numba.hsic_unbiased_from_stats(cross - rq, -float(self.row_sq.sum()), -float(other.row_sq.sum()),
                                                             rq, float(n)))
            trace = float((self.gram * other.gram).sum())
            if not self.unbiased:
                return trace / (n - 1) ** 2
            sum_kl = float(torch.dot(self.gram_row_sums, other.gram_row_sums))
            return float(_numba.hsic_unbiased_from_stats(trace, self.gram_total, other.gram_total, sum_kl, float(n)))


def _frobenius_cross(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖AᵀB‖_F²: the product in the features' precision, squares summed in float64 (as the numba engine)."""
    G = (a.T @ b).double()
    return float((G * G).sum())


def _linear_state(X: torch.Tensor, unbiased: bool) -> DeviceKernelState:
    Xc64 = X.double()
    Xc64 -= Xc64.mean(dim=0)
    top = float(Xc64.abs().max()) if Xc64.numel() else 0.0
    scale = neighbors.overflow_scale(top)  # an exact power of two, as kernel.kernel_state (CKA is scale-invariant)
    if scale != 1.0:
        Xc64 *= scale
    state = DeviceKernelState(X.shape[0], unbiased, Xc64.to(X.dtype), (Xc64 * Xc64).sum(dim=1), None, None, 0.0, 0.0, None)
    return dataclasses.replace(state, self_hsic=state.hsic_with(state))


def _rbf_state(X: torch.Tensor, sigma: float, unbiased: bool) -> DeviceKernelState:
    X64 = X.double()
    sq = (X64 * X64).sum(dim=1)
    d2 = torch.clamp(sq[:, None] + sq[None, :] - 2.0 * (X64 @ X64.T), min=0.0)
    d2.fill_diagonal_(0.0)
    K = torch.exp(-d2 / (2.0 * sigma * sigma))
    del d2
    if unbiased:
        K.fill_diagonal_(0.0)
        row_sums = K.sum(dim=1)
        state = DeviceKernelState(X.shape[0], True, None, None, K, row_sums, float(row_sums.sum()), 0.0, sigma)
    else:
        Kc = K - K.mean(dim=0) - K.mean(dim=1, keepdim=True) + K.mean()
        state = DeviceKernelState(X.shape[0], False, None, None, Kc, None, 0.0, 0.0, sigma)
    return dataclasses.replace(state, self_hsic=state.hsic_with(state))
