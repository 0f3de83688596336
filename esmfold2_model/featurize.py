"""Sequences and complexes -> ESMFold2 model features, and padded batches with masks.

A complex is written with its chains joined by ``:``. Each chain is featurised by the port's own
single-chain featuriser (``transformers.models.esmfold2.protein_utils.prepare_protein_features``:
reference conformers, atom names, ESMC token ids), then the chains are concatenated the way the
relative-position encoding expects: ``token_index`` runs over the whole complex, ``residue_index``
restarts in every chain, ``asym_id`` is the chain number, ``entity_id`` groups chains with the same
sequence and ``sym_id`` numbers the copies of an entity (homomers). The MSA is the single sequence
itself, as the port uses for MSA-free inference.

Batches are right-padded along tokens and atoms with ``attention_mask`` / ``atom_attention_mask``
false on the padding, so a sample's features do not depend on its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from repalign.errors import InvalidInput

#: one-letter residues the featuriser knows; X is featurised as an unknown residue (UNK)
ALPHABET = "ACDEFGHIKLMNPQRSTVWYX"

_TOKEN_KEYS = (
    "token_index", "residue_index", "asym_id", "sym_id", "entity_id", "mol_type", "res_type",
    "input_ids", "attention_mask", "deletion_mean", "distogram_atom_idx",
)
_MSA_KEYS = ("msa", "msa_attention_mask", "has_deletion", "deletion_value")  # (1, L)
_ATOM_KEYS = (
    "ref_pos", "ref_element", "ref_charge", "ref_atom_name_chars", "ref_space_uid",
    "atom_attention_mask", "atom_to_token",
)
ATOM_PAD = 32  # the port pads the atom axis to a multiple of 32


def check_sequence(record_id: str, sequence: str) -> list[str]:
    """The chains of ``sequence``; InvalidInput naming the record when a chain is empty or a residue
    is outside :data:`ALPHABET`."""
    chains = sequence.split(":")
    for c, chain in enumerate(chains):
        if not chain:
            raise InvalidInput(f"{record_id}: chain {c + 1} is empty; remove the stray ':'", record_id)
        bad = sorted(set(chain) - set(ALPHABET))
        if bad:
            pos = min(chain.index(b) for b in bad) + 1
            where = f"chain {c + 1} position {pos}" if len(chains) > 1 else f"position {pos}"
            raise InvalidInput(
                f"{record_id}: residue {chain[pos - 1]!r} at {where} is not one of {ALPHABET}; "
                f"replace non-standard residues by X (or their parent residue)",
                record_id,
            )
    return chains


@dataclass
class Featurized:
    """Features of one sample, unbatched; ``chain_lengths`` in residues, ``num_atoms`` real atoms."""

    features: dict[str, torch.Tensor]
    chain_lengths: list[int]
    num_atoms: int

    @property
    def num_tokens(self) -> int:
        return sum(self.chain_lengths)


def featurize_sequence(sequence: str) -> Featurized:
    """Featurise one protein or complex (chains joined by ``:``) without a batch axis."""
    from transformers.models.esmfold2.protein_utils import prepare_protein_features

    chains = sequence.split(":")
    per_chain = []
    for chain in chains:
        f = {k: v[0] for k, v in prepare_protein_features(chain).items()}
        n_atoms = int(f["atom_attention_mask"].sum())
        for k in _ATOM_KEYS:
            f[k] = f[k][:n_atoms]  # drop the per-chain atom padding; re-padded once at the end
        per_chain.append((f, n_atoms))

    entity_of: dict[str, int] = {}
    copies: dict[int, int] = {}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in _TOKEN_KEYS + _MSA_KEYS + _ATOM_KEYS}
    token_offset = atom_offset = 0
    for c, (chain, (f, n_atoms)) in enumerate(zip(chains, per_chain)):
        length = len(chain)
        entity = entity_of.setdefault(chain, len(entity_of) + 1)
        copy = copies.get(entity, 0)
        copies[entity] = copy + 1
        f["token_index"] = f["token_index"] + token_offset
        f["asym_id"] = torch.full((length,), c, dtype=torch.int64)
        f["entity_id"] = torch.full((length,), entity, dtype=torch.int64)
        f["sym_id"] = torch.full((length,), copy, dtype=torch.int64)
        f["distogram_atom_idx"] = f["distogram_atom_idx"] + atom_offset
        f["ref_space_uid"] = f["ref_space_uid"] + token_offset
        f["atom_to_token"] = f["atom_to_token"] + token_offset
        for k in out:
            out[k].append(f[k])
        token_offset += length
        atom_offset += n_atoms

    feats = {k: torch.cat(v, dim=-1 if k in _MSA_KEYS else 0) for k, v in out.items()}
    num_tokens, num_atoms = token_offset, atom_offset
    feats["token_bonds"] = torch.zeros(num_tokens, num_tokens, 1, dtype=torch.float32)
    padded_atoms = max(ATOM_PAD, math.ceil(num_atoms / ATOM_PAD) * ATOM_PAD)
    feats = {k: (_pad_to(v, 0, padded_atoms) if k in _ATOM_KEYS else v) for k, v in feats.items()}
    return Featurized(feats, [len(c) for c in chains], num_atoms)


def _pad_to(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if t.shape[dim] == size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def collate(samples: list[Featurized], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad samples into one batch (tokens to the longest sample, atoms likewise); padding is
    zero and masked out by ``attention_mask`` / ``atom_attention_mask`` / ``msa_attention_mask``."""
    max_tokens = max(s.num_tokens for s in samples)
    max_atoms = max(s.features["atom_attention_mask"].shape[0] for s in samples)
    batch: dict[str, torch.Tensor] = {}
    for key in samples[0].features:
        rows = []
        for s in samples:
            t = s.features[key]
            if key in _ATOM_KEYS:
                t = _pad_to(t, 0, max_atoms)
            elif key in _MSA_KEYS:
                t = _pad_to(t, 1, max_tokens)
            elif key == "token_bonds":
                t = _pad_to(_pad_to(t, 0, max_tokens), 1, max_tokens)
            else:
                t = _pad_to(t, 0, max_tokens)
            rows.append(t)
        batch[key] = torch.stack(rows).to(device)
    return batch


def esmc_token_ids(chains: list[str]) -> tuple[list[int], list[int], list[int]]:
    """ESMC input for one sample: ``<cls> chain1 <eos> <cls> chain2 ... <eos>``.

    Returns ``(ids, sequence_id, residue_positions)``: the token ids, the chain number of each token
    (chain-aware attention: a residue attends only within its chain) and the positions of the residues
    in ``ids`` (special tokens excluded), in input order. The layout is the one
    ``EsmFold2Model._compute_lm_hidden_states`` builds, so standalone ESMC features match the ones
    ESMFold2 consumes.
    """
    from transformers.models.esmfold2.protein_utils import ESM_PROTEIN_VOCAB

    bos, eos = 0, 2
    ids: list[int] = []
    seq_id: list[int] = []
    positions: list[int] = []
    for c, chain in enumerate(chains):
        ids.append(bos)
        seq_id.append(c)
        for aa in chain:
            positions.append(len(ids))
            ids.append(ESM_PROTEIN_VOCAB.get(aa, ESM_PROTEIN_VOCAB["X"]))
            seq_id.append(c)
        ids.append(eos)
        seq_id.append(c)
    return ids, seq_id, positions
