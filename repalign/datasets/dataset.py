"""A data set: records built by a seeded builder, with the provenance that identifies them.

Every builder in :mod:`repalign.datasets` is one function ``builder(size, seed=0, **params)`` that
returns a :class:`Dataset`. A dataset is a sequence of :class:`repalign.inputs.Record`, so it goes
wherever records go (``extract(dataset, ...)``); :func:`repalign.extract.extract` stores
:meth:`Dataset.provenance` (builder, seed, size, parameters, content hash, source versions) under
``"dataset"`` in each model's cache provenance.

The content hash is the SHA-256 of the records' ids and content hashes in order, so two datasets
with the same hash hold the same inputs under the same ids, whatever built them.
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from repalign.errors import RepalignError
from repalign.inputs import Record, check_unique_ids


def records_hash(records: Sequence[Record]) -> str:
    """SHA-256 over (id, content hash) of each record, in order."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.id.encode())
        h.update(b"\0")
        h.update(r.content_hash.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class Dataset(Sequence[Record]):
    """Records plus what built them.

    name:    builder name, e.g. ``ccd_molecules``
    seed, size: the builder's arguments (size = number of records)
    params:  the builder's other arguments (JSON-able)
    source:  where the data come from (package and version, file)
    annotations: per-record facts (one dict per record, same order), e.g. genes or prototype
    """

    name: str
    records: tuple[Record, ...]
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    annotations: tuple[dict[str, Any], ...] = ()

    def __post_init__(self):
        check_unique_ids(list(self.records))
        if self.annotations and len(self.annotations) != len(self.records):
            raise RepalignError(f"dataset {self.name}: {len(self.annotations)} annotations for {len(self.records)} records")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def size(self) -> int:
        return len(self.records)

    @property
    def content_hash(self) -> str:
        return records_hash(self.records)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def head(self, n: int) -> "Dataset":
        """The first ``n`` records as a dataset (``params['first_of']`` = this dataset's size), for a
        slow model run on a subset that its partners share."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= self.size:
            raise RepalignError(f"dataset {self.name}: head({n!r}); ask for 1 to {self.size} records")
        if n == self.size:
            return self
        return Dataset(self.name, self.records[:n], self.seed, {**self.params, "first_of": self.size}, dict(self.source),
                       self.annotations[:n] if self.annotations else ())

    def provenance(self) -> dict[str, Any]:
        """What identifies this dataset in a cache: builder, seed, size, parameters, content hash, source."""
        return {"builder": self.name, "seed": self.seed, "size": self.size, "params": dict(self.params),
                "content_hash": self.content_hash, "source": dict(self.source)}

    def table(self):
        """Per-record annotations as a DataFrame (column ``id`` first)."""
        import pandas as pd

        rows = self.annotations or tuple({} for _ in self.records)
        return pd.DataFrame([{"id": r.id, **a} for r, a in zip(self.records, rows)])


def check_size_seed(size, seed, what: str, largest: int | None = None) -> tuple[int, int]:
    """Validated (size, seed) of a builder call; one-line errors naming the fix."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise RepalignError(f"{what}: size must be a positive integer, got {size!r}")
    if largest is not None and int(size) > largest:  # int(): exact for an Integral, and typeshed's has no __gt__
        raise RepalignError(f"{what}: size={size} but only {largest} samples pass the filters; ask for at most {largest}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise RepalignError(f"{what}: seed must be a non-negative integer, got {seed!r}")
    return int(size), int(seed)


__all__ = ["Dataset", "check_size_seed", "records_hash"]
