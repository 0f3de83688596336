"""AFLOW crystals with substitutions: symmetry of the prototype kept, chemistry and geometry sane, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from repalign.datasets.crystals import ELEMENTS, aflow_crystals
from repalign.errors import RepalignError

SET = aflow_crystals(400, seed=3)


def test_crystals_are_distinct_and_use_known_elements():
    table = SET.table()
    assert len(SET) == 400 and table.id.is_unique and len({r.content_hash for r in SET}) == 400
    assert set(table.source) == {"ase", "aflow", "substituted"}
    assert table.prototype.nunique() > 150 and table.formula.nunique() > 250
    for record in SET:
        assert set(record.payload.get_chemical_symbols()) <= set(ELEMENTS) and record.payload.pbc.all()
        assert record.size == table.n_atoms[SET.ids.index(record.id)]


def _prototype_groups() -> dict[str, int]:
    """AFLOW label -> space group of the prototype as pymatgen ships it (spglib, symprec 0.01), read
    through pymatgen's own loader (its decoded library), not the builder's reading of the file."""
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return {e["tags"]["aflow"]: SpacegroupAnalyzer(e["snl"].structure, symprec=0.01).get_space_group_number()
            for e in AFLOW_PROTOTYPE_LIBRARY}


def test_substitution_keeps_the_prototype_space_group():
    """A substituted crystal has its prototype's space group (spglib, independent of the builder), which is
    the group of the AFLOW label for all but a few prototypes as shipped."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    groups = _prototype_groups()
    assert sum(groups[label] == int(label.split("_")[2]) for label in groups) > 0.95 * len(groups)
    table = SET.table()
    rows = table[table.source == "substituted"].head(40)
    assert len(rows) == 40
    for row in rows.itertuples():
        structure = AseAtomsAdaptor.get_structure(SET[SET.ids.index(row.id)].payload)
        assert SpacegroupAnalyzer(structure, symprec=0.01).get_space_group_number() == groups[row.prototype], row.id


def test_geometry_is_physical_and_ionic_substitutions_are_charge_balanced():
    from ase.data import covalent_radii
    from pymatgen.core import Composition

    table = SET.table()
    balanced = 0
    for record, row in zip(SET, table.itertuples()):
        atoms = record.payload
        if len(atoms) > 1:
            d = atoms.get_all_distances(mic=True)
            np.fill_diagonal(d, np.inf)
            r = covalent_radii[atoms.numbers]
            if row.source == "substituted":
                assert (d >= 0.7 * (r[:, None] + r[None, :]) - 1e-9).all(), row.id
        if row.source == "substituted":
            balanced += bool(Composition(row.formula).oxi_state_guesses())
    # most prototypes are ionic; group substitutions of intermetallics need not have a valence guess
    assert balanced > 0.5 * (table.source == "substituted").sum()


def test_seed_determines_the_set():
    assert aflow_crystals(400, seed=3).content_hash == SET.content_hash
    assert aflow_crystals(400, seed=4).content_hash != SET.content_hash
    small = aflow_crystals(20, seed=0)
    assert len(small) == 20 and set(small.table().source) <= {"ase", "aflow"}
    with pytest.raises(RepalignError, match="max_atoms"):
        aflow_crystals(10, max_atoms=0)
