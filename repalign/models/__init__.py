"""Registry of model adapters: registered name -> "module:Class", imported only when used.

Adding a model is adding one module under ``repalign/models/`` (or a package such as
``esmfold2_model``) and one line here. Random-initialised controls of any torch model are the
spec ``NAME@random:SEED`` or ``NAME@random-all:SEED`` (:mod:`repalign.models.controls`), not registry lines.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence, cast

from repalign.errors import ModelUnavailable, RepalignError
from repalign.models._common import package_versions, provenance_record, sha256_of_file, sha256_of_files
from repalign.models._sequence import hub_cache_dir, hub_offline
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures
from repalign.models.controls import MODEL_SCOPE, RandomInitAdapter, parse_control
from repalign.options import check_routing, route_options

if TYPE_CHECKING:  # adapter modules are imported only when used
    from repalign.models.hf_protein_lm import HFProteinLM

REGISTRY: dict[str, str] = {
    # filled in by the model families; "hf:<path-or-repo>" is handled by get_adapter_class
    "chgnet-0.3.0": "repalign.models.chgnet:CHGNet030",
    "chgnet-0.2.0": "repalign.models.chgnet:CHGNet020",
    "chgnet-r2scan": "repalign.models.chgnet:CHGNetR2SCAN",
    "sevennet-0": "repalign.models.sevennet:SevenNet0",
    "sevennet-l3i5": "repalign.models.sevennet:SevenNetL3I5",
    "sevennet-mf-0": "repalign.models.sevennet:SevenNetMF0",
    "diep": "repalign.models.diep:DIEPAdapter",
    "ani-1x": "repalign.models.ani:ANI1xAdapter",
    "antiberty": "repalign.models.antiberty:AntiBERTy",
    "iglm": "repalign.models.iglm:IgLM",
    "igfold": "repalign.models.igfold:IgFold",
    "unirep-64": "repalign.models.unirep:UniRep64",
    "unirep-256": "repalign.models.unirep:UniRep256",
    "unirep-1900": "repalign.models.unirep:UniRep1900",
    "esmfold2": "esmfold2_model.adapters:EsmFold2Adapter",
    "esmfold2-fast": "esmfold2_model.adapters:EsmFold2FastAdapter",
    "esmc-300m": "esmfold2_model.adapters:EsmcAdapter",
    "esmc-600m": "esmfold2_model.adapters:Esmc600mAdapter",
    "esmc-6b": "esmfold2_model.adapters:Esmc6bAdapter",
    "esm2-8m": "repalign.models.hub_lms:ESM2_8M",
    "esm2-35m": "repalign.models.hub_lms:ESM2_35M",
    "esm2-150m": "repalign.models.hub_lms:ESM2_150M",
    "esm2-650m": "repalign.models.hub_lms:ESM2_650M",
    "esm2-3b": "repalign.models.hub_lms:ESM2_3B",
    "prott5": "repalign.models.hub_lms:ProtT5",
    # domain-knowledge baselines (provenance level = baseline): hand-crafted features, no training
    "elements": "repalign.models.baselines_atoms:ElementComposition",
    "soap": "repalign.models.baselines_atoms:Soap",
    "acsf": "repalign.models.baselines_atoms:Acsf",
    "morgan": "repalign.models.baselines_molecules:MorganFingerprint",
    "aa-composition": "repalign.models.baselines_sequence:AminoAcidComposition",
    "kmer-composition": "repalign.models.baselines_sequence:KmerComposition",
    "blosum62": "repalign.models.baselines_sequence:Blosum62Profile",
    "onehot": "repalign.models.baselines_sequence:OneHotPositions",
}

HF_PREFIX = "hf:"


def model_names() -> list[str]:
    return list(REGISTRY)


def get_adapter_class(name: str) -> type[ModelAdapter]:
    """The adapter class of a registered name, ``hf:<path>``, or a control ``NAME@random:SEED`` (NAME's class)."""
    control = parse_control(name)
    key = (control[0] if control else name).strip().lower()
    if key.startswith(HF_PREFIX):
        key = HF_PREFIX
        target = "repalign.models.hf_protein_lm:HFProteinLM"
    elif key in REGISTRY:
        target = REGISTRY[key]
    else:
        raise RepalignError(
            f"unknown model {name!r}; run 'repalign models' to list them (known: {', '.join(REGISTRY) or 'none'})"
        )
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def get_adapter(
    name: str, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options
) -> ModelAdapter:
    """Instantiate (not load) the adapter for a registered name or ``hf:<path-or-repo-id>``.

    Options scoped to a model (``MODEL:KEY``, see :mod:`repalign.options`) reach that model only;
    ``NAME@random:SEED`` gives the random-initialised control of NAME, ``NAME@random-all:SEED`` the one
    that re-initialises NAME's pretrained input model too (:mod:`repalign.models.controls`).
    """
    options = route_options(name, options, None)  # plain options all reach a model named directly: it rejects the ones it does not take
    control = parse_control(name)
    if control is not None:
        return randomized(get_adapter(control.base, weights=weights, device=device, dtype=dtype, **options), control.seed,
                          scope=control.scope)
    cls = get_adapter_class(name)
    if name.lower().startswith(HF_PREFIX):
        # get_adapter_class gives HFProteinLM for hf: names; it takes the path or repo first
        return cast("type[HFProteinLM]", cls)(name[len(HF_PREFIX):], weights=weights, device=device, dtype=dtype, **options)
    reason = cls.unavailable_reason()
    if reason:
        raise ModelUnavailable(f"model {name}: {reason}")
    return cls(weights=weights, device=device, dtype=dtype, **options)


def randomized(model: str | ModelAdapter, seed: int = 0, scope: str = MODEL_SCOPE, **adapter_args) -> RandomInitAdapter:
    """The random-initialised control of ``model`` (a registered name or an adapter), re-initialised
    with ``seed`` when first used; ``scope='all'`` re-initialises its pretrained input model too.
    ``adapter_args`` (weights, device, dtype, options) go to :func:`repalign.models.get_adapter` when
    ``model`` is a name."""
    if isinstance(model, str):
        model = get_adapter(model, **adapter_args)
    elif adapter_args:
        raise RepalignError("randomized: weights/device/options apply to a model name, not to an adapter")
    if not isinstance(model, ModelAdapter):
        raise RepalignError(f"randomized: expected a model name or adapter, got {type(model).__name__}")
    return RandomInitAdapter(model, seed, scope)


def options_for_model(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options of a run that reach model ``name``: its scoped ones, and the plain ones its adapter
    declares in ``OPTIONS`` (every plain one when it declares none)."""
    if not options:
        return {}
    return route_options(name, options, get_adapter_class(name).option_names())


def check_options(options: Mapping[str, Any] | None, models: Sequence[str]) -> None:
    """RepalignError when a scoped option names a model not in the run, or no model takes a plain one."""
    if options:
        check_routing(options, {m: get_adapter_class(m).option_names() for m in models})


__all__ = [
    "REGISTRY", "ModelAdapter", "ModelInfo", "SampleFeatures", "get_adapter", "get_adapter_class", "model_names", "randomized",
    "check_options", "options_for_model",
    # for adapters defined outside this package (esmfold2_model) and for imported features
    "hub_cache_dir", "hub_offline", "package_versions", "provenance_record", "sha256_of_file", "sha256_of_files",
]
