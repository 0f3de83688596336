"""What ``repalign models`` shows: every registered model, its modality, layers, weights and licence."""

from __future__ import annotations

import os

from repalign.models import REGISTRY, get_adapter_class, hub_cache_dir

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


def model_table() -> list[dict]:
    """One record per registered model (tidy, for notebooks)."""
    rows = []
    for name in REGISTRY:
        cls = get_adapter_class(name)
        info = cls.info
        reason = cls.unavailable_reason()
        try:
            layers = cls(weights=None).layer_names() if reason is None else []
        except Exception as exc:  # a model whose layer list needs its weights config
            layers, reason = [], reason or f"layer list unavailable: {exc}"
        repo = getattr(cls, "repo", None) or getattr(cls, "hub_id", None)  # hub models: is the checkpoint here?
        if reason is None and isinstance(repo, str):
            reason = hub_checkpoint_missing(repo)
        rows.append({
            "name": name, "family": info.family, "modality": info.modality, "input": info.input_kind,
            "available": reason is None, "why_unavailable": reason or "", "n_layers": len(layers),
            "layers": layers, "license": info.license, "extra": info.extra, "weights": info.weights,
        })
    return rows


def describe_models(show_layers: bool = False) -> str:
    rows = model_table()
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
