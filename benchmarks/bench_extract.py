"""Benchmark of the extraction pipeline (``repalign.extract.extract``) on real models.

For each model the same inputs are run three ways, every layer extracted, mean pooling:

- ``pipeline``: ``extract`` into a fresh cache in a temporary folder with the default token
  budget (length-bucketed batches);
- ``pipeline bs1``: the same with ``batch_tokens=1``, so every sample is its own batch;
- ``bare loop``: the underlying torch model called directly, one sample at a time, on the same
  inputs (token ids / crystal graph built the same way), under the same no-grad context the
  adapter uses, same dtype and thread count: no hooks, no copies to numpy, no pooling, no writing.

Inside the pipeline runs two timing shims measure where the time goes (the adapter is built and
loaded once, then handed to ``extract`` through ``adapter_factory``):

- ``adapter.forward``: every call of the adapter's forward (instance attribute wrapper);
- model compute: every call of the torch module's ``forward`` (instance attribute wrapper).

Pipeline overhead = (total - time in adapter.forward) / model compute: validation, the cache
(HDF5 create, provenance, append, close), pooling. Adapter overhead = (time in adapter.forward -
model compute) / model compute: tokenising / graph building, copying hidden states to numpy,
slicing. Also printed: total pipeline time at batch size 1 / bare-loop time.

Each mode is warmed up once per model on the first 4 samples (first-call costs: weight hashing
for the provenance, package metadata, allocator warm-up), then timed ``--repeats`` times with the
modes interleaved (so a change of machine load hits all of them); the run with the best wall time
is kept. Wall and process CPU seconds are both printed: on a shared machine the CPU seconds are the
steadier measure of work (torch runs 1 thread by default here, so CPU seconds do not count idle
spinning of a second thread). The model load (weights read once per adapter) is not timed. A model
whose pipeline overhead is above 5% of model compute gets one pipeline run profiled with cProfile
(the mode with the larger overhead), printed after the table.

Usage:
    python benchmarks/bench_extract.py                 # antiberty (100 pairs) + chgnet-0.3.0 (40 crystals)
    python benchmarks/bench_extract.py --quick         # 20 pairs, 20 crystals, 2 repeats
    python benchmarks/bench_extract.py --models antiberty iglm --threads 1
    python benchmarks/bench_extract.py --profile       # cProfile a pipeline run of every model
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from repalign.datasets.antibodies import antibody_records
from repalign.datasets.structures import crystal_records
from repalign.extract import extract
from repalign.models import get_adapter

OVERHEAD_TARGET = 0.05


# ----------------------------------------------------------------------------- timing shims
@dataclass
class Stopwatch:
    """Accumulated seconds and calls of one wrapped callable."""

    seconds: float = 0.0
    cpu: float = 0.0  # process CPU seconds, steadier than wall time on a loaded machine
    calls: int = 0

    def reset(self) -> None:
        self.seconds, self.cpu, self.calls = 0.0, 0.0, 0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.cpu += time.process_time() - cpu
                self.calls += 1

        return timed


@dataclass
class Shims:
    """Timing wrappers on adapter.forward and on the torch model's forward, removable."""

    adapter: object
    module: object
    forward: Stopwatch = field(default_factory=Stopwatch)
    model: Stopwatch = field(default_factory=Stopwatch)

    def install(self) -> None:
        # bound methods looked up on the class, wrapped, set on the instance: extract() and
        # nn.Module.__call__ both look the attribute up on the instance first
        self.adapter.forward = self.forward.wrap(type(self.adapter).forward.__get__(self.adapter))
        self.module.forward = self.model.wrap(type(self.module).forward.__get__(self.module))

    def remove(self) -> None:
        for obj in (self.adapter, self.module):
            obj.__dict__.pop("forward", None)

    def reset(self) -> None:
        self.forward.reset()
        self.model.reset()


# ----------------------------------------------------------------------------- models
@dataclass
class Case:
    name: str  # registered model name
    records: list
    module: Callable  # adapter -> the torch module whose forward is the model compute
    bare: Callable  # (adapter, records) -> None: the bare one-at-a-time loop


def _hf_bare(adapter, records, model, id_lists_of, pad_id):
    import torch

    for record in records:
        ids = id_lists_of(record)
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, chain_ids in enumerate(ids):
            input_ids[row, : len(chain_ids)] = torch.tensor(chain_ids, dtype=torch.long)
            mask[row, : len(chain_ids)] = 1
        # the adapters run under inference_mode; the bare loop uses the same context so the
        # comparison measures overhead, not a grad-mode difference
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)


def antiberty_bare(adapter, records):
    enc = adapter._encoder
    # each chain of a pair is its own sequence; both chains of one record in one padded call
    _hf_bare(adapter, records, enc.model, lambda r: [enc.encode(c) for c in r.chains], enc.token_id["[PAD]"])


def iglm_bare(adapter, records):
    _hf_bare(adapter, records, adapter._model, adapter.chain_tokens, adapter._token_id["[PAD]"])


def chgnet_bare(adapter, records):
    import torch
    from pymatgen.io.ase import AseAtomsAdaptor

    model = adapter._model
    for record in records:
        graph = model.graph_converter(AseAtomsAdaptor.get_structure(record.payload), graph_id=record.id)
        with torch.no_grad():
            model([graph], task="e")


def make_case(name: str, n_antibodies: int, n_crystals: int) -> Case:
    if name == "antiberty":
        return Case(name, antibody_records(n_antibodies), lambda a: a._encoder.model, antiberty_bare)
    if name == "iglm":
        return Case(name, antibody_records(n_antibodies), lambda a: a._model, iglm_bare)
    if name.startswith("chgnet"):
        return Case(name, crystal_records(n_crystals), lambda a: a._model, chgnet_bare)
    raise SystemExit(f"no bare loop written for model {name!r}; use antiberty, iglm or chgnet-*")


# ----------------------------------------------------------------------------- runs
@dataclass
class Timing:
    total: float
    cpu: float = float("nan")  # process CPU seconds (all threads)
    forward: float = float("nan")
    model: float = float("nan")
    forward_calls: int = 0
    forward_cpu: float = float("nan")
    model_cpu: float = float("nan")

    @property
    def piped(self) -> bool:
        return self.forward == self.forward

    @property
    def overhead(self) -> float:
        """Pipeline time outside adapter.forward / model compute (wall)."""
        return (self.total - self.forward) / self.model

    @property
    def overhead_cpu(self) -> float:
        return (self.cpu - self.forward_cpu) / self.model_cpu


def run_pipeline(adapter, shims: Shims, records, batch_tokens: int, workdir: str) -> Timing:
    cache_dir = tempfile.mkdtemp(dir=workdir)
    try:
        shims.reset()
        shims.install()
        start, cpu = time.perf_counter(), time.process_time()
        runs = extract(records, [adapter.info.name], os.path.join(cache_dir, "cache.h5"), layers=["all"], pool="mean",
                       batch_tokens=batch_tokens, quiet=True, adapter_factory=lambda *_a, **_k: adapter)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        shims.remove()
        shutil.rmtree(cache_dir, ignore_errors=True)
    if runs[0].stored != len(records):
        raise RuntimeError(f"pipeline stored {runs[0].stored} of {len(records)} samples")
    return Timing(total, cpu, shims.forward.seconds, shims.model.seconds, shims.forward.calls,
                  shims.forward.cpu, shims.model.cpu)


def run_bare(case: Case, adapter) -> Timing:
    start, cpu = time.perf_counter(), time.process_time()
    case.bare(adapter, case.records)
    return Timing(time.perf_counter() - start, time.process_time() - cpu)


def profile_pipeline(adapter, shims, records, batch_tokens, workdir, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    run_pipeline(adapter, shims, records, batch_tokens, workdir)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    # where the time outside the model goes: what extract(), extract_model() and extract_batch()
    # call, and the functions with the most own time
    stats.sort_stats("cumulative").print_callees(r"extract\.py:\d+\((extract|extract_model|extract_batch)\)")
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ----------------------------------------------------------------------------- reporting
def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "?")
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["antiberty", "chgnet-0.3.0"])
    parser.add_argument("--quick", action="store_true", help="20 antibodies, 20 crystals, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per mode (best kept; default 3, quick 2)")
    parser.add_argument("--n-antibodies", type=int, default=None, help="antibody records (default 100, quick 20)")
    parser.add_argument("--n-crystals", type=int, default=None, help="crystals (default 40, quick 20)")
    parser.add_argument("--batch-tokens", type=int, default=4096, help="token budget of the batched pipeline")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads for every mode (default 1: steadier on a shared machine; 0: torch's own)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one batched pipeline run of every model (always done above the target)")
    return parser


def bench_model(name: str, case: Case, repeats: int, batch_tokens: int, workdir: str, profile: bool):
    """Rows (name, mode, samples, tokens, best timing, bare-loop timing, load s) of one model, and
    the cProfile text of its worse pipeline mode (None unless asked or above the target)."""
    adapter = get_adapter(name)
    start = time.perf_counter()
    adapter.ensure_loaded()
    load_s = time.perf_counter() - start
    shims = Shims(adapter, case.module(adapter))
    samples = len(case.records)
    tokens = sum(adapter.size(r) for r in case.records)
    modes = {
        "pipeline": lambda: run_pipeline(adapter, shims, case.records, batch_tokens, workdir),
        "pipeline bs1": lambda: run_pipeline(adapter, shims, case.records, 1, workdir),
        "bare loop": lambda: run_bare(case, adapter),
    }
    # warm-up on a few samples: first-call costs (weight hashing for the provenance, package
    # metadata, allocator and kernel warm-up) are paid here, not in the timed runs
    head = case.records[:4]
    run_pipeline(adapter, shims, head, batch_tokens, workdir)
    run_pipeline(adapter, shims, head, 1, workdir)
    case.bare(adapter, head)
    best: dict[str, Timing] = {}
    for rep in range(repeats):
        order = list(modes)[rep % 3:] + list(modes)[:rep % 3]  # rotate so no mode always goes first
        for mode in order:
            t = modes[mode]()
            if mode not in best or t.total < best[mode].total:
                best[mode] = t
    rows = [(name, mode, samples, tokens, t, best["bare loop"], load_s) for mode, t in best.items()]
    worst = max(("pipeline", "pipeline bs1"), key=lambda m: best[m].overhead_cpu)
    text = None
    if profile or best[worst].overhead_cpu > OVERHEAD_TARGET:
        budget = batch_tokens if worst == "pipeline" else 1
        text = (worst, profile_pipeline(adapter, shims, case.records, budget, workdir, 25))
    return rows, text


def print_table(rows) -> None:
    print("| model | mode | samples | tokens | best s (wall) | CPU s | samples/s | tokens/s | batches | in adapter.forward s | "
          "model compute s | pipeline overhead: outside forward / model, wall (CPU) | adapter overhead: "
          "(forward - model) / model, wall (CPU) | total / bare loop, wall (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, mode, samples, tokens, t, bare_t, _ in rows:
        piped, bare = t.piped, bare_t.total
        cells = [
            name, mode, str(samples), str(tokens), f"{t.total:.3f}", f"{t.cpu:.3f}", f"{samples / t.total:.1f}", f"{tokens / t.total:,.0f}",
            str(t.forward_calls) if piped else "—",
            f"{t.forward:.3f}" if piped else "—",
            f"{t.model:.3f}" if piped else "—",
            f"{100 * t.overhead:.1f}% ({100 * t.overhead_cpu:.1f}%)" if piped else "—",
            f"{100 * (t.forward - t.model) / t.model:.1f}% ({100 * (t.forward_cpu - t.model_cpu) / t.model_cpu:.1f}%)"
            if piped else "—",
            f"{t.total / bare:.3f} ({t.cpu / bare_t.cpu:.3f})",
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    for name in dict.fromkeys(r[0] for r in rows):
        by_mode = {r[1]: r[4] for r in rows if r[0] == name}
        batched, single = by_mode["pipeline"], by_mode["pipeline bs1"]
        bare = by_mode["bare loop"]
        over = max(t.overhead_cpu for t in (batched, single))
        print(f"{name}: model load {next(r[6] for r in rows if r[0] == name):.1f} s (not timed above); "
              f"batched pipeline vs pipeline bs1: {single.total / batched.total:.2f}x wall "
              f"({single.cpu / batched.cpu:.2f}x CPU); batched pipeline vs bare loop: "
              f"{bare.total / batched.total:.2f}x wall ({bare.cpu / batched.cpu:.2f}x CPU); "
              f"largest pipeline overhead {100 * over:.1f}% of model compute (CPU) "
              f"({'within' if over <= OVERHEAD_TARGET else 'ABOVE'} the {100 * OVERHEAD_TARGET:.0f}% target)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 3)
    n_ab = args.n_antibodies or (20 if args.quick else 100)
    n_cr = args.n_crystals or (20 if args.quick else 40)

    import torch  # lazy: the models' optional extras

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}, torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
    print(f"load average at start: {load_average()} (the machine is shared; timings are best of {repeats})")

    workdir = tempfile.mkdtemp(prefix="bench_extract_")
    rows, profiles = [], {}
    wall = time.perf_counter()
    try:
        for name in args.models:
            model_rows, profile = bench_model(name, make_case(name, n_ab, n_cr), repeats, args.batch_tokens, workdir,
                                              args.profile)
            rows += model_rows
            if profile is not None:
                profiles[f"{name}, {profile[0]}"] = profile[1]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nload average at end: {load_average()}; benchmark wall time {time.perf_counter() - wall:.0f} s\n")
    print_table(rows)
    for name, text in profiles.items():
        print(f"\n==== cProfile of one pipeline run: {name} ====\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
