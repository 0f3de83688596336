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

import numpy as np
import pandas as pd

from analyses import datasets
from analyses.common import default_results, run_main, write_csv, write_outputs
from repalign.errors import RepalignError
from repalign.models.controls import base_model

#: the studies whose outputs come from a scores.csv (esmfold2_stages writes its own)
STUDIES = ("interatomic_potentials", "molecules", "antibody_models")
#: the note on a re-derived best row
ALL_PAIRS_NOTE = "best of the hidden layer family, re-derived; p-values adjusted over all layer pairs (conservative for it)"
#: the columns that identify one comparison (one compare call) in a study table
COMPARISON = ("dataset", "granularity", "level", "seed", "metric", "model_a", "model_b", "n_samples")


def declared_input_layers(models: Sequence[str]) -> dict[str, set[str]]:
    """Each model's input layers as its adapter declares them (a control: its model's); no weights are loaded."""
    from repalign.models import get_adapter

    layers = {}
    for model in models:
        try:
            layers[model] = set(get_adapter(base_model(model)).input_layers())
        except RepalignError as exc:
            raise RepalignError(f"{model}: cannot find its declared input layers ({exc}); "
                                f"re-derive where the model's adapter is installed") from None
    return layers


def hidden_best(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The ``best`` flags of the hidden layer family, per comparison, and the family itself (the
    rows searched): the first row (in the table's row-major layer order, as ``compare``'s argmax)
    of the highest score among the layer pairs without a declared input layer and without a layer
    against itself; where that leaves nothing (only input layers), every pair but a layer with itself."""
    inputs = declared_input_layers(sorted(set(table.model_a) | set(table.model_b)))
    input_a = np.array([layer in inputs[m] for m, layer in zip(table.model_a, table.layer_a)], dtype=bool)
    input_b = np.array([layer in inputs[m] for m, layer in zip(table.model_b, table.layer_b)], dtype=bool)
    itself = ((table.model_a == table.model_b) & (table.layer_a == table.layer_b)).to_numpy()
    scores = table.score.to_numpy(dtype=np.float64)
    flags = np.zeros(len(table), dtype=bool)
    family = np.zeros(len(table), dtype=bool)
    keys = [c for c in COMPARISON if c in table.columns]
    for positions in table.groupby(keys, sort=False, dropna=False).indices.values():
        excluded = input_a[positions] | input_b[positions] | itself[positions]
        if excluded.all():
            excluded = itself[positions]
        if excluded.all():
            continue
        family[positions] = ~excluded
        flags[positions[int(np.argmax(np.where(excluded, -np.inf, scores[positions])))]] = True
    return flags, family


def rederived(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``best`` (and ``in_family``) re-derived for the hidden family, ``p_value_best`` the best row's own
    ``p_value_adjusted`` (over all layer pairs) and ``best_note`` saying so on the rows with one."""
    flags, family = hidden_best(table)
    out = table.copy()
    out["best"] = flags
    out["in_family"] = family  # as compare writes it: the pairs the best pair was searched among
    adjusted = out["p_value_adjusted"] if "p_value_adjusted" in out.columns else pd.Series(np.nan, index=out.index)
    out["p_value_best"] = np.where(flags, adjusted, np.nan)
    out["best_note"] = np.where(flags & adjusted.notna().to_numpy(), ALL_PAIRS_NOTE, "")
    return out


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
