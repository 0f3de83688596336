"""What a comparison scores, layer by layer: arrays in memory, or picklable references to cache
layers read whole or in row blocks (out of core, or on the Dask worker that needs them).

:class:`CacheLayer` is one pooled layer restricted to some samples; :class:`TokenLayer` one token
layer restricted to :class:`TokenRows` (which rows, subsampled or pooled by group). Both have
``read()`` and ``blocks(block_rows)``; :func:`engine_source` turns either into what
:func:`repalign.metrics.engine.layer_state` reads. Nothing here needs Dask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from embeddings_cache import Cache


@dataclass(frozen=True)
class CacheLayer:
    """A picklable reference to one pooled layer in a cache, read on the worker that needs it.

    ids: the samples (in this order) to read, e.g. from ``embeddings_cache.align_ids``; None = all, stored order.
    """

    path: str
    model: str
    layer: str
    ids: tuple | None = None
    # The rows of ``ids``, looked up on the first pass of blocks() and reused by the next passes.
    _rows: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def n_rows(self) -> int:
        if self.ids is not None:
            return len(self.ids)
        with Cache(self.path) as c:
            return c.n_samples(self.model)

    def read(self) -> np.ndarray:
        with Cache(self.path) as c:
            return c.read_layer(self.model, self.layer, ids=None if self.ids is None else list(self.ids))

    def blocks(self, block_rows: int = 65536) -> Iterator[np.ndarray]:
        with Cache(self.path) as c:
            if self.ids is None:
                yield from c.iter_row_blocks(self.model, self.layer, block_rows)
            else:
                rows = self._rows.get("rows")
                if rows is None:
                    rows = self._rows["rows"] = c.sample_rows(self.model, list(self.ids))
                for s in range(0, len(rows), block_rows):
                    yield c.read_layer_rows(self.layer, rows, s, s + block_rows)


@dataclass(frozen=True)
class TokenRows:
    """Which rows of the shared samples' stored token layers a comparison uses, and how.

    ids: the samples, in order; counts: stored token rows of each sample; keep: sorted indices of
    the stored rows kept (a uniform subsample; None = all); groups: per stored row, the index of its
    group within its sample (rows of a group are mean-pooled into one row; None = no pooling);
    offsets (n+1,): the rows of each sample after selection and pooling.
    """

    ids: tuple
    counts: np.ndarray
    keep: np.ndarray | None = None
    groups: np.ndarray | None = None
    offsets: np.ndarray = None  # type: ignore[assignment]  # always given (_token_rows); the default only follows field order
    stored: np.ndarray = field(init=False, repr=False)  # (n+1,) first stored row of each sample

    def __post_init__(self):
        object.__setattr__(self, "stored", np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64))

    def transform(self, start: int, stop: int, data: np.ndarray) -> np.ndarray:
        """The rows used from samples start:stop, whose stored rows are ``data``."""
        lo, hi = self.stored[start], self.stored[stop]
        if self.keep is not None:
            a, b = np.searchsorted(self.keep, [lo, hi])
            data = data[self.keep[a:b] - lo]
        if self.groups is not None:
            sample = np.repeat(np.arange(stop - start), self.counts[start:stop])
            first = self.offsets[start:stop] - self.offsets[start]  # first output row of each sample
            target = first[sample] + self.groups[lo:hi]
            sums = np.zeros((int(self.offsets[stop] - self.offsets[start]), data.shape[1]), dtype=np.float64)
            np.add.at(sums, target, data)
            data = (sums / np.bincount(target, minlength=len(sums))[:, None]).astype(np.float32)
        return data


@dataclass(frozen=True)
class TokenLayer:
    """A reference to one token layer of a cache restricted to :class:`TokenRows`, read whole or in blocks."""

    path: str
    model: str
    layer: str
    rows: TokenRows

    def read(self) -> np.ndarray:
        return np.concatenate(list(self.blocks(None)), axis=0)

    def blocks(self, block_rows: int | None = 65536):
        """Row blocks of at most ``block_rows`` rows; samples are read a few at a time, so memory is
        bounded by ``block_rows`` rows plus the longest sample."""
        ids, counts = list(self.rows.ids), self.rows.counts
        with Cache(self.path) as c:
            start = 0
            while start < len(ids):
                stop, total = start + 1, counts[start]
                while block_rows is not None and stop < len(ids) and total + counts[stop] <= block_rows:
                    total += counts[stop]
                    stop += 1
                if block_rows is None:
                    stop = len(ids)
                data, _ = c.read_tokens(self.model, self.layer, ids=ids[start:stop])
                data = self.rows.transform(start, stop, data)
                step = block_rows or max(len(data), 1)
                for s in range(0, len(data), step):
                    yield data[s:s + step]
                start = stop


def engine_source(item, block_rows: int | None):
    """What the engine reads: the item itself (an array), or a reference's row blocks when computing out of core."""
    if block_rows is None or not hasattr(item, "blocks"):
        return item
    return lambda: item.blocks(block_rows)
