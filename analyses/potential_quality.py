"""Quality of the bundled interatomic potentials: equations of state of the Delta-codes elemental crystals against all-electron PBE.

For each potential and each of the 71 elemental crystals of the Delta-codes set
(:mod:`repalign.datasets.eos`, shipped in ASE as ``ase.collections.dcdft``): the energy per atom at
7 isotropic scalings, +-6 % in volume around the reference V0 (the Delta protocol), computed through
the repalign adapter's ``forward`` (its ``energy_per_atom`` output, the code path that extracts the
features); a third-order Birch-Murnaghan fit (``ase.eos.EquationOfState``) gives the model's V0, B0
and B1. When the lowest energy of the scan lies at one of its ends, the scan is moved to centre on
that end (at most :data:`MAX_SHIFTS` times), so the fit brackets the model's own minimum.

Per model: the mean absolute relative error of V0 and of B0 against the reference (MARE) over the
elements the model can evaluate, and over the elements every model evaluated (``*_common``, the
numbers to compare models by); elements a model does not support are skipped and listed.

The reference is PBE; ``chgnet-r2scan`` and ``diep`` were trained on r2SCAN data (and
``sevennet-mf-0`` on PBE and r2SCAN, evaluated here with its PBE fidelity, the adapter's default),
so their errors mix model quality with the difference between functionals.

:func:`quality_vs_alignment` then sets each model's alignment with the other six trained potentials
against its errors (Spearman rho, exact permutation p; descriptive: 7 models). Alignment is always
the per-structure mutual kNN on the crystals of the ``interatomic_potentials`` study, one value per
model: its mean over its partners of (the ``alignment`` names of ``quality_vs_alignment_tests.csv``,
columns of ``quality_vs_alignment.csv``):

- ``mean_control_adjusted_alignment``: per pair, the trained models' best hidden layer pair minus the
  mean of their random-initialised controls' best hidden pairs, one per seed (the ``difference`` of
  the study's primary rows of ``control_contrasts.csv``: hidden layers, comparison ``models``,
  control scope ``model``); the study's primary quantity;
- ``mean_control_adjusted_other_families``: the same over partners of another family only;
- ``mean_hidden_alignment``: the best layer pair of the hidden family (each network's input layers
  left out; the rows ``compare`` marked ``best`` in ``scores.csv``, as ``best_pairs.csv`` with
  ``layers = hidden``);
- ``mean_alignment``: the best layer pair over all layers (input layers included);
- ``mean_alignment_other_families``: the same over partners of another family only;
- ``mean_readout_alignment``: the layers feeding the energy readouts (:data:`READOUT_LAYER`).

    python -m analyses.potential_quality                   # all 7 potentials, 71 elements (writes quality*.csv)
    python -m analyses.potential_quality --models diep     # some of them
    python -m analyses.potential_quality --analysis-only   # quality_vs_alignment*.csv from quality.csv, scores.csv,
                                                           # control_contrasts.csv (no model loaded)
    python -m analyses.potential_quality --quick           # 3 elements, one model, for tests
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from analyses.atomistic import ALIGNMENT_STUDY, CRYSTAL_MODELS
from analyses.common import best_pairs, family_best, output_dir, run_main, write_csv
from repalign.datasets.eos import REFERENCE, delta_eos, reference_eos, scan_record
from repalign.errors import InvalidInput, RepalignError
from repalign.models import get_adapter
from repalign.models.controls import MODEL_SCOPE
from repalign.table import read_table

STUDY = "interatomic_potentials"  # results go beside the alignment study's
MAX_SHIFTS = 3
QUICK_ELEMENTS = ("Al", "Cu", "Si")
QUICK_MODELS = ("chgnet-0.2.0", "chgnet-0.3.0")

#: functional of each potential's training data (from the adapters' docstrings, repalign/models/*.py)
TRAINING_DATA = {
    "chgnet-0.3.0": "PBE/PBE+U (MPtrj)",
    "chgnet-0.2.0": "PBE/PBE+U (MPtrj)",
    "chgnet-r2scan": "r2SCAN (MP r2SCAN, transfer-learned from CHGNet 0.3.0)",
    "sevennet-0": "PBE/PBE+U (MPtrj)",
    "sevennet-l3i5": "PBE/PBE+U (MPtrj)",
    "sevennet-mf-0": "PBE/PBE+U (MPtrj) + r2SCAN (MP r2SCAN), multi-fidelity; evaluated with modal=PBE",
    "diep": "r2SCAN (MatPES)",
}
#: the within-family steps the study asks about, oldest first
FAMILY_ORDERS = {"CHGNet": ("chgnet-0.2.0", "chgnet-0.3.0"), "SevenNet": ("sevennet-0", "sevennet-l3i5", "sevennet-mf-0")}
#: the layer feeding each family's energy readout (adapters' docstrings)
READOUT_LAYER = {"chgnet": "conv.3", "sevennet": "conv.4", "diep": "conv.2"}
#: the alignment variants set against quality (columns of quality_vs_alignment.csv, ``alignment`` in its
#: tests), the study's primary quantity first; each is a model's mean over its partners (module docstring)
ALIGNMENTS = ("mean_control_adjusted_alignment", "mean_control_adjusted_other_families", "mean_hidden_alignment",
              "mean_alignment", "mean_alignment_other_families", "mean_readout_alignment")


# ----------------------------------------------------------------------------- equation of state
def fit_birch_murnaghan(volumes, energies) -> dict[str, float]:
    """Third-order Birch-Murnaghan fit of energies (eV per atom) at volumes (A^3 per atom).

    E(V) = E0 + 9 V0 B0 / 16 {[(V0/V)^(2/3) - 1]^3 B1 + [(V0/V)^(2/3) - 1]^2 [6 - 4 (V0/V)^(2/3)]}
    (Birch, Phys. Rev. 71, 809 (1947)), fitted by ``ase.eos.EquationOfState(eos="birchmurnaghan")``.
    Returns v0 (A^3/atom), e0 (eV/atom), b0 (GPa), b1.
    """
    from ase import units
    from ase.eos import EquationOfState

    volumes, energies = np.asarray(volumes, dtype=float), np.asarray(energies, dtype=float)
    if volumes.shape != energies.shape or volumes.ndim != 1 or len(volumes) < 5:
        raise RepalignError(f"an equation-of-state fit needs >= 5 (volume, energy) pairs, got {volumes.shape} and {energies.shape}")
    if not np.isfinite(energies).all():
        raise RepalignError("an equation-of-state fit needs finite energies")
    eos = EquationOfState(volumes, energies, eos="birchmurnaghan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checks below say why a fit is not used
        eos.fit(warn=False)
    e0, b0, b1, v0 = (float(x) for x in eos.eos_parameters)
    return {"v0": v0, "e0": e0, "b0": b0 / units.GPa, "b1": b1}


def scan_energies(adapter, element: str, changes: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """(volumes per atom, energies per atom) of ``element`` at V0_ref * (1 + change), through the
    adapter (``validate`` then ``forward``; its ``energy_per_atom`` output)."""
    records = [scan_record(element, float(c)) for c in changes]
    for record in records:
        adapter.validate(record)
    features = adapter.forward(records, adapter.layer_names()[:1])
    volumes = np.array([r.payload.get_volume() / len(r.payload) for r in records])
    return volumes, np.array([f.outputs["energy_per_atom"] for f in features], dtype=float)


def element_eos(adapter, element: str, changes: Sequence[float], max_shifts: int = MAX_SHIFTS) -> dict:
    """The model's equation of state of ``element`` (a row of ``quality_per_element.csv``)."""
    ref = reference_eos(element)
    row = {"element": element, "v0_ref": ref["v0"], "b0_ref": ref["b0"], "b1_ref": ref["b1"], "shifts": 0}
    dv = np.asarray(changes, dtype=float)  # the relative volume changes
    try:
        centre = 1.0
        for shift in range(max_shifts + 1):
            volumes, energies = scan_energies(adapter, element, centre * (1 + dv) - 1)
            lowest = int(np.argmin(energies))
            if 0 < lowest < len(energies) - 1:
                break
            if shift == max_shifts:
                low, high = 100 * (centre * (1 + dv[[0, -1]]) - 1)
                return {**row, "status": f"no minimum between {low:+.1f} % and {high:+.1f} % of V0_ref"}
            centre *= 1 + dv[lowest]  # recentre on the lower end
            row["shifts"] = shift + 1
    except InvalidInput as exc:
        return {**row, "status": f"skipped: {exc}"}
    try:
        fit = fit_birch_murnaghan(volumes, energies)
    except (RuntimeError, ValueError) as exc:  # scipy's curve_fit found no optimum
        return {**row, "status": f"fit failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"}
    ok = volumes.min() < fit["v0"] < volumes.max() and fit["b0"] > 0
    row.update(v0=fit["v0"], b0=fit["b0"], b1=fit["b1"], e0=fit["e0"],
               v0_rel_error=fit["v0"] / ref["v0"] - 1, b0_rel_error=fit["b0"] / ref["b0"] - 1,
               status="ok" if ok else "fit outside the scan or B0 <= 0")
    return row


def benchmark_model(model: str, elements: Sequence[str], changes: Sequence[float], progress: bool = True) -> tuple[pd.DataFrame, float]:
    """Rows of ``quality_per_element.csv`` for one model, and its wall time in seconds (load included)."""
    start = time.perf_counter()
    adapter = get_adapter(model)
    adapter.ensure_loaded()
    rows = []
    for element in elements:
        rows.append({"model": model, **element_eos(adapter, element, changes)})
        if progress and rows[-1]["status"] == "ok":
            r = rows[-1]
            print(f"  {model} {element}: V0 {r['v0']:.3f} (ref {r['v0_ref']:.3f}), B0 {r['b0']:.1f} (ref {r['b0_ref']:.1f}) GPa",
                  flush=True)
        elif progress:
            print(f"  {model} {element}: {rows[-1]['status'][:120]}", flush=True)
    return pd.DataFrame(rows), time.perf_counter() - start


def summarise(per_element: pd.DataFrame, seconds: dict[str, float] | None = None) -> pd.DataFrame:
    """``quality.csv``: per model, MARE of V0 and B0 over its fitted elements and over the elements
    every model fitted (``*_common``), the median absolute relative errors, counts and notes."""
    ok = per_element[per_element.status == "ok"]
    models = list(dict.fromkeys(per_element.model))
    common = set.intersection(*(set(ok.element[ok.model == m]) for m in models)) if models else set()
    rows = []
    for model in models:
        mine = per_element[per_element.model == model]
        good = ok[ok.model == model]
        shared = good[good.element.isin(common)]
        skipped = mine.element[mine.status.str.startswith("skipped")].tolist()
        failed = mine.element[(mine.status != "ok") & ~mine.status.str.startswith("skipped")].tolist()
        rows.append({
            "model": model, "n_elements": len(good),
            "v0_mare": good.v0_rel_error.abs().mean(), "b0_mare": good.b0_rel_error.abs().mean(),
            "n_common": len(shared),
            "v0_mare_common": shared.v0_rel_error.abs().mean(), "b0_mare_common": shared.b0_rel_error.abs().mean(),
            "v0_median_are": good.v0_rel_error.abs().median(), "b0_median_are": good.b0_rel_error.abs().median(),
            "reference": REFERENCE, "functional_of_training_data": TRAINING_DATA.get(model, "unknown"),
            "skipped": " ".join(skipped), "not_fitted": " ".join(failed),
            "seconds": (seconds or {}).get(model, math.nan),
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- quality vs alignment
def model_alignment(scores: pd.DataFrame, models: Sequence[str], contrasts: pd.DataFrame | None = None,
                    dataset: str = "crystals", granularity: str = "structure", metric: str = "mutual_knn") -> pd.DataFrame:
    """Per model, its mean over the other trained models of each alignment variant (:data:`ALIGNMENTS`)
    with ``n_*`` partner counts and the layers of its best pairs, and the best score with each
    baseline (``baseline_<name>``), from a study's ``scores.csv`` rows and, for the control-adjusted
    variants, its ``control_contrasts.csv`` rows (``contrasts``; None leaves those columns out).

    The other-families variants count only partners of another family (:func:`family`): a release
    and its own fine-tune, e.g. CHGNet 0.3.0 and r2SCAN, share more than training can explain."""
    rows = scores[(scores.dataset == dataset) & (scores.granularity == granularity) & (scores.metric == metric)]
    trained = rows[(rows.level == "trained") & rows.model_a.isin(models) & rows.model_b.isin(models)
                   & (rows.model_a != rows.model_b)]
    if trained.empty:
        raise RepalignError(f"no trained {metric} rows between {', '.join(models)} in the scores ({dataset}, {granularity})")
    best = best_pairs(trained, by=("model_a", "model_b"))
    hidden = family_best(trained, by=("model_a", "model_b"))
    missing = set(zip(best.model_a, best.model_b)) - set(zip(hidden.model_a, hidden.model_b))
    if missing:
        a, b = sorted(missing)[0]
        raise RepalignError(f"{a} vs {b}: no best pair of the hidden layer family in the scores (no 'best' row); "
                            f"re-derive it with analyses.families.rederived or score the pair again")
    readout = trained[trained.layer_a.eq(trained.model_a.map(readout_layer))
                      & trained.layer_b.eq(trained.model_b.map(readout_layer))]
    adjusted = None if contrasts is None else primary_contrasts(contrasts, models, dataset, granularity, metric)
    baselines = best_pairs(rows[rows.level == "baseline"], by=("model_a", "model_b"))
    out = []
    for model in models:
        mine = best[involves(best, model)]
        mine_hidden = hidden[involves(hidden, model)]
        mine_readout = readout[involves(readout, model)]
        other = mine[other_family(mine, model)]
        row = {"model": model, "mean_alignment": mine.score.mean(), "n_partners": len(mine),
               "mean_alignment_other_families": other.score.mean(), "n_other_families": len(other),
               "mean_readout_alignment": mine_readout.score.mean(), "readout_layer": readout_layer(model),
               "best_layers": own_layers(mine, model),
               "mean_hidden_alignment": mine_hidden.score.mean(), "hidden_best_layers": own_layers(mine_hidden, model)}
        if adjusted is not None:
            mine_adjusted = adjusted[involves(adjusted, model)]
            other_adjusted = mine_adjusted[other_family(mine_adjusted, model)]
            row.update(mean_control_adjusted_alignment=mine_adjusted.difference.mean(),
                       n_control_partners=len(mine_adjusted),
                       mean_control_adjusted_other_families=other_adjusted.difference.mean(),
                       n_control_other_families=len(other_adjusted))
        for _, b in baselines[baselines.model_a == model].iterrows():
            row[f"baseline_{b.model_b}"] = b.score
        out.append(row)
    return pd.DataFrame(out)


def primary_contrasts(contrasts: pd.DataFrame, models: Sequence[str], dataset: str = "crystals",
                      granularity: str = "structure", metric: str = "mutual_knn") -> pd.DataFrame:
    """The control contrasts of the study's primary analysis between ``models``: per pair, the trained
    best hidden pair against its own controls' (``NAME@random:SEED``, scope ``model``) best hidden
    pairs; ``difference`` = trained - mean over the control seeds. One row per pair."""
    keep = ((contrasts.dataset == dataset) & (contrasts.granularity == granularity) & (contrasts.metric == metric)
            & (contrasts.layers == "hidden") & (contrasts.comparison == "models")
            & (contrasts.control_scope == MODEL_SCOPE) & contrasts.model_a.isin(models) & contrasts.model_b.isin(models))
    rows = contrasts[keep]
    twice = rows[rows.duplicated(["model_a", "model_b"], keep=False)]
    if not twice.empty:
        t = twice.iloc[0]
        raise RepalignError(f"{t.model_a} vs {t.model_b}: several control contrasts ({dataset}, {granularity}, {metric}, "
                            f"hidden; N = {', '.join(map(str, sorted(set(twice.n_samples))))}); pass the contrasts of one N")
    return rows


def involves(pairs: pd.DataFrame, model: str) -> pd.Series:
    return (pairs.model_a == model) | (pairs.model_b == model)


def other_family(pairs: pd.DataFrame, model: str) -> pd.Series:
    """Which of ``model``'s pairs have a partner of another family."""
    return (pairs.model_a.map(family) != family(model)) | (pairs.model_b.map(family) != family(model))


def own_layers(pairs: pd.DataFrame, model: str) -> str:
    """``model``'s layers in its pairs, sorted and comma-separated."""
    return ", ".join(sorted(set(pairs.layer_a[pairs.model_a == model]) | set(pairs.layer_b[pairs.model_b == model])))


def family(model: str) -> str:
    """The model's family: the part of its name before the first hyphen (``chgnet``, ``sevennet``, ``diep``)."""
    return model.split("-")[0]


def readout_layer(model: str) -> str | None:
    return READOUT_LAYER.get(family(model))


def spearman_exact(x, y) -> tuple[float, float]:
    """Spearman's rho (Pearson correlation of the average ranks) and its exact two-sided permutation
    p-value: the share of all n! pairings of the ranks with |rho| at least the observed one (n <= 9)."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y) or not 3 <= len(x) <= 9 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise RepalignError(f"spearman_exact needs 3 to 9 finite pairs (it enumerates n! pairings), got {len(x)} and {len(y)}")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    pairings = ry[np.array(list(itertools.permutations(range(len(ry)))))]
    null = pairings @ rx / np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    rho = float(rx @ ry / np.sqrt((rx ** 2).sum() * (ry ** 2).sum()))
    return rho, float(np.mean(np.abs(null) >= abs(rho) - 1e-12))


def quality_vs_alignment(scores: pd.DataFrame, quality: pd.DataFrame, models: Sequence[str] = CRYSTAL_MODELS,
                         contrasts: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per model, tests): each model's alignment variants (:func:`model_alignment`) beside its errors,
    and for each variant Spearman correlations (exact permutation p) with the V0/B0 errors over all
    models and over those trained on PBE data only (models whose variant is undefined left out,
    ``n_models`` says how many remain), plus the within-family steps of :data:`FAMILY_ORDERS`."""
    models = [m for m in models if m in set(quality.model)]
    per_model = model_alignment(scores, models, contrasts).merge(quality, on="model", how="left")
    alignments = [a for a in ALIGNMENTS if a in per_model.columns]
    tests = []
    pbe = [m for m in models if TRAINING_DATA.get(m, "").startswith("PBE")]
    for subset, names in (("all", models), ("PBE-trained", pbe)):
        for alignment, error in itertools.product(alignments, ("v0_mare_common", "b0_mare_common")):
            part = per_model[per_model.model.isin(names) & per_model[alignment].notna() & per_model[error].notna()]
            if len(part) < 3:
                continue
            rho, p = spearman_exact(part[alignment], part[error])
            tests.append({"kind": "spearman", "models": subset, "n_models": len(part), "alignment": alignment,
                          "error": error, "rho": rho, "p_value": p, "step": ""})
    by_model = per_model.set_index("model")
    for family_name, order in FAMILY_ORDERS.items():
        for old, new in zip(order, order[1:]):
            if old not in by_model.index or new not in by_model.index:
                continue
            for alignment in alignments:
                tests.append({
                    "kind": "family_step", "models": family_name, "n_models": 2, "alignment": alignment, "error": "",
                    "step": f"{old} -> {new}",
                    "alignment_change": by_model.at[new, alignment] - by_model.at[old, alignment],
                    "v0_mare_common_change": by_model.at[new, "v0_mare_common"] - by_model.at[old, "v0_mare_common"],
                    "b0_mare_common_change": by_model.at[new, "b0_mare_common"] - by_model.at[old, "b0_mare_common"],
                })
    return per_model, pd.DataFrame(tests)


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analyses.potential_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{len(QUICK_ELEMENTS)} elements ({' '.join(QUICK_ELEMENTS)}), {', '.join(QUICK_MODELS)}; for tests")
    parser.add_argument("--models", nargs="+", help=f"potentials to benchmark (default: {' '.join(CRYSTAL_MODELS)})")
    parser.add_argument("--elements", nargs="+", help="elements of the Delta-codes set (default: all 71)")
    parser.add_argument("--out", help="output folder (default: analyses/results/interatomic_potentials in a source checkout)")
    parser.add_argument("--scores", help="the alignment study's scores.csv (default: OUT/scores.csv)")
    parser.add_argument("--contrasts",
                        help="the alignment study's control_contrasts.csv (default: control_contrasts.csv beside the scores)")
    parser.add_argument("--analysis-only", action="store_true",
                        help="no benchmark, no model loaded: quality_vs_alignment*.csv from OUT/quality.csv, the scores "
                             "and the contrasts")
    return parser


def previous_models(out: Path, elements: Sequence[str], exclude: Sequence[str]) -> tuple[pd.DataFrame, dict] | None:
    """Rows and wall times of the models of an earlier run in ``out`` (not in ``exclude``) that
    covered exactly ``elements``, so models can be benchmarked one run at a time; None if none."""
    rows_path, summary_path = out / "quality_per_element.csv", out / "quality.csv"
    if not (rows_path.is_file() and summary_path.is_file()):
        return None
    rows = read_table(rows_path)
    same = [m for m, part in rows.groupby("model", sort=False)
            if m not in exclude and set(part.element) == set(elements) and len(part) == len(elements)]
    if not same:
        return None
    summary = read_table(summary_path)
    return rows[rows.model.isin(same)], {m: t for m, t in zip(summary.model, summary.seconds) if m in same}


def run_benchmark(models: Sequence[str], elements: Sequence[str] | None, out: Path) -> pd.DataFrame:
    """Benchmark ``models``; rows of models already in OUT/quality_per_element.csv but not run now are kept."""
    data = delta_eos(elements=elements)
    names = data.params["elements"]
    changes = sorted({a["volume_change"] for a in data.annotations})
    print(f"{len(names)} elements x {len(changes)} volumes ({REFERENCE})", flush=True)
    frames, seconds = [], {}
    for model in models:
        frame, seconds[model] = benchmark_model(model, names, changes)
        print(f"{model}: {int((frame.status == 'ok').sum())}/{len(names)} elements fitted in {seconds[model]:.0f} s", flush=True)
        frames.append(frame)
    per_element = pd.concat(frames, ignore_index=True)
    kept = previous_models(out, names, exclude=models)
    if kept is not None:
        rows, times = kept
        print(f"kept the rows of {' '.join(dict.fromkeys(rows.model))} from {out / 'quality_per_element.csv'}", flush=True)
        per_element = pd.concat([rows, per_element], ignore_index=True)
        seconds.update(times)
    write_csv(per_element, out / "quality_per_element.csv")
    quality = summarise(per_element, seconds)
    write_csv(quality, out / "quality.csv")
    print(quality[["model", "n_elements", "v0_mare", "b0_mare", "n_common", "v0_mare_common", "b0_mare_common", "seconds"]]
          .to_string(index=False), flush=True)
    return quality


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = output_dir(STUDY, args.out)
    models = args.models or (QUICK_MODELS if args.quick else CRYSTAL_MODELS)
    unknown = [m for m in models if m not in CRYSTAL_MODELS]
    if unknown:
        raise RepalignError(f"--models {' '.join(unknown)}: not a potential of the {ALIGNMENT_STUDY} study; "
                            f"choose from {' '.join(CRYSTAL_MODELS)}")
    if args.analysis_only:
        quality = read_table(out / "quality.csv")
    else:
        quality = run_benchmark(models, args.elements or (QUICK_ELEMENTS if args.quick else None), out)
    scores_path = Path(args.scores) if args.scores else out / "scores.csv"
    if not scores_path.is_file():
        print(f"no {scores_path}: quality_vs_alignment.csv not written (run analyses.{ALIGNMENT_STUDY} or pass --scores)")
        return 0
    if len(quality) < 2:
        print("one model benchmarked: quality_vs_alignment.csv needs at least two")
        return 0
    contrasts_path = Path(args.contrasts) if args.contrasts else scores_path.parent / "control_contrasts.csv"
    if not contrasts_path.is_file():
        raise RepalignError(f"no {contrasts_path}: the control-adjusted alignment needs the study's control contrasts; "
                            f"pass --contrasts or run analyses.{ALIGNMENT_STUDY}")
    per_model, tests = quality_vs_alignment(read_table(scores_path), quality, contrasts=read_table(contrasts_path))
    write_csv(per_model, out / "quality_vs_alignment.csv")
    write_csv(tests, out / "quality_vs_alignment_tests.csv")
    print(tests.to_string(index=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
