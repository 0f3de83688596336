"""Domain-knowledge baselines for sequences: residue and k-mer composition, BLOSUM62 and one-hot profiles.

Each is stored in the cache as a model with ``level = baseline`` in its provenance, and gives one
row per residue (all chains, in order, as the sequence models do), so the pipeline's mean pooling
turns it into a per-sequence descriptor:

- ``aa-composition``: one-hot of the 20 standard amino acids; mean-pooled = amino-acid composition.
- ``kmer-composition``: layers ``k2`` and ``k3``: the one-hot of the 2-mer (400) and 3-mer (8000)
  starting at each residue within its chain (rows of the last residues of a chain, which start no
  k-mer, are zero); mean-pooled = k-mer counts over the length.
- ``blosum62``: each residue's row of the BLOSUM62 substitution matrix (Henikoff & Henikoff, PNAS 89,
  10915 (1992)); mean-pooled = the sequence's average substitution profile.
- ``onehot``: the one-hot of (chain, position, residue) for positions up to ``max_length`` (option,
  default 160) of each of up to 2 chains; mean-pooled (and l2-normalised, as the metrics do by
  default) it is the sequence's one-hot profile, unaligned: a position is the index from the chain
  start, so a CDR length change shifts the positions after it.

Inputs take the 20 standard residues only (an ``X`` has no BLOSUM62 row here and no one-hot slot).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np

from repalign.errors import RepalignError
from repalign.inputs import Record
from repalign.models._atomistic import check_layers
from repalign.models._sequence import STANDARD_AMINO_ACIDS, check_sequence_record
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures

INDEX = {aa: i for i, aa in enumerate(STANDARD_AMINO_ACIDS)}

#: BLOSUM62 (Henikoff & Henikoff 1992), rows and columns in the order of STANDARD_AMINO_ACIDS (ACDEFGHIKLMNPQRSTVWY)
BLOSUM62_ROWS = """
 4  0 -2 -1 -2  0 -2 -1 -1 -1 -1 -2 -1 -1 -1  1  0  0 -3 -2
 0  9 -3 -4 -2 -3 -3 -1 -3 -1 -1 -3 -3 -3 -3 -1 -1 -1 -2 -2
-2 -3  6  2 -3 -1 -1 -3 -1 -4 -3  1 -1  0 -2  0 -1 -3 -4 -3
-1 -4  2  5 -3 -2  0 -3  1 -3 -2  0 -1  2  0  0 -1 -2 -3 -2
-2 -2 -3 -3  6 -3 -1  0 -3  0  0 -3 -4 -3 -3 -2 -2 -1  1  3
 0 -3 -1 -2 -3  6 -2 -4 -2 -4 -3  0 -2 -2 -2  0 -2 -3 -2 -3
-2 -3 -1  0 -1 -2  8 -3 -1 -3 -2  1 -2  0  0 -1 -2 -3 -2  2
-1 -1 -3 -3  0 -4 -3  4 -3  2  1 -3 -3 -3 -3 -2 -1  3 -3 -1
-1 -3 -1  1 -3 -2 -1 -3  5 -2 -1  0 -1  1  2  0 -1 -2 -3 -2
-1 -1 -4 -3  0 -4 -3  2 -2  4  2 -3 -3 -2 -2 -2 -1  1 -2 -1
-1 -1 -3 -2  0 -3 -2  1 -1  2  5 -2 -2  0 -1 -1 -1  1 -1 -1
-2 -3  1  0 -3  0  1 -3  0 -3 -2  6 -2  0  0  1  0 -3 -4 -2
-1 -3 -1 -1 -4 -2 -2 -3 -1 -3 -2 -2  7 -1 -2 -1 -1 -2 -4 -3
-1 -3  0  2 -3 -2  0 -3  1 -2  0  0 -1  5  1  0 -1 -2 -2 -1
-1 -3 -2  0 -3 -2  0 -3  2 -2 -1  0 -2  1  5 -1 -1 -3 -3 -2
 1 -1  0  0 -2  0 -1 -2  0 -2 -1  1 -1  0 -1  4  1 -2 -3 -2
 0 -1 -1 -1 -2 -2 -2 -1 -1 -1 -1  0 -1 -1 -1  1  5  0 -2 -2
 0 -1 -3 -2 -1 -3 -3  3 -2  1  1 -3 -2 -2 -3 -2  0  4 -3 -1
-3 -2 -4 -3  1 -2 -2 -3 -3 -2 -1 -4 -4 -2 -3 -3 -2 -3 11  2
-2 -2 -3 -2  3 -3  2 -1 -2 -1 -1 -2 -3 -1 -2 -2 -2 -1  2  7
"""
BLOSUM62 = np.array([[int(v) for v in row.split()] for row in BLOSUM62_ROWS.strip().splitlines()], dtype=np.float32)


class _SequenceBaseline(ModelAdapter):
    """Sequence input (1 or 2 chains of standard residues), float32 rows, ``level = baseline``."""

    OPTIONS: ClassVar[tuple[str, ...] | None] = ()

    def load(self) -> None:
        if self.dtype != "float32":
            raise RepalignError(f"model {self.info.name} computes float32 features, not dtype={self.dtype!r}; pass dtype='float32'")

    def provenance(self) -> dict[str, Any]:
        return {"model": self.info.name, "family": self.info.family, "level": "baseline",
                "version": f"{self.info.name}:" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items())),
                "dtype": self.dtype, "device": self.device, "options": dict(self.options)}

    def validate(self, record: Record) -> None:
        check_sequence_record(record, self.info.name, STANDARD_AMINO_ACIDS, None, chains=(1, 2),
                              chain_hint=" (one chain, or HEAVY:LIGHT)")

    def chain_rows(self, chain: str, chain_index: int, layer: str) -> np.ndarray:
        raise NotImplementedError

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        self.ensure_loaded()
        check_layers(self, layers)
        return [SampleFeatures(tokens={layer: np.concatenate([self.chain_rows(c, i, layer) for i, c in enumerate(r.chains)])
                                       for layer in layers}) for r in records]


def _info(name: str, description: str) -> ModelInfo:
    return ModelInfo(name=name, family="baseline", modality="protein sequence", input_kind="sequence", extra="",
                     license="MIT (repalign)", weights="none: hand-crafted", description=description)


def _indices(chain: str) -> np.ndarray:
    return np.fromiter((INDEX[c] for c in chain), dtype=np.int64, count=len(chain))


class AminoAcidComposition(_SequenceBaseline):
    info = _info("aa-composition", "one-hot of each residue (20); mean-pooled = amino-acid composition")

    def layer_names(self) -> list[str]:
        return ["aa"]

    def chain_rows(self, chain, chain_index, layer):
        out = np.zeros((len(chain), 20), dtype=np.float32)
        out[np.arange(len(chain)), _indices(chain)] = 1.0
        return out


class KmerComposition(_SequenceBaseline):
    info = _info("kmer-composition", "one-hot of the 2-mer (k2) and 3-mer (k3) starting at each residue; mean-pooled = k-mer composition")

    def layer_names(self) -> list[str]:
        return ["k2", "k3"]

    def chain_rows(self, chain, chain_index, layer):
        k = int(layer[1:])
        idx = _indices(chain)
        out = np.zeros((len(chain), 20**k), dtype=np.float32)
        n = len(chain) - k + 1
        if n > 0:
            code = np.zeros(n, dtype=np.int64)
            for j in range(k):
                code = code * 20 + idx[j : j + n]
            out[np.arange(n), code] = 1.0
        return out


class Blosum62Profile(_SequenceBaseline):
    info = _info("blosum62", "each residue's BLOSUM62 row (20); mean-pooled = average substitution profile")

    def layer_names(self) -> list[str]:
        return ["blosum62"]

    def chain_rows(self, chain, chain_index, layer):
        return BLOSUM62[_indices(chain)].copy()


class OneHotPositions(_SequenceBaseline):
    info = _info("onehot", "one-hot of (chain, position, residue), positions from each chain start up to max_length (option, default 160)")
    OPTIONS = ("max_length",)

    def __init__(self, weights=None, device="cpu", dtype="float32", **options):
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        try:
            length = int(self.options.get("max_length", 160))
        except (TypeError, ValueError):
            length = 0
        if length < 1:
            raise RepalignError(f"model onehot: max_length={self.options.get('max_length')!r}; give a positive whole number")
        self.options["max_length"] = length

    def layer_names(self) -> list[str]:
        return ["onehot"]

    def validate(self, record: Record) -> None:
        check_sequence_record(record, self.info.name, STANDARD_AMINO_ACIDS, self.options["max_length"], chains=(1, 2),
                              chain_hint=" (one chain, or HEAVY:LIGHT)")

    def chain_rows(self, chain, chain_index, layer):
        length = self.options["max_length"]
        out = np.zeros((len(chain), 2 * length * 20), dtype=np.float32)
        columns = (chain_index * length + np.arange(len(chain))) * 20 + _indices(chain)
        out[np.arange(len(chain)), columns] = 1.0
        return out


__all__ = ["AminoAcidComposition", "BLOSUM62", "Blosum62Profile", "KmerComposition", "OneHotPositions"]
