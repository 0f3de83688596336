"""Batches, their order, out-of-memory retries and the dry-run plan of an extraction.

Used by :func:`repalign.extract.extract_model` for every model:

- :func:`length_batches`: samples sorted by length and grouped under a padded-token budget.
- :func:`order_batches`: on CUDA the batches run longest first, so a batch that does not fit in
  GPU memory fails in the first minute of a run, not at its end; elsewhere shortest first.
- :func:`forward_with_retry`: on ``torch.OutOfMemoryError`` the GPU cache is freed and the batch is
  split in halves, down to one sample; a sample that fails alone is a one-line error naming it, its
  size and the model's memory estimate. Features do not depend on the batch a sample runs in (the
  adapter contract), so a split run stores the same features as an unsplit one.
- :func:`plan_extraction` / :func:`format_plan` (``repalign extract --dry-run``): samples already
  cached, batches, token budget, memory estimate per batch, layers and disk size, with no weights
  loaded (adapters read their config only).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from embeddings_cache import Cache
from repalign.errors import RepalignError
from repalign.extract_options import ExtractOptions, ModelPlan, check_records, plan_model, split_stored
from repalign.inputs import Record
from repalign.models import ModelAdapter, SampleFeatures

log = logging.getLogger("repalign.extract")

STORE_BYTES = {"float32": 4, "float16": 2}


# ---- batches ----------------------------------------------------------------------------------------


def length_batches(records: Sequence[object], sizes: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped so that (longest size in batch) x (batch length) <= batch_tokens (only the
    number of ``records`` is used).

    Sorting by size first means each batch pads little; a single record longer than the budget
    forms a batch of its own.
    """
    if batch_tokens < 1:
        raise RepalignError(f"batch_tokens={batch_tokens!r} must be a positive whole number of tokens, e.g. 4096")
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


def order_batches(batches: Sequence[Sequence[int]], sizes: Sequence[int], device: str) -> list[list[int]]:
    """The batches in the order they run: on CUDA the largest first (by longest sample, then padded
    tokens), so an out-of-memory batch shows at once; on other devices as given (shortest first)."""
    lists = [list(b) for b in batches]
    if not str(device).startswith("cuda"):
        return lists
    return sorted(lists, key=lambda b: (-max(sizes[i] for i in b), -max(sizes[i] for i in b) * len(b)))


# ---- out-of-memory retries --------------------------------------------------------------------------


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "this batch does not fit": ``torch.OutOfMemoryError`` when
    torch is in use (CUDA, and the other accelerator back-ends that raise it); none otherwise."""
    torch = sys.modules.get("torch")
    error = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (error,) if error is not None else ()


def free_accelerator_memory() -> None:
    """Drop unreachable tensors and return the CUDA caching allocator's free blocks to the driver."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory_estimate_gb(adapter: ModelAdapter, sizes: Sequence[int]) -> float | None:
    """The adapter's own working-memory estimate for one batch (``estimate_gb``), None if it has none."""
    estimate = getattr(adapter, "estimate_gb", None)
    if estimate is None:
        return None
    try:
        return float(estimate(list(sizes)))
    except (RepalignError, ValueError, TypeError):
        return None


@dataclass
class Retry:
    """One split of a batch after an out-of-memory error."""

    ids: list[str]
    sizes: list[int]
    halves: tuple[int, int]
    estimate_gb: float | None
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {"ids": self.ids, "sizes": self.sizes, "halves": list(self.halves),
                "estimate_gb": self.estimate_gb, "error": self.error}


def forward_with_retry(adapter: ModelAdapter, records: Sequence[Record], layers: Sequence[str],
                       retries: list[Retry]) -> list[SampleFeatures]:
    """``adapter.forward(records, layers)``, split in halves on out-of-memory errors, down to one sample.

    Each split is appended to ``retries``. Raises RepalignError naming the sample when one sample
    alone does not fit.
    """
    records = list(records)
    oom = out_of_memory_errors()
    try:
        return adapter.forward(records, layers)
    except oom as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # Out of the except block: the traceback, and the tensors its frames hold, are released now.
    free_accelerator_memory()
    sizes = [adapter.size(r) for r in records]
    estimate = memory_estimate_gb(adapter, sizes)
    if len(records) == 1:
        r = records[0]
        known = f"estimated {estimate:.1f} GB" if estimate is not None else "no estimate for this model"
        raise RepalignError(
            f"{r.id}: out of memory on {adapter.device} even alone ({sizes[0]} tokens/atoms, {known}); "
            f"run it on a device with more memory, with dtype='bfloat16' where the model allows, or split the input")
    half = len(records) // 2
    retries.append(Retry([r.id for r in records], sizes, (half, len(records) - half), estimate, message))
    log.warning("out of memory on a batch of %d samples (%d tokens/atoms); retrying as %d + %d",
                len(records), sum(sizes), half, len(records) - half)
    return (forward_with_retry(adapter, records[:half], layers, retries)
            + forward_with_retry(adapter, records[half:], layers, retries))


# ---- dry run ----------------------------------------------------------------------------------------


@dataclass
class BatchPlan:
    ids: list[str]
    sizes: list[int]
    estimate_gb: float | None

    @property
    def padded_tokens(self) -> int:
        return max(self.sizes) * len(self.sizes)


@dataclass
class DryRunPlan:
    """What ``extract`` would do for one model, computed without loading its weights."""

    model: str
    device: str
    dtype: str
    batch_tokens: int
    layers: list[str]
    token_layers: list[str]
    pool: str
    valid: int
    invalid: dict[str, str]
    cached: int
    batches: list[BatchPlan] = field(default_factory=list)
    memory_limit_gb: float | None = None
    weights_gb: float | None = None
    pooled_bytes: int | None = None  # None: the model does not declare its layer widths
    token_bytes: int | None = None


def plan_extraction(records: Sequence[Record], models: Sequence[str], cache: str | os.PathLike,
                    settings: ExtractOptions | None = None, **fields: Any) -> list[DryRunPlan]:
    """The plan of ``extract`` with the same arguments (``repalign extract --dry-run``): validates
    every input as ``extract`` does, reads the cache (if any) without changing it, loads no weights.

    settings / fields: as for :func:`repalign.extract.extract` (``overwrite`` and ``quiet`` change nothing here).
    """
    options = ExtractOptions.build(settings, **fields)
    records = check_records(records, models, options)
    return [dry_run(plan_model(name, records, options), cache, options) for name in models]


def dry_run(plan: ModelPlan, cache: str | os.PathLike, options: ExtractOptions) -> DryRunPlan:
    """One model's batches in run order, memory estimates and disk size, from its plan and the cache."""
    adapter = plan.adapter
    todo, cached = split_stored(plan.records, stored_hashes(cache, plan.key), plan.key)
    sizes = [adapter.size(r) for r in todo]
    order = order_batches(length_batches(todo, sizes, options.batch_tokens), sizes, options.device) if todo else []
    out = DryRunPlan(plan.key, options.device, options.dtype, options.batch_tokens, list(plan.layers),
                     list(plan.token_layers), plan.pool, len(plan.records), plan.invalid, cached)
    for batch in order:
        bsizes = [sizes[i] for i in batch]
        out.batches.append(BatchPlan([todo[i].id for i in batch], bsizes, memory_estimate_gb(adapter, bsizes)))
    limit_fn = getattr(adapter, "memory_limit_gb", None)
    out.memory_limit_gb = float(limit_fn()) if limit_fn is not None else None
    weights_fn = getattr(adapter, "weights_gb", None)
    out.weights_gb = float(weights_fn()) if weights_fn is not None else None
    widths_fn = getattr(adapter, "layer_widths", None)
    if widths_fn is not None:
        widths = widths_fn()
        per_value = STORE_BYTES[options.store_dtype]
        out.pooled_bytes = len(todo) * sum(widths[name] for name in plan.pooled_layers) * per_value
        rows = getattr(adapter, "token_rows", lambda layer, size: size)
        out.token_bytes = sum(rows(name, s) * widths[name] for name in plan.token_layers for s in sizes) * per_value
    return out


def stored_hashes(cache: str | os.PathLike, model: str) -> dict[str, str]:
    """id -> content hash of ``model``'s samples in ``cache``; empty when the file or model is absent."""
    if not Path(cache).exists():
        return {}
    with Cache(cache) as c:
        if model not in c.models:
            return {}
        return dict(zip(c.ids(model), c.hashes(model)))


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e7 else f"{n_bytes / 1e6:.2f} MB"


def format_plan(plans: Sequence[DryRunPlan], cache: str | os.PathLike, max_batches: int = 20) -> str:
    """The dry-run report: one block per model, batches in run order."""
    lines = []
    for p in plans:
        todo = sum(len(b.ids) for b in p.batches)
        lines.append(f"{p.model} on {p.device} ({p.dtype}) -> {cache}")
        lines.append(f"  samples: {p.valid} valid, {p.cached} already cached, {todo} to extract"
                     + (f", {len(p.invalid)} invalid skipped" if p.invalid else ""))
        lines.append(f"  batches: {len(p.batches)} under a budget of {p.batch_tokens} padded tokens/atoms"
                     + (" (largest first: CUDA)" if p.device.startswith("cuda") else ""))
        limit = f", limit {p.memory_limit_gb:.1f} GB" if p.memory_limit_gb is not None else ""
        weights = f"; weights {_gb(p.weights_gb * 1e9)}" if p.weights_gb is not None else ""
        for i, b in enumerate(p.batches[:max_batches]):
            est = f", working memory ~{_gb(b.estimate_gb * 1e9)}" if b.estimate_gb is not None else ""
            over = " (over the limit: runs in parts)" if (
                b.estimate_gb is not None and p.memory_limit_gb is not None and b.estimate_gb > p.memory_limit_gb) else ""
            lines.append(f"    {i + 1:>4}: {len(b.ids)} sample{'s' if len(b.ids) != 1 else ''}, longest {max(b.sizes)}, "
                         f"{b.padded_tokens} padded{est}{over}")
        if len(p.batches) > max_batches:
            lines.append(f"    ... {len(p.batches) - max_batches} more batches")
        peak = max((b.estimate_gb for b in p.batches if b.estimate_gb is not None), default=None)
        if peak is not None:
            lines.append(f"  memory: largest batch ~{_gb(peak * 1e9)} working memory{limit}{weights}")
        elif weights:
            lines.append(f"  memory: no estimate for this model{weights}")
        lines.append(f"  layers stored: {len(p.layers) if p.pool != 'none' else 0} pooled ({p.pool}), "
                     f"{len(p.token_layers)} per token: {_names(p.layers)}")
        if p.pooled_bytes is not None:
            lines.append(f"  disk: ~{_gb(p.pooled_bytes)} pooled + {_gb(p.token_bytes or 0)} per-token features "
                         f"(uncompressed)")
        else:
            lines.append("  disk: unknown (this model does not declare its layer widths before loading)")
    return "\n".join(lines)


def _names(names: Sequence[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")
