"""Input readers: FASTA, CSV and structure files become validated :class:`Record` objects.

Every record carries its id (from the input), its kind ("sequence" or "structure"), its payload and a
content hash, so a cache can tell a re-run on the same input from a changed input with the same id.

- FASTA: ``>id`` then the sequence; complexes (and antibody heavy/light pairs) are written with the
  chains joined by ``:``, as ColabFold does (``HEAVY:LIGHT``).
- CSV / TSV (by extension: ``.csv`` or ``.tsv``): an ``id`` column and either a ``sequence`` column
  or a ``path`` column (structure files, relative to the table). An id holding a line break is an
  error (it would not survive in any output table).
- FASTA, CSV and TSV may be gzipped (``x.fasta.gz``) and may start with a UTF-8 byte-order mark;
  ``-`` reads FASTA, CSV or TSV from standard input (told apart by the first character: ``>`` is
  FASTA, a tab in the header line is TSV, otherwise CSV).
- Structures: any format ASE reads (extxyz, CIF, POSCAR, PDB, ...), one file, a multi-frame file
  (ids from each frame's ``id`` key where extxyz has one, else ``stem:0``, ``stem:1``, ...), or a
  folder of such files.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from repalign.errors import RepalignError

log = logging.getLogger("repalign.inputs")

SEQUENCE_SUFFIXES = {".fasta", ".fa", ".faa", ".fas"}
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
STDIN = "-"


@dataclass(frozen=True)
class Record:
    """One input sample.

    kind: "sequence" (payload: str, chains joined by ':') or "structure" (payload: ase.Atoms).
    """

    id: str
    kind: str
    payload: Any
    content_hash: str

    @property
    def chains(self) -> list[str]:
        return self.payload.split(":") if self.kind == "sequence" else []

    @property
    def size(self) -> int:
        """Residues (all chains) or atoms."""
        if self.kind == "sequence":
            return sum(len(c) for c in self.chains)
        return len(self.payload)


def sequence_record(id_: str, sequence: str) -> Record:
    seq = "".join(sequence.split()).upper()
    return Record(id_, "sequence", seq, hashlib.sha256(seq.encode()).hexdigest())


def structure_record(id_: str, atoms) -> Record:
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    return Record(id_, "structure", atoms, h.hexdigest())


def read_fasta(path: str | Path, text: str | None = None) -> list[Record]:
    """Records of a FASTA file (or of ``text``, read from ``path`` when None)."""
    path = Path(path)
    text = _read_text(path) if text is None else text
    records: list[Record] = []
    id_: str | None = None
    lines: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if id_ is not None:
                records.append(_fasta_record(path, id_, lines))
            id_ = line[1:].split()[0] if line[1:].split() else ""
            if not id_:
                raise RepalignError(f"{path}:{lineno}: FASTA header has no id; write '>ID' before each sequence")
            lines = []
        else:
            if id_ is None:
                raise RepalignError(f"{path}:{lineno}: sequence before any '>' header; is this a FASTA file?")
            lines.append(line)
    if id_ is not None:
        records.append(_fasta_record(path, id_, lines))
    if not records:
        raise RepalignError(f"{path}: no sequences found; a FASTA file needs '>ID' lines followed by sequences")
    return records


def _fasta_record(path: Path, id_: str, lines: list[str]) -> Record:
    seq = "".join(lines)
    if not seq or any(not c for c in seq.split(":")):
        raise RepalignError(f"{path}: sequence {id_!r} is empty (or has an empty chain); remove it or fill it in")
    return sequence_record(id_, seq)


def read_csv(path: str | Path, text: str | None = None, delimiter: str | None = None) -> list[Record]:
    """Records of a CSV or TSV table (delimiter from the extension unless given; ``text`` read
    from ``path`` when None)."""
    path = Path(path)
    text = _read_text(path) if text is None else text
    if delimiter is None:
        delimiter = TABLE_SUFFIXES.get(_base_suffix(path), ",")
    # newline="" semantics: quoted fields keep their line breaks, so an id holding one is seen
    rows = list(csv.DictReader(text.splitlines(keepends=True), delimiter=delimiter))
    if not rows:
        raise RepalignError(f"{path}: no rows; the CSV needs a header and one row per sample")
    cols = set(rows[0])
    if "id" not in cols or not ({"sequence", "path"} & cols):
        raise RepalignError(
            f"{path}: columns {sorted(cols)}; the CSV needs an 'id' column and a 'sequence' or 'path' column"
        )
    records: list[Record] = []
    for i, row in enumerate(rows, 2):
        id_ = (row.get("id") or "").strip()
        if not id_:
            raise RepalignError(f"{path}:{i}: empty id; give every row an id")
        if "\n" in id_ or "\r" in id_ or "\x00" in id_:
            raise RepalignError(
                f"{path}: id {id_!r} holds a line break or NUL character; give ids on one line (remove the quotes around the line break)"
            )
        if "sequence" in cols:
            seq = (row.get("sequence") or "").strip()
            if not seq:
                raise RepalignError(f"{path}:{i}: sample {id_!r} has an empty sequence; fill it in or remove the row")
            records.append(sequence_record(id_, seq))
        else:
            atoms = _read_atoms(path.parent / (row.get("path") or "").strip())
            if len(atoms) != 1:
                raise RepalignError(f"{path}:{i}: {row['path']} holds {len(atoms)} structures; give one per row")
            records.append(structure_record(id_, atoms[0]))
    return records


def read_structures(path: str | Path, skip_invalid: bool = False) -> list[Record]:
    """Structures of one file or of every file in a folder. With ``skip_invalid``, files of a
    folder that are not structures (a README, notes) are skipped with a warning."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise RepalignError(f"{path}: empty folder; put structure files (extxyz, CIF, POSCAR, PDB) in it")
    else:
        files = [path]
    records = []
    for f in files:
        try:
            frames = _read_atoms(f)
        except RepalignError as exc:
            if not (skip_invalid and path.is_dir()):
                raise
            log.warning("skipped %s", exc)
            continue
        if len(frames) == 1:
            records.append(structure_record(_frame_id(frames[0], f.stem), frames[0]))
        else:
            records.extend(structure_record(_frame_id(a, f"{f.stem}:{i}"), a) for i, a in enumerate(frames))
    return records


def _frame_id(atoms, default: str) -> str:
    """A frame's own id (extxyz ``id=...`` in its comment line) when it has one, else file stem (and index)."""
    own = atoms.info.get("id")
    return str(own) if own not in (None, "") else default


def read_inputs(paths: str | Path | list, skip_invalid: bool = False) -> list[Record]:
    """Read one or more input paths (FASTA, CSV, structure files or folders); ids must be unique.

    skip_invalid: skip (with a warning) files of a structure folder that cannot be read as structures.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records: list[Record] = []
    for p in paths:
        if str(p) == STDIN:
            records.extend(read_stdin())
            continue
        p = Path(p)
        if not p.exists():
            raise RepalignError(f"{p}: no such file or folder; check the path")
        suffix = _base_suffix(p)
        if suffix in SEQUENCE_SUFFIXES:
            records.extend(read_fasta(p))
        elif suffix in TABLE_SUFFIXES:
            records.extend(read_csv(p))
        elif p.suffix.lower() == ".gz":
            raise RepalignError(
                f"{p}: a gzipped file must be FASTA, CSV or TSV named like x.fasta.gz or x.csv.gz; "
                "gunzip structure files first"
            )
        else:
            records.extend(read_structures(p, skip_invalid=skip_invalid))
    check_unique_ids(records)
    return records


def check_unique_ids(records: list[Record]) -> None:
    seen: set[str] = set()
    dups = []
    for r in records:
        if r.id in seen:
            dups.append(r.id)
        seen.add(r.id)
    if dups:
        shown = ", ".join(sorted(set(dups))[:5])
        raise RepalignError(f"duplicate sample ids: {shown}; every input needs a unique id")


def read_stdin(stream=None) -> list[Record]:
    """FASTA, CSV or TSV from standard input (``-``), told apart by its first line."""
    stream = sys.stdin if stream is None else stream
    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    text = _decode(data if isinstance(data, bytes) else data.encode(), Path("<stdin>"))
    first = text.lstrip().split("\n", 1)[0]
    if not first:
        raise RepalignError("standard input is empty; pipe a FASTA, CSV or TSV into '-'")
    if first.startswith((">", ";")):
        return read_fasta(STDIN, text)
    return read_csv(STDIN, text, delimiter="\t" if "\t" in first else ",")


def _base_suffix(path: Path) -> str:
    """The format suffix, looking through ``.gz``: x.fasta.gz -> .fasta."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")  # drops a byte-order mark written by spreadsheet programs
    except UnicodeDecodeError:
        raise RepalignError(f"{path}: not UTF-8 text; give a FASTA, CSV or TSV file (gzipped or not)") from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RepalignError(f"{path}: no such file; check the path") from None
    if data[:2] == b"\x1f\x8b":  # gzip magic: read through it whatever the name says
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise RepalignError(f"{path}: damaged gzip file ({exc}); compress it again") from None
    return _decode(data, path)


def _read_atoms(path: Path) -> list:
    try:
        import ase.io
    except ImportError:
        raise RepalignError("reading structures needs ASE; pip install 'repalign[zoo]'") from None
    if not path.is_file():
        raise RepalignError(f"{path}: no such structure file; check the path")
    try:
        frames = ase.io.read(str(path), index=":")
    except Exception as exc:  # ASE raises many types for unreadable files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RepalignError(f"{path}: cannot read as a structure ({msg}); give a file ASE reads (extxyz, CIF, POSCAR, PDB)") from None
    if not frames:
        raise RepalignError(f"{path}: no structures in file")
    return list(frames)
