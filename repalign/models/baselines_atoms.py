"""Domain-knowledge baselines for atoms and structures: element one-hot, SOAP and ACSF.

A baseline is compared exactly like a model (stored in the cache as a model, with
``level = baseline`` in its provenance) and answers: does a model align with another beyond what
hand-crafted descriptors of the same inputs already share?

- ``elements``: one row per atom, the one-hot of its element (atomic numbers 1-94). Mean-pooled,
  it is the structure's composition (element fractions).
- ``soap``: the Smooth Overlap of Atomic Positions power spectrum of each atom's environment
  (Bartok, Kondor & Csanyi, Phys. Rev. B 87, 184115 (2013)), computed by DScribe (Himanen et al.,
  Comput. Phys. Commun. 247, 106949 (2020)); periodic images are used for periodic structures.
- ``acsf``: Behler-Parrinello atom-centred symmetry functions (Behler, J. Chem. Phys. 134, 074106
  (2011)), radial G2 and angular G4 terms, also by DScribe.

SOAP and ACSF have one block of features per element (SOAP: per element pair), so their element
list is an option (``--option species=H,C,N,O``; default H, C, N, O) and a structure with another
element is refused with that fix. Other options: ``r_cut`` (A, default 5.0 for SOAP, 6.0 for ACSF),
``n_max`` and ``l_max`` (SOAP, default 4 and 3) and ``compression`` (SOAP: ``off`` keeps every element
pair; ``mu1nu1`` keeps one element index per power-spectrum term, so the size grows linearly with
the number of elements, for sets with many elements; DScribe's definitions).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from repalign.errors import InvalidInput, RepalignError
from repalign.inputs import Record
from repalign.models._atomistic import check_layers, reject_empty, reject_flat_cell
from repalign.models._common import missing_modules, package_versions
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures

MAX_Z = 94
DEFAULT_SPECIES = ("H", "C", "N", "O")


class _StructureBaseline(ModelAdapter):
    """Shared parts: structure input, float32 features, provenance with ``level = baseline``."""

    layer: str = ""
    packages: tuple[str, ...] = ()

    def load(self) -> None:
        if self.dtype != "float32":
            raise RepalignError(f"model {self.info.name} computes float32 features, not dtype={self.dtype!r}; pass dtype='float32'")

    def layer_names(self) -> list[str]:
        return [self.layer]

    def provenance(self) -> dict[str, Any]:
        return {"model": self.info.name, "family": self.info.family, "level": "baseline",
                "version": f"{self.info.name}:" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items())),
                "packages": package_versions(*self.packages), "dtype": self.dtype, "device": self.device,
                "options": dict(self.options)}

    def validate(self, record: Record) -> None:
        super().validate(record)
        reject_empty(record)
        reject_flat_cell(record)

    def rows(self, atoms) -> np.ndarray:
        raise NotImplementedError

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        self.ensure_loaded()
        check_layers(self, layers)
        return [SampleFeatures(tokens={self.layer: np.asarray(self.rows(r.payload), dtype=np.float32)}) for r in records]


class ElementComposition(_StructureBaseline):
    info = ModelInfo(
        name="elements", family="baseline", modality="crystal", input_kind="structure", extra="",
        license="MIT (repalign)", weights="none: hand-crafted",
        description="one-hot of each atom's element (Z 1-94); mean-pooled = composition; molecules and crystals",
    )
    layer = "elements"
    OPTIONS = ()

    def validate(self, record: Record) -> None:
        super().validate(record)
        numbers = np.asarray(record.payload.numbers)
        if numbers.max() > MAX_Z:
            raise InvalidInput(f"{record.id}: elements beyond Z={MAX_Z} are not in the one-hot; remove it or pass skip_invalid=True",
                               record.id)

    def rows(self, atoms) -> np.ndarray:
        out = np.zeros((len(atoms), MAX_Z), dtype=np.float32)
        out[np.arange(len(atoms)), np.asarray(atoms.numbers) - 1] = 1.0
        return out


def _species_option(model: str, value) -> tuple[str, ...]:
    from ase.data import atomic_numbers

    if value is None:
        return DEFAULT_SPECIES
    items = value.split(",") if isinstance(value, str) else list(value)
    species = tuple(dict.fromkeys(str(s).strip().capitalize() for s in items if str(s).strip()))
    bad = [s for s in species if s not in atomic_numbers or s == "X"]
    if not species or bad:
        raise RepalignError(f"model {model}: species={value!r}; give element symbols separated by commas, e.g. species=H,C,N,O")
    return tuple(sorted(species, key=lambda s: atomic_numbers[s]))


def _positive(model: str, name: str, value, cast):
    try:
        out = cast(value)
    except (TypeError, ValueError):
        out = None
    if out is None or out <= 0:
        raise RepalignError(f"model {model}: {name}={value!r}; give a positive number")
    return out


class _DscribeBaseline(_StructureBaseline):
    packages = ("dscribe", "ase")

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if missing_modules("dscribe"):
            return "dscribe is not installed; pip install 'repalign[baselines]'"
        return None

    def __init__(self, weights=None, device="cpu", dtype="float32", **options):
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        self.species = _species_option(self.info.name, self.options.get("species"))
        self.options["species"] = ",".join(self.species)
        self._descriptors: dict[bool, Any] = {}

    def validate(self, record: Record) -> None:
        super().validate(record)
        bad = sorted(set(record.payload.get_chemical_symbols()) - set(self.species))
        if bad:
            raise InvalidInput(
                f"{record.id}: element(s) {', '.join(bad)} not in {self.info.name}'s species "
                f"({','.join(self.species)}); pass options={{'species': '...'}} listing every element of the inputs", record.id)

    def descriptor(self, periodic: bool):
        if periodic not in self._descriptors:
            self._descriptors[periodic] = self.build(periodic)
        return self._descriptors[periodic]

    def build(self, periodic: bool):
        raise NotImplementedError

    def rows(self, atoms) -> np.ndarray:
        periodic = bool(np.asarray(atoms.pbc).any())
        return np.asarray(self.descriptor(periodic).create(atoms), dtype=np.float64).reshape(len(atoms), -1)


class Soap(_DscribeBaseline):
    info = ModelInfo(
        name="soap", family="baseline", modality="crystal", input_kind="structure", extra="baselines",
        license="MIT (repalign); Apache-2.0 (dscribe)", weights="none: hand-crafted",
        description="SOAP power spectrum per atom (DScribe); --option species=..., r_cut, n_max, l_max, compression",
    )
    layer = "soap"
    OPTIONS = ("species", "r_cut", "n_max", "l_max", "compression")

    def __init__(self, weights=None, device="cpu", dtype="float32", **options):
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        o = self.options
        o["r_cut"] = _positive(self.info.name, "r_cut", o.get("r_cut", 5.0), float)
        o["n_max"] = _positive(self.info.name, "n_max", o.get("n_max", 4), int)
        o["l_max"] = _positive(self.info.name, "l_max", o.get("l_max", 3), int)
        o["compression"] = str(o.get("compression", "off"))
        if o["compression"] not in ("off", "mu1nu1"):
            raise RepalignError(f"model soap: compression={o['compression']!r}; use off or mu1nu1")

    def build(self, periodic: bool):
        from dscribe.descriptors import SOAP

        o = self.options
        return SOAP(species=list(self.species), r_cut=o["r_cut"], n_max=o["n_max"], l_max=o["l_max"],
                    periodic=periodic, compression={"mode": o["compression"]}, dtype="float64")


class Acsf(_DscribeBaseline):
    info = ModelInfo(
        name="acsf", family="baseline", modality="molecule", input_kind="structure", extra="baselines",
        license="MIT (repalign); Apache-2.0 (dscribe)", weights="none: hand-crafted",
        description="Behler-Parrinello symmetry functions per atom (G2 radial, G4 angular; DScribe); --option species=..., r_cut",
    )
    layer = "acsf"
    OPTIONS = ("species", "r_cut")
    #: G2 (eta in 1/A^2, R_s in A): 8 Gaussian shells from 0.5 to 5 A; G4 (eta, zeta, lambda)
    G2 = tuple((4.0, r) for r in np.linspace(0.5, 5.0, 8).round(3))
    G4 = ((0.005, 1.0, 1.0), (0.005, 1.0, -1.0), (0.005, 4.0, 1.0), (0.005, 4.0, -1.0))

    def __init__(self, weights=None, device="cpu", dtype="float32", **options):
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        self.options["r_cut"] = _positive(self.info.name, "r_cut", self.options.get("r_cut", 6.0), float)

    def build(self, periodic: bool):
        from dscribe.descriptors import ACSF

        return ACSF(species=list(self.species), r_cut=self.options["r_cut"], g2_params=[list(p) for p in self.G2],
                    g4_params=[list(p) for p in self.G4], periodic=periodic, dtype="float64")


__all__ = ["Acsf", "ElementComposition", "Soap"]
