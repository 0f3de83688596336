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

import functools
import hashlib
from importlib import metadata, util
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from repalign.errors import InvalidInput, ModelUnavailable, RepalignError
from repalign.inputs import Record
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures

_EXTRA_HINT = "needs the 'zoo' extra: pip install 'repalign[zoo]'"
_WEIGHT_FILES = ("model.json", "model.pt", "state.pt")


@functools.lru_cache(maxsize=None)
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class DIEPAdapter(ModelAdapter):
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

    @classmethod
    def unavailable_reason(cls) -> str | None:
        for package in ("diep", "torch_geometric", "pymatgen"):
            if util.find_spec(package) is None:
                return f"{package} is not installed; {_EXTRA_HINT}"
        return None

    def _model_dir(self) -> Path:
        if self.weights:
            path = Path(self.weights)
        else:
            from diep.pretrained import DEFAULT_MODEL_DIR

            path = Path(DEFAULT_MODEL_DIR)
        missing = [f for f in _WEIGHT_FILES if not (path / f).is_file()]
        if missing:
            raise ModelUnavailable(
                f"{path}: not an exported DIEP model directory (missing {', '.join(missing)}); {_EXTRA_HINT} "
                "or pass --weights DIR with model.json, model.pt and state.pt"
            )
        return path

    def load(self) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise ModelUnavailable(f"model {self.info.name}: {reason}")
        if self.dtype != "float32":
            raise RepalignError(f"model {self.info.name} runs in float32 only; drop --dtype {self.dtype}")
        if self.options:
            raise RepalignError(f"model {self.info.name} takes no options, got {sorted(self.options)}; remove them")
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
        return {
            "model": self.info.name,
            "family": self.info.family,
            "version": path.name,
            "weights_file": path.name,
            "weights_sha256": {f: _sha256(str((path / f).resolve())) for f in _WEIGHT_FILES},
            "packages": {p: _version(p) for p in ("diep", "torch_geometric", "pymatgen", "torch", "ase")},
            "dtype": self.dtype,
            "device": self.device,
            "options": dict(self.options),
        }

    def validate(self, record: Record) -> None:
        super().validate(record)
        atoms = record.payload
        if len(atoms) == 0:
            raise InvalidInput(f"{record.id}: empty structure; remove it or give it atoms", record.id)
        self.ensure_loaded()
        bad = sorted(set(atoms.get_chemical_symbols()) - set(self._elements))
        if bad:
            raise InvalidInput(
                f"{record.id}: element(s) {', '.join(bad)} not supported by {self.info.name} "
                f"(supports {' '.join(self._elements)}); remove it or pass --skip-invalid",
                record.id,
            )
        if np.asarray(atoms.pbc).any() and abs(atoms.cell.volume) < 1e-6:
            raise InvalidInput(f"{record.id}: periodic structure with a zero-volume cell; give it a full cell", record.id)

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        self.ensure_loaded()
        unknown = [l for l in layers if l not in self.layer_names()]
        if unknown:
            raise RepalignError(f"unknown layer(s) {unknown} for {self.info.name}; choose from {self.layer_names()}")
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
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name in layers:
            module, index = modules[name]
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out, name=name, index=index: captured.__setitem__(name, out[index])
                )
            )
        try:
            with torch.no_grad():
                energies = self._potential(batch, lattice, state)[0]
        finally:
            for handle in handles:
                handle.remove()

        energies = energies.detach().cpu().double().numpy().reshape(-1)
        counts = [len(r.payload) for r in records]
        splits = np.cumsum(counts)[:-1]
        per_layer = {name: np.split(captured[name].detach().cpu().float().numpy(), splits) for name in layers}
        return [
            SampleFeatures(
                tokens={name: np.ascontiguousarray(per_layer[name][i], dtype=np.float32) for name in layers},
                outputs={"energy": float(energies[i]), "energy_per_atom": float(energies[i]) / n},
            )
            for i, n in enumerate(counts)
        ]


__all__ = ["DIEPAdapter"]
