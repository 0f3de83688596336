"""Time of each ESMFold2 stage per sequence length, and the cost of the feature hooks.

The FULL-SIZE ESMFold2 architecture (the port's default EsmFold2Config: pair width 256, 24 trunk
blocks, 4 LM-encoder and 4 MSA-encoder blocks, a 12-block 768-wide diffusion transformer, a 4-block
confidence head) with an ESMC-300M-sized backbone (960 wide, 30 layers), at random initialisation:
the config is built here, nothing is downloaded. Timings do not depend on the weights' values.

    .venv/bin/python benchmarks/bench_esmfold2.py --lengths 64 128 --num-loops 3 --diffusion-steps 4

Per length: one warm-up run, then ``--repeats`` runs each with hooks (every layer captured) and
without (the same stages run, nothing captured), interleaved; the minimum of each is reported.
Times are process CPU seconds (``time.process_time``) and, with ``--threads 1``, stand for the work
done, which wall-clock time on a shared machine does not; the wall time is printed too. Stage times
come from timers on the top-level modules during the hooked runs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict

import torch

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


def attach_timers(model, totals: dict[str, float]):
    starts: dict[str, float] = {}
    handles = []
    for name in STAGE_MODULES:
        module = submodule(model, name)
        if module is None:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: starts.__setitem__(n, time.process_time())))
        handles.append(module.register_forward_hook(
            lambda m, a, o, n=name: totals.__setitem__(n, totals[n] + time.process_time() - starts[n])))
    return handles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--num-loops", type=int, default=3, help="trunk loops (the released config runs 10)")
    ap.add_argument("--diffusion-steps", type=int, default=4, help="passed as num_sampling_steps")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.models.esmfold2 import EsmFold2Model

    from esmfold2_model import stages
    from esmfold2_model.extractor import EsmFold2Extractor, ExtractionOptions
    from esmfold2_model.featurize import featurize_sequence

    t0 = time.perf_counter()
    torch.manual_seed(0)
    config = full_size_config(args.num_loops, args.diffusion_steps)
    config.lm_encoder.lm_dropout = 0.0
    model = EsmFold2Model(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built full-size ESMFold2 (ESMC-300M backbone), {n_params / 1e6:.0f}M parameters, in {time.perf_counter() - t0:.0f} s")
    opts = ExtractionOptions()
    hooked = EsmFold2Extractor(model, opts)
    # Time spent inside the capture hooks themselves (reductions and copies), measured directly:
    # a noise-free view of the hook overhead on a shared machine.
    hook_time = {"s": 0.0}
    store = hooked._store

    def timed_store(*a, **k):
        t = time.process_time()
        store(*a, **k)
        hook_time["s"] += time.process_time() - t

    hooked._store = timed_store
    bare = EsmFold2Extractor(model, opts, hooks=False)
    layers = stages.layer_names(hooked.layout)
    steps = hooked.layout.diffusion_steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"{args.num_loops + 1} trunk loops, {steps} denoiser steps, 1 diffusion sample, {len(layers)} layers captured")

    amino = "ACDEFGHIKLMNPQRSTVWY"
    rows = []
    for length in args.lengths:
        seq = "".join(amino[(7 * i + 3) % 20] for i in range(length))
        sample = featurize_sequence(seq)
        hooked.run([sample], layers)  # warm-up
        best = {"hooked": float("inf"), "bare": float("inf")}
        wall = {"hooked": float("inf"), "bare": float("inf")}
        stage_best: dict[str, float] = {}
        for _ in range(args.repeats):
            for kind, ex in (("bare", bare), ("hooked", hooked)):
                totals: dict[str, float] = defaultdict(float)
                hook_time["s"] = 0.0
                handles = attach_timers(model, totals)
                t, w = time.process_time(), time.perf_counter()
                ex.run([sample], layers)
                elapsed, wall_s = time.process_time() - t, time.perf_counter() - w
                for h in handles:
                    h.remove()
                wall[kind] = min(wall[kind], wall_s)
                if elapsed < best[kind]:
                    best[kind] = elapsed
                    if kind == "hooked":
                        stage_best = dict(totals)
                        stage_best["hooks"] = hook_time["s"]
        rows.append((length, stage_best, best))
        print(f"L={length}: CPU s hooked {best['hooked']:.2f}, bare {best['bare']:.2f}; "
              f"wall s hooked {wall['hooked']:.2f}, bare {wall['bare']:.2f}", flush=True)

    stage_cols = [m for m in STAGE_MODULES if submodule(model, m) is not None]
    head = ["L"] + stage_cols + ["other", "total (hooks)", "total (no hooks)", "difference", "inside hooks"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for length, st, best in rows:
        other = best["hooked"] - sum(st.get(m, 0.0) for m in stage_cols)
        cells = [str(length)] + [f"{st.get(m, 0.0):.2f}" for m in stage_cols] + [f"{other:.2f}"]
        cells += [f"{best['hooked']:.2f}", f"{best['bare']:.2f}", f"{100 * (best['hooked'] / best['bare'] - 1):+.1f}%",
                  f"{st['hooks']:.3f} ({100 * st['hooks'] / best['hooked']:.1f}%)"]
        print("| " + " | ".join(cells) + " |")
    print("\nCPU seconds. Stage columns: time inside each top-level module (folding_trunk: all loops; "
          "parcae.output_stack: the recurrence decode; structure_head: all denoiser steps; other: featurisation, "
          "diffusion conditioning, sampler arithmetic, distogram head). 'inside hooks': time spent in the capture "
          "hooks of the hooked run (the overhead itself, measured directly).")

if __name__ == "__main__":
    main()
