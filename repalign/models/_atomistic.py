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
        raise RepalignError(f"model {adapter.info.name} runs in float32 only, not dtype={adapter.dtype!r}; pass dtype='float32'")


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
            f"(supports {supports}); remove it or pass skip_invalid=True",
            record.id,
        )


#: radius of the neighbour graphs these potentials build (CHGNet's atom graph: 6 A; SevenNet 5 A)
GRAPH_CUTOFF_A = 6.0
#: bounds of one structure's neighbour graph: real matter has under ~200 neighbours per atom within
#: 6 A (0.2 atoms per cubic A at most); a degenerate cell (one atom in a 0.3 A cube) asks for tens
#: of thousands per atom, and a potential's graph (with its bond triplets) then grows without end
MAX_NEIGHBOURS_PER_ATOM = 1000
MAX_GRAPH_EDGES = 10_000_000


def reject_flat_cell(record: Record) -> None:
    """A periodic structure needs a cell of non-zero volume, and one whose neighbour graph can be
    built (:func:`reject_dense_neighbour_graph`: every caller of this check builds one)."""
    atoms = record.payload
    if np.asarray(atoms.pbc).any() and abs(atoms.cell.volume) < 1e-6:
        raise InvalidInput(f"{record.id}: periodic structure with a zero-volume cell; give it a full cell", record.id)
    reject_dense_neighbour_graph(record)


def reject_dense_neighbour_graph(record: Record, cutoff: float = GRAPH_CUTOFF_A) -> None:
    """InvalidInput naming the sample when its periodic neighbour graph would exceed the bounds
    above. The count is estimated from the density, without building the graph: atoms per volume
    times the volume of the cutoff sphere is the mean number of neighbours (images included)."""
    atoms = record.payload
    if not np.asarray(atoms.pbc).any() or len(atoms) == 0:
        return  # no periodic images: at most atoms x (atoms - 1) edges, bounded by the structure itself
    volume = abs(float(atoms.cell.volume))
    per_atom = len(atoms) / volume * (4.0 / 3.0) * np.pi * cutoff**3
    edges = per_atom * len(atoms)
    if per_atom > MAX_NEIGHBOURS_PER_ATOM or edges > MAX_GRAPH_EDGES:
        raise InvalidInput(
            f"{record.id}: {len(atoms)} atom(s) in a {volume:.3g} A^3 cell would have about {per_atom:,.0f} "
            f"neighbours per atom within {cutoff:g} A ({edges:,.0f} graph edges; at most {MAX_NEIGHBOURS_PER_ATOM:,} "
            f"per atom and {MAX_GRAPH_EDGES:,} in all are built); check its cell and positions, or pass skip_invalid=True",
            record.id,
        )


def energy_outputs(energy: float, n_atoms: int) -> dict[str, float]:
    """The outputs of a potential predicting a total energy (eV)."""
    return {"energy": energy, "energy_per_atom": energy / n_atoms}


def split_by_structure(features: Mapping[str, np.ndarray], layers: Sequence[str], counts: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Per structure, layer -> its (atoms, D) float32 rows of the batch's concatenated (sum(counts), D) features."""
    splits = np.cumsum(counts)[:-1]
    per_layer = {name: np.split(features[name], splits) for name in layers}
    return [{name: np.ascontiguousarray(per_layer[name][i], dtype=np.float32) for name in layers} for i in range(len(counts))]
