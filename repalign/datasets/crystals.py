"""Inorganic crystals from pymatgen's AFLOW prototype library with chemically likely substitutions.

Sources (shipped inside installed packages, no download):

- **AFLOW prototypes**: the 288 prototypes of the AFLOW Library of Crystallographic Prototypes
  (Mehl et al., Comput. Mater. Sci. 136, S1 (2017)) that pymatgen ships in
  ``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``, each an ordered structure with its
  AFLOW label (e.g. ``AB_cF8_225_a_b``, rock salt) and the elements of its namesake compound.
- **ASE bulk crystals**: every element whose ASE reference state is a simple lattice (fcc, bcc,
  hcp, diamond, simple cubic) at ASE's lattice constants (``ase.build.bulk``), plus the 15 compounds
  of :mod:`repalign.datasets.structures` at experimental lattice constants.

:func:`aflow_crystals` draws ``size`` crystals with ``numpy.random.default_rng(seed)``: first the
ASE crystals and the prototypes as they are (those with at most ``max_atoms`` atoms in the cell and
only :data:`ELEMENTS`), then substituted prototypes until ``size`` distinct crystals are reached.
A substituted crystal takes a prototype drawn uniformly and replaces each of its species with
probability 1/2 (at least one):

- **ionic prototypes** (pymatgen finds charge-balanced oxidation states, all in the substitution
  model): an ion is replaced by an ion of the *same oxidation state*, so the crystal stays charge
  balanced, drawn with probability proportional to the conditional substitution probability of
  Hautier et al., Inorg. Chem. 50, 656 (2011) (``pymatgen ... SubstitutionProbability.cond_prob``,
  fitted to the ICSD);
- **other prototypes** (intermetallics, elements, covalent frameworks): an element is replaced by
  an element of the same group of the periodic table (for d-block metals also the neighbouring
  groups of the same row), drawn uniformly;
- no element is put on two different species, and only :data:`ELEMENTS` are used;
- the cell is rescaled isotropically so its volume changes by sum(r_new^3) / sum(r_old^3) over the
  atoms, with pymatgen's empirical atomic radii (a Vegard-like estimate; structures are not relaxed);
  a draw that puts two atoms closer than 0.7 x the sum of their covalent radii is redrawn.

Every crystal kept has a neighbour within 4.5 A of each atom (graph-based potentials such as
CHGNet, whose atom graph has a 5 A cutoff, cannot take an isolated atom; this drops, e.g., bcc Cs).

Ids: ``<reduced formula>__<AFLOW label>`` (``__ase-<lattice>`` for ASE crystals), with a counter
when two substitutions give the same formula on the same prototype. Annotations: ``formula``,
``prototype``, ``source`` (``ase``, ``aflow`` or ``substituted``), ``n_atoms``.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from repalign.datasets.dataset import Dataset, check_size_seed
from repalign.datasets.structures import BINARY_COMPOUNDS
from repalign.errors import RepalignError
from repalign.inputs import structure_record
from repalign.packages import package_dir, package_version

if TYPE_CHECKING:  # pymatgen is imported lazily, when crystals are built
    from pymatgen.core import Structure

MAX_ATOMS = 40
NEIGHBOUR_CUTOFF = 4.5  # A; every atom needs a neighbour this close (CHGNet's graph cutoff is 5 A)
#: elements the bundled interatomic potentials were all trained on, without noble gases, the
#: radioactive Tc and Pm, and heavier than Bi
ELEMENTS = tuple(
    "H Li Be B C N O F Na Mg Al Si P S Cl K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Rb Sr Y Zr Nb Mo "
    "Ru Rh Pd Ag Cd In Sn Sb Te I Cs Ba La Ce Pr Nd Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg "
    "Tl Pb Bi".split()
)
SIMPLE_LATTICES = ("fcc", "bcc", "hcp", "diamond", "sc")


def _prototypes_file() -> Path:
    """pymatgen's AFLOW prototype file, found without importing ``pymatgen.analysis.prototypes``
    (whose import decodes the whole library into StructureNL objects, BibTeX parsing included)."""
    folder = package_dir("pymatgen.analysis.prototypes")
    if folder is None:
        raise RepalignError("crystals from the AFLOW prototypes need pymatgen; pip install 'repalign[zoo]'")
    return folder / "aflow_prototypes.json.gz"


@lru_cache(maxsize=1)
def _prototypes() -> tuple[tuple[str, Structure], ...]:
    """(AFLOW label, pymatgen Structure) of each prototype, in the file's order.

    Each entry is a StructureNL dict; the structure is read from it directly, since building the
    StructureNL would parse and validate its BibTeX references (about 60 ms per prototype)."""
    from pymatgen.core import Structure

    path = _prototypes_file()
    if not path.is_file():
        raise RepalignError(f"{path} is missing; reinstall pymatgen: pip install --force-reinstall pymatgen")
    with gzip.open(path, "rt") as f:
        entries = json.load(f)
    return tuple((entry["tags"]["aflow"], Structure.from_dict(entry["snl"])) for entry in entries)


@lru_cache(maxsize=1)
def _substitution_model():
    from pymatgen.core.structure_prediction.substitution_probability import SubstitutionProbability

    return SubstitutionProbability()


@lru_cache(maxsize=None)
def _ionic_species(label: str, formula: str):
    """Charge-balanced oxidation states of a prototype (element -> state), all known to the
    substitution model; None if there are none (then group substitutions are used)."""
    import warnings

    from pymatgen.core import Composition, Species

    model = _substitution_model()
    known = set(model.species)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guesses = Composition(formula).oxi_state_guesses()
    for guess in guesses:
        states = {el: v for el, v in guess.items()}
        if all(float(v).is_integer() and v != 0 for v in states.values()) and \
                all(Species(el, int(v)) in known for el, v in states.items()):
            return {el: int(v) for el, v in states.items()}
    return None


@lru_cache(maxsize=None)
def _ion_candidates(element: str, state: int) -> tuple[tuple[str, ...], np.ndarray]:
    """Elements whose ion of the same state may replace ``element``'s, and their probabilities."""
    from pymatgen.core import Species

    model = _substitution_model()
    fixed = Species(element, state)
    names, weights = [], []
    # the model's species are a set: sorted, so the draw does not depend on the interpreter's hash seed
    for sp in sorted(model.species, key=str):
        if sp.oxi_state == state and sp.symbol != element and sp.symbol in ELEMENTS:
            w = model.cond_prob(sp, fixed)
            if w > 0:
                names.append(sp.symbol)
                weights.append(w)
    w = np.asarray(weights, dtype=float)
    return tuple(names), (w / w.sum() if len(w) else w)


@lru_cache(maxsize=None)
def _group_candidates(element: str) -> tuple[str, ...]:
    from pymatgen.core import Element

    el = Element(element)
    out = []
    for other in ELEMENTS:
        o = Element(other)
        if other == element:
            continue
        same_group = o.group == el.group and o.block == el.block
        d_neighbour = el.block == "d" and o.block == "d" and o.row == el.row and abs(o.group - el.group) == 1
        if same_group or d_neighbour:
            out.append(other)
    return tuple(out)


def _volume_scale(old: list[str], new: list[str]) -> float | None:
    """sum(r_new^3) / sum(r_old^3) with empirical atomic radii (calculated ones where pymatgen has no
    empirical value); None when an element has neither."""
    from pymatgen.core import Element

    def radius(symbol):
        el = Element(symbol)
        r = el.atomic_radius if el.atomic_radius is not None else el.atomic_radius_calculated
        return None if r is None else float(r)

    radii = {s: radius(s) for s in set(old) | set(new)}
    if any(r is None for r in radii.values()):
        return None
    return sum(radii[s] ** 3 for s in new) / sum(radii[s] ** 3 for s in old)


def _substitute(label: str, structure, rng: np.random.Generator):
    """One substituted copy of a prototype, or None if the draw gave nothing usable."""
    formula = structure.composition.reduced_formula
    elements = [el.symbol for el in structure.composition.elements]
    states = _ionic_species(label, formula)
    chosen = [e for e in elements if rng.random() < 0.5]
    if not chosen:
        chosen = [elements[int(rng.integers(len(elements)))]]
    mapping: dict[str, str] = {}
    for element in chosen:
        if states is not None:
            names, probs = _ion_candidates(element, states[element])
            if not names:
                continue
            new = names[int(rng.choice(len(names), p=probs))]
        else:
            names = _group_candidates(element)
            if not names:
                continue
            new = names[int(rng.integers(len(names)))]
        mapping[element] = new
    final = [mapping.get(e, e) for e in elements]
    if not mapping or len(set(final)) != len(final) or not set(final) <= set(ELEMENTS):
        return None
    new = structure.copy()
    new.replace_species({old: sub for old, sub in mapping.items()})
    old_symbols = [site.specie.symbol for site in structure]
    scale = _volume_scale(old_symbols, [mapping.get(s, s) for s in old_symbols])
    if scale is None:
        return None
    new.scale_lattice(structure.volume * scale)
    if _too_close(new):
        return None
    return new, mapping


def _isolated(atoms, cutoff: float = NEIGHBOUR_CUTOFF) -> bool:
    """True if an atom has no neighbour (periodic images included) within ``cutoff`` A: graph-based
    potentials (CHGNet's atom graph uses 5 A) cannot take such a crystal."""
    from ase.neighborlist import neighbor_list

    first = neighbor_list("i", atoms, cutoff)
    return len(set(first.tolist())) < len(atoms)


def _too_close(structure) -> bool:
    """True if two atoms are closer than 0.7 x the sum of their covalent radii (ASE's table):
    the rescaled cell squeezed a pair that the prototype's geometry cannot hold."""
    from ase.data import covalent_radii

    if len(structure) < 2:
        return False
    d = structure.distance_matrix
    r = covalent_radii[[site.specie.Z for site in structure]]
    limit = 0.7 * (r[:, None] + r[None, :])
    np.fill_diagonal(d, np.inf)
    return bool((d < limit).any())


def _ase_crystals():
    """(id, formula, lattice, Atoms) of the ASE bulk crystals."""
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    out = []
    for symbol in ELEMENTS:
        state = reference_states[atomic_numbers[symbol]]
        if state and state.get("symmetry") in SIMPLE_LATTICES:
            try:
                atoms = bulk(symbol)
            except ValueError:  # a reference state ASE cannot build without more parameters
                continue
            out.append((f"{symbol}__ase-{state['symmetry']}", symbol, state["symmetry"], atoms))
    for formula, lattice, a, c in BINARY_COMPOUNDS:
        out.append((f"{formula}__ase-{lattice}", formula, lattice, bulk(formula, lattice, a=a, c=c)))
    return out


def aflow_crystals(size: int = 1000, seed: int = 0, *, max_atoms: int = MAX_ATOMS) -> Dataset:
    """``size`` distinct crystals: ASE bulk crystals, AFLOW prototypes and substituted prototypes
    (see the module docstring). Records are periodic ``structure`` records."""
    from pymatgen.io.ase import AseAtomsAdaptor

    size, seed = check_size_seed(size, seed, "aflow_crystals")
    if isinstance(max_atoms, bool) or not isinstance(max_atoms, (int, np.integer)) or max_atoms < 1:
        raise RepalignError(f"aflow_crystals: max_atoms must be a positive integer, got {max_atoms!r}")
    rng = np.random.default_rng(seed)
    allowed = set(ELEMENTS)
    records, notes, seen_ids, seen_keys = [], [], set(), set()

    def add(id_, atoms, formula, prototype, source):
        if _isolated(atoms):
            return
        atoms.info.clear()
        atoms.set_initial_magnetic_moments(None)
        records.append(structure_record(id_, atoms))
        seen_ids.add(id_)
        notes.append({"formula": formula, "prototype": prototype, "source": source, "n_atoms": len(atoms)})

    for id_, formula, lattice, atoms in _ase_crystals():
        add(id_, atoms, formula, f"ase-{lattice}", "ase")
    prototypes = [(label, s) for label, s in _prototypes() if len(s) <= max_atoms]
    for label, s in prototypes:
        formula = s.composition.reduced_formula
        if {el.symbol for el in s.composition.elements} <= allowed:
            key = (label, formula)
            seen_keys.add(key)
            add(f"{formula}__{label}", AseAtomsAdaptor.get_atoms(s), formula, label, "aflow")
    base = len(records)
    if size < base:  # a small set: a seeded draw of the unsubstituted crystals
        picks = np.sort(rng.choice(base, size=size, replace=False))
        records = [records[i] for i in picks]
        notes = [notes[i] for i in picks]
    attempts = 0
    while len(records) < size:
        attempts += 1
        if attempts > 50 * size:
            raise RepalignError(f"aflow_crystals: found only {len(records)} distinct crystals; ask for fewer")
        label, s = prototypes[int(rng.integers(len(prototypes)))]
        drawn = _substitute(label, s, rng)
        if drawn is None:
            continue
        new, mapping = drawn
        formula = new.composition.reduced_formula
        key = (label, formula)
        if key in seen_keys:
            continue
        seen_keys.add(key)
        id_ = f"{formula}__{label}"
        n = 2
        while id_ in seen_ids:
            id_, n = f"{formula}__{label}__{n}", n + 1
        add(id_, AseAtomsAdaptor.get_atoms(new), formula, label, "substituted")
    return Dataset(
        name="aflow_crystals", records=tuple(records), seed=seed,
        params={"max_atoms": int(max_atoms), "elements": list(ELEMENTS)},
        source={"data": "AFLOW prototypes (pymatgen aflow_prototypes.json.gz), Hautier 2011 substitution "
                        "probabilities (pymatgen lambda.json), ase.build.bulk",
                "pymatgen": package_version("pymatgen") or package_version("pymatgen-core"),
                "ase": package_version("ase")},
        annotations=tuple(notes),
    )


__all__ = ["ELEMENTS", "aflow_crystals"]
