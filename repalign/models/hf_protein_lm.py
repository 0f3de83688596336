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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from repalign.errors import ModelUnavailable, RepalignError
from repalign.inputs import Record
from repalign.models._common import missing_modules, provenance_record, raise_if_unavailable, sha256_of_files
from repalign.models._sequence import (
    assemble,
    chain_rows,
    chains_of,
    check_device_dtype,
    check_sequence_record,
    hub_cache_dir,
    hub_offline,
    quiet_transformers,
    run_padded,
    start_forward,
    torch_dtype,
)
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures, reject_unknown_options

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
        reject_unknown_options(f"hf:{path_or_repo}", options, self.OPTIONS)  # names the checkpoint, unlike the base class check
        check_device_dtype(device, dtype)
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        self.path_or_repo = path_or_repo
        self.name = f"hf:{path_or_repo}"
        self._model: Any = None  # transformers model and tokenizer, set by load()
        self._tokenizer: Any = None
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
        assert self._n_layers is not None  # set by load()
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
        assert self._alphabet is not None  # set by load()
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
        return assemble(len(records), owner, per_chain_tokens, per_chain_cls, list(index))
