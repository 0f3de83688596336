"""The extraction pipeline: inputs -> model adapter -> pooled (and token) features -> embeddings cache.

For each model: validate every input first (so bad input never leaves a half-written cache), skip
samples already stored with the same content hash and options (resumable, idempotent), bucket the
rest by length under a token budget, run the adapter batch by batch, pool per sample, and append
each batch to the cache, where it is durable as soon as ``append`` returns.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from repalign.errors import InvalidInput, RepalignError
from repalign.extract_plan import Retry, forward_with_retry, order_batches
from repalign.inputs import Record
from repalign.models import ModelAdapter, SampleFeatures, get_adapter
from repalign.options import check_options, options_for_model
from repalign.pooling import POOLINGS as VECTOR_POOLINGS
from repalign.pooling import pool_rows

log = logging.getLogger("repalign.extract")

#: per-sample poolings (repalign.pooling), and "none": token features only
POOLINGS = VECTOR_POOLINGS + ("none",)


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
    retries: list[Retry] = field(default_factory=list)  # batches split after out-of-memory errors


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
                "(all of them: 'repalign models --layers')"
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
    """One pooled vector per layer: the CLS vector, or mean / max / last of the token rows
    (:func:`repalign.pooling.pool_rows`)."""
    out = {}
    for layer in layers:
        if pool == "cls":
            if layer not in feats.cls:
                raise RepalignError(f"layer {layer} has no CLS vector for {sample_id}; use --pool mean")
            out[layer] = np.asarray(feats.cls[layer], dtype=np.float32)
        else:
            tok = feats.tokens.get(layer)
            if tok is None or len(tok) == 0:
                raise RepalignError(f"model returned no features of layer {layer} for {sample_id}")
            out[layer] = pool_rows(tok, pool, f"{sample_id} layer {layer}")
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
    pool: ``mean``, ``max`` or ``last`` over residues/atoms, ``cls``, or ``none`` (token features only);
        default: the model's (:mod:`repalign.pooling`).
    tokens: layers (names or patterns) whose per-residue / per-atom features are also stored (ragged).
    options: model-specific options, recorded in the provenance: ``KEY`` applies to every model
        that accepts it (an error only if none does), ``MODEL:KEY`` to that model alone
        (:mod:`repalign.options`).
    records may be a :class:`repalign.datasets.dataset.Dataset`: its provenance (builder, seed,
    size, content hash) is stored under ``dataset`` in each model's provenance (that of the first run).
    """
    from embeddings_cache import check_can_append

    describe = getattr(records, "provenance", None)
    dataset = describe() if callable(describe) else None

    records = check_extract_args(records, models, pool, store_dtype, limit, weights, batch_tokens)
    check_options(options, models)
    check_can_append(cache)  # the output path, before any model is built

    # Resolve and validate everything for every model before loading a model or writing anything.
    plans = [plan_model(name, records, layers, pool, tokens, device, dtype, weights, options, skip_invalid,
                        adapter_factory) for name in models]
    for adapter, chosen, model_pool, token_layers, _, _ in plans:
        check_cache_target(cache, adapter, chosen, model_pool, token_layers, store_dtype, overwrite)

    runs = []
    for adapter, chosen, model_pool, token_layers, good, invalid in plans:
        run = ModelRun(model_key(adapter), chosen, invalid=invalid)
        for sid, reason in invalid.items():
            log.warning("skipped %s: %s", sid, reason)
        _extract_one(adapter, run, good, cache, model_pool, token_layers, store_dtype, batch_tokens, overwrite, quiet,
                     skip_invalid, dataset)
        runs.append(run)
    return runs


def check_extract_args(records, models, pool, store_dtype, limit, weights, batch_tokens=4096) -> list[Record]:
    """Validate the run-wide arguments of an extraction; returns the records after ``limit``."""
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, (int, np.integer)) or batch_tokens < 1:
        raise RepalignError(f"--batch-tokens must be a positive integer, got {batch_tokens}")
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
    for r in records:
        if "\x00" in r.id:
            raise RepalignError(f"sample id {r.id!r} contains a NUL character; remove it from the input")
    return list(records)


def extraction_options(adapter: ModelAdapter, pool: str, token_layers: Sequence[str], store_dtype: str) -> dict:
    """The options recorded in the cache (and compared on resume), without the weights' identity,
    which needs the loaded model."""
    return {"pool": pool, "token_layers": list(token_layers), "store_dtype": store_dtype, "dtype": adapter.dtype,
            "model": dict(adapter.options)}


def check_cache_target(cache, adapter, layers, pool, token_layers, store_dtype, overwrite) -> None:
    """Refuse, before any model loads, what the cache writer would refuse after: a missing
    folder, a path that is not a cache, a read-only cache, a stored model with other options."""
    from embeddings_cache import check_can_append

    check_can_append(cache, model_key(adapter), options=extraction_options(adapter, pool, token_layers, store_dtype),
                     layers=[] if pool == "none" else list(layers), token_layers=list(token_layers),
                     dtype=store_dtype, overwrite=overwrite)


def plan_model(name, records, layers, pool, tokens, device, dtype, weights, options, skip_invalid, factory):
    """Build one model's adapter, resolve its layers and pooling, and validate every input.

    Returns (adapter, layers, pool, token_layers, valid records, {invalid id: reason}); raises on the
    first invalid record unless ``skip_invalid``. Nothing is loaded or written here.
    """
    adapter = factory(name, weights=weights, device=device, dtype=dtype, **options_for_model(name, options))
    with weight_errors(adapter):  # some adapters load their checkpoint to list its layers
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
                 skip_invalid=False, dataset=None):
    from embeddings_cache import CacheWriter

    load_model(adapter)
    prov = dict(adapter.provenance())
    if dataset is not None:
        prov["dataset"] = dataset
    extraction = extraction_options(adapter, pool, token_layers, store_dtype)
    prov["options"] = {**extraction, "weights": _weights_identity(prov)}
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
            for batch in order_batches(length_batches(todo, sizes, batch_tokens), sizes, adapter.device):
                recs = [todo[i] for i in batch]
                feats = forward_with_retry(adapter, recs, run.layers, run.retries)
                if len(feats) != len(recs):
                    raise RepalignError(f"model {key} returned {len(feats)} results for {len(recs)} inputs")
                pooled_rows = [pool_features(f, run.layers, pool, r.id) for f, r in zip(feats, recs)] \
                    if pool != "none" else []
                keep = _finite_samples(recs, feats, pooled_rows, token_layers, store_dtype, skip_invalid, run.invalid)
                if len(keep) < len(recs):
                    recs, feats = [recs[k] for k in keep], [feats[k] for k in keep]
                    pooled_rows = [pooled_rows[k] for k in keep] if pooled_rows else []
                    batch = [batch[k] for k in keep]
                    if not recs:
                        continue
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


def load_model(adapter: ModelAdapter) -> None:
    """Load the weights; a damaged checkpoint (truncated or foreign file) is a one-line error."""
    with weight_errors(adapter):
        adapter.ensure_loaded()


@contextlib.contextmanager
def weight_errors(adapter: ModelAdapter):
    """Turn the errors of loading a damaged checkpoint into one RepalignError naming it."""
    try:
        yield
    except RepalignError:
        raise
    except Exception as exc:  # torch, safetensors and transformers raise many types for a bad file
        where = f" from {adapter.weights}" if getattr(adapter, "weights", None) else ""
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RepalignError(
            f"cannot load the weights of model {adapter.info.name}{where} ({type(exc).__name__}: {text[:200]}); "
            "the checkpoint is incomplete or not this model's: download it again or give other --weights"
        ) from exc


def _finite_samples(recs, feats, pooled_rows, token_layers, store_dtype, skip_invalid, invalid) -> list[int]:
    """Positions of the batch's samples whose features are finite in the storage dtype.

    A sample with NaN or overflowing values is named; with ``skip_invalid`` it is left out (and
    recorded in ``invalid``) and the rest of its batch is stored, otherwise the run stops.
    """
    dtype = np.dtype(store_dtype)
    keep = []
    for k, (r, f) in enumerate(zip(recs, feats)):
        arrays = [(f"pooled layer {l}", v) for l, v in (pooled_rows[k].items() if pooled_rows else ())]
        arrays += [(f"token layer {l}", f.tokens.get(l)) for l in token_layers]
        reason = next((f"{r.id}: {what} holds NaN or values beyond the {dtype.name} range"
                       for what, values in arrays if not _finite_in(values, dtype)), None)
        if reason is None:
            keep.append(k)
        elif skip_invalid:
            invalid[r.id] = reason
            log.warning("skipped %s", reason)
        else:
            raise InvalidInput(f"{reason}; the model failed on this input: check it, or pass --skip-invalid", r.id)
    return keep


def _finite_in(values, dtype: np.dtype) -> bool:
    """All values finite, also once cast to ``dtype`` (1e39 is finite in float64, inf in float32)."""
    values = np.asarray(values)
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    if not np.isfinite(values).all():
        return False
    if values.dtype.itemsize > dtype.itemsize:
        with np.errstate(over="ignore"):
            return bool(np.isfinite(values.astype(dtype)).all())
    return True


def _weights_identity(prov: dict) -> str | None:
    """The part of the provenance that identifies the weights: a changed model version is a changed option."""
    for key in ("weights_sha256", "weights_hash", "weights", "version"):
        if prov.get(key):
            return str(prov[key])
    return None


def _collect_outputs(feats: Sequence[SampleFeatures]) -> dict[str, np.ndarray]:
    names = sorted(set().union(*(f.outputs.keys() for f in feats))) if feats else []
    return {n: np.array([f.outputs.get(n, np.nan) for f in feats], dtype=np.float64) for n in names}
