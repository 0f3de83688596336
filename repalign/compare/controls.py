"""A trained comparison against the same comparison of random-initialised controls of several seeds.

:func:`compare_controls` scores model A against model B, then, with the same engine, layers,
metrics, samples and parameters, each seed's controls (``A@random:s`` against ``B@random:s``, or
against B itself when B is a baseline), and adds contrast rows: the trained score against the
seeds' scores (:func:`repalign.stats.seed_contrast`), per layer pair (descriptive) and for the best
pair of the layer family (the headline, tested). docs/statistics.md, "Trained against
random-initialised controls", gives the table's schema.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence
from warnings import warn

import numpy as np
import pandas as pd

from embeddings_cache import Cache, align_ids
from repalign.compare.headline import CONTRAST_COLUMNS, describe, headlines
from repalign.compare.options import EngineOptions, StatsOptions
from repalign.compare.pooled import score_setup
from repalign.compare.run import WARNING_SEPARATOR, Comparison, resolve_comparison
from repalign.errors import RepalignError, RepalignWarning
from repalign.models.controls import control_name, parse_control
from repalign.stats import holm, min_draws, seed_contrast

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclasses.dataclass
class ControlComparison(Comparison):
    """A :class:`Comparison` with random-init controls: its summary leads with the headline of each
    metric (:func:`repalign.compare.headline.headlines`), its contrast bounds have level ``ci``."""

    seeds: list = dataclasses.field(default_factory=list)
    ci: float = 0.95

    def summary(self, *args, **kwargs) -> str:
        lines = [f"{self.model_a} vs {self.model_b} against random-init controls of {len(self.seeds)} seeds "
                 f"({_seed_text(self.seeds)}):"]
        found = headlines(self.table)
        if len(found) == 1:  # Holm over one metric is its p-value
            found["p_value_adjusted"] = np.nan
        lines += [f"  headline {describe(row, self.ci)}" for _, row in found.iterrows()]
        return "\n".join([*lines, super().summary(*args, **kwargs)])


def _seed_text(seeds: list) -> str:
    """Seeds as ranges: [0, 1, 2, 5] -> '0-2,5'."""
    parts, start = [], 0
    for i in range(1, len(seeds) + 1):
        if i == len(seeds) or seeds[i] != seeds[i - 1] + 1:
            parts.append(str(seeds[start]) if i - 1 == start else f"{seeds[start]}-{seeds[i - 1]}")
            start = i
    return ",".join(parts)


def parse_seeds(seeds) -> list[int]:
    """Control seeds from text (``0-19``, ``0,3,5``, ``0-4,9``) or a sequence of integers: distinct,
    in the order given; at least 2 (a rank test needs them)."""
    if isinstance(seeds, str):
        values: list[int] = []
        for part in seeds.replace(" ", "").split(","):
            match = _RANGE.match(part)
            if not match or (match[2] is not None and int(match[2]) < int(match[1])):
                raise RepalignError(f"seeds={seeds!r}: write them as 0-19, 0,3,5 or 0-4,9 (non-negative integers)")
            values += range(int(match[1]), int(match[2] or match[1]) + 1)
    else:
        try:
            values = [int(s) for s in seeds]
        except (TypeError, ValueError):
            raise RepalignError(f"seeds={seeds!r}: give them as integers, e.g. range(20)") from None
        if any(v < 0 for v in values) or any(float(s) != int(s) for s in seeds):
            raise RepalignError(f"seeds={list(seeds)!r}: give non-negative integers")
    values = list(dict.fromkeys(values))
    if len(values) < 2:
        raise RepalignError(f"seeds={seeds!r} gives {len(values)} control seed(s); the contrast needs at least 2 "
                            "(its smallest p-value is 1/(n + 1) with n of them: 0.048 with 20)")
    return values


def is_baseline(cache: Cache, model: str) -> bool:
    """A hand-crafted baseline (``level = baseline`` in its provenance): it has no random-init control."""
    return cache.provenance(model).get("level") == "baseline"


def control_models(ca: Cache, cb: Cache, model_a: str, model_b: str, seeds: list[int]) -> dict[int, tuple[str, str]]:
    """seed -> (control of A, control of B): a baseline stands for itself. Errors for a model that
    is already a control and for two baselines (nothing to randomise)."""
    for side, model in (("model_a", model_a), ("model_b", model_b)):
        if parse_control(model) is not None:
            raise RepalignError(f"{side}={model!r} is itself a random-init control; compare the trained model "
                                "with seeds")
    base_a, base_b = is_baseline(ca, model_a), is_baseline(cb, model_b)
    if base_a and base_b:
        raise RepalignError(f"{model_a} and {model_b} are both baselines: they have no random-init controls; drop seeds")
    return {s: (model_a if base_a else control_name(model_a, s), model_b if base_b else control_name(model_b, s))
            for s in seeds}


def _extract_flags(cache: Cache, trained: str) -> str:
    """The flags of ``repalign extract`` that make a control as ``trained`` was made (pooling, token layers)."""
    options = cache.provenance(trained).get("options") or {}
    flags = f" --pool {options['pool']}" if options.get("pool") else ""
    if options.get("token_layers"):
        flags += f" --tokens {','.join(options['token_layers'])}"
    return f"{flags} -o {cache.path}"


def _extract_command(cache: Cache, trained: str, controls: list[str]) -> str:
    """The command that extracts ``controls`` as ``trained`` was extracted (INPUTS: its input files)."""
    return f"repalign extract INPUTS{''.join(f' --model {c}' for c in controls)}{_extract_flags(cache, trained)}"


def check_controls_present(ca: Cache, cb: Cache, model_a: str, model_b: str, pairs: dict[int, tuple[str, str]]) -> None:
    """A one-line error naming every missing control and the command that extracts it (INPUTS: the
    files the trained models were extracted from; one command when both go to the same cache alike)."""
    missing_a = [a for a, _ in pairs.values() if a != model_a and a not in ca.models]
    missing_b = [b for _, b in pairs.values() if b != model_b and b not in cb.models]
    if not (missing_a or missing_b):
        return
    commands: dict[str, list[str]] = {}
    if missing_a:
        commands.setdefault(_extract_flags(ca, model_a), []).extend(missing_a)
    if missing_b:
        commands.setdefault(_extract_flags(cb, model_b), []).extend(missing_b)
    text = " ; ".join(f"repalign extract INPUTS{''.join(f' --model {c}' for c in models)}{flags}"
                      for flags, models in commands.items())
    raise RepalignError(f"random-init controls not in the cache: {', '.join(missing_a + missing_b)}; extract them as "
                        f"{model_a} and {model_b} were (INPUTS: the same input files): {text}")


def check_control_samples(cache: Cache, trained: str, control: str, ids: list) -> None:
    """The control holds every compared sample of the trained model, with the same content hashes."""
    if control == trained:
        return
    held = set(align_ids(cache, trained, cache, control))  # CacheError when an id names other inputs
    lacking = [i for i in ids if i not in held]
    if lacking:
        raise RepalignError(f"{control} lacks {len(lacking)} of the {len(ids)} samples compared for {trained} "
                            f"(first: {lacking[0]!r}); extract it from the same input files: "
                            f"{_extract_command(cache, trained, [control])}")


def compare_controls(
    cache,
    model_a: str,
    model_b: str,
    metrics: Sequence[str],
    seeds,
    *,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    engine: EngineOptions | None = None,
    stats: StatsOptions | None = None,
    **params,
) -> Comparison:
    """:func:`repalign.compare.compare_models` of A and B, and of each seed's controls, with contrasts.

    ``seeds``: control seeds (``range(20)``, or text ``0-19``, ``0,3,5``, ``0-4,9``; at least 2).
    The controls ``A@random:s`` (in A's cache) and ``B@random:s`` (in B's, ``cache_b``) must be
    stored, with every compared sample; B (or A) stands for itself when it is a baseline. Every
    control is scored with the same engine, layers, metrics, samples (the trained comparison's ids)
    and parameters; ``stats``' permutations and intervals apply to the trained rows only, its
    ``layer_family`` to every best pair, and ``alpha`` sets the level 1 − alpha of the contrast bounds.

    The table has the trained rows (``level = trained``), each seed's rows (``random_init``,
    ``control_seed``) and the contrast rows (``contrast``): one per layer pair (descriptive) and,
    marked ``best``, one per metric: the trained best pair against each seed's own best pair,
    ``p_value_adjusted`` Holm over the metrics (docs/statistics.md).
    """

    seeds = parse_seeds(seeds)
    setup = resolve_comparison(cache, model_a, model_b, metrics, layers_a, layers_b, params, engine=engine, stats=stats)
    ca, cb, ids, stats = setup.ca, setup.cb, setup.ids, setup.stats
    pairs = control_models(ca, cb, model_a, model_b, seeds)
    check_controls_present(ca, cb, model_a, model_b, pairs)
    for a, b in pairs.values():
        check_control_samples(ca, model_a, a, ids)
        check_control_samples(cb, model_b, b, ids)
        _check_layers(ca, a, setup.names_a)
        _check_layers(cb, b, setup.names_b)
    trained = score_setup(setup)
    # the controls: the trained comparison's caches, layers, samples and parameters, without statistics
    plain = dataclasses.replace(stats, permutations=0, ci=None)
    frames = [trained.table.assign(level="trained", control_seed=pd.NA)]
    warnings = list(trained.warnings)
    for seed, (a, b) in pairs.items():
        control = score_setup(dataclasses.replace(setup, model_a=a, model_b=b, stats=plain))
        frames.append(control.table.assign(level="random_init", control_seed=seed))
        warnings += [f"{a} vs {b}: {w}" for w in control.warnings]
    few = seed_warning(len(seeds), stats.alpha)
    frames.append(contrast_rows(frames[0], frames[1:], 1.0 - stats.alpha, [few] if few else []))
    if few:
        warnings.append(few)
        warn(few, RepalignWarning, stacklevel=2)
    table = pd.concat(frames, ignore_index=True)
    table["control_seed"] = table["control_seed"].astype("Int64")
    return ControlComparison(table=table, model_a=model_a, model_b=model_b, n_samples=trained.n_samples,
                             alignments=trained.alignments, warnings=list(dict.fromkeys(warnings)), seeds=seeds,
                             ci=1.0 - stats.alpha)


def _check_layers(cache: Cache, model: str, names: list) -> None:
    lacking = [x for x in names if x not in cache.layers(model)]
    if lacking:
        raise RepalignError(f"{model} lacks the layer(s) {', '.join(lacking)} of the trained comparison; extract "
                            "its controls with the same layers")


def contrast_columns(trained: float, controls, ci: float = 0.95) -> dict:
    """The contrast columns (:data:`CONTRAST_COLUMNS`) of one trained score against its controls' scores,
    one per seed (:func:`repalign.stats.seed_contrast`; ``p_value_adjusted`` NaN: a family adjusts it);
    NaN when a score is missing."""
    controls = np.asarray(controls, dtype=np.float64)
    if not (np.isfinite(trained) and np.isfinite(controls).all()):
        return {c: np.nan for c in CONTRAST_COLUMNS} | {"n_seeds": len(controls)}
    c = seed_contrast(trained, controls, ci=ci)
    return {"control_mean": c.control_mean, "control_sd": c.control_sd, "n_seeds": c.n_seeds, "difference": c.difference,
            "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value, "min_p_value": c.min_p_value,
            "p_value_adjusted": np.nan}


def seed_warning(n_seeds: int, alpha: float) -> str | None:
    """The reliability warning of a contrast whose smallest attainable p-value, 1/(n_seeds + 1), exceeds ``alpha``."""
    if n_seeds >= min_draws(alpha):
        return None
    return (f"random-init controls of {n_seeds} seed(s): the smallest possible p-value of the contrast is "
            f"{1.0 / (n_seeds + 1.0):.3g} > alpha={alpha}; use at least {min_draws(alpha)} control seed(s)")


def contrast_rows(trained: pd.DataFrame, controls: list[pd.DataFrame], ci: float, warnings: Sequence[str] = ()) -> pd.DataFrame:
    """The contrast rows (``level = contrast``) of a trained table against its seeds' tables (the
    same metrics and layer pairs in the same order): one per layer pair, trained score against the
    seeds' scores at that pair; and per metric one ``best`` row, the trained best pair against each
    seed's own best pair, with ``p_value_adjusted`` Holm over the metrics. A row's ``warnings``: the
    trained row's and ``warnings``."""
    keys = ["metric", "layer_a", "layer_b"]
    for frame in controls:
        if not frame[keys].reset_index(drop=True).equals(trained[keys].reset_index(drop=True)):
            raise RepalignError("contrast_rows: the controls' tables do not hold the trained table's metrics and layer pairs")
    base = [c for c in ("model_a", "layer_a", "model_b", "layer_b", "metric", "params", "score", "n_samples", "best",
                        "warnings") if c in trained.columns]
    scores = np.column_stack([f["score"].to_numpy(dtype=np.float64) for f in controls])
    rows = trained[base].reset_index(drop=True).assign(best=False, level="contrast", control_seed=pd.NA)
    stats = pd.DataFrame([contrast_columns(float(x), c, ci) for x, c in zip(rows["score"], scores)])
    best_rows = []
    for metric, group in trained.reset_index(drop=True).groupby("metric", sort=False):
        row = group[group["best"].astype(bool)].iloc[0]
        seed_best = [float(f.loc[(f["metric"] == metric) & f["best"].astype(bool), "score"].iloc[0]) for f in controls]
        best_rows.append(row[base].to_dict() | {"level": "contrast", "control_seed": pd.NA}
                         | contrast_columns(float(row["score"]), np.asarray(seed_best), ci))
    best = pd.DataFrame(best_rows)
    best["p_value_adjusted"] = holm(best["p_value"].to_numpy(dtype=np.float64))
    out = pd.concat([pd.concat([rows, stats], axis=1), best], ignore_index=True)
    out["n_seeds"] = out["n_seeds"].astype("Int64")
    if "warnings" in out.columns:
        out["warnings"] = [WARNING_SEPARATOR.join(dict.fromkeys(t for t in (*str(w or "").split(WARNING_SEPARATOR), *warnings) if t))
                           for w in out["warnings"]]
    return out
