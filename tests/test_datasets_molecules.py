"""CCD molecules: filters checked against biotite's own per-component reader, seeds, provenance."""

from __future__ import annotations

import numpy as np
import pytest

from repalign.datasets.molecules import ccd_molecules
from repalign.errors import RepalignError

SET = ccd_molecules(60, seed=7)


def test_molecules_pass_the_filters_checked_independently():
    import warnings

    import biotite.structure.info as info
    from ase.neighborlist import natural_cutoffs, neighbor_list
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    assert len(SET) == 60 and len({r.content_hash for r in SET}) == 60
    for record in SET.records[:25]:
        atoms = record.payload
        assert set(atoms.get_chemical_symbols()) <= {"H", "C", "N", "O"} and 8 <= len(atoms) <= 64
        assert not atoms.pbc.any()
        # the coordinates are the CCD's ideal ones, read here through biotite's public per-residue reader
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = info.residue(record.id)
        assert list(ref.element) == atoms.get_chemical_symbols() and (ref.charge == 0).all()
        np.testing.assert_allclose(atoms.positions, ref.coord - ref.coord.mean(axis=0), atol=1e-4)
        # one molecule: the bond graph from interatomic distances is connected
        i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.1))
        graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(atoms), len(atoms)))
        assert connected_components(graph, directed=False)[0] == 1


def test_seed_and_size_determine_the_set_and_are_recorded():
    again = ccd_molecules(60, seed=7)
    assert again.content_hash == SET.content_hash and again.ids == SET.ids
    other = ccd_molecules(60, seed=8)
    assert other.content_hash != SET.content_hash
    prov = SET.provenance()
    assert (prov["builder"], prov["seed"], prov["size"]) == ("ccd_molecules", 7, 60)
    assert prov["content_hash"] == SET.content_hash and prov["source"]["biotite"]
    table = SET.table()
    assert list(table.id) == SET.ids and (table.n_atoms == [r.size for r in SET]).all()
    head = SET.head(10)
    assert head.ids == SET.ids[:10] and head.provenance()["params"]["first_of"] == 60


def test_bad_arguments_are_one_line_errors():
    for kwargs, match in (({"size": 0}, "positive"), ({"size": 10**6}, "at most"), ({"size": 5, "seed": -1}, "seed"),
                          ({"size": 5, "min_atoms": 9, "max_atoms": 8}, "min_atoms")):
        with pytest.raises(RepalignError, match=match):
            ccd_molecules(**kwargs)
