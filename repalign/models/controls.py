"""Random-initialised controls: a model's architecture with its trained weights replaced.

A control keeps a model's architecture, tokeniser, input featurisation and buffers, and replaces
every trainable weight by a fixed-seed initialisation (:func:`reinitialize`). It answers "how much
of an alignment comes from the architecture and the input statistics alone?".

Controls are models like any other: the spec ``NAME@random:SEED`` (e.g. ``antiberty@random:3``)
works wherever a model name does (``repalign extract --model antiberty@random:3``,
:func:`repalign.models.get_adapter`). The control is stored in the cache under that name, with
``random_init`` (seed, stream, scope, kept pretrained inputs, initialisation counts) and
``level = random_init`` in its provenance, so it can never be read as the trained model. Controls
of several seeds of the same model are independent networks, and so are controls of two models of
the same architecture (:func:`model_seed`).

Scope. A model whose input featuriser is a separately pretrained model (IgFold runs AntiBERTy and
takes its last layer as input) declares it (:meth:`ModelAdapter.pretrained_inputs`). Its control
``NAME@random:SEED`` (scope ``model``) keeps that input model trained and re-initialises the rest:
it contrasts what the model's own trained weights add on top of its input. ``NAME@random-all:SEED``
(scope ``all``) re-initialises every weight, the input model's too. For a model that declares no
pretrained input (every model but IgFold) the two are the same network. The re-initialised weights
the two scopes share are drawn identically (same stream; the kept ones are restored after), so
``igfold@random:s`` and ``igfold@random-all:s`` differ only in AntiBERTy. The compare and study
machinery pairs a trained model with its ``@random`` controls; an ``@random-all`` control is a
model to compare by name.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from repalign.errors import RepalignError
from repalign.models._common import missing_modules
from repalign.models.base import ModelAdapter

RANDOM_TAG = "@random"
#: what a control re-initialises -> its tag: every weight but the declared pretrained inputs, or every weight
SCOPE_TAGS = {"model": RANDOM_TAG, "all": f"{RANDOM_TAG}-all"}
MODEL_SCOPE, ALL_SCOPE = "model", "all"
_SPEC = re.compile(r"^(?P<base>.+)@random(?P<all>-all)?:(?P<seed>\d+)$")


class ControlSpec(NamedTuple):
    """A parsed control spec: ``base`` model, ``seed`` and ``scope`` (``model`` or ``all``)."""

    base: str
    seed: int
    scope: str = MODEL_SCOPE


def parse_control(name: str) -> ControlSpec | None:
    """(base model, seed, scope) of a control spec ``NAME@random:SEED`` (scope ``model``) or
    ``NAME@random-all:SEED`` (scope ``all``); None for any other name."""
    if RANDOM_TAG not in name:
        return None
    match = _SPEC.match(name.strip())
    if not match:
        raise RepalignError(f"model {name!r}: a random-init control is written NAME@random:SEED (or NAME@random-all:SEED "
                            "to re-initialise its pretrained input model too), e.g. antiberty@random:0")
    return ControlSpec(match["base"], int(match["seed"]), ALL_SCOPE if match["all"] else MODEL_SCOPE)


def control_name(model: str, seed: int, scope: str = MODEL_SCOPE) -> str:
    """The spec (and cache name) of ``model``'s control with ``seed``: ``NAME@random:SEED``, or
    ``NAME@random-all:SEED`` for scope ``all``."""
    return f"{model}{SCOPE_TAGS[check_scope(scope)]}:{int(seed)}"


def check_scope(scope: str) -> str:
    if scope not in SCOPE_TAGS:
        raise RepalignError(f"control scope {scope!r} is not one of {', '.join(SCOPE_TAGS)}; pass 'model' or 'all'")
    return scope


def is_control(model: str) -> bool:
    """Whether a name is a random-init control (either scope)."""
    return RANDOM_TAG in model


def control_scope(*models: str) -> str:
    """The scope of the controls among ``models`` (e.g. the two sides of a compared pair): ``all``
    when any is ``NAME@random-all:SEED``, ``model`` when any other is a control, empty when none is."""
    scopes = {c.scope for c in map(parse_control, models) if c is not None}
    return ALL_SCOPE if ALL_SCOPE in scopes else (MODEL_SCOPE if scopes else "")


def base_model(model: str) -> str:
    """The trained model a name refers to (the name itself for a trained model or a baseline)."""
    parsed = parse_control(model)
    return parsed[0] if parsed else model


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


def reinitialize(modules: Sequence, seed: int, keep: Sequence = ()) -> dict[str, int]:
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
    ``keep``: modules (among ``modules`` or inside them) left trained, parameters and buffers: they
    are re-initialised with the rest and then restored, so every other weight is drawn exactly as
    without ``keep``; counted as ``pretrained``.
    The global torch RNG is left as it was. Returns counts of parameters per initialisation rule.
    """
    import torch

    if not modules:
        raise RepalignError("no torch modules found to re-initialise; this model cannot have a random-init control")
    counts = {"reset_parameters": 0, "scaled_normal": 0, "kept": 0}
    kept_state = [(module, {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}) for module in keep]
    kept_ids = {id(p) for module in keep for p in module.parameters()}
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
                # kept (pretrained) parameters are drawn too and restored below, so every other
                # parameter gets the same draw as without ``keep``; they are counted apart
                counted = int(id(p) not in kept_ids)
                if id(p) in covered:
                    counts["reset_parameters"] += counted
                    continue
                covered.add(id(p))
                if p.ndim <= 1 and p.numel() and bool((p > 0).all()):
                    counts["kept"] += counted
                    continue
                scale = float(p.detach().float().std()) if p.numel() > 1 else 0.0
                draw = torch.randn(p.shape, generator=generator, dtype=torch.float32) * scale
                p.copy_(draw.to(device=p.device, dtype=p.dtype))
                counts["scaled_normal"] += counted
        for p, value in frozen:
            p.copy_(value)
            counts["kept"] += int(id(p) not in kept_ids)
        for module, state in kept_state:
            module.load_state_dict(state)
    if keep:
        counts["pretrained"] = len(kept_ids)
    return counts


def equinox_modules(obj: Any) -> dict[str, Any]:
    """Attributes of ``obj`` that are Equinox (JAX) modules, by attribute name (empty without equinox)."""
    if missing_modules("equinox"):
        return {}
    import equinox as eqx

    return {name: value for name, value in vars(obj).items() if isinstance(value, eqx.Module)}


def reinitialize_equinox(obj: Any, seed: int) -> dict[str, int]:
    """Re-initialise the Equinox modules held by ``obj``'s attributes (replaced on ``obj``: Equinox
    modules are immutable), deterministically from ``seed``.

    JAX layers have no ``reset_parameters``, so every floating-point array gets N(0, s^2) with s the
    standard deviation of its trained values (the scaled-normal rule of :func:`reinitialize`), except
    all-positive vectors (kept, as in :func:`reinitialize`); integer arrays and static fields are kept.
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    modules = equinox_modules(obj)
    if not modules:
        raise RepalignError("no Equinox modules found to re-initialise; this model cannot have a random-init control")
    rng = np.random.default_rng(seed)
    counts = {"reset_parameters": 0, "scaled_normal": 0, "kept": 0}

    def draw(leaf):
        value = np.asarray(leaf)
        if value.ndim <= 1 and value.size and bool((value > 0).all()):
            counts["kept"] += 1
            return leaf
        scale = float(value.astype(np.float64).std()) if value.size > 1 else 0.0
        counts["scaled_normal"] += 1
        return jnp.asarray(rng.standard_normal(value.shape) * scale, dtype=value.dtype)

    for name, module in sorted(modules.items()):
        params, static = eqx.partition(module, eqx.is_inexact_array)
        setattr(obj, name, eqx.combine(jax.tree_util.tree_map(draw, params), static))
    return counts


def model_seed(seed: int, model: str) -> int:
    """The seed of one model's control: drawn from (seed, model name), so two models of the same
    architecture (e.g. CHGNet 0.3.0 and 0.2.0) get independent random networks, not the same one."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(model.encode())]).generate_state(1)[0] % (2**31 - 2))


class RandomInitAdapter(ModelAdapter):
    """A model adapter whose weights are re-initialised with a fixed seed (see :func:`reinitialize`).

    Everything but the weights is the wrapped adapter's: layers, inputs, tokenisation, pooling.
    ``scope``: ``model`` keeps the pretrained input models the adapter declares
    (:meth:`ModelAdapter.pretrained_inputs`) trained, ``all`` re-initialises them too.
    Its cache name is ``<model>@random:<seed>`` (``<model>@random-all:<seed>`` for scope ``all``) and
    its provenance carries ``random_init`` (the seed, the model's own stream, :func:`model_seed`, the
    scope and the kept pretrained inputs) and ``level = random_init``.
    """

    def __init__(self, inner: ModelAdapter, seed: int, scope: str = MODEL_SCOPE):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise RepalignError(f"random-init seed must be a non-negative integer, got {seed!r}")
        if isinstance(inner, RandomInitAdapter):
            raise RepalignError(f"{inner.name} is already a random-init control; pass the trained model")
        check_scope(scope)
        self.inner = inner
        self.seed = int(seed)
        self.scope = scope
        #: the declared pretrained inputs this control keeps trained, by name
        self.kept_inputs: dict[str, str] = dict(sorted(inner.pretrained_inputs().items())) if scope == MODEL_SCOPE else {}
        # this instance stands for the wrapped adapter: it copies the class-level description
        self.info = inner.info  # type: ignore[misc]
        self.default_pooling = inner.default_pooling  # type: ignore[misc]
        self.max_size = inner.max_size  # type: ignore[misc]
        base = getattr(inner, "name", None) or inner.info.name
        self.name: str = control_name(base, self.seed, scope)
        # one stream for both scopes, so the weights both re-initialise are the same draws
        self.stream = model_seed(self.seed, base)
        self.weights, self.device, self.dtype = inner.weights, inner.device, inner.dtype
        # the seeds are options, so a cache written with other seeds is detected on resume; the kept
        # inputs too, where there are some (only then does the scope change the network, so a
        # control keeping nothing has the same options in both scopes)
        self.options = {**inner.options, "random_init_seed": self.seed, "random_init_stream": self.stream}
        if self.kept_inputs:
            self.options["random_init_kept"] = list(self.kept_inputs)
        self._loaded = False
        self.init_counts: dict[str, int] = {}

    def load(self) -> None:
        self.inner.ensure_loaded()
        modules = torch_modules(self.inner)
        if not modules and equinox_modules(self.inner):
            if self.kept_inputs:
                raise RepalignError(f"{self.name}: keeping pretrained inputs works for torch models only; "
                                    f"use {control_name(base_model(self.name), self.seed, ALL_SCOPE)}")
            self.init_counts = reinitialize_equinox(self.inner, self.stream)
        else:
            self.init_counts = reinitialize(modules, self.stream, keep=self.kept_modules())

    def kept_modules(self) -> list:
        """The torch modules of the kept pretrained inputs (of the loaded wrapped adapter)."""
        import torch

        kept: list = []
        for name, attribute in self.kept_inputs.items():
            value = getattr(self.inner, attribute, None)
            found = [value] if isinstance(value, torch.nn.Module) else torch_modules(value) if value is not None else []
            if not found:
                raise RepalignError(f"{self.name}: the pretrained input {name} (attribute {attribute!r}) holds no torch "
                                    f"module once loaded; fix {type(self.inner).__name__}.pretrained_inputs")
            kept += found
        return kept

    def layer_names(self) -> list[str]:
        return self.inner.layer_names()

    def default_layers(self) -> list[str]:
        return self.inner.default_layers()

    def input_layers(self) -> list[str]:
        return self.inner.input_layers()

    def provenance(self) -> dict[str, Any]:
        self.ensure_loaded()
        prov = dict(self.inner.provenance())
        prov["model"] = self.name
        prov["level"] = "random_init"
        note = "weights re-initialised: a control, not the trained model"
        if self.kept_inputs:
            note = (f"weights re-initialised, those of the pretrained inputs ({', '.join(self.kept_inputs)}) kept trained: "
                    "a control, not the trained model")
        prov["random_init"] = {"seed": self.seed, "stream": self.stream, "scope": self.scope,
                               "kept_pretrained": list(self.kept_inputs), "initialisation": dict(self.init_counts),
                               "note": note}
        return prov

    def validate(self, record) -> None:
        self.inner.validate(record)

    def size(self, record) -> int:
        return self.inner.size(record)

    def forward(self, records, layers):
        self.ensure_loaded()
        return self.inner.forward(records, layers)


__all__ = ["ALL_SCOPE", "MODEL_SCOPE", "RANDOM_TAG", "SCOPE_TAGS", "ControlSpec", "RandomInitAdapter", "base_model", "control_scope",
           "control_name", "equinox_modules", "is_control", "model_seed", "parse_control", "reinitialize",
           "reinitialize_equinox", "torch_modules"]
