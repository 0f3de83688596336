"""Re-derive a study's best pairs, control contrasts and figures from its scores.csv, without scoring.

A table scored before ``compare`` marked the best pair of the hidden layer family has ``best`` on
the maximum over all layer pairs. This reads the table, marks in each comparison (one data set,
granularity, level, seed, metric, model pair and N) the best pair of the hidden family from the
rows themselves (each network's input layers as its adapter declares them,
:meth:`repalign.models.base.ModelAdapter.input_layers`: a network's first layer, IgFold's input
stages, none for a baseline; a control has its model's; a layer with itself left out too, as
:func:`repalign.compare.run.search_family`), then writes ``scores.csv`` with those flags,
``best_pairs.csv``, ``control_contrasts.csv`` (and ``.md``) and the figures as a full run would
(:func:`analyses.common.write_outputs`), with the study's declared primary analyses.

No p-value is recomputed: a re-derived best row keeps its ``p_value_adjusted`` (max-T over all layer
pairs, a superset of the hidden family, so conservative for it) as ``p_value_best``, and its
``best_note`` says so.

    python -m analyses.rederive molecules                       # analyses/results/molecules/scores.csv, in place
    python -m analyses.rederive molecules --scores S.csv --out DIR
    python -m analyses.rederive molecules --quick --scores OUT/scores.csv --out DIR   # a --quick run's table
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Sequence

import pandas as pd

from analyses import datasets
from analyses.common import default_results, run_main, write_csv, write_outputs
from analyses.families import rederived
from repalign.errors import RepalignError

#: the studies whose outputs come from a scores.csv (esmfold2_stages writes its own)
STUDIES = ("interatomic_potentials", "molecules", "antibody_models")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyses.rederive", description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=STUDIES)
    parser.add_argument("--scores", help="the study's scores.csv (default: its results folder's)")
    parser.add_argument("--out", help="output folder (default: the folder of --scores)")
    parser.add_argument("--quick", action="store_true", help="the table of a --quick run (its primary analyses' N and k)")
    args = parser.parse_args(argv)
    scores = Path(args.scores) if args.scores else default_results(args.study) / "scores.csv"
    if not scores.exists():
        raise RepalignError(f"{scores}: no such table; pass the study's scores.csv with --scores")
    out = Path(args.out) if args.out else scores.parent
    out.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"analyses.{args.study}")
    cfg = module.QUICK if args.quick else module.FULL
    primaries = module.primary_analyses(cfg, datasets.SIZES["quick" if args.quick else "full"])
    table = pd.read_csv(scores)
    missing = {"model_a", "layer_a", "model_b", "layer_b", "metric", "score"} - set(table.columns)
    if missing:
        raise RepalignError(f"{scores}: not a study table (no {', '.join(sorted(missing))} column); pass a study's scores.csv")
    if "seed" in table.columns:
        table = table.astype({"seed": "Int64"})
    table = rederived(table)
    print(f"re-derived {int(table.best.sum())} best pairs of the hidden layer family from {scores}", flush=True)
    write_csv(table, out / "scores.csv")
    write_outputs(out, table, primaries, module.HEATMAPS, getattr(module, "without_input_stages", None), ci=cfg.get("ci", 0.95))
    print(f"wrote best_pairs.csv, control_contrasts.csv and the figures into {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
