"""The settings of a comparison as two option objects, each validated once, where it is built.

:class:`EngineOptions`: how each layer's state is built (preprocessing, relative representations,
neighbour backend, in memory or in row blocks, in this process or on a Dask cluster).
:class:`StatsOptions`: the statistics added to the scores (permutations, intervals).
:class:`TokenOptions`: what one row is when token layers are compared.
Errors name the Python parameters; the CLI rewrites them to its flags (``repalign.cli``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from repalign import stats
from repalign.errors import RepalignError
from repalign.metrics.backends import get_backend
from repalign.metrics.engine import check_backend
from repalign.metrics.prepare import check_prepare_options

#: grouping columns per input kind: what one token row is labelled with
GROUP_COLUMNS = {"sequence": ("chain", "residue"), "structure": ("element",)}
TOKEN_SUBSAMPLES = ("samples", "uniform")
#: the layer pairs a comparison's best pair and its layer-search adjustment range over (docs/statistics.md)
LAYER_FAMILIES = ("hidden", "all")


@dataclass(frozen=True)
class EngineOptions:
    """How each layer's state is built (:func:`repalign.metrics.engine.layer_state`).

    normalize: ``"l2"``, ``"center"`` or None; knn: ``exact``, ``faiss-hnsw``, ``faiss-ivf``
    (approximate lists add a ``knn_recall`` column) with ``knn_options``; block_rows: read the layers
    in row blocks (out of core; None: in memory). anchors: a count (drawn with the stats seed) or
    sample ids: compare relative representations (:mod:`repalign.metrics.anchors`). cluster: a Dask
    spec (``local:4``, ...) or Client that builds the states on workers; search_block: rows per
    task when each layer's exact neighbour search is split over the workers. engine: where the
    per-layer work runs, ``"numba"`` (CPU) or ``"torch"`` on ``device`` (``"cpu"``, ``"cuda"``,
    ``"cuda:1"``; :mod:`repalign.metrics.backends`), or a backend object; the kNN lists are the same.
    """

    normalize: str | None = "l2"
    knn: str = "exact"
    knn_options: Mapping[str, Any] | None = field(default=None, compare=False)
    block_rows: int | None = None
    anchors: int | Sequence[str] | None = None
    cluster: Any = None
    search_block: int | None = None
    engine: Any = "numba"
    device: str | None = None

    def __post_init__(self) -> None:
        check_prepare_options(self.normalize, None)
        get_backend(self.engine, self.device)  # a one-line error for an unknown engine or a missing device
        if self.engine != "numba" and self.cluster is not None:
            raise RepalignError(f"engine={self.engine!r} runs in this process; drop cluster (or keep engine='numba' with it)")
        object.__setattr__(self, "knn_options", check_backend(self.knn, self.block_rows, self.knn_options))
        if self.search_block is not None:
            if self.cluster is None:
                raise RepalignError("search_block spreads each layer's neighbour search over a cluster's workers; "
                                    "add cluster (or drop search_block)")
            object.__setattr__(self, "search_block", stats.check_count(self.search_block, "search_block", 1))
        if self.anchors is not None:
            if self.block_rows is not None or self.cluster is not None:
                raise RepalignError("anchors needs the layers in memory; drop block_rows and cluster")
            if isinstance(self.anchors, str):
                raise RepalignError(f"anchors must be a number or a list of sample ids, got the string {self.anchors!r}")

    @property
    def in_memory(self) -> bool:
        """Layers read whole into this process (not in blocks, not on workers)."""
        return self.block_rows is None and self.cluster is None

    @property
    def state_options(self) -> dict:
        """The keyword arguments of :func:`repalign.metrics.engine.layer_state`."""
        options: dict[str, Any] = dict(normalize=self.normalize, knn=self.knn, knn_options=self.knn_options, block_rows=self.block_rows)
        if self.engine != "numba":  # the cluster's workers (engine numba only) take no backend
            options["backend"] = get_backend(self.engine, self.device)
        return options


@dataclass(frozen=True)
class StatsOptions:
    """Statistics of a comparison (:mod:`repalign.stats`): ``permutations`` > 0 adds permutation
    p-values (adjusted for the layer search, max-T) at level ``alpha``; ``ci`` adds subsampling
    intervals (``n_subsamples`` subsets of ``fraction`` of the samples); ``seed`` draws them.
    ``layer_family``: the layer pairs the best pair (and the max-T adjustment) ranges over:
    ``hidden`` (default) leaves out each network's input layer, which random-initialised networks
    share with trained ones through the inputs alone, and a layer with itself; ``all`` leaves out
    only a layer with itself."""

    permutations: int = 0
    ci: float | None = None
    n_subsamples: int = 100
    fraction: float = 0.8
    seed: int = 0
    alpha: float = 0.05
    layer_family: str = "hidden"

    def __post_init__(self) -> None:
        if self.layer_family not in LAYER_FAMILIES:
            raise RepalignError(f"layer_family={self.layer_family!r} is not one of {', '.join(LAYER_FAMILIES)}")
        if self.ci is not None:
            stats.check_fraction(self.ci, "ci", "0.95")
        if self.permutations:
            stats.check_count(self.permutations, "permutations", 1)


@dataclass(frozen=True)
class TokenOptions:
    """What one row is when token layers are compared (:func:`repalign.compare.compare_tokens`):
    every token; at most ``max_tokens`` rows drawn by whole samples (``subsample="samples"``) or
    uniformly (``"uniform"``); or, with ``group_by`` (needs ``inputs``), the mean of each group's
    tokens within each sample. ``inputs``: input files or records, checked against the stored rows."""

    max_tokens: int | None = None
    subsample: str = "samples"
    group_by: str | None = None
    inputs: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_tokens is not None:
            stats.check_count(self.max_tokens, "max_tokens", 1)
        if self.subsample not in TOKEN_SUBSAMPLES:
            raise RepalignError(f"subsample={self.subsample!r} is not one of {', '.join(TOKEN_SUBSAMPLES)}")
        if self.group_by is not None and self.max_tokens is not None:
            raise RepalignError("group_by pools tokens into few rows per sample; drop max_tokens with it")


def check_combination(engine: EngineOptions, stats_options: StatsOptions) -> None:
    """The settings that exclude each other across the two objects."""
    if stats_options.ci and engine.block_rows is not None:
        raise RepalignError("ci rebuilds every layer on subsamples and needs the layers in memory; drop block_rows for it")
    if (stats_options.permutations or stats_options.ci) and engine.cluster is not None:
        raise RepalignError("permutations and ci run in this process; drop cluster for them")


def from_keywords(params: dict, **given: Any) -> dict[str, Any]:
    """The option objects of a call, with the older loose keywords (``normalize=``, ``permutations=``,
    ``cache_b=``, ...) popped from ``params`` and folded into them; ``given``: the objects passed
    (None: not passed). Giving an object and one of its keywords is an error."""
    out: dict[str, Any] = {}
    classes = {"engine": EngineOptions, "stats": StatsOptions, "tokens": TokenOptions}
    for name, passed in given.items():
        cls = classes[name]
        loose = {f.name: params.pop(f.name) for f in fields(cls) if f.name in params}
        if loose and passed is not None:
            raise RepalignError(f"pass {', '.join(loose)} inside {name}={cls.__name__}(...), not beside it")
        out[name] = passed if passed is not None else cls(**loose)
    return out
