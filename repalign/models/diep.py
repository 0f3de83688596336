"""DIEP: an M3GNet-style graph potential whose bond and triplet features are integrals of
Gaussian electron densities (the ``diep`` package, PyTorch Geometric backend), trained on MatPES
r2SCAN. Registered as ``diep``; weights: the released ``diep_fold1`` model shipped in the wheel.

Layers, in model order, one row per atom (64 features each):

- ``embedding``: the element embedding (``model.embedding``, node part).
- ``conv.0`` ... ``conv.2``: node features after each graph block (``model.graph_layers``), each
  preceded by its three-body interaction. ``conv.2`` feeds the per-atom energy readout.

The features are built from distances and from triplet integrals drawn in a canonical frame, so
every layer is invariant to rotations, translations and atom permutations up to float32 rounding.

Outputs: ``energy`` (total, eV, including the isolated-atom r2SCAN reference energies) and
``energy_per_atom``, equal to ``diep.pretrained.make_calculator()``.

Inputs: crystals, slabs and molecules (``diep.ext.ase.Atoms2Graph`` follows ``atoms.pbc``; an
isolated molecule gets no periodic images); the structures of a batch form one PyG batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from repalign.errors import ModelUnavailable
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

_WEIGHT_FILES = ("model.json", "model.pt", "state.pt")


class DIEPAdapter(ModelAdapter):
    WEIGHTS_LAYOUT = _WEIGHT_FILES
    info = ModelInfo(
        name="diep",
        family="DIEP",
        modality="crystal",
        input_kind="structure",
        extra="zoo",
        license="BSD-3-Clause (diep package LICENSE)",
        weights="diep_fold1, shipped in the diep wheel (diep/pretrained_models/), loaded offline; "
        "--weights takes another exported model directory",
        description="DIEP (PyG), MatPES r2SCAN, fold 1; 3 graph blocks, 64 features per atom",
    )

    OPTIONS = ()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_package_reason("diep", "torch_geometric", "pymatgen")

    def _model_dir(self) -> Path:
        if self.weights:
            path = Path(self.weights)
        else:
            from diep.pretrained import DEFAULT_MODEL_DIR

            path = Path(DEFAULT_MODEL_DIR)
        missing = [f for f in _WEIGHT_FILES if not (path / f).is_file()]
        if missing:
            raise ModelUnavailable(
                f"{path}: not an exported DIEP model directory (missing {', '.join(missing)}); {EXTRA_HINT} "
                "or pass weights=DIR with model.json, model.pt and state.pt"
            )
        return path

    def load(self) -> None:
        check_loadable(self)
        from diep.ext.ase import Atoms2Graph
        from diep.pretrained import load_potential

        path = self._model_dir()
        # energies only: no forces, stresses or Hessian, so the forward pass needs no autograd graph
        potential = load_potential(path, device=self.device, stress=False)
        potential.calc_forces = False
        self._potential = potential
        self._model_path = path
        model = potential.model
        self._elements = tuple(model.element_types)
        self._converter = Atoms2Graph(self._elements, model.cutoff)
        if model.n_blocks != 3:
            raise ModelUnavailable(f"{path}: has {model.n_blocks} graph blocks, expected 3; pass a DIEP model of this size")

    def layer_names(self) -> list[str]:
        return ["embedding", "conv.0", "conv.1", "conv.2"]

    def provenance(self) -> dict[str, Any]:
        path = self._model_dir()
        weights = {
            "version": path.name,
            "weights_file": path.name,
            "weights_sha256": {f: sha256_of_file(path / f) for f in _WEIGHT_FILES},
        }
        return provenance_record(self, weights, ("diep", "torch_geometric", "pymatgen", "torch", "ase"))

    def validate(self, record: Record) -> None:
        from ase.data import atomic_numbers

        super().validate(record)
        reject_empty(record)
        self.ensure_loaded()
        supported = {atomic_numbers[e] for e in self._elements}
        reject_elements(record, self.info.name, supported, " ".join(self._elements))
        reject_flat_cell(record)

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        self.ensure_loaded()
        check_layers(self, layers)
        import torch
        from torch_geometric.data import Batch

        graphs, lattices, states = [], [], []
        for record in records:
            graph, lattice, state = self._converter.get_graph(record.payload)
            graphs.append(graph)
            lattices.append(torch.as_tensor(lattice, dtype=torch.float32).reshape(1, 3, 3))
            states.append(torch.as_tensor(np.asarray(state), dtype=torch.float32))
        batch = Batch.from_data_list(graphs).to(self.device)
        lattice = torch.cat(lattices).to(self.device)
        state = torch.stack(states).to(self.device)

        model = self._potential.model
        # embedding returns (node, edge, state); a graph block returns (edge, node, state)
        modules = {"embedding": (model.embedding, 0)}
        modules.update({f"conv.{i}": (block, 1) for i, block in enumerate(model.graph_layers)})
        hooked = {name: modules[name][0] for name in layers}
        with captured_outputs(hooked, lambda name, out: out[modules[name][1]].detach().cpu().float().numpy()) as captured:
            with torch.no_grad():
                energies = self._potential(batch, lattice, state)[0]

        energies = energies.detach().cpu().double().numpy().reshape(-1)
        counts = [len(r.payload) for r in records]
        return [
            SampleFeatures(tokens=tokens, outputs=energy_outputs(float(energy), n))
            for tokens, energy, n in zip(split_by_structure(captured, layers, counts), energies, counts)
        ]


__all__ = ["DIEPAdapter"]
