"""Domain-knowledge baseline for molecules: Morgan (ECFP-like) fingerprints from 3D structures.

``morgan`` (RDKit's Morgan generator; Rogers & Hahn, J. Chem. Inf. Model. 50, 742 (2010)) gives
one row per atom: the counts of the hashed circular environments (``fp_size`` bits, default 2048)
centred on that atom, of radius 0 to R, for layers ``morgan.r0`` ... ``morgan.r3``. Summed over
atoms a row set is the molecule's count fingerprint of radius R (the mean, used by the pipeline's
pooling, is that fingerprint over the number of atoms; the metrics l2-normalise rows by default).

The input is a structure (``ase.Atoms``), as for the molecular potentials, so the bond graph is
perceived from the 3D coordinates (RDKit ``DetermineConnectivity``, covalent radii x 1.3). Bond
orders and charges are not perceived: atoms are told apart by element, number of bonded
neighbours, attached hydrogens and ring membership, bonds are single. Hydrogens are atoms of the
graph (each has its own row, as each atom has for a potential).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from repalign.errors import InvalidInput, RepalignError
from repalign.inputs import Record
from repalign.models._atomistic import check_layers, reject_empty
from repalign.models._common import missing_modules, package_versions
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures

RADII = (0, 1, 2, 3)


def molecule_graph(atoms):
    """An RDKit molecule with ``atoms``' elements and coordinates and bonds from DetermineConnectivity."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    mol = Chem.RWMol()
    for z in atoms.numbers:
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(True)  # every hydrogen is explicit in the structure
        mol.AddAtom(atom)
    conf = Chem.Conformer(len(atoms))
    for i, p in enumerate(np.asarray(atoms.positions, dtype=float)):
        conf.SetAtomPosition(i, Point3D(*p))
    mol.AddConformer(conf, assignId=True)
    rdDetermineBonds.DetermineConnectivity(mol)
    mol.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(mol)
    return mol


class MorganFingerprint(ModelAdapter):
    info = ModelInfo(
        name="morgan", family="baseline", modality="molecule", input_kind="structure", extra="baselines",
        license="MIT (repalign); BSD-3-Clause (RDKit)", weights="none: hand-crafted",
        description="Morgan count fingerprint rows per atom (radius 0-3, RDKit) from 3D connectivity; --option fp_size=N",
    )
    OPTIONS = ("fp_size",)

    def __init__(self, weights=None, device="cpu", dtype="float32", **options):
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        try:
            size = int(self.options.get("fp_size", 2048))
        except (TypeError, ValueError):
            size = 0
        if size < 64:
            raise RepalignError(f"model morgan: fp_size={self.options.get('fp_size')!r}; give a whole number >= 64")
        self.options["fp_size"] = size

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if missing_modules("rdkit"):
            return "rdkit is not installed; pip install 'repalign[baselines]'"
        return None

    def load(self) -> None:
        if self.dtype != "float32":
            raise RepalignError(f"model morgan computes float32 features, not dtype={self.dtype!r}; pass dtype='float32'")

    def layer_names(self) -> list[str]:
        return [f"morgan.r{r}" for r in RADII]

    def provenance(self) -> dict[str, Any]:
        return {"model": self.info.name, "family": self.info.family, "level": "baseline",
                "version": f"morgan:fp_size={self.options['fp_size']}", "packages": package_versions("rdkit"),
                "dtype": self.dtype, "device": self.device, "options": dict(self.options)}

    def validate(self, record: Record) -> None:
        super().validate(record)
        reject_empty(record)
        if np.asarray(record.payload.pbc).any():
            raise InvalidInput(f"{record.id}: periodic structure; morgan fingerprints are for molecules, remove it "
                               "or pass skip_invalid=True", record.id)

    def rows(self, atoms, radius: int) -> np.ndarray:
        from rdkit.Chem import rdFingerprintGenerator

        mol = molecule_graph(atoms)
        generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=self.options["fp_size"])
        extra = rdFingerprintGenerator.AdditionalOutput()
        extra.AllocateBitInfoMap()
        generator.GetCountFingerprintAsNumPy(mol, additionalOutput=extra)
        out = np.zeros((len(atoms), self.options["fp_size"]), dtype=np.float32)
        for bit, centres in extra.GetBitInfoMap().items():
            for atom, _ in centres:
                out[atom, bit] += 1.0
        return out

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        self.ensure_loaded()
        check_layers(self, layers)
        return [SampleFeatures(tokens={layer: self.rows(r.payload, int(layer.rsplit("r", 1)[1])) for layer in layers})
                for r in records]


__all__ = ["MorganFingerprint", "molecule_graph"]
