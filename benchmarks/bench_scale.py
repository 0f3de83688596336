"""Scaling benchmark: out-of-core exact mknn, streamed linear CKA, distributed extraction.

1. knn:     exact mknn of one layer pair (N=100,000, D=512) read in row blocks from an HDF5
            cache written here; peak RSS of the computing process (VmHWM, /proc/self/status).
2. cka:     linear CKA of one layer pair (N=1,000,000, D=256, float16 storage) streamed from an
            HDF5 cache written here (deleted afterwards); time and peak RSS.
3. approx:  recall of faiss HNSW / IVF lists and the mknn error they cause (N=50,000, D=256).
4. extract: proteins/s of a 2-worker LocalCluster against one process, on an ESM-2 model with the
            architecture of esm2_t6_8M_UR50D (6 layers, width 320; random weights, the same cost).
5. index:   peak RSS of a reader (Cache) opening a cache of N = 100,000 and 1,000,000 samples
            (one layer of width 8, ids of 8-11 characters), looking up 1,000 random ids, reading
            the layer by id in blocks of 16,384 rows (what compare --block-rows does) and in stored
            order (iter_row_blocks); with --code ROOT the reader of another checkout (e.g. the
            version before the on-disk id index) reads the same files, for a before/after table.
6. compare: peak RSS of `repalign compare --block-rows 4096` (mknn, 2 + 2 layers of width 32 in
            float16, N = 50,000; --quick: 10,000), with this checkout's reader and those of --code.

Usage:
    python benchmarks/bench_scale.py                 # full sizes (about 15 minutes on 2 busy cores)
    python benchmarks/bench_scale.py --quick         # small sizes, a smoke run (about 2 minutes)
    python benchmarks/bench_scale.py --only knn cka  # a subset
    python benchmarks/bench_scale.py --only index --code /path/to/older/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def vm_hwm_mib() -> float:
    """Peak resident set size of this process (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_layer_blocks(n, d, seed, block=10_000, latent=32, noise=0.3):
    """Row blocks of a layer sharing a latent structure with its partner (seed picks the projection)."""
    proj = np.random.default_rng(seed).standard_normal((latent, d)) / np.sqrt(latent)
    for s in range(0, n, block):
        m = min(block, n - s)
        z = np.random.default_rng(1_000_003 + s).standard_normal((m, latent))  # same latent rows on both sides
        x = np.tanh(z @ proj) if seed % 2 else z @ proj
        x += noise * np.random.default_rng([seed, s]).standard_normal((m, d))
        yield x.astype(np.float32)


def write_pair_cache(path, n, d, dtype):
    """Two models "A" and "B", one layer "x" each, appended in batches of 10,000 rows."""
    # lazy: the measured child processes import this module; each part imports only what it uses
    from embeddings_cache import CacheWriter

    ids = np.char.add("s", np.arange(n).astype(str)).tolist()
    for model, seed in (("A", 1), ("B", 2)):
        with CacheWriter(path, model, provenance={"options": {}}, layers=["x"], dtype=dtype) as w:
            s = 0
            for block in synthetic_layer_blocks(n, d, seed):
                m = block.shape[0]
                hashes = [f"{i:064x}" for i in range(s, s + m)]
                w.append(ids[s:s + m], hashes, {"x": block})
                s += m


# ----------------------------------------------------------------------------- measured in a subprocess
def child_knn(path, k, block, block_rows):
    # lazy: the measured child processes import this module; each part imports only what it uses
    from embeddings_cache import Cache
    from repalign.metrics.knn import mutual_knn_from_states
    from repalign.metrics.outofcore import blocked_knn_state

    base = vm_hwm_mib()
    c = Cache(path)
    t0 = time.perf_counter()
    states = [blocked_knn_state(lambda m=m: c.iter_row_blocks(m, "x", block_rows), k, block=block, n_samples=c.n_samples(m))
              for m in ("A", "B")]
    score = mutual_knn_from_states(states[0], states[1], k)
    return {"seconds": time.perf_counter() - t0, "mknn": score, "peak_rss_mib": vm_hwm_mib(), "rss_after_imports_mib": base}


def child_cka(path, block_rows):
    # lazy: the measured child processes import this module; each part imports only what it uses
    from embeddings_cache import Cache
    from repalign.metrics.outofcore import streamed_linear_cka

    base = vm_hwm_mib()
    c = Cache(path)
    t0 = time.perf_counter()
    score = streamed_linear_cka(lambda: c.iter_row_blocks("A", "x", block_rows), lambda: c.iter_row_blocks("B", "x", block_rows))
    return {"seconds": time.perf_counter() - t0, "cka": score, "peak_rss_mib": vm_hwm_mib(), "rss_after_imports_mib": base}


def child_index(path, n, block_rows):
    # lazy: the measured child imports only the reader (from the checkout given by PYTHONPATH)
    import embeddings_cache
    from embeddings_cache import Cache

    def mib(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return float("nan")

    out = {"code": str(Path(embeddings_cache.__file__).parents[1]), "rss_after_imports_mib": mib("VmRSS:")}
    t0 = time.perf_counter()
    c = Cache(path)
    out["open_s"], out["peak_open_mib"] = time.perf_counter() - t0, mib("VmHWM:")
    query = [f"s{i}" for i in np.random.default_rng(0).integers(0, n, 1000)]
    t0 = time.perf_counter()
    X = c.read_layer("A", "x", ids=query)
    out["lookup_1000_s"], out["peak_lookup_mib"] = time.perf_counter() - t0, mib("VmHWM:")
    t0, c0 = time.perf_counter(), time.process_time()
    total = 0.0
    for s in range(0, n, block_rows):  # the block's ids made on the fly: no list of all ids here
        total += float(c.read_layer("A", "x", ids=[f"s{i}" for i in range(s, min(s + block_rows, n))]).sum())
    out["blocks_by_id_s"], out["peak_blocks_by_id_mib"] = time.perf_counter() - t0, mib("VmHWM:")
    out["blocks_by_id_cpu_s"] = time.process_time() - c0
    t0 = time.perf_counter()
    total2 = sum(float(b.sum()) for b in c.iter_row_blocks("A", "x", block_rows))
    out["row_blocks_s"], out["peak_row_blocks_mib"] = time.perf_counter() - t0, mib("VmHWM:")
    assert X.shape == (1000, 8) and np.isclose(total, total2, rtol=1e-6)
    c.close()
    return out


def write_index_cache(path, n, d=8, batch=20_000):
    """Model "A", one layer "x" of width d, ids "s0".."s{n-1}", appended in batches."""
    # lazy: the measured child processes import this module; each part imports only what it uses
    from embeddings_cache import CacheWriter

    with CacheWriter(path, "A", provenance={"options": {}}, layers=["x"]) as w:
        for s in range(0, n, batch):
            m = min(batch, n - s)
            w.append([f"s{i}" for i in range(s, s + m)], [f"{i:064x}" for i in range(s, s + m)],
                     {"x": np.random.default_rng(s).standard_normal((m, d)).astype(np.float32)})


def bench_compare_memory(work: Path, quick: bool, codes=(None,)):
    """Peak RSS (/usr/bin/time -f %M) of `repalign compare --metric mknn --k 10 --block-rows 4096` on
    2 + 2 layers of width 32 stored as float16, ids of 17 characters, with the cache reader of each
    checkout in ``codes`` (first on PYTHONPATH; repalign itself from this checkout)."""
    from embeddings_cache import CacheWriter

    sizes = (10_000,) if quick else (50_000,)
    here = str(HERE.parents[1])
    print("| N | reader | peak RSS MiB | wall s |")
    print("|---|---|---|---|")
    rows = []
    for n in sizes:
        path = work / f"compare{n}.h5"
        for model, seed in (("A", 1), ("B", 2)):
            with CacheWriter(path, model, provenance={"options": {}}, layers=["x", "y"], dtype="float16") as w:
                for s in range(0, n, 20_000):
                    m = min(20_000, n - s)
                    rng = np.random.default_rng([seed, s])
                    w.append([f"UniRef50_A{i:07d}" for i in range(s, s + m)], [f"{i:064x}" for i in range(s, s + m)],
                             {"x": rng.standard_normal((m, 32)), "y": rng.standard_normal((m, 32))})
        for code in codes:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys([code or here, here])))
            t0 = time.perf_counter()
            out = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "repalign", "compare", str(path),
                                  "--a", "A", "--b", "B", "--metric", "mknn", "--k", "10", "--block-rows", "4096",
                                  "-o", str(work / "t.csv")], capture_output=True, text=True, env=env)
            if out.returncode:
                raise SystemExit(out.stderr)
            peak = int(out.stderr.strip().splitlines()[-1]) / 1024
            print(f"| {n:,} | {code or here} | {peak:.0f} | {time.perf_counter() - t0:.1f} |", flush=True)
            rows.append({"n": n, "code": code or here, "peak_mib": peak})
        path.unlink()
    return rows


def run_child(*args, code=None) -> dict:
    env = dict(os.environ, PYTHONPATH=code) if code else None
    out = subprocess.run([sys.executable, str(HERE), "--child", json.dumps(args)], capture_output=True, text=True,
                         env=env)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- benchmarks
def bench_knn(work: Path, quick: bool):
    n, d, k = (20_000, 512, 10) if quick else (100_000, 512, 10)
    path = work / "knn.h5"
    t0 = time.perf_counter()
    write_pair_cache(path, n, d, "float16")
    write_s = time.perf_counter() - t0
    res = run_child("knn", str(path), k, 4096, 4096)
    size = path.stat().st_size / 2**20
    inmem = 2 * n * d * 4 / 2**20
    print(f"knn: N={n} D={d} k={k} block=4096 float16 cache {size:.0f} MiB (written in {write_s:.1f} s)")
    print(f"     exact mknn={res['mknn']:.4f} in {res['seconds']:.1f} s; peak RSS {res['peak_rss_mib']:.0f} MiB "
          f"(after imports {res['rss_after_imports_mib']:.0f} MiB; both layers in float32 would be {inmem:.0f} MiB)")
    path.unlink()
    return res


def bench_cka(work: Path, quick: bool):
    n, d = (100_000, 256) if quick else (1_000_000, 256)
    path = work / "cka.h5"
    t0 = time.perf_counter()
    write_pair_cache(path, n, d, "float16")
    write_s = time.perf_counter() - t0
    size = path.stat().st_size / 2**20
    res = run_child("cka", str(path), 8192)
    print(f"cka: N={n} D={d} float16 cache {size:.0f} MiB (written in {write_s:.1f} s), read in 8192-row blocks")
    print(f"     streamed linear CKA={res['cka']:.6f} in {res['seconds']:.1f} s "
          f"({n / res['seconds']:,.0f} rows/s per layer pair); peak RSS {res['peak_rss_mib']:.0f} MiB "
          f"(after imports {res['rss_after_imports_mib']:.0f} MiB)")
    path.unlink()
    return res


def bench_approx(work: Path, quick: bool):
    """Recall of approximate lists and the resulting mknn error against exact lists, for a few settings."""
    # lazy: the measured child processes import this module; each part imports only what it uses
    from repalign.metrics import prepare
    from repalign.metrics.approx import approximate_knn
    from repalign.metrics.knn import knn_state, mutual_knn_from_states

    n, d, k = (5_000, 128, 10) if quick else (50_000, 256, 10)
    X = prepare(np.concatenate(list(synthetic_layer_blocks(n, d, 1))))
    Y = prepare(np.concatenate(list(synthetic_layer_blocks(n, d, 2))))
    t0 = time.perf_counter()
    exact = [knn_state(M, k) for M in (X, Y)]
    exact_s = time.perf_counter() - t0
    ref = mutual_knn_from_states(exact[0], exact[1], k)
    print(f"approx: N={n} D={d} k={k}; exact mknn={ref:.4f} ({exact_s:.1f} s for both searches)")
    print("| method | settings | recall X / Y | mknn | error vs exact | time (s, both layers) |")
    print("|---|---|---|---|---|---|")
    settings = [("faiss-hnsw", {"hnsw_m": 16, "ef_search": 16}), ("faiss-hnsw", {"hnsw_m": 16, "ef_search": 64}),
                ("faiss-hnsw", {"hnsw_m": 32, "ef_search": 128}), ("faiss-ivf", {"nprobe": 1}),
                ("faiss-ivf", {"nprobe": 8}), ("faiss-ivf", {"nprobe": 32})]
    rows = []
    for method, opts in settings:
        t0 = time.perf_counter()
        (sa, ra), (sb, rb) = (approximate_knn(M, k, method, **opts) for M in (X, Y))
        seconds = time.perf_counter() - t0
        score = mutual_knn_from_states(sa, sb, k)
        text = ", ".join(f"{a}={b}" for a, b in opts.items())
        print(f"| {method} | {text} | {ra:.3f} / {rb:.3f} | {score:.4f} | {score - ref:+.4f} | {seconds:.1f} |")
        rows.append((method, opts, ra, rb, score))
    return rows


def esm2_8m_shaped(folder: Path) -> Path:
    """A random-initialised checkpoint with the architecture of esm2_t6_8M_UR50D (same compute)."""
    import torch
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    from conftest import ESM_TOKENS

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(ESM_TOKENS) + "\n")
    config = EsmConfig(vocab_size=len(ESM_TOKENS), hidden_size=320, num_hidden_layers=6, num_attention_heads=20,
                       intermediate_size=1280, max_position_embeddings=1026, pad_token_id=1, mask_token_id=32,
                       position_embedding_type="rotary", token_dropout=True)
    torch.manual_seed(0)
    EsmModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    EsmTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    return folder


def bench_extract(work: Path, quick: bool):
    # lazy: the dask extra, and the measured child processes import this module
    from distributed import Client, LocalCluster

    from repalign.distributed import extract_distributed
    from repalign.extract import extract
    from repalign.inputs import read_inputs

    n = 40 if quick else 240
    rng = np.random.default_rng(0)
    aa = list("ACDEFGHIKLMNPQRSTVWY")
    fasta = work / "proteins.fasta"
    fasta.write_text("".join(f">p{i}\n{''.join(rng.choice(aa, rng.integers(50, 400)))}\n" for i in range(n)))
    records = read_inputs([str(fasta)])
    tokens = sum(len(r.payload) if isinstance(r.payload, str) else 0 for r in records)
    model = f"hf:{esm2_8m_shaped(work / 'esm2_t6_shape')}"
    common = dict(layers=["all"], batch_tokens=4096, quiet=True)
    t0 = time.perf_counter()
    extract(records, [model], work / "single.h5", **common)
    single = time.perf_counter() - t0
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, Client(cl) as client:
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        extract_distributed(records, [model], work / "dist.h5", cluster=client, **common)
        dist = time.perf_counter() - t1
    print(f"extract: {n} proteins, {tokens} residues, ESM-2 t6 (8M) architecture, batch_tokens=4096")
    print(f"     one process (torch {__import__('torch').get_num_threads()} threads): {single:.1f} s, {n / single:.2f} proteins/s")
    print(f"     LocalCluster 2 workers x 1 thread: {dist:.1f} s, {n / dist:.2f} proteins/s (+{startup:.1f} s cluster start, "
          f"model load per worker included); speed-up {single / dist:.2f}x")
    return {"single_s": single, "dist_s": dist, "startup_s": startup, "n": n, "tokens": tokens}


def bench_index(work: Path, quick: bool, codes=(None,)):
    sizes = (20_000, 100_000) if quick else (100_000, 1_000_000)
    block_rows = 16_384
    rows = []
    print("| N | reader | after imports MiB | peak: open | lookup of 1,000 ids | blocks by id | row blocks | "
          "open s | blocks by id s (CPU s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        path = work / f"index{n}.h5"
        write_index_cache(path, n)
        for code in codes:
            r = run_child("index", str(path), n, block_rows, code=code)
            base = r["rss_after_imports_mib"]
            print(f"| {n:,} | {r['code']} | {base:.0f} | +{r['peak_open_mib'] - base:.0f} | "
                  f"+{r['peak_lookup_mib'] - base:.0f} | +{r['peak_blocks_by_id_mib'] - base:.0f} | "
                  f"+{r['peak_row_blocks_mib'] - base:.0f} | {r['open_s']:.2f} | {r['blocks_by_id_s']:.1f} "
                  f"({r['blocks_by_id_cpu_s']:.1f}) |", flush=True)
            rows.append({"n": n, **r})
        path.unlink()
    return rows


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        args = json.loads(sys.argv[2])
        fn = {"knn": child_knn, "cka": child_cka, "index": child_index}[args[0]]
        print(json.dumps(fn(*args[1:])))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--only", nargs="+", choices=("knn", "cka", "approx", "extract", "index", "compare"),
                   default=("knn", "cka", "approx", "extract", "index", "compare"))
    p.add_argument("--code", nargs="+", default=None,
                   help="index: also measure the reader of these checkouts (their root folders) on the same files")
    p.add_argument("--workdir", help="folder for the temporary caches (default: a temporary folder)")
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=args.workdir))
    try:
        for name in args.only:
            if name in ("index", "compare"):
                here = str(HERE.parents[1])
                {"index": bench_index, "compare": bench_compare_memory}[name](work, args.quick, [here] + (args.code or []))
                continue
            {"knn": bench_knn, "cka": bench_cka, "approx": bench_approx, "extract": bench_extract}[name](work, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
