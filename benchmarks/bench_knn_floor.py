"""The exact tie-aware neighbour search against its floor, the symmetric Gram product.

For each (N, D) and k, synthetic float32 layers (bench_metrics.make_layers), in one process and
back to back, the median of ``--repeats`` runs:

* floor: the upper-triangle blocks of X Xᵀ alone (``DEFAULT_BLOCK`` rows, as the search forms them),
  measured in every repeat next to the searches; the ratios printed are medians over the repeats of
  each search's time over its repeat's floor (the time columns are medians of the times);
* numba engine: ``neighbors.knn_state`` (row grouping, blocked search with the fused top-k merge,
  float64 finish), in memory;
* out of core: ``outofcore.blocked_knn_state`` on the same rows given as 16,384-row blocks;
* torch engine on CPU torch: ``TorchBackend("cpu").knn_state`` (full Gram blocks: its floor is twice
  the symmetric one);
* with ``--pair``: one mknn pair on the engine against the dense platonic-rep-style reference of
  bench_metrics (float64 N×N similarities, full argsort, N×N masks), N up to 8,192.

Times are process CPU seconds (``time.process_time``: all threads of this process); the thread
count is fixed with ``--threads`` (default 1: on a shared machine spinning threads waiting for a
core add CPU seconds that are not work). The load average is printed with every row. A case whose
estimated time (from one floor run) exceeds ``--max-seconds`` is skipped, with a row saying so.

Usage:
    python benchmarks/bench_knn_floor.py                                   # N = 4k-64k, D = 256-2,048, k = 10
    python benchmarks/bench_knn_floor.py --sizes 16384 --widths 512 --k 5 10 50   # the reference case
    python benchmarks/bench_knn_floor.py --sizes 4096 8192 --widths 1024 --pair
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_metrics import dense_mknn, make_layers  # noqa: E402  (the benchmarks' shared layers and reference)

from repalign.metrics import mknn  # noqa: E402
from repalign.metrics.neighbors import DEFAULT_BLOCK, knn_state  # noqa: E402
from repalign.metrics.outofcore import blocked_knn_state  # noqa: E402

SOURCE_ROWS = 16_384


def cpu_seconds(fn) -> tuple[object, float]:
    c0 = time.process_time()
    out = fn()
    return out, time.process_time() - c0


def gram_floor(X: np.ndarray, block: int = DEFAULT_BLOCK) -> None:
    n = X.shape[0]
    for r0 in range(0, n, block):
        for c0 in range(r0, n, block):
            S = X[r0:r0 + block] @ X[c0:c0 + block].T
            del S


def row(n, d, ks, repeats, torch_max, max_seconds):
    (X,) = make_layers(n, d, 1, seed=n + d)
    _, once = cpu_seconds(lambda: gram_floor(X))
    kinds = 3 + (n <= torch_max)
    estimate = once * repeats * len(ks) * (1 + 1.4 * (kinds - 1))  # the searches take about 1.1-1.5 floors
    if estimate > max_seconds:
        print(f"| N={n:,}, D={d:,}, k={'/'.join(map(str, ks))} | {once:.2f} | skipped: about {estimate:.0f} s "
              f"(> {max_seconds:.0f} s) | | | | | | {os.getloadavg()[0]:.1f} |", flush=True)
        return
    blocks = [X[s:s + SOURCE_ROWS] for s in range(0, n, SOURCE_ROWS)]
    for k in ks:
        times: dict[str, list[float]] = {"floor": [], "search": [], "ooc": [], "torch": []}
        same = equal = True
        for _ in range(repeats):  # the floor in every repeat, next to the searches it is compared with
            times["floor"].append(cpu_seconds(lambda: gram_floor(X))[1])
            state, t = cpu_seconds(lambda: knn_state(X, k))
            times["search"].append(t)
            blocked, t = cpu_seconds(lambda: blocked_knn_state(blocks, k, normalize=None))
            times["ooc"].append(t)
            same &= np.array_equal(blocked.indices, state.indices) and np.array_equal(blocked.weights, state.weights)
            if n <= torch_max:
                from repalign.metrics.torch_engine import TorchBackend  # lazy: torch only for this column

                on_torch, t = cpu_seconds(lambda: TorchBackend("cpu").knn_state(X, k))
                times["torch"].append(t)
                equal &= np.array_equal(on_torch.indices, state.indices) and np.array_equal(on_torch.weights, state.weights)
        floor, search, ooc = (float(np.median(times[key])) for key in ("floor", "search", "ooc"))
        cells = [f"N={n:,}, D={d:,}, k={k}", f"{floor:.2f}", f"{search:.2f}", f"**{paired_ratio(times, 'search'):.2f}x**",
                 f"{ooc:.2f}", f"{paired_ratio(times, 'ooc'):.2f}x" + ("" if same else " (lists DIFFER)")]
        if times["torch"]:
            t = float(np.median(times["torch"]))
            cells += [f"{t:.2f}", f"{paired_ratio(times, 'torch'):.2f}x" + ("" if equal else " (lists DIFFER)")]
        else:
            cells += ["-", "-"]
        cells.append(f"{os.getloadavg()[0]:.1f}")
        print("| " + " | ".join(cells) + " |", flush=True)


def paired_ratio(times: dict[str, list[float]], key: str) -> float:
    """Median over the repeats of each run's time over the floor measured just before it: a slow
    spell of a shared machine that spans both cancels, where a ratio of medians would keep it."""
    return float(np.median(np.array(times[key]) / np.array(times["floor"])))


def pair_row(n, d, k):
    X, Y = make_layers(n, d, 2, seed=7)
    ours, t_engine = cpu_seconds(lambda: mknn(X, Y, k=k))
    dense, t_dense = cpu_seconds(lambda: dense_mknn(X, Y, k))
    print(f"| mknn pair, N={n:,}, D={d:,} | {t_engine:.2f} | {t_dense:.2f} | {t_dense / t_engine:.1f}x | "
          f"{ours:.6f} / {dense:.6f} | {os.getloadavg()[0]:.1f} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--widths", type=int, nargs="+", default=[256, 512, 2048])
    p.add_argument("--k", type=int, nargs="+", default=[10], help="neighbours (several: one row each)")
    p.add_argument("--repeats", type=int, default=3, help="runs per case; the median is printed")
    p.add_argument("--max-seconds", type=float, default=300.0, help="skip a case estimated to take longer")
    p.add_argument("--threads", type=int, default=1, help="BLAS and numba threads (default 1)")
    p.add_argument("--torch-max", type=int, default=16384, help="largest N also run on CPU torch")
    p.add_argument("--pair", action="store_true", help="also mknn pairs against the dense reference (N <= 8,192)")
    args = p.parse_args(argv)
    numba.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        import torch

        torch.set_num_threads(args.threads)
        knn_state(make_layers(3000, 16, 1, seed=0)[0], 10)  # load the numba kernels
        print(f"{args.threads} thread(s), median of {args.repeats}, CPU seconds; load average {os.getloadavg()[0]:.1f} at the start\n")
        print("| case | Gram floor | numba search | search / floor | out of core | / floor | torch CPU | / floor | load |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n in args.sizes:
            for d in args.widths:
                row(n, d, args.k, args.repeats, args.torch_max, args.max_seconds)
        if args.pair:
            print("\n| case | engine CPU s | dense CPU s | ratio | scores | load |\n|---|---|---|---|---|---|")
            for n in [s for s in args.sizes if s <= 8192]:
                pair_row(n, 1024, args.k[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
