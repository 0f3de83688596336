"""Cost of a small append (one writer: open, append one batch, close) to a large cache.

    .venv/bin/python benchmarks/bench_cache_append.py --gb 1 2 --folder /scratch

Builds, for each size, a cache of float32 features (one 1024-wide layer, no compression, so the
file has the given size), then times ``--repeats`` small appends of 4 samples each and reports
the median wall times of opening the writer (it reads the stored ids to resume), appending and
closing (consolidating the batch into the main file), and how much the main file grew. Uses only the public
CacheWriter API, so the same script measures an older version of embeddings_cache (put it first
on PYTHONPATH) on the same files. The page cache is warm (the file was just written): on a cold
cache, a design that copies the file pays the disk's read time too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from embeddings_cache import CacheWriter

DIM = 1024
BATCH = 8192  # rows per batch while building: 32 MB


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build(path: Path, gigabytes: float) -> None:
    rows = int(gigabytes * (1 << 30) / (DIM * 4))
    rng = np.random.default_rng(0)
    block = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    with CacheWriter(path, "m", {"options": {}}, ["l"], compression=None) as w:
        for start in range(0, rows, BATCH):
            ids = [f"s{i}" for i in range(start, min(start + BATCH, rows))]
            w.append(ids, [sha(i) for i in ids], {"l": block[: len(ids)]})


def small_append(path: Path, tag: str) -> tuple[float, float, float, int]:
    """(seconds to open the writer, to append, to close it; bytes the main file grew)."""
    before = path.stat().st_size
    ids = [f"{tag}-{i}" for i in range(4)]
    t0 = time.perf_counter()
    w = CacheWriter(path, "m", {"options": {}}, ["l"], compression=None)
    t1 = time.perf_counter()
    w.append(ids, [sha(i) for i in ids], {"l": np.ones((4, DIM), dtype=np.float32)})
    t2 = time.perf_counter()
    w.close()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, path.stat().st_size - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, nargs="+", default=[1.0])
    parser.add_argument("--folder", default=".")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the caches (reuse them with --reuse)")
    parser.add_argument("--reuse", action="store_true", help="append to caches built by an earlier run")
    args = parser.parse_args()
    print("| cache size | samples | open s | append s | close s | main file growth |")
    print("|---|---|---|---|---|---|")
    for gb in args.gb:
        path = Path(args.folder) / f"append-{gb:g}gb.h5"
        if not args.reuse:
            for p in (path, path.with_name(path.name + ".lock")):
                p.unlink(missing_ok=True)
            shutil.rmtree(path.with_name(path.name + ".parts"), ignore_errors=True)
            build(path, gb)
        tag = f"{os.getpid()}"
        results = [small_append(path, f"{tag}-{r}") for r in range(args.repeats)]
        t_open, t_append, t_close, grew = (statistics.median(r[k] for r in results) for k in range(4))
        rows = int(gb * (1 << 30) / (DIM * 4))
        print(f"| {path.stat().st_size / (1 << 30):.2f} GiB | {rows:,} | {t_open:.3f} | {t_append:.3f} | "
              f"{t_close:.3f} | {grew / 1024:.0f} KiB |")
        if not args.keep:
            path.unlink()


if __name__ == "__main__":
    main()
