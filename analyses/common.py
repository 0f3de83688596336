"""Pieces shared by the studies: random-initialised controls, scoring with statistics, outputs.

Random-initialised controls (:func:`randomized`) keep a model's architecture, tokeniser, input
featurisation and buffers, and replace every trainable weight by a fixed-seed initialisation; they
answer "how much of an alignment comes from the architecture and the input statistics alone?".
They are stored in the cache under ``<model>@random`` with ``random_init`` in their provenance, so a
control can never be read as the trained model.
"""

from __future__ import annotations

import argparse
import math
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from repalign.errors import RepalignError
from repalign.models import ModelAdapter, get_adapter

RANDOM_SUFFIX = "@random"
RESULTS_ROOT = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- random-initialised controls
def torch_modules(obj: Any, depth: int = 2) -> list:
    """The distinct top-level ``torch.nn.Module`` objects held by ``obj``'s attributes.

    Looks ``depth`` attribute levels deep, because adapters often hold a runner object that holds the
    network (e.g. an encoder wrapper with a ``.model``). Submodules of a found module are not listed
    again.
    """
    import torch

    found: dict[int, torch.nn.Module] = {}
    seen: set[int] = set()

    def visit(value: Any, level: int) -> None:
        if id(value) in seen or value is None or isinstance(value, (str, bytes, int, float, bool, Path, np.ndarray)):
            return
        seen.add(id(value))
        if isinstance(value, torch.nn.Module):
            found[id(value)] = value
            return
        if level >= depth:
            return
        if isinstance(value, (list, tuple)):
            children = list(value)
        elif isinstance(value, dict):
            children = list(value.values())
        else:
            children = list(getattr(value, "__dict__", {}).values())
        for child in children:
            visit(child, level + 1)

    for attr in vars(obj).values():
        visit(attr, 1)
    # a module that is a submodule of another found module is re-initialised with its parent
    inner = {id(sub) for m in found.values() for sub in m.modules() if sub is not m}
    return [m for key, m in found.items() if key not in inner]


def reinitialize(modules: Sequence, seed: int) -> dict[str, int]:
    """Re-initialise every parameter of ``modules`` in place, deterministically from ``seed``.

    Modules that define ``reset_parameters()`` (Linear, Embedding, LayerNorm, convolutions,
    BatchNorm, ...) use their own PyTorch default initialisation (BatchNorm also resets its running
    statistics to mean 0, variance 1). Every other trainable parameter (custom layers, e.g.
    equivariant tensor-product weights stored as flat vectors, GPT-2's Conv1D) gets N(0, s^2) with
    s the standard deviation of its trained values, so activations keep a comparable magnitude
    whatever the layer's own weight parametrisation (one number per tensor is kept from training).
    Kept as they are: frozen parameters (``requires_grad=False``: normalisation constants such as
    an average neighbour count, reference energies), all-positive vectors outside modules with
    ``reset_parameters`` (in these models: radial/Fourier basis frequencies, initialised
    deterministically to n·pi/r_cut by their libraries and only nudged by training; setting them to
    one value would collapse the basis), and buffers. Frozen parameters are restored even when a
    ``reset_parameters()`` touched them.
    The global torch RNG is left as it was. Returns counts of parameters per initialisation rule.
    """
    import torch

    if not modules:
        raise RepalignError("no torch modules found to re-initialise; this model cannot have a random-init control")
    counts = {"reset_parameters": 0, "scaled_normal": 0, "kept": 0}
    frozen = [(p, p.detach().clone()) for module in modules for p in module.parameters() if not p.requires_grad]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        covered: set[int] = set()
        for module in modules:
            for sub in module.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    try:
                        reset()
                    except (TypeError, NotImplementedError):  # a custom signature: fall back below
                        continue
                    for p in sub.parameters(recurse=True):
                        covered.add(id(p))
        generator = torch.Generator().manual_seed(seed + 1)
        frozen_ids = {id(p) for p, _ in frozen}
        for module in modules:
            for p in module.parameters():
                if id(p) in frozen_ids:
                    continue
                if id(p) in covered:
                    counts["reset_parameters"] += 1
                    continue
                covered.add(id(p))
                if p.ndim <= 1 and p.numel() and bool((p > 0).all()):
                    counts["kept"] += 1
                    continue
                scale = float(p.detach().float().std()) if p.numel() > 1 else 0.0
                draw = torch.randn(p.shape, generator=generator, dtype=torch.float32) * scale
                p.copy_(draw.to(device=p.device, dtype=p.dtype))
                counts["scaled_normal"] += 1
        for p, value in frozen:
            p.copy_(value)
            counts["kept"] += 1
    return counts


def model_seed(seed: int, model: str) -> int:
    """The seed of one model's control: drawn from (seed, model name), so two models of the same
    architecture (e.g. CHGNet 0.3.0 and 0.2.0) get independent random networks, not the same one."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(model.encode())]).generate_state(1)[0] % (2**31 - 2))


class RandomInitAdapter(ModelAdapter):
    """A model adapter whose weights are re-initialised with a fixed seed (see :func:`reinitialize`).

    Everything but the weights is the wrapped adapter's: layers, inputs, tokenisation, pooling.
    Its cache name is ``<model>@random`` and its provenance carries ``random_init`` (the seed and
    the model's own stream, :func:`model_seed`).
    """

    def __init__(self, inner: ModelAdapter, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise RepalignError(f"random-init seed must be an integer, got {seed!r}")
        self.inner = inner
        self.seed = int(seed)
        self.info = inner.info
        self.default_pooling = inner.default_pooling
        self.max_size = inner.max_size
        base = getattr(inner, "name", None) or inner.info.name
        self.name = base + RANDOM_SUFFIX
        self.stream = model_seed(self.seed, base)
        self.weights, self.device, self.dtype = inner.weights, inner.device, inner.dtype
        # the seeds are options, so a cache written with other seeds is detected on resume
        self.options = {**inner.options, "random_init_seed": self.seed, "random_init_stream": self.stream}
        self._loaded = False
        self.init_counts: dict[str, int] = {}

    def load(self) -> None:
        self.inner.ensure_loaded()
        self.init_counts = reinitialize(torch_modules(self.inner), self.stream)

    def layer_names(self) -> list[str]:
        return self.inner.layer_names()

    def default_layers(self) -> list[str]:
        return self.inner.default_layers()

    def provenance(self) -> dict[str, Any]:
        self.ensure_loaded()
        prov = dict(self.inner.provenance())
        prov["model"] = self.name
        prov["random_init"] = {"seed": self.seed, "stream": self.stream, "initialisation": dict(self.init_counts),
                               "note": "weights re-initialised: a control, not the trained model"}
        return prov

    def validate(self, record) -> None:
        self.inner.validate(record)

    def size(self, record) -> int:
        return self.inner.size(record)

    def forward(self, records, layers):
        self.ensure_loaded()
        return self.inner.forward(records, layers)


def randomized(adapter: ModelAdapter, seed: int = 0) -> RandomInitAdapter:
    """The random-initialised control of ``adapter`` (loaded lazily, re-initialised with ``seed``)."""
    return RandomInitAdapter(adapter, seed)


def control_factory(seed: int = 0, base_factory: Callable[..., ModelAdapter] = get_adapter) -> Callable[..., ModelAdapter]:
    """An ``adapter_factory`` for :func:`repalign.extract.extract`: ``NAME@random`` gives the control of
    NAME; other names go to ``base_factory`` (the model registry by default)."""

    def factory(name: str, weights=None, device="cpu", dtype="float32", **options) -> ModelAdapter:
        if name.endswith(RANDOM_SUFFIX):
            base = name[: -len(RANDOM_SUFFIX)]
            return randomized(base_factory(base, weights=weights, device=device, dtype=dtype, **options), seed)
        return base_factory(name, weights=weights, device=device, dtype=dtype, **options)

    return factory


def is_control(model: str) -> bool:
    return model.endswith(RANDOM_SUFFIX)


# ----------------------------------------------------------------------------- reading features
def pooled_layers(cache, model: str, ids: Sequence[str], layers: Sequence[str] | None = None):
    """(names, [(N, D) float64 matrices]) of a model's pooled layers, rows in the order of ``ids``."""
    names = list(layers) if layers else cache.layers(model)
    return names, [cache.read_layer(model, name, ids=ids).astype(np.float64) for name in names]


def token_layers(cache, model: str, ids: Sequence[str], layers: Sequence[str] | None = None):
    """(names, [(T, D) matrices], offsets) of a model's token (per-atom / per-residue) layers.

    Rows of all samples are stacked in the order of ``ids``; row t of two models is the same atom
    only when both have the same offsets, which :func:`check_same_tokens` verifies.
    """
    names = list(layers) if layers else cache.token_layers(model)
    mats, offsets = [], None
    for name in names:
        data, off = cache.read_tokens(model, name, ids=ids)
        if offsets is not None and not np.array_equal(off, offsets):
            raise RepalignError(f"{model}: token layers {names[0]} and {name} have different row counts per sample")
        offsets = off
        mats.append(data.astype(np.float64))
    return names, mats, offsets


def check_same_tokens(offsets_a: np.ndarray, offsets_b: np.ndarray, model_a: str, model_b: str) -> None:
    if not np.array_equal(offsets_a, offsets_b):
        raise RepalignError(
            f"{model_a} and {model_b} store different numbers of atoms/residues for the same samples; "
            "per-token alignment needs the same rows in the same order in both"
        )


# ----------------------------------------------------------------------------- scoring
def scored_pair(
    mats_a: Sequence[np.ndarray],
    mats_b: Sequence[np.ndarray],
    names_a: Sequence[str],
    names_b: Sequence[str],
    model_a: str,
    model_b: str,
    metric: str,
    *,
    permutations: int,
    n_subsamples: int,
    seed: int = 0,
    **metric_params,
) -> pd.DataFrame:
    """Tidy table of one model pair and metric: scores, permutation p-values and subsampling intervals.

    Columns: those of ``LayerAlignment.to_frame`` plus ``repalign.stats.stats_columns``
    (chance_level, p_value, null_mean, calibrated, ci_low, ci_high, p_value_best).
    """
    from repalign.metrics import align_layers
    from repalign.stats import permutation_test, stats_columns, subsample_interval

    result = permutation_test(mats_a, mats_b, metric=metric, permutations=permutations, seed=seed,
                              names_a=list(names_a), names_b=list(names_b), **metric_params)
    interval = subsample_interval(mats_a, mats_b, metric=metric, n_subsamples=n_subsamples, seed=seed, **metric_params)
    alignment = align_layers(mats_a, mats_b, metric=metric, names_a=list(names_a), names_b=list(names_b), **metric_params)
    if not np.allclose(alignment.scores, result.scores, atol=1e-9, equal_nan=True):
        raise RepalignError(f"{model_a} vs {model_b}: permutation-test scores differ from align_layers scores")
    return pd.concat([alignment.to_frame(model_a=model_a, model_b=model_b), stats_columns(result, interval)], axis=1)


def best_pairs(table: pd.DataFrame, by: Sequence[str] = ("level", "metric", "model_a", "model_b")) -> pd.DataFrame:
    """One row per model pair (and level, metric): the best layer pair with its statistics.

    For a model compared with itself the best pair of two different layers is reported.
    """
    by = [c for c in by if c in table.columns]
    # a model against itself: the diagonal (a layer with itself) is trivially 1, not a finding
    table = table[(table.model_a != table.model_b) | (table.layer_a != table.layer_b)]
    index = table.groupby(by, sort=False)["score"].idxmax()
    keep = [c for c in (*by, "layer_a", "layer_b", "score", "ci_low", "ci_high", "chance_level", "null_mean",
                        "calibrated", "p_value", "p_value_best", "n_samples") if c in table.columns]
    return table.loc[index.to_numpy(), keep].reset_index(drop=True)


# ----------------------------------------------------------------------------- outputs
def output_dir(study: str, out: str | os.PathLike | None) -> Path:
    path = Path(out) if out else RESULTS_ROOT / study
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(out: Path, cache: str | os.PathLike | None) -> Path:
    path = Path(cache) if cache else out / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    from repalign.table import write_table

    return write_table(table.round(6), path)


def save_figure(fig, out: Path, stem: str) -> list[Path]:
    from repalign.plot import save_figure as save

    return save(fig, out / stem, formats=("png",))


def extract_models(records, models: Sequence[str], cache: Path, seed: int, **options) -> dict[str, float]:
    """Extract every layer of each model (``NAME@random`` for a control) into ``cache``; resumable.

    Returns model -> seconds spent extracting in this run (0 when everything was already cached).
    """
    from repalign.extract import extract

    seconds = {}
    for model in models:
        runs = extract(records, [model], cache, layers=["all"], adapter_factory=control_factory(seed), quiet=True, **options)
        seconds[model] = round(runs[0].seconds, 1)
        print(f"  {model}: {runs[0].stored} extracted, {runs[0].skipped_existing} cached, {runs[0].seconds:.1f} s", flush=True)
    return seconds


def pair_heatmaps(table: pd.DataFrame, pairs: Sequence[tuple[str, str]], metric: str, out: Path, stem: str) -> Path:
    """Side-by-side layer heatmaps (non-significant cells hatched), one panel per model pair."""
    from matplotlib.figure import Figure
    from repalign.plot import layer_heatmap, style

    if len(pairs) == 1:  # one pair: the full two-column figure, room for many stage labels
        return save_figure(layer_heatmap(table, metric, *pairs[0], width="double"), out, stem)[0]
    with style():
        fig = Figure(figsize=(3.6 * len(pairs), 3.4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(pairs)))
        for ax, (a, b) in zip(axes, pairs):
            layer_heatmap(table, metric, a, b, ax=ax)
    return save_figure(fig, out, stem)[0]


def depth_figure(table: pd.DataFrame, model: str, references: Sequence[str], metric: str, out: Path, stem: str,
                 ylabel: str | None = None) -> Path:
    """Score of each layer of ``model`` (best over the reference's layers) against each reference,
    trained (solid) and random-init control (dashed), with the subsampling interval of that cell."""
    from matplotlib.figure import Figure
    from repalign.plot import CB_COLORS, style

    with style():
        fig = Figure(figsize=(4.2, 2.8), layout="constrained")
        ax = fig.subplots()
        for colour, ref in zip(CB_COLORS, references):
            for a, b, dashes, label in ((model, ref, "-", f"vs {ref}"),
                                        (model + RANDOM_SUFFIX, ref + RANDOM_SUFFIX, "--", f"vs {ref} (random init)")):
                rows = table[(table.metric == metric) & (table.model_a == a) & (table.model_b == b)]
                if rows.empty:
                    continue
                best = rows.loc[rows.groupby("layer_a", sort=False)["score"].idxmax()]
                x = np.arange(len(best))
                ax.plot(x, best.score, dashes, color=colour, marker="o", markersize=3, label=label)
                ax.fill_between(x, best.ci_low, best.ci_high, color=colour, alpha=0.15, linewidth=0)
                ax.set_xticks(x, list(best.layer_a), rotation=60, ha="right", fontsize=6)
        chance = table.loc[table.metric == metric, "chance_level"].dropna()
        if len(chance):
            ax.axhline(float(chance.iloc[0]), color="grey", linewidth=0.6, linestyle=":", label="chance")
        ax.set_ylabel(ylabel or f"{metric} (best reference layer)")
        ax.set_xlabel(f"{model} layer")
        ax.legend(fontsize=5, frameon=False)
    return save_figure(fig, out, stem)[0]


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
    parser.add_argument("--out", help=f"output folder (default: analyses/results/{study})")
    parser.add_argument("--cache", help="feature cache folder (default: OUT/.cache, git-ignored)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init controls and of the statistics")
    return parser


def run_main(main: Callable[[Sequence[str] | None], int], argv=None) -> int:
    """Run a study's main; a RepalignError becomes a one-line message and exit status 1."""
    import sys

    try:
        return main(argv)
    except RepalignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
