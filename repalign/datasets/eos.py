"""Energy-volume scans of the Delta-codes elemental crystals, with their all-electron PBE equations of state.

Source (shipped inside ASE, no download): ``ase.collections.dcdft``, ASE's copy of the Delta-codes
DFT benchmark (Lejaeghere et al., "Reproducibility in density functional theory calculations of
solids", Science 351, aad3000 (2016); data from github.com/molmod/DeltaCodesDFT). It holds 71
elemental crystals, H to Rn without the lanthanides (and with Po and Rn), each the benchmark's
ground-state structure, and the WIEN2k all-electron PBE Birch-Murnaghan fit of each:

- ``wien2k_volume``: equilibrium volume V0 in A^3 per atom;
- ``wien2k_B``: bulk modulus B0 in GPa;
- ``wien2k_Bp``: its pressure derivative B1 (dimensionless).

The collection's cells are the benchmark's CIF geometries, close to but not at V0 (Cu: 12.03
against 11.95 A^3/atom); every record here is rescaled isotropically from them.

:func:`delta_eos` takes ``size`` elements (all 71 in order of atomic number by default; fewer: a
seeded draw, kept in order of atomic number) and gives, per element, ``points`` crystals whose
volume per atom is ``V0 * (1 + s)`` for ``s`` evenly spaced in ``[-span, +span]`` (the Delta
protocol: 7 points, +-6 %). Initial magnetic moments of the collection (Fe, Co, Ni, Cr, Mn, O: the
reference is spin-polarised) are kept on the atoms; the potentials here take none as input.

Ids: ``<element>__v<percent>`` (``Cu__v-6.0``, ``Cu__v+0.0``, ...). Annotations: ``element``,
``volume_change`` (s), ``volume_per_atom`` (A^3), ``n_atoms``, and the reference ``v0_ref`` (A^3/atom),
``b0_ref`` (GPa), ``b1_ref``.
"""

from __future__ import annotations

import numbers
from functools import lru_cache
from typing import Sequence

import numpy as np

from repalign.datasets.dataset import Dataset, check_size_seed
from repalign.errors import RepalignError
from repalign.inputs import Record, structure_record
from repalign.packages import package_version

POINTS = 7
SPAN = 0.06
REFERENCE = ("WIEN2k all-electron PBE, Delta-codes set (Lejaeghere et al., Science 351, aad3000 (2016)), "
             "ase.collections.dcdft")


@lru_cache(maxsize=1)
def _collection():
    from ase.collections import dcdft

    return dcdft


def reference_elements() -> tuple[str, ...]:
    """The elements of the collection, in its order (atomic number)."""
    return tuple(_collection().names)


def reference_eos(element: str) -> dict[str, float]:
    """The reference equation of state of ``element``: ``v0`` (A^3/atom), ``b0`` (GPa), ``b1``."""
    data = _collection().data
    if element not in data:
        raise RepalignError(f"delta_eos: no element {element!r} in the Delta-codes set; choose from "
                            f"{' '.join(reference_elements())}")
    row = data[element]
    return {"v0": float(row["wien2k_volume"]), "b0": float(row["wien2k_B"]), "b1": float(row["wien2k_Bp"])}


def scaled_crystal(element: str, volume_per_atom: float):
    """The collection's crystal of ``element`` scaled isotropically to ``volume_per_atom`` (A^3)."""
    if not (isinstance(volume_per_atom, numbers.Real) and volume_per_atom > 0):
        raise RepalignError(f"delta_eos: volume per atom must be positive, got {volume_per_atom!r}")
    reference_eos(element)  # names the element if unknown
    atoms = _collection()[element]
    atoms.info.clear()
    factor = (volume_per_atom * len(atoms) / atoms.get_volume()) ** (1.0 / 3.0)
    atoms.set_cell(atoms.cell.array * factor, scale_atoms=True)
    return atoms


def scan_record(element: str, volume_change: float) -> Record:
    """One record of the scan: ``element`` at ``V0 * (1 + volume_change)`` per atom."""
    v0 = reference_eos(element)["v0"]
    percent = round(100 * volume_change, 1) + 0.0  # + 0.0: no "-0.0" in an id
    return structure_record(f"{element}__v{percent:+.1f}", scaled_crystal(element, v0 * (1 + volume_change)))


def volume_changes(points: int = POINTS, span: float = SPAN) -> np.ndarray:
    """The ``points`` relative volume changes of a scan, evenly spaced in [-span, +span]."""
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 5:
        raise RepalignError(f"delta_eos: points must be an integer >= 5 (a Birch-Murnaghan fit has 4 parameters), got {points!r}")
    if not (isinstance(span, numbers.Real) and 0 < span < 0.5):
        raise RepalignError(f"delta_eos: span must be a fraction in (0, 0.5), e.g. 0.06 for +-6 %, got {span!r}")
    return np.linspace(-span, span, int(points))


def _choose(size, seed, elements: Sequence[str] | None) -> tuple[list[str], int]:
    pool = list(reference_elements()) if elements is None else list(dict.fromkeys(elements))
    for element in pool:
        reference_eos(element)
    size, seed = check_size_seed(len(pool) if size is None else size, seed, "delta_eos", largest=len(pool))
    if size == len(pool):
        chosen = pool
    else:
        picks = np.sort(np.random.default_rng(seed).choice(len(pool), size=size, replace=False))
        chosen = [pool[i] for i in picks]
    order = {e: i for i, e in enumerate(reference_elements())}
    return sorted(chosen, key=order.__getitem__), seed  # every element passed reference_eos above


def delta_eos(size: int | None = None, seed: int = 0, *, elements: Sequence[str] | None = None,
              points: int = POINTS, span: float = SPAN) -> Dataset:
    """Energy-volume scans of ``size`` Delta-codes elemental crystals (module docstring).

    size:     number of elements (default: all of ``elements``); fewer than available: a seeded draw
    elements: the elements to draw from (default: all 71 of the collection)
    points, span: the scan, ``points`` volumes per atom ``V0 * (1 + s)``, s in [-span, +span]
    """
    changes = volume_changes(points, span)
    chosen, seed = _choose(size, seed, elements)
    records, notes = [], []
    for element in chosen:
        ref = reference_eos(element)
        for s in changes:
            record = scan_record(element, float(s))
            records.append(record)
            notes.append({"element": element, "volume_change": round(float(s), 6), "volume_per_atom": ref["v0"] * (1 + s),
                          "n_atoms": len(record.payload), "v0_ref": ref["v0"], "b0_ref": ref["b0"], "b1_ref": ref["b1"]})
    return Dataset(
        name="delta_eos", records=tuple(records), seed=seed,
        params={"elements": chosen, "points": int(points), "span": float(span)},
        source={"data": REFERENCE, "ase": package_version("ase")},
        annotations=tuple(notes),
    )


__all__ = ["POINTS", "REFERENCE", "SPAN", "delta_eos", "reference_elements", "reference_eos", "scaled_crystal",
           "scan_record", "volume_changes"]
