"""Statistics on top of the alignment metrics: permutation nulls, calibrated scores, intervals.

Raw alignment scores are not comparable across metrics, k, N or layer widths, and the score of
the best layer pair is inflated by the maximum over La×Lb pairs. This module gives, for every
layer pair and for the best pair:

* :func:`permutation_test`: a permutation null (model B's samples shuffled, the same shuffle for all
  of its layers), p-values (Phipson & Smyth, 2010), the null mean and a calibrated score; the best
  pair is tested against the null distribution of the maximum over all pairs.
* :func:`subsample_interval`: confidence intervals from subsamples drawn without replacement
  (a random delete-d jackknife, Shao & Wu 1989; Politis, Romano & Wolf 1999).
* :func:`check_reliability` and :func:`participation_ratio`: warnings where a score cannot be trusted.
* :func:`stats_columns`: the statistics as tidy columns for the comparison table.

Per-layer metric states (neighbour lists, centred features, Gram matrices, ...) are computed once;
a permutation relabels the states of side B instead of recomputing them. Formulas, defaults and
caveats: docs/statistics.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from repalign.errors import RepalignError
from repalign.metrics._validate import as_features
from repalign.metrics.cca import SvccaState
from repalign.metrics.distance import DistanceState
from repalign.metrics.kernel import CknnaState, KernelState
from repalign.metrics.knn import KnnState
from repalign.metrics.prepare import prepare
from repalign.metrics.registry import Metric, get_metric

__all__ = [
    "PermutationResult",
    "check_reliability",
    "participation_ratio",
    "permutation_test",
    "permute_state",
    "stats_columns",
    "subsample_interval",
]

# Null scores within this relative distance of the observed score count as ">= observed": scores
# equal in exact arithmetic can differ in the last bits after a permutation changes the summation
# order, and counting such near-ties makes the p-value conservative rather than anti-conservative.
_TIE_TOLERANCE = 1e-12
# Every metric in the registry has a maximum of 1 (identical representations).
_SCORE_MAX = 1.0
# Below this many samples one pair score takes microseconds and starting numba's parallel threads
# for it costs far more (25x slower measured for N=40 on 2 busy cores), so the resampling loops,
# which call the score thousands of times, run numba kernels on one thread.
_SERIAL_BELOW = 10_000
# Memory the permutation test may spend on N×N Gram matrices for linear CKA (see _gram_states).
_GRAM_BUDGET_BYTES = 2 * 1024**3


@contextlib.contextmanager
def _numba_threads_for(n_samples: int):
    """One numba thread for small N inside the resampling loops; the caller's setting is restored."""
    if n_samples >= _SERIAL_BELOW:
        yield
        return
    try:
        import numba
    except ImportError:  # the metrics then run their numpy twins: nothing to restrict
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# ----------------------------------------------------------------------------- argument checks
def _check_count(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise RepalignError(f"{name}={value!r} is invalid; pass a whole number >= {low}")
    return int(value)


def _check_fraction(value, name: str, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise RepalignError(f"{name}={value!r} is invalid; pass a number strictly between 0 and 1, e.g. {example}")
    return float(value)


def _rng(seed) -> tuple[np.random.Generator, int]:
    """Generator and the integer seed that reproduces it (seed=None draws one and records it)."""
    if seed is None:
        seed = int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise RepalignError(f"seed={seed!r} is invalid; pass a non-negative integer (or None to draw one, recorded in the result)")
    return np.random.default_rng(int(seed)), int(seed)


def _layers(layers, side: str) -> list[np.ndarray]:
    if isinstance(layers, np.ndarray) and layers.ndim == 2:
        raise RepalignError(f"layers_{side} is a single 2-D matrix; pass a sequence of per-layer matrices, e.g. [X]")
    if isinstance(layers, Mapping):
        layers = list(layers.values())
    try:
        items = list(layers)
    except TypeError:
        raise RepalignError(f"layers_{side} is not a sequence; pass a list of per-layer (N, D) matrices") from None
    if not items:
        raise RepalignError(f"layers_{side} is empty; pass at least one per-layer (N, D) matrix")
    return [as_features(item, f"layer {i} of layers_{side}") for i, item in enumerate(items)]


def _names(names, layers, count: int, side: str) -> list[str]:
    if names is None:
        return [str(n) for n in layers] if isinstance(layers, Mapping) else [str(i) for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise RepalignError(f"names_{side} has {len(names)} entries but layers_{side} has {count} layers; pass one name per layer")
    return names


def _n_samples(mats_a: list[np.ndarray], mats_b: list[np.ndarray]) -> int:
    n = mats_a[0].shape[0]
    for side, mats in (("a", mats_a), ("b", mats_b)):
        for i, X in enumerate(mats):
            if X.shape[0] != n:
                raise RepalignError(
                    f"layer {i} of layers_{side} has {X.shape[0]} samples but layer 0 of layers_a has {n}; all layers must hold the same samples in the same order"
                )
    return n


@dataclass
class _Setup:
    metric: Metric
    params: dict  # resolved metric parameters (no preprocessing)
    mats_a: list[np.ndarray]
    mats_b: list[np.ndarray]
    names_a: list[str]
    names_b: list[str]
    n: int
    normalize: Any
    clip_quantile: Any

    @property
    def settable(self) -> dict:
        """The resolved parameters a caller may set (fixed ones left out), for resolve/chance_level."""
        return {k: v for k, v in self.params.items() if k in self.metric.defaults}

    @property
    def recorded_params(self) -> dict:
        return {**self.params, "normalize": self.normalize, "clip_quantile": self.clip_quantile}

    def states(self, mats: list[np.ndarray], rows=None) -> list:
        """One metric state per layer, from the layers' rows ``rows`` (all rows when None).

        Preprocessing runs on the selected rows, as it would on a data set holding only them
        (centring and the clipping threshold depend on the rows present)."""
        out, seen = [], {}
        for X in mats:
            if id(X) not in seen:  # an array listed twice gets one state
                Z = X if rows is None else X[rows]
                seen[id(X)] = self.metric.state(prepare(Z, self.normalize, self.clip_quantile), self.params)
            out.append(seen[id(X)])
        return out

    def scores(self, states_a: list, states_b: list) -> np.ndarray:
        out = np.empty((len(states_a), len(states_b)))
        for i, sa in enumerate(states_a):
            for j, sb in enumerate(states_b):
                out[i, j] = self.metric.score(sa, sb, self.params)
        return out


def _setup(layers_a, layers_b, metric, names_a, names_b, normalize, clip_quantile, params) -> _Setup:
    metric_obj = get_metric(metric)
    mats_a = _layers(layers_a, "a")
    mats_b = _layers(layers_b, "b")
    n = _n_samples(mats_a, mats_b)
    resolved = metric_obj.resolve(n, **params)  # defaults, then params, then the metric's fixed ones
    return _Setup(
        metric_obj, resolved, mats_a, mats_b,
        _names(names_a, layers_a, len(mats_a), "a"), _names(names_b, layers_b, len(mats_b), "b"),
        n, normalize, clip_quantile,
    )


# ----------------------------------------------------------------------------- relabelling states
def _inverse(perm: np.ndarray) -> np.ndarray:
    inverse = np.empty(perm.size, dtype=np.int64)
    inverse[perm] = np.arange(perm.size)
    return inverse


def _check_perm(perm, n: int) -> np.ndarray:
    perm = np.asarray(perm)
    if perm.shape != (n,) or not np.issubdtype(perm.dtype, np.integer) or not np.array_equal(np.sort(perm), np.arange(n)):
        raise RepalignError(f"perm must be a permutation of 0..{n - 1}; pass e.g. numpy.random.default_rng(seed).permutation({n})")
    return perm.astype(np.int64, copy=False)


def _state_samples(state) -> int:
    if isinstance(state, KnnState):
        return state.n_samples
    if isinstance(state, CknnaState):
        return state.knn.n_samples
    if isinstance(state, KernelState):
        return state.n
    if isinstance(state, SvccaState):
        return state.basis.shape[0]
    if isinstance(state, DistanceState):
        return state.centred.shape[0]
    raise RepalignError(f"no permutation rule for metric state {type(state).__name__}; permutation tests support the metrics in repalign.metrics.METRICS")


def _permuted(state, perm: np.ndarray, inverse: np.ndarray):
    """State of X[perm] from the state of X (perm already validated, inverse = perm⁻¹)."""
    if isinstance(state, KnnState):
        # Row i of X[perm] is old sample perm[i]; its neighbours are old perm[i]'s neighbours,
        # renamed old label -> new label, i.e. inverse[...].
        return KnnState(inverse[state.indices[perm]], state.similarities[perm])
    if isinstance(state, CknnaState):
        # the masked self-HSIC is a sum over all pairs, unchanged by relabelling
        return CknnaState(_permuted(state.knn, perm, inverse), state.self_sim)
    if isinstance(state, KernelState):
        # Permuting samples permutes rows of the centred features and rows+columns of the Gram;
        # column means, totals and self-HSIC are unchanged, so only the cross term is recomputed.
        return dataclasses.replace(
            state,
            features=None if state.features is None else state.features[perm],
            row_sq=None if state.row_sq is None else state.row_sq[perm],
            gram=None if state.gram is None else state.gram[np.ix_(perm, perm)],
            gram_row_sums=None if state.gram_row_sums is None else state.gram_row_sums[perm],
        )
    if isinstance(state, SvccaState):
        # standardisation and the SVD commute with a row permutation: U -> U[perm]
        return SvccaState(state.basis[perm])
    if isinstance(state, DistanceState):
        return DistanceState(state.centred[np.ix_(perm, perm)], state.dvar)
    _state_samples(state)  # raises for an unknown type
    raise AssertionError("unreachable")


def _linear_gram_state(state: KernelState) -> KernelState:
    """The same linear-kernel state with its N×N Gram added, in the form kernel_state stores it.

    The features are centred, so K = XcXcᵀ is already doubly centred (biased HSIC uses it as is);
    unbiased HSIC takes K with a zeroed diagonal, its row sums and total."""
    features = state.features.astype(np.float64)
    gram = features @ features.T
    if not state.unbiased:
        return dataclasses.replace(state, gram=gram)
    np.fill_diagonal(gram, 0.0)
    row_sums = gram.sum(axis=1)
    return dataclasses.replace(state, gram=gram, gram_row_sums=row_sums, gram_total=float(row_sums.sum()))


def _gram_states(states_a: list, states_b: list, n: int) -> tuple[list, list]:
    """States for the permutation loop: linear CKA switched to Gram matrices where that is cheaper.

    A permuted pair costs N·Da·Db multiply-adds from centred features (‖XcᵀPYc‖², a BLAS product)
    but N² from Grams (⟨Kx, P Ky Pᵀ⟩, plus one N² reordering per B layer and permutation). The
    Gram operations are memory-bound: measured at N = 2000, one Gram element costs about 16
    multiply-adds of the product and one reordered element about 48, hence the weights below.
    Grams must also fit in _GRAM_BUDGET_BYTES. Scores are the same in exact arithmetic."""
    distinct = {id(s): s for s in (*states_a, *states_b)}.values()
    linear = [s for s in distinct if isinstance(s, KernelState) and s.features is not None and s.gram is None]
    if not linear:
        return states_a, states_b
    feature_cost = sum(n * a.features.shape[1] * b.features.shape[1] for a in states_a for b in states_b)
    gram_cost = n * n * (16 * len(states_a) * len(states_b) + 48 * len(states_b))
    if gram_cost >= feature_cost or 8 * n * n * len(linear) > _GRAM_BUDGET_BYTES:
        return states_a, states_b
    converted = {id(s): _linear_gram_state(s) for s in linear}
    return [converted.get(id(s), s) for s in states_a], [converted.get(id(s), s) for s in states_b]


def permute_state(state, perm):
    """Metric state of ``X[perm]`` computed from the state of ``X`` without redoing the per-layer work.

    Sample i of the result is old sample ``perm[i]``. Neighbour lists (kNN metrics, CKNNA): the list
    of new sample i is the list of old sample perm[i] with every label j renamed to perm⁻¹(j),
    similarities carried along. Kernel states (CKA): rows of the centred features and rows and
    columns of the (centred) Gram are permuted; totals and self-HSIC are invariant. SVCCA: rows
    of the orthonormal basis. Distance correlation: rows and columns of the centred distances.

    Exact, except that among neighbours with exactly equal similarity the lists keep the old
    labels' order, while a fresh search would order them by the new (lower) index; scores of
    order-free metrics (mknn, cycle_knn, CKNNA) are unaffected, lcs/edit-distance kNN can differ
    only at such exact ties.
    """
    n = _state_samples(state)
    perm = _check_perm(perm, n)
    return _permuted(state, perm, _inverse(perm))


# ----------------------------------------------------------------------------- permutation test
@dataclass
class PermutationResult:
    """Permutation test of every (layer_a, layer_b) pair and of the best pair.

    scores, p_value, null_mean, null_quantile, calibrated: float64 (La, Lb). null: (permutations,
    La, Lb) scores of every permutation; null_max: (permutations,) maximum over all pairs of each
    permutation. best: (i, j) of the highest observed score (first in row-major order), with
    score_best, p_value_best (against null_max), null_mean_best and calibrated_best.
    chance_level: the metric's closed-form expectation for independent data, or None.
    """

    scores: np.ndarray
    p_value: np.ndarray
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

    def summary(self) -> str:
        """One line per layer pair (score, chance level, null mean, p, calibrated) and one for the best pair."""
        chance = f"{self.chance_level:.4f}" if self.chance_level is not None else "n/a"
        lines = [
            f"{self.metric} [{', '.join(f'{k}={v}' for k, v in sorted(self.params.items()))}], N={self.n_samples}, "
            f"{self.permutations} permutations (seed {self.seed}), chance level {chance}, alpha {self.alpha}"
        ]
        for i, a in enumerate(self.names_a):
            for j, b in enumerate(self.names_b):
                lines.append(
                    f"  {a} ~ {b}: score {self.scores[i, j]:.4f}  null mean {self.null_mean[i, j]:.4f}  "
                    f"p {self.p_value[i, j]:.4g}  calibrated {self.calibrated[i, j]:.4f}"
                )
        i, j = self.best
        lines.append(
            f"  best {self.names_a[i]} ~ {self.names_b[j]}: score {self.score_best:.4f}  null max mean {self.null_mean_best:.4f}  "
            f"p (max over {self.scores.size} pairs) {self.p_value_best:.4g}  calibrated {self.calibrated_best:.4f}"
        )
        return "\n".join(lines)


def _p_values(null: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(1 + #{null >= observed}) / (1 + permutations) along axis 0 (Phipson & Smyth, 2010)."""
    threshold = observed - _TIE_TOLERANCE * np.maximum(1.0, np.abs(observed))
    return (1.0 + np.sum(null >= threshold, axis=0)) / (1.0 + null.shape[0])


def _calibrate(observed, quantile):
    """(observed − q) / (max − q), clipped to [0, 1]; 0 where the null quantile already reaches the maximum."""
    observed = np.asarray(observed, dtype=np.float64)
    quantile = np.asarray(quantile, dtype=np.float64)
    room = _SCORE_MAX - quantile
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(room > 0, (observed - quantile) / np.where(room > 0, room, 1.0), 0.0)
    return np.clip(value, 0.0, 1.0)


def _fill_null(null: np.ndarray, setup: _Setup, states_a: list, states_b: list, rng: np.random.Generator) -> None:
    """null[t] = all pair scores with B's samples permuted by the t-th permutation of ``rng``."""
    for t in range(null.shape[0]):
        perm = rng.permutation(setup.n)
        inverse = _inverse(perm)
        # one relabelled state per distinct B state (a layer repeated in the list is permuted once)
        relabelled: dict[int, Any] = {}
        for state in states_b:
            if id(state) not in relabelled:
                relabelled[id(state)] = _permuted(state, perm, inverse)
        null[t] = setup.scores(states_a, [relabelled[id(state)] for state in states_b])


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
    **metric_params,
) -> PermutationResult:
    """Permutation test of the alignment of every layer pair, and of the best pair.

    Null hypothesis: the samples of model B are unrelated to those of model A. Each permutation π
    (drawn by ``numpy.random.default_rng(seed)``) shuffles the rows of every layer of B the same
    way, B_l -> B_l[π], and all La×Lb scores are recomputed from relabelled per-layer states
    (:func:`permute_state`); nothing is searched or factorised again. With T = ``permutations``:

        p_ij      = (1 + #{t : null_t,ij ≥ score_ij}) / (1 + T)            (Phipson & Smyth, 2010)
        null_mean = mean_t null_t,ij
        q_ij      = (1 − alpha) quantile of null_·,ij (numpy's linear interpolation)
        calibrated_ij = clip((score_ij − q_ij) / (1 − q_ij), 0, 1)        (1 is every metric's maximum)

    The best pair (i*, j*) = argmax score is tested against the maximum over all pairs of each
    permutation, M_t = max_ij null_t,ij: p_best = (1 + #{t : M_t ≥ score_i*j*}) / (1 + T), which
    accounts for the search over La×Lb layer pairs (a max-T correction, Westfall & Young, 1993).
    Null scores within a relative 1e-12 of the observed score count as ≥ (conservative).

    Parameters are those of :func:`repalign.metrics.align_layers`: ``layers_a``/``layers_b``
    sequences (or name -> array mappings) of (N, D_l) matrices whose row i is the same sample,
    ``normalize`` and ``clip_quantile`` preprocessing, ``metric_params`` such as ``k``.
    The smallest attainable p-value is 1/(1 + T).
    """
    permutations = _check_count(permutations, "permutations", 1)
    alpha = _check_fraction(alpha, "alpha", "0.05")
    rng, seed = _rng(seed)
    setup = _setup(layers_a, layers_b, metric, names_a, names_b, normalize, clip_quantile, metric_params)

    with _numba_threads_for(setup.n):
        states_a = setup.states(setup.mats_a)
        states_b = setup.states(setup.mats_b)
        observed = setup.scores(states_a, states_b)
        null = np.empty((permutations, *observed.shape))
        _fill_null(null, setup, *_gram_states(states_a, states_b, setup.n), rng)

    null_max = null.reshape(permutations, -1).max(axis=1)
    null_quantile = np.quantile(null, 1.0 - alpha, axis=0)
    flat = int(np.argmax(observed))
    best = divmod(flat, observed.shape[1])
    score_best = float(observed[best])
    chance = setup.metric.chance_level(setup.n, **setup.settable)
    return PermutationResult(
        scores=observed,
        p_value=_p_values(null, observed),
        null_mean=null.mean(axis=0),
        null_quantile=null_quantile,
        calibrated=_calibrate(observed, null_quantile),
        null=null,
        null_max=null_max,
        best=(int(best[0]), int(best[1])),
        score_best=score_best,
        p_value_best=float(_p_values(null_max, np.float64(score_best))),
        null_mean_best=float(null_max.mean()),
        calibrated_best=float(_calibrate(score_best, np.quantile(null_max, 1.0 - alpha))),
        chance_level=chance,
        metric=setup.metric.name,
        params=setup.recorded_params,
        permutations=permutations,
        seed=seed,
        alpha=alpha,
        n_samples=setup.n,
        names_a=setup.names_a,
        names_b=setup.names_b,
    )


# ----------------------------------------------------------------------------- subsampling intervals
def subsample_interval(
    layers_a: Sequence,
    layers_b: Sequence,
    metric: str = "mknn",
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
    and its state rebuilt on those rows (same metric parameters, e.g. the same k), giving
    scores s_b. With s = the full-data score, s̄ = mean_b s_b and d_b = s_b − s̄:

        c    = √(m / (N − m))                   (delete-d jackknife scale, d = N − m)
        low  = s − c · quantile(d, (1 + ci)/2)
        high = s − c · quantile(d, (1 − ci)/2),   high clipped to 1

    This is the subsampling interval of Politis & Romano (1994) with the finite-population rate
    √(m/(1 − m/N)) that makes it valid when m/N does not tend to 0 (it is then a random-subset
    delete-d jackknife, Shao & Wu, 1989). The deviations are centred on the subsample mean s̄
    rather than on s because a subsample is a smaller data set: mknn's chance level k/(m − 1)
    exceeds k/(N − 1) and neighbourhoods widen, so the subsample scores are shifted, and that shift
    must not move the interval; the interval describes the sampling variability of the score at
    size N. Never bootstrap kNN or kernel metrics WITH replacement: duplicated samples become each
    other's nearest neighbours (and perfectly matching kernel entries) and inflate the scores.

    Returns (low, high), float64 (La, Lb). Needs N − m ≥ 1 and m large enough for the metric
    (e.g. k ≤ m − 1).
    """
    ci = _check_fraction(ci, "ci", "0.95")
    n_subsamples = _check_count(n_subsamples, "n_subsamples", 2)
    fraction = _check_fraction(fraction, "fraction", "0.8")
    rng, _ = _rng(seed)
    setup = _setup(layers_a, layers_b, metric, None, None, normalize, clip_quantile, metric_params)
    n = setup.n
    m = int(math.floor(fraction * n))
    if m >= n or m < 2:
        raise RepalignError(f"fraction={fraction} keeps m={m} of N={n} samples; a subsample needs 2 <= m < N, so choose a fraction between {2 / n:.3g} and {(n - 1) / n:.3g}")
    try:
        setup.metric.resolve(m, **setup.settable)
    except RepalignError as exc:
        raise RepalignError(f"subsamples of m={m} samples (fraction={fraction} of N={n}) are too small for {setup.metric.name}: {exc}") from None

    with _numba_threads_for(n):
        full = setup.scores(setup.states(setup.mats_a), setup.states(setup.mats_b))
        sub = np.empty((n_subsamples, *full.shape))
        for b in range(n_subsamples):
            rows = np.sort(rng.choice(n, size=m, replace=False))
            sub[b] = setup.scores(setup.states(setup.mats_a, rows), setup.states(setup.mats_b, rows))
    deviations = sub - sub.mean(axis=0)
    scale = math.sqrt(m / (n - m))
    tail = (1.0 - ci) / 2.0
    low = full - scale * np.quantile(deviations, 1.0 - tail, axis=0)
    high = np.minimum(full - scale * np.quantile(deviations, tail, axis=0), _SCORE_MAX)
    return low, high


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
    n = _check_count(n_samples, "n_samples", 1)
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
        permutations = _check_count(permutations, "permutations", 1)
        alpha = _check_fraction(alpha, "alpha", "0.05")
        if 1.0 / (1.0 + permutations) > alpha:
            warnings.append(
                f"permutations={permutations}: the smallest possible p-value is {1.0 / (1.0 + permutations):.3g} > alpha={alpha}; "
                f"use at least {math.ceil(1.0 / alpha) - 1} permutations"
            )
    return warnings


# ----------------------------------------------------------------------------- table columns
STATS_COLUMNS = ("chance_level", "p_value", "null_mean", "calibrated", "ci_low", "ci_high", "p_value_best")


def stats_columns(result: PermutationResult | None = None, interval: tuple | None = None) -> pd.DataFrame:
    """Statistics as tidy columns, one row per layer pair in LayerAlignment.to_frame order (layer_a-major).

    Columns: chance_level, p_value, null_mean, calibrated, ci_low, ci_high, p_value_best (the
    same value on every row of the model pair). Columns without a source (no ``result`` or no
    ``interval``) are NaN. Concatenate column-wise with ``LayerAlignment.to_frame()`` of the same
    metric and layers: ``pd.concat([alignment.to_frame(...), stats_columns(res, ci)], axis=1)``.
    """
    if result is None and interval is None:
        raise RepalignError("stats_columns needs a permutation_test result, a subsample_interval (low, high) pair, or both")
    shape = result.scores.shape if result is not None else None
    if interval is not None:
        try:
            low, high = (np.asarray(x, dtype=np.float64) for x in interval)
        except (TypeError, ValueError):
            raise RepalignError("interval must be the (low, high) pair returned by subsample_interval") from None
        if low.shape != high.shape or low.ndim != 2 or (shape is not None and low.shape != shape):
            raise RepalignError(
                f"interval arrays have shapes {low.shape} and {high.shape} but the result has {shape}; compute both on the same layers"
            )
        shape = low.shape
    rows = shape[0] * shape[1]
    nan = np.full(rows, np.nan)
    if result is not None:
        chance = np.full(rows, np.nan if result.chance_level is None else result.chance_level)
        columns = {
            "chance_level": chance,
            "p_value": result.p_value.ravel(),
            "null_mean": result.null_mean.ravel(),
            "calibrated": result.calibrated.ravel(),
        }
        best = np.full(rows, result.p_value_best)
    else:
        columns = {"chance_level": nan, "p_value": nan, "null_mean": nan, "calibrated": nan}
        best = nan
    columns["ci_low"] = low.ravel() if interval is not None else nan
    columns["ci_high"] = high.ravel() if interval is not None else nan
    columns["p_value_best"] = best
    return pd.DataFrame({name: np.asarray(columns[name], dtype=np.float64) for name in STATS_COLUMNS})
