"""A cache of two trained 'networks', their random-init controls of several seeds and a baseline,
written with CacheWriter so provenance (``level``, ``input_layers``) is what the test says."""

from __future__ import annotations

import hashlib

import numpy as np

from embeddings_cache import CacheWriter

LAYERS = ("emb", "h1", "h2")


def sample_hash(sample_id: str) -> str:
    return hashlib.sha256(sample_id.encode()).hexdigest()


def write_control_cache(path, seeds=(0, 1, 2, 3, 4), n: int = 80, skip: dict | None = None):
    """Models ``ta``, ``tb`` (trained; ``emb`` declared their input layer), ``ta@random:s`` and
    ``tb@random:s`` per seed, and ``fb`` (a baseline, no declared input layer).

    The input layers of every network carry the same signal (the best pair when searched); the
    trained hidden layers share a strong signal, the controls' a weak one whose best hidden pair
    changes with the seed. ``skip``: model -> number of its last samples left out."""
    rng = np.random.default_rng(11)
    ids = [f"s{i:03d}" for i in range(n)]
    inputs = rng.standard_normal((n, 12))
    shared = rng.standard_normal((n, 6))
    skip = skip or {}

    def network(seed: int, strength: float) -> dict:
        r = np.random.default_rng(seed)
        feats = {"emb": inputs @ r.standard_normal((12, 10))}
        for i, name in enumerate(LAYERS[1:], start=1):
            weight = strength * r.uniform(0.3, 1.0)
            feats[name] = weight * shared @ r.standard_normal((6, 10)) + i * 0.5 * r.standard_normal((n, 10))
        return {k: v.astype(np.float32) for k, v in feats.items()}

    models = {"ta": (network(1, 3.0), "trained"), "tb": (network(2, 3.0), "trained")}
    for s in seeds:
        models[f"ta@random:{s}"] = (network(100 + s, 0.6), "random_init")
        models[f"tb@random:{s}"] = (network(200 + s, 0.6), "random_init")
    baseline = {"d0": (shared @ rng.standard_normal((6, 8)) + rng.standard_normal((n, 8))).astype(np.float32)}
    for model, (feats, level) in models.items():
        _write(path, model, feats, ids, {"level": level, "input_layers": ["emb"]}, skip.get(model, 0))
    _write(path, "fb", baseline, ids, {"level": "baseline"}, skip.get("fb", 0))
    return path


def _write(path, model, feats, ids, prov, skip):
    keep = len(ids) - skip
    with CacheWriter(path, model, provenance={"model": model, "options": {"pool": "mean"}, **prov}, layers=list(feats)) as w:
        w.append(ids[:keep], [sample_hash(i) for i in ids[:keep]], {k: v[:keep] for k, v in feats.items()})
