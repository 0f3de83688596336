"""Registry of alignment metrics: names and aliases -> Metric descriptions.

Shared by the layer engine and the command line. Each Metric knows its public function, its
parameters and defaults, and how to split the computation into a per-layer ``state`` and a
pairwise ``score`` of two states, so layer matrices and permutation tests compute each layer once.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, cast

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics import cca, distance, imbalance, kernel, knn, rsa, shape
from repalign.metrics._validate import check_int, check_k, check_min_samples, check_permutation
from repalign.metrics.backends import backend_of


@dataclass(frozen=True)
class Metric:
    """Description of one alignment metric.

    name: canonical name. function: the public f(X, Y, **params) -> float. defaults: default
    value of every accepted parameter. fixed: parameters this entry pins (e.g. unbiased=True for
    ``unbiased_cka``), recorded with the scores but not settable. is_knn: built on neighbour
    lists (takes ``k``). aliases: other accepted names. bounds: (low, high), the range of the
    score (intervals are clipped to it). interval: whether ``subsample_interval`` gives an interval
    whose coverage was checked by simulation (only for estimators without a bias that depends on
    N and the width: unbiased CKA and the bias-corrected distance correlation; not for kNN metrics
    at fixed k, whose target moves with N), as a bool or a function of the resolved parameters.
    biased: the score is not centred at 0 for unrelated data and has no closed-form chance level
    (report it next to its permutation null mean); a bool or a function of the parameters.
    swapped: for a metric that is not symmetric in A and B, the name of the registered metric whose
    score for (B, A) is this one's for (A, B) (``imbalance_similarity_a_to_b`` <->
    ``imbalance_similarity_b_to_a``); None for symmetric metrics. Every registered score is a
    similarity (higher = more aligned); distances are registered in a similarity form.
    """

    name: str
    function: Callable[..., float]
    defaults: Mapping[str, Any]
    is_knn: bool
    description: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    bounds: tuple[float, float] = (0.0, 1.0)
    interval: bool | Callable[[Mapping[str, Any]], bool] = False
    biased: bool | Callable[[Mapping[str, Any]], bool] = False
    swapped: str | None = None
    _chance: Callable[[int, Mapping[str, Any]], float | None] | None = None
    _key: Callable[[Mapping[str, Any]], tuple] | None = None
    _state: Callable[..., Any] | None = None
    _score: Callable[[Any, Any, Mapping[str, Any]], float] | None = None
    _check: Callable[[int, Mapping[str, Any]], dict] | None = None

    def has_interval(self, params: Mapping[str, Any]) -> bool:
        """Whether subsampling intervals cover for this metric with these (resolved) parameters."""
        return bool(self.interval(params) if callable(self.interval) else self.interval)

    def is_biased(self, params: Mapping[str, Any]) -> bool:
        """Whether the score sits above 0 for unrelated data without a closed-form chance level."""
        return bool(self.biased(params) if callable(self.biased) else self.biased)

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the parameters a caller may set."""
        return tuple(self.defaults)

    def resolve(self, n_samples: int, **params) -> dict:
        """All effective parameters (defaults, then ``params``, then fixed ones), validated for N samples."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            accepted = ", ".join(self.params) or "none"
            raise RepalignError(f"metric {self.name!r} does not take parameter(s) {', '.join(unknown)}; it accepts: {accepted}")
        merged = {**self.defaults, **params, **self.fixed}
        return self._check(n_samples, merged) if self._check else merged

    def chance_level(self, n_samples: int, **params) -> float | None:
        """Expected score for independent X and Y with N samples, or None where no closed form is known."""
        if self._chance is None:
            return None
        return self._chance(n_samples, self.resolve(n_samples, **params))

    def state_key(self, params: Mapping[str, Any]) -> tuple:
        """Metrics whose keys are equal can share one per-layer state."""
        assert self._key is not None  # every registered metric sets _key, _state and _score
        return self._key(params)

    def state(self, X: np.ndarray, params: Mapping[str, Any], cache: dict | None = None):
        """Per-layer state of a validated, preprocessed matrix; ``cache`` holds this layer's other states."""
        assert self._state is not None
        return self._state(X, params, {} if cache is None else cache)

    def score(self, state_a, state_b, params: Mapping[str, Any]) -> float:
        """Score of a pair from two states built with the same ``params``."""
        assert self._score is not None
        return self._score(state_a, state_b, params)


# ----------------------------------------------------------------------------- parameter checks
def _check_knn(n, p):
    return {**p, "k": check_k(p["k"], n)}


def _check_cknna(n, p):
    check_min_samples(n, 4, "CKNNA (unbiased HSIC)")
    return {**p, "k": check_k(p["k"], n, low=2)}


def _check_cka(n, p):
    kernel._check_kernel_params(p["kernel"], p.get("sigma"), p["unbiased"])
    check_min_samples(n, 4 if p["unbiased"] else 2, "unbiased CKA" if p["unbiased"] else "CKA")
    p = dict(p)
    if p["kernel"] == "linear":
        p.pop("sigma", None)
    elif p.get("sigma") is None:
        p["sigma"] = "median"  # recorded explicitly so tables say which bandwidth was used
    return p


def _check_svcca(n, p):
    check_min_samples(n, 2, "svcca")
    return {**p, "variance": cca.check_variance(p["variance"])}


def _check_svcca_platonic(n, p):
    check_min_samples(n, 2, "svcca_platonic")
    return {**p, "dim": check_int(p["dim"], "dim", 1, n - 1, f" (at most N - 1 = {n - 1}); lower dim")}


def _check_shape(n, p):
    check_min_samples(n, 2, "shape similarity")
    return {**p, "whitening": shape.check_whitening(p["whitening"])}


def _check_rsa(n, p):
    check_min_samples(n, 3, "rsa")
    rsa.check_rsa_options(p["rdm"], p["compare"])
    return dict(p)


def _needs_samples(minimum: int, what: str):
    """The parameter check of a metric whose only condition is a smallest number of samples."""
    def check(n, p):
        check_min_samples(n, minimum, what)
        return dict(p)
    return check


_check_pwcca = _needs_samples(2, "pwcca")
_check_imbalance = _needs_samples(3, "information imbalance")
_check_dcor = _needs_samples(2, "distance correlation")
_check_bcdcor = _needs_samples(4, "bias-corrected distance correlation")


# ----------------------------------------------------------------------------- states
def _knn_key(p):
    return ("knn", p["k"])


def _knn_state(X, p, cache):
    key = ("knn", p["k"])
    if key not in cache:
        cache[key] = backend_of(cache).knn_state(X, p["k"])
    return cache[key]


def _cknna_state(X, p, cache):
    return kernel.cknna_state(X, p["k"], _knn_state(X, p, cache))


def _sigma(p):
    sigma = p.get("sigma")
    return None if sigma == "median" else sigma


def _cka_key(p):
    return ("kernel", p["kernel"], _sigma(p), bool(p["unbiased"]))


def _cka_state(X, p, cache):
    return backend_of(cache).kernel_state(X, p["kernel"], _sigma(p), bool(p["unbiased"]))


def _knn_score(pair_fn):
    return lambda a, b, p: pair_fn(a, b, p["k"])


def cka_rbf(X, Y, sigma=None, unbiased=False) -> float:
    """CKA with the RBF kernel; see :func:`repalign.metrics.cka`."""
    return kernel.cka(X, Y, kernel="rbf", sigma=sigma, unbiased=unbiased)


def imbalance_similarity_b_to_a(X, Y) -> float:
    """1 − Δ(Y→X); see :func:`repalign.metrics.imbalance.imbalance_similarity`."""
    return imbalance.imbalance_similarity(Y, X)


def _shape_state(X, p, cache):
    return shape.shape_state(X, p["whitening"])


def _distance_state(X, p, cache):
    return imbalance.distance_state(X)


# keyword arguments shared by several Metric entries (values of mixed types, hence Any)
_KNN: dict[str, Any] = dict(is_knn=True, _key=_knn_key, _state=_knn_state, _check=_check_knn)
_CKA: dict[str, Any] = dict(is_knn=False, _key=_cka_key, _state=_cka_state, _score=lambda a, b, p: kernel.cka_from_states(a, b), _check=_check_cka,
            interval=lambda p: bool(p["unbiased"]), biased=lambda p: not p["unbiased"])

_BUILTIN: list[Metric] = [
    Metric("mutual_knn", knn.mutual_knn, {"k": 10}, description="mean fraction of shared k nearest neighbours",
           aliases=("mknn",), _chance=lambda n, p: p["k"] / (n - 1), _score=_knn_score(knn.mutual_knn_from_states), **_KNN),
    Metric("cycle_knn", knn.cycle_knn, {"k": 10}, description="fraction of samples reached back through a Y-neighbour's X-neighbours",
           _score=_knn_score(knn.cycle_knn_from_states), **_KNN),
    Metric("lcs_knn", knn.lcs_knn, {"k": 10}, description="mean longest common subsequence of ordered neighbour lists / k",
           _score=_knn_score(knn.lcs_knn_from_states), **_KNN),
    Metric("edit_distance_knn", knn.edit_distance_knn, {"k": 10}, description="1 - mean Levenshtein distance of ordered neighbour lists / k",
           _score=_knn_score(knn.edit_distance_knn_from_states), **_KNN),
    Metric("cka", kernel.cka, {"kernel": "linear", "sigma": None, "unbiased": False},
           description="centered kernel alignment (biased HSIC unless unbiased=True)",
           aliases=("linear_cka", "cka_linear"), **_CKA),
    Metric("unbiased_cka", kernel.unbiased_cka, {"kernel": "linear", "sigma": None}, fixed={"unbiased": True},
           description="CKA with the unbiased HSIC of Song et al. (2012)", aliases=("ucka",), _chance=lambda n, p: 0.0,
           bounds=(-1.0, 1.0), **_CKA),
    Metric("cka_rbf", cka_rbf, {"sigma": None, "unbiased": False}, fixed={"kernel": "rbf"},
           description="CKA with an RBF kernel (sigma: median pairwise distance when None)", aliases=("rbf_cka",), **_CKA),
    Metric("cknna", kernel.cknna, {"k": 10}, is_knn=True, description="CKA restricted to mutual k-nearest-neighbour pairs (unbiased HSIC)",
           _key=lambda p: ("cknna", p["k"]), _state=_cknna_state, _score=lambda a, b, p: kernel.cknna_from_states(a, b), _check=_check_cknna,
           bounds=(-1.0, 1.0)),
    Metric("svcca", cca.svcca, {"variance": 0.99}, is_knn=False,
           description="mean canonical correlation of the singular directions explaining 99% of variance (Raghu et al. 2017)",
           _key=lambda p: ("svcca", p["variance"]), _state=lambda X, p, c: cca.svcca_state(X, p["variance"]),
           _score=lambda a, b, p: cca.svcca_from_states(a, b), _check=_check_svcca, biased=True),
    Metric("svcca_platonic", cca.svcca_platonic, {"dim": 10}, is_knn=False,
           description="platonic-rep's SVCCA: standardised features, top-dim singular directions",
           _key=lambda p: ("svcca_platonic", p["dim"]), _state=lambda X, p, c: cca.svcca_platonic_state(X, p["dim"]),
           _score=lambda a, b, p: cca.svcca_from_states(a, b), _check=_check_svcca_platonic, biased=True),
    Metric("distance_correlation", distance.distance_correlation, {}, is_knn=False, description="Székely's distance correlation (V-statistic, biased)",
           aliases=("dcor",), _key=lambda p: ("dcor",), _state=lambda X, p, c: distance.distance_state(X),
           _score=lambda a, b, p: distance.distance_correlation_from_states(a, b), _check=_check_dcor, biased=True),
    Metric("bias_corrected_distance_correlation", distance.bias_corrected_distance_correlation, {}, is_knn=False,
           description="bias-corrected squared distance correlation R* (Székely & Rizzo 2014)", aliases=("bcdcor",),
           _chance=lambda n, p: 0.0, _key=lambda p: ("bcdcor",), _state=lambda X, p, c: distance.u_centred_state(X),
           _score=lambda a, b, p: distance.bias_corrected_distance_correlation_from_states(a, b), _check=_check_bcdcor,
           bounds=(-1.0, 1.0), interval=True),
]

# Measures of the field's papers beyond platonic-rep's table (docs/metrics.md, "Which measure for which question")
_SHAPE: dict[str, Any] = dict(is_knn=False, _key=lambda p: ("shape", p["whitening"]), _state=_shape_state,
                              _score=lambda a, b, p: shape.shape_from_states(a, b), _check=_check_shape, biased=True)
_IMBALANCE: dict[str, Any] = dict(is_knn=False, defaults={}, _chance=lambda n, p: 0.0, _key=lambda p: ("distances",),
                                  _state=_distance_state, _check=_check_imbalance, bounds=(-1.0, 1.0))
_BUILTIN += [
    Metric("procrustes", shape.procrustes, {}, fixed={"whitening": 0.0},
           description="orthogonal Procrustes similarity: nuclear norm of X~'Y~ for centred, unit-norm X~, Y~", **_SHAPE),
    Metric("shape_similarity", shape.shape_similarity, {"whitening": 0.0},
           description="cos of Williams et al.'s angular shape distance with partial whitening (0: Procrustes, 1: CCA)", **_SHAPE),
    Metric("rsa", rsa.rsa, {"rdm": "correlation", "compare": "spearman"}, is_knn=False,
           description="representational similarity analysis: comparison of the two RDMs' upper triangles",
           _key=lambda p: ("rsa", p["rdm"], p["compare"]), _state=lambda X, p, c: rsa.rsa_state(X, p["rdm"], p["compare"]),
           _score=lambda a, b, p: rsa.rsa_from_states(a, b), _check=_check_rsa, bounds=(-1.0, 1.0),
           biased=lambda p: p["compare"] == "cosine"),
    Metric("pwcca", cca.pwcca, {}, is_knn=False, description="projection-weighted CCA (Morcos et al. 2018)",
           _key=lambda p: ("pwcca",), _state=lambda X, p, c: cca.pwcca_state(X), _score=lambda a, b, p: cca.pwcca_from_states(a, b),
           _check=_check_pwcca, biased=True),
    Metric("imbalance_similarity_a_to_b", imbalance.imbalance_similarity, swapped="imbalance_similarity_b_to_a",
           description="1 - information imbalance Delta(A->B) (Glielmo et al. 2022): A's nearest neighbours predict B's ranks",
           _score=lambda a, b, p: 1.0 - imbalance.imbalance_from_states(a, b), **_IMBALANCE),
    Metric("imbalance_similarity_b_to_a", imbalance_similarity_b_to_a, swapped="imbalance_similarity_a_to_b",
           description="1 - information imbalance Delta(B->A) (Glielmo et al. 2022): B's nearest neighbours predict A's ranks",
           _score=lambda a, b, p: 1.0 - imbalance.imbalance_from_states(b, a), **_IMBALANCE),
]

_BY_NAME: dict[str, Metric] = {}
METRICS: list[Metric] = []  # built-in metrics, then those added by register_metric


def _add(metric: Metric) -> None:
    for name in (metric.name, *metric.aliases):
        _BY_NAME[name] = metric
    METRICS.append(metric)


for _metric in _BUILTIN:
    _add(_metric)


@dataclass(frozen=True)
class ArrayState:
    """State of a user-registered metric: the preprocessed layer itself."""

    X: np.ndarray

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    def permuted(self, perm) -> "ArrayState":
        return ArrayState(self.X[check_permutation(perm, self.n_samples)])


def register_metric(name: str, function: Callable[..., float], *, defaults: Mapping[str, Any] | None = None,
                    aliases: Sequence[str] = (), description: str = "", bounds: tuple[float, float] = (0.0, 1.0),
                    chance: Callable[[int, Mapping[str, Any]], float] | None = None, interval: bool = False,
                    biased: bool = False) -> Metric:
    """Add a metric ``function(X, Y, **params) -> float`` to the registry.

    It then works everywhere a built-in metric does: :func:`repalign.metrics.align_layers`,
    ``repalign compare --metric NAME`` (in the same process, e.g. a plugin imported first), the
    permutation test and intervals of :mod:`repalign.stats`. X and Y arrive preprocessed
    (``normalize``, ``clip_quantile``) as float arrays with row i the same sample. defaults: its
    parameters and their default values. bounds: the score's range. chance: optional closed-form
    expectation f(n_samples, params) for unrelated data. interval: True only if you have checked
    that subsampling intervals cover for it. The name must not be taken.
    """
    key = str(name).strip().lower().replace("-", "_")
    if not key.isidentifier():
        raise RepalignError(f"metric name {name!r} is invalid; use letters, digits and '_' (e.g. 'my_metric')")
    for alias in (key, *aliases):
        if alias in _BY_NAME:
            raise RepalignError(f"metric name {alias!r} is taken (by {_BY_NAME[alias].name}); choose another name")
    if not callable(function):
        raise RepalignError(f"function for metric {key!r} is not callable; pass f(X, Y, **params) -> float")
    defaults = dict(defaults or {})

    def _score(a, b, p):
        value = function(a.X, b.X, **{k: v for k, v in p.items() if k in defaults})
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise RepalignError(f"metric {key} returned {type(value).__name__}, not a number") from None
        return value

    metric = Metric(key, function, defaults, is_knn=False, description=description or f"user metric {key}",
                    aliases=tuple(aliases), bounds=cast("tuple[float, float]", tuple(bounds)), interval=bool(interval), biased=bool(biased),
                    _chance=chance, _key=lambda p: (key, tuple(sorted((k, repr(v)) for k, v in p.items()))),
                    _state=lambda X, p, c: ArrayState(X), _score=_score)
    _add(metric)
    return metric


def metric_names(aliases: bool = True) -> list[str]:
    """Sorted names accepted by :func:`get_metric` (canonical names only if ``aliases`` is False)."""
    return sorted(_BY_NAME) if aliases else sorted(m.name for m in METRICS)


def get_metric(name: str) -> Metric:
    """The Metric registered under ``name`` or one of its aliases (case-insensitive, '-' same as '_')."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in _BY_NAME:
        # each metric once, by its shortest name (metric_names() lists the aliases): one short line
        short = sorted(min([m.name, *m.aliases], key=len) for m in METRICS)
        close = difflib.get_close_matches(key, list(_BY_NAME), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise RepalignError(f"unknown metric {name!r}{hint}; valid names: {', '.join(short)}")
    return _BY_NAME[key]
