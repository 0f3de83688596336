"""Helpers the interatomic-potential adapters (CHGNet, SevenNet, DIEP, ANI) share: availability and
dtype checks, structure checks, layer checks and splitting batch features per structure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Collection, Mapping, Sequence

import numpy as np

from repalign.errors import InvalidInput, RepalignError
from repalign.inputs import Record
from repalign.models._common import missing_modules, raise_if_unavailable

if TYPE_CHECKING:
    from repalign.models.base import ModelAdapter

EXTRA_HINT = "needs the 'zoo' extra: pip install 'repalign[zoo]'"


def missing_package_reason(*packages: str) -> str | None:
    """``unavailable_reason`` of a potential needing ``packages``: names the first missing one."""
    missing = missing_modules(*packages)
    return f"{missing[0]} is not installed; {EXTRA_HINT}" if missing else None


def check_loadable(adapter: ModelAdapter) -> None:
    """Before loading: the packages are installed and the dtype is float32 (all these potentials
    were trained and are run in float32)."""
    raise_if_unavailable(adapter)
    if adapter.dtype != "float32":
        raise RepalignError(f"model {adapter.info.name} runs in float32 only; drop --dtype {adapter.dtype}")


def check_layers(adapter: ModelAdapter, layers: Sequence[str]) -> None:
    unknown = [l for l in layers if l not in adapter.layer_names()]
    if unknown:
        raise RepalignError(f"unknown layer(s) {unknown} for {adapter.info.name}; choose from {adapter.layer_names()}")


def reject_empty(record: Record) -> None:
    if len(record.payload) == 0:
        raise InvalidInput(f"{record.id}: empty structure; remove it or give it atoms", record.id)


def reject_elements(record: Record, model: str, supported: Collection[int], supports: str) -> None:
    """InvalidInput naming the elements of ``record`` whose atomic number is not in ``supported``;
    ``supports`` describes the supported set in the message."""
    atoms = record.payload
    bad = sorted({s for s, z in zip(atoms.get_chemical_symbols(), atoms.numbers) if int(z) not in supported})
    if bad:
        raise InvalidInput(
            f"{record.id}: element(s) {', '.join(bad)} not supported by {model} "
            f"(supports {supports}); remove it or pass --skip-invalid",
            record.id,
        )


def reject_flat_cell(record: Record) -> None:
    """A periodic structure needs a cell of non-zero volume."""
    atoms = record.payload
    if np.asarray(atoms.pbc).any() and abs(atoms.cell.volume) < 1e-6:
        raise InvalidInput(f"{record.id}: periodic structure with a zero-volume cell; give it a full cell", record.id)


def energy_outputs(energy: float, n_atoms: int) -> dict[str, float]:
    """The outputs of a potential predicting a total energy (eV)."""
    return {"energy": energy, "energy_per_atom": energy / n_atoms}


def split_by_structure(features: Mapping[str, np.ndarray], layers: Sequence[str], counts: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Per structure, layer -> its (atoms, D) float32 rows of the batch's concatenated (sum(counts), D) features."""
    splits = np.cumsum(counts)[:-1]
    per_layer = {name: np.split(features[name], splits) for name in layers}
    return [{name: np.ascontiguousarray(per_layer[name][i], dtype=np.float32) for name in layers} for i in range(len(counts))]
