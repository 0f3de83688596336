"""Pieces shared by the studies: extraction of models, controls and baselines, scoring, outputs.

Random-initialised controls are the library's (:mod:`repalign.models.controls`): the spec
``NAME@random:SEED`` names the control of NAME with that seed, stored under that name with
``level = random_init`` in its provenance; baselines carry ``level = baseline``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, cast

import numpy as np
import pandas as pd

from analyses.families import rederived
from embeddings_cache import Cache
from repalign import plot
from repalign.compare import EngineOptions, StatsOptions, TokenOptions, compare_models, compare_tokens
from repalign.compare.controls import contrast_columns
from repalign.errors import RepalignError
from repalign.extract import extract
from repalign.models.controls import MODEL_SCOPE, base_model, control_name, control_scope, parse_control
from repalign.stats import holm
from repalign.table import best_flags, write_table

#: the analyses package; in a source checkout its results/ folder holds the committed results
PACKAGE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- scoring
#: the columns of a best-pair row, after the comparison's keys
BEST_COLUMNS = ("layer_a", "layer_b", "score", "ci_low", "ci_high", "chance_level", "null_mean", "calibrated", "p_value",
                "p_value_adjusted", "p_value_best", "n_samples", "n_units", "best_note")


def _best_columns(table: pd.DataFrame, by: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(c for c in (*by, *BEST_COLUMNS) if c in table.columns))


def best_pairs(table: pd.DataFrame, by: Sequence[str] = ("level", "metric", "model_a", "model_b")) -> pd.DataFrame:
    """One row per model pair (and level, metric): the best layer pair with its statistics.

    For a model compared with itself the best pair of two different layers is reported.
    """
    by = [c for c in by if c in table.columns]
    # a model against itself: the diagonal (a layer with itself) is trivially 1, not a finding
    table = table[(table.model_a != table.model_b) | (table.layer_a != table.layer_b)]
    index = table.groupby(by, sort=False)["score"].idxmax()
    keep = _best_columns(table, by)
    return table.loc[index.to_numpy(), keep].reset_index(drop=True)


def family_best(table: pd.DataFrame, by: Sequence[str] = ("level", "metric", "model_a", "model_b")) -> pd.DataFrame:
    """One row per model pair (and level, metric): the row ``compare`` marked ``best``, the best pair
    of the layer family (hidden by default: each network's declared input layers left out, a layer
    with itself too; :func:`repalign.compare.run.search_family`), with :func:`best_pairs`' columns."""
    by = [c for c in by if c in table.columns]
    flags = best_flags(table)
    rows = table[flags] if flags is not None else table.iloc[:0]
    keep = _best_columns(table, by)
    return rows.drop_duplicates(by)[keep].reset_index(drop=True)


CONTRAST_COLUMNS = ("dataset", "granularity", "metric", "layers", "comparison", "model_a", "model_b", "layer_a", "layer_b",
                    "trained", "control_mean", "control_sd", "n_seeds", "difference", "ci_low", "ci_high", "p_value",
                    "min_p_value", "p_value_adjusted", "n_samples", "control_scope")


def control_contrasts(best: pd.DataFrame, ci: float = 0.95, layers: str = "all") -> pd.DataFrame:
    """Each trained comparison against the same comparison of its random-initialised controls.

    ``best`` has one row per (dataset, granularity, level, metric, model pair): the best layer pair
    (:func:`best_pairs` over all layers, or :func:`family_best`, compare's best pair of the hidden
    family). Both sides use the same selection, each control seed its own best pair, so the
    maximum's upward bias applies to trained and controls alike (best against best, as
    :func:`repalign.compare.compare_controls`' headline). Matched rows:

    - ``comparison = models``: trained A vs trained B against, for each seed s, A@random:s vs B@random:s;
    - ``comparison = baseline``: trained A vs baseline F against A@random:s vs F.

    Per match, the library's contrast (:func:`repalign.compare.controls.contrast_columns`, the
    rank test of :func:`repalign.stats.seed_contrast`: difference trained − mean control; one-sided
    p of "trained is one more control draw", at least ``min_p_value`` = 1/(n_seeds + 1); ci_low /
    ci_high: the one-sided bounds that invert it, ±inf with fewer than 1/(1 − ci) − 1 seeds), and
    ``p_value_adjusted``: Holm over the matches of one dataset, granularity, metric and comparison.
    Matches with fewer than 2 control seeds are left out. ``layers`` labels the rows (``all``, or
    ``hidden`` for a ``best`` taken from :func:`family_best`).
    """
    if best.empty:
        return pd.DataFrame(columns=list(CONTRAST_COLUMNS))
    keys = [c for c in ("dataset", "granularity", "metric") if c in best.columns]
    # a contrast compares a trained pair with controls of one scope (NAME@random:S or NAME@random-all:S)
    scope = [control_scope(a, b) for a, b in zip(best.model_a, best.model_b)]
    frame = best.assign(base_a=best.model_a.map(base_model), base_b=best.model_b.map(base_model),
                        control=[bool(s) for s in scope], scope=scope,
                        comparison=np.where(best.level == "baseline", "baseline", "models"))
    rows = []
    # a comparison may be scored at several N (antibodies: all samples and IgFold's subset): one match per N
    for key, group in frame.groupby([*keys, "comparison", "base_a", "base_b"], sort=False):
        trained_n, control_n = set(group.n_samples[~group.control]), set(group.n_samples[group.control])
        if trained_n and control_n and not control_n <= trained_n:
            t = group[~group.control].iloc[0]
            raise RepalignError(f"{t.model_a} vs {t.model_b}: controls were scored on other samples than the trained "
                                f"models; score them on the same subset")
        for (n, scope), controls in group[group.control].groupby(["n_samples", "scope"], sort=False):
            trained = group[~group.control & (group.n_samples == n)]
            if len(trained) != 1 or len(controls) < 2:
                continue
            t = trained.iloc[0]
            contrast = contrast_columns(float(t.score), controls.score.to_numpy(), ci=ci)
            rows.append({**dict(zip([*keys, "comparison"], key)), "layers": layers, "model_a": t.model_a, "model_b": t.model_b,
                         "layer_a": t.layer_a, "layer_b": t.layer_b, "trained": float(t.score), **contrast,
                         "n_samples": int(n), "control_scope": scope})
    if not rows:
        return pd.DataFrame(columns=list(CONTRAST_COLUMNS))
    out = pd.DataFrame(rows)
    out = out.drop(columns=["p_value_adjusted"])
    out["p_value_adjusted"] = out.groupby([*keys, "comparison"], sort=False)["p_value"].transform(lambda p: holm(p.to_numpy()))
    return out[[c for c in CONTRAST_COLUMNS if c in out.columns]]


@dataclass(frozen=True)
class Primary:
    """One primary analysis of a study, declared before scoring: the control contrasts that answer one
    of the study's questions (its README's). Every other contrast is secondary.

    The rows it covers: control contrasts (and best pairs) of ``dataset`` and ``granularity`` with
    ``metric`` (the table's name, e.g. ``mutual_knn``) at ``n_samples`` samples (None: any), over the
    ``layers`` family (``hidden``: each network's input layers left out, ``all``), for ``comparison``
    ``models`` (trained pair against control pairs) or ``baseline``; ``models``: only pairs of these
    models (empty: every pair). ``k``: the neighbourhood size of a kNN metric, stated with it.
    """

    question: str
    dataset: str
    metric: str = "mutual_knn"
    granularity: str = "structure"
    layers: str = "hidden"
    n_samples: int | None = None
    k: int | None = None
    comparison: str = "models"
    models: tuple[str, ...] = ()

    def __post_init__(self):
        if self.layers not in ("hidden", "all"):
            raise RepalignError(f"Primary layers={self.layers!r}: pass 'hidden' or 'all'")
        if self.comparison not in ("models", "baseline"):
            raise RepalignError(f"Primary comparison={self.comparison!r}: pass 'models' or 'baseline'")

    def describe(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        n = f"N={self.n_samples}" if self.n_samples is not None else "every N"
        pairs = f", pairs of {', '.join(self.models)}" if self.models else ""
        against = "trained pair" if self.comparison == "models" else "trained model vs baseline"
        return (f"{self.question} -- {self.dataset}, {self.metric} per {self.granularity}, {self.layers} layers, "
                f"{n}{k}{pairs}: best {against} against its controls' best (rank test across seeds)")

    def covers(self, rows: pd.DataFrame) -> np.ndarray:
        """Which rows (contrast rows, or best pairs with ``level``) belong to this analysis."""
        def column(name, default):
            return rows[name] if name in rows.columns else pd.Series(default, index=rows.index)

        if "comparison" in rows.columns:
            comparison = rows.comparison
        else:
            comparison = pd.Series(np.where(rows.level == "baseline", "baseline", "models"), index=rows.index)
        keep = ((column("dataset", "") == self.dataset) & (column("granularity", "structure") == self.granularity)
                & (rows.metric == self.metric) & (column("layers", self.layers) == self.layers)
                & (comparison == self.comparison))
        # a secondary control (NAME@random-all:SEED) never answers a primary question; best-pair rows
        # carry no control_scope column, their model names say it
        scope = (rows.control_scope.fillna("") if "control_scope" in rows.columns
                 else pd.Series([control_scope(a, b) for a, b in zip(rows.model_a, rows.model_b)], index=rows.index))
        keep &= scope.isin(("", MODEL_SCOPE))
        if self.n_samples is not None:
            keep &= rows.n_samples.astype(float) == self.n_samples
        if self.models:
            side_b = rows.model_b.map(base_model).isin(self.models) if self.comparison == "models" else True
            keep &= rows.model_a.map(base_model).isin(self.models) & side_b
        return keep.to_numpy(dtype=bool)


def print_primaries(primaries: Sequence[Primary]) -> None:
    """Say what the run's primary analyses are, before anything else the study prints."""
    print(f"primary analyses ({len(primaries)}; Holm within them, apart from every secondary family):", flush=True)
    for primary in primaries:
        print(f"  - {primary.describe()}", flush=True)


def primary_mask(rows: pd.DataFrame, primaries: Sequence[Primary]) -> np.ndarray:
    mask = np.zeros(len(rows), dtype=bool)
    for primary in primaries:
        mask |= primary.covers(rows)
    return mask


#: the columns that name a secondary Holm family of control contrasts
SECONDARY_FAMILY = ("dataset", "granularity", "metric", "layers", "comparison", "control_scope", "n_samples")


def label_contrasts(contrasts: pd.DataFrame, primaries: Sequence[Primary]) -> pd.DataFrame:
    """Label each contrast row ``analysis = primary|secondary`` and Holm-adjust its ``p_value`` within
    its family (``holm_family``): every primary row together, and each secondary family
    (:data:`SECONDARY_FAMILY`: one data set, granularity, metric, layer family, comparison, control
    scope and N) apart,
    so a secondary result never weakens (or borrows from) the primary one. Primary rows come first."""
    if contrasts.empty:
        return contrasts.assign(analysis=pd.Series(dtype=str), holm_family=pd.Series(dtype=str))
    out = contrasts.copy()
    primary = primary_mask(out, primaries)
    out["analysis"] = np.where(primary, "primary", "secondary")
    keys = [c for c in SECONDARY_FAMILY if c in out.columns]
    names = out[keys].astype(str).agg("/".join, axis=1)
    out["holm_family"] = np.where(primary, "primary", "secondary: " + names)
    out["p_value_adjusted"] = out.groupby("holm_family", sort=False)["p_value"].transform(lambda p: holm(p.to_numpy()))
    order = np.argsort(~primary, kind="stable")  # primary first, the rest in their order
    columns = ["analysis", *[c for c in out.columns if c not in ("analysis", "holm_family")], "holm_family"]
    return out.iloc[order][columns].reset_index(drop=True)


def label_best_pairs(best: pd.DataFrame, primaries: Sequence[Primary]) -> pd.DataFrame:
    """Best pairs with ``analysis = primary|secondary`` (a control's best pair belongs to the analysis
    of its trained pair), primary rows first."""
    if best.empty:
        return best.assign(analysis=pd.Series(dtype=str))
    primary = primary_mask(best, primaries)
    out = best.assign(analysis=np.where(primary, "primary", "secondary"))
    columns = ["analysis", *[c for c in out.columns if c != "analysis"]]
    return out.iloc[np.argsort(~primary, kind="stable")][columns].reset_index(drop=True)


# ----------------------------------------------------------------------------- outputs
def source_checkout() -> bool:
    """Whether ``analyses`` runs from a source checkout (a ``.git`` or ``pyproject.toml`` beside it),
    not from an installed copy."""
    return any((PACKAGE.parent / name).exists() for name in (".git", "pyproject.toml"))


def default_results(study: str) -> Path:
    """``analyses/results/<study>`` in a source checkout; else ``./repalign-results/<study>`` in the
    working directory (never inside an installed package)."""
    return PACKAGE / "results" / study if source_checkout() else Path.cwd() / "repalign-results" / study


def output_dir(study: str, out: str | os.PathLike | None) -> Path:
    path = Path(out) if out else default_results(study)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(out: Path, cache: str | os.PathLike | None) -> Path:
    path = Path(cache) if cache else out / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_root(args, out: Path) -> Path | None:
    """Where a study's caches go: ``--cache``; else OUT/.cache when ``--out`` is given; else None
    (each data set's default: the owner study's default results folder, ``.cache/``)."""
    if args.cache:
        return Path(args.cache)
    return out / ".cache" if args.out else None


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    return write_table(table.round(6), path)


def save_figure(fig, out: Path, stem: str) -> list[Path]:
    """Save a study figure as PNG after :func:`repalign.plot.layout_problems` found nothing wrong
    with it (overlapping or clipped text, text under 7 pt, blank canvas)."""
    problems = plot.layout_problems(fig)
    if problems:
        raise RepalignError(f"figure {stem}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return plot.save_figure(fig, out / stem, formats=("png",))


CONTROL_SEEDS = (0, 1, 2, 3, 4)
LEVELS = ("trained", "random_init", "baseline")


@dataclass(frozen=True)
class StudyModel:
    """One model of a study on one data set: what to extract and how it is labelled.

    model: registered name, or ``NAME@random:SEED`` for a control; level: trained, random_init or
    baseline; options: adapter options (``--option``); tokens: also store per-atom/per-residue rows;
    subset: extract only the first ``subset`` records (a slow model on the largest subset that fits).
    """

    model: str
    level: str
    options: tuple = ()
    tokens: bool = False
    subset: int | None = None

    @property
    def seed(self) -> int | None:
        parsed = parse_control(self.model)
        return parsed[1] if parsed else None

    @property
    def base(self) -> str:
        return base_model(self.model)


def control_seeds(models: Sequence[str], seeds: Sequence[int] | Mapping[str, int] = CONTROL_SEEDS,
                  default_seeds: int = len(CONTROL_SEEDS)) -> dict[str, list[int]]:
    """Each model's control seeds: ``seeds`` is one list of seeds for every model, or a number of
    seeds per model (seeds 0 .. n-1; a model not named gets ``default_seeds``), so a model whose
    extraction is cheap can have enough seeds for its contrasts to reach p < 0.05 (19 or more)."""
    if isinstance(seeds, Mapping):
        unknown = sorted(set(seeds) - set(models))
        if unknown:
            raise RepalignError(f"control seeds given for {', '.join(unknown)}, not a model of this study; "
                                f"name one of {', '.join(models)}")
        return {m: list(range(int(seeds.get(m, default_seeds)))) for m in models}
    return {m: list(seeds) for m in models}


def model_plans(trained: Sequence[str], baselines: dict[str, dict] | None = None,
                seeds: Sequence[int] | Mapping[str, int] = CONTROL_SEEDS, tokens: bool = False,
                subsets: dict[str, int] | None = None, default_seeds: int = len(CONTROL_SEEDS)) -> list[StudyModel]:
    """Baselines first (cheap), then the trained models, then the controls seed by seed (all models of
    seed 0, then of seed 1, ...), so a partial extraction has complete seeds. ``seeds``: the seeds of
    every model, or a number of seeds per model (:func:`control_seeds`); control pairs are then
    scored for the seeds both models have (:func:`study_pairs`)."""
    subsets = subsets or {}
    per_model = control_seeds(trained, seeds, default_seeds)
    plans = [StudyModel(name, "baseline", tuple(sorted((opts or {}).items())), tokens) for name, opts in (baselines or {}).items()]
    plans += [StudyModel(name, "trained", (), tokens, subsets.get(name)) for name in trained]
    every_seed = sorted({s for model_seeds in per_model.values() for s in model_seeds})
    plans += [StudyModel(control_name(name, seed), "random_init", (), tokens, subsets.get(name))
              for seed in every_seed for name in trained if seed in per_model[name]]
    return plans


def first_seeds(plans: Sequence[StudyModel], count: int | None) -> list[StudyModel]:
    """The plans without the controls of seeds beyond the first ``count`` (None: all)."""
    if count is None:
        return list(plans)
    # controls are named NAME@random:SEED, so each has a seed
    seeds = sorted(cast("set[int]", {p.seed for p in plans if p.level == "random_init"}))[:count]
    return [p for p in plans if p.level != "random_init" or p.seed in seeds]


def only_models(plans: Sequence[StudyModel], names: Sequence[str] | None) -> list[StudyModel]:
    """The baselines and the plans of the models ``names`` (with their controls); None: every plan.
    A name that is not one of the study's models is a one-line error."""
    if names is None:
        return list(plans)
    known = {p.base for p in plans if p.level != "baseline"}
    unknown = sorted(set(names) - known)
    if unknown:
        raise RepalignError(f"--models: {', '.join(unknown)} not in this study; choose from {', '.join(sorted(known))}")
    return [p for p in plans if p.level == "baseline" or p.base in names]


def extract_plans(records, plans: Sequence[StudyModel], cache: Path, times_csv: Path | None = None,
                  dataset: str = "") -> pd.DataFrame:
    """Extract every plan into ``cache`` (every layer; resumable: stored samples are skipped).

    ``records`` is a Dataset or a list of records; a plan with ``subset`` gets the first ``subset``
    records. Samples a model cannot take are skipped and counted. The time of each run is appended
    to ``times_csv`` (dataset, model, level, extracted, cached, invalid, seconds, seconds per sample),
    so a study run in several parts keeps the cost of each part. A model that fails is reported and
    skipped, so the others still extract. Returns this run's rows.
    """
    rows = []
    for plan in plans:
        subset = records
        if plan.subset is not None and plan.subset < len(records):
            subset = records.head(plan.subset) if hasattr(records, "head") else list(records)[: plan.subset]
        try:
            runs = extract(subset, [plan.model], cache, layers=["all"], tokens=["all"] if plan.tokens else (),
                           options=dict(plan.options), skip_invalid=True, quiet=True)
        except RepalignError as exc:  # one model failing leaves the others to extract; the error is logged
            print(f"  {dataset} {plan.model}: FAILED: {exc}", flush=True)
            rows.append({"dataset": dataset, "model": plan.model, "level": plan.level, "error": str(exc)})
            continue
        run = runs[0]
        row = {"dataset": dataset, "model": plan.model, "level": plan.level, "extracted": run.stored,
               "cached": run.skipped_existing, "invalid": len(run.invalid), "seconds": round(run.seconds, 2),
               "seconds_per_sample": round(run.seconds / run.stored, 4) if run.stored else float("nan"),
               "finished": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")}
        rows.append(row)
        print(f"  {dataset} {plan.model}: {run.stored} extracted, {run.skipped_existing} cached, "
              f"{len(run.invalid)} invalid, {run.seconds:.1f} s", flush=True)
        if times_csv is not None and run.stored:
            previous = pd.read_csv(times_csv) if times_csv.exists() else pd.DataFrame()
            write_csv(pd.concat([previous, pd.DataFrame([row])], ignore_index=True), times_csv)
    return pd.DataFrame(rows)


def extract_models(records, models: Sequence[str], cache: Path, **options) -> dict[str, float]:
    """Extract every layer of each model (``NAME@random:SEED`` for a control) into ``cache``; resumable.

    Returns model -> seconds spent extracting in this run (0 when everything was already cached).
    """
    seconds = {}
    for model in models:
        runs = extract(records, [model], cache, layers=["all"], quiet=True, **options)
        seconds[model] = round(runs[0].seconds, 1)
        print(f"  {model}: {runs[0].stored} extracted, {runs[0].skipped_existing} cached, {runs[0].seconds:.1f} s", flush=True)
    return seconds


SCORE_COLUMNS = ("dataset", "level", "seed", "model_a", "layer_a", "model_b", "layer_b", "metric", "score",
                 "n_samples", "p_value", "p_value_adjusted", "ci_low", "ci_high")


@dataclass(frozen=True)
class Pair:
    """One model pair to score; ``level`` and ``seed`` label its rows (see :func:`study_pairs`)."""

    level: str
    model_a: str
    model_b: str
    seed: int | None = None


def study_pairs(plans: Sequence[StudyModel], trained_pairs: Sequence[tuple[str, str]] | None = None) -> list[Pair]:
    """The comparisons of a study, from its plans.

    - ``trained``: trained model vs trained model (``trained_pairs``, default every pair);
    - ``random_init``: the same pairs, control vs control of the same seed, one row set per seed;
    - ``baseline``: every trained model and every control vs every baseline (``seed`` = the control's).
    """
    trained = [p.model for p in plans if p.level == "trained"]
    baselines = [p.model for p in plans if p.level == "baseline"]
    seeds = sorted(cast("set[int]", {p.seed for p in plans if p.level == "random_init"}))  # controls have seeds
    controls = {p.model for p in plans if p.level == "random_init"}
    pairs = list(trained_pairs) if trained_pairs is not None else list(itertools.combinations(trained, 2))
    out = [Pair("trained", a, b) for a, b in pairs]
    for seed in seeds:
        out += [Pair("random_init", control_name(a, seed), control_name(b, seed), seed) for a, b in pairs
                if control_name(a, seed) in controls and control_name(b, seed) in controls]
    for base in baselines:
        out += [Pair("baseline", model, base) for model in trained]
        out += [Pair("baseline", control_name(model, seed), base, seed) for model in trained for seed in seeds
                if control_name(model, seed) in controls]
    return out


def tidy_scores(frame: pd.DataFrame, dataset: str, pair: Pair, **labels) -> pd.DataFrame:
    """A comparison table with the study columns first (:data:`SCORE_COLUMNS`), then the rest.

    ``p_value_adjusted`` is taken from the statistics when they provide it, else left empty.
    """
    frame = frame.copy()
    frame["dataset"], frame["level"] = dataset, pair.level
    frame["seed"] = pd.array([pair.seed] * len(frame), dtype="Int64")
    for key, value in labels.items():
        frame[key] = value
    for column in SCORE_COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan
    first = list(SCORE_COLUMNS) + list(labels)
    return frame[first + [c for c in frame.columns if c not in first]]


def available_pairs(cache: Path, pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs whose two models are both in ``cache``; each level with missing models is named once
    (e.g. controls not extracted yet), so a partial cache scores what it holds."""
    with Cache(cache) as c:
        present = set(c.models)
    kept = [p for p in pairs if p.model_a in present and p.model_b in present]
    skipped: dict[str, set] = {}
    for p in pairs:
        if p not in kept:
            skipped.setdefault(p.level, set()).update({p.model_a, p.model_b} - present)
    for level, missing in skipped.items():
        print(f"  note: {level} pairs skipped, not in {Path(cache).name}: {', '.join(sorted(missing))}", flush=True)
    return kept


def permutations_for(metric: str, permutations: int | dict) -> int:
    """Permutations of one metric: ``permutations`` is one count or a count per metric (0: no test)."""
    return int(permutations.get(metric, 0) if isinstance(permutations, dict) else permutations)


def pair_statistics(pair: Pair, metric: str, permutations: int | dict, ci: float, n_subsamples: int, seed: int) -> StatsOptions:
    """Permutations and interval level of one pair and metric. A pair with a random-init control is
    scored without either (``p_value`` and the interval empty): its score enters the study only
    through :func:`control_contrasts`, which tests trained against control across seeds; this keeps
    five seeds of controls affordable (the permutations are most of a pair's cost)."""
    if pair.seed is not None:
        return StatsOptions(n_subsamples=n_subsamples, seed=seed)
    return StatsOptions(permutations=permutations_for(metric, permutations), ci=ci, n_subsamples=n_subsamples, seed=seed)


def score_pooled(cache: Path, dataset: str, pairs: Sequence[Pair], metrics: Sequence[str], *, k: int,
                 permutations: int | dict, ci: float, n_subsamples: int, seed: int = 0,
                 anchors: int | None = None, samples: Sequence[str] | None = None) -> pd.DataFrame:
    """Every pair with :func:`repalign.compare.compare_models` (pooled features, shared ids),
    permutation p-values (max-T adjusted over the layer pairs) and subsampling intervals where the
    metric has one; study columns first. Pairs with a model missing from the cache are skipped.

    anchors: compare relative representations to this many anchor samples (drawn with ``seed``, the
    same for every pair; :mod:`repalign.metrics.anchors`), rows labelled ``granularity = relative``.
    They are compared as they are, without l2-normalising the rows again: a sample orthogonal to every
    anchor (a composition vector sharing no element with them) is a zero row, a valid representation.

    samples: score every pair on these sample ids only (e.g. the subset a slow model was extracted
    on, so that every pair of a study has one N); default: the ids both models have.
    """
    frames = []
    granularity = "relative" if anchors else "structure"
    for pair in available_pairs(cache, pairs):
        for metric in metrics:
            engine = EngineOptions(anchors=anchors or None, normalize=None if anchors else "l2")
            result = compare_models(cache, pair.model_a, pair.model_b, [metric], engine=engine, k=k, samples=samples,
                                    stats=pair_statistics(pair, metric, permutations, ci, n_subsamples, seed))
            frames.append(tidy_scores(result.table, dataset, pair, granularity=granularity))
        print(f"  scored {dataset} {pair.model_a} vs {pair.model_b} (N={result.n_samples})", flush=True)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORE_COLUMNS))


def score_elements(cache: Path, dataset: str, records, pairs: Sequence[Pair], metrics: Sequence[str], *, k: int,
                   permutations: int | dict, ci: float, n_subsamples: int, seed: int = 0) -> pd.DataFrame:
    """Every pair per element of each structure: :func:`repalign.compare.compare_tokens` with
    ``group_by="element"`` (one row per element present in a structure, its atoms' features
    averaged), block permutations moving whole structures and intervals resampling structures."""
    frames = []
    for pair in available_pairs(cache, pairs):
        for metric in metrics:
            result = compare_tokens(cache, pair.model_a, pair.model_b, [metric], k=k,
                                    tokens=TokenOptions(group_by="element", inputs=records),
                                    stats=pair_statistics(pair, metric, permutations, ci, n_subsamples, seed))
            frame = result.table.drop(columns=["granularity"], errors="ignore")
            frames.append(tidy_scores(frame, dataset, pair, granularity="element"))
        print(f"  scored {dataset} per element {pair.model_a} vs {pair.model_b} ({result.n_samples} rows of "
              f"{result.n_units} structures)", flush=True)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORE_COLUMNS))


def chance_and_null(n: int, k: int, quantile: float = 0.95, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Mutual kNN of unrelated features at N samples and k neighbours: the chance level k/(N-1) and
    the ``quantile`` of the score between independent random neighbour lists (each sample's k
    neighbours drawn uniformly from the N-1 others; the overlap of two such lists is
    hypergeometric, mean k/(N-1)), drawn ``draws`` times."""
    rng = np.random.default_rng(seed)
    overlaps = rng.hypergeometric(k, n - 1 - k, k, size=(draws, n)) / k
    return k / (n - 1), float(np.quantile(overlaps.mean(axis=1), quantile))


def pair_heatmaps(table: pd.DataFrame, pairs: Sequence[tuple[str, str]], metric: str, out: Path, stem: str) -> Path:
    """The layer heatmap of one model pair (:func:`repalign.plot.layer_heatmap`; non-significant cells
    hatched, the best pair boxed), one column wide, two when either model has over 20 layers."""
    if len(pairs) != 1:
        raise RepalignError(f"pair_heatmaps draws one pair per figure, got {len(pairs)}; call it once per pair")
    (a, b), = pairs
    rows = table[(table.metric == metric) & (table.model_a == a) & (table.model_b == b)]
    width = "double" if max(rows.layer_a.nunique(), rows.layer_b.nunique()) > 20 else "single"
    return save_figure(plot.layer_heatmap(table, metric, a, b, width=width), out, stem)[0]


def study_figures(table: pd.DataFrame, out: Path, heatmaps: Sequence[tuple[str, str, str]] = (),
                  contrasts: pd.DataFrame | None = None) -> list[Path]:
    """The figures of a study, drawn from its table (mutual kNN, trained models and baselines; controls
    are compared in the table, not drawn here):

    - ``matrix_<dataset>[_<granularity>][_n<N>].png``: model x model best-pair scores (pairs whose best
      cell is not significant after the max-T adjustment hatched; pairs never compared crossed), one
      matrix per sample count N when the pairs differ in N (so in chance level);
    - ``heatmap_<dataset>[_<granularity>]_<a>_<b>.png``: the layer x layer scores of each
      (dataset, model_a, model_b) in ``heatmaps``.

    Rows on an input stage (``input_stage``, e.g. IgFold's own input) are left out. With
    ``contrasts`` (:func:`control_contrasts` rows), a heatmap's title states its pair's headline
    against the controls (hidden family, default control scope: control mean, difference, p).
    """
    rows = table[(table.metric == "mutual_knn") & table.level.isin(["trained", "baseline"])
                 & ~table.model_a.str.contains("@") & ~table.model_b.str.contains("@")]
    if "input_stage" in rows.columns:
        rows = rows[~rows.input_stage.astype(bool)]
    keys = [c for c in ("dataset", "granularity") if c in rows.columns]
    figures = []
    for key, sub in rows.groupby(keys, sort=False):
        stem = "_".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        # one matrix per chance level: pairs scored on another N (IgFold's 200 structures) get their own
        sizes = sub.n_samples.unique()
        for n, part in sub.groupby("n_samples", sort=False):
            if len(set(part.model_a) | set(part.model_b)) > 2:
                name = f"matrix_{stem}" if len(sizes) == 1 else f"matrix_{stem}_n{n}"
                figures += save_figure(plot.model_matrix(part, "mutual_knn", order="table", width="single"), out, name)
        for dataset, a, b in heatmaps:
            pair = sub[(sub.model_a == a) & (sub.model_b == b)]
            if len(pair) and dataset == sub.dataset.iloc[0]:
                pair = pd.concat([pair, headline_contrast(contrasts, pair)], ignore_index=True)
                figures.append(pair_heatmaps(pair, [(a, b)], "mutual_knn", out, f"heatmap_{stem}_{a}_{b}"))
    return figures


def headline_contrast(contrasts: pd.DataFrame | None, pair: pd.DataFrame) -> pd.DataFrame:
    """The hidden-family contrast of one trained pair's rows as the contrast row a controls table
    carries (``level = contrast``, ``best``), which the heatmap title states; empty without one."""
    if contrasts is None or contrasts.empty:
        return pair.iloc[:0]
    first = pair.iloc[0]
    keep = ((contrasts.metric == first.metric) & (contrasts.layers == "hidden") & (contrasts.model_a == first.model_a)
            & (contrasts.model_b == first.model_b) & (contrasts.n_samples == first.n_samples)
            & (contrasts.get("control_scope", MODEL_SCOPE) == MODEL_SCOPE))
    for column in ("dataset", "granularity"):
        if column in contrasts.columns and column in pair.columns:
            keep &= contrasts[column] == first[column]
    return contrasts[keep].head(1).assign(level="contrast", best=True)


def depth_figure(table: pd.DataFrame, model: str, references: Sequence[str], metric: str, out: Path, stem: str,
                 ylabel: str | None = None, control_seed: int = 0) -> Path:
    """Score of each layer of ``model`` (best over the reference's layers) against the reference,
    trained and random-init control (seed ``control_seed``, its own line), with the subsampling
    interval of that cell: :func:`repalign.plot.depth_profile` of the table's rows, the control pair
    renamed so that both lines share the reference. ``ylabel`` is not used (the metric labels the axis)."""
    if len(references) != 1:
        raise RepalignError(f"depth_figure draws one reference, got {len(references)}")
    ref = references[0]
    rows = table[table.metric == metric]
    trained = rows[(rows.model_a == model) & (rows.model_b == ref)]
    control = rows[(rows.model_a == control_name(model, control_seed)) & (rows.model_b == control_name(ref, control_seed))]
    control = control.assign(model_a=f"{model} (random init)", model_b=ref)
    lines = pd.concat([trained, control], ignore_index=True).drop(columns=["best", "p_value_best"], errors="ignore")
    return save_figure(plot.depth_profile(lines, metric, ref, width="single"), out, stem)[0]


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency)."""
    def cell(v):
        if isinstance(v, float):
            if math.isnan(v):
                return ""
            return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def base_parser(study: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m analyses.{study}", description=description)
    parser.add_argument("--quick", action="store_true", help="a small smoke version (minutes), for tests")
    parser.add_argument("--out", help=f"output folder (default: analyses/results/{study} in a source checkout, "
                        f"else ./repalign-results/{study})")
    parser.add_argument("--cache", help="feature cache folder (default: OUT/.cache, git-ignored)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data sets and of the statistics")
    parser.add_argument("--extract-only", action="store_true", help="extract (resumable) and stop before scoring")
    parser.add_argument("--score-only", action="store_true",
                        help="score the models already in the cache (no extraction; missing models are skipped with a note)")
    parser.add_argument("--control-seeds", type=int, default=None, metavar="K",
                        help="with --extract-only: extract the controls of the first K seeds only (default: all)")
    parser.add_argument("--models", nargs="+", metavar="NAME", default=None,
                        help="extract only these models (registered names; their controls come with them) and the "
                             "study's baselines, e.g. the fast models first and a slow one later (default: all)")
    return parser


@dataclass
class Setup:
    """A study run: parsed arguments, its configuration (full or quick), data set sizes, output
    folder, cache root (None: each data set's default) and start time."""

    args: argparse.Namespace
    cfg: dict
    sizes: dict
    out: Path
    root: Path | None
    start: float


def study_setup(study: str, doc: str, argv, full: dict, quick: dict, sizes: dict,
                options: Callable[[argparse.ArgumentParser], None] | None = None) -> Setup:
    """Parse a study's command line and prepare its output folder; ``sizes``: data set sizes of the
    full and quick runs (:data:`analyses.datasets.SIZES`); ``options`` adds the study's own options."""
    parser = base_parser(study, doc.splitlines()[0])
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    out = output_dir(study, args.out)
    return Setup(args, quick if args.quick else full, sizes["quick" if args.quick else "full"], out,
                 cache_root(args, out), time.perf_counter())


def extract_part(setup: Setup, name: str, data, plans: Sequence[StudyModel], cache: Path) -> None:
    """Extract one data set's plans (resumable; controls limited by ``--control-seeds``), unless ``--score-only``."""
    if setup.args.score_only:
        print(f"--score-only: scoring the models already in {cache}", flush=True)
        return
    print(f"extracting {len(data)} {name} ({sum(r.size for r in data)} atoms/residues) into {cache}", flush=True)
    plans = only_models(first_seeds(plans, setup.args.control_seeds), setup.args.models)
    extract_plans(data, plans, cache, setup.out / "extraction_times.csv", dataset=name)


def with_earlier_parts(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``table`` plus the rows of an existing ``scores.csv`` at ``path`` that this run did not score
    again, so a study can be scored in parts: the (dataset, granularity, metric) parts this run did
    not score (``--datasets``, ``--granularity``, ``--metrics``), and within the parts it scored, the
    pairs it did not score (``--score-only`` on a cache holding some of the models, e.g. new control
    seeds of one model: the other pairs keep their earlier rows). The rows of every pair this run
    scored replace the earlier ones. Every group kept is named once."""
    if not path.exists():
        return table
    old = pd.read_csv(path)
    part = ["dataset", "granularity", "metric"]
    if not set(part) <= set(old.columns) or not set(part) <= set(table.columns):
        return table
    pair = [c for c in (*part, "model_a", "model_b") if c in old.columns and c in table.columns]
    scored_parts = set(zip(*(table[c] for c in part)))
    scored_pairs = set(zip(*(table[c] for c in pair)))
    in_scored_part = np.array([key in scored_parts for key in zip(*(old[c] for c in part))], dtype=bool)
    pair_scored = np.array([key in scored_pairs for key in zip(*(old[c] for c in pair))], dtype=bool)
    kept = old[~pair_scored]
    if kept.empty:
        return table
    whole = kept[~in_scored_part[~pair_scored]]
    for (dataset, granularity, metric), rows in whole.groupby(part, sort=False):
        print(f"  note: kept {len(rows)} {dataset} {metric} rows per {granularity} from the earlier {path.name}", flush=True)
    some = kept[in_scored_part[~pair_scored]]
    if not some.empty:
        # one note per part and model pair (a control pair named by its base models, with its seeds)
        labels = some.assign(base_a=some.model_a.map(base_model), base_b=some.model_b.map(base_model))
        for (dataset, granularity, metric, a, b), rows in labels.groupby([*part, "base_a", "base_b"], sort=False):
            seeds = sorted({int(s) for s in rows.seed.dropna()}) if "seed" in rows.columns else []
            levels = ", ".join(dict.fromkeys(rows.level)) if "level" in rows.columns else ""
            with_seeds = f"; control seeds {_seed_ranges(seeds)}" if seeds else ""
            print(f"  note: kept {len(rows)} {dataset} {metric} rows per {granularity} of {a} vs {b} ({levels}{with_seeds}) "
                  f"from the earlier {path.name}: not scored in this run", flush=True)
    kept = kept.astype({"seed": "Int64"}) if "seed" in kept.columns else kept
    return pd.concat([table, kept], ignore_index=True)


def _seed_ranges(seeds: Sequence[int]) -> str:
    """0-4, 7, 9-10: consecutive seeds as ranges."""
    runs: list[list[int]] = []
    for s in seeds:
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


RESULTS_LOCK = ".results.lock"


@contextlib.contextmanager
def results_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s results lock (an exclusive ``flock`` on OUT/.results.lock) for the merge and
    write of a study's tables, so two runs that score different parts cannot drop each other's rows;
    a second run waits, and says so."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / RESULTS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  note: another run is writing the results in {out}; waiting for it to finish", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def finish(setup: Setup, table: pd.DataFrame, primaries: Sequence[Primary], heatmaps: Sequence[tuple[str, str, str]] = (),
           headline: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> pd.DataFrame:
    """Merge ``table`` with the earlier ``scores.csv`` (:func:`with_earlier_parts`), write it and the
    outputs drawn from it (:func:`write_outputs`) and say how long the run took.

    headline: the rows a study's best pairs may come from (e.g. without input stages); default all.
    """
    if table.empty:
        raise RepalignError("nothing to score: no pair of the study has both its models in the cache; "
                            "extract them first (run without --score-only)")
    with results_lock(setup.out):  # another run scoring other parts may be merging into the same scores.csv
        # earlier rows kept from a table scored before compare marked the hidden family get it re-derived,
        # so trained and control best pairs are taken over the same family
        table = rederived(with_earlier_parts(table, setup.out / "scores.csv"))
        write_csv(table, setup.out / "scores.csv")
        best = write_outputs(setup.out, table, primaries, heatmaps, headline, ci=setup.cfg.get("ci", 0.95))
    print(f"wrote {setup.out / 'scores.csv'} ({len(table)} rows) in {time.perf_counter() - setup.start:.0f} s", flush=True)
    return best


def write_outputs(out: Path, table: pd.DataFrame, primaries: Sequence[Primary], heatmaps: Sequence[tuple[str, str, str]] = (),
                  headline: Callable[[pd.DataFrame], pd.DataFrame] | None = None, ci: float = 0.95) -> pd.DataFrame:
    """The outputs a study draws from its ``scores.csv`` table, into ``out``:

    - ``best_pairs.csv``: per (dataset, granularity, level, metric, model pair, N) the best layer
      pair of the hidden family (``layers = hidden``, the rows ``compare`` marked ``best``,
      :func:`family_best`) and over all layers (``layers = all``, :func:`best_pairs` of the
      ``headline`` rows); labelled ``analysis``, primary rows first;
    - ``control_contrasts.csv``: :func:`control_contrasts` of both, labelled and Holm-adjusted per
      family (:func:`label_contrasts`), primary rows first; ``control_contrasts.md``: the same as
      markdown tables for a README (:func:`contrast_tables`);
    - the figures (:func:`study_figures`).

    Returns the best pairs.
    """
    rows = headline(table) if headline is not None else table
    by = [c for c in ("dataset", "granularity", "level", "metric", "model_a", "model_b", "n_samples") if c in rows.columns]
    best = best_pairs(rows, by=by)
    hidden = family_best(table, by=by)  # compare's best pair of the hidden layer family, each control its own
    both = pd.concat([hidden.assign(layers="hidden"), best.assign(layers="all")], ignore_index=True)
    order = [*by, "layers", *[c for c in both.columns if c not in (*by, "layers")]]
    labelled = label_best_pairs(both[order], primaries)
    write_csv(labelled, out / "best_pairs.csv")
    contrasts = label_contrasts(pd.concat([control_contrasts(best, ci), control_contrasts(hidden, ci, layers="hidden")],
                                          ignore_index=True), primaries)
    write_csv(contrasts, out / "control_contrasts.csv")
    (out / "control_contrasts.md").write_text(contrast_tables(contrasts, primaries))
    study_figures(table, out, heatmaps, contrasts)
    return labelled


#: the columns of the README tables of control contrasts
CONTRAST_TABLE_COLUMNS = ("model_a", "model_b", "layer_a", "layer_b", "n_samples", "trained", "control_mean", "n_seeds",
                          "difference", "p_value", "min_p_value", "p_value_adjusted")


def contrast_tables(contrasts: pd.DataFrame, primaries: Sequence[Primary]) -> str:
    """Markdown tables of control contrasts for a study's README: the primary analyses first (each
    declared question, then its rows), then one table per secondary Holm family. Every table states
    ``n_seeds`` and ``min_p_value`` = 1/(n_seeds + 1), the smallest p-value the seeds allow."""
    columns = [c for c in CONTRAST_TABLE_COLUMNS if c in contrasts.columns]
    parts = ["## Primary analyses (Holm over these rows together)", ""]
    parts += [f"- {p.describe()}" for p in primaries] + [""]
    primary = contrasts[contrasts.analysis == "primary"] if "analysis" in contrasts.columns else contrasts.iloc[:0]
    parts += [markdown_table(primary[columns]) if len(primary) else "(no rows scored yet)", ""]
    secondary = contrasts[contrasts.analysis != "primary"] if "analysis" in contrasts.columns else contrasts
    if len(secondary):
        parts += ["## Secondary analyses (Holm within each family)", ""]
        for family, rows in secondary.groupby("holm_family", sort=False):
            parts += [f"### {str(family).removeprefix('secondary: ')}", "", markdown_table(rows[columns]), ""]
    return "\n".join(parts)


def run_main(main: Callable[[Sequence[str] | None], int], argv=None) -> int:
    """Run a study's main; a RepalignError becomes a one-line message and exit status 1."""
    try:
        return main(argv)
    except RepalignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
