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
    pytest.importorskip("ase")
    import ase.io
    from ase.build import bulk, molecule

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
    import ase.io
    from ase.build import molecule

    water, methane = molecule("H2O"), molecule("CH4")
    water.info["id"] = "water"
    ase.io.write(tmp_path / "m.extxyz", [water, methane])
    assert [r.id for r in read_inputs(tmp_path / "m.extxyz")] == ["water", "m:1"]


# ---- formats: gzip, TSV, byte-order mark, standard input -------------------------------------------


def test_gzipped_fasta_and_csv_read_like_plain_ones(tmp_path):
    import gzip

    plain = read_inputs(write(tmp_path, "p.fasta", ">a\nMKT\n>b\nGGA:CC\n"))
    (tmp_path / "z.fasta.gz").write_bytes(gzip.compress(b">a\nMKT\n>b\nGGA:CC\n"))
    assert read_inputs(tmp_path / "z.fasta.gz") == plain
    (tmp_path / "z.csv.gz").write_bytes(gzip.compress(b"id,sequence\na,MKT\nb,GGA:CC\n"))
    assert read_inputs(tmp_path / "z.csv.gz") == plain


def test_tsv_is_split_on_tabs(tmp_path):
    recs = read_inputs(write(tmp_path, "s.tsv", "id\tsequence\nx,1\tMKT\ny\tGGA\n"))
    assert [(r.id, r.payload) for r in recs] == [("x,1", "MKT"), ("y", "GGA")]


def test_csv_with_byte_order_mark(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("id,sequence\nx,MKT\n".encode("utf-8-sig"))
    assert p.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert [(r.id, r.payload) for r in read_inputs(p)] == [("x", "MKT")]
    f = tmp_path / "bom.fasta"
    f.write_bytes(">x\nMKT\n".encode("utf-8-sig"))
    assert [r.id for r in read_inputs(f)] == ["x"]


def test_csv_id_with_a_line_break_is_an_error(tmp_path):
    p = write(tmp_path, "nl.csv", 'id,sequence\n"x\ny",MKT\nz,GGA\n')
    with pytest.raises(RepalignError, match="line break") as info:
        read_inputs(p)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        (">a\nMKT\n>b\nGG\n", [("a", "MKT"), ("b", "GG")]),
        ("id,sequence\na,MKT\n", [("a", "MKT")]),
        ("id\tsequence\na,b\tMKT\n", [("a,b", "MKT")]),
    ],
)
def test_standard_input_in_a_real_subprocess(tmp_path, text, expected):
    import os
    import subprocess
    import sys

    code = "from repalign.inputs import read_inputs; print([(r.id, r.payload) for r in read_inputs('-')])"
    out = subprocess.run([sys.executable, "-c", code], input=text.encode("utf-8-sig"), capture_output=True,
                         env=dict(os.environ), check=True)
    assert out.stdout.decode().strip() == repr(expected)


def test_gzipped_structure_name_is_refused_clearly(tmp_path):
    import gzip

    (tmp_path / "s.cif.gz").write_bytes(gzip.compress(b"data_x\n"))
    with pytest.raises(RepalignError, match="gunzip"):
        read_inputs(tmp_path / "s.cif.gz")


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
