"""What ``repalign models`` shows: every registered model, its modality, layers, weights and licence."""

from __future__ import annotations

from repalign.models import REGISTRY, get_adapter_class


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
