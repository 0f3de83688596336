"""A cache of two trained 'networks', their random-init controls of several seeds and a baseline,
written with CacheWriter so provenance (``level``, ``input_layers``) is what the test says; a small
real torch adapter with a pretrained input featuriser (the control scopes)."""

from __future__ import annotations

import hashlib

import numpy as np

from embeddings_cache import CacheWriter
from repalign.models import randomized
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures
from repalign.models.controls import parse_control

LAYERS = ("emb", "h1", "h2")


def sample_hash(sample_id: str) -> str:
    return hashlib.sha256(sample_id.encode()).hexdigest()


def write_control_cache(path, seeds=(0, 1, 2, 3, 4), n: int = 80, skip: dict | None = None, all_seeds=()):
    """Models ``ta``, ``tb`` (trained; ``emb`` declared their input layer), ``ta@random:s`` and
    ``tb@random:s`` per seed, ``ta@random-all:s`` and ``tb@random-all:s`` per seed of ``all_seeds``,
    and ``fb`` (a baseline, no declared input layer).

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
    for s in all_seeds:
        models[f"ta@random-all:{s}"] = (network(300 + s, 0.2), "random_init")
        models[f"tb@random-all:{s}"] = (network(400 + s, 0.2), "random_init")
    baseline = {"d0": (shared @ rng.standard_normal((6, 8)) + rng.standard_normal((n, 8))).astype(np.float32)}
    for model, (feats, level) in models.items():
        _write(path, model, feats, ids, {"level": level, "input_layers": ["emb"]}, skip.get(model, 0))
    _write(path, "fb", baseline, ids, {"level": "baseline"}, skip.get("fb", 0))
    return path


def _write(path, model, feats, ids, prov, skip):
    keep = len(ids) - skip
    with CacheWriter(path, model, provenance={"model": model, "options": {"pool": "mean"}, **prov}, layers=list(feats)) as w:
        w.append(ids[:keep], [sample_hash(i) for i in ids[:keep]], {k: v[:keep] for k, v in feats.items()})


def Encoder():
    """Embedding, linear, batch norm, then a bare parameter matrix (no ``reset_parameters``: drawn
    from the control's generator, so a kept one must not shift the draws of the rest)."""
    import torch

    class _Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Embedding(20, 8), torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
            self.mix = torch.nn.Parameter(torch.randn(8, 8) * 0.2)

        def forward(self, idx):
            return self.net(idx) @ self.mix

    return _Encoder()


class EncoderRunner:
    """A non-module object holding the pretrained input network, as ``AntiBERTyRunner`` does."""

    def __init__(self):
        import torch

        self.model = Encoder()
        batch_norm = self.model.net[2]
        with torch.no_grad():  # "trained" values, which BatchNorm's reset sets to 1, 0 and mean 0, variance 1
            batch_norm.weight.fill_(1.5)
            batch_norm.bias.fill_(0.1)
        batch_norm.running_mean.fill_(0.5)
        batch_norm.running_var.fill_(2.0)
        self.model.eval()


class TwoStageAdapter(ModelAdapter):
    """A small real torch model with a separately pretrained input featuriser, as IgFold has AntiBERTy:
    an encoder (embedding, linear, batch norm; held by a runner, declared in ``pretrained_inputs``)
    feeding a head (linear, then a custom matrix). ``nested``: the head also holds the encoder as a
    submodule, so the kept network sits inside a re-initialised one. ``declares``: whether the
    encoder is declared (False: a model as it was before controls had scopes)."""

    info = ModelInfo(name="twostage", family="TwoStage", modality="protein sequence", input_kind="sequence", extra="",
                     license="MIT", weights="built in")
    OPTIONS = ()
    nested = False
    declares = True

    def load(self):
        import torch

        torch.manual_seed(7)  # the "trained" weights
        self._encoder = EncoderRunner()
        head = torch.nn.Module()
        head.linear = torch.nn.Linear(8, 6)
        head.custom = torch.nn.Parameter(torch.randn(6, 4) * 0.3)
        if self.nested:
            head.encoder = self._encoder.model
        self._head = head

    def pretrained_inputs(self):
        return {"encoder": "_encoder"} if self.declares else {}

    def layer_names(self):
        return ["encoder", "head"]

    def provenance(self):
        return {"model": "twostage", "family": "TwoStage", "options": dict(self.options)}

    def forward(self, records, layers):
        import torch

        self.ensure_loaded()
        out = []
        with torch.no_grad():
            for record in records:
                idx = torch.tensor([AMINO.index(c) for c in record.payload])
                encoded = self._encoder.model(idx)
                head = torch.tanh(self._head.linear(encoded)) @ self._head.custom
                feats = {"encoder": encoded, "head": head}
                out.append(SampleFeatures(tokens={k: feats[k].numpy() for k in layers}))
        return out


AMINO = "ACDEFGHIKLMNPQRSTVWY"


def two_stage_factory(adapter_class=TwoStageAdapter):
    """The registry's rule for controls (both scopes) over a registry that knows only ``twostage``."""

    def factory(name, weights=None, device="cpu", dtype="float32", **options):
        control = parse_control(name)
        if control is not None:
            return randomized(factory(control.base, weights=weights, device=device, dtype=dtype, **options), control.seed,
                              scope=control.scope)
        assert name == "twostage"
        return adapter_class(weights=weights, device=device, dtype=dtype, **options)

    return factory
