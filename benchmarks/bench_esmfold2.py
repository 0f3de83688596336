"""Time (and on CUDA peak memory) of each ESMFold2 stage per sequence length, the cost of the feature
hooks, and how much the LM-dropout mode changes features and structures.

The FULL-SIZE ESMFold2 architecture (the port's default EsmFold2Config: pair width 256, 24 trunk
blocks, 4 LM-encoder and 4 MSA-encoder blocks, a 12-block 768-wide diffusion transformer, a 4-block
confidence head) with an ESMC-300M-sized backbone (960 wide, 30 layers), at random initialisation:
the config is built here, nothing is downloaded. Timings do not depend on the weights' values.
``--size tiny`` builds the small test architecture instead (tests/test_esmfold2.py).

    .venv/bin/python benchmarks/bench_esmfold2.py --lengths 64 128 --num-loops 3 --diffusion-steps 4
    .venv/bin/python benchmarks/bench_esmfold2.py --device cuda --dtype bfloat16 --lengths 128 256 512 1024 \
        --num-loops 10 --diffusion-steps 14 --repeats 1          # released loop and step counts
    .venv/bin/python benchmarks/bench_esmfold2.py --compare-lm-dropout --lengths 64

Per length: one warm-up run, then ``--repeats`` runs each with hooks (every layer captured) and
without (the same stages run, nothing captured), interleaved; the minimum of each is reported.
On the CPU, times are process CPU seconds (``time.process_time``) and, with ``--threads 1``, stand
for the work done, which wall-clock time on a shared machine does not; the wall time is printed too.
On CUDA, times are wall seconds after ``torch.cuda.synchronize`` and each stage's peak allocated
memory is reported. Stage times come from timers on the top-level modules during the hooked runs.
Prints a Markdown table. The model runs as released (LM dropout on) unless ``--lm-dropout off``.

``--compare-lm-dropout`` runs each length as released (``lm_dropout=on``) and without LM dropout
(``off``), both with seed 0 (same initial pair state and diffusion noise), and, as the scale of the
other random draws, ``off`` with seed 1: per layer the relative difference ||A - B||_F / ||B||_F of
the per-residue features, and for the structures the all-atom RMSD after optimal superposition
(Kabsch) and the pLDDT and pTM differences. At random initialisation these numbers measure the
mechanism, not the trained model's sensitivity.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict

import numpy as np
import torch

from esmfold2_model import stages
from esmfold2_model.extractor import EsmFold2Extractor, ExtractionOptions
from esmfold2_model.featurize import featurize_sequence
from esmfold2_model.load import torch_dtype_for

STAGE_MODULES = ("esmc", "input_embedder", "language_model", "msa_encoder", "lm_encoder", "folding_trunk",
                 "parcae.output_stack", "structure_head", "confidence_head")


def submodule(model, path: str):
    for part in path.split("."):
        model = getattr(model, part) if model is not None else None
    return model


def full_size_config(num_loops: int, diffusion_steps: int):
    from transformers.models.esmfold2 import EsmFold2Config

    esmc_300m = dict(model_type="esmc", hidden_size=960, intermediate_size=2560, num_hidden_layers=30, num_attention_heads=15)
    return EsmFold2Config(num_loops=num_loops, esmc_config=esmc_300m,
                          structure_head=dict(num_diffusion_samples=1, inference_num_steps=diffusion_steps))


def tiny_config(num_loops: int, diffusion_steps: int):
    """The architecture of the tests' tiny checkpoint (tests/test_esmfold2.py)."""
    from transformers.models.esmfold2 import EsmFold2Config

    atom = dict(hidden_size=16, output_dim=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16,
                num_spatial_rope_pairs_per_axis=1, num_uid_rope_pairs=2)
    return EsmFold2Config(
        hidden_size=16, pairwise_hidden_size=8, single_inputs_size=16 + 2 * 33 + 1, pair_transition_intermediate_size=16,
        sliding_window=32, chunk_size=4, num_loops=num_loops, folding_trunk_num_hidden_layers=2, parcae_num_coda_layers=1,
        atom_encoder=dict(atom),
        structure_head=dict(diffusion_module=dict(hidden_size=16, fourier_dim=8, num_hidden_layers=2, num_attention_heads=2,
                                                  intermediate_size=16, pair_intermediate_size=16, atom_encoder=dict(atom)),
                            num_distogram_bins=16, num_diffusion_samples=1, inference_num_steps=diffusion_steps),
        confidence_head=dict(num_hidden_layers=2, num_plddt_bins=10, num_pde_bins=8, num_pae_bins=8, distogram_bins=16),
        msa_encoder=dict(hidden_size=8, outer_hidden_size=4, num_hidden_layers=2, num_attention_heads=2, head_dim=4,
                         intermediate_size=16),
        lm_encoder=dict(num_hidden_layers=2),
        esmc_config=dict(model_type="esmc", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=512),
    )


def build_model(size: str, num_loops: int, diffusion_steps: int, seed: int = 0):
    """Random-initialised model; tensors the initialiser leaves at exactly zero (output gates, the LM
    layer mixture, confidence head weights) get N(0, 0.02^2), so no zero gate hides a stage."""
    from transformers.models.esmfold2 import EsmFold2Model

    torch.manual_seed(seed)
    config = (full_size_config if size == "full" else tiny_config)(num_loops, diffusion_steps)
    model = EsmFold2Model(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


def clock(device: str):
    """Process CPU seconds on the CPU; wall seconds after synchronising on CUDA."""
    if device.startswith("cuda"):
        def now():
            torch.cuda.synchronize()
            return time.perf_counter()
        return now
    return time.process_time


def attach_timers(model, totals: dict[str, float], peaks: dict[str, float], now):
    """Per top-level stage: accumulated time, and on CUDA the peak allocated memory (GB) inside it."""
    cuda = next(model.parameters()).is_cuda
    starts: dict[str, float] = {}
    handles = []

    def enter(name):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        starts[name] = now()

    def leave(name):
        totals[name] += now() - starts[name]
        if cuda:
            peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 1e9)

    for name in STAGE_MODULES:
        module = submodule(model, name)
        if module is None:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: enter(n)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: leave(n)))
    return handles


def sequence(length: int) -> str:
    amino = "ACDEFGHIKLMNPQRSTVWY"
    return "".join(amino[(7 * i + 3) % 20] for i in range(length))


def kabsch_rmsd(a, b) -> float:
    """RMSD between two (N, 3) coordinate sets after the optimal rigid superposition of a onto b."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(((a @ rot - b) ** 2).sum(1).mean()))


def compare_lm_dropout(model, lengths, num_loops, diffusion_steps) -> None:
    """Released mode (LM dropout on) against off, and off with another seed as the scale of the other draws."""
    base = dict(num_loops=str(num_loops), diffusion_steps=str(diffusion_steps))
    runs = {"on": ExtractionOptions.parse({**base, "lm_dropout": "on"}, "esmfold2"),
            "off": ExtractionOptions.parse({**base, "lm_dropout": "off"}, "esmfold2"),
            "off, seed 1": ExtractionOptions.parse({**base, "lm_dropout": "off", "seed": "1"}, "esmfold2")}
    layout = EsmFold2Extractor(model, runs["on"]).layout
    names = stages.layer_names(layout)
    last = lambda prefix: [n for n in names if n.startswith(prefix)][-1]  # noqa: E731
    chosen = [last("esmc."), "input_embedder.pair", "language_model"]
    chosen += [last("msa_encoder.")] if layout.msa_layers else []
    chosen += ["lm_encoder.0", last("lm_encoder."), "folding_trunk.0", f"folding_trunk.{layout.trunk_layers // 2}",
               last("folding_trunk."), "parcae", "distogram", "diffusion.conditioning.pair", "diffusion.single",
               last("diffusion.token_transformer."), "confidence.input", last("confidence.pair."), "confidence.single"]
    chosen = list(dict.fromkeys(chosen))  # small architectures: the middle trunk block may be the last
    for length in lengths:
        sample = featurize_sequence(sequence(length))
        out = {}
        for label, opts in runs.items():
            t = time.perf_counter()
            (tokens, scores, structure), = EsmFold2Extractor(model, opts).run([sample], chosen, want_scores=True)
            out[label] = (tokens, scores, structure)
            print(f"L={length} {label}: {time.perf_counter() - t:.0f} s wall", flush=True)
        rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
        print(f"\nL = {length}: relative difference ||A - B|| / ||B|| of the per-residue features")
        print("\n| layer | on vs off (seed 0) | off seed 1 vs off seed 0 |\n|---|---|---|")
        for n in chosen:
            a, b, c = out["on"][0][n], out["off"][0][n], out["off, seed 1"][0][n]
            print(f"| `{n}` | {rel(a, b):.3g} | {rel(c, b):.3g} |")
        coords = {k: v[2]["coords"][0] for k, v in out.items()}
        print("\n| structure | on vs off (seed 0) | off seed 1 vs off seed 0 |\n|---|---|---|")
        print(f"| all-atom RMSD after superposition (Å) | {kabsch_rmsd(coords['on'], coords['off']):.3f} | "
              f"{kabsch_rmsd(coords['off, seed 1'], coords['off']):.3f} |")
        for score in ("plddt", "ptm"):
            print(f"| {score} | {out['on'][1][score]:.4f} vs {out['off'][1][score]:.4f} | "
                  f"{out['off, seed 1'][1][score]:.4f} vs {out['off'][1][score]:.4f} |")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--num-loops", type=int, default=3, help="trunk loops (the released config runs 10)")
    ap.add_argument("--diffusion-steps", type=int, default=4, help="passed as num_sampling_steps")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--lm-dropout", choices=("on", "off"), default="on")
    ap.add_argument("--compare-lm-dropout", action="store_true", help="features and structures with LM dropout on vs off")
    return ap


def time_length(model, hooked, bare, layers, length: int, repeats: int, device: str, hook_time: dict):
    """Best times of one length with and without hooks: (length, stage seconds of the best hooked run
    with 'hooks' the time inside the capture hooks, best per kind, stage peaks, whole-run peak)."""
    now = clock(device)
    cuda = device.startswith("cuda")
    sample = featurize_sequence(sequence(length))
    hooked.run([sample], layers)  # warm-up
    best = {"hooked": float("inf"), "bare": float("inf")}
    wall = {"hooked": float("inf"), "bare": float("inf")}
    stage_best: dict[str, float] = {}
    stage_peak: dict[str, float] = {}
    run_peak = 0.0
    for _ in range(repeats):
        for kind, ex in (("bare", bare), ("hooked", hooked)):
            totals: dict[str, float] = defaultdict(float)
            peaks: dict[str, float] = {}
            hook_time["s"] = 0.0
            handles = attach_timers(model, totals, peaks, now)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t, w = now(), time.perf_counter()
            ex.run([sample], layers)
            elapsed, wall_s = now() - t, time.perf_counter() - w
            if cuda:
                run_peak = max(run_peak, torch.cuda.max_memory_allocated() / 1e9, *peaks.values())
            for h in handles:
                h.remove()
            wall[kind] = min(wall[kind], wall_s)
            if elapsed < best[kind]:
                best[kind] = elapsed
                if kind == "hooked":
                    stage_best = dict(totals)
                    stage_best["hooks"] = hook_time["s"]
                    stage_peak = dict(peaks)
    print(f"L={length}: s hooked {best['hooked']:.2f}, bare {best['bare']:.2f}; "
          f"wall s hooked {wall['hooked']:.2f}, bare {wall['bare']:.2f}"
          + (f"; peak memory {run_peak:.2f} GB" if cuda else ""), flush=True)
    return length, stage_best, best, stage_peak, run_peak


def print_tables(model, rows, cuda: bool) -> None:
    stage_cols = [m for m in STAGE_MODULES if submodule(model, m) is not None]
    head = ["L"] + stage_cols + ["other", "total (hooks)", "total (no hooks)", "difference", "inside hooks"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for length, st, best, _, _ in rows:
        other = best["hooked"] - sum(st.get(m, 0.0) for m in stage_cols)
        cells = [str(length)] + [f"{st.get(m, 0.0):.2f}" for m in stage_cols] + [f"{other:.2f}"]
        cells += [f"{best['hooked']:.2f}", f"{best['bare']:.2f}", f"{100 * (best['hooked'] / best['bare'] - 1):+.1f}%",
                  f"{st['hooks']:.3f} ({100 * st['hooks'] / best['hooked']:.1f}%)"]
        print("| " + " | ".join(cells) + " |")
    unit = "Wall seconds (CUDA, synchronised)" if cuda else "CPU seconds"
    print(f"\n{unit}. Stage columns: time inside each top-level module (folding_trunk: all loops; "
          "parcae.output_stack: the recurrence decode; structure_head: all denoiser steps; other: featurisation, "
          "diffusion conditioning, sampler arithmetic, distogram head). 'inside hooks': time spent in the capture "
          "hooks of the hooked run (the overhead itself, measured directly).")
    if cuda:
        head = ["L"] + stage_cols + ["whole run"]
        print("\nPeak allocated GPU memory (GB) inside each stage, weights included\n\n| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for length, _, _, peaks, run_peak in rows:
            print("| " + " | ".join([str(length)] + [f"{peaks.get(m, 0.0):.2f}" for m in stage_cols] + [f"{run_peak:.2f}"]) + " |")


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = build_model(args.size, args.num_loops, args.diffusion_steps)
    model = model.to(device=args.device, dtype=torch_dtype_for(args.device, args.dtype))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {args.size}-size ESMFold2, {n_params / 1e6:.1f}M parameters, {args.dtype} on {args.device}, "
          f"in {time.perf_counter() - t0:.0f} s; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}", flush=True)
    if args.compare_lm_dropout:
        compare_lm_dropout(model, args.lengths, args.num_loops, args.diffusion_steps)
        return
    opts = ExtractionOptions.parse({"lm_dropout": args.lm_dropout}, "esmfold2")
    hooked = EsmFold2Extractor(model, opts)
    # Time spent inside the capture hooks themselves (reductions and copies), measured directly:
    # a noise-free view of the hook overhead on a shared machine.
    now = clock(args.device)
    hook_time = {"s": 0.0}
    store = hooked._store

    def timed_store(*a, **k):
        t = now()
        store(*a, **k)
        hook_time["s"] += now() - t

    hooked._store = timed_store
    bare = EsmFold2Extractor(model, opts, hooks=False)
    layers = stages.layer_names(hooked.layout)
    steps = hooked.layout.diffusion_steps
    print(f"{args.num_loops + 1} trunk loops, {steps} denoiser steps, 1 diffusion sample, {len(layers)} layers captured, "
          f"LM dropout {args.lm_dropout}")
    rows = [time_length(model, hooked, bare, layers, length, args.repeats, args.device, hook_time) for length in args.lengths]
    print_tables(model, rows, args.device.startswith("cuda"))


if __name__ == "__main__":
    main()
