"""SevenNet (Park et al., J. Chem. Theory Comput. 20, 4857 (2024)): an E(3)-equivariant NequIP-style potential.

Registered names and the checkpoints shipped in the ``sevenn`` wheel (no download):

- ``sevennet-0``: SevenNet-0 (11 Jul 2024), MPtrj (PBE/PBE+U), l_max = 2.
- ``sevennet-l3i5``: SevenNet-l3i5, MPtrj, l_max = 3.
- ``sevennet-mf-0``: SevenNet-MF-0, multi-fidelity (MPtrj PBE and MP r2SCAN). The fidelity is the
  option ``modal``: ``PBE`` (default, the MPtrj fidelity shared with sevennet-0 and CHGNet 0.3.0)
  or ``R2SCAN`` (``--option modal=R2SCAN``).

Layers, in model order, one row per atom:

- ``embedding``: the linear element embedding (``onehot_to_feature_x``, scalars only).
- ``conv.0`` ... ``conv.4``: node features after each of the five interaction blocks (output of the
  block's equivariant gate). The blocks carry l > 0 irreps (vectors, rank-2 tensors) that rotate
  with the structure; a layer's features are the l = 0 channels followed by the Euclidean norm of
  every l > 0 channel (one number per channel), so each layer is invariant to rotations,
  translations and atom permutations. The last block is scalars only.

Outputs: ``energy`` (total, eV) and ``energy_per_atom`` (eV/atom), equal to SevenNet's ASE
calculator (``sevenn.calculator.SevenNetCalculator``).

Inputs: crystals, slabs and molecules alike (SevenNet's graph follows ``atoms.pbc``); every
structure in a batch becomes one graph of a ``torch_geometric`` batch.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from repalign.errors import ModelUnavailable, RepalignError
from repalign.inputs import Record
from repalign.models._atomistic import (
    EXTRA_HINT,
    check_layers,
    check_loadable,
    energy_outputs,
    missing_package_reason,
    reject_elements,
    reject_empty,
    reject_flat_cell,
    split_by_structure,
)
from repalign.models._common import captured_outputs, provenance_record, sha256_of_file
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures

_LICENSE = "MIT (sevenn package LICENSE)"


def invariant_features(x, irreps) -> "np.ndarray":
    """Rotation-invariant view of equivariant node features ``x`` (N, irreps.dim), as float32 numpy.

    l = 0 channels are kept as they are; each l > 0 channel (a 2l+1 vector) becomes its norm.
    """
    import torch

    parts = []
    for sl, (mul, ir) in zip(irreps.slices(), irreps):
        block = x[:, sl]
        if ir.l == 0:
            parts.append(block)
        else:
            parts.append(torch.linalg.vector_norm(block.reshape(x.shape[0], mul, 2 * ir.l + 1), dim=-1))
    return torch.cat(parts, dim=1).detach().cpu().float().numpy()


class SevenNetAdapter(ModelAdapter):
    """Base of the SevenNet checkpoints; subclasses set ``info`` and ``checkpoint_const``."""
    WEIGHTS_LAYOUT = "file"

    checkpoint_const: ClassVar[str]  # name of the checkpoint path constant in sevenn._const
    modals: ClassVar[tuple[str, ...]] = ()  # fidelities of a multi-fidelity checkpoint
    default_modal: ClassVar[str | None] = None

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("modal",) if cls.modals else ()

    def __init__(self, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        if self.modals:
            modal = str(self.options.get("modal", self.default_modal))
            matches = [m for m in self.modals if m.lower() == modal.lower()]
            if not matches:
                raise RepalignError(f"model {self.info.name}: modal={modal!r}; choose one of {', '.join(self.modals)}")
            self.options["modal"] = matches[0]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_package_reason("sevenn", "e3nn", "torch_geometric")

    def _weights_file(self) -> Path:
        if self.weights:
            path = Path(self.weights)
            if not path.is_file():
                raise ModelUnavailable(f"{path}: no such SevenNet checkpoint file; pass a .pth checkpoint")
            return path
        from sevenn import _const

        # the constant names the file inside the wheel; sevenn's own name lookup would download a missing one
        path = Path(getattr(_const, self.checkpoint_const))
        if not path.is_file():
            raise ModelUnavailable(f"{self.info.name} weights are missing from the sevenn package; {EXTRA_HINT}")
        return path

    def load(self) -> None:
        check_loadable(self)
        import torch
        from sevenn import _keys as KEY
        from sevenn.checkpoint import SevenNetCheckpoint

        path = self._weights_file()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # advice about optional GPU kernels
            checkpoint = SevenNetCheckpoint(str(path))
            model = checkpoint.build_model()
        model.set_is_batch_data(True)
        # features and energy only: forces and stress (an autograd pass costing more than the
        # forward) are not needed, and without them the model runs under no_grad
        if "force_output" in model._modules:
            model.delete_module_by_key("force_output")
        self._model = model.to(torch.device(self.device)).eval()
        self._cutoff = float(checkpoint.config[KEY.CUTOFF])
        self._type_map = dict(checkpoint.config[KEY.TYPE_MAP])  # atomic number -> type index
        self._n_blocks = int(checkpoint.config[KEY.NUM_CONVOLUTION])
        self._weights_path = path
        modal_map = getattr(model, "modal_map", None) or {}
        if self._n_blocks != 5:
            raise ModelUnavailable(f"{path}: has {self._n_blocks} interaction blocks, expected 5; pass a checkpoint of this model")
        if sorted(modal_map) != sorted(self.modals):
            raise ModelUnavailable(
                f"{path}: fidelities {sorted(modal_map)} differ from {self.info.name}'s {sorted(self.modals)}; "
                "pass a checkpoint of this model"
            )

    def layer_names(self) -> list[str]:
        return ["embedding"] + [f"conv.{i}" for i in range(5)]

    def provenance(self) -> dict[str, Any]:
        path = self._weights_file()
        weights = {"version": self.checkpoint_const, "weights_file": path.name, "weights_sha256": sha256_of_file(path)}
        return provenance_record(
            self,
            weights,
            ("sevenn", "e3nn", "torch_geometric", "torch", "ase"),
            notes={"features": "l=0 channels then norms of l>0 channels"},
        )

    def supported_elements(self) -> list[str]:
        from ase.data import chemical_symbols

        self.ensure_loaded()
        return [chemical_symbols[z] for z in sorted(self._type_map)]

    def validate(self, record: Record) -> None:
        super().validate(record)
        reject_empty(record)
        self.ensure_loaded()
        reject_elements(record, self.info.name, self._type_map, " ".join(self.supported_elements()))
        reject_flat_cell(record)

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        self.ensure_loaded()
        check_layers(self, layers)
        import torch
        from sevenn import _keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.data import Batch

        graphs = []
        for record in records:
            graph = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(record.payload, self._cutoff))
            if self.modals:
                graph[KEY.DATA_MODALITY] = self.options["modal"]
            graphs.append(graph)
        batch = Batch.from_data_list(graphs).to(self.device)

        model = self._model
        modules = {"embedding": model._modules["onehot_to_feature_x"]}
        modules.update({f"conv.{i}": model._modules[f"{i}_equivariant_gate"] for i in range(self._n_blocks)})
        hooked = {name: modules[name] for name in layers}

        def keep(name, data):
            module = hooked[name]
            if name == "embedding":
                return invariant_features(data[module.key_output], module.irreps_out)
            return invariant_features(data[module.key_x], module.gate.irreps_out)

        with captured_outputs(hooked, keep) as captured:
            with torch.no_grad():
                output = model(batch)

        energies = output[KEY.PRED_TOTAL_ENERGY].detach().cpu().double().numpy().reshape(-1)
        counts = [len(r.payload) for r in records]
        return [
            SampleFeatures(tokens=tokens, outputs=energy_outputs(float(energy), n))
            for tokens, energy, n in zip(split_by_structure(captured, layers, counts), energies, counts)
        ]


def _info(name: str, description: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        family="SevenNet",
        modality="crystal",
        input_kind="structure",
        extra="zoo",
        license=_LICENSE,
        weights="shipped in the sevenn wheel (sevenn/pretrained_potentials/), loaded offline",
        description=description,
    )


class SevenNet0(SevenNetAdapter):
    info = _info("sevennet-0", "SevenNet-0 (11Jul2024), MPtrj; 5 interaction blocks, l_max=2")
    checkpoint_const = "SEVENNET_0_11Jul2024"


class SevenNetL3I5(SevenNetAdapter):
    info = _info("sevennet-l3i5", "SevenNet-l3i5, MPtrj; 5 interaction blocks, l_max=3")
    checkpoint_const = "SEVENNET_l3i5"


class SevenNetMF0(SevenNetAdapter):
    info = _info("sevennet-mf-0", "SevenNet-MF-0, multi-fidelity MPtrj (PBE) + MP r2SCAN; option modal=PBE|R2SCAN")
    checkpoint_const = "SEVENNET_MF_0"
    modals = ("PBE", "R2SCAN")
    default_modal = "PBE"


__all__ = ["SevenNetAdapter", "SevenNet0", "SevenNetL3I5", "SevenNetMF0", "invariant_features"]
