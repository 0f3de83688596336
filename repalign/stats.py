"""Statistics on top of the alignment metrics: permutation nulls, adjusted p-values, calibrated
scores, intervals and reliability warnings.

Raw alignment scores are not comparable across metrics, k, N or layer widths, and the score of
the best layer pair is inflated by the maximum over La×Lb pairs. This module gives, for every
layer pair and for the best pair:

* :func:`permutation_test`: a permutation null (model B's samples shuffled, the same shuffle for all
  of its layers), p-values (Phipson & Smyth, 2010), p-values adjusted for the search over all layer
  pairs (single-step max-T, Westfall & Young, 1993), the null mean and a calibrated score.
* :func:`subsample_interval`: confidence intervals from subsamples drawn without replacement
  (a random delete-d jackknife, Shao & Wu 1989; Politis, Romano & Wolf 1999), for the metrics whose
  coverage is checked; NaN with a note for the others.
* :func:`seed_contrast`: a trained model's score against the scores of random-initialised
  controls of several seeds (the difference, a one-sided rank test valid for any control
  distribution, and the confidence bounds that invert it); :func:`holm` adjusts a family of such
  p-values.
* :func:`check_reliability` and :func:`participation_ratio`: warnings where a score cannot be trusted.
* :func:`stats_columns`: the statistics as tidy columns for the comparison table.

Everything runs on the layer-state engine (:mod:`repalign.metrics.engine`): per-layer states
(neighbour lists, centred features, Gram matrices, ...) are computed once, and a permutation
relabels the states of side B, which equals a fresh computation on the permuted rows (the states'
definitions, ties included, do not depend on sample order). Formulas: docs/statistics.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Mapping, Sequence, cast

import numba
import numpy as np
import pandas as pd

from repalign.errors import RepalignError
from repalign.metrics import as_features
from repalign.metrics.engine import LayerState, layer_state, resolve_metrics, score_matrix
from repalign.metrics.kernel import KernelState
from repalign.metrics.layers import layer_list, layer_names, validate_layers
from repalign.metrics.prepare import prepare
from repalign.metrics.registry import Metric, get_metric
from repalign.progress import progress

__all__ = [
    "PermutationResult",
    "block_permutation",
    "SeedContrast",
    "check_reliability",
    "holm",
    "min_draws",
    "participation_ratio",
    "permutation_test",
    "permutation_tests",
    "permute_state",
    "seed_contrast",
    "stats_columns",
    "subsample_interval",
    "subsample_intervals",
]

# Null scores within this relative distance of the observed score count as ">= observed": scores
# equal in exact arithmetic can differ in the last bits after a permutation changes the summation
# order, and counting such near-ties makes the p-value conservative rather than anti-conservative.
_TIE_TOLERANCE = 1e-12
# Below this many samples one pair score takes microseconds and starting numba's parallel threads
# for it costs far more (25x slower measured for N=40 on 2 busy cores), so the resampling loops,
# which call the score thousands of times, run numba kernels on one thread.
_SERIAL_BELOW = 10_000
# Memory the permutation test may spend on N×N Gram matrices for linear CKA (see _gram_states).
_GRAM_BUDGET_BYTES = 2 * 1024**3
INTERVAL_NOTE = "no valid interval for {metric}: {why}"


@contextlib.contextmanager
def _numba_threads_for(n_samples: int):
    """One numba thread for small N inside the resampling loops; the caller's setting is restored."""
    if n_samples >= _SERIAL_BELOW:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# ----------------------------------------------------------------------------- argument checks
def check_count(value, name: str, low: int) -> int:
    """``value`` as an int when it is a whole number >= ``low``, else a one-line error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise RepalignError(f"{name}={value!r} is invalid; pass a whole number >= {low}")
    return int(value)


def check_fraction(value, name: str, example: str) -> float:
    """``value`` as a float when it lies strictly between 0 and 1, else a one-line error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise RepalignError(f"{name}={value!r} is invalid; pass a number strictly between 0 and 1, e.g. {example}")
    return float(value)


#: how far alpha · (n + 1) may fall below 1 and still count as reaching it: 1 − ci is not exact in
#: binary (1 − 0.9 = 0.09999999999999998), and ci = 0.9 with 9 draws must still reach it
_LEVEL_TOLERANCE = 1e-9


def min_draws(alpha: float) -> int:
    """The fewest control seeds or permutations n for which a rank test can reject at level ``alpha``.

    The rank test's p-value, (1 + #{draws >= observed}) / (n + 1), rejects when p <= alpha (that is
    the level guarantee, P(p <= alpha) <= alpha), so the count is the smallest n with
    1/(n + 1) <= alpha: 19 for alpha = 0.05, 9 for alpha = 0.1 (``ci`` = 0.9 with alpha = 1 − ci:
    below that many seeds :func:`seed_contrast` has no bound)."""
    alpha = check_fraction(alpha, "alpha", "0.05")
    n = max(math.ceil(1.0 / alpha) - 1, 1)
    while alpha * (n + 1) < 1.0 - _LEVEL_TOLERANCE:  # the float division can round either way
        n += 1
    while n > 1 and alpha * n >= 1.0 - _LEVEL_TOLERANCE:
        n -= 1
    return n


def seeded_rng(seed) -> tuple[np.random.Generator, int]:
    """Generator and the integer seed that reproduces it (seed=None draws one and records it)."""
    if seed is None:
        seed = int(cast(int, np.random.SeedSequence().entropy))  # a fresh SeedSequence draws an int
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise RepalignError(f"seed={seed!r} is invalid; pass a non-negative integer (or None to draw one, recorded in the result)")
    return np.random.default_rng(int(seed)), int(seed)


@dataclass
class _Layers:
    """Validated inputs of the array-level functions: matrices, names, N."""

    mats_a: list[np.ndarray]
    mats_b: list[np.ndarray]
    names_a: list[str]
    names_b: list[str]
    n: int


def _inputs(layers_a, layers_b, names_a=None, names_b=None) -> _Layers:
    items_a, given_a = layer_list(layers_a, "a")
    items_b, given_b = layer_list(layers_b, "b")
    names_a = layer_names(names_a, len(items_a), "a", given_a)
    names_b = layer_names(names_b, len(items_b), "b", given_b)
    n = validate_layers(items_a, items_b, names_a, names_b)
    return _Layers([as_features(x) for x in items_a], [as_features(x) for x in items_b], names_a, names_b, n)


def _states(mats: list[np.ndarray], names: list[str], resolved, normalize, clip_quantile, rows=None) -> list[LayerState]:
    """One LayerState per layer (an array listed twice gets one), from the rows ``rows`` (all when None).

    Preprocessing runs on the selected rows, as it would on a data set holding only them
    (centring and the clipping threshold depend on the rows present)."""
    seen: dict[int, LayerState] = {}
    out = []
    for X, name in zip(mats, names):
        if id(X) not in seen:
            seen[id(X)] = layer_state(X if rows is None else X[rows], resolved, normalize=normalize,
                                      clip_quantile=clip_quantile, name=name)
        out.append(seen[id(X)])
    return out


# ----------------------------------------------------------------------------- relabelling states
def permute_state(state, perm):
    """Metric state of ``X[perm]`` from the state of ``X`` without redoing the per-layer work.

    Sample i of the result is old sample ``perm[i]``; every state type of the engine knows how to
    relabel itself (``state.permuted``): neighbour lists are renamed and re-sorted (their tie
    levels and weights are defined by the data alone), rows of centred features and rows and
    columns of Gram or distance matrices are permuted, the SVCCA basis' rows are permuted. The
    result equals a fresh computation on the permuted rows.
    """
    if not hasattr(state, "permuted"):
        raise RepalignError(f"no permutation rule for metric state {type(state).__name__}; "
                            "permutation tests support the metrics of repalign.metrics.metric_names()")
    return state.permuted(perm)


def _linear_gram_state(state: KernelState) -> KernelState:
    """The same linear-kernel state with its N×N Gram added, in the form kernel_state stores it.

    The features are centred, so K = XcXcᵀ is already doubly centred (biased HSIC uses it as is);
    unbiased HSIC takes K with a zeroed diagonal, its row sums and total."""
    assert state.features is not None  # called for linear-kernel states only
    features = state.features.astype(np.float64)
    gram = features @ features.T
    if not state.unbiased:
        return dataclasses.replace(state, gram=gram)
    np.fill_diagonal(gram, 0.0)
    row_sums = gram.sum(axis=1)
    return dataclasses.replace(state, gram=gram, gram_row_sums=row_sums, gram_total=float(row_sums.sum()))


def _gram_states(states_a: list[LayerState], states_b: list[LayerState], n: int) -> tuple[list, list]:
    """States for the permutation loop: linear CKA switched to Gram matrices where that is cheaper.

    A permuted pair costs N·Da·Db multiply-adds from centred features (‖XcᵀPYc‖², a BLAS product)
    but N² from Grams (⟨Kx, P Ky Pᵀ⟩, plus one N² reordering per B layer and permutation). The
    Gram operations are memory-bound: measured at N = 2000, one Gram element costs about 16
    multiply-adds of the product and one reordered element about 48, hence the weights below.
    Grams must also fit in _GRAM_BUDGET_BYTES. Scores are the same in exact arithmetic."""
    def linear(layer):
        return [s for s in layer.states if isinstance(s, KernelState) and s.features is not None and s.gram is None]

    distinct = {id(s): s for layer in (*states_a, *states_b) for s in linear(layer)}
    if not distinct:
        return states_a, states_b
    width = {id(layer): max((s.features.shape[1] for s in linear(layer)), default=0) for layer in (*states_a, *states_b)}
    feature_cost = sum(n * width[id(a)] * width[id(b)] for a in states_a for b in states_b)
    gram_cost = n * n * (16 * len(states_a) * len(states_b) + 48 * len(states_b))
    if gram_cost >= feature_cost or 8 * n * n * len(distinct) > _GRAM_BUDGET_BYTES:
        return states_a, states_b
    converted = {key: _linear_gram_state(s) for key, s in distinct.items()}

    def swap(layer):
        return dataclasses.replace(layer, states=[converted.get(id(s), s) for s in layer.states])

    return [swap(x) for x in states_a], [swap(x) for x in states_b]


# ----------------------------------------------------------------------------- permutation test
@dataclass
class PermutationResult:
    """Permutation test of every (layer_a, layer_b) pair and of the best pair, for one metric.

    scores, p_value, p_value_adjusted, null_mean, null_quantile, calibrated: float64 (La, Lb).
    null_quantile is the calibration threshold τ (the ⌈(1 − alpha)(T + 1)⌉-th smallest of the
    observed and the T null scores) and calibrated = clip((score − τ) / (top − τ), 0, 1), the null
    calibration of Gröger, Wen & Brbić (ICML 2026), equal to their ``calibrated-similarity``
    package on the same permutations. p_value_adjusted is the single-step max-T p-value over all
    compared pairs (NaN for pairs left out by ``exclude``). null: (permutations, La, Lb) scores of every permutation; null_max:
    (permutations,) maximum over the compared pairs of each permutation. best: (i, j) of the highest
    observed score among the compared pairs (first in row-major order), with score_best,
    p_value_best (= p_value_adjusted at best), null_mean_best and calibrated_best (τ from score_best
    and null_max, the maximum over pairs of each permutation, one permutation for all layers).
    exclude: bool (La, Lb), pairs left out of the layer search (e.g. the diagonal of a model
    compared with itself). chance_level: the metric's closed-form expectation for independent
    data, or None.
    """

    scores: np.ndarray
    p_value: np.ndarray
    p_value_adjusted: np.ndarray
    null_mean: np.ndarray
    null_quantile: np.ndarray
    calibrated: np.ndarray
    null: np.ndarray
    null_max: np.ndarray
    best: tuple[int, int]
    score_best: float
    p_value_best: float
    null_mean_best: float
    calibrated_best: float
    chance_level: float | None
    metric: str
    params: dict[str, Any]
    permutations: int
    seed: int
    alpha: float
    n_samples: int
    names_a: list[str]
    names_b: list[str]
    exclude: np.ndarray | None = None

    def summary(self) -> str:
        """One line per layer pair (score, chance level, null mean, p, adjusted p, calibrated) and one for the best pair."""
        chance = f"{self.chance_level:.4f}" if self.chance_level is not None else "n/a"
        lines = [
            f"{self.metric} [{', '.join(f'{k}={v}' for k, v in sorted(self.params.items()))}], N={self.n_samples}, "
            f"{self.permutations} permutations (seed {self.seed}), chance level {chance}, alpha {self.alpha}"
        ]
        for i, a in enumerate(self.names_a):
            for j, b in enumerate(self.names_b):
                lines.append(
                    f"  {a} ~ {b}: score {self.scores[i, j]:.4f}  null mean {self.null_mean[i, j]:.4f}  "
                    f"p {self.p_value[i, j]:.4g}  adjusted p {self.p_value_adjusted[i, j]:.4g}  calibrated {self.calibrated[i, j]:.4f}"
                )
        i, j = self.best
        compared = self.scores.size if self.exclude is None else int((~self.exclude).sum())  # None: no pair left out
        lines.append(
            f"  best {self.names_a[i]} ~ {self.names_b[j]}: score {self.score_best:.4f}  null max mean {self.null_mean_best:.4f}  "
            f"p (max over {compared} pairs) {self.p_value_best:.4g}  calibrated {self.calibrated_best:.4f}"
        )
        return "\n".join(lines)


def _p_values(null: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(1 + #{null >= observed}) / (1 + permutations) along axis 0 (Phipson & Smyth, 2010)."""
    threshold = observed - _TIE_TOLERANCE * np.maximum(1.0, np.abs(observed))
    return (1.0 + np.sum(null >= threshold, axis=0)) / (1.0 + null.shape[0])


def _threshold(observed, null: np.ndarray, alpha: float) -> np.ndarray:
    """Null-calibration threshold τ of Gröger, Wen & Brbić (ICML 2026), elementwise over axis 0.

    τ is the ⌈(1 − α)(K + 1)⌉-th smallest of the K + 1 scores {observed, null_1..null_K} (the
    observed score counted as one of the permutations, as in the add-one p-value). The index is
    computed as in their ``calibrated-similarity`` package (0.1.1), same floating-point expression."""
    null = np.asarray(null, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    permutations = null.shape[0]
    index = min(max(math.ceil((1.0 - alpha) * (permutations + 1)) - 1, 0), permutations)
    combined = np.concatenate([observed[None], null], axis=0)
    return np.partition(combined, index, axis=0)[index]


def _calibrate(observed, threshold, top: float):
    """Calibrated score clip((s − τ) / (top − τ), 0, 1) of Gröger, Wen & Brbić (ICML 2026).

    ``threshold``: τ from :func:`_threshold`; ``top``: the metric's upper bound (their ``smax``;
    1 for every built-in metric, their default). 0 where τ already reaches the maximum."""
    observed = np.asarray(observed, dtype=np.float64)
    quantile = np.asarray(threshold, dtype=np.float64)
    room = top - quantile
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(room > 0, (observed - quantile) / np.where(room > 0, room, 1.0), 0.0)
    return np.clip(value, 0.0, 1.0)


def _check_exclude(exclude, shape) -> np.ndarray:
    if exclude is None:
        return np.zeros(shape, dtype=bool)
    mask = np.asarray(exclude)
    if mask.shape != shape or mask.dtype != bool:
        raise RepalignError(f"exclude must be a boolean array of shape {shape} (True = pair left out of the layer search)")
    if mask.all():
        raise RepalignError("exclude leaves no layer pair to test; exclude fewer pairs")
    return mask


def _result(observed, null, metric: Metric, params: dict, exclude, alpha, n, seed, names_a, names_b) -> PermutationResult:
    permutations = null.shape[0]
    family = ~exclude
    null_max = null[:, family].max(axis=1)
    adjusted = np.where(family, (1.0 + np.sum(null_max[:, None, None] >= observed[None] - _TIE_TOLERANCE
                                              * np.maximum(1.0, np.abs(observed))[None], axis=0)) / (1.0 + permutations), np.nan)
    searched = np.where(family, observed, -np.inf)
    best = divmod(int(np.argmax(searched)), observed.shape[1])
    score_best = float(observed[best])
    top = metric.bounds[1]
    null_quantile = _threshold(observed, null, alpha)  # τ per pair (Gröger, Wen & Brbić, 2026)
    settable = {k: v for k, v in params.items() if k in metric.defaults}
    return PermutationResult(
        scores=observed,
        p_value=_p_values(null, observed),
        p_value_adjusted=adjusted,
        null_mean=null.mean(axis=0),
        null_quantile=null_quantile,
        calibrated=_calibrate(observed, null_quantile, top),
        null=null,
        null_max=null_max,
        best=(int(best[0]), int(best[1])),
        score_best=score_best,
        p_value_best=float(adjusted[best]),
        null_mean_best=float(null_max.mean()),
        calibrated_best=float(_calibrate(score_best, _threshold(score_best, null_max, alpha), top)),
        chance_level=metric.chance_level(n, **settable),
        metric=metric.name,
        params=params,
        permutations=permutations,
        seed=seed,
        alpha=alpha,
        n_samples=n,
        names_a=list(names_a),
        names_b=list(names_b),
        exclude=exclude,
    )


def permutation_tests(states_a: Sequence[LayerState], states_b: Sequence[LayerState], resolved, permutations: int = 200,
                      seed: int | None = 0, alpha: float = 0.05, exclude=None, observed: Sequence[np.ndarray] | None = None,
                      draw=None) -> list[PermutationResult]:
    """:func:`permutation_test` on layer states from the engine, for several metrics at once.

    ``resolved`` is the (Metric, params) list the states were built with (see
    :func:`repalign.metrics.engine.resolve_metrics`); every permutation relabels each distinct state
    of side B once and scores every metric from it. ``observed``: the scores, if already computed.
    ``draw``: a callable ``draw(rng) -> perm`` giving each permutation of the rows (default: a
    uniform permutation, ``rng.permutation(N)``); :func:`block_permutation` gives one that moves
    whole samples of token rows. Returns one PermutationResult per metric (params without preprocessing).
    """
    permutations = check_count(permutations, "permutations", 1)
    alpha = check_fraction(alpha, "alpha", "0.05")
    rng, seed = seeded_rng(seed)
    n = states_a[0].n_samples
    shape = (len(states_a), len(states_b))
    exclude = _check_exclude(exclude, shape)
    with _numba_threads_for(n):
        if observed is None:
            observed = [score_matrix(metric, p, m, states_a, states_b) for m, (metric, p) in enumerate(resolved)]
        fast_a, fast_b = _gram_states(list(states_a), list(states_b), n)
        null = np.empty((len(resolved), permutations, *shape))
        for t in progress(range(permutations), desc="permutations", unit="perm"):
            perm = rng.permutation(n) if draw is None else draw(rng)
            relabelled: dict[int, LayerState] = {}
            for state in fast_b:
                if id(state) not in relabelled:
                    relabelled[id(state)] = state.permuted(perm)
            permuted_b = [relabelled[id(state)] for state in fast_b]
            for m, (metric, p) in enumerate(resolved):
                null[m, t] = score_matrix(metric, p, m, fast_a, permuted_b)
    names_a = [s.name for s in states_a]
    names_b = [s.name for s in states_b]
    return [_result(np.asarray(observed[m], dtype=np.float64), null[m], metric, dict(p), exclude, alpha, n, seed, names_a, names_b)
            for m, (metric, p) in enumerate(resolved)]


def _check_offsets(offsets, n_rows: int | None = None) -> np.ndarray:
    offsets = np.asarray(offsets)
    if (offsets.ndim != 1 or offsets.size < 2 or not np.issubdtype(offsets.dtype, np.integer) or offsets[0] != 0
            or np.any(np.diff(offsets) < 1)):
        raise RepalignError("offsets must be increasing integers starting at 0 (sample i owns rows offsets[i]:offsets[i+1], "
                            "at least one row each)")
    if n_rows is not None and offsets[-1] != n_rows:
        raise RepalignError(f"offsets cover {int(offsets[-1])} rows but the layers have {n_rows}; pass the offsets of these rows")
    return offsets.astype(np.int64)


@dataclass(frozen=True)
class BlockPermutation:
    """Permutations of token rows that move whole samples (see :func:`block_permutation`).

    Call it with a numpy Generator to draw one: ``perm = draw(rng)``, an (T,) row permutation.
    ``movable``: samples that share their row count with another sample; ``count``: the number of
    distinct block permutations, Π_g n_g! over the groups of equal row counts (inf when huge).
    """

    offsets: np.ndarray
    strata: tuple  # one array of sample indices per row count

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        source = np.arange(len(self.offsets) - 1)
        for members in self.strata:
            if len(members) > 1:
                source[members] = members[rng.permutation(len(members))]
        starts, lengths = self.offsets[source], np.diff(self.offsets)
        # row r of sample s takes row r of sample source[s] (same row count)
        return np.repeat(starts - self.offsets[:-1], lengths) + np.arange(self.offsets[-1])

    @property
    def movable(self) -> int:
        return int(sum(len(m) for m in self.strata if len(m) > 1))

    @property
    def count(self) -> float:
        log = sum(math.lgamma(len(m) + 1) for m in self.strata)
        return math.exp(log) if log < 700 else math.inf


def block_permutation(offsets) -> BlockPermutation:
    """Row permutations that move every sample's rows together, onto a sample with the same row count.

    ``offsets`` (n+1,): sample i owns rows offsets[i]:offsets[i+1] (the ragged token layout of the
    cache). Each draw permutes the samples within groups of equal row count uniformly and maps the
    sample permutation σ to rows: row offsets[s] + r of the result is row offsets[σ(s)] + r. Under
    the null that model B's samples are unrelated to model A's (B's samples exchangeable among
    samples of the same size), every such relabelling leaves the joint distribution unchanged, so
    the test stays exact whatever the dependence between the tokens of a sample; a uniform
    permutation of token rows does not (it breaks the within-sample dependence of B and makes the
    null too narrow). A sample alone with its row count never moves (docs/statistics.md, "Token
    rows: block permutations").
    """
    offsets = _check_offsets(offsets)
    lengths = np.diff(offsets)
    order = np.argsort(lengths, kind="stable")
    cuts = np.flatnonzero(np.diff(lengths[order])) + 1
    return BlockPermutation(offsets, tuple(np.split(order, cuts)))


def permutation_test(
    layers_a: Sequence,
    layers_b: Sequence,
    metric: str = "mknn",
    permutations: int = 200,
    seed: int | None = 0,
    alpha: float = 0.05,
    normalize="l2",
    *,
    clip_quantile=None,
    names_a=None,
    names_b=None,
    exclude=None,
    **metric_params,
) -> PermutationResult:
    """Permutation test of the alignment of every layer pair, and of the best pair.

    Null hypothesis: the samples of model B are unrelated to those of model A. Each permutation π
    (drawn by ``numpy.random.default_rng(seed)``) shuffles the rows of every layer of B the same
    way, B_l -> B_l[π], and all La×Lb scores are recomputed from relabelled per-layer states
    (:func:`permute_state`), which equal states computed afresh on the shuffled rows. With
    T = ``permutations`` and the family F of compared pairs (all pairs not in ``exclude``):

        p_ij          = (1 + #{t : null_t,ij ≥ score_ij}) / (1 + T)           (Phipson & Smyth, 2010)
        M_t           = max_{(i,j) ∈ F} null_t,ij
        p_adjusted_ij = (1 + #{t : M_t ≥ score_ij}) / (1 + T)                 (single-step max-T,
                                                                               Westfall & Young, 1993)
        null_mean     = mean_t null_t,ij
        q_ij          = (1 − alpha) quantile of null_·,ij (numpy's linear interpolation)
        calibrated_ij = clip((score_ij − q_ij) / (max − q_ij), 0, 1)      (max: the metric's upper bound)

    The best pair (i*, j*) = argmax over F of the score; p_best = p_adjusted at (i*, j*), which
    accounts for the search over the layer pairs. ``exclude``: bool (La, Lb), pairs left out of the
    search and of M_t (e.g. the trivial diagonal when a model is compared with itself); their
    p_adjusted is NaN. Null scores within a relative 1e-12 of the observed score count as ≥
    (conservative).

    Parameters are those of :func:`repalign.metrics.align_layers`: ``layers_a``/``layers_b``
    sequences (or name -> array mappings) of (N, D_l) matrices whose row i is the same sample,
    ``normalize`` and ``clip_quantile`` preprocessing, ``metric_params`` such as ``k``.
    The smallest attainable p-value is 1/(1 + T).
    """
    permutations = check_count(permutations, "permutations", 1)
    check_fraction(alpha, "alpha", "0.05")
    seeded_rng(seed)
    inputs = _inputs(layers_a, layers_b, names_a, names_b)
    _check_exclude(exclude, (len(inputs.mats_a), len(inputs.mats_b)))
    resolved = resolve_metrics([metric], inputs.n, metric_params)
    with _numba_threads_for(inputs.n):
        states_a = _states(inputs.mats_a, inputs.names_a, resolved, normalize, clip_quantile)
        states_b = _states(inputs.mats_b, inputs.names_b, resolved, normalize, clip_quantile)
    result = permutation_tests(states_a, states_b, resolved, permutations, seed, alpha, exclude)[0]
    result.params = {**result.params, "normalize": normalize, "clip_quantile": clip_quantile}
    return result


# ----------------------------------------------------------------------------- subsampling intervals
def subsample_intervals(mats_a: Sequence[np.ndarray], mats_b: Sequence[np.ndarray], resolved, *, ci: float = 0.95,
                        n_subsamples: int = 100, fraction: float = 0.8, seed: int | None = 0, normalize="l2",
                        clip_quantile=None, full: Sequence[np.ndarray] | None = None, offsets=None) -> list[tuple]:
    """:func:`subsample_interval` for several metrics at once, on validated matrices.

    Returns one (low, high, note) per metric: for a metric without a valid interval
    (``Metric.interval`` False) both arrays are NaN and ``note`` says why; otherwise note is "".
    ``full``: the full-data scores, if already computed. ``offsets`` (n+1,): the rows are token rows
    of n samples (sample i owns rows offsets[i]:offsets[i+1]); subsamples then draw whole samples,
    m = floor(fraction·n) of the n samples with all their rows, and N, m in the formulas count
    samples (the independent units), not rows.
    """
    ci = check_fraction(ci, "ci", "0.95")
    n_subsamples = check_count(n_subsamples, "n_subsamples", 2)
    fraction = check_fraction(fraction, "fraction", "0.8")
    rng, _ = seeded_rng(seed)
    rows_total = mats_a[0].shape[0]
    if offsets is not None:
        offsets = _check_offsets(offsets, rows_total)
        lengths = np.diff(offsets)
    n = rows_total if offsets is None else len(offsets) - 1
    shape = (len(mats_a), len(mats_b))
    m = int(math.floor(fraction * n))
    if m >= n or m < 2:
        raise RepalignError(f"fraction={fraction} keeps m={m} of N={n} samples; a subsample needs 2 <= m < N, "
                            f"so choose a fraction between {2 / n:.3g} and {(n - 1) / n:.3g}")
    smallest = m if offsets is None else int(np.sort(lengths)[:m].sum())  # fewest rows a subsample can have
    valid = [i for i, (metric, p) in enumerate(resolved) if metric.has_interval(p)]
    out = cast("list[tuple]", [None] * len(resolved))  # placeholders: every metric's slot is filled below
    for i, (metric, p) in enumerate(resolved):
        if not metric.has_interval(p):
            why = ("the score's expectation depends on N at fixed k, so subsamples estimate another quantity"
                   if metric.is_knn else "its bias depends on N and the layer widths, so subsampling intervals do not "
                   "cover; use unbiased_cka or bias_corrected_distance_correlation")
            out[i] = (np.full(shape, np.nan), np.full(shape, np.nan), INTERVAL_NOTE.format(metric=metric.name, why=why))
    if not valid:
        return out
    sub_resolved = [resolved[i] for i in valid]
    for metric, p in sub_resolved:
        try:
            metric.resolve(smallest, **{k: v for k, v in p.items() if k in metric.defaults})
        except RepalignError as exc:
            raise RepalignError(f"subsamples of m={m} samples (fraction={fraction} of N={n}) are too small for {metric.name}: {exc}") from None
    names_a = [str(i) for i in range(len(mats_a))]
    names_b = [str(i) for i in range(len(mats_b))]
    with _numba_threads_for(n):
        if full is None:
            sa = _states(list(mats_a), names_a, sub_resolved, normalize, clip_quantile)
            sb = _states(list(mats_b), names_b, sub_resolved, normalize, clip_quantile)
            full_scores = [score_matrix(metric, p, j, sa, sb) for j, (metric, p) in enumerate(sub_resolved)]
        else:
            full_scores = [np.asarray(full[i], dtype=np.float64) for i in valid]
        sub = np.empty((len(valid), n_subsamples, *shape))
        for b in progress(range(n_subsamples), desc="subsamples (intervals)", unit="subsample"):
            rows = np.sort(rng.choice(n, size=m, replace=False))
            if offsets is not None:  # whole samples: all rows of each drawn sample
                rows = np.repeat(offsets[rows], lengths[rows]) + (np.arange(lengths[rows].sum())
                                                                 - np.repeat(np.cumsum(lengths[rows]) - lengths[rows], lengths[rows]))
            sa = _states(list(mats_a), names_a, sub_resolved, normalize, clip_quantile, rows)
            sb = _states(list(mats_b), names_b, sub_resolved, normalize, clip_quantile, rows)
            for j, (metric, p) in enumerate(sub_resolved):
                sub[j, b] = score_matrix(metric, p, j, sa, sb)
    # delete-d jackknife standard error: the subsample scores' SD times √(m/(N − m))
    half = NormalDist().inv_cdf(0.5 + ci / 2.0) * math.sqrt(m / (n - m))
    for j, i in enumerate(valid):
        low_bound, high_bound = resolved[i][0].bounds
        spread = half * sub[j].std(axis=0, ddof=1)
        low, high = full_scores[j] - spread, full_scores[j] + spread
        out[i] = (np.clip(low, low_bound, high_bound), np.clip(high, low_bound, high_bound), "")
    return out


def subsample_interval(
    layers_a: Sequence,
    layers_b: Sequence,
    metric: str = "cka",
    ci: float = 0.95,
    n_subsamples: int = 100,
    fraction: float = 0.8,
    seed: int | None = 0,
    normalize="l2",
    *,
    clip_quantile=None,
    **metric_params,
) -> tuple[np.ndarray, np.ndarray]:
    """Confidence interval of every layer-pair score by subsampling WITHOUT replacement.

    Each of B = ``n_subsamples`` subsamples keeps m = floor(fraction·N) of the N samples (the same
    rows for every layer of both models), drawn without replacement; every layer is preprocessed
    and its state rebuilt on those rows, giving scores s_b. With s = the full-data score and
    sd = the standard deviation of the s_b:

        se   = √(m / (N − m)) · sd              (delete-d jackknife standard error, d = N − m)
        low  = s − z · se,  high = s + z · se,  z = Φ⁻¹((1 + ci)/2), clipped to the metric's range

    The normal form, not the quantiles of the s_b: the delete-d jackknife gets the variance right
    but not the skewness, and the reflected quantiles covered 0.927 ± 0.008 at a population CKA
    of 0.8 (nominal 0.95, N = 100; docs/statistics.md).

    This is a normal interval with the delete-d jackknife variance estimated from random subsets
    (Shao & Wu, 1989; subsampling of Politis & Romano, 1994, at the finite-population rate
    √(m/(1 − m/N))), valid for statistics that converge at the √N rate to a population value that
    does not depend on N: ``cka``, ``unbiased_cka``, ``cka_rbf``, ``svcca``, ``svcca_platonic``,
    ``distance_correlation`` and ``bias_corrected_distance_correlation`` (coverage checked by
    simulation in the tests). kNN metrics and CKNNA at a fixed k have no such target (their
    expectation changes with N: mknn's chance level is k/(N − 1)), so they get NaN, with the
    reason in :func:`subsample_intervals`' note. Never bootstrap kNN or kernel metrics WITH
    replacement: duplicated samples become each other's nearest neighbours and inflate the scores.

    Returns (low, high), float64 (La, Lb).
    """
    inputs = _inputs(layers_a, layers_b)
    resolved = resolve_metrics([metric], inputs.n, metric_params)
    low, high, _ = subsample_intervals(inputs.mats_a, inputs.mats_b, resolved, ci=ci, n_subsamples=n_subsamples,
                                       fraction=fraction, seed=seed, normalize=normalize, clip_quantile=clip_quantile)[0]
    return low, high


# ----------------------------------------------------------------------------- trained vs controls
@dataclass(frozen=True)
class SeedContrast:
    """A trained score against controls of ``n_seeds`` seeds (see :func:`seed_contrast`).

    ``difference`` = trained − control_mean (descriptive); ``p_value``: one-sided rank test;
    ``ci_low`` / ``ci_high``: one-sided lower / upper confidence bounds at level ``ci`` for the
    shift of the trained score over a control draw (±inf when ``n_seeds`` is too small for ``ci``);
    ``min_p_value`` = 1 / (n_seeds + 1), the smallest p-value these seeds can give.
    """

    trained: float
    control_mean: float
    control_sd: float
    n_seeds: int
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    min_p_value: float
    ci: float


def seed_contrast(trained: float, controls, ci: float = 0.95) -> SeedContrast:
    """Does a trained model's score exceed those of random-initialised controls of several seeds?

    A distribution-free rank (Monte Carlo) test: with x the trained score and c_1..c_n the
    controls' scores (one per seed, n >= 2), under H0 "x is one more draw from the controls'
    distribution" (x, c_1..c_n exchangeable) the rank of x among the n + 1 scores is uniform, so

        p = (1 + #{i : c_i >= x}) / (n + 1)

    is exact, P(p <= alpha) <= alpha for every alpha and every control distribution (normal,
    skewed, heavy-tailed), ties counted against the trained score (controls within a relative
    1e-12 of x count as equal to it). The smallest attainable p is ``min_p_value`` = 1/(n + 1).

    Bounds: the test inverted. For a shift δ (x = Y + δ with Y exchangeable with the controls), the
    test of x − δ rejects at level alpha = 1 − ci when 1 + #{c_i >= x − δ} <= alpha·(n + 1). With
    r = floor(alpha·(n + 1)) − 1 and c_(1) <= ... <= c_(n) the sorted controls:

        ci_low  = x − c_(n−r)    (the (r+1)-th largest control; δ >= ci_low with confidence ci)
        ci_high = x − c_(r+1)    (the (r+1)-th smallest; δ <= ci_high with confidence ci)

    so ci_low > 0 exactly when p <= 1 − ci (counts compared, so ci = 0.9 with 9 seeds is not lost
    to the binary rounding of 1 − ci). Each bound alone has confidence ci; [ci_low, ci_high] has
    2·ci − 1. When n + 1 < 1/(1 − ci), no shift is rejected: ci_low = −inf and ci_high = +inf.

    ``difference`` = x − mean(c) is the descriptive effect (``control_sd``: the controls' sample
    SD). Reference: the Monte Carlo test of Barnard (1963) and Besag & Clifford (1989); the
    bound is the usual inversion of a rank test (Lehmann & Romano, 2005, "Testing Statistical
    Hypotheses", §3.5). Scores must be of the same metric, layers and samples.
    """
    c = np.asarray(controls, dtype=np.float64).ravel()
    x = float(trained)
    if c.size < 2:
        raise RepalignError(f"seed_contrast needs the scores of at least 2 control seeds, got {c.size}; "
                            "extract controls of more seeds")
    if not (np.isfinite(c).all() and math.isfinite(x)):
        raise RepalignError("seed_contrast: a trained or control score is NaN or infinite; score those pairs first")
    ci = check_fraction(ci, "ci", "0.95")
    n = c.size
    tolerance = _TIE_TOLERANCE * max(1.0, abs(x))  # equal scores can differ in the last bits
    tied = np.sort(np.where(np.abs(c - x) <= tolerance, x, c))
    above = int(np.count_nonzero(tied >= x))
    # most controls at or above the (shifted) trained score that still reject at level 1 − ci
    r = math.floor((1.0 - ci) * (n + 1) + _LEVEL_TOLERANCE) - 1  # >= 0 exactly when n >= min_draws(1 - ci)
    if r < 0:
        low, high = -math.inf, math.inf
    else:
        low, high = x - float(tied[n - 1 - r]), x - float(tied[r])
    mean = float(c.mean())
    return SeedContrast(trained=x, control_mean=mean, control_sd=float(c.std(ddof=1)), n_seeds=n, difference=x - mean,
                        ci_low=low, ci_high=high, p_value=(1.0 + above) / (n + 1.0), min_p_value=1.0 / (n + 1.0), ci=ci)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment (Holm, 1979) of a family of p-values, in their input order.

    Sorted ascending p_(1) ≤ … ≤ p_(m): adjusted p_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)).
    Controls the family-wise error rate under any dependence. NaN entries are left out of the
    family and stay NaN.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return out
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise RepalignError("holm: p-values must lie in [0, 1]")
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(stepped)
    return out


# ----------------------------------------------------------------------------- reliability
def participation_ratio(X) -> float:
    """Participation ratio of the covariance eigenvalues λ of X (N, D), rows are samples.

        PR = (Σ λ)² / Σ λ²,   1 ≤ PR ≤ rank ≤ min(N − 1, D)

    PR is the effective number of dimensions (Gao et al., 2017, "A theory of multineuronal
    dimensionality"): 1 when one direction carries all the variance, D for isotropic data.
    Computed without an eigendecomposition: Σλ ∝ ‖Xc‖_F², Σλ² ∝ ‖XcᵀXc‖_F² (Xc: centred X),
    using the smaller of the D×D and N×N Gram matrices.
    """
    X = as_features(X, "X").astype(np.float64)
    if X.shape[0] < 2:
        raise RepalignError(f"X has {X.shape[0]} sample(s); the participation ratio needs at least 2")
    Xc = X - X.mean(axis=0)
    gram = Xc.T @ Xc if Xc.shape[1] <= Xc.shape[0] else Xc @ Xc.T
    total = float(np.trace(gram))
    if not total > 0.0:
        raise RepalignError("X has zero variance (all rows identical); its participation ratio is undefined, check the input")
    return float(total * total / np.einsum("ij,ij->", gram, gram))


def check_reliability(
    n_samples: int,
    metric: str,
    params: Mapping[str, Any] | None = None,
    layers=None,
    *,
    normalize="l2",
    clip_quantile=None,
    permutations: int | None = None,
    alpha: float = 0.05,
) -> list[str]:
    """Warnings (one line each, empty list when none) about scores that cannot be trusted.

    * kNN metrics with N < 10·k: neighbourhoods cover a large share of the data and the chance
      level of mknn, k/(N − 1), is high, so scores say little about local structure.
    * Linear-kernel CKA (``cka``, ``unbiased_cka``) on a layer whose participation ratio
      (:func:`participation_ratio`, after ``normalize``/``clip_quantile``) is below 2 or below 1% of
      its width: linear CKA is then dominated by one or a few high-variance directions (e.g. the
      outlier dimensions of transformers) and says nothing about the rest of the representation.
    * ``permutations`` given: 1/(1 + permutations) > alpha means no p-value can reach alpha.

    ``params`` are the metric's parameters (defaults apply to the missing ones); ``layers`` is a
    sequence, or name -> array mapping, of (N, D) matrices (optional).
    """
    metric_obj = get_metric(metric)
    n = check_count(n_samples, "n_samples", 1)
    params = dict(params or {})
    resolved = metric_obj.resolve(n, **{k: v for k, v in params.items() if k not in metric_obj.fixed})
    warnings: list[str] = []

    if metric_obj.is_knn:
        k = resolved["k"]
        if n < 10 * k:
            chance = metric_obj.chance_level(n, k=k)
            chance_txt = f", chance level {chance:.3f}" if chance is not None else ""
            warnings.append(
                f"{metric_obj.name}: N={n} is small for k={k} (neighbour lists cover {k / (n - 1):.0%} of the samples{chance_txt}); "
                f"use N >= 10k = {10 * k} samples or a smaller k"
            )

    if layers is not None and metric_obj.name in ("cka", "unbiased_cka") and resolved.get("kernel") == "linear":
        names = [str(name) for name in layers] if isinstance(layers, Mapping) else None
        mats = list(layers.values()) if isinstance(layers, Mapping) else list(layers)
        for index, X in enumerate(mats):
            name = names[index] if names else str(index)
            Z = prepare(as_features(X, f"layer {name!r}"), normalize, clip_quantile)
            if Z.shape[0] != n:
                raise RepalignError(f"layer {name!r} has {Z.shape[0]} samples but n_samples={n}; pass the layers that were compared")
            pr = participation_ratio(Z)
            width = Z.shape[1]
            if pr < 2.0 or pr < 0.01 * width:
                warnings.append(
                    f"layer {name!r}: participation ratio {pr:.2f} of width {width}; linear CKA on it is dominated by "
                    f"{'one direction and is meaningless' if pr < 2.0 else 'a few directions'}; "
                    "try clip_quantile=0.95, an RBF kernel or a kNN metric"
                )

    if permutations is not None:
        permutations = check_count(permutations, "permutations", 1)
        alpha = check_fraction(alpha, "alpha", "0.05")
        if permutations < min_draws(alpha):
            warnings.append(
                f"permutations={permutations}: the smallest possible p-value is {1.0 / (1.0 + permutations):.3g} > alpha={alpha}; "
                f"use at least {min_draws(alpha)} permutations"
            )
    return warnings


# ----------------------------------------------------------------------------- table columns
STATS_COLUMNS = ("chance_level", "p_value", "p_value_adjusted", "null_mean", "calibrated", "ci_low", "ci_high",
                 "p_value_best", "note")


def stats_columns(result: PermutationResult | None = None, interval: tuple | None = None, shape: tuple | None = None
                  ) -> pd.DataFrame:
    """Statistics as tidy columns, one row per layer pair in LayerAlignment.to_frame order (layer_a-major).

    Columns: chance_level, p_value, p_value_adjusted (max-T over the compared pairs), null_mean,
    calibrated, ci_low, ci_high, p_value_best (on the best compared pair's row only, the row that
    ``LayerAlignment.to_frame``'s ``best`` column marks; NaN elsewhere) and note (why an interval is
    missing, or ""). ``interval`` is the (low, high) pair of :func:`subsample_interval` or the
    (low, high, note) triple of :func:`subsample_intervals`. Columns without a source are NaN;
    ``shape`` (La, Lb) is needed when neither is given. Concatenate column-wise with
    ``LayerAlignment.to_frame()`` of the same metric and layers.
    """
    note = ""
    if interval is not None:
        try:
            low, high, *rest = interval
            note = rest[0] if rest else ""
            low, high = (np.asarray(x, dtype=np.float64) for x in (low, high))
        except (TypeError, ValueError):
            raise RepalignError("interval must be the (low, high) pair returned by subsample_interval") from None
        if low.shape != high.shape or low.ndim != 2 or (result is not None and low.shape != result.scores.shape):
            expected = result.scores.shape if result is not None else "the same shape"
            raise RepalignError(f"interval arrays have shapes {low.shape} and {high.shape} but the result has {expected}; compute both on the same layers")
        shape = low.shape
    if result is not None:
        shape = result.scores.shape
    if shape is None:
        raise RepalignError("stats_columns needs a permutation_test result, a subsample_interval (low, high) pair, or shape=(La, Lb)")
    rows = shape[0] * shape[1]
    nan = np.full(rows, np.nan)
    best = np.zeros(rows, dtype=bool)
    columns: dict[str, Any] = {name: nan for name in STATS_COLUMNS}
    if result is not None:
        best[result.best[0] * shape[1] + result.best[1]] = True
        columns.update(
            chance_level=np.full(rows, np.nan if result.chance_level is None else result.chance_level),
            p_value=result.p_value.ravel(),
            p_value_adjusted=result.p_value_adjusted.ravel(),
            null_mean=result.null_mean.ravel(),
            calibrated=result.calibrated.ravel(),
            p_value_best=np.where(best, result.p_value_best, np.nan),
        )
    if interval is not None:
        columns.update(ci_low=low.ravel(), ci_high=high.ravel())
    frame = pd.DataFrame({name: np.asarray(columns[name], dtype=np.float64) for name in STATS_COLUMNS if name != "note"})
    frame["note"] = note
    return frame
