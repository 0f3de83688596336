"""Atomistic adapters (CHGNet, SevenNet, DIEP, ANI-1x) on real structures with the shipped weights.

Each family is checked against an independent path: the package's own ASE calculator for the
energy, a rigidly moved / permuted copy of the structure for the invariances, and the same
structure run alone for batching.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest

from repalign.datasets.structures import crystal_records, molecule_records, write_extxyz, write_structure_folder
from repalign.errors import InvalidInput, RepalignError
from repalign.inputs import read_inputs, sequence_record, structure_record
from repalign.models import REGISTRY, get_adapter, get_adapter_class

ATOMISTIC = {
    "chgnet-0.3.0": ("chgnet", "CHGNet030"),
    "chgnet-0.2.0": ("chgnet", "CHGNet020"),
    "chgnet-r2scan": ("chgnet", "CHGNetR2SCAN"),
    "sevennet-0": ("sevennet", "SevenNet0"),
    "sevennet-l3i5": ("sevennet", "SevenNetL3I5"),
    "sevennet-mf-0": ("sevennet", "SevenNetMF0"),
    "diep": ("diep", "DIEPAdapter"),
    "ani-1x": ("ani", "ANI1xAdapter"),
}
#: one model per family gets the full set of checks
MAIN = ["chgnet-0.3.0", "sevennet-0", "diep", "ani-1x"]


def _by_id(records, ids):
    table = {r.id: r for r in records}
    return [table[i] for i in ids]


def crystal_inputs():
    return _by_id(crystal_records(), ["TiO2-rutile", "AlN-wurtzite", "SrTiO3-perovskite", "Cu-fcc"])


def molecule_inputs():
    return _by_id(molecule_records(None), ["CH3CH2OH", "C5H5N", "CH3CONH2", "H2O"])


def inputs_for(name):
    if name == "ani-1x":
        return molecule_inputs()
    # crystal potentials also take a molecule (boxed for CHGNet, non-periodic graph otherwise)
    return crystal_inputs() + molecule_inputs()[:1]


def assert_close(actual, expected, tol, what):
    """|actual - expected| <= tol * max(1, max |expected|): float32 rounding scales with magnitude."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(actual - expected).max(initial=0.0))
    assert err <= tol * scale, f"{what}: max abs difference {err:.3g} > {tol:.1g} x {scale:.3g}"


_ADAPTERS: dict = {}


@pytest.fixture(scope="module")
def adapter():
    """Loaded adapters, each loaded once for the module."""

    def get(name, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in _ADAPTERS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = get_adapter(name, **options)
                a.ensure_loaded()
            _ADAPTERS[key] = a
        return _ADAPTERS[key]

    yield get
    _ADAPTERS.clear()


def run(a, records, layers=None):
    layers = list(layers or a.layer_names())
    for r in records:
        a.validate(r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return a.forward(records, layers)


def reference_calculator(name):
    """The package's own ASE calculator, loaded through the package's own entry point."""
    if name.startswith("chgnet"):
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        model = CHGNet.load(model_name=name.removeprefix("chgnet-"), use_device="cpu", verbose=False)
        return CHGNetCalculator(model=model, use_device="cpu")
    if name.startswith("sevennet"):
        from sevenn.calculator import SevenNetCalculator

        package_name = {"sevennet-0": "7net-0", "sevennet-l3i5": "7net-l3i5", "sevennet-mf-0": "7net-mf-0"}[name]
        return SevenNetCalculator(model=package_name, device="cpu", modal="PBE" if name == "sevennet-mf-0" else None)
    if name == "diep":
        from diep.pretrained import make_calculator

        return make_calculator(stress=False)
    raise ValueError(name)


def rigidly_moved(atoms, seed):
    """A copy rotated by a random proper rotation (cell included) and translated."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    rotation = Rotation.random(random_state=seed).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + rng.normal(scale=3.0, size=3)
    if atoms.pbc.any():
        moved.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    return moved


# ---- registry, options, datasets (no model loading) -------------------------------------------


def test_registry_entries_resolve_to_adapters_with_documented_info():
    for name, (module, cls) in ATOMISTIC.items():
        assert REGISTRY[name] == f"repalign.models.{module}:{cls}"
        adapter_cls = get_adapter_class(name)
        assert adapter_cls.info.name == name
        assert adapter_cls.info.input_kind == "structure"
        assert adapter_cls.info.extra == "zoo"
        assert adapter_cls.info.license
        assert adapter_cls.unavailable_reason() is None


def test_options_are_validated_at_construction():
    from repalign.models.ani import ANI1xAdapter
    from repalign.models.chgnet import CHGNet030
    from repalign.models.sevennet import SevenNet0, SevenNetMF0

    assert SevenNetMF0().options == {"modal": "PBE"}
    assert SevenNetMF0(modal="r2scan").options == {"modal": "R2SCAN"}
    with pytest.raises(RepalignError, match="modal='HSE'.*PBE, R2SCAN"):
        SevenNetMF0(modal="HSE")
    with pytest.raises(RepalignError, match="unknown option.*modal"):
        SevenNet0(modal="PBE")
    assert ANI1xAdapter(member="3").options == {"member": 3}
    with pytest.raises(RepalignError, match="member=8.*0-7"):
        ANI1xAdapter(member=8)
    with pytest.raises(RepalignError, match="float32 only"):
        CHGNet030(dtype="float64").load()


def test_datasets_are_real_and_stable():
    crystals, molecules = crystal_records(), molecule_records()
    assert len(crystals) == 40 and len(molecules) == 30
    for records in (crystals, molecules):
        ids = [r.id for r in records]
        assert len(set(ids)) == len(ids)
        assert all(r.kind == "structure" and len(r.payload) > 0 for r in records)
    assert all(r.payload.pbc.all() and r.payload.cell.volume > 1.0 for r in crystals)
    assert all(not r.payload.pbc.any() for r in molecules)
    assert all(set(r.payload.get_chemical_symbols()) <= {"H", "C", "N", "O"} for r in molecules)
    # same structures on every call; n selects a prefix of crystals
    assert [r.content_hash for r in crystal_records(5)] == [r.content_hash for r in crystals[:5]]
    assert [r.content_hash for r in molecule_records()] == [r.content_hash for r in molecules]
    # Cu fcc at ASE's reference a = 3.61 A: primitive cell volume a^3 / 4
    cu = _by_id(crystals, ["Cu-fcc"])[0].payload
    assert cu.get_volume() == pytest.approx(3.61**3 / 4)
    # rock-salt NaCl nearest-neighbour distance a / 2
    nacl = _by_id(crystals, ["NaCl-rocksalt"])[0].payload
    assert nacl.get_distance(0, 1, mic=True) == pytest.approx(5.64 / 2)
    with pytest.raises(RepalignError, match="between 1 and 40"):
        crystal_records(41)
    with pytest.raises(RepalignError, match="between 1 and"):
        molecule_records(0)


def test_structure_files_round_trip(tmp_path):
    records = crystal_records(3) + molecule_records(3)
    read_back = {r.id: r for r in read_inputs(write_structure_folder(records, tmp_path / "folder"))}
    assert sorted(read_back) == sorted(r.id for r in records)
    for r in records:
        other = read_back[r.id].payload
        assert other.get_chemical_symbols() == r.payload.get_chemical_symbols()
        np.testing.assert_allclose(other.positions, r.payload.positions, atol=1e-6)
        np.testing.assert_allclose(other.cell.array, r.payload.cell.array, atol=1e-6)
        assert (other.pbc == r.payload.pbc).all()
    frames = ase.io.read(str(write_extxyz(records, tmp_path / "all.extxyz")), index=":")
    assert [f.info["id"] for f in frames] == [r.id for r in records]
    assert len(read_inputs(tmp_path / "all.extxyz")) == len(records)
    with pytest.raises(RepalignError, match="only structures"):
        write_extxyz([sequence_record("s1", "ACDE")], tmp_path / "x.extxyz")


# ---- the four families --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MAIN)
def test_layers_shapes_and_batching(adapter, name):
    a = adapter(name)
    records = inputs_for(name)
    layers = a.layer_names()
    assert a.default_layers() == layers
    batch = run(a, records)
    assert len(batch) == len(records)
    widths = {}
    for record, features in zip(records, batch):
        assert list(features.tokens) == layers
        for layer, x in features.tokens.items():
            assert x.dtype == np.float32 and x.shape[0] == len(record.payload)
            assert np.isfinite(x).all()
            widths.setdefault(layer, x.shape[1])
            assert x.shape[1] == widths[layer], f"{layer}: width changes between structures"
        assert np.isfinite(features.outputs["energy"])
        assert features.outputs["energy_per_atom"] == pytest.approx(features.outputs["energy"] / len(record.payload))
        # a structure's features do not depend on what else is in the batch
        alone = run(a, [record])[0]
        for layer in layers:
            assert_close(features.tokens[layer], alone.tokens[layer], 1e-5, f"{name} {record.id} {layer} batch vs alone")
        assert alone.outputs["energy"] == pytest.approx(features.outputs["energy"], rel=1e-6, abs=1e-5)
    # a subset of layers gives the same numbers
    subset = run(a, records[:2], layers[-1:])
    assert list(subset[0].tokens) == layers[-1:]
    assert_close(subset[1].tokens[layers[-1]], batch[1].tokens[layers[-1]], 1e-5, "layer subset")
    with pytest.raises(RepalignError, match="unknown layer"):
        a.forward(records[:1], ["no-such-layer"])


@pytest.mark.parametrize("name", ["chgnet-0.3.0", "sevennet-0", "diep"])
def test_energy_equals_package_calculator(adapter, name):
    a = adapter(name)
    records = inputs_for(name)
    ours = run(a, records)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calculator = reference_calculator(name)
        for record, features in zip(records, ours):
            atoms = record.payload.copy()
            if name.startswith("chgnet") and not atoms.pbc.any():
                continue  # the CHGNet calculator has no molecule path; the boxing test covers it
            atoms.calc = calculator
            expected = atoms.get_potential_energy()
            assert features.outputs["energy"] == pytest.approx(expected, rel=1e-5, abs=1e-4), record.id


def test_ani_energy_equals_torchani_and_hidden_layers_feed_the_readout(adapter):
    import torch
    from torchani.ase import Calculator
    from torchani.units import hartree2ev

    a = adapter("ani-1x")
    records = molecule_inputs()
    ours = run(a, records)
    ensemble = a._ensemble
    calculator = Calculator(ensemble.species, ensemble)
    for record, features in zip(records, ours):
        atoms = record.payload.copy()
        atoms.calc = calculator
        assert features.outputs["energy"] == pytest.approx(atoms.get_potential_energy(), rel=1e-6), record.id

        # member 0 alone, through torchani's BuiltinModel path: its energy must equal the last
        # hidden layer pushed through each element's output neuron plus the self-atomic energies
        numbers = torch.as_tensor(atoms.numbers).unsqueeze(0)
        coords = torch.as_tensor(atoms.positions, dtype=torch.float32).unsqueeze(0)
        with torch.no_grad():
            member0 = hartree2ev(ensemble[0]((numbers, coords)).energies.double().item())
        hidden = features.tokens["hidden.2"].astype(np.float64)
        total = 0.0
        for i, symbol in enumerate(atoms.get_chemical_symbols()):
            e = "HCNO".index(symbol)
            block = hidden[i, 96 * e : 96 * (e + 1)]
            assert not np.delete(hidden[i], np.s_[96 * e : 96 * (e + 1)]).any(), "other element blocks must be zero"
            out = ensemble.neural_networks[0][symbol][6]
            total += float(block @ out.weight.double().numpy()[0] + out.bias.double().item()) + ensemble.sae_dict[symbol]
        assert hartree2ev(total) == pytest.approx(member0, abs=1e-3), record.id


@pytest.mark.parametrize("name", MAIN)
def test_features_invariant_to_rigid_motion_and_permutation(adapter, name):
    a = adapter(name)
    records = [r for r in inputs_for(name) if len(r.payload) >= 4]
    rng = np.random.default_rng(7)
    base = run(a, records)
    moved_records, permuted_records, permutations = [], [], []
    for seed, record in enumerate(records):
        moved_records.append(structure_record(record.id, rigidly_moved(record.payload, seed)))
        perm = rng.permutation(len(record.payload))
        permutations.append(perm)
        permuted_records.append(structure_record(record.id, record.payload[perm]))
    moved, permuted = run(a, moved_records), run(a, permuted_records)
    for record, perm, b, m, p in zip(records, permutations, base, moved, permuted):
        for layer in a.layer_names():
            assert_close(m.tokens[layer], b.tokens[layer], 2e-5, f"{name} {record.id} {layer} under rotation")
            assert_close(p.tokens[layer], b.tokens[layer][perm], 2e-5, f"{name} {record.id} {layer} under permutation")
        assert m.outputs["energy"] == pytest.approx(b.outputs["energy"], rel=1e-5, abs=1e-3)
        assert p.outputs["energy"] == pytest.approx(b.outputs["energy"], rel=1e-5, abs=1e-3)


@pytest.mark.parametrize(
    ("name", "bad_symbol"), [("chgnet-0.3.0", "Am"), ("sevennet-0", "Og"), ("diep", "Og"), ("ani-1x", "S")]
)
def test_bad_inputs_raise_invalid_input_naming_the_sample(adapter, name, bad_symbol):
    a = adapter(name)
    good = inputs_for(name)[0].payload
    bad = good.copy()
    bad.symbols[0] = bad_symbol
    with pytest.raises(InvalidInput, match=rf"bad-1: element\(s\) {bad_symbol} not supported") as err:
        a.validate(structure_record("bad-1", bad))
    assert err.value.sample_id == "bad-1"
    if name == "ani-1x":
        assert "H, C, N, O" in str(err.value)
    with pytest.raises(InvalidInput, match="empty structure") as err:
        a.validate(structure_record("empty-1", ase.Atoms()))
    assert err.value.sample_id == "empty-1"
    with pytest.raises(InvalidInput, match="takes structure inputs") as err:
        a.validate(sequence_record("seq-1", "MKV"))
    assert err.value.sample_id == "seq-1"


def test_chgnet_rejects_isolated_atoms_before_running(adapter):
    a = adapter("chgnet-0.3.0")
    lone = ase.Atoms("Cu", cell=[20.0, 20.0, 20.0], pbc=True)
    with pytest.raises(InvalidInput, match=r"lone-1: atom\(s\) \[0\] have no neighbour within 6 A"):
        a.validate(structure_record("lone-1", lone))
    far = ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, 6.5]])
    with pytest.raises(InvalidInput, match=r"far-1: atom\(s\) \[0, 1\]"):
        a.validate(structure_record("far-1", far))
    # 5.9 A apart is within the cutoff: accepted and run
    near = structure_record("near-1", ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, 5.9]]))
    assert run(a, [near])[0].tokens["conv.3"].shape == (2, 64)


def test_periodicity_rules(adapter):
    chgnet, ani = adapter("chgnet-0.3.0"), adapter("ani-1x")
    slab = crystal_inputs()[0].payload.copy()
    slab.pbc = [True, True, False]
    with pytest.raises(InvalidInput, match="periodic along some axes only"):
        chgnet.validate(structure_record("slab-1", slab))
    with pytest.raises(InvalidInput, match="molecular potential") as err:
        ani.validate(structure_record("box-1", ase.Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]],
                                                       cell=[10, 10, 10], pbc=True)))
    assert err.value.sample_id == "box-1"


def test_chgnet_molecule_box_leaves_no_image_within_cutoff(adapter):
    """A molecule's features equal those of the same molecule in a much larger periodic box."""
    a = adapter("chgnet-0.3.0")
    molecule = molecule_inputs()[1]
    features = run(a, [molecule])[0]
    boxed = molecule.payload.copy()
    boxed.set_cell([40.0, 40.0, 40.0])
    boxed.center()
    boxed.pbc = True
    reference = run(a, [structure_record("boxed", boxed)])[0]
    for layer in a.layer_names():
        assert_close(features.tokens[layer], reference.tokens[layer], 1e-5, f"boxed {layer}")
    assert features.outputs["energy"] == pytest.approx(reference.outputs["energy"], rel=1e-6)


@pytest.mark.parametrize("name", ["chgnet-0.2.0", "chgnet-r2scan", "sevennet-l3i5", "sevennet-mf-0"])
def test_other_checkpoints_run_and_match_their_calculator(adapter, name):
    a = adapter(name)
    records = crystal_inputs()[1:2]
    ours = run(a, records)
    for features, record in zip(ours, records):
        assert [x.shape[0] for x in features.tokens.values()] == [len(record.payload)] * len(a.layer_names())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calculator = reference_calculator(name)
        for features, record in zip(ours, records):
            atoms = record.payload.copy()
            atoms.calc = calculator
            assert features.outputs["energy"] == pytest.approx(atoms.get_potential_energy(), rel=1e-5, abs=1e-4)


def test_sevennet_mf_fidelity_option_changes_the_model(adapter):
    from sevenn.calculator import SevenNetCalculator

    pbe, r2scan = adapter("sevennet-mf-0"), adapter("sevennet-mf-0", modal="R2SCAN")
    record = crystal_inputs()[0]
    e_pbe, e_r2scan = run(pbe, [record])[0].outputs["energy"], run(r2scan, [record])[0].outputs["energy"]
    atoms = record.payload.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atoms.calc = SevenNetCalculator(model="7net-mf-0", device="cpu", modal="R2SCAN")
        assert e_r2scan == pytest.approx(atoms.get_potential_energy(), rel=1e-5)
    assert abs(e_pbe - e_r2scan) > 1e-2
    assert r2scan.provenance()["options"] == {"modal": "R2SCAN"}


def test_every_crystal_element_is_supported_by_every_crystal_potential(adapter):
    crystals = crystal_records()
    for name in ["chgnet-0.3.0", "sevennet-0", "sevennet-l3i5", "sevennet-mf-0", "diep"]:
        a = adapter(name)
        for record in crystals:
            a.validate(record)


@pytest.mark.parametrize("name", MAIN)
def test_provenance_hashes_the_weight_files(adapter, name):
    a = adapter(name)
    prov = a.provenance()
    assert prov["model"] == name and prov["dtype"] == "float32" and prov["device"] == "cpu"
    assert all(prov["packages"].values())

    def sha(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    if name.startswith("chgnet"):
        assert prov["weights_sha256"] == sha(a._weights_path)
        assert prov["weights_file"].endswith(".pth.tar")
    elif name.startswith("sevennet"):
        assert prov["weights_sha256"] == sha(a._weights_path)
    elif name == "diep":
        assert prov["weights_sha256"] == {f: sha(a._model_path / f) for f in ("model.json", "model.pt", "state.pt")}
    else:
        files = sorted(p for p in a._path.rglob("*") if p.is_file())
        assert len(files) > 8 * 4  # one network file per element per member, at least
        digest = hashlib.sha256()
        for p in files:
            digest.update(f"{p.relative_to(a._path).as_posix()}\0{sha(p)}\n".encode())
        assert prov["weights_sha256"] == digest.hexdigest()
