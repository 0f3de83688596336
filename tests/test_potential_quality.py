"""Quality benchmark of the potentials: Delta-codes scans, Birch-Murnaghan fits, quality vs alignment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.collections import dcdft

from analyses.common import run_main
from analyses.potential_quality import (
    ALIGNMENTS,
    element_eos,
    fit_birch_murnaghan,
    main,
    model_alignment,
    quality_vs_alignment,
    spearman_exact,
    summarise,
)
from repalign.datasets.eos import delta_eos, reference_eos, scaled_crystal
from repalign.errors import InvalidInput, RepalignError
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures
from repalign.table import read_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "analyses" / "results" / "interatomic_potentials"
#: 1 eV/A^3 in GPa from the SI definitions: e = 1.602176634e-19 C (exact), 1 A^3 = 1e-30 m^3
GPA_PER_EV_A3 = 1.602176634e-19 / 1e-30 / 1e9


def birch_murnaghan(v, e0, v0, b0_gpa, b1):
    """Third-order Birch-Murnaghan energy (eV/atom), written out from Birch, Phys. Rev. 71, 809 (1947)."""
    b0 = b0_gpa / GPA_PER_EV_A3
    x = (v0 / v) ** (2.0 / 3.0) - 1.0
    return e0 + 9.0 * v0 * b0 / 16.0 * (x ** 3 * b1 + x ** 2 * (6.0 - 4.0 * (v0 / v) ** (2.0 / 3.0)))


def test_fit_recovers_a_synthetic_birch_murnaghan_curve():
    v0, b0, b1, e0 = 16.48, 78.1, 4.57, -3.74
    volumes = v0 * (1 + np.linspace(-0.06, 0.06, 7)) * 1.01  # the minimum off the scan's centre
    fit = fit_birch_murnaghan(volumes, birch_murnaghan(volumes, e0, v0, b0, b1))
    assert fit["v0"] == pytest.approx(v0, rel=1e-6)
    assert fit["b0"] == pytest.approx(b0, rel=1e-5)  # GPa, through ase.units against the SI constants
    assert fit["b1"] == pytest.approx(b1, rel=1e-3)
    assert fit["e0"] == pytest.approx(e0, abs=1e-7)
    with pytest.raises(RepalignError, match=">= 5"):
        fit_birch_murnaghan(volumes[:4], volumes[:4])


def test_delta_set_holds_the_collection_at_its_reference_volumes():
    data = delta_eos()
    table = data.table()
    assert data.params["elements"] == list(dcdft.names) and len(dcdft.names) == 71
    assert len(data) == 71 * 7 and table.id.is_unique and len({r.content_hash for r in data}) == len(data)
    for element in ("Cu", "Si", "Fe", "W"):
        stored = dcdft.data[element]
        ref = reference_eos(element)
        assert (ref["v0"], ref["b0"], ref["b1"]) == (stored["wien2k_volume"], stored["wien2k_B"], stored["wien2k_Bp"])
        rows = table[table.element == element]
        np.testing.assert_allclose(rows.volume_change, np.linspace(-0.06, 0.06, 7), atol=1e-12)
        for row in rows.itertuples():
            atoms = data[data.ids.index(row.id)].payload
            original = dcdft[element]
            # A^3 per atom, the collection's V0 scaled; an isotropic scaling keeps the fractional positions
            assert atoms.get_volume() / len(atoms) == pytest.approx(stored["wien2k_volume"] * (1 + row.volume_change), rel=1e-12)
            np.testing.assert_allclose(atoms.get_scaled_positions(), original.get_scaled_positions(), atol=1e-10)
            np.testing.assert_allclose(atoms.cell.cellpar()[3:], original.cell.cellpar()[3:], atol=1e-9)
            assert list(atoms.numbers) == list(original.numbers) and atoms.pbc.all()
    assert set(table.n_atoms) <= {1, 2, 3, 4, 6, 8, 12}
    np.testing.assert_allclose(table.b0_ref, [dcdft.data[e]["wien2k_B"] for e in table.element])


def test_delta_set_draws_seeded_subsets_and_refuses_bad_arguments():
    a, b, c = delta_eos(5, seed=1), delta_eos(5, seed=1), delta_eos(5, seed=2)
    assert a.content_hash == b.content_hash != c.content_hash
    order = list(dcdft.names)
    assert a.params["elements"] == sorted(a.params["elements"], key=order.index) and len(a.params["elements"]) == 5
    picked = delta_eos(elements=("Cu", "Si"), points=5, span=0.04)
    assert picked.params["elements"] == ["Si", "Cu"] and len(picked) == 10  # by atomic number
    assert picked.provenance()["seed"] == 0 and picked.provenance()["size"] == 10
    for kwargs, message in (({"elements": ("Cu", "Xx")}, "no element 'Xx'"), ({"size": 72}, "at most 71"),
                            ({"points": 4}, "points"), ({"span": 0.7}, "span")):
        with pytest.raises(RepalignError, match=message):
            delta_eos(**kwargs)
    with pytest.raises(RepalignError, match="positive"):
        scaled_crystal("Cu", -1.0)


class AnalyticPotential(ModelAdapter):
    """A Birch-Murnaghan solid per element with known V0 = scale * V0_ref and B0 = B0_ref, B1 = 4.5:
    the answer the scan and fit must give, whatever the window. Takes Cu and Al only."""

    info = ModelInfo(name="bm-analytic", family="test", modality="crystal", input_kind="structure", extra="",
                     license="", weights="none")
    scale = 1.13

    def load(self):
        self._model = True

    def layer_names(self):
        return ["energy"]

    def validate(self, record):
        if set(record.payload.get_chemical_symbols()) - {"Al", "Cu"}:
            raise InvalidInput(f"{record.id}: element(s) not supported by {self.info.name} (supports Al Cu)", record.id)

    def forward(self, records, layers):
        out = []
        for r in records:
            ref = reference_eos(r.payload.get_chemical_symbols()[0])
            v = r.payload.get_volume() / len(r.payload)
            e = birch_murnaghan(v, -1.0, self.scale * ref["v0"], ref["b0"], 4.5)
            out.append(SampleFeatures(tokens={"energy": np.zeros((len(r.payload), 1), np.float32)},
                                      outputs={"energy_per_atom": e}))
        return out


def test_scan_moves_to_a_minimum_outside_the_first_window_and_skips_unsupported_elements():
    adapter = AnalyticPotential()
    adapter.ensure_loaded()
    changes = np.linspace(-0.06, 0.06, 7)
    cu = element_eos(adapter, "Cu", changes)
    assert cu["status"] == "ok" and cu["shifts"] >= 1
    assert cu["v0"] == pytest.approx(1.13 * cu["v0_ref"], rel=1e-6)
    assert cu["b0"] == pytest.approx(cu["b0_ref"], rel=1e-4)
    assert cu["v0_rel_error"] == pytest.approx(0.13, rel=1e-5)
    adapter.scale = 1.6  # beyond three shifts of +6 %
    far = element_eos(adapter, "Al", changes, max_shifts=2)
    assert far["status"].startswith("no minimum between") and "v0" not in far
    si = element_eos(adapter, "Si", changes)
    assert si["status"].startswith("skipped: ") and "Si" in si["status"]
    adapter.scale = 0.98
    al = element_eos(adapter, "Al", changes)
    quality = summarise(pd.DataFrame([{"model": "m", **row} for row in (cu, si, al)]), {"m": 1.5})
    row = quality.iloc[0]
    assert row.n_elements == 2 and row.skipped == "Si" and row.seconds == 1.5
    assert row.v0_mare == pytest.approx((0.13 + 0.02) / 2, rel=1e-4)


def test_spearman_exact_matches_scipys_exact_permutation_test():
    from scipy.stats import permutation_test, spearmanr

    rng = np.random.default_rng(0)
    for x, y in ((rng.normal(size=6), rng.normal(size=6)), (np.array([1, 2, 2, 3, 5, 4.0]), np.arange(6.0) ** 2)):
        rho, p = spearman_exact(x, y)
        # one sample permuted against fixed x: the n! pairings (two samples would permute both, (n!)^2)
        ref = permutation_test((y,), lambda b: spearmanr(x, b).statistic, permutation_type="pairings",
                               n_resamples=np.inf, alternative="two-sided")
        assert rho == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
        assert p == pytest.approx(ref.pvalue, abs=1e-9)
    with pytest.raises(RepalignError, match="3 to 9"):
        spearman_exact(np.arange(10.0), np.arange(10.0))


def test_alignment_per_model_agrees_with_the_studys_best_pairs():
    """The study's committed best_pairs.csv (written by its own run) against model_alignment on its scores.csv."""
    scores = read_table(RESULTS / "scores.csv")
    best = read_table(RESULTS / "best_pairs.csv")
    if "layers" in best.columns:  # best pairs of the hidden family beside those over all layers: model_alignment's
        best = best[best.layers == "all"]
    best = best[(best.dataset == "crystals") & (best.granularity == "structure") & (best.level == "trained")
                & (best.metric == "mutual_knn") & (best.model_a != best.model_b)]
    models = sorted(set(best.model_a) | set(best.model_b))
    assert len(models) == 7
    table = model_alignment(scores, models)
    for row in table.itertuples():
        mine = best[(best.model_a == row.model) | (best.model_b == row.model)]
        assert row.n_partners == 6 == len(mine)
        assert row.mean_alignment == pytest.approx(mine.score.mean(), abs=1e-9)
        other = mine[mine.model_a.str[:4] != mine.model_b.str[:4]]  # chgn / seve / diep
        assert row.mean_alignment_other_families == pytest.approx(other.score.mean(), abs=1e-9)
        assert row.n_other_families == len(other) == {"chgn": 4, "seve": 4, "diep": 6}[row.model[:4]]
    quality = pd.DataFrame({"model": models, "v0_mare_common": np.arange(7.0), "b0_mare_common": -np.arange(7.0)})
    per_model, tests = quality_vs_alignment(scores, quality, models)
    spearman = tests[(tests.kind == "spearman") & (tests.models == "all") & (tests.alignment == "mean_alignment")]
    order = per_model.mean_alignment.rank().to_numpy()
    # B0 error = -V0 error here, so the two correlations are opposite
    assert spearman.rho.iloc[0] == pytest.approx(-spearman.rho.iloc[1])
    assert spearman.rho.iloc[0] == pytest.approx(np.corrcoef(order, np.arange(7.0))[0, 1])
    steps = tests[tests.kind == "family_step"]
    assert set(steps.step) == {"chgnet-0.2.0 -> chgnet-0.3.0", "sevennet-0 -> sevennet-l3i5", "sevennet-l3i5 -> sevennet-mf-0"}


#: layers of the synthetic potentials: an input layer, a hidden one and the family's readout layer
SYNTHETIC_LAYERS = {"chgnet-0.3.0": ("embedding", "conv.0", "conv.3"), "chgnet-0.2.0": ("embedding", "conv.0", "conv.3"),
                    "sevennet-0": ("embedding", "conv.0", "conv.4"), "diep": ("embedding", "conv.0", "conv.2")}


def synthetic_study(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, control contrasts) of four potentials in three families, with random scores, ``best``
    marking the highest pair without an input layer (as compare marks the hidden family's best), and
    rows the variants must leave out: controls scoring higher, another metric, granularity and layer
    family, an all-scope control and a baseline comparison."""
    rng = np.random.default_rng(seed)
    models = list(SYNTHETIC_LAYERS)
    rows = []
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            for level, metric, granularity in (("trained", "mutual_knn", "structure"), ("random_init", "mutual_knn", "structure"),
                                               ("trained", "unbiased_cka", "structure"), ("trained", "mutual_knn", "element")):
                shift = 0.5 if level == "random_init" or metric != "mutual_knn" or granularity != "structure" else 0.0
                name_a, name_b = (a, b) if level == "trained" else (f"{a}@random:0", f"{b}@random:0")
                for la in SYNTHETIC_LAYERS[a]:
                    for lb in SYNTHETIC_LAYERS[b]:
                        rows.append({"dataset": "crystals", "level": level, "model_a": name_a, "layer_a": la, "model_b": name_b,
                                     "layer_b": lb, "metric": metric, "granularity": granularity,
                                     "score": rng.uniform(0.4, 0.9) + shift})
    scores = pd.DataFrame(rows)
    hidden = (scores.layer_a != "embedding") & (scores.layer_b != "embedding")
    top = scores[hidden].groupby(["level", "metric", "granularity", "model_a", "model_b"])["score"].idxmax()
    scores["best"] = scores.index.isin(top.to_numpy())
    scores["in_family"] = hidden
    contrasts = []
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            for layers, comparison, scope, metric, granularity in (
                    ("hidden", "models", "model", "mutual_knn", "structure"), ("all", "models", "model", "mutual_knn", "structure"),
                    ("hidden", "models", "all", "mutual_knn", "structure"), ("hidden", "baseline", "model", "mutual_knn", "structure"),
                    ("hidden", "models", "model", "unbiased_cka", "structure"), ("hidden", "models", "model", "mutual_knn", "element")):
                contrasts.append({"dataset": "crystals", "granularity": granularity, "metric": metric, "layers": layers,
                                  "comparison": comparison, "model_a": a, "model_b": b, "difference": rng.normal(0, 0.1),
                                  "n_samples": 100, "control_scope": scope})
    return scores, pd.DataFrame(contrasts)


def test_alignment_variants_on_a_synthetic_study_match_pandas():
    scores, contrasts = synthetic_study()
    models = list(SYNTHETIC_LAYERS)
    table = model_alignment(scores, models, contrasts).set_index("model")
    pairs = scores[(scores.level == "trained") & (scores.metric == "mutual_knn") & (scores.granularity == "structure")]
    no_input = pairs[(pairs.layer_a != "embedding") & (pairs.layer_b != "embedding")]
    readout = {"chgnet-0.3.0": "conv.3", "chgnet-0.2.0": "conv.3", "sevennet-0": "conv.4", "diep": "conv.2"}
    at_readout = pairs[(pairs.layer_a == pairs.model_a.map(readout)) & (pairs.layer_b == pairs.model_b.map(readout))]
    primary = contrasts[(contrasts.layers == "hidden") & (contrasts.comparison == "models") & (contrasts.control_scope == "model")
                        & (contrasts.metric == "mutual_knn") & (contrasts.granularity == "structure")]
    per_pair = {
        "mean_alignment": pairs.groupby(["model_a", "model_b"]).score.max(),
        "mean_hidden_alignment": no_input.groupby(["model_a", "model_b"]).score.max(),
        "mean_readout_alignment": at_readout.groupby(["model_a", "model_b"]).score.max(),
        "mean_control_adjusted_alignment": primary.set_index(["model_a", "model_b"]).difference,
    }
    assert len(primary) == 6 and all(len(values) == 6 for values in per_pair.values())
    expected = {}
    for model in models:
        for name, values in per_pair.items():
            mine = values[[model in pair for pair in values.index]]
            other = mine[[a.split("-")[0] != b.split("-")[0] for a, b in mine.index]]
            expected[model, name] = mine.mean()
            expected[model, name + "_other"] = other.mean()
        assert table.at[model, "mean_alignment"] == pytest.approx(expected[model, "mean_alignment"], abs=1e-12)
        assert table.at[model, "mean_alignment_other_families"] == pytest.approx(expected[model, "mean_alignment_other"], abs=1e-12)
        assert table.at[model, "mean_hidden_alignment"] == pytest.approx(expected[model, "mean_hidden_alignment"], abs=1e-12)
        assert table.at[model, "mean_readout_alignment"] == pytest.approx(expected[model, "mean_readout_alignment"], abs=1e-12)
        assert table.at[model, "mean_control_adjusted_alignment"] == pytest.approx(
            expected[model, "mean_control_adjusted_alignment"], abs=1e-12)
        assert table.at[model, "mean_control_adjusted_other_families"] == pytest.approx(
            expected[model, "mean_control_adjusted_alignment_other"], abs=1e-12)
        assert table.at[model, "n_control_partners"] == 3
        assert table.at[model, "n_control_other_families"] == (2 if model.startswith("chgnet") else 3)
        assert "embedding" not in table.at[model, "hidden_best_layers"]
    # every variant's Spearman row against scipy on the values computed here, over all models and the PBE-trained three
    from scipy.stats import spearmanr

    quality = pd.DataFrame({"model": models, "v0_mare_common": [0.01, 0.03, 0.02, 0.05], "b0_mare_common": [0.2, 0.1, 0.3, 0.4]})
    per_model, tests = quality_vs_alignment(scores, quality, models, contrasts)
    columns = {name: name for name in per_pair} | {"mean_alignment_other_families": "mean_alignment_other",
                                                   "mean_control_adjusted_other_families": "mean_control_adjusted_alignment_other"}
    assert set(tests.alignment) == set(ALIGNMENTS) == set(columns)
    for subset, names in (("all", models), ("PBE-trained", models[:3])):
        for alignment, key in columns.items():
            for error in ("v0_mare_common", "b0_mare_common"):
                row = tests[(tests.kind == "spearman") & (tests.models == subset) & (tests.alignment == alignment)
                            & (tests.error == error)].iloc[0]
                errors = quality.set_index("model").loc[names, error]
                assert row.n_models == len(names)
                assert row.rho == pytest.approx(spearmanr([expected[m, key] for m in names], errors).statistic, abs=1e-12)


def test_alignment_variants_refuse_ambiguous_or_missing_rows():
    scores, contrasts = synthetic_study()
    models = list(SYNTHETIC_LAYERS)
    twice = pd.concat([contrasts, contrasts.iloc[:1].assign(n_samples=50)], ignore_index=True)
    with pytest.raises(RepalignError, match=r"chgnet-0.3.0 vs chgnet-0.2.0: several control contrasts .*N = 50, 100\); pass the contrasts of one N"):
        model_alignment(scores, models, twice)
    unmarked = scores.assign(best=scores.best & ~((scores.model_a == "sevennet-0") & (scores.model_b == "diep")))
    with pytest.raises(RepalignError, match="sevennet-0 vs diep: no best pair of the hidden layer family"):
        model_alignment(unmarked, models, contrasts)


def test_committed_alignment_variants_follow_the_studys_tables():
    """quality_vs_alignment.csv against the study's committed best_pairs.csv and control_contrasts.csv,
    and its tests against a recomputation from the committed tables."""
    versus = read_table(RESULTS / "quality_vs_alignment.csv").set_index("model")
    contrasts = read_table(RESULTS / "control_contrasts.csv")
    primary = contrasts[(contrasts.analysis == "primary") & (contrasts.dataset == "crystals")]
    best = read_table(RESULTS / "best_pairs.csv")
    hidden = best[(best.layers == "hidden") & (best.level == "trained") & (best.dataset == "crystals")
                  & (best.granularity == "structure") & (best.metric == "mutual_knn")]
    assert len(versus) == 7 and len(primary) == 21 and len(hidden) == 21
    for model in versus.index:
        mine = primary[(primary.model_a == model) | (primary.model_b == model)]
        assert len(mine) == 6 and versus.at[model, "n_control_partners"] == 6
        assert versus.at[model, "mean_control_adjusted_alignment"] == pytest.approx(mine.difference.mean(), abs=1e-6)
        assert versus.at[model, "mean_control_adjusted_alignment"] == pytest.approx(
            (mine.trained - mine.control_mean).mean(), abs=1e-4)  # difference = trained - mean control (rounded columns)
        mine_hidden = hidden[(hidden.model_a == model) | (hidden.model_b == model)]
        assert versus.at[model, "mean_hidden_alignment"] == pytest.approx(mine_hidden.score.mean(), abs=1e-6)
    quality = read_table(RESULTS / "quality.csv")
    _, tests = quality_vs_alignment(read_table(RESULTS / "scores.csv"), quality, contrasts=contrasts)
    committed = read_table(RESULTS / "quality_vs_alignment_tests.csv")
    assert set(committed.alignment) == set(ALIGNMENTS)
    pd.testing.assert_frame_equal(committed[["kind", "models", "alignment", "error", "step"]].fillna(""),
                                  tests[["kind", "models", "alignment", "error", "step"]].fillna(""))
    np.testing.assert_allclose(committed.rho, tests.rho, atol=1e-6)
    np.testing.assert_allclose(committed.p_value, tests.p_value, atol=1e-5)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert run_main(main, ["--models", "ani-1x", "--out", str(tmp_path)]) == 1
    assert run_main(main, ["--elements", "Xx", "--quick", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "choose from chgnet-0.3.0" in err[0] and "no element 'Xx'" in err[1]


@pytest.mark.slow
def test_quick_run_writes_the_quality_tables(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "analyses.potential_quality", "--quick", "--out", str(tmp_path),
                           "--scores", str(RESULTS / "scores.csv")], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    per_element = read_table(tmp_path / "quality_per_element.csv")
    assert sorted(per_element.element.unique()) == ["Al", "Cu", "Si"] and (per_element.status == "ok").all()
    # trained on PBE data: V0 of these simple solids within 10 % of all-electron PBE (CHGNet 0.2.0's Al: +5 %)
    assert (per_element.v0_rel_error.abs() < 0.10).all()
    quality = read_table(tmp_path / "quality.csv")
    assert {"model", "n_elements", "v0_mare", "b0_mare", "reference", "functional_of_training_data"} <= set(quality.columns)
    assert list(quality.model) == ["chgnet-0.2.0", "chgnet-0.3.0"] and (quality.n_elements == 3).all()
    for row in quality.itertuples():
        mine = per_element[per_element.model == row.model]
        assert row.v0_mare == pytest.approx(mine.v0_rel_error.abs().mean(), abs=1e-6)
    versus = read_table(tmp_path / "quality_vs_alignment.csv")
    assert list(versus.model) == ["chgnet-0.3.0", "chgnet-0.2.0"] and (versus.n_partners == 1).all()
    tests = read_table(tmp_path / "quality_vs_alignment_tests.csv")
    assert set(tests.step) == {"chgnet-0.2.0 -> chgnet-0.3.0"}
