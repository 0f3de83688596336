"""Helpers the sequence adapters share (hf_protein_lm, antiberty, iglm, igfold, unirep, the
sequence baselines): residue checks, torch dtypes and devices, padded batches, chain bookkeeping, and
where the Hugging Face hub cache is."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from repalign.errors import InvalidInput, RepalignError
from repalign.inputs import Record
from repalign.models.base import ModelAdapter, SampleFeatures

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
TORCH_DTYPES = ("float32", "float16", "bfloat16")


def check_sequence_record(
    record: Record,
    model: str,
    alphabet: str | set[str],
    max_chain_length: int | None,
    chains: tuple[int, ...] = (1,),
    chain_hint: str = "",
) -> None:
    """Raise InvalidInput (naming ``record.id``) unless every chain uses ``alphabet``, fits
    ``max_chain_length`` and the number of chains is one of ``chains``."""
    if record.kind != "sequence":
        raise InvalidInput(
            f"{record.id}: model {model} takes sequence inputs, got a {record.kind}; pass a FASTA or CSV of sequences",
            record.id,
        )
    parts = record.chains
    if len(parts) not in chains:
        allowed = " or ".join(str(c) for c in chains)
        raise InvalidInput(
            f"{record.id}: {len(parts)} chains, model {model} takes {allowed}{chain_hint}; fix the ':'-separated chains",
            record.id,
        )
    letters = set(alphabet)
    for c, chain in enumerate(parts):
        if not chain:
            raise InvalidInput(f"{record.id}: chain {c + 1} is empty; remove the stray ':'", record.id)
        for pos, residue in enumerate(chain, 1):
            if residue not in letters:
                where = f"chain {c + 1} position {pos}" if len(parts) > 1 else f"position {pos}"
                raise InvalidInput(
                    f"{record.id}: residue {residue!r} at {where} is not in the {model} alphabet "
                    f"({''.join(sorted(letters))}); replace or remove it",
                    record.id,
                )
        if max_chain_length is not None and len(chain) > max_chain_length:
            which = f"chain {c + 1} has" if len(parts) > 1 else "sequence has"
            raise InvalidInput(
                f"{record.id}: {which} {len(chain)} residues, model {model} takes at most {max_chain_length}; "
                f"trim it (e.g. to the variable domain) or drop it",
                record.id,
            )


def check_device_dtype(device: str, dtype: str) -> None:
    if dtype not in TORCH_DTYPES:
        raise RepalignError(f"unknown dtype {dtype!r}; use one of {', '.join(TORCH_DTYPES)}")
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise RepalignError(f"unknown device {device!r}; use e.g. 'cpu', 'cuda' or 'cuda:1'") from None


def torch_dtype(dtype: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


class quiet_transformers:
    """Silence transformers' load reports and progress bars inside the block, restoring them after."""

    def __enter__(self):
        from transformers.utils import logging

        self._verbosity = logging.get_verbosity()
        self._bars = logging.is_progress_bar_enabled()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging

        logging.set_verbosity(self._verbosity)
        if self._bars:
            logging.enable_progress_bar()
        return False


def pad_batch(id_lists: Sequence[Sequence[int]], pad_id: int):
    """Right-pad token id lists into (input_ids, attention_mask) long tensors."""
    import torch

    width = max(len(ids) for ids in id_lists)
    input_ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for i, ids in enumerate(id_lists):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return input_ids, mask


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but read now (the library caches it at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> str:
    """The hub cache the user's environment names now (HF_HUB_CACHE, else HF_HOME/hub, else default).

    Read at call time: huggingface_hub reads these once at import.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def layer_index(all_layers: list[str], requested: Sequence[str], model: str) -> dict[str, int]:
    """Requested layer name -> its position in ``all_layers`` (model order), validated."""
    known = {name: i for i, name in enumerate(all_layers)}
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise RepalignError(
            f"model {model}: unknown layer(s) {', '.join(unknown)}; its layers are {all_layers[0]} ... {all_layers[-1]}"
        )
    if not requested:
        raise RepalignError(f"model {model}: no layers requested; pass at least one of {all_layers[0]} ... {all_layers[-1]}")
    return {name: known[name] for name in requested}


def start_forward(adapter: ModelAdapter, records: Sequence[Record], layers: Sequence[str], model: str) -> dict[str, int]:
    """Load the model, map the requested layers to their positions (:func:`layer_index`) and
    validate every record: an unchecked residue would otherwise be a KeyError mid-batch."""
    adapter.ensure_loaded()
    index = layer_index(adapter.layer_names(), layers, model)
    for record in records:
        adapter.validate(record)
    return index


def chains_of(records: Sequence[Record]) -> tuple[list[str], list[int]]:
    """Every chain of every record in input order, and the index of the record each comes from."""
    chains, owner = [], []
    for r, record in enumerate(records):
        for chain in record.chains:
            chains.append(chain)
            owner.append(r)
    return chains, owner


def run_padded(model, id_lists: Sequence[Sequence[int]], pad_id: int, device: str, **kwargs):
    """One inference pass of a transformers model over right-padded token id lists; returns (output, mask)."""
    import torch

    input_ids, mask = pad_batch(id_lists, pad_id)
    with torch.inference_mode():
        out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs)
    return out, mask


def chain_rows(hidden_states, index: dict[str, int], rows: Sequence, cls_rows: Sequence[int | None] | None = None):
    """Per chain ``c`` of a padded batch: layer -> its residue rows ``rows[c]`` (a slice or
    positions) of ``hidden_states[index[layer]]``, and layer -> the CLS row ``cls_rows[c]`` where
    one is given. Returns (per-chain tokens, per-chain cls), the inputs of :func:`assemble`."""
    per_tokens: list[dict[str, np.ndarray]] = [dict() for _ in rows]
    per_cls: list[dict[str, np.ndarray]] = [dict() for _ in rows]
    for layer, h_index in index.items():
        h = hidden_states[h_index].float().cpu().numpy()
        for c, selection in enumerate(rows):
            per_tokens[c][layer] = h[c, selection]
            if cls_rows is not None and cls_rows[c] is not None:
                per_cls[c][layer] = h[c, cls_rows[c]]
    return per_tokens, per_cls


def assemble(n_records, owner, per_chain_tokens, per_chain_cls, layers) -> list[SampleFeatures]:
    """Concatenate per-chain rows (input order) per record; average per-chain CLS vectors."""
    results = []
    for r in range(n_records):
        chains = [c for c, o in enumerate(owner) if o == r]
        tokens = {
            layer: np.ascontiguousarray(np.concatenate([per_chain_tokens[c][layer] for c in chains]), dtype=np.float32)
            for layer in layers
        }
        cls = {}
        for layer in layers:
            vectors = [per_chain_cls[c][layer] for c in chains if layer in per_chain_cls[c]]
            if len(vectors) == len(chains):
                cls[layer] = np.mean(vectors, axis=0).astype(np.float32)
        results.append(SampleFeatures(tokens=tokens, cls=cls))
    return results
