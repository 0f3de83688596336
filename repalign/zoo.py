"""What ``repalign models`` shows: every registered model, its modality, layers, weights and licence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from repalign.errors import RepalignError
from repalign.models import REGISTRY, ModelAdapter, get_adapter_class, hub_cache_dir

#: files of a saved checkpoint that hold its weights (one of them must be there)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def hub_checkpoint_missing(repo: str) -> str | None:
    """Why the hub checkpoint ``repo`` cannot be loaded offline here, or None when its config and
    weights are in the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub), as loading finds them."""
    cache = hub_cache_dir()
    fetch = f"not in the Hugging Face cache ({cache}): fetch it with 'hf download {repo}', or give extract --weights DIR"
    try:
        from huggingface_hub import try_to_load_from_cache  # lazy: an optional extra
    except ImportError:
        return f"needs huggingface_hub to find {repo}: pip install 'repalign[models]'"
    config = try_to_load_from_cache(repo, "config.json", cache_dir=cache)
    if not isinstance(config, str) or not os.path.isfile(config):
        return f"{repo} is {fetch}"
    snapshot = os.path.dirname(config)
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in os.listdir(snapshot)):
        return f"{repo} has a config but no weights in the Hugging Face cache: fetch it again with 'hf download {repo}'"
    return None


def weights_missing(cls: type[ModelAdapter], path: str | os.PathLike) -> str | None:
    """What the weights path ``path`` lacks for the model ``cls`` (its ``WEIGHTS_LAYOUT``), or None when
    it holds what loading reads; checked without loading anything. A model that takes no weights
    (hand-crafted) is refused."""
    name, where = cls.info.name, Path(path).expanduser()
    if cls.info.weights.startswith("none"):
        return f"{name} is hand-crafted and takes no weights"
    layout = cls.WEIGHTS_LAYOUT
    if not where.exists():
        return f"weights {path} does not exist"
    if layout == "file":
        return None if where.is_file() else f"weights {path} is a folder; {name} takes one checkpoint file"
    if not where.is_dir():
        return f"weights {path} is a file; {name} takes a folder"
    if layout == "checkpoint":
        missing = [] if (where / "config.json").is_file() else ["config.json"]
        if not any(f.name.endswith(WEIGHT_SUFFIXES) and f.is_file() and f.stat().st_size > 0 for f in where.iterdir()):
            missing.append(f"a non-empty weights file ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    else:
        missing = [item for item in layout if not (where / item).exists()]
    if not missing and not any(f.is_file() and f.stat().st_size > 0 for f in where.rglob("*")):
        missing = ["any non-empty file"]
    return f"weights {path} lacks {' and '.join(missing)}" if missing else None


def model_table(models: Sequence[str] | None = None, weights: str | os.PathLike | None = None) -> list[dict]:
    """One record per registered model (tidy, for notebooks); ``models``: only these (registered
    names). ``weights``: a weights path for the one model of ``models``, checked for what it holds
    (:func:`weights_missing`) instead of the model's default weights."""
    names = list(REGISTRY) if models is None else list(models)
    unknown = [m for m in names if m not in REGISTRY]
    if unknown:
        raise RepalignError(f"unknown model {unknown[0]!r}; 'repalign models' lists them")
    if weights is not None and len(names) != 1:
        raise RepalignError("weights are checked for one model; pass models=[NAME] with one name")
    return [model_row(name, weights) for name in names]


def model_row(name: str, weights: str | os.PathLike | None = None) -> dict:
    """The record of one registered model: here or not (and why), its layers, licence and weights."""
    cls = get_adapter_class(name)
    info = cls.info
    reason = cls.unavailable_reason()
    if reason is None and weights is not None:
        reason = weights_missing(cls, weights)
    try:
        layers = cls(weights=None).layer_names() if reason is None else []
    except Exception as exc:  # a model whose layer list needs its weights config
        layers, reason = [], reason or f"layer list unavailable: {exc}"
    repo = getattr(cls, "repo", None) or getattr(cls, "hub_id", None)  # hub models: is the checkpoint here?
    if reason is None and weights is None and isinstance(repo, str):
        reason = hub_checkpoint_missing(repo)
    return {
        "name": name, "family": info.family, "modality": info.modality, "input": info.input_kind,
        "available": reason is None, "why_unavailable": reason or "", "n_layers": len(layers),
        "layers": layers, "license": info.license, "extra": info.extra,
        "weights": str(weights) if weights is not None else info.weights,
    }


def describe_models(show_layers: bool = False, models: Sequence[str] | None = None,
                    weights: str | os.PathLike | None = None) -> str:
    """The table ``repalign models`` prints (:func:`model_table` as text)."""
    rows = model_table(models, weights)
    if not rows:
        return "no models registered"
    w = max(len(r["name"]) for r in rows)
    lines = [f"{'name':<{w}}  {'modality':<18} {'layers':>6}  {'here':<4}  licence / weights"]
    for r in rows:
        here = "yes" if r["available"] else "no"
        lines.append(f"{r['name']:<{w}}  {r['modality']:<18} {r['n_layers']:>6}  {here:<4}  {r['license']}")
        detail = f"extra: {r['extra']}; weights: {r['weights']}"
        if not r["available"]:
            detail += f"; {r['why_unavailable']}"
        lines.append(f"{'':<{w}}  {detail}")
        if show_layers and r["layers"]:
            lines.append(f"{'':<{w}}  layers: {', '.join(r['layers'])}")
    lines.append("hf:PATH-OR-REPO  any transformers protein LM (ESM-2, ESMC) from a local folder or the HF cache")
    return "\n".join(lines)
