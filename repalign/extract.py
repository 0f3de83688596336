"""The extraction pipeline: inputs -> model adapter -> pooled (and token) features -> embeddings cache.

For each model: validate every input first (so bad input never leaves a half-written cache), skip
samples already stored with the same content hash and options (resumable, idempotent), bucket the
rest by length under a token budget, run the adapter batch by batch, pool per sample, and append
each batch to the cache, where it is durable as soon as ``append`` returns.

The settings of a run are one :class:`repalign.extract_options.ExtractOptions`; each model's
resolved plan is a :class:`repalign.extract_options.ModelPlan`, and :func:`extract_model`
extracts one plan into an open cache writer (in this process, or on Dask workers:
:mod:`repalign.distributed.extraction`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from embeddings_cache import CacheWriter, check_can_append
from embeddings_cache.format import CACHE_COMPRESSION
from repalign.errors import InvalidInput, RepalignError
from repalign.extract_batches import Retry, forward_with_retry, length_batches, order_batches
from repalign.extract_options import (
    ExtractOptions,
    ModelPlan,
    check_records,
    dataset_provenance,
    plan_model,
    split_stored,
    weight_errors,
)
from repalign.inputs import Record
from repalign.models import ModelAdapter, SampleFeatures, check_options
from repalign.pooling import pool_rows
from repalign.progress import progress

log = logging.getLogger("repalign.extract")


@dataclass
class ModelRun:
    """What one model's extraction did."""

    model: str
    layers: list[str]
    stored: int = 0  # samples written in this run
    skipped_existing: int = 0  # already in the cache with the same hash
    invalid: dict[str, str] = field(default_factory=dict)  # id -> reason (with skip_invalid)
    seconds: float = 0.0  # extracting: batches through the model, pooling, appends
    tokens: int = 0
    retries: list[Retry] = field(default_factory=list)  # batches split after out-of-memory errors


def pool_features(feats: SampleFeatures, layers: Sequence[str], pool: str, sample_id: str) -> dict[str, np.ndarray]:
    """One pooled vector per layer: the CLS vector, or mean / max / last of the token rows
    (:func:`repalign.pooling.pool_rows`)."""
    out = {}
    for layer in layers:
        if pool == "cls":
            if layer not in feats.cls:
                raise RepalignError(f"layer {layer} has no CLS vector for {sample_id}; use pool='mean'")
            out[layer] = np.asarray(feats.cls[layer], dtype=np.float32)
        else:
            tok = feats.tokens.get(layer)
            if tok is None or len(tok) == 0:
                raise RepalignError(f"model returned no features of layer {layer} for {sample_id}")
            out[layer] = pool_rows(tok, pool, f"{sample_id} layer {layer}")
    return out


def extract(records: Sequence[Record], models: Sequence[str], cache: str | os.PathLike,
            settings: ExtractOptions | None = None, **fields: Any) -> list[ModelRun]:
    """Extract features of ``records`` with each model in ``models`` into ``cache``.

    settings: an :class:`repalign.extract_options.ExtractOptions`; fields: its fields by name
    (``layers=["all"], pool="mean", options={...}``, ...), which replace those of ``settings``.
    An unknown name is an error.
    records may be a :class:`repalign.datasets.dataset.Dataset`: its provenance (builder, seed,
    size, content hash) is stored under ``dataset`` in each model's provenance (that of the first run).
    """
    options = ExtractOptions.build(settings, **fields)
    dataset = dataset_provenance(records)
    plans = plan_run(records, models, cache, options)
    runs = []
    for plan in plans:
        with model_writer(plan, cache, options, dataset) as writer:
            runs.append(extract_model(plan, writer, options))
    return runs


def plan_run(records: Sequence[Record], models: Sequence[str], cache: str | os.PathLike,
             options: ExtractOptions) -> list[ModelPlan]:
    """Resolve and validate everything for every model before loading a model or writing anything:
    the inputs, the model options, the cache (its folder, its file, the options of a stored model)."""
    records = check_records(records, models, options)
    check_options(options.options, models)
    check_can_append(cache)  # the output path, before any model is built
    plans = [plan_model(name, records, options) for name in models]
    for plan in plans:
        check_cache_target(cache, plan, options)
        for sid, reason in plan.invalid.items():
            log.warning("skipped %s: %s", sid, reason)
    return plans


def provenance_options(plan: ModelPlan, options: ExtractOptions) -> dict:
    """The options recorded in the cache (and compared on resume), without the weights' identity,
    which needs the loaded model."""
    return {"pool": plan.pool, "token_layers": list(plan.token_layers), "store_dtype": options.store_dtype,
            "dtype": plan.adapter.dtype, "model": dict(plan.adapter.options)}


def check_cache_target(cache: str | os.PathLike, plan: ModelPlan, options: ExtractOptions) -> None:
    """Refuse, before any model loads, what the cache writer would refuse after: a missing
    folder, a path that is not a cache, a read-only cache, a stored model with other options."""
    check_can_append(cache, plan.key, options=provenance_options(plan, options), layers=plan.pooled_layers,
                     token_layers=list(plan.token_layers), dtype=options.store_dtype, overwrite=options.overwrite)


def model_writer(plan: ModelPlan, cache: str | os.PathLike, options: ExtractOptions,
                 dataset: dict | None = None) -> CacheWriter:
    """Load the model's weights and open its writer on ``cache`` with the provenance of this run:
    the adapter's, the options (with the weights' identity), the device and the data set, if any."""
    with progress(total=1, desc=f"{plan.key}: loading weights", unit="model", quiet=options.quiet) as bar:
        load_model(plan.adapter)
        bar.update(1)
    prov = dict(plan.adapter.provenance())
    prov["input_layers"] = [x for x in plan.adapter.input_layers() if x in (*plan.pooled_layers, *plan.token_layers)]
    if dataset is not None:
        prov["dataset"] = dataset
    prov["options"] = {**provenance_options(plan, options), "weights": _weights_identity(prov)}
    prov["device"] = plan.adapter.device
    return CacheWriter(cache, plan.key, provenance=prov, layers=plan.pooled_layers, token_layers=plan.token_layers,
                       dtype=options.store_dtype, overwrite=options.overwrite,
                       compression=options.compression or CACHE_COMPRESSION)


@contextlib.contextmanager
def interrupts_between_batches():
    """Ctrl-C (SIGINT) takes effect between batches: the batch in progress finishes and is kept,
    then ``check()`` raises KeyboardInterrupt. Python's default handler raises wherever the
    interpreter is, and there it can be lost (inside a weakref callback) or turn into another error
    (inside the cache writer). A second Ctrl-C interrupts at once. Only in the main thread and over
    Python's default handler; elsewhere ``check`` does nothing."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: None
        return
    pending = []

    def on_sigint(signum, frame):
        pending.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def check():
        if pending:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def extract_model(plan: ModelPlan, writer: CacheWriter, options: ExtractOptions) -> ModelRun:
    """Extract one model's planned inputs into ``writer`` (from :func:`model_writer`), batch by batch.

    Samples the writer already holds with the same content hash are skipped; the rest are batched
    by length under ``options.batch_tokens`` (:func:`repalign.extract_batches.length_batches`, in the
    order of :func:`repalign.extract_batches.order_batches`), run through the loaded adapter
    (halving a batch on out-of-memory errors), pooled per sample, and appended: each batch is
    durable once appended. The single-process and the Dask paths both extract through here.
    """
    adapter = plan.adapter
    run = ModelRun(plan.key, list(plan.layers), invalid=dict(plan.invalid))
    todo, run.skipped_existing = split_stored(plan.records, writer.stored(), plan.key)
    if not todo:
        return run
    start = time.perf_counter()
    sizes = [adapter.size(r) for r in todo]
    with interrupts_between_batches() as check_interrupt, \
            progress(total=len(todo), desc=plan.key, unit="sample", quiet=options.quiet) as bar:
        for batch in order_batches(length_batches(todo, sizes, options.batch_tokens), sizes, adapter.device):
            kept = extract_batch(plan, [todo[i] for i in batch], writer, options, run)
            if kept:
                ntok = sum(sizes[batch[k]] for k in kept)
                run.stored += len(kept)
                run.tokens += ntok
                bar.set_postfix_str(f"{run.tokens / max(time.perf_counter() - start, 1e-9):,.0f} tokens/s", refresh=False)
                bar.update(len(kept))
            check_interrupt()
    run.seconds = time.perf_counter() - start
    return run


def extract_batch(plan: ModelPlan, records: list[Record], writer: CacheWriter, options: ExtractOptions,
                  run: ModelRun) -> list[int]:
    """Run one batch through the model, pool it, and append the samples with finite features to
    ``writer``; returns their positions in ``records`` (those left out are in ``run.invalid``)."""
    feats = forward_with_retry(plan.adapter, records, plan.layers, run.retries)
    if len(feats) != len(records):
        raise RepalignError(f"model {plan.key} returned {len(feats)} results for {len(records)} inputs")
    pooled_rows = [pool_features(f, plan.layers, plan.pool, r.id) for f, r in zip(feats, records)] \
        if plan.pool != "none" else []
    keep = _finite_samples(records, feats, pooled_rows, plan, options, run.invalid)
    if not keep:
        return keep
    recs, feats = [records[k] for k in keep], [feats[k] for k in keep]
    pooled_rows = [pooled_rows[k] for k in keep] if pooled_rows else []
    pooled = {l: np.stack([p[l] for p in pooled_rows]) for l in plan.layers} if pooled_rows else {}
    toks = {l: [np.asarray(f.tokens[l], dtype=np.float32) for f in feats] for l in plan.token_layers}
    writer.append([r.id for r in recs], [r.content_hash for r in recs], pooled, tokens=toks,
                  outputs=_collect_outputs(feats))
    return keep


def load_model(adapter: ModelAdapter) -> None:
    """Load the weights; a damaged checkpoint (truncated or foreign file) is a one-line error."""
    with weight_errors(adapter):
        adapter.ensure_loaded()


def _finite_samples(recs, feats, pooled_rows, plan: ModelPlan, options: ExtractOptions, invalid) -> list[int]:
    """Positions of the batch's samples whose features are finite in the storage dtype.

    A sample with NaN or overflowing values is named; with ``skip_invalid`` it is left out (and
    recorded in ``invalid``) and the rest of its batch is stored, otherwise the run stops.
    """
    dtype = np.dtype(options.store_dtype)
    keep = []
    for k, (r, f) in enumerate(zip(recs, feats)):
        arrays = [(f"pooled layer {l}", v) for l, v in (pooled_rows[k].items() if pooled_rows else ())]
        arrays += [(f"token layer {l}", f.tokens.get(l)) for l in plan.token_layers]
        reason = next((f"{r.id}: {what} holds NaN or values beyond the {dtype.name} range"
                       for what, values in arrays if not _finite_in(values, dtype)), None)
        if reason is None:
            keep.append(k)
        elif options.skip_invalid:
            invalid[r.id] = reason
            log.warning("skipped %s", reason)
        else:
            raise InvalidInput(f"{reason}; the model failed on this input: check it, or pass skip_invalid=True", r.id)
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
