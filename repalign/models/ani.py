"""ANI-1x (Smith et al., J. Chem. Phys. 148, 241733 (2018)): an 8-network ensemble of atomic neural
network potentials for H, C, N, O molecules (wB97X/6-31G(d)), from ``torchani`` 2.2.4.

Registered as ``ani-1x``. torchani's own ``torchani.models.ANI1x()`` reads an index file that the
wheel ships empty and then downloads; this adapter builds the same ensemble offline from the
NeuroChem files shipped in ``torchani/resources/ani-1x_8x`` (AEV constants, self-atomic energies,
eight ``train<i>/networks`` directories).

Layers, in model order, one row per atom:

- ``aev``: the atomic environment vector (384 features: radial and angular symmetry functions per
  neighbour species). Shared by all ensemble members.
- ``hidden.0``, ``hidden.1``, ``hidden.2``: activations after each hidden layer (CELU) of the
  element's atomic network of one ensemble member (option ``member``, default 0). Neurons of two
  members, or of two elements' networks, do not correspond, so they are never averaged: each
  element's activations sit in their own column block, in the order H, C, N, O, and the other
  blocks are zero. Widths: hidden.0 = 160+144+128+128 = 560, hidden.1 = 128+112+112+112 = 464,
  hidden.2 = 4 x 96 = 384.

Every layer is invariant to rotations, translations and atom permutations (AEVs use distances and
angles only).

Outputs: ``energy`` (total energy of the ensemble mean, eV, including the self-atomic energies)
and ``energy_per_atom``, equal to torchani's ASE calculator on the same ensemble.

Inputs: molecules only (no periodic axis), elements H, C, N, O. A batch pads molecules with
torchani's ``-1`` species, which the AEV ignores, so a molecule's features do not depend on its batch.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from repalign.errors import InvalidInput, ModelUnavailable, RepalignError
from repalign.inputs import Record
from repalign.models._atomistic import (
    EXTRA_HINT,
    check_layers,
    check_loadable,
    energy_outputs,
    missing_package_reason,
    reject_elements,
    reject_empty,
)
from repalign.models._common import missing_modules, provenance_record, sha256_of_file
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures
from repalign.packages import package_dir

ELEMENTS = ("H", "C", "N", "O")
_ATOMIC_NUMBERS = (1, 6, 7, 8)  # of ELEMENTS
_N_MEMBERS = 8
_CONSTANTS_FILE = "rHCNO-5.2R_16-3.5A_a4-8.params"
_SAE_FILE = "sae_linfit.dat"


def _tree_sha256(root: Path) -> str:
    """One sha256 over every file of a folder: relative path and content hash, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_of_file(path)}\n".encode())
    return digest.hexdigest()


def _import_torchani():
    with warnings.catch_warnings():
        # torchani 2.2.4 warns about its optional CUDA extension and its use of pkg_resources
        warnings.simplefilter("ignore")
        import torchani
    return torchani


class ANI1xAdapter(ModelAdapter):
    WEIGHTS_LAYOUT = (_CONSTANTS_FILE, _SAE_FILE, *(f"train{i}/networks" for i in range(_N_MEMBERS)))
    info = ModelInfo(
        name="ani-1x",
        family="ANI",
        modality="molecule",
        input_kind="structure",
        extra="zoo",
        license="MIT (torchani package LICENSE)",
        weights="ANI-1x 8-model ensemble, NeuroChem files shipped in the torchani wheel "
        "(torchani/resources/ani-1x_8x), loaded offline; --weights takes another such folder",
        description="ANI-1x ensemble (H, C, N, O; wB97X/6-31G(d)); AEV + 3 hidden layers of one member",
    )

    OPTIONS = ("member",)

    def __init__(self, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        member = self.options.get("member", 0)
        try:
            member = int(member)
        except (TypeError, ValueError):
            member = -1
        if not 0 <= member < _N_MEMBERS:
            raise RepalignError(
                f"model {self.info.name}: member={self.options.get('member')!r}; give an ensemble member 0-{_N_MEMBERS - 1}"
            )
        self.options["member"] = member

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = missing_package_reason("torchani")
        if reason:
            return reason
        if missing_modules("pkg_resources"):
            return "torchani 2.2.4 imports pkg_resources, which setuptools 81 removed; pip install 'setuptools<81'"
        return None

    def _resource_dir(self) -> Path:
        if self.weights:
            path = Path(self.weights)
        else:
            root = package_dir("torchani")
            assert root is not None  # torchani is installed: load() checked it
            path = root / "resources" / "ani-1x_8x"
        needed = [_CONSTANTS_FILE, _SAE_FILE] + [f"train{i}/networks" for i in range(_N_MEMBERS)]
        missing = [n for n in needed if not (path / n).exists()]
        if missing:
            raise ModelUnavailable(
                f"{path}: not an ANI-1x NeuroChem folder (missing {', '.join(missing[:3])}); {EXTRA_HINT}"
            )
        return path

    def load(self) -> None:
        check_loadable(self)
        import torch

        torchani = _import_torchani()
        from torchani import neurochem
        from torchani.models import BuiltinEnsemble

        path = self._resource_dir()
        constants = neurochem.Constants(str(path / _CONSTANTS_FILE))
        if tuple(constants.species) != ELEMENTS:
            raise ModelUnavailable(f"{path}: species {constants.species}, expected {list(ELEMENTS)}; pass an ANI-1x folder")
        energy_shifter, sae = neurochem.load_sae(str(path / _SAE_FILE), return_dict=True)
        networks = neurochem.load_model_ensemble(constants.species, os.path.join(str(path), "train"), _N_MEMBERS)
        ensemble = BuiltinEnsemble(
            torchani.nn.SpeciesConverter(constants.species),
            torchani.AEVComputer(**constants),
            networks,
            energy_shifter,
            constants.species_to_tensor,
            constants,
            sae,
            True,  # species given as atomic numbers
        )
        self._ensemble = ensemble.to(torch.device(self.device)).eval()
        self._path = path

    def layer_names(self) -> list[str]:
        return ["aev", "hidden.0", "hidden.1", "hidden.2"]

    def provenance(self) -> dict[str, Any]:
        path = self._resource_dir()
        weights = {"version": "ani-1x_8x", "weights_file": path.name, "weights_sha256": _tree_sha256(path.resolve())}
        return provenance_record(
            self,
            weights,
            ("torchani", "torch", "ase"),
            notes={"hidden_layout": "element column blocks H, C, N, O of one ensemble member"},
        )

    def validate(self, record: Record) -> None:
        super().validate(record)
        reject_empty(record)
        reject_elements(record, self.info.name, _ATOMIC_NUMBERS, "H, C, N, O only")
        if np.asarray(record.payload.pbc).any():
            raise InvalidInput(
                f"{record.id}: periodic structure; {self.info.name} is a molecular potential, "
                "give an isolated molecule (pbc all False)",
                record.id,
            )

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        self.ensure_loaded()
        check_layers(self, layers)
        import torch
        from torchani.units import hartree2ev

        counts = [len(r.payload) for r in records]
        width = max(counts)
        # pad with species -1 (torchani's "no atom"), which contributes nothing to any AEV
        numbers = torch.full((len(records), width), -1, dtype=torch.long)
        coords = torch.zeros((len(records), width, 3), dtype=torch.float32)
        for i, record in enumerate(records):
            numbers[i, : counts[i]] = torch.as_tensor(record.payload.numbers, dtype=torch.long)
            coords[i, : counts[i]] = torch.as_tensor(record.payload.positions, dtype=torch.float32)
        numbers, coords = numbers.to(self.device), coords.to(self.device)

        ensemble = self._ensemble
        with torch.no_grad():
            energies = ensemble((numbers, coords)).energies  # Hartree, ensemble mean
            species, aev = ensemble.aev_computer(ensemble.species_converter((numbers, coords)))
            features = {"aev": aev}
            hidden = [name for name in layers if name.startswith("hidden.")]
            if hidden:
                features.update(self._hidden(species, aev))

        energies_ev = hartree2ev(energies.detach().cpu().double().numpy().reshape(-1))
        out = []
        for i, n in enumerate(counts):
            tokens = {
                name: np.ascontiguousarray(features[name][i, :n].detach().cpu().numpy(), dtype=np.float32)
                for name in layers
            }
            out.append(SampleFeatures(tokens=tokens, outputs=energy_outputs(float(energies_ev[i]), n)))
        return out

    def _hidden(self, species, aev) -> dict:
        """Hidden activations of member ``member``, (molecules, atoms, sum of element widths) each."""
        network = self._ensemble.neural_networks[self.options["member"]]
        nets = [network[element] for element in ELEMENTS]
        # hidden layer k is the output of the activation at position 2k+1 of each Sequential
        widths = [[net[2 * k].out_features for net in nets] for k in range(3)]
        result = {}
        for k in range(3):
            result[f"hidden.{k}"] = aev.new_zeros(species.shape + (sum(widths[k]),))
        for e, net in enumerate(nets):
            mask = species == e
            if not bool(mask.any()):
                continue
            x = aev[mask]
            for k in range(3):
                x = net[2 * k + 1](net[2 * k](x))
                start = sum(widths[k][:e])
                block = result[f"hidden.{k}"][..., start : start + widths[k][e]]
                block[mask] = x
        return result


__all__ = ["ANI1xAdapter", "ELEMENTS"]
