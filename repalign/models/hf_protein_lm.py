"""Any transformers protein language model with hidden states, as ``hf:<local-path-or-repo-id>``.

Works with checkpoints that ``transformers.AutoModel`` and ``AutoTokenizer`` load and whose model
returns ``hidden_states`` (ESM-2 via ``EsmModel``, ESM C via ``EsmcModel``, ProtBERT-style BERTs, ...).

Weights come from a local directory (``hf:/path/to/checkpoint``) or the user's Hugging Face cache
(``hf:facebook/esm2_t6_8M_UR50D``). The cache is looked up first without any network access; the hub
is only asked when ``HF_HUB_OFFLINE`` is not set, and a missing checkpoint is a one-line error giving
the command that fetches it (``hf download REPO``).

Layer names, in model order: ``embeddings`` (hidden_states[0], the token embeddings as the model's
own hidden-state API reports them), then ``layer.0`` ... ``layer.{N-1}`` (hidden_states[1..N]).
The last entry is what the model returns as ``last_hidden_state`` (for ESM-2 and ESM C, after the
final layer norm).

Inputs: one chain or several joined by ``:``. Each chain runs as its own sequence (with the model's
CLS/BOS/EOS added by its tokenizer) and the per-residue features of the chains are concatenated in
input order; special tokens and padding are removed, so a chain's rows do not depend on the batch.
``cls`` holds the features of the first special token (CLS/BOS) when the tokenizer adds one, averaged
over chains for multi-chain inputs.

This module also holds the small helpers the sequence adapters share (residue checks, batching chains).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from repalign.errors import InvalidInput, ModelUnavailable, RepalignError
from repalign.inputs import Record
from repalign.models._common import (  # re-exported: other modules import these from here
    missing_modules,
    provenance_record,
    raise_if_unavailable,
    reject_unknown_options,
    sha256_of_files,
)
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
TORCH_DTYPES = ("float32", "float16", "bfloat16")

# ---- shared helpers for the sequence adapters ---------------------------------------------------

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
    """The hub cache the user's environment names now (HF_HUB_CACHE, else HF_HOME/hub, else default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, "hub")


# ---- the adapter ------------------------------------------------------------------------------


class HFProteinLM(ModelAdapter):
    """A transformers protein LM (``hf:<path-or-repo-id>``); see the module docstring."""

    info = ModelInfo(
        name="hf:",
        family="transformers protein LM",
        modality="protein sequence",
        input_kind="sequence",
        extra="models",
        license="that of the checkpoint (see its model card)",
        weights="a local checkpoint directory, or a hub repo id already in the HF cache (fetch it with 'hf download REPO')",
        description="any transformers protein language model with hidden states (ESM-2, ESM C, ProtBERT, ...)",
    )
    default_pooling = "mean"
    OPTIONS = ()

    def __init__(self, path_or_repo: str, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        path_or_repo = str(path_or_repo).strip()
        if not path_or_repo:
            raise RepalignError("hf: needs a checkpoint, e.g. hf:facebook/esm2_t6_8M_UR50D or hf:/path/to/checkpoint")
        reject_unknown_options(f"hf:{path_or_repo}", options, self.OPTIONS)
        check_device_dtype(device, dtype)
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        self.path_or_repo = path_or_repo
        self.name = f"hf:{path_or_repo}"
        self._model = None
        self._tokenizer = None
        self._checkpoint_dir: str | None = None
        self._n_layers: int | None = None
        self._alphabet: set[str] | None = None
        self._max_tokens: int | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = missing_modules("torch", "transformers")
        if missing:
            return f"needs {' and '.join(missing)} (the 'models' extra): pip install 'repalign[models]'"
        return None

    # ---- loading ------------------------------------------------------------------------------
    def _source(self) -> str:
        return self.weights or self.path_or_repo

    def _is_local(self) -> bool:
        src = self._source()
        return os.path.isdir(src) or src.startswith(("/", "./", "../", "~"))

    def load(self) -> None:
        raise_if_unavailable(self, self.name)
        import transformers

        src = self._source()
        if self._is_local():
            local = os.path.expanduser(src)
            if not os.path.isfile(os.path.join(local, "config.json")):
                raise ModelUnavailable(
                    f"model {self.name}: {local} is not a transformers checkpoint (no config.json); "
                    f"give a folder written by save_pretrained or a hub repo id"
                )
            kwargs: dict[str, Any] = {}
        else:
            local = src
            kwargs = {"cache_dir": hub_cache_dir()}
        offline_first = dict(kwargs, local_files_only=True)
        try:
            model, tokenizer = self._from_pretrained(transformers, local, offline_first)
        except (OSError, ValueError) as first_error:
            if self._is_local() or hub_offline():
                raise self._missing(src, first_error) from None
            try:  # not cached: ask the hub (only reachable where the user's machine has network)
                model, tokenizer = self._from_pretrained(transformers, local, kwargs)
            except Exception as second_error:  # network errors come in many types
                raise self._missing(src, second_error) from None
        self._model = model.to(self.device).eval()
        self._tokenizer = tokenizer
        self._checkpoint_dir = self._resolve_dir(local, kwargs)
        hidden = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
        if hidden is None:
            raise ModelUnavailable(f"model {self.name}: config has no num_hidden_layers; not a transformer LM this adapter can run")
        self._n_layers = int(hidden)
        vocab = tokenizer.get_vocab()
        unk = getattr(tokenizer, "unk_token", None)
        self._alphabet = {t for t in vocab if len(t) == 1 and t.isalpha() and t.isupper() and t != unk}
        max_pos = getattr(model.config, "max_position_embeddings", None)
        self._max_tokens = int(max_pos) if max_pos and max_pos < 10**6 else None

    def _from_pretrained(self, transformers, src: str, kwargs: dict):
        dtype = torch_dtype(self.dtype)
        with quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(src, **kwargs)
            model = transformers.AutoModel.from_pretrained(src, dtype=dtype, **kwargs)
        return model, tokenizer

    def _missing(self, src: str, error: Exception) -> ModelUnavailable:
        if self._is_local():
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return ModelUnavailable(f"model {self.name}: cannot load {src} ({first}); check the checkpoint folder")
        state = "HF_HUB_OFFLINE is set and it" if hub_offline() else "it"
        return ModelUnavailable(
            f"model {self.name}: {state} is not in the Hugging Face cache {hub_cache_dir()}; "
            f"fetch it on a machine with network with: hf download {src}  (or: huggingface-cli download {src})"
        )

    def _resolve_dir(self, src: str, kwargs: dict) -> str | None:
        if os.path.isdir(src):
            return src
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(src, local_files_only=True, cache_dir=kwargs.get("cache_dir"))
        except Exception:  # provenance then records the repo id without a file hash
            return None

    # ---- description ----------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        self.ensure_loaded()
        return ["embeddings"] + [f"layer.{i}" for i in range(self._n_layers)]

    def provenance(self) -> dict[str, Any]:
        self.ensure_loaded()
        files = []
        if self._checkpoint_dir:
            files = [p for p in Path(self._checkpoint_dir).iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".json", ".txt", ".model"}]
        config = self._model.config
        weights = {
            "model_type": getattr(config, "model_type", None),
            "architecture": type(self._model).__name__,
            "weights": self._source(),
            "weights_sha256": sha256_of_files(files) if files else None,
        }
        return provenance_record(self, weights, ("torch", "transformers", "repalign"), model=self.name)

    # ---- inputs ---------------------------------------------------------------------------------
    def validate(self, record: Record) -> None:
        self.ensure_loaded()
        specials = 2  # CLS/BOS + EOS added by protein LM tokenizers
        max_len = None if self._max_tokens is None else self._max_tokens - specials
        check_sequence_record(record, self.name, self._alphabet, max_len, chains=tuple(range(1, 65)))

    # ---- running --------------------------------------------------------------------------------
    def _encode_chain(self, chain: str) -> tuple[list[int], list[int], int | None]:
        """Token ids of one chain, the positions of its residues, and the position of CLS/BOS."""
        tok = self._tokenizer
        for text in (chain, " ".join(chain)):  # ProtBERT-style tokenizers want spaced residues
            enc = tok(text, add_special_tokens=True, return_special_tokens_mask=True)
            ids, special = list(enc["input_ids"]), list(enc["special_tokens_mask"])
            residue_pos = [i for i, s in enumerate(special) if not s]
            if len(residue_pos) == len(chain):
                break
        else:
            raise RepalignError(
                f"model {self.name}: its tokenizer does not give one token per residue; this adapter needs a residue-level protein LM"
            )
        if tok.unk_token_id is not None and any(ids[i] == tok.unk_token_id for i in residue_pos):
            raise RepalignError(f"model {self.name}: tokenizer maps a residue of {chain[:20]}... to its unknown token")
        cls_pos = 0 if special and special[0] else None
        return ids, residue_pos, cls_pos

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        index = start_forward(self, records, layers, self.name)
        if not records:
            return []
        chains, owner = chains_of(records)
        encoded = [self._encode_chain(chain) for chain in chains]
        pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        out, _ = run_padded(self._model, [ids for ids, _, _ in encoded], pad_id, self.device, output_hidden_states=True)
        per_chain_tokens, per_chain_cls = chain_rows(
            out.hidden_states, index, [rows for _, rows, _ in encoded], [cls for _, _, cls in encoded]
        )
        return _assemble(len(records), owner, per_chain_tokens, per_chain_cls, list(index))


def _layer_index(all_layers: list[str], requested: Sequence[str], model: str) -> dict[str, int]:
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
    """Load the model, map the requested layers to their positions (:func:`_layer_index`) and
    validate every record: an unchecked residue would otherwise be a KeyError mid-batch."""
    adapter.ensure_loaded()
    index = _layer_index(adapter.layer_names(), layers, model)
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
    one is given. Returns (per-chain tokens, per-chain cls), the inputs of :func:`_assemble`."""
    per_tokens = [dict() for _ in rows]
    per_cls = [dict() for _ in rows]
    for layer, h_index in index.items():
        h = hidden_states[h_index].float().cpu().numpy()
        for c, selection in enumerate(rows):
            per_tokens[c][layer] = h[c, selection]
            if cls_rows is not None and cls_rows[c] is not None:
                per_cls[c][layer] = h[c, cls_rows[c]]
    return per_tokens, per_cls


def _assemble(n_records, owner, per_chain_tokens, per_chain_cls, layers) -> list[SampleFeatures]:
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
