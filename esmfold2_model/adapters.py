"""Model adapters: ``esmfold2``, ``esmfold2-fast`` (the full structure predictor) and ``esmc-300m``,
``esmc-600m``, ``esmc-6b`` (its language-model backbones on their own).

Registered in ``repalign.models.REGISTRY`` as ``esmfold2_model.adapters:<Class>``. Layer names and
options: ``docs/esmfold2-layers.md``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Sequence

from esmfold2_model import stages
from esmfold2_model.extractor import (
    OPTION_NAMES,
    EsmFold2Extractor,
    ExtractionOptions,
    default_memory_limit_gb,
    estimate_peak_bytes,
    lm_dropout_rate,
    stage_layout,
)
from esmfold2_model.featurize import check_sequence, esmc_token_ids, featurize_sequence
from esmfold2_model.load import check_weight_files, load_config, load_esmc, load_esmfold2, parameter_count, resolve_checkpoint, torch_dtype_for
from esmfold2_model.structures import write_structure
from repalign.errors import InvalidInput, RepalignError
from repalign.inputs import Record
from repalign.models import sha256_of_files
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures


def _unavailable() -> str | None:
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        return "needs torch and transformers>=5.24; pip install 'repalign[esmfold2]'"
    if importlib.util.find_spec("transformers.models.esmfold2") is None:
        return "this transformers has no ESMFold2 port; pip install 'transformers>=5.24'"
    return None


def _provenance_extra(path: Path, hub_id: str) -> dict[str, Any]:
    """Identity of the weights: a hub snapshot's commit, or a hash of a local checkpoint's files."""
    import importlib.metadata

    out: dict[str, Any] = {"hub_id": hub_id, "transformers": importlib.metadata.version("transformers"),
                           "config_sha256": hashlib.sha256((path / "config.json").read_bytes()).hexdigest()}
    if "snapshots" in path.parts:  # a hub cache snapshot directory is named by its commit
        out["version"] = path.name
    else:
        files = [p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin")]
        out["weights_sha256"] = sha256_of_files(files)
    return out


class _HubCheckpointAdapter(ModelAdapter):
    """A model whose checkpoint is a local folder (``weights``) or a hub id found in the offline HF cache."""

    hub_id: ClassVar[str]
    _path: Path | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _unavailable()

    def _checkpoint(self) -> Path:
        if self._path is None:
            self._path = resolve_checkpoint(self.weights, self.hub_id)
        return self._path


class EsmFold2Adapter(_HubCheckpointAdapter):
    """ESMFold2 (with its MSA encoder; fed the single-sequence MSA), every stage as features."""

    hub_id: ClassVar[str] = "biohub/ESMFold2"
    info = ModelInfo(
        name="esmfold2",
        family="ESMFold2",
        modality="protein sequence",
        input_kind="sequence",
        extra="esmfold2",
        license="MIT",
        weights="biohub/ESMFold2 from the local Hugging Face cache (hf download biohub/ESMFold2) or weights=DIR",
        description="ESMFold2 structure predictor: ESMC -> pair trunk -> diffusion -> confidence, every stage",
    )
    OPTIONS: ClassVar[tuple[str, ...]] = OPTION_NAMES

    def __init__(self, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        torch_dtype_for(device, dtype)  # validate now, not after loading gigabytes
        self.settings = ExtractionOptions.parse(options, self.info.name)
        # Recorded with the extraction options whether given or not, so a cache extracted in one
        # LM-dropout mode is never resumed in the other.
        self.options["lm_dropout"] = self.settings.lm_dropout
        self._path: Path | None = None
        self._config = None
        self.model: Any = None  # the transformers EsmFold2Model, set by load()
        self.extractor: EsmFold2Extractor | None = None

    # ---- loading ---------------------------------------------------------------------------------
    def config(self):
        """The checkpoint's EsmFold2Config (read without loading the weights)."""
        if self._config is None:
            cfg = load_config(self._checkpoint())
            if getattr(cfg, "model_type", None) != "esmfold2":
                raise RepalignError(f"{self._checkpoint()}: a {cfg.model_type!r} checkpoint, not ESMFold2; check weights=")
            check_weight_files(self._checkpoint())  # a truncated download fails here, before any model work
            self._config = cfg
        return self._config

    def load(self) -> None:
        self.model = load_esmfold2(self._checkpoint(), self.device, self.dtype)
        self._config = self.model.config
        self.extractor = EsmFold2Extractor(self.model, self.settings)

    # ---- description -----------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        return stages.layer_names(stage_layout(self.config(), self.settings))

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov.update(_provenance_extra(self._checkpoint(), self.hub_id))
        lm = self.config().lm_encoder
        prov["lm_dropout"] = {"mode": self.settings.lm_dropout, "p_applied": lm_dropout_rate(self.config(), self.settings),
                              "p_released": lm.lm_dropout, "per_loop": lm.per_loop_lm_dropout,
                              "masks": "seeded by (seed, trunk loop), drawn per sample on the model's device"}
        return prov

    # ---- inputs ----------------------------------------------------------------------------------
    def _bytes_per_value(self) -> int:
        return 4 if self.dtype == "float32" else 2

    def memory_limit_gb(self) -> float:
        return self.settings.max_memory_gb or default_memory_limit_gb(self.device)

    def estimate_gb(self, lengths: Sequence[int], full: bool = True) -> float:
        return estimate_peak_bytes(lengths, self.config(), self.settings, full, self._bytes_per_value()) / 1e9

    def weights_gb(self) -> float:
        """Memory of the weights (parameters and stored buffers) at the compute dtype, from the file headers."""
        return parameter_count(self._checkpoint()) * self._bytes_per_value() / 1e9

    def layer_widths(self) -> dict[str, int]:
        """Feature width of every layer, from the config alone (docs/esmfold2-layers.md)."""
        cfg = self.config()
        pair = cfg.pairwise_hidden_size
        out = {}
        for name in self.layer_names():
            ref = stages.parse_layer(name)
            assert ref is not None  # layer_names() gives parsable names
            if ref.raw:
                out[name] = pair
            elif ref.is_pair:
                out[name] = pair * (2 if self.settings.pair_reduction == "rowcol" else 1)
            elif ref.stage == "esmc":
                out[name] = cfg.esmc_config.hidden_size
            elif ref.stage == "input_embedder":
                out[name] = cfg.single_inputs_size
            elif ref.stage == "diffusion":
                out[name] = cfg.structure_head.diffusion_module.hidden_size
            else:  # confidence.single
                out[name] = cfg.hidden_size
        return out

    def token_rows(self, layer: str, size: int) -> int:
        """Stored rows per sample of a per-token layer: L, or L*L for a raw pair layer."""
        return size * size if layer.endswith(stages.RAW_SUFFIX) else size

    def validate(self, record: Record) -> None:
        super().validate(record)
        check_sequence(record.id, record.payload)
        need, limit = self.estimate_gb([record.size]), self.memory_limit_gb()
        if need > limit:
            raise InvalidInput(
                f"{record.id}: {record.size} residues need an estimated {need:.1f} GB "
                f"(L^2 x {self.config().pairwise_hidden_size} pair channels x working copies), above the "
                f"{limit:.1f} GB limit; raise it with options={{'max_memory_gb': '...'}} or split the input",
                record.id,
            )

    # ---- running ---------------------------------------------------------------------------------
    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        for r in records:
            self.validate(r)  # before loading: a refused input costs no model load
        self.ensure_loaded()
        assert self.extractor is not None  # set by load()
        want_scores = bool(self.settings.structures_dir)
        results: list[SampleFeatures] = []
        for chunk in self._memory_chunks(records):
            samples = [featurize_sequence(r.payload) for r in chunk]
            for r, s, (tokens, outputs, structure) in zip(chunk, samples, self.extractor.run(samples, layers, want_scores)):
                if structure is not None and self.settings.structures_dir:
                    self._write_structure(r, s, structure)
                results.append(SampleFeatures(tokens=tokens, outputs=outputs))
        return results

    def _memory_chunks(self, records: Sequence[Record]) -> list[list[Record]]:
        """Split a batch so each part fits the memory limit (each record alone fits: validated)."""
        limit = self.memory_limit_gb()
        chunks: list[list[Record]] = []
        for r in records:
            if chunks and self.estimate_gb([x.size for x in chunks[-1]] + [r.size]) <= limit:
                chunks[-1].append(r)
            else:
                chunks.append([r])
        return chunks

    def _write_structure(self, record: Record, sample, structure: dict) -> None:
        assert self.settings.structures_dir is not None  # forward() writes only when it is set
        write_structure(self.settings.structures_dir, record.id, sample, structure["coords"], structure["plddt"],
                        structure["ptm"], self.settings.structure_format)


class EsmFold2FastAdapter(EsmFold2Adapter):
    """ESMFold2-Fast: the same architecture trained without an MSA encoder."""

    hub_id = "biohub/ESMFold2-Fast"
    info = ModelInfo(
        name="esmfold2-fast",
        family="ESMFold2",
        modality="protein sequence",
        input_kind="sequence",
        extra="esmfold2",
        license="MIT",
        weights="biohub/ESMFold2-Fast from the local Hugging Face cache (hf download biohub/ESMFold2-Fast) or weights=DIR",
        description="ESMFold2-Fast (no MSA encoder): ESMC -> pair trunk -> diffusion -> confidence, every stage",
    )


class EsmcAdapter(_HubCheckpointAdapter):
    """An ESMC backbone alone; layers ``esmc.0`` (embeddings) ... ``esmc.N`` (last layer, normed).

    Chains of a complex run in one sequence ``<cls> A <eos> <cls> B <eos>`` with chain-aware attention,
    exactly as ESMFold2 feeds its backbone, so ``esmc.<i>`` here equals ESMFold2's ``esmc.<i>`` when the
    weights are the same.
    """

    hub_id: ClassVar[str] = "biohub/ESMC-300M"
    info = ModelInfo(
        name="esmc-300m", family="ESMC", modality="protein sequence", input_kind="sequence", extra="esmfold2",
        license="that of the checkpoint (see its model card)",
        weights="biohub/ESMC-300M from the local Hugging Face cache (hf download biohub/ESMC-300M) or weights=DIR",
        description="ESMC protein language model (ESMFold2's backbone), per-residue hidden states of every layer",
    )
    OPTIONS = ("max_memory_gb",)

    def __init__(self, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        torch_dtype_for(device, dtype)
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise RepalignError(f"model {self.info.name}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(self.OPTIONS)}")
        if options.get("max_memory_gb") not in (None, ""):
            try:
                ok = float(options["max_memory_gb"]) > 0
            except ValueError:
                ok = False
            if not ok:
                raise RepalignError(f"option max_memory_gb={options['max_memory_gb']!r} is not a positive number; pass e.g. max_memory_gb=64")
        self._path: Path | None = None
        self._config = None
        self.model: Any = None  # the transformers EsmcModel, set by load()

    def config(self):
        if self._config is None:
            cfg = load_config(self._checkpoint())
            cfg = getattr(cfg, "esmc_config", None) or cfg  # an ESMFold2 checkpoint's backbone config
            if getattr(cfg, "model_type", None) != "esmc":
                raise RepalignError(f"{self._checkpoint()}: not an ESMC checkpoint; check weights=")
            check_weight_files(self._checkpoint())
            self._config = cfg
        return self._config

    def load(self) -> None:
        self.model = load_esmc(self._checkpoint(), self.device, self.dtype)
        self._config = self.model.config

    def layer_names(self) -> list[str]:
        return [f"esmc.{i}" for i in range(self.config().num_hidden_layers + 1)]

    def layer_widths(self) -> dict[str, int]:
        return {name: self.config().hidden_size for name in self.layer_names()}

    def _bytes_per_value(self) -> int:
        return 4 if self.dtype == "float32" else 2

    def weights_gb(self) -> float:
        """Memory of the backbone's parameters at the compute dtype, from the checkpoint's file headers
        (an ESMFold2 checkpoint counts its ``esmc.*`` tensors only)."""
        bundled = getattr(load_config(self._checkpoint()), "model_type", None) == "esmfold2"
        return parameter_count(self._checkpoint(), "esmc." if bundled else "") * self._bytes_per_value() / 1e9

    def memory_limit_gb(self) -> float:
        value = self.options.get("max_memory_gb")
        return float(value) if value not in (None, "") else default_memory_limit_gb(self.device)

    def estimate_gb(self, lengths: Sequence[int]) -> float:
        """Working memory of one padded batch (weights excluded), T = longest length + 2 special tokens:

        B*T*D*(layers + 1)*b   every hidden state is kept (output_hidden_states)
        + B*H*T^2*b*2          attention scores and probabilities of one layer
        + B*T*I*b*2            the feed-forward intermediate of one layer
        """
        cfg = self.config()
        b, t, nbytes = len(lengths), max(lengths) + 2, self._bytes_per_value()
        total = b * t * cfg.hidden_size * (cfg.num_hidden_layers + 1) * nbytes
        total += b * cfg.num_attention_heads * t * t * nbytes * 2 + b * t * cfg.intermediate_size * nbytes * 2
        return total / 1e9

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov.update(_provenance_extra(self._checkpoint(), self.hub_id))
        return prov

    def validate(self, record: Record) -> None:
        super().validate(record)
        check_sequence(record.id, record.payload)
        limit = self.config().max_position_embeddings
        n = record.size + 2 * len(record.chains)
        if n > limit:
            raise InvalidInput(
                f"{record.id}: {n} tokens with the special tokens, more than ESMC's {limit} positions; split or trim the input",
                record.id,
            )

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        import torch

        self.ensure_loaded()
        names = self.layer_names()
        for layer in layers:
            if layer not in names:
                raise RepalignError(f"unknown {self.info.name} layer {layer!r}; layers are esmc.0 ... {names[-1]}")
        for r in records:
            self.validate(r)
        encoded = [esmc_token_ids(r.chains) for r in records]
        width = max(len(ids) for ids, _, _ in encoded)
        pad = self.config().pad_token_id
        input_ids = torch.full((len(records), width), pad, dtype=torch.long)
        sequence_id = torch.full((len(records), width), -1, dtype=torch.long)
        for b, (ids, seq_id, _) in enumerate(encoded):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            sequence_id[b, : len(ids)] = torch.tensor(seq_id)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model(input_ids=input_ids.to(device), sequence_id=sequence_id.to(device), output_hidden_states=True)
        index = {n: i for i, n in enumerate(names)}
        results = []
        for b, (_, _, positions) in enumerate(encoded):
            pos = torch.tensor(positions, device=device)
            tokens = {layer: out.hidden_states[index[layer]][b, pos].float().cpu().numpy() for layer in layers}
            results.append(SampleFeatures(tokens=tokens))
        return results


class Esmc600mAdapter(EsmcAdapter):
    hub_id = "biohub/ESMC-600M"
    info = ModelInfo(
        name="esmc-600m", family="ESMC", modality="protein sequence", input_kind="sequence", extra="esmfold2",
        license="that of the checkpoint (see its model card)",
        weights="biohub/ESMC-600M from the local Hugging Face cache (hf download biohub/ESMC-600M) or weights=DIR",
        description="ESMC 600M protein language model, per-residue hidden states of every layer",
    )


class Esmc6bAdapter(EsmcAdapter):
    hub_id = "biohub/ESMC-6B"
    info = ModelInfo(
        name="esmc-6b", family="ESMC", modality="protein sequence", input_kind="sequence", extra="esmfold2",
        license="that of the checkpoint (see its model card)",
        weights="biohub/ESMC-6B from the local Hugging Face cache (hf download biohub/ESMC-6B) or weights=DIR",
        description="ESMC 6B protein language model (ESMFold2's largest backbone), per-residue hidden states of every layer",
    )
