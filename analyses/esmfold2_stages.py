"""Study: how do ESMFold2's internal stages relate to each other and to ESMC?

Every ESMFold2 stage (its ESMC backbone layers, input embedder, language-model and MSA encoders,
folding trunk, parcae, distogram input, diffusion conditioning and token transformer, confidence
head), per protein (mean-pooled over residues; pair stages reduced to per-residue features by the
adapter), scored against every other stage and against a stand-alone ESMC, with permutation
p-values, subsampling intervals and random-initialised controls. Layers that copy another compared
layer (the ESMC backbone against ESMC, the distogram input) are checked against what they copy
instead of being searched for the best pair.

With real weights (GPU recommended):

    python -m analyses.esmfold2_stages --weights /path/to/ESMFold2 --esmc esmc-300m \
        --esmc-weights /path/to/ESMC-300M --fasta proteins.fasta --device cuda --out results_dir

Without ``--weights`` (here, offline CPU) it builds a small random-initialised ESMFold2 (saved with
``save_pretrained`` under the cache folder, its ESMC backbone saved alone as the ESMC checkpoint) and
runs the whole path as a smoke test. Numbers from random weights are not findings.

    python -m analyses.esmfold2_stages            # smoke run, small random model, 20 sequences
    python -m analyses.esmfold2_stages --quick    # tiny random model, 5 short sequences, for tests
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from analyses.common import (
    Pair,
    available_pairs,
    base_parser,
    cache_dir,
    chance_and_null,
    depth_figure,
    extract_models,
    family_best,
    markdown_table,
    output_dir,
    pair_heatmaps,
    pair_statistics,
    run_main,
    tidy_scores,
    write_csv,
)
from embeddings_cache import Cache
from repalign.compare import EngineOptions, compare_models
from repalign.errors import RepalignError
from repalign.inputs import read_fasta, sequence_record

STUDY = "esmfold2_stages"
#: mutual kNN and unbiased CKA (with a subsampling interval), both with permutation tests
METRICS = ("mknn", "unbiased_cka")

# Short, well-known peptides and mini-proteins (sequences as commonly cited, typed in; used only
# as realistic inputs for the smoke run; check them against UniProt before drawing findings).
PROTEINS = (
    ("ubiquitin", "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"),
    ("gb1", "MTYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"),
    ("villin_hp35", "LSDEDFKAVFGMTRSAFANLPLWKQQNLKKEKGLF"),
    ("trp_cage", "NLYIQWLKDGGPSSGRPPPS"),
    ("insulin_a", "GIVEQCCTSICSLYQLENYCN"),
    ("insulin_b", "FVNQHLCGSHLVEALYLVCGERGFFYTPKT"),
    ("melittin", "GIGAVLKVLTTGLPALISWIKRKRQQ"),
    ("glucagon", "HSQGTFTSDYSKYLDSRRAQDFVQWLMNT"),
    ("glp1", "HAEGTFTSDVSSYLEGQAAKEFIAWLVKGRG"),
    ("magainin2", "GIGKFLHSAKKFGKAFVGEIMNS"),
    ("abeta42", "DAEFRHDSGYEVHHQKLVFFAEDVGSNKGAIIGLMVGGVVIA"),
    ("protein_a_b", "TADNKFNKEQQNAFYEILHLPNLNEEQRNAFIQSLKDDPSQSANLLAEAKKLNDAQAPK"),
    ("pin1_ww", "KLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG"),
    ("crambin", "TTCCPSIVARSNFNVCRLPGTPEAICATYTGCIIIPGATCPGDYAN"),
    ("bpti", "RPDFCLEPPYTGPCKARIIRYFYNAKAGLCQTFVYGGCRAKRNNFKSAEDCMRTCGGA"),
    ("calcitonin", "CGNLSTCMLGTYTQDFNKFHTFPQTAIGVGAP"),
    ("ll37", "LLGDFFRKSKEKIGKEFKRIVQRIKDFLRNLVPRTES"),
    ("chignolin", "GYDPETGTWG"),
    ("substance_p", "RPKPQQFFGLM"),
    ("bba5", "EQYTAKYKGRTFRNEKELRDFIEKFKGR"),
)

# A small ESMFold2 for the smoke run: every stage present, widths small enough for 2 CPU cores.
ATOM = dict(hidden_size=16, output_dim=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16,
            num_spatial_rope_pairs_per_axis=1, num_uid_rope_pairs=2)


def small_config(width: int, layers: int):
    """An EsmFold2Config with every stage, ``width`` channels and ``layers`` blocks per stage."""
    from transformers.models.esmfold2 import EsmFold2Config

    return EsmFold2Config(
        hidden_size=width, pairwise_hidden_size=width // 2,
        single_inputs_size=ATOM["output_dim"] + 2 * 33 + 1,  # atom encoder + two residue one-hots + profile scalar
        pair_transition_intermediate_size=2 * width, sliding_window=32, chunk_size=4,
        num_loops=2, folding_trunk_num_hidden_layers=layers, parcae_num_coda_layers=1,
        atom_encoder=dict(ATOM),
        structure_head=dict(
            diffusion_module=dict(hidden_size=width, fourier_dim=8, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=2 * width, pair_intermediate_size=2 * width, atom_encoder=dict(ATOM)),
            num_distogram_bins=16, num_diffusion_samples=1, inference_num_steps=6,
        ),
        confidence_head=dict(num_hidden_layers=layers, num_plddt_bins=10, num_pde_bins=8, num_pae_bins=8, distogram_bins=16),
        msa_encoder=dict(hidden_size=8, outer_hidden_size=4, num_hidden_layers=layers, num_attention_heads=2, head_dim=4,
                         intermediate_size=16, enabled=True),
        lm_encoder=dict(num_hidden_layers=layers),
        esmc_config=dict(model_type="esmc", hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2 * layers,
                         num_attention_heads=2, max_position_embeddings=512),
    )


def build_random_checkpoint(path: Path, width: int, layers: int, seed: int) -> Path:
    """Save a random-initialised ESMFold2 (and its ESMC backbone under ``esmc/``) like a downloaded checkpoint.

    Every parameter gets 0.1 N(0, 1) noise on top of the library initialisation, so no
    zero-initialised gate leaves a stage constant. Reused when already there.
    """
    import torch
    from transformers.models.esmfold2 import EsmFold2Model

    if (path / "config.json").is_file() and (path / "esmc" / "config.json").is_file():
        return path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EsmFold2Model(small_config(width, layers)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(path)
    model.esmc.save_pretrained(path / "esmc")
    return path


def read_proteins(fasta: str | None, n: int):
    if fasta is None:
        chosen = PROTEINS if n >= len(PROTEINS) else sorted(PROTEINS, key=lambda p: len(p[1]))[:n]  # quick: shortest
        return [sequence_record(i, s) for i, s in chosen]
    records = read_fasta(fasta)
    if len(records) < 5:
        raise RepalignError(f"{fasta}: {len(records)} sequences; an alignment study needs at least 5 (better 50+)")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(STUDY, __doc__.splitlines()[0])
    parser.add_argument("--weights", help="ESMFold2 checkpoint folder (default: a small random-initialised model)")
    parser.add_argument("--esmc", default="esmc-300m", help="the stand-alone ESMC model to compare with")
    parser.add_argument("--esmc-weights", help="ESMC checkpoint folder (default: the random model's backbone)")
    parser.add_argument("--fasta", help="protein sequences (default: 20 short built-in sequences)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-controls", action="store_true", help="skip the random-init controls")
    args = parser.parse_args(argv)
    if args.esmc_weights and not args.weights:
        raise RepalignError("--esmc-weights needs --weights (the smoke run uses its own random ESMC)")
    out = output_dir(STUDY, args.out)
    cdir = cache_dir(out, args.cache)
    smoke = args.weights is None
    cfg = dict(n=5, k=2, permutations=20, n_subsamples=5, width=16, layers=2) if args.quick else \
        dict(n=20, k=3, permutations=200, n_subsamples=50, width=16, layers=3)
    start = time.perf_counter()

    if smoke:
        ckpt = build_random_checkpoint(cdir / f"random-esmfold2-w{cfg['width']}-l{cfg['layers']}", cfg["width"],
                                       cfg["layers"], args.seed)
        weights, esmc_weights = str(ckpt), str(ckpt / "esmc")
    else:
        weights, esmc_weights = args.weights, args.esmc_weights
    records = read_proteins(args.fasta, cfg["n"])
    cache = cdir / ("features-smoke-quick.h5" if smoke and args.quick else "features-smoke.h5" if smoke else "features.h5")
    main_models = ["esmfold2", args.esmc]
    control = f"@random:{args.seed}"  # the spec NAME@random:SEED (repalign.models.controls)
    models = main_models + ([] if args.no_controls else [m + control for m in main_models])
    if not args.score_only:
        print(f"extracting {len(records)} proteins with {', '.join(models)} into {cache}", flush=True)
    seconds: dict[str, float] = {}
    for model in models if not args.score_only else []:
        w = weights if model.startswith("esmfold2") else esmc_weights
        seconds.update(extract_models(records, [model], cache, weights=w, device=args.device))
    if args.extract_only:
        print(f"extracted into {cache}; score with --score-only")
        return 0

    pairs = [Pair("trained" if not smoke else "random_weights", "esmfold2", b) for b in ("esmfold2", args.esmc)]
    if not args.no_controls:
        pairs += [Pair("random_init", "esmfold2" + control, b + control, args.seed) for b in ("esmfold2", args.esmc)]
    table = score_stages(cache, pairs, cfg, args.seed)
    if table.empty:
        raise RepalignError(f"{cache} holds none of {', '.join(models)}; extract them first (run without --score-only)")
    checks = copy_checks(cache, args.esmc)
    write_csv(checks, out / "copy_checks.csv")
    write_csv(table, out / "scores.csv")
    best = family_best(table)  # compare's best pair of the hidden layer family, as every headline
    write_csv(best, out / "best_pairs.csv")
    figures = [pair_heatmaps(table, [("esmfold2", "esmfold2")], "mutual_knn", out, "heatmap_esmfold2_stages"),
               pair_heatmaps(table, [("esmfold2", args.esmc)], "unbiased_cka", out, "heatmap_esmfold2_esmc_ucka")]
    if not args.no_controls:
        figures.append(depth_figure(table, "esmfold2", [args.esmc], "unbiased_cka", out, "esmfold2_depth_ucka"))
    elapsed = time.perf_counter() - start
    write_readme(out, table, best, checks, cfg, args, smoke, seconds, elapsed, figures, len(records))
    print(f"wrote {out} in {elapsed:.0f} s")
    return 0


#: layers that copy another layer of a comparison, left out of the scored (searched) comparisons so
#: that no best pair is a layer with its copy: ESMFold2's ``esmc.*`` layers are its ESMC backbone (the
#: stand-alone ESMC's own layers when it is the same checkpoint, as in the smoke run), left out
#: against ESMC; ``distogram`` is the distogram head's input, parcae + parcae^T, left out everywhere.
#: :func:`copy_checks` compares each with what it copies.
BACKBONE_PREFIX, DERIVED = "esmc.", ("distogram",)


def compared_layers(cache: Path, pair: Pair) -> tuple[list[str], list[str]]:
    """The layers of A and B a pair is scored on: every stored layer but the copies (above)."""
    with Cache(cache) as c:
        names_a, names_b = ([x for x in c.layers(m) if x not in DERIVED] for m in (pair.model_a, pair.model_b))
    if not pair.model_b.startswith("esmfold2"):  # against ESMC: the backbone is ESMC's own layers
        names_a = [x for x in names_a if not x.startswith(BACKBONE_PREFIX)]
    return names_a, names_b


def score_stages(cache: Path, pairs: Sequence[Pair], cfg: dict, seed: int) -> pd.DataFrame:
    """Every pair on its :func:`compared_layers`, as :func:`analyses.common.score_pooled` scores
    pooled features: rows l2-normalised, permutations and intervals for the non-control pairs."""
    frames = []
    for pair in available_pairs(cache, pairs):
        names_a, names_b = compared_layers(cache, pair)
        for metric in METRICS:
            result = compare_models(cache, pair.model_a, pair.model_b, [metric], layers_a=names_a, layers_b=names_b,
                                    engine=EngineOptions(normalize="l2"), k=cfg["k"],
                                    stats=pair_statistics(pair, metric, cfg["permutations"], 0.95, cfg["n_subsamples"], seed))
            frames.append(tidy_scores(result.table, "proteins", pair))
        print(f"  scored {pair.model_a} vs {pair.model_b} on {len(names_a)} x {len(names_b)} layers (N={result.n_samples})",
              flush=True)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def copy_checks(cache: Path, esmc: str) -> pd.DataFrame:
    """Unbiased linear CKA of each left-out copy with what it copies: ESMFold2's backbone layers with
    the stand-alone ESMC's layers of the same name, and ``distogram`` with ``parcae``."""
    frames = []
    with Cache(cache) as c:
        backbone = [x for x in c.layers("esmfold2") if x.startswith(BACKBONE_PREFIX) and x in set(c.layers(esmc))]
    for b, names_a, names_b in ((esmc, backbone, backbone), ("esmfold2", ["parcae"], list(DERIVED))):
        table = compare_models(cache, "esmfold2", b, ["unbiased_cka"], layers_a=names_a, layers_b=names_b,
                               engine=EngineOptions(normalize="l2")).table
        frames.append(table[(table.layer_a == table.layer_b) | (b == "esmfold2")])
    # best and in_family describe a search; these rows are single pairs, picked by name
    return pd.concat(frames, ignore_index=True).drop(columns=["best", "in_family"])


def identical(table: pd.DataFrame) -> str:
    """Pairs of different stages of the (non-control) ESMFold2 with unbiased linear CKA >= 0.999."""
    rows = table[(table.metric == "unbiased_cka") & (table.model_a == "esmfold2") & (table.model_b == "esmfold2")
                 & (table.layer_a < table.layer_b) & (table.score >= 0.999)]
    rows = rows[rows.layer_a.str.split(".").str[0] != rows.layer_b.str.split(".").str[0]]
    return ", ".join(f"{r.layer_a} ~ {r.layer_b} ({r.score:.4f})" for r in rows.itertuples()) or "none"


def layers_outside_family(table: pd.DataFrame) -> str:
    """The layers of each model in no pair of the layer family (``in_family``): the declared input
    layers (a control declares its model's, so controls are not named)."""
    inside = table[table.in_family.astype(bool)]
    names: dict[str, set[str]] = {}
    for side in ("a", "b"):
        for model, layers in table.groupby(f"model_{side}", sort=False)[f"layer_{side}"]:
            kept = set(inside.loc[inside[f"model_{side}"] == model, f"layer_{side}"])
            names.setdefault(model, set()).update(set(layers) - kept)
    return ", ".join(f"`{layer}` of {model}" for model, layers in names.items() if "@" not in model
                     for layer in sorted(layers)) or "none"


SMOKE_NOTE = ("- With random weights, stages computed from the same inputs align strongly through the input "
              "statistics (residue composition and length), which is why even unrelated stages score high here.")


def model_text(cfg, args, smoke) -> str:
    if not smoke:
        return f"weights {args.weights}"
    return (f"a small random-initialised ESMFold2 (width {cfg['width']}, {cfg['layers']} blocks per stage, every stage "
            "present) built and saved by the script, its ESMC backbone saved alone as the ESMC checkpoint")


def write_readme(out, table, best, checks, cfg, args, smoke, seconds, elapsed, figures, n) -> None:
    command = "python -m analyses.esmfold2_stages" + (" --quick" if args.quick else "")
    esmc = args.esmc
    show = best[[c for c in ("level", "metric", "model_a", "model_b", "layer_a", "layer_b", "score", "ci_low", "ci_high",
                             "p_value_adjusted") if c in best.columns]]
    same = checks[checks.model_b == esmc]
    derived = checks[checks.model_b == "esmfold2"]
    check = (f"ESMFold2's `esmc.*` layers vs the stand-alone ESMC, same layer: unbiased linear CKA "
             f"{same.score.min():.4f} to {same.score.max():.4f} over {len(same)} layers")
    derived_check = ", ".join(f"{r.layer_b} ~ {r.layer_a} ({r.score:.4f})" for r in derived.itertuples())
    warning = ("**These numbers come from random weights and are not findings.** This run checks that the "
               "whole path works (checkpoint loading, every stage hooked, pooling, cache, metrics, permutation "
               "tests, intervals, figures); rerun with real weights for results.") if smoke else ""
    chance, null95 = chance_and_null(n, cfg["k"])
    tested = table[table.p_value_adjusted.notna()]
    text = f"""# ESMFold2 stages against each other and against ESMC

{warning}

**Question.** How do the representations of ESMFold2's stages (ESMC backbone, language-model and
MSA encoders, folding trunk, parcae, distogram, diffusion, confidence) relate to each other, and how
much of the language model (ESMC) survives in each stage?

**Command.**

    {command}

(this run: {elapsed / 60:.1f} min on CPU, extraction of the models not yet in `.cache/` included; see the extraction times below). With real weights, on a GPU:

    python -m analyses.esmfold2_stages --weights /path/to/ESMFold2 --esmc esmc-300m \\
        --esmc-weights /path/to/ESMC-300M --fasta proteins.fasta --device cuda

**Setup.** {n} proteins ({'built-in short sequences' if args.fasta is None else args.fasta});
{model_text(cfg, args, smoke)};
every layer, mean-pooled over residues. Metrics: mutual kNN (k={cfg['k']}; chance level k/(N-1) = {chance:.3f},
95 % quantile of its null {null95:.3f} at this N and k) and unbiased linear CKA (chance level 0);
{cfg['permutations']} permutations (p-values adjusted for the search over layer pairs by max-T:
`p_value_adjusted`), {cfg['n_subsamples']} subsamples of 80 % for 95 % intervals (unbiased CKA
only: mutual kNN at a fixed k has no valid subsampling interval).
Controls (`@random`): weights re-initialised with seed {args.seed}. Extraction time (s; 0 = cached):
{', '.join(f'{m} {s}' for m, s in seconds.items()) or 'none in this run (--score-only: features read from the cache)'}.

**Outputs.** `scores.csv`, `best_pairs.csv`, `copy_checks.csv`, {', '.join(f'`{p.name}`' for p in figures)}.

## Best layer pairs

Scored layers: every stage, but not the layers that copy another compared layer, so that no best
pair is a layer with its copy: ESMFold2's `esmc.*` layers (its ESMC backbone) are left out against
ESMC, and `distogram` (the distogram head's input, parcae + parcae^T) everywhere; the checks below
compare each copy with what it copies (`copy_checks.csv`). The best pair of each comparison is the
one `compare` marks `best`: the best pair of the hidden layer family, which leaves out a stage with
itself and every pair with a network's input layer ({layers_outside_family(table)}), as every headline does.

{markdown_table(show)}

## Checks this run can make

- {check} (the stand-alone ESMC is the bundled backbone{' of the same random checkpoint, so 1.0 is expected' if smoke else ''}).
- The left-out distogram input against parcae, which it is computed from: unbiased linear CKA {derived_check}.
- Different stages that are (nearly) functions of each other (unbiased linear CKA >= 0.999): {identical(table)}.
- Significance: {100 * (tested.p_value_adjusted < 0.05).mean():.0f} % of the {len(tested)} layer pairs with a permutation test
  (those of the layer family, non-control) have an adjusted p < 0.05 (N = {n}).
- The controls (`@random`) are re-initialised separately, so the control ESMC is not the control
  ESMFold2's backbone; its alignment with the control's stages is the random-network baseline.
{SMOKE_NOTE if smoke else ''}
"""
    (out / "README.md").write_text(text)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
