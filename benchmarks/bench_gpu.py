"""Benchmark of the torch engine (repalign.metrics.torch_engine) on a GPU, or on CPU torch.

For each N (D = 1,024, k = 10, synthetic float32 layers from bench_metrics.make_layers):

* torch engine, whole lists: ``TorchBackend(device).knn_state`` (hashing, candidate search on the
  device, float64 finish on the CPU), and its candidate search alone;
* naive GPU reference: torch's own dense ``topk`` of X Xᵀ (row chunks of the full matrix, no tie
  rule, no symmetry), the lists a platonic-rep-style script would get on the device;
* the numba CPU engine (``neighbors.knn_state``) at the sizes up to ``--numba-max`` in the same run,
  for the ratio, with a check that both engines give identical lists;
* a La × Lb mknn layer matrix (default 30 × 12 at N = 50,000) on the torch engine.

Prints a markdown table for docs/performance.md. Times are wall seconds (the device synchronised
before each clock read) and process CPU seconds; best of ``--repeats``.

Usage:
    python benchmarks/bench_gpu.py --device cuda                  # N = 10k, 50k, 100k; 30x12 at 50k
    python benchmarks/bench_gpu.py --device cpu --quick           # small sizes on CPU torch
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_metrics import make_layers  # noqa: E402  (the benchmarks' shared synthetic layers)

from repalign.metrics import align_layers  # noqa: E402
from repalign.metrics.neighbors import DistinctRows, knn_state, row_groups  # noqa: E402
from repalign.metrics.torch_engine import TorchBackend  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best(fn, device, repeats):
    """(result, wall s, CPU s) of the fastest of ``repeats`` calls."""
    runs = []
    for _ in range(repeats):
        sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        sync(device)
        runs.append((out, time.perf_counter() - t0, time.process_time() - c0))
    return min(runs, key=lambda r: r[1])


def dense_topk(X: np.ndarray, k: int, device: torch.device, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's dense reference: every row's top-k of its full similarity row, self masked."""
    T = torch.from_numpy(X).to(device)
    out_i, out_s = [], []
    with torch.no_grad():
        for r0 in range(0, T.shape[0], chunk):
            S = T[r0:r0 + chunk] @ T.T
            rows = torch.arange(S.shape[0], device=device)
            S[rows, rows + r0] = -torch.inf
            s, i = S.topk(k, dim=1)
            out_i.append(i.cpu())
            out_s.append(s.cpu())
    return torch.cat(out_i).numpy(), torch.cat(out_s).numpy()


def bench_size(n, d, k, backend, repeats, numba_max):
    (X,) = make_layers(n, d, 1, seed=n)
    device = backend.device
    rows_check = row_groups(X)
    U = np.ascontiguousarray(X[rows_check.first])
    state, t_torch, c_torch = best(lambda: backend.knn_state(X, k), device, repeats)
    _, t_search, c_search = best(lambda: backend.search(DistinctRows.in_memory(U), k + 2), device, repeats)
    _, t_dense, c_dense = best(lambda: dense_topk(X, k, device, backend.block), device, repeats)
    cells = [f"N={n:,}, D={d}, k={k}", f"{t_torch:.2f} ({c_torch:.1f})", f"{t_search:.2f} ({c_search:.1f})",
             f"{t_dense:.2f} ({c_dense:.1f})", f"{t_dense / t_torch:.2f}x"]
    if n <= numba_max:
        ref, t_numba, c_numba = best(lambda: knn_state(X, k), torch.device("cpu"), 1)
        same = all(np.array_equal(getattr(state, f), getattr(ref, f)) for f in ("indices", "similarities", "weights", "levels"))
        cells += [f"{t_numba:.2f} ({c_numba:.1f})", f"{t_numba / t_torch:.1f}x", "identical" if same else "DIFFERENT"]
    else:
        cells += ["-", "-", "-"]
    print("| " + " | ".join(cells) + " |", flush=True)


def bench_matrix(n, d, k, la, lb, backend):
    A = make_layers(n, d, la, seed=1)
    B = make_layers(n, d, lb, seed=2)
    result, t, c = best(lambda: align_layers(A, B, metric="mknn", k=k, backend=backend), backend.device, 1)
    i, j, score = result.best
    print(f"\nmknn layer matrix {la}x{lb}, N={n:,}, D={d}, k={k}, torch engine on {backend.device}: "
          f"{t:.1f} s wall, {c:.1f} CPU s ({la + lb} neighbour searches, {la * lb} pair scores); best pair ({i}, {j}) = {score:.4f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes (N = 2k, 4k; D = 256; 6x4 layers at N = 2k)")
    p.add_argument("--sizes", type=int, nargs="+", help="N values (default 10000 50000 100000)")
    p.add_argument("--width", type=int, help="D (default 1024)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--matrix", type=int, nargs=3, metavar=("N", "LA", "LB"), help="layer matrix (default 50000 30 12)")
    p.add_argument("--numba-max", type=int, help="largest N also run on the numba CPU engine (default 10000)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    sizes = args.sizes or ([2000, 4000] if args.quick else [10_000, 50_000, 100_000])
    width = args.width or (256 if args.quick else 1024)
    matrix = args.matrix or ([2000, 6, 4] if args.quick else [50_000, 30, 12])
    numba_max = args.numba_max if args.numba_max is not None else (4000 if args.quick else 10_000)
    backend = TorchBackend(args.device)
    name = torch.cuda.get_device_name(backend.device) if backend.device.type == "cuda" else platform.processor() or "cpu"
    print(f"torch {torch.__version__} on {backend.device} ({name}), {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    backend.knn_state(make_layers(300, 8, 1, seed=0)[0], 5)  # warm up torch and numba
    knn_state(make_layers(300, 8, 1, seed=0)[0], 5)
    print("\n| case | torch engine, lists: s wall (CPU s) | its candidate search | torch dense topk | dense / engine "
          "| numba CPU engine | numba / torch | lists |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        bench_size(n, width, args.k, backend, args.repeats, numba_max)
    bench_matrix(matrix[0], width, args.k, matrix[1], matrix[2], backend)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
