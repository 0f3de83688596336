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
import functools
import hashlib
import io
from importlib import metadata, util
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from repalign.errors import InvalidInput, ModelUnavailable, RepalignError
from repalign.inputs import Record
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures

_EXTRA_HINT = "needs the 'zoo' extra: pip install 'repalign[zoo]'"
_LICENSE = "BSD-3-Clause-LBNL (modified BSD; chgnet package LICENSE)"
#: CHGNet's element embedding covers atomic numbers 1..94 (H..Pu)
_MAX_Z = 94
_ATOM_GRAPH_CUTOFF = 6.0
#: vacuum between periodic images of a boxed molecule: CHGNet's atom-graph cutoff + 1 A
_MOLECULE_VACUUM = _ATOM_GRAPH_CUTOFF + 1.0
_N_CONV = 4


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


class CHGNetAdapter(ModelAdapter):
    """Base of the three CHGNet checkpoints; subclasses set ``info`` and ``checkpoint``."""

    checkpoint: ClassVar[str]  # CHGNet.load model_name, also the pretrained/ subfolder

    @classmethod
    def unavailable_reason(cls) -> str | None:
        for package in ("chgnet", "pymatgen"):
            if util.find_spec(package) is None:
                return f"{package} is not installed; {_EXTRA_HINT}"
        return None

    def _weights_file(self) -> Path:
        if self.weights:
            path = Path(self.weights)
            if not path.is_file():
                raise ModelUnavailable(f"{path}: no such CHGNet checkpoint file; pass a .pth.tar file saved by CHGNet")
            return path
        import chgnet

        files = sorted((Path(chgnet.__file__).parent / "pretrained" / self.checkpoint).glob("*.pth.tar"))
        if not files:
            raise ModelUnavailable(f"CHGNet {self.checkpoint} weights are missing from the chgnet package; {_EXTRA_HINT}")
        return files[0]

    def load(self) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise ModelUnavailable(f"model {self.info.name}: {reason}")
        if self.dtype != "float32":
            raise RepalignError(f"model {self.info.name} runs in float32 only; drop --dtype {self.dtype}")
        if self.options:
            raise RepalignError(f"model {self.info.name} takes no options, got {sorted(self.options)}; remove them")
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
        return {
            "model": self.info.name,
            "family": self.info.family,
            "version": self.checkpoint,
            "weights_file": path.name,
            "weights_sha256": _sha256(str(path.resolve())),
            "packages": {p: _version(p) for p in ("chgnet", "pymatgen", "torch", "ase")},
            "dtype": self.dtype,
            "device": self.device,
            "options": dict(self.options),
            "molecule_vacuum_A": _MOLECULE_VACUUM,
        }

    def validate(self, record: Record) -> None:
        super().validate(record)
        atoms = record.payload
        if len(atoms) == 0:
            raise InvalidInput(f"{record.id}: empty structure; remove it or give it atoms", record.id)
        bad = sorted({s for s, z in zip(atoms.get_chemical_symbols(), atoms.numbers) if not 1 <= z <= _MAX_Z})
        if bad:
            raise InvalidInput(
                f"{record.id}: element(s) {', '.join(bad)} not supported by {self.info.name} "
                f"(supports H..Pu, Z=1-{_MAX_Z}); remove it or pass --skip-invalid",
                record.id,
            )
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if pbc.any() and not pbc.all():
            raise InvalidInput(
                f"{record.id}: periodic along some axes only (pbc={pbc.tolist()}); {self.info.name} takes "
                "fully periodic crystals or molecules (pbc all False)",
                record.id,
            )
        if pbc.all() and abs(atoms.cell.volume) < 1e-6:
            raise InvalidInput(f"{record.id}: periodic structure with a zero-volume cell; give it a full cell", record.id)
        from ase.neighborlist import neighbor_list

        # CHGNet's graph cannot hold an atom without a neighbour (periodic images count)
        isolated = np.setdiff1d(np.arange(len(atoms)), neighbor_list("i", atoms, _ATOM_GRAPH_CUTOFF))
        if isolated.size:
            raise InvalidInput(
                f"{record.id}: atom(s) {isolated[:5].tolist()} have no neighbour within {_ATOM_GRAPH_CUTOFF:g} A, "
                f"which {self.info.name} cannot encode; remove it or pass --skip-invalid",
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
        unknown = [l for l in layers if l not in self.layer_names()]
        if unknown:
            raise RepalignError(f"unknown layer(s) {unknown} for {self.info.name}; choose from {self.layer_names()}")
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

        captured: dict[str, torch.Tensor] = {}
        modules = {"embedding": model.atom_embedding}
        modules.update({f"conv.{i}": m for i, m in enumerate(model.atom_conv_layers)})
        handles = [
            modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
            for name in layers
        ]
        try:
            with torch.no_grad():
                prediction = model(graphs, task="e")
        finally:
            for handle in handles:
                handle.remove()

        counts = [len(r.payload) for r in records]
        energy_per_atom = prediction["e"].detach().cpu().double().numpy().reshape(-1)
        per_layer = {
            name: np.split(captured[name].detach().cpu().float().numpy(), np.cumsum(counts)[:-1]) for name in layers
        }
        out = []
        for i, n in enumerate(counts):
            e_atom = float(energy_per_atom[i])
            out.append(
                SampleFeatures(
                    tokens={name: np.ascontiguousarray(per_layer[name][i], dtype=np.float32) for name in layers},
                    outputs={"energy": e_atom * n, "energy_per_atom": e_atom},
                )
            )
        return out


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
