"""Small molecules with 3D coordinates from the PDB's Chemical Component Dictionary (CCD).

The CCD (wwPDB; ~49,000 components: ligands, cofactors, modified residues) ships inside
``biotite`` (``biotite.structure.info``, file ``components.bcif``), with idealised 3D coordinates
for every atom (hydrogens included, computed by the wwPDB from the component's chemistry). No
download is needed: ``pip install 'repalign[datasets]'``.

:func:`ccd_molecules` keeps the components that a molecular model can take as a neutral,
closed-shell, single molecule:

- released (``pdbx_release_status = REL``), non-polymer type (ligands, not amino acids or
  nucleotides, which are polymer linking components), ideal coordinates present for every atom
  (``pdbx_ideal_coordinates_missing_flag = N``, and finite coordinates);
- only the given elements (default H, C, N, O: the elements of ANI-1x); every atom's formal
  charge 0; the atoms form one connected molecule by the CCD's own bond table (no salts, no
  separate ions or waters); no two atoms closer than 0.7 A (a broken ideal geometry);
- ``min_atoms`` to ``max_atoms`` atoms, hydrogens included (default 8 to 64: drug-like sizes);
- one component per distinct (formula, bond graph) is kept: the first by CCD id, so
  stereoisomers and alternative names of the same graph do not count twice.

``size`` of them are drawn without replacement with ``numpy.random.default_rng(seed)``; ids are the
CCD component ids (e.g. ``ATP``). The candidates are sorted by id before the draw, so a seed gives
the same molecules on every machine with the same biotite (its version is in the provenance).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from repalign.datasets.dataset import Dataset, check_size_seed
from repalign.errors import RepalignError
from repalign.inputs import structure_record
from repalign.packages import package_version

ANI_ELEMENTS = ("H", "C", "N", "O")
MIN_ATOMS, MAX_ATOMS = 8, 64
MIN_DISTANCE = 0.7  # Angstrom: closer atoms mean the ideal coordinates are broken


def _ccd():
    try:
        from biotite.structure.info.ccd import get_ccd
    except ImportError:
        raise RepalignError("molecules from the Chemical Component Dictionary need biotite; "
                            "pip install 'repalign[datasets]'") from None
    return get_ccd()


def _column(category, name, dtype=None):
    col = category[name]
    return col.as_array(dtype) if dtype is not None else col.as_array()


@lru_cache(maxsize=4)
def _candidates(elements: tuple[str, ...], min_atoms: int, max_atoms: int) -> tuple[tuple, ...]:
    """(id, formula, symbols, positions) of every component that passes the filters, sorted by id."""
    ccd = _ccd()
    comp = ccd["chem_comp"]
    keep_comp = {}
    for cid, status, kind, missing, charge in zip(
        _column(comp, "id"), _column(comp, "pdbx_release_status"), _column(comp, "type"),
        _column(comp, "pdbx_ideal_coordinates_missing_flag"), _column(comp, "pdbx_formal_charge"),
    ):
        if status == "REL" and kind.lower() == "non-polymer" and missing == "N" and str(charge).strip() in ("0", "?"):
            keep_comp[str(cid)] = True

    atoms = ccd["chem_comp_atom"]
    comp_ids = _column(atoms, "comp_id")
    symbols = np.char.capitalize(_column(atoms, "type_symbol").astype(str))
    names = _column(atoms, "atom_id")
    charges = _column(atoms, "charge")
    xyz = np.stack([_column(atoms, f"pdbx_model_Cartn_{a}_ideal", float) for a in "xyz"], axis=1)
    bonds = ccd["chem_comp_bond"]
    bond_comp, bond_1, bond_2 = _column(bonds, "comp_id"), _column(bonds, "atom_id_1"), _column(bonds, "atom_id_2")
    bond_starts = _starts(bond_comp)

    allowed = set(elements)
    found = {}
    for cid, start, stop in _runs(comp_ids):
        cid = str(cid)
        n = stop - start
        if cid not in keep_comp or not min_atoms <= n <= max_atoms:
            continue
        sym = symbols[start:stop]
        if not set(sym) <= allowed:
            continue
        if any(str(c).strip() not in ("0", "?") for c in charges[start:stop]):
            continue
        pos = xyz[start:stop]
        if not np.isfinite(pos).all():
            continue
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        if d.min() < MIN_DISTANCE:
            continue
        span = bond_starts.get(cid)
        if span is None:
            continue
        index = {str(a): i for i, a in enumerate(names[start:stop])}
        edges = [(index.get(str(a)), index.get(str(b))) for a, b in zip(bond_1[span[0]:span[1]], bond_2[span[0]:span[1]])]
        if any(a is None or b is None for a, b in edges) or not _connected(n, edges):
            continue
        graph = _graph_key(sym, edges)
        if graph in found:
            continue
        found[graph] = (cid, _formula(sym), tuple(str(s) for s in sym), pos.copy())
    return tuple(sorted(found.values(), key=lambda c: c[0]))


def _runs(ids: np.ndarray):
    """(value, start, stop) of each run of equal consecutive values."""
    if len(ids) == 0:
        return
    change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(ids)]])
    for s, e in zip(starts, stops):
        yield ids[s], int(s), int(e)


def _starts(ids: np.ndarray) -> dict[str, tuple[int, int]]:
    return {str(v): (s, e) for v, s, e in _runs(ids)}


def _connected(n: int, edges) -> bool:
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        parent[find(a)] = find(b)
    return len({find(i) for i in range(n)}) == 1


def _graph_key(symbols, edges) -> tuple:
    """A canonical-enough key of a labelled graph: formula plus the sorted multiset of each atom's
    (element, sorted neighbour elements, sorted second-shell elements). Distinct graphs with equal
    keys are rare and only make the filter keep one fewer molecule."""
    neighbours: list[list[int]] = [[] for _ in symbols]
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    first = [tuple(sorted(symbols[j] for j in nb)) for nb in neighbours]
    shell = [(symbols[i], first[i], tuple(sorted(first[j] for j in neighbours[i]))) for i in range(len(symbols))]
    return (_formula(symbols), tuple(sorted(shell)))


def _formula(symbols) -> str:
    from collections import Counter

    counts = Counter(str(s) for s in symbols)
    order = [e for e in ("C", "H") if e in counts] + sorted(e for e in counts if e not in ("C", "H"))
    return "".join(f"{e}{counts[e] if counts[e] > 1 else ''}" for e in order)


def ccd_molecules(size: int = 1000, seed: int = 0, *, elements=ANI_ELEMENTS, min_atoms: int = MIN_ATOMS,
                  max_atoms: int = MAX_ATOMS) -> Dataset:
    """``size`` neutral single molecules from the CCD with ideal 3D coordinates (see the module docstring).

    Records are ``structure`` records (``ase.Atoms``, no cell, no periodicity), ids = CCD ids.
    Annotations: ``formula``, ``n_atoms``.
    """
    from ase import Atoms

    elements = tuple(sorted({str(e).capitalize() for e in elements}))
    if not elements:
        raise RepalignError("ccd_molecules: elements is empty; pass the elements your models support, e.g. H,C,N,O")
    if not 1 <= int(min_atoms) <= int(max_atoms):
        raise RepalignError(f"ccd_molecules: need 1 <= min_atoms <= max_atoms, got {min_atoms}, {max_atoms}")
    candidates = _candidates(elements, int(min_atoms), int(max_atoms))
    size, seed = check_size_seed(size, seed, "ccd_molecules", largest=len(candidates))
    picks = np.sort(np.random.default_rng(seed).choice(len(candidates), size=size, replace=False))
    records, notes = [], []
    for i in picks:
        cid, formula, symbols, pos = candidates[i]
        atoms = Atoms(symbols=list(symbols), positions=pos - pos.mean(axis=0), pbc=False)
        records.append(structure_record(cid, atoms))
        notes.append({"formula": formula, "n_atoms": len(symbols)})
    return Dataset(
        name="ccd_molecules", records=tuple(records), seed=seed,
        params={"elements": list(elements), "min_atoms": int(min_atoms), "max_atoms": int(max_atoms),
                "candidates": len(candidates)},
        source={"data": "wwPDB Chemical Component Dictionary (biotite.structure.info components.bcif)",
                "biotite": package_version("biotite")},
        annotations=tuple(notes),
    )


__all__ = ["ANI_ELEMENTS", "ccd_molecules"]
