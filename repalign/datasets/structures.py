"""Small real structure sets for the atomistic models, built from data that ASE ships.

- :func:`crystal_records`: 40 bulk crystals. 25 elemental crystals at ASE's reference lattice
  constants (``ase.data.reference_states``: experimental values collected by ASE) and 15 simple
  compounds at their experimental room-temperature lattice constants (rock salt, zinc blende,
  wurtzite, CsCl, fluorite, perovskite and rutile prototypes). Every element in the set is
  supported by CHGNet, SevenNet and DIEP. Ids are ``<formula>-<prototype>`` (``Cu-fcc``,
  ``NaCl-rocksalt``), primitive cells, fully periodic.
- :func:`molecule_records`: closed-shell H/C/N/O molecules of the G2 set (``ase.collections.g2``:
  the G2-1/G2-2 test sets of Curtiss et al., J. Chem. Phys. 106, 1063 (1997), MP2 geometries),
  with three or more atoms, so every molecule is valid for ANI-1x. Ids are the G2 names
  (``CH3CH2OH``, ``C6H6``); no cell, no periodicity.

Both return :class:`repalign.inputs.Record` objects in a fixed order, so ``n`` picks the same
structures on every machine. :func:`write_extxyz` and :func:`write_structure_folder` put them on
disk for the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from repalign.errors import RepalignError
from repalign.inputs import Record, structure_record

if TYPE_CHECKING:  # ase is imported lazily, when structures are built
    from ase import Atoms

#: elemental crystals; ``ase.build.bulk(symbol)`` takes the structure and lattice constant
#: from ASE's reference states
ELEMENTS = (
    "Li", "Na", "K", "Mg", "Al", "Si", "C", "Ge", "Ti", "V", "Cr", "Fe", "Co", "Ni", "Cu",
    "Zn", "Zr", "Nb", "Mo", "Pd", "Ag", "Ta", "W", "Pt", "Au",
)

#: compounds: (formula, ase crystalstructure, a, c) with experimental lattice constants in Angstrom
#: (room temperature; CRC Handbook of Chemistry and Physics, "Lattice constants" tables)
BINARY_COMPOUNDS = (
    ("NaCl", "rocksalt", 5.640, None),
    ("MgO", "rocksalt", 4.212, None),
    ("LiF", "rocksalt", 4.027, None),
    ("KCl", "rocksalt", 6.293, None),
    ("GaAs", "zincblende", 5.653, None),
    ("ZnS", "zincblende", 5.409, None),
    ("SiC", "zincblende", 4.360, None),
    ("BN", "zincblende", 3.615, None),
    ("CsCl", "cesiumchloride", 4.123, None),
    ("CaF2", "fluorite", 5.463, None),
    ("AlN", "wurtzite", 3.112, 4.982),
    ("ZnO", "wurtzite", 3.250, 5.207),
    ("GaN", "wurtzite", 3.189, 5.185),
)


def _perovskite_srtio3():
    from ase.spacegroup import crystal

    # cubic SrTiO3, Pm-3m, a = 3.905 A
    return crystal(
        ["Sr", "Ti", "O"], basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], spacegroup=221,
        cellpar=[3.905, 3.905, 3.905, 90, 90, 90],
    )


def _rutile_tio2():
    from ase.spacegroup import crystal

    # rutile TiO2, P4_2/mnm, a = 4.594 A, c = 2.959 A, oxygen u = 0.305
    return crystal(
        ["Ti", "O"], basis=[(0, 0, 0), (0.305, 0.305, 0)], spacegroup=136,
        cellpar=[4.594, 4.594, 2.959, 90, 90, 90],
    )


def _crystal_builders() -> list[tuple[str, Callable[..., Atoms]]]:
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    builders: list[tuple[str, Callable[..., Atoms]]] = []  # called without arguments
    for symbol in ELEMENTS:
        state = reference_states[atomic_numbers[symbol]]
        assert state is not None  # every element listed has an ASE reference state
        structure = state["symmetry"]
        builders.append((f"{symbol}-{structure}", lambda s=symbol: bulk(s)))
    for formula, structure, a, c in BINARY_COMPOUNDS:
        builders.append((f"{formula}-{structure}", lambda f=formula, s=structure, a=a, c=c: bulk(f, s, a=a, c=c)))
    builders.append(("SrTiO3-perovskite", _perovskite_srtio3))
    builders.append(("TiO2-rutile", _rutile_tio2))
    return builders


def _check_n(n: int | None, available: int, what: str) -> int:
    if n is None:
        return available
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= available:
        raise RepalignError(f"n={n!r}: ask for between 1 and {available} {what}")
    return int(n)


def crystal_records(n: int | None = None) -> list[Record]:
    """The first ``n`` (default: all 40) bulk crystals, elements first, then compounds."""
    builders = _crystal_builders()
    n = _check_n(n, len(builders), "crystals")
    records = []
    for id_, build in builders[:n]:
        atoms = build()
        atoms.info.clear()  # spacegroup metadata is not part of the structure
        atoms.set_initial_magnetic_moments(None)
        records.append(structure_record(id_, atoms))
    return records


def _g2_molecule_names() -> list[str]:
    from ase.collections import g2

    names = []
    for name in g2.names:
        atoms = g2[name]
        closed_shell = not np.any(atoms.get_initial_magnetic_moments())
        if closed_shell and len(atoms) >= 3 and set(atoms.get_chemical_symbols()) <= {"H", "C", "N", "O"}:
            names.append(name)
    return sorted(names, key=lambda name: (len(g2[name]), name))


def molecule_records(n: int | None = 30) -> list[Record]:
    """``n`` closed-shell H/C/N/O molecules of the G2 set (default 30), spread over all sizes.

    The candidates are sorted by (number of atoms, name) and ``n`` of them are taken at evenly
    spaced positions, so a small ``n`` still spans small and large molecules.
    """
    from ase.collections import g2

    names = _g2_molecule_names()
    n = _check_n(n, len(names), "molecules")
    picks = np.unique(np.round(np.linspace(0, len(names) - 1, n)).astype(int))
    records = []
    for i in picks:
        atoms = g2[names[i]]
        atoms.info.clear()
        atoms.set_initial_magnetic_moments(None)
        records.append(structure_record(names[i], atoms))
    return records


def write_extxyz(records: Sequence[Record], path: str | Path) -> Path:
    """Write structure records as one multi-frame extxyz file; each frame's ``id`` goes in its info.

    Reading the file back with :func:`repalign.inputs.read_inputs` names the frames ``<stem>:<i>``
    in this order; use :func:`write_structure_folder` to keep the ids as names.
    """
    import ase.io

    frames = []
    for record in _structure_records(records):
        atoms = record.payload.copy()
        atoms.info = {"id": record.id}
        frames.append(atoms)
    path = Path(path)
    ase.io.write(str(path), frames, format="extxyz")
    return path


def write_structure_folder(records: Sequence[Record], folder: str | Path) -> Path:
    """Write one ``<id>.extxyz`` file per record, so reading the folder gives back the same ids."""
    import ase.io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for record in _structure_records(records):
        ase.io.write(str(folder / f"{record.id}.extxyz"), record.payload, format="extxyz")
    return folder


def _structure_records(records: Sequence[Record]) -> list[Record]:
    records = list(records)
    if not records:
        raise RepalignError("no records to write; pass crystal_records() or molecule_records()")
    for record in records:
        if record.kind != "structure":
            raise RepalignError(f"{record.id}: is a {record.kind} record; only structures can be written to extxyz")
        if "/" in record.id or record.id.startswith("."):
            raise RepalignError(f"{record.id!r}: id cannot be a file name; rename it without '/' or a leading '.'")
    return records


__all__ = ["crystal_records", "molecule_records", "write_extxyz", "write_structure_folder"]
