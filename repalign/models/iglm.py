"""IgLM: a GPT-2 antibody language model conditioned on chain type and species, registered as ``iglm``.

Weights: ``trained_models/IgLM`` inside the ``iglm`` package (``iglm==0.1.0``: 4 layers x 512); the
smaller ``IgLM-S`` (3 layers x 192) is chosen with the option ``checkpoint=IgLM-S``. Loaded with
``transformers.GPT2Model``; tokens come from the package's ``vocab.txt``, one per residue.

Each chain is written as IgLM scores a full sequence (``IgLM.log_likelihood``)::

    [CHAIN] [SPECIES] residue_1 ... residue_L [SEP]

with ``[CHAIN]`` = ``[HEAVY]`` / ``[LIGHT]`` and ``[SPECIES]`` one of ``[HUMAN] [MOUSE] [CAMEL]
[RABBIT] [RAT] [RHESUS]``. Conditioning used here: the first chain of a ``HEAVY:LIGHT`` record is
``[HEAVY]`` and the second ``[LIGHT]``. A single-chain record is typed by the option
``single_chain``: ``heavy``, ``light``, or ``auto`` (the default), which reads the framework-4
J-region motif every variable domain carries, ``W-G-x-G`` in heavy chains and ``F-G-x-G`` in light
chains (Kabat et al. 1991), and rejects a chain with neither or both as invalid input naming the fix.
The species is ``[HUMAN]`` unless the option ``species=`` names another. The two conditioning tokens and ``[SEP]`` are removed from the features, as is padding.
Because the model is causal, every residue row has seen the conditioning tokens but no later residue.
Each chain of a pair runs as its own sequence and the rows are concatenated (heavy then light).
No ``cls`` vector is given (a left-to-right model has no CLS token); pooling is the mean by default;
``--pool last`` takes the last residue row (of the last chain), the one that has read the whole chain.

Layer names, in model order: ``embeddings`` (hidden_states[0]: token + position embeddings), then
``layer.0`` ... ``layer.{N-1}`` (block outputs; the last one after GPT-2's final LayerNorm, as
transformers reports it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from repalign.errors import InvalidInput, ModelUnavailable, RepalignError
from repalign.inputs import Record
from repalign.models._common import missing_modules, provenance_record, sha256_of_files
from repalign.models._sequence import (
    STANDARD_AMINO_ACIDS,
    assemble,
    chain_rows,
    chains_of,
    check_device_dtype,
    check_sequence_record,
    quiet_transformers,
    run_padded,
    start_forward,
    torch_dtype,
)
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures
from repalign.packages import package_dir

CHECKPOINTS = ("IgLM", "IgLM-S")
SPECIES = ("human", "mouse", "camel", "rabbit", "rat", "rhesus")
CHAIN_TYPES = ("auto", "heavy", "light")
HEAVY_J_MOTIF = re.compile("WG.G")
LIGHT_J_MOTIF = re.compile("FG.G")
INSTALL_HINT = "needs the 'zoo' extra: pip install 'repalign[zoo]'"


def chain_type(chain: str) -> str | None:
    """"heavy" or "light" from the framework-4 J-region motif (WGxG heavy, FGxG light), else None."""
    heavy, light = bool(HEAVY_J_MOTIF.search(chain)), bool(LIGHT_J_MOTIF.search(chain))
    if heavy == light:
        return None
    return "heavy" if heavy else "light"


class IgLM(ModelAdapter):
    """IgLM per-residue features; see the module docstring."""

    info = ModelInfo(
        name="iglm",
        family="IgLM",
        modality="antibody sequence",
        input_kind="sequence",
        extra="zoo",
        license="JHU Academic Software License (non-commercial, non-profit use only; see iglm's LICENSE.md)",
        weights="trained_models/IgLM shipped in the iglm==0.1.0 wheel; pip install 'repalign[zoo]'",
        description="GPT-2 antibody language model conditioned on chain type and species (Shuai et al. 2023)",
    )
    default_pooling = "mean"
    max_size = 2 * 509  # 512 positions less the two conditioning tokens and [SEP], per chain

    OPTIONS = ("checkpoint", "species", "single_chain")

    def __init__(self, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        check_device_dtype(device, dtype)
        checkpoint = str(options.get("checkpoint", "IgLM"))
        species = str(options.get("species", "human")).lower()
        single_chain = str(options.get("single_chain", "auto")).lower()
        if checkpoint not in CHECKPOINTS:
            raise RepalignError(f"iglm: unknown checkpoint {checkpoint!r}; use one of {', '.join(CHECKPOINTS)}")
        if species not in SPECIES:
            raise RepalignError(f"iglm: unknown species {species!r}; use one of {', '.join(SPECIES)}")
        if single_chain not in CHAIN_TYPES:
            raise RepalignError(f"iglm: single_chain must be auto, heavy or light, got {single_chain!r}")
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        self.checkpoint, self.species, self.single_chain = checkpoint, species, single_chain
        self._model = None
        self._token_id: dict[str, int] = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = missing_modules("torch", "transformers", "iglm")
        if missing:
            return f"{INSTALL_HINT} (missing {', '.join(missing)})"
        return None

    def _weights_dir(self) -> Path:
        if self.weights:
            return Path(self.weights).expanduser()
        root = package_dir("iglm")
        if root is None:
            raise ModelUnavailable(f"model iglm: {INSTALL_HINT}")
        return root / "trained_models" / self.checkpoint

    def _vocab_file(self) -> Path:
        weights_dir = self._weights_dir()
        for candidate in (weights_dir / "vocab.txt", weights_dir.parent / "vocab.txt"):
            if candidate.is_file():
                return candidate
        raise ModelUnavailable(f"model iglm: no vocab.txt next to {weights_dir}; reinstall: pip install 'repalign[zoo]'")

    def load(self) -> None:
        reason = self.unavailable_reason()
        if reason and not self.weights:
            raise ModelUnavailable(f"model iglm: {reason}")
        import transformers

        weights_dir = self._weights_dir()
        if not (weights_dir / "config.json").is_file():
            raise ModelUnavailable(f"model iglm: no IgLM checkpoint in {weights_dir}; {INSTALL_HINT}")
        vocab = [line.strip() for line in self._vocab_file().read_text().splitlines() if line.strip()]
        self._token_id = {t: i for i, t in enumerate(vocab)}
        needed = ["[PAD]", "[SEP]", "[HEAVY]", "[LIGHT]", *(f"[{s.upper()}]" for s in SPECIES), *STANDARD_AMINO_ACIDS]
        lacking = [t for t in needed if t not in self._token_id]
        if lacking:
            raise ModelUnavailable(f"model iglm: vocab.txt lacks {lacking}; reinstall: pip install 'repalign[zoo]'")
        with quiet_transformers():
            model = transformers.GPT2Model.from_pretrained(str(weights_dir), dtype=torch_dtype(self.dtype))
        self._model = model.to(self.device).eval()  # type: ignore[arg-type]  # transformers' @wraps'd .to() loses its self binding for mypy

    def _n_layers(self) -> int:
        config = json.loads((self._weights_dir() / "config.json").read_text())
        return int(config["n_layer"])

    def layer_names(self) -> list[str]:
        try:
            n = self._n_layers()
        except FileNotFoundError:
            raise ModelUnavailable(f"model iglm: no IgLM checkpoint in {self._weights_dir()}; {INSTALL_HINT}") from None
        return ["embeddings"] + [f"layer.{i}" for i in range(n)]

    def provenance(self) -> dict[str, Any]:
        self.ensure_loaded()
        weights_dir = self._weights_dir()
        files = [p for p in weights_dir.iterdir() if p.name in {"config.json", "pytorch_model.bin", "model.safetensors"}]
        weights = {
            "weights": f"iglm/trained_models/{self.checkpoint}" if not self.weights else str(weights_dir),
            "weights_sha256": sha256_of_files(files + [self._vocab_file()]),
        }
        return provenance_record(
            self,
            weights,
            ("iglm", "torch", "transformers", "repalign"),
            options={"checkpoint": self.checkpoint, "species": self.species, "single_chain": self.single_chain},
            notes={
                "conditioning": "[CHAIN] [SPECIES] residues [SEP]; pairs: chain 1 [HEAVY], chain 2 [LIGHT]; "
                "single chains: option single_chain (auto: WGxG heavy / FGxG light J-region motif)"
            },
        )

    def validate(self, record: Record) -> None:
        check_sequence_record(
            record, "iglm", STANDARD_AMINO_ACIDS, 509, chains=(1, 2), chain_hint=" (one chain, or HEAVY:LIGHT)"
        )
        if len(record.chains) == 1 and self.single_chain == "auto" and chain_type(record.payload) is None:
            raise InvalidInput(
                f"{record.id}: cannot tell a heavy from a light chain (no single WGxG / FGxG J-region motif); "
                f"pass options={{'single_chain': 'heavy'}} (or 'light')",
                record.id,
            )

    def chain_tokens(self, record: Record) -> list[list[int]]:
        """Token ids of each chain of a record, conditioning and [SEP] included (see the module docstring)."""
        chains = record.chains
        if len(chains) == 2:
            types = ["heavy", "light"]
        else:
            single = self.single_chain if self.single_chain != "auto" else chain_type(chains[0])
            assert single is not None  # validate() refuses a single chain of unknown type
            types = [single]
        species = self._token_id[f"[{self.species.upper()}]"]
        return [
            [self._token_id[f"[{kind.upper()}]"], species, *(self._token_id[r] for r in chain), self._token_id["[SEP]"]]
            for kind, chain in zip(types, chains)
        ]

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        index = start_forward(self, records, layers, "iglm")
        if not records:
            return []
        chains, owner = chains_of(records)
        ids = [tokens for record in records for tokens in self.chain_tokens(record)]
        out, _ = run_padded(self._model, ids, self._token_id["[PAD]"], self.device, output_hidden_states=True)
        # the rows after the two conditioning tokens, before [SEP]
        per_tokens, per_cls = chain_rows(out.hidden_states, index, [slice(2, 2 + len(chain)) for chain in chains])
        return assemble(len(records), owner, per_tokens, per_cls, list(index))
