"""CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)): a charge-informed graph potential for crystals.

Registered names and the checkpoints shipped in the ``chgnet`` wheel (no download):

- ``chgnet-0.3.0``: MPtrj-trained CHGNet 0.3.0 (the package default).
- ``chgnet-0.2.0``: the earlier MPtrj release.
- ``chgnet-r2scan``: 0.3.0 transfer-learned on MP r2SCAN relaxations.

Layers, in model order, one row per atom (64 features each):

- ``embedding``: the learned element embedding (``atom_embedding``).
- ``conv.0`` ... ``conv.3``: atom features after each atom-graph convolution (``atom_conv_layers``).
  ``conv.2`` feeds the magnetic-moment head, ``conv.3`` the energy readout (for ``chgnet-r2scan``
  a LayerNorm sits between ``conv.3`` and the readout MLP).

Every layer is invariant to rotations, translations and atom permutations (CHGNet's graph uses
distances and angles only).

Outputs: ``energy`` (total energy of the cell, eV) and ``energy_per_atom`` (eV/atom, what CHGNet
predicts), equal to ``chgnet.model.dynamics.CHGNetCalculator``.

Inputs: fully periodic crystals are converted with pymatgen's ``AseAtomsAdaptor``. A molecule
(no periodic axis) is put in an orthorhombic box with ``atom_graph_cutoff + 1`` Angstrom (7 A) of
vacuum between periodic images, so no image lies within any cutoff and the graph is exactly the
isolated molecule's. Mixed periodicity (slabs, wires) is rejected. Atoms with no neighbour within
6 A cannot be encoded by CHGNet and are rejected with the record id.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from repalign.errors import InvalidInput, ModelUnavailable
from repalign.inputs import Record
from repalign.models._atomistic import (
    EXTRA_HINT,
    check_layers,
    check_loadable,
    missing_package_reason,
    reject_elements,
    reject_empty,
    reject_flat_cell,
    split_by_structure,
)
from repalign.models._common import captured_outputs, provenance_record, sha256_of_file
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures

_LICENSE = "BSD-3-Clause-LBNL (modified BSD; chgnet package LICENSE)"
#: CHGNet's element embedding covers atomic numbers 1..94 (H..Pu)
_MAX_Z = 94
_ATOM_GRAPH_CUTOFF = 6.0
#: vacuum between periodic images of a boxed molecule: CHGNet's atom-graph cutoff + 1 A
_MOLECULE_VACUUM = _ATOM_GRAPH_CUTOFF + 1.0
_N_CONV = 4


class CHGNetAdapter(ModelAdapter):
    """Base of the three CHGNet checkpoints; subclasses set ``info`` and ``checkpoint``."""
    WEIGHTS_LAYOUT = "file"

    checkpoint: ClassVar[str]  # CHGNet.load model_name, also the pretrained/ subfolder

    OPTIONS = ()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_package_reason("chgnet", "pymatgen")

    def _weights_file(self) -> Path:
        if self.weights:
            path = Path(self.weights)
            if not path.is_file():
                raise ModelUnavailable(f"{path}: no such CHGNet checkpoint file; pass a .pth.tar file saved by CHGNet")
            return path
        import chgnet

        files = sorted((Path(chgnet.__file__).parent / "pretrained" / self.checkpoint).glob("*.pth.tar"))
        if not files:
            raise ModelUnavailable(f"CHGNet {self.checkpoint} weights are missing from the chgnet package; {EXTRA_HINT}")
        return files[0]

    def load(self) -> None:
        check_loadable(self)
        import torch
        from chgnet.model import CHGNet

        path = self._weights_file()
        # same construction as CHGNet.load, but from an explicit file so the hash names what ran
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
            model = CHGNet.from_file(str(path), mlp_out_bias=self.checkpoint == "0.2.0", version=self.checkpoint)
        self._model = model.to(torch.device(self.device)).eval()
        self._weights_path = path
        if len(self._model.atom_conv_layers) != _N_CONV:
            raise ModelUnavailable(
                f"{path}: has {len(self._model.atom_conv_layers)} conv layers, expected {_N_CONV}; "
                "pass a CHGNet checkpoint of the released architecture"
            )

    def layer_names(self) -> list[str]:
        return ["embedding"] + [f"conv.{i}" for i in range(_N_CONV)]

    def provenance(self) -> dict[str, Any]:
        path = self._weights_file()
        weights = {"version": self.checkpoint, "weights_file": path.name, "weights_sha256": sha256_of_file(path)}
        return provenance_record(
            self, weights, ("chgnet", "pymatgen", "torch", "ase"), notes={"molecule_vacuum_A": _MOLECULE_VACUUM}
        )

    def validate(self, record: Record) -> None:
        super().validate(record)
        reject_empty(record)
        reject_elements(record, self.info.name, range(1, _MAX_Z + 1), f"H..Pu, Z=1-{_MAX_Z}")
        atoms = record.payload
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if pbc.any() and not pbc.all():
            raise InvalidInput(
                f"{record.id}: periodic along some axes only (pbc={pbc.tolist()}); {self.info.name} takes "
                "fully periodic crystals or molecules (pbc all False)",
                record.id,
            )
        reject_flat_cell(record)
        if pbc.all() and np.linalg.norm(atoms.cell.array, axis=1).min() < _ATOM_GRAPH_CUTOFF:
            return  # every atom's own periodic image is a neighbour: none can be isolated
        from ase.neighborlist import neighbor_list

        # CHGNet's graph cannot hold an atom without a neighbour (periodic images count)
        isolated = np.setdiff1d(np.arange(len(atoms)), neighbor_list("i", atoms, _ATOM_GRAPH_CUTOFF))
        if isolated.size:
            raise InvalidInput(
                f"{record.id}: atom(s) {isolated[:5].tolist()} have no neighbour within {_ATOM_GRAPH_CUTOFF:g} A, "
                f"which {self.info.name} cannot encode; remove it or pass skip_invalid=True",
                record.id,
            )

    def _structure(self, atoms):
        """pymatgen Structure of a crystal, or of a molecule boxed with vacuum (see module doc)."""
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = atoms.copy()
        atoms.calc = None
        if not np.asarray(atoms.pbc).any():
            positions = atoms.positions - atoms.positions.min(axis=0)
            extent = positions.max(axis=0)
            atoms.set_cell(np.diag(extent + _MOLECULE_VACUUM))
            atoms.positions = positions + _MOLECULE_VACUUM / 2
            atoms.pbc = True
        return AseAtomsAdaptor.get_structure(atoms)

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        self.ensure_loaded()
        check_layers(self, layers)
        import torch

        model = self._model
        graphs = []
        for record in records:
            structure = self._structure(record.payload)
            try:
                graphs.append(model.graph_converter(structure, graph_id=record.id).to(self.device))
            except Exception as exc:  # CHGNet raises plain errors for atoms it cannot put in a graph
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InvalidInput(
                    f"{record.id}: CHGNet cannot build its graph ({msg}); every atom needs a neighbour within 6 A",
                    record.id,
                ) from None

        modules: dict[str, torch.nn.Module] = {"embedding": model.atom_embedding}
        modules.update({f"conv.{i}": m for i, m in enumerate(model.atom_conv_layers)})
        hooked = {name: modules[name] for name in layers}
        with captured_outputs(hooked, lambda _name, out: out.detach().cpu().float().numpy()) as captured:
            with torch.no_grad():
                prediction = model(graphs, task="e")

        counts = [len(r.payload) for r in records]
        energy_per_atom = prediction["e"].detach().cpu().double().numpy().reshape(-1)
        return [
            # CHGNet predicts the energy per atom; the total is derived from it
            SampleFeatures(tokens=tokens, outputs={"energy": float(e) * n, "energy_per_atom": float(e)})
            for tokens, e, n in zip(split_by_structure(captured, layers, counts), energy_per_atom, counts)
        ]


def _info(name: str, description: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        family="CHGNet",
        modality="crystal",
        input_kind="structure",
        extra="zoo",
        license=_LICENSE,
        weights="shipped in the chgnet wheel (chgnet/pretrained/), loaded offline",
        description=description,
    )


class CHGNet030(CHGNetAdapter):
    info = _info("chgnet-0.3.0", "CHGNet 0.3.0, MPtrj (PBE/PBE+U); 4 atom-conv layers, 64 features per atom")
    checkpoint = "0.3.0"


class CHGNet020(CHGNetAdapter):
    info = _info("chgnet-0.2.0", "CHGNet 0.2.0, MPtrj (PBE/PBE+U); 4 atom-conv layers, 64 features per atom")
    checkpoint = "0.2.0"


class CHGNetR2SCAN(CHGNetAdapter):
    info = _info("chgnet-r2scan", "CHGNet 0.3.0 transfer-learned to MP r2SCAN; 4 atom-conv layers, 64 features per atom")
    checkpoint = "r2scan"


__all__ = ["CHGNetAdapter", "CHGNet030", "CHGNet020", "CHGNetR2SCAN"]
