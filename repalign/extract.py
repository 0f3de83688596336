"""The extraction pipeline: inputs -> model adapter -> pooled (and token) features -> embeddings cache.

For each model: validate every input first (so bad input never leaves a half-written cache), skip
samples already stored with the same content hash and options (resumable, idempotent), bucket the
rest by length under a token budget, run the adapter batch by batch, pool per sample, and append
each batch to the cache, where it is durable as soon as ``append`` returns.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from repalign.errors import InvalidInput, RepalignError
from repalign.inputs import Record
from repalign.models import ModelAdapter, SampleFeatures, get_adapter

log = logging.getLogger("repalign.extract")

POOLINGS = ("mean", "cls", "none")


@dataclass
class ModelRun:
    """What one model's extraction did."""

    model: str
    layers: list[str]
    stored: int = 0  # samples written in this run
    skipped_existing: int = 0  # already in the cache with the same hash
    invalid: dict[str, str] = field(default_factory=dict)  # id -> reason (with skip_invalid)
    seconds: float = 0.0
    tokens: int = 0


def resolve_layers(adapter: ModelAdapter, requested: Sequence[str] | None) -> list[str]:
    """``None`` -> the adapter's defaults; ``all`` -> every layer; names or shell patterns otherwise."""
    available = adapter.layer_names()
    if not requested:
        return list(adapter.default_layers())
    if list(requested) == ["all"]:
        return list(available)
    chosen: set[str] = set()
    for pat in requested:
        hits = [n for n in available if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            shown = ", ".join(available[:10]) + (", ..." if len(available) > 10 else "")
            raise RepalignError(
                f"model {adapter.info.name} has no layer matching {pat!r}; its layers: {shown} "
                f"(see 'repalign models --layers {adapter.info.name}')"
            )
        chosen.update(hits)
    return [n for n in available if n in chosen]


def length_batches(records: Sequence[Record], sizes: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped so that (longest size in batch) x (batch length) <= batch_tokens.

    Sorting by size first means each batch pads little; a single record longer than the budget
    forms a batch of its own.
    """
    if batch_tokens < 1:
        raise RepalignError(f"--batch-tokens must be positive, got {batch_tokens}")
    order = sorted(range(len(records)), key=lambda i: (sizes[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max([sizes[j] for j in current] + [sizes[i]])
        if current and longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pool_features(feats: SampleFeatures, layers: Sequence[str], pool: str, sample_id: str) -> dict[str, np.ndarray]:
    """One pooled vector per layer: mean over tokens (float64 accumulation) or the CLS vector."""
    out = {}
    for layer in layers:
        if pool == "cls":
            if layer not in feats.cls:
                raise RepalignError(f"layer {layer} has no CLS vector for {sample_id}; use --pool mean")
            vec = np.asarray(feats.cls[layer], dtype=np.float64)
        else:
            tok = feats.tokens.get(layer)
            if tok is None or len(tok) == 0:
                raise RepalignError(f"model returned no features of layer {layer} for {sample_id}")
            vec = np.asarray(tok, dtype=np.float64).mean(axis=0)
        out[layer] = vec.astype(np.float32)
    return out


class Progress:
    """A progress line on a terminal (samples, tokens/s, ETA); periodic plain log lines otherwise."""

    def __init__(self, model: str, total: int, quiet: bool = False, stream=None):
        self.model, self.total, self.quiet = model, total, quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() and not quiet
        self.done = self.tokens = 0
        self.start = time.perf_counter()
        self._last_logged = -1

    def update(self, samples: int, tokens: int) -> None:
        self.done += samples
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.tokens / elapsed
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        text = f"{self.model}: {self.done}/{self.total} samples, {rate:,.0f} tokens/s, ETA {_fmt_time(eta)}"
        if self.tty:
            self.stream.write("\r" + text.ljust(78))
            self.stream.flush()
        elif not self.quiet:
            decile = int(10 * self.done / max(self.total, 1))
            if decile != self._last_logged:
                self._last_logged = decile
                log.info("model=%s done=%d total=%d tokens_per_s=%.0f eta_s=%.0f", self.model, self.done,
                         self.total, rate, eta if np.isfinite(eta) else -1)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt_time(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def extract(
    records: Sequence[Record],
    models: Sequence[str],
    cache: str | os.PathLike,
    *,
    layers: Sequence[str] | None = None,
    pool: str | None = None,
    tokens: Sequence[str] = (),
    device: str = "cpu",
    dtype: str = "float32",
    store_dtype: str = "float32",
    batch_tokens: int = 4096,
    limit: int | None = None,
    overwrite: bool = False,
    skip_invalid: bool = False,
    weights: str | None = None,
    options: dict | None = None,
    quiet: bool = False,
    adapter_factory: Callable[..., ModelAdapter] = get_adapter,
) -> list[ModelRun]:
    """Extract features of ``records`` with each model in ``models`` into ``cache``.

    layers: names or patterns (``all`` for every layer; default: the model's default layers).
    pool: ``mean`` over residues/atoms, ``cls``, or ``none`` (token features only); default: the model's.
    tokens: layers (names or patterns) whose per-residue / per-atom features are also stored (ragged).
    options: model-specific options (``--option KEY=VALUE``), recorded in the provenance.
    records may be a :class:`repalign.datasets.dataset.Dataset`: its provenance (builder, seed,
    size, content hash) is stored under ``dataset`` in each model's provenance (that of the first run).
    """
    describe = getattr(records, "provenance", None)
    dataset = describe() if callable(describe) else None
    records = check_extract_args(records, models, pool, store_dtype, limit, weights)

    # Resolve and validate everything for every model before writing anything.
    plans = [plan_model(name, records, layers, pool, tokens, device, dtype, weights, options, skip_invalid,
                        adapter_factory) for name in models]

    runs = []
    for adapter, chosen, model_pool, token_layers, good, invalid in plans:
        run = ModelRun(model_key(adapter), chosen, invalid=invalid)
        for sid, reason in invalid.items():
            log.warning("skipped %s: %s", sid, reason)
        _extract_one(adapter, run, good, cache, model_pool, token_layers, store_dtype, batch_tokens, overwrite, quiet,
                     dataset)
        runs.append(run)
    return runs


def check_extract_args(records, models, pool, store_dtype, limit, weights) -> list[Record]:
    """Validate the run-wide arguments of an extraction; returns the records after ``limit``."""
    if pool is not None and pool not in POOLINGS:
        raise RepalignError(f"unknown pooling {pool!r}; use one of {', '.join(POOLINGS)}")
    if store_dtype not in ("float32", "float16"):
        raise RepalignError(f"unknown storage dtype {store_dtype!r}; use float32 or float16")
    if not records:
        raise RepalignError("no input samples; give a FASTA, CSV or structure file with at least one sample")
    if limit is not None:
        if limit < 1:
            raise RepalignError(f"--limit must be positive, got {limit}")
        records = list(records)[:limit]
    if weights is not None and len(models) > 1:
        raise RepalignError("--weights applies to one model; run one 'repalign extract' per model with its weights")
    return list(records)


def plan_model(name, records, layers, pool, tokens, device, dtype, weights, options, skip_invalid, factory):
    """Build one model's adapter, resolve its layers and pooling, and validate every input.

    Returns (adapter, layers, pool, token_layers, valid records, {invalid id: reason}); raises on the
    first invalid record unless ``skip_invalid``. Nothing is loaded or written here.
    """
    adapter = factory(name, weights=weights, device=device, dtype=dtype, **(options or {}))
    chosen = resolve_layers(adapter, layers)
    model_pool = pool or adapter.default_pooling
    token_layers = chosen if model_pool == "none" else (resolve_layers(adapter, tokens) if tokens else [])
    unknown_tok = [t for t in token_layers if t not in chosen]
    if unknown_tok:
        raise RepalignError(f"--tokens layers {unknown_tok} are not among the extracted layers; add them to --layers")
    good, invalid = [], {}
    for r in records:
        try:
            adapter.validate(r)
            if adapter.max_size is not None and adapter.size(r) > adapter.max_size:
                raise InvalidInput(
                    f"{r.id}: {adapter.size(r)} tokens/atoms, longer than {adapter.info.name} accepts "
                    f"({adapter.max_size}); shorten it, split it, or pass --skip-invalid", r.id)
        except InvalidInput as exc:
            if not skip_invalid:
                raise
            invalid[r.id] = str(exc)
        else:
            good.append(r)
    return adapter, chosen, model_pool, token_layers, good, invalid


def split_stored(records: Sequence[Record], stored: dict[str, str], key: str) -> tuple[list[Record], int]:
    """Records still to extract, and how many are already stored with the same content hash.

    A stored id whose hash differs is an error: the input changed under the same id.
    """
    todo, skipped = [], 0
    for r in records:
        old = stored.get(r.id)
        if old is None:
            todo.append(r)
        elif old == r.content_hash:
            skipped += 1
        else:
            raise RepalignError(
                f"sample {r.id} is already stored for {key} with different content; "
                f"give the new input another id, or pass --overwrite to re-extract the model")
    return todo, skipped


def model_key(adapter: ModelAdapter) -> str:
    """The model's name in the cache: its registered name; ``hf:`` checkpoints by folder or repo name."""
    name = getattr(adapter, "name", None) or adapter.info.name
    if name.startswith("hf:"):
        source = name[3:].rstrip("/")
        # cache group names cannot hold '/': a local folder is named by its last part, a repo id keeps its owner
        base = os.path.basename(source) if os.path.isdir(os.path.expanduser(source)) else source.replace("/", "--")
        name = "hf:" + base
    return name


def _extract_one(adapter, run, records, cache, pool, token_layers, store_dtype, batch_tokens, overwrite, quiet,
                 dataset=None):
    from embeddings_cache import CacheWriter

    adapter.ensure_loaded()
    prov = dict(adapter.provenance())
    if dataset is not None:
        prov["dataset"] = dataset
    extraction = {"pool": pool, "token_layers": list(token_layers), "store_dtype": store_dtype, "dtype": adapter.dtype}
    prov["options"] = {**extraction, "model": dict(adapter.options), "weights": _weights_identity(prov)}
    prov["device"] = adapter.device
    key = run.model
    start = time.perf_counter()
    pooled_layers = [] if pool == "none" else run.layers
    with CacheWriter(cache, key, provenance=prov, layers=pooled_layers, token_layers=token_layers,
                     dtype=store_dtype, overwrite=overwrite) as writer:
        todo, run.skipped_existing = split_stored(records, writer.stored(), key)
        if not todo:
            return
        sizes = [adapter.size(r) for r in todo]
        progress = Progress(key, len(todo), quiet=quiet)
        try:
            for batch in length_batches(todo, sizes, batch_tokens):
                recs = [todo[i] for i in batch]
                feats = adapter.forward(recs, run.layers)
                if len(feats) != len(recs):
                    raise RepalignError(f"model {key} returned {len(feats)} results for {len(recs)} inputs")
                pooled_rows = [pool_features(f, run.layers, pool, r.id) for f, r in zip(feats, recs)] \
                    if pool != "none" else []
                pooled = {l: np.stack([p[l] for p in pooled_rows]) for l in run.layers} if pooled_rows else {}
                toks = {l: [np.asarray(f.tokens[l], dtype=np.float32) for f in feats] for l in token_layers}
                outputs = _collect_outputs(feats)
                writer.append([r.id for r in recs], [r.content_hash for r in recs], pooled, tokens=toks, outputs=outputs)
                ntok = sum(sizes[i] for i in batch)
                run.stored += len(recs)
                run.tokens += ntok
                progress.update(len(recs), ntok)
        finally:
            progress.close()
    run.seconds = time.perf_counter() - start


def _weights_identity(prov: dict) -> str | None:
    """The part of the provenance that identifies the weights: a changed model version is a changed option."""
    for key in ("weights_sha256", "weights_hash", "weights", "version"):
        if prov.get(key):
            return str(prov[key])
    return None


def _collect_outputs(feats: Sequence[SampleFeatures]) -> dict[str, np.ndarray]:
    names = sorted(set().union(*(f.outputs.keys() for f in feats))) if feats else []
    return {n: np.array([f.outputs.get(n, np.nan) for f in feats], dtype=np.float64) for n in names}
