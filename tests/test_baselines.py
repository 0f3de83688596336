"""Domain-knowledge baselines: numbers against independent references, invariances, cache level."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from repalign.errors import RepalignError
from repalign.inputs import sequence_record, structure_record
from repalign.models import get_adapter

SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "EVQLVESGGGLVQPGGSLRLSCAAS:DIQMTQSPSSLSASVGDRVTITC"]


def _rows(model, records, layer, **options):
    adapter = get_adapter(model, **options)
    adapter.ensure_loaded()
    for r in records:
        adapter.validate(r)
    return [f.tokens[layer] for f in adapter.forward(records, [layer])]


def _ethanol():
    from ase.build import molecule

    return structure_record("ethanol", molecule("CH3CH2OH"))


def test_sequence_compositions_match_counts():
    records = [sequence_record(f"s{i}", s) for i, s in enumerate(SEQUENCES)]
    for record, aa, k2, k3 in zip(records, _rows("aa-composition", records, "aa"),
                                  _rows("kmer-composition", records, "k2"), _rows("kmer-composition", records, "k3")):
        residues = record.payload.replace(":", "")
        assert aa.shape == (len(residues), 20) and k2.shape[0] == k3.shape[0] == len(residues)
        alphabet = "ACDEFGHIKLMNPQRSTVWY"
        counts = Counter(residues)
        np.testing.assert_array_equal(aa.sum(axis=0), [counts[a] for a in alphabet])
        for k, rows in ((2, k2), (3, k3)):
            kmers = Counter(c[i:i + k] for c in record.chains for i in range(len(c) - k + 1))  # not across chains
            got = {"".join(alphabet[(j // 20 ** (k - 1 - p)) % 20] for p in range(k)): v
                   for j, v in enumerate(rows.sum(axis=0)) if v}
            assert got == dict(kmers)


def test_blosum62_rows_match_biopython():
    from Bio.Align import substitution_matrices

    reference = substitution_matrices.load("BLOSUM62")
    record = sequence_record("s", "ACDEFGHIKLMNPQRSTVWY")
    rows = _rows("blosum62", [record], "blosum62")[0]
    for i, a in enumerate(record.payload):
        assert rows[i].tolist() == [reference[a][b] for b in "ACDEFGHIKLMNPQRSTVWY"]


def test_onehot_positions_give_back_the_sequence():
    record = sequence_record("s", SEQUENCES[1])
    rows = _rows("onehot", [record], "onehot", max_length=40)[0]
    assert rows.shape == (len(record.payload) - 1, 2 * 40 * 20) and (rows.sum(axis=1) == 1).all()
    decoded = {}
    for column in np.flatnonzero(rows.sum(axis=0)):
        chain, rest = divmod(int(column), 40 * 20)
        position, residue = divmod(rest, 20)
        decoded[(chain, position)] = "ACDEFGHIKLMNPQRSTVWY"[residue]
    for c, chain in enumerate(record.chains):
        assert "".join(decoded[(c, p)] for p in range(len(chain))) == chain
    with pytest.raises(RepalignError, match="at most 10"):
        get_adapter("onehot", max_length=10).validate(record)


def test_elements_mean_is_the_composition():
    record = _ethanol()
    rows = _rows("elements", [record], "elements")[0]
    counts = Counter(record.payload.numbers.tolist())
    composition = rows.mean(axis=0)
    for z in range(1, 95):
        assert composition[z - 1] == pytest.approx(counts.get(z, 0) / len(record.payload))


def test_soap_and_acsf_are_invariant_to_rotation_translation_and_atom_order():
    record = _ethanol()
    atoms = record.payload.copy()
    atoms.rotate(37, (1, 2, 3), center="COM")
    atoms.translate((3.0, -1.0, 2.0))
    order = np.random.default_rng(0).permutation(len(atoms))
    moved = structure_record("moved", atoms[order])
    for model in ("soap", "acsf"):
        a, b = _rows(model, [record, moved], model)
        np.testing.assert_allclose(b, a[order], rtol=1e-6, atol=1e-8 * np.abs(a).max())
        assert np.linalg.matrix_rank(a) > 1  # atoms in different environments differ


def test_soap_of_a_supercell_repeats_the_cell():
    from ase.build import bulk

    cell = bulk("NaCl", "rocksalt", a=5.64)
    super_ = cell.repeat((2, 2, 2))
    a, b = _rows("soap", [structure_record("c", cell), structure_record("s", super_)], "soap", species="Na,Cl")
    for i, z in enumerate(super_.numbers):
        np.testing.assert_allclose(b[i], a[list(cell.numbers).index(z)], rtol=1e-6, atol=1e-10)
    with pytest.raises(RepalignError, match="species"):
        get_adapter("soap").validate(structure_record("c", cell))  # default species H, C, N, O


def test_morgan_rows_sum_to_rdkits_fingerprint_of_the_same_molecule():
    """Ethanol has single bonds only, so the fingerprint from 3D connectivity equals RDKit's from SMILES."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    record = _ethanol()
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    for radius in (0, 1, 2):
        rows = _rows("morgan", [record], f"morgan.r{radius}")[0]
        reference = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=2048).GetCountFingerprintAsNumPy(mol)
        np.testing.assert_array_equal(rows.sum(axis=0), reference)
        assert rows.shape[0] == len(record.payload)


def test_baselines_are_stored_with_level_baseline(tmp_path):
    from embeddings_cache import Cache
    from repalign.datasets.antibodies import repertoire_records
    from repalign.extract import extract

    data = repertoire_records(4, seed=0)
    cache = tmp_path / "c.h5"
    extract(data, ["aa-composition", "blosum62"], cache, quiet=True)
    with Cache(cache) as c:
        for model in ("aa-composition", "blosum62"):
            prov = c.provenance(model)
            assert prov["level"] == "baseline"
            assert prov["dataset"] == data.provenance()
        composition = c.read_layer("aa-composition", "aa", ids=data.ids)
    for row, record in zip(composition, data):
        residues = record.payload.replace(":", "")
        assert row[0] == pytest.approx(residues.count("A") / len(residues))


def test_options_are_checked():
    with pytest.raises(RepalignError, match="unknown option"):
        get_adapter("elements", r_cut=3)
    with pytest.raises(RepalignError, match="species"):
        get_adapter("soap", species="H,Qq")
    with pytest.raises(RepalignError, match="compression"):
        get_adapter("soap", compression="zip")
    with pytest.raises(RepalignError, match="fp_size"):
        get_adapter("morgan", fp_size=3)
