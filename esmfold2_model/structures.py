"""Predicted structures as files: PDB (the port's writer) or mmCIF (``_atom_site`` written here).

Both hold one model: the diffusion sample with the highest pTM, every heavy atom under its own name
in featurisation order, chains A, B, ... in input order, residues numbered from 1 within each chain,
and the per-residue pLDDT (0-1, as the port reports it) in the B-factor column.
Files are written to a temporary name and renamed, so a crash never leaves a half-written file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from esmfold2_model.featurize import Featurized

FORMATS = ("pdb", "cif")
_CHAIN_TAGS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def best_sample(ptm: np.ndarray) -> int:
    return int(np.argmax(ptm))


def _atoms(sample: Featurized, coords: np.ndarray, plddt: np.ndarray):
    """(chain, residue number, residue name, atom name, element, xyz, b) per real atom."""
    from transformers.models.esmfold2.protein_utils import _RES_TYPE_TO_3LETTER, _decode_atom_name

    f = sample.features
    atom_to_token = f["atom_to_token"].numpy()
    names = f["ref_atom_name_chars"].numpy()
    res_type = f["res_type"].numpy()
    residue_index = f["residue_index"].numpy()
    asym = f["asym_id"].numpy()
    for a in range(sample.num_atoms):
        t = int(atom_to_token[a])
        name = _decode_atom_name(names[a])
        yield (_CHAIN_TAGS[int(asym[t]) % len(_CHAIN_TAGS)], int(residue_index[t]) + 1,
               _RES_TYPE_TO_3LETTER.get(int(res_type[t]), "UNK"), name, name[0], coords[a], float(plddt[t]))


def to_mmcif(name: str, sample: Featurized, coords: np.ndarray, plddt: np.ndarray) -> str:
    """mmCIF text with one ``_atom_site`` loop; ``coords`` (num_atoms, 3), ``plddt`` (num_tokens,)."""
    safe = "".join(c if c.isalnum() else "_" for c in name) or "prediction"
    lines = [f"data_{safe}", "#", "loop_"]
    fields = ["group_PDB", "id", "type_symbol", "label_atom_id", "label_comp_id", "label_asym_id", "label_entity_id",
              "label_seq_id", "Cartn_x", "Cartn_y", "Cartn_z", "occupancy", "B_iso_or_equiv", "auth_seq_id",
              "auth_asym_id", "pdbx_PDB_model_num"]
    lines += [f"_atom_site.{k}" for k in fields]
    entity = sample.features["entity_id"].numpy()
    chain_entity: dict[str, int] = {}
    for t, a in enumerate(sample.features["asym_id"].numpy()):
        chain_entity.setdefault(_CHAIN_TAGS[int(a) % len(_CHAIN_TAGS)], int(entity[t]))
    for i, (chain, resnum, resname, atom, element, xyz, b) in enumerate(_atoms(sample, coords, plddt), 1):
        lines.append(f"ATOM {i} {element} {atom} {resname} {chain} {chain_entity[chain]} {resnum} "
                     f"{xyz[0]:.3f} {xyz[1]:.3f} {xyz[2]:.3f} 1.00 {b:.2f} {resnum} {chain} 1")
    lines.append("#")
    return "\n".join(lines) + "\n"


def write_structure(out_dir: str | Path, record_id: str, sample: Featurized, coords: np.ndarray,
                    plddt: np.ndarray, ptm: np.ndarray, fmt: str = "pdb") -> Path:
    """Write the best sample (by pTM) of one prediction; returns the file path.

    coords: (samples, num_atoms, 3); plddt: (samples, num_tokens); ptm: (samples,).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = best_sample(ptm)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in record_id)
    if fmt == "pdb":
        import torch
        from transformers.models.esmfold2.protein_utils import output_to_pdb

        padded = np.zeros((1, sample.features["atom_attention_mask"].shape[0], 3), dtype=np.float32)
        padded[0, : sample.num_atoms] = coords[k]
        output = {"sample_atom_coords": torch.from_numpy(padded), "plddt": torch.from_numpy(plddt[k : k + 1])}
        text = output_to_pdb(output, sample.features, sample_idx=0)
    elif fmt == "cif":
        text = to_mmcif(record_id, sample, coords[k], plddt[k])
    else:
        raise ValueError(f"unknown structure format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = out_dir / f"{safe}.{fmt}"
    tmp = out_dir / f".{safe}.{fmt}.tmp"
    tmp.write_text(text)
    tmp.replace(path)
    return path
