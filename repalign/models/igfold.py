"""IgFold: antibody structure prediction from AntiBERTy embeddings, registered as ``igfold``.

The same design as ESMFold in miniature: a language model (AntiBERTy: its last-layer residue
embeddings and all 64 attention maps) feeds a graph transformer with triangle updates, then
invariant-point-attention (IPA) layers build the structure. This adapter runs IgFold's own embedding
path (``igfold.utils.embed.embed`` with an ``antiberty.AntiBERTyRunner``) and reads the stages with
forward hooks.

Packages: ``igfold==1.0.1`` (which pulls ``antiberty>=1.0``, a release without weights); the
AntiBERTy weights are the antiberty-0.1.3 checkpoint installed by
``python -m repalign.models.antiberty install-weights`` (see ``repalign.models.antiberty``) and
handed to ``AntiBERTyRunner(checkpoint_path=...)``, so nothing is fetched from a hub.
IgFold ships an ensemble of checkpoints (``igfold_1``, ``igfold_2``, ``igfold_3``, ``igfold_5``
in 1.0.1); one is used, ``igfold_1`` by default (the first, which ``IgFoldRunner(num_models=1)``
also picks), another with the option ``checkpoint=2`` (or 3, 5).

Layer names, in model order (``L`` residues of all chains, heavy then light):

- ``antiberty``: the AntiBERTy last-layer embeddings IgFold takes as input (512)
- ``node_proj``: the projection of those to IgFold's node features (``str_node_transform``, 64)
- ``graph.0`` ... ``graph.3``: node features after each graph-transformer layer of the
  triangle graph transformer (``main_block``; IgFold calls the last one ``gt_embs``), 64
- ``template_ipa``: after the template IPA encoder (no template given; IgFold's ``structure_embs``), 64
- ``structure_ipa.0`` ... ``structure_ipa.2``: after each IPA block of the structure module, 64;
  the last is the final single representation from which the backbone frames are read.

Inputs: one chain (a nanobody, run as chain ``H``) or ``HEAVY:LIGHT`` (chains ``H`` and ``L``),
standard amino acids only, at most 510 residues per chain. Each record runs alone (IgFold's own
embedding path takes one antibody at a time), so its features never depend on the batch.
``outputs['mean_prmsd']`` is IgFold's predicted per-atom RMSD (Angstrom), averaged over the backbone.
No ``cls`` vector: pooling is the mean by default (``max`` and ``last`` also work on the residue rows).

Controls: AntiBERTy is IgFold's pretrained input featuriser (:meth:`IgFold.pretrained_inputs`), so
``igfold@random:SEED`` is trained AntiBERTy + a random-initialised IgFold network (its ``antiberty``
features are the trained model's), the contrast for what IgFold's own training adds on top of its
input; ``igfold@random-all:SEED`` re-initialises AntiBERTy too (:mod:`repalign.models.controls`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from repalign.errors import ModelUnavailable, RepalignError
from repalign.inputs import Record
from repalign.models._common import (
    captured_outputs,
    missing_modules,
    provenance_record,
    sha256_of_files,
)
from repalign.models._sequence import (
    STANDARD_AMINO_ACIDS,
    check_device_dtype,
    check_sequence_record,
    quiet_transformers,
    start_forward,
)
from repalign.models.antiberty import INSTALL_HINT as ANTIBERTY_HINT
from repalign.models.antiberty import WEIGHTS_VERSION as ANTIBERTY_VERSION
from repalign.models.antiberty import find_weights_dir
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures
from repalign.packages import package_dir

CHECKPOINTS = ("1", "2", "3", "5")
GRAPH_DEPTH = 4  # TriangleGraphTransformer depth of every shipped checkpoint
STRUCTURE_IPA_DEPTH = 3
INSTALL_HINT = "needs the 'zoo' extra: pip install 'repalign[zoo]'"


def igfold_weights_dir() -> Path | None:
    root = package_dir("igfold")
    return root / "trained_models" / "IgFold" if root is not None else None


class IgFold(ModelAdapter):
    """IgFold stage features; see the module docstring."""
    WEIGHTS_LAYOUT = "file"

    info = ModelInfo(
        name="igfold",
        family="IgFold",
        modality="antibody sequence",
        input_kind="sequence",
        extra="zoo",
        license="JHU Academic Software License (non-commercial use only; see igfold's LICENSE.md); AntiBERTy weights MIT",
        weights=(
            "igfold_1.safetensors shipped in the igfold==1.0.1 wheel, plus the antiberty-0.1.3 weights: "
            f"{ANTIBERTY_HINT}"
        ),
        description="antibody structure predictor: AntiBERTy -> graph transformer -> IPA (Ruffolo et al. 2023)",
    )
    default_pooling = "mean"
    max_size = 2 * 510

    OPTIONS = ("checkpoint", "antiberty_weights")

    def __init__(self, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        check_device_dtype(device, dtype)
        if dtype != "float32":
            raise RepalignError(f"igfold runs in float32 only (its IPA layers force full precision), not dtype={dtype!r}; "
                                "pass dtype='float32'")
        checkpoint = str(options.get("checkpoint", "1"))
        if checkpoint not in CHECKPOINTS:
            raise RepalignError(f"igfold: unknown checkpoint {checkpoint!r}; use one of {', '.join(CHECKPOINTS)}")
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        self.checkpoint = checkpoint
        self._model: Any = None  # IgFold torch module and AntiBERTy runner, set by load()
        self._antiberty: Any = None
        self._checkpoint_file: Path | None = None
        self._antiberty_dir: Path | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = missing_modules("torch", "transformers", "igfold", "antiberty", "einops")
        if missing:
            return f"{INSTALL_HINT} (missing {', '.join(missing)})"
        if find_weights_dir() is None:
            return f"AntiBERTy {ANTIBERTY_VERSION} weights not installed; run: {ANTIBERTY_HINT}"
        return None

    def load(self) -> None:
        missing = missing_modules("torch", "transformers", "igfold", "antiberty", "einops")
        if missing:
            raise ModelUnavailable(f"model igfold: {INSTALL_HINT} (missing {', '.join(missing)})")
        antiberty_dir = find_weights_dir(self.options.get("antiberty_weights"))
        if antiberty_dir is None or not (antiberty_dir / "config.json").is_file():
            raise ModelUnavailable(f"model igfold: AntiBERTy {ANTIBERTY_VERSION} weights not installed; run: {ANTIBERTY_HINT}")
        if self.weights:
            checkpoint = Path(self.weights).expanduser()
        else:
            weights_dir = igfold_weights_dir()
            assert weights_dir is not None  # igfold is installed (checked above)
            checkpoint = weights_dir / f"igfold_{self.checkpoint}.safetensors"
        if not checkpoint.is_file():
            raise ModelUnavailable(f"model igfold: no IgFold checkpoint {checkpoint}; {INSTALL_HINT}")
        from antiberty import AntiBERTyRunner
        from igfold.utils.checkpoint import load_model

        self._model = load_model(str(checkpoint), device=self.device)
        with quiet_transformers():
            self._antiberty = AntiBERTyRunner(device=self.device, checkpoint_path=str(antiberty_dir))
        self._checkpoint_file, self._antiberty_dir = checkpoint, antiberty_dir

    def layer_names(self) -> list[str]:
        return (
            ["antiberty", "node_proj"]
            + [f"graph.{i}" for i in range(GRAPH_DEPTH)]
            + ["template_ipa"]
            + [f"structure_ipa.{i}" for i in range(STRUCTURE_IPA_DEPTH)]
        )

    def input_layers(self) -> list[str]:
        """IgFold's input stages: ``antiberty`` (AntiBERTy's last layer), ``node_proj`` (a linear map
        of it) and ``graph.0``-``graph.2``, whose gated residuals pass node_proj's features through
        unchanged in the released checkpoint (measured in analyses/results/antibody_models)."""
        return ["antiberty", "node_proj", "graph.0", "graph.1", "graph.2"]

    def pretrained_inputs(self) -> dict[str, str]:
        """AntiBERTy (the ``antiberty`` model, trained separately) is IgFold's input featuriser: its
        control ``igfold@random:SEED`` keeps it trained and re-initialises IgFold's own network."""
        return {"antiberty": "_antiberty"}

    def provenance(self) -> dict[str, Any]:
        self.ensure_loaded()
        assert self._antiberty_dir is not None and self._checkpoint_file is not None  # set by load()
        antiberty_files = [p for p in self._antiberty_dir.iterdir() if p.name in {"config.json", "pytorch_model.bin", "model.safetensors"}]
        weights = {
            "weights": self._checkpoint_file.name,
            "weights_sha256": sha256_of_files([self._checkpoint_file]),
            "antiberty_weights": f"antiberty-{ANTIBERTY_VERSION}",
            "antiberty_weights_sha256": sha256_of_files(antiberty_files),
        }
        return provenance_record(
            self,
            weights,
            ("igfold", "antiberty", "torch", "transformers", "einops", "repalign"),
            options={"checkpoint": self.checkpoint},
        )

    def validate(self, record: Record) -> None:
        check_sequence_record(
            record, "igfold", STANDARD_AMINO_ACIDS, 510, chains=(1, 2), chain_hint=" (a nanobody, or HEAVY:LIGHT)"
        )

    def _hooked_modules(self) -> dict[str, Any]:
        model = self._model
        modules = {"node_proj": model.str_node_transform}
        for i, (graph_transformer, _, _) in enumerate(model.main_block.layers):
            modules[f"graph.{i}"] = graph_transformer
        modules["template_ipa"] = model.template_ipa
        for i, (ipa_block, _) in enumerate(model.structure_ipa.layers):
            modules[f"structure_ipa.{i}"] = ipa_block
        return modules

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        import torch
        from igfold.utils.embed import embed

        # IgFold's own checks raise ValueError, not InvalidInput, hence the validation up front
        wanted = list(start_forward(self, records, layers, "igfold"))
        hooked = {n: m for n, m in self._hooked_modules().items() if n in wanted}

        def node_features(_name, output):
            # GraphTransformer returns (nodes, edges); the others return the node features
            return (output[0] if isinstance(output, tuple) else output).detach()

        results = []
        with captured_outputs(hooked, node_features) as captured:
            for record in records:
                chains = record.chains
                sequences = dict(zip(("H", "L"), chains))
                captured.clear()
                with torch.no_grad():
                    out = embed(self._antiberty, self._model, sequences=sequences)
                captured["antiberty"] = out.bert_embs
                n = sum(len(c) for c in chains)
                tokens = {}
                for name in wanted:
                    rows = captured[name][0].float().cpu().numpy()
                    if rows.shape[0] != n:
                        raise RepalignError(f"igfold: stage {name} gave {rows.shape[0]} rows for {n} residues of {record.id}")
                    tokens[name] = np.ascontiguousarray(rows, dtype=np.float32)
                prmsd = float(out.prmsd[0].float().mean().cpu())
                results.append(SampleFeatures(tokens=tokens, outputs={"mean_prmsd": prmsd}))
        return results
