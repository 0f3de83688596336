import hashlib

import numpy as np
import pytest

from repalign.errors import RepalignError
from repalign.inputs import read_inputs, structure_record


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_fasta_ids_sequences_chains_and_hashes(tmp_path):
    p = write(tmp_path, "x.fasta", ">ab1 heavy/light pair\nEVQLV\nESGG:DIQM\nTQ\n\n>p2\nmkt aYi\n")
    recs = read_inputs(p)
    assert [r.id for r in recs] == ["ab1", "p2"]
    assert recs[0].payload == "EVQLVESGG:DIQMTQ"
    assert recs[0].chains == ["EVQLVESGG", "DIQMTQ"]
    assert recs[0].size == 15
    assert recs[1].payload == "MKTAYI"  # whitespace removed, upper-cased
    assert recs[1].content_hash == hashlib.sha256(b"MKTAYI").hexdigest()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "no sequences"),
        ("MKT\n>a\nMKT\n", "before any '>'"),
        (">a\n>b\nMKT\n", "'a' is empty"),
        (">a\nMKT:\n", "empty chain"),
        (">\nMKT\n", "no id"),
        (">a\nMK\n>a\nMKT\n", "duplicate sample ids: a"),
    ],
)
def test_bad_fasta_is_one_line_error(tmp_path, text, fragment):
    p = write(tmp_path, "bad.fasta", text)
    with pytest.raises(RepalignError, match=fragment) as info:
        read_inputs(p)
    assert "\n" not in str(info.value)


def test_csv_sequences_and_bad_columns(tmp_path):
    p = write(tmp_path, "s.csv", "id,sequence\nx,MKT\ny,GGA:CCD\n")
    recs = read_inputs(p)
    assert [(r.id, r.payload) for r in recs] == [("x", "MKT"), ("y", "GGA:CCD")]
    with pytest.raises(RepalignError, match="'id' column"):
        read_inputs(write(tmp_path, "t.csv", "name,seq\nx,MKT\n"))
    with pytest.raises(RepalignError, match="empty sequence"):
        read_inputs(write(tmp_path, "u.csv", "id,sequence\nx,\n"))


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(RepalignError, match="no such file"):
        read_inputs(tmp_path / "nope.fasta")


def test_structures_folder_multiframe_and_hash(tmp_path):
    ase = pytest.importorskip("ase")
    from ase.build import bulk, molecule
    import ase.io

    folder = tmp_path / "s"
    folder.mkdir()
    ase.io.write(folder / "si.extxyz", bulk("Si", "diamond", a=5.43))
    ase.io.write(folder / "mols.extxyz", [molecule("H2O"), molecule("CH4")])
    recs = read_inputs(folder)
    assert [r.id for r in recs] == ["mols:0", "mols:1", "si"]
    assert [r.size for r in recs] == [3, 5, 2]
    # the hash follows the content: a moved atom changes it, a re-read does not
    again = read_inputs(folder)
    assert [r.content_hash for r in again] == [r.content_hash for r in recs]
    moved = recs[2].payload.copy()
    moved.positions[0] += np.array([0.01, 0.0, 0.0])
    assert structure_record("si", moved).content_hash != recs[2].content_hash


def test_unreadable_structure_is_clear(tmp_path):
    pytest.importorskip("ase")
    p = write(tmp_path, "junk.cif", "this is not a cif file\n")
    with pytest.raises(RepalignError, match="junk.cif: cannot read as a structure"):
        read_inputs(p)


def test_extxyz_frames_keep_their_own_ids(tmp_path):
    pytest.importorskip("ase")
    from ase.build import molecule
    import ase.io

    water, methane = molecule("H2O"), molecule("CH4")
    water.info["id"] = "water"
    ase.io.write(tmp_path / "m.extxyz", [water, methane])
    assert [r.id for r in read_inputs(tmp_path / "m.extxyz")] == ["water", "m:1"]


def test_skip_invalid_skips_files_of_a_structure_folder_that_are_not_structures(tmp_path, caplog):
    pytest.importorskip("ase")
    import ase.io
    from ase.build import bulk

    folder = tmp_path / "crystals"
    folder.mkdir()
    ase.io.write(folder / "cu.extxyz", bulk("Cu", a=3.6))
    (folder / "README.md").write_text("crystals for the paper\n")
    with pytest.raises(RepalignError, match="README.md"):
        read_inputs(folder)
    records = read_inputs(folder, skip_invalid=True)
    assert [r.id for r in records] == ["cu"]
    assert "README.md" in caplog.text
    # a file given by name is never skipped: the user asked for it
    with pytest.raises(RepalignError, match="README.md"):
        read_inputs(folder / "README.md", skip_invalid=True)
