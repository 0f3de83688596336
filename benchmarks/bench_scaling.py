"""Measurements behind the cost model of docs/scaling.md: exact out-of-core kNN of one layer.

For each N: the Gram floor (the BLAS products of the upper triangle of X Xᵀ in the search's own
blocks, nothing else), the full exact search of one layer read in row blocks
(``blocked_knn_state``, what ``compare --block-rows`` runs per layer), wall and CPU seconds, the
load average, and the time the cost model predicts from a calibration at the smallest N:

    T(N) = c · N² · D / 2,   c = T(N0) / (N0² · D / 2)

Each size runs in a fresh interpreter (``--child``), which also reports its peak RSS (VmHWM).

Usage:
    python benchmarks/bench_scaling.py --sizes 5000 10000 50000 100000 --dim 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def _layer(n, d, seed=0, shared=16):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, shared)).astype(np.float32)
    X = Z @ rng.standard_normal((shared, d)).astype(np.float32) + rng.standard_normal((n, d)).astype(np.float32)
    return X


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(n: int, d: int, k: int, block_rows: int) -> dict:
    # lazy: the child's peak memory is measured, so it imports only what the search needs
    from repalign.metrics.neighbors import DEFAULT_BLOCK
    from repalign.metrics.outofcore import blocked_knn_state
    from repalign.metrics.prepare import prepare

    X = prepare(_layer(n, d))
    blocked_knn_state(lambda: (X[s:s + 4096] for s in range(0, 4096, 4096)), k)  # numba kernels loaded
    load0 = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    for r0 in range(0, n, DEFAULT_BLOCK):  # the floor: the same upper-triangle products, nothing else
        Xr = X[r0:r0 + DEFAULT_BLOCK]
        for c0_ in range(r0, n, DEFAULT_BLOCK):
            S = Xr @ X[c0_:c0_ + DEFAULT_BLOCK].T
            del S
    floor_wall, floor_cpu = time.perf_counter() - t0, time.process_time() - c0
    c0, t0 = time.process_time(), time.perf_counter()
    state = blocked_knn_state(lambda: (X[s:s + block_rows] for s in range(0, n, block_rows)), k)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"n": n, "d": d, "k": k, "floor_s": floor_wall, "floor_cpu_s": floor_cpu, "search_s": wall,
            "search_cpu_s": cpu, "load_start": load0, "load_end": os.getloadavg()[0], "peak_rss_mib": _peak_rss_mib(),
            "list_width": int(state.indices.shape[1])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 50000, 100000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block-rows", type=int, default=16384)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.sizes[0], args.dim, args.k, args.block_rows)), flush=True)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    calibration = None
    print(f"{os.cpu_count()} CPU(s); load average at start {os.getloadavg()[0]:.1f}", flush=True)
    print("| N | D | Gram floor s | search s (CPU s) | search / floor | predicted s | predicted / measured | "
          "load start-end | peak RSS MiB |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for n in args.sizes:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--sizes", str(n), "--dim",
                              str(args.dim), "--k", str(args.k), "--block-rows", str(args.block_rows)],
                             cwd=root, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        work = r["n"] ** 2 * r["d"] / 2
        if calibration is None:
            calibration = r["search_s"] / work
            predicted = "(calibration)"
            ratio = "-"
        else:
            predicted = f"{calibration * work:.1f}"
            ratio = f"{calibration * work / r['search_s']:.2f}"
        print(f"| {r['n']:,} | {r['d']} | {r['floor_s']:.1f} | {r['search_s']:.1f} ({r['search_cpu_s']:.0f}) | "
              f"{r['search_s'] / r['floor_s']:.2f} | {predicted} | {ratio} | {r['load_start']:.1f}-{r['load_end']:.1f} | "
              f"{r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
