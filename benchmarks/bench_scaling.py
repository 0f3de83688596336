"""Measurements behind the cost model of docs/scaling.md: exact out-of-core kNN of one layer.

For each N: the Gram floor (the BLAS products of the upper triangle of X Xᵀ in the search's own
blocks, nothing else), the full exact search of one layer read in row blocks
(``blocked_knn_state``, what ``compare --block-rows`` runs per layer), wall and CPU seconds, the
load average, and the times two forms of the cost model predict from a calibration at the two
smallest N:

    from N alone:       T(N) = a · N · D + c · N² · D / 2      (a, c fitted on wall and on CPU seconds)
    from the BLAS rate: T(N) = κ · F(N),   F(N) = the Gram floor measured in the same process

The first assumes the process gets the same CPU share at every size; on a shared machine it does
not, and its wall-time error is the change of that share. The second carries the machine's
current multiply-add rate (the floor: the same products, nothing else, just before the search),
so only κ, the search's overhead over its own products (top-k merges, the float64 finish), is
calibrated. Sizes up to ``--repeat-below`` rows run ``--repeats`` times and keep the fastest run
(a short run is at the mercy of the load).

Each size runs in a fresh interpreter (``--child``), which also reports its peak RSS (VmHWM).

Usage:
    python benchmarks/bench_scaling.py --sizes 2500 5000 10000 50000 100000 --dim 512 --json out.jsonl
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


def child(n: int, d: int, k: int, block_rows: int, repeats: int = 1) -> dict:
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
    runs = []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        state = blocked_knn_state(lambda: (X[s:s + block_rows] for s in range(0, n, block_rows)), k)
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, cpu = min(runs)
    return {"n": n, "d": d, "k": k, "floor_s": floor_wall, "floor_cpu_s": floor_cpu, "search_s": wall,
            "search_cpu_s": cpu, "load_start": load0, "load_end": os.getloadavg()[0], "peak_rss_mib": _peak_rss_mib(),
            "list_width": int(state.indices.shape[1])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10000, 50000, 100000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block-rows", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each small size (the fastest is kept)")
    parser.add_argument("--repeat-below", type=int, default=10000, help="sizes up to this are repeated")
    parser.add_argument("--json", help="also write one JSON line per size to this file")
    parser.add_argument("--table", help="print the table of a --json file written before, and measure nothing")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.table:
        with open(args.table) as fh:
            print(table(sorted((json.loads(line) for line in fh if line.strip()), key=lambda r: r["n"])))
        return
    if args.child:
        print(json.dumps(child(args.sizes[0], args.dim, args.k, args.block_rows, args.repeats)), flush=True)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sizes = sorted(args.sizes)
    print(f"{os.cpu_count()} CPU(s); load average at start {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for n in sizes:
        repeats = args.repeats if n <= args.repeat_below else 1
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--sizes", str(n), "--dim",
                              str(args.dim), "--k", str(args.k), "--block-rows", str(args.block_rows),
                              "--repeats", str(repeats)],
                             cwd=root, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"N={n}: {rows[-1]}", flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(rows[-1]) + "\n")
    print(table(rows), flush=True)


def fit(rows: list[dict], key: str) -> tuple[float, float]:
    """(a, c) of T = a·N·D + c·N²·D/2 through the two smallest sizes (exact for two points)."""
    A = np.array([[r["n"] * r["d"], r["n"] ** 2 * r["d"] / 2] for r in rows[:2]], dtype=float)
    a, c = np.linalg.solve(A, np.array([r[key] for r in rows[:2]], dtype=float))
    return float(a), float(c)


def table(rows: list[dict]) -> str:
    """The markdown table of docs/scaling.md: calibration on the two smallest sizes, the others predicted."""
    wall, cpu = fit(rows, "search_s"), fit(rows, "search_cpu_s")
    kappa = float(np.mean([r["search_s"] / r["floor_s"] for r in rows[:2]]))
    lines = [f"calibration: wall a = {wall[0]:.3g} s per row·dim, c = {wall[1]:.3g} s per multiply-add; "
             f"CPU a = {cpu[0]:.3g}, c = {cpu[1]:.3g}; search / floor kappa = {kappa:.2f}",
             "| N | D | Gram floor s (CPU s) | search s (CPU s) | search / floor | load start-end | "
             "from N: predicted s (CPU s) | from N: predicted / measured wall (CPU) | "
             "κ · floor: predicted s | κ · floor: predicted / measured | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        model = lambda ac: ac[0] * r["n"] * r["d"] + ac[1] * r["n"] ** 2 * r["d"] / 2  # noqa: E731
        if i < 2:
            predicted = ratio = by_floor = floor_ratio = "(calibration)"
        else:
            predicted = f"{model(wall):.1f} ({model(cpu):.1f})"
            ratio = f"{model(wall) / r['search_s']:.2f} ({model(cpu) / r['search_cpu_s']:.2f})"
            by_floor = f"{kappa * r['floor_s']:.1f}"
            floor_ratio = f"{kappa * r['floor_s'] / r['search_s']:.2f}"
        lines.append(f"| {r['n']:,} | {r['d']} | {r['floor_s']:.1f} ({r['floor_cpu_s']:.1f}) | "
                     f"{r['search_s']:.1f} ({r['search_cpu_s']:.1f}) | {r['search_s'] / r['floor_s']:.2f} | "
                     f"{r['load_start']:.1f}-{r['load_end']:.1f} | {predicted} | {ratio} | {by_floor} | {floor_ratio} | "
                     f"{r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
