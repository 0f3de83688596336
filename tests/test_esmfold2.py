"""ESMFold2 and ESMC adapters on tiny random-initialised checkpoints, loaded the way users load them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repalign.errors import InvalidInput, ModelUnavailable, RepalignError
from repalign.inputs import sequence_record
from repalign.models import get_adapter

ATOM = dict(hidden_size=16, output_dim=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16,
            num_spatial_rope_pairs_per_axis=1, num_uid_rope_pairs=2)
ESMC_WIDTH, PAIR_WIDTH, SINGLE_INPUTS, DIFFUSION_WIDTH, TRUNK_WIDTH = 16, 8, 16 + 2 * 33 + 1, 16, 16


def tiny_config(msa: bool = True):
    from transformers.models.esmfold2 import EsmFold2Config

    return EsmFold2Config(
        hidden_size=TRUNK_WIDTH, pairwise_hidden_size=PAIR_WIDTH,
        single_inputs_size=SINGLE_INPUTS,  # atom_encoder.output_dim + two residue one-hots + profile scalar
        pair_transition_intermediate_size=16, sliding_window=32, chunk_size=4,
        num_loops=2, folding_trunk_num_hidden_layers=2, parcae_num_coda_layers=1,
        atom_encoder=dict(ATOM),
        structure_head=dict(
            diffusion_module=dict(hidden_size=DIFFUSION_WIDTH, fourier_dim=8, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=16, pair_intermediate_size=16, atom_encoder=dict(ATOM)),
            num_distogram_bins=16, num_diffusion_samples=1, inference_num_steps=6,
        ),
        confidence_head=dict(num_hidden_layers=2, num_plddt_bins=10, num_pde_bins=8, num_pae_bins=8, distogram_bins=16),
        msa_encoder=dict(hidden_size=8, outer_hidden_size=4, num_hidden_layers=2, num_attention_heads=2, head_dim=4,
                         intermediate_size=16, enabled=msa),
        lm_encoder=dict(num_hidden_layers=2),
        esmc_config=dict(model_type="esmc", hidden_size=ESMC_WIDTH, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=512),
    )


def save_tiny(path, msa=True, seed=0):
    """Random weights, every parameter perturbed so no zero-initialised gate hides a bug; saved with
    save_pretrained exactly like a downloaded checkpoint directory."""
    from transformers.models.esmfold2 import EsmFold2Model

    torch.manual_seed(seed)
    model = EsmFold2Model(tiny_config(msa)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(path)
    model.esmc.save_pretrained(path / "esmc")  # the bundled backbone alone, for the esmc-* adapters
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("esmfold2") / "tiny")


@pytest.fixture(scope="module")
def adapter(ckpt):
    a = get_adapter("esmfold2", weights=str(ckpt))
    a.ensure_loaded()
    return a


PROTEIN = sequence_record("p1", "MKTAYIAKQRQISFVKSHF")
SHORT = sequence_record("p2", "GSHMLE")
COMPLEX = sequence_record("c1", "MKTAYIAK:GSHMLEW")


def expected_width(name: str) -> int:
    if name.endswith(".raw"):
        return PAIR_WIDTH
    if name.startswith("esmc."):
        return ESMC_WIDTH
    if name == "input_embedder.single":
        return SINGLE_INPUTS
    if name.startswith("diffusion.") and name != "diffusion.conditioning.pair":
        return DIFFUSION_WIDTH
    if name == "confidence.single":
        return TRUNK_WIDTH
    return PAIR_WIDTH


def test_every_stage_present_with_shapes(adapter):
    names = adapter.layer_names()
    assert names[:3] == ["esmc.0", "esmc.1", "esmc.2"]
    for stage in ("input_embedder.single", "language_model", "msa_encoder.1", "lm_encoder.1", "folding_trunk.1",
                  "parcae", "distogram", "diffusion.conditioning.pair", "diffusion.single", "diffusion.atom_encoder",
                  "diffusion.token_transformer.1", "confidence.input", "confidence.pair.1", "confidence.single"):
        assert stage in names
    feats = adapter.forward([PROTEIN], names)[0]
    assert list(feats.tokens) == names
    for name, x in feats.tokens.items():
        assert x.shape == (19, expected_width(name)), name
        assert x.dtype == np.float32 and np.isfinite(x).all(), name
    assert 0.0 <= feats.outputs["plddt"] <= 1.0 and 0.0 <= feats.outputs["ptm"] <= 1.0
    assert "iptm" not in feats.outputs


def test_two_runs_identical_with_released_lm_dropout(ckpt, adapter):
    names = adapter.layer_names()
    assert adapter.model.config.lm_encoder.lm_dropout == 0.25 and adapter.extractor.lm_dropout_p == 0.25
    again = get_adapter("esmfold2", weights=str(ckpt))  # a fresh load, not the same object
    a = adapter.forward([PROTEIN], names)[0]
    torch.manual_seed(123)  # the global generator plays no part
    b = again.forward([PROTEIN], names)[0]
    for n in names:
        np.testing.assert_array_equal(a.tokens[n], b.tokens[n], err_msg=n)
    assert a.outputs == b.outputs
    assert adapter.model.config.lm_encoder.lm_dropout == 0.25  # the released config is left as it was
    off = get_adapter("esmfold2", weights=str(ckpt), lm_dropout="off")
    c = off.forward([PROTEIN], names)[0]
    for n in names:  # upstream of the LM encoder nothing changes; from the LM encoder on, the features do
        if n.startswith(("esmc.", "input_embedder.", "language_model", "msa_encoder.")):
            np.testing.assert_array_equal(a.tokens[n], c.tokens[n], err_msg=n)
        elif n.startswith(("lm_encoder.", "folding_trunk.", "parcae")):
            assert not np.allclose(a.tokens[n], c.tokens[n], atol=1e-4), n
    # another seed draws other masks
    other = get_adapter("esmfold2", weights=str(ckpt), seed="1").forward([PROTEIN], ["lm_encoder.0"])[0]
    assert not np.allclose(other.tokens["lm_encoder.0"], a.tokens["lm_encoder.0"], atol=1e-4)
    # the mode is recorded with the options (resume refuses the other mode) and in the provenance
    assert adapter.options["lm_dropout"] == "on" and off.options["lm_dropout"] == "off"
    assert adapter.provenance()["lm_dropout"]["p_applied"] == 0.25 and off.provenance()["lm_dropout"]["p_applied"] == 0.0


def test_lm_dropout_masks_are_seeded_bernoulli():
    from esmfold2_model.extractor import apply_lm_dropout, lm_dropout_mask

    m = lm_dropout_mask(40, 32, 0.25, seed=0, loop=0)
    assert set(torch.unique(m).tolist()) == {0.0, 1.0}
    assert abs(float(1 - m.mean()) - 0.25) < 0.01  # 51200 draws: 4 standard errors = 0.008
    assert torch.equal(m, lm_dropout_mask(40, 32, 0.25, seed=0, loop=0))
    assert not torch.equal(m, lm_dropout_mask(40, 32, 0.25, seed=0, loop=1))
    assert not torch.equal(m, lm_dropout_mask(40, 32, 0.25, seed=1, loop=0))
    # a sample's block is the same in any batch; padding is left untouched
    x = torch.randn(2, 7, 7, 4, generator=torch.Generator().manual_seed(0))
    both = apply_lm_dropout(x, [7, 5], 0.25, 0, 3)
    alone = apply_lm_dropout(x[1:, :5, :5], [5], 0.25, 0, 3)
    assert torch.equal(both[1, :5, :5], alone[0])
    assert torch.equal(both[1, 5:], x[1, 5:]) and torch.equal(both[1, :, 5:], x[1, :, 5:])
    kept = both[0] != 0
    torch.testing.assert_close(both[0][kept], x[0][kept] / 0.75)


def test_batch_equals_alone(adapter):
    names = adapter.layer_names()
    records = [PROTEIN, COMPLEX, SHORT]
    batch = adapter.forward(records, names)
    for r, got in zip(records, batch):
        alone = adapter.forward([r], names)[0]
        for n in names:
            np.testing.assert_allclose(got.tokens[n], alone.tokens[n], atol=1e-4, rtol=1e-4, err_msg=f"{r.id} {n}")
        for k in alone.outputs:
            assert got.outputs[k] == pytest.approx(alone.outputs[k], abs=1e-5)


def seeded_port_dropout(monkeypatch, seed=0):
    """Make the port's own per-loop LM dropout (``F.dropout(..., training=True)`` in every trunk loop)
    draw the masks the extractor promises for one protein: loop j's mask from ``lm_dropout_mask``
    (seed, j), applied as F.dropout does (z * m / (1 - p)). Returns the list of rates seen per loop."""
    import torch.nn.functional as F

    from esmfold2_model.extractor import lm_dropout_mask

    real = F.dropout
    calls = []

    def dropout(x, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return real(x, p, training, inplace)
        assert x.shape[0] == 1
        mask = lm_dropout_mask(x.shape[1], x.shape[-1], p, seed, len(calls), x.device, x.dtype)
        calls.append(p)
        return x * mask[None] / (1.0 - p)

    monkeypatch.setattr(F, "dropout", dropout)
    return calls


def test_matches_the_port_forward(adapter, monkeypatch):
    """Our trunk orchestration (ESMC run separately, the MSA encoder computed once, seeded LM dropout
    and initial pair state, hooks) against the port's own forward from input ids, as released (LM
    dropout on, resampled in every loop), given the same dropout masks and initial pair state."""
    from transformers.models.esmfold2.modeling_esmfold2 import EsmFold2AtomInputs

    from esmfold2_model.featurize import featurize_sequence

    model = adapter.model
    f = {k: v[None] for k, v in featurize_sequence(PROTEIN.payload).features.items()}

    def seeded_init(reference):  # the initial state we promise: trunc. normal, std sqrt(2/5C), seed 0
        c = reference.shape[-1]
        std = (2.0 / (5.0 * c)) ** 0.5
        out = torch.empty(reference.shape)
        torch.nn.init.trunc_normal_(out[0], 0.0, std, -3 * std, 3 * std, generator=torch.Generator().manual_seed(0))
        return out

    model._init_pair_state = seeded_init
    dropout_calls = seeded_port_dropout(monkeypatch)
    try:
        atom_keys = ("ref_pos", "ref_charge", "atom_attention_mask", "ref_element", "ref_atom_name_chars", "ref_space_uid", "atom_to_token")
        with torch.no_grad():
            ref = model(atom_inputs=EsmFold2AtomInputs(**{k: f[k] for k in atom_keys}),
                        **{k: v for k, v in f.items() if k not in atom_keys and k != "distogram_atom_idx"})
    finally:
        del model._init_pair_state
    assert dropout_calls == [0.25] * 3  # the port applied its LM dropout in each of the 3 loops
    pair = ref.pair_states[0].numpy()
    got = adapter.forward([PROTEIN], ["parcae", "distogram"])[0].tokens
    np.testing.assert_allclose(got["parcae"], pair.mean(axis=1), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["distogram"], (pair + pair.transpose(1, 0, 2)).mean(axis=1), atol=1e-5, rtol=1e-5)


def test_full_run_matches_the_port_fold(adapter, monkeypatch):
    """End to end against EsmFold2Model.fold as released: with the same LM dropout masks and initial
    pair state, and the diffusion draws replaced by the same fixed pattern (the port draws from the
    global generator, the extractor from per-sample generators), the sampled coordinates, pLDDT and
    pTM agree, and confidence.pair.<last> is the pair tensor the confidence heads read."""
    from esmfold2_model.featurize import featurize_sequence

    model = adapter.model
    real_randn, real_trunc = torch.randn, torch.nn.init.trunc_normal_

    def pattern(*size, generator=None, device=None, dtype=None, **_):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        n = int(np.prod(shape)) if shape else 1
        return torch.sin(0.37 * torch.arange(n, dtype=torch.float32) + 1.0).reshape(shape).to(device=device or "cpu")

    monkeypatch.setattr(torch, "randn", pattern)
    monkeypatch.setattr(torch, "randn_like", lambda t, **k: pattern(tuple(t.shape), device=t.device))

    def seeded_init(reference):  # the extractor's initial pair state for one protein, seed 0
        c = reference.shape[-1]
        std = (2.0 / (5.0 * c)) ** 0.5
        out = torch.empty(reference.shape)
        real_trunc(out[0], 0.0, std, -3 * std, 3 * std, generator=torch.Generator().manual_seed(0))
        return out

    sample = featurize_sequence(PROTEIN.payload)
    f = {k: v[None] for k, v in sample.features.items()}
    model._init_pair_state = seeded_init
    dropout_calls = seeded_port_dropout(monkeypatch)
    head_input = []  # what the PAE head reads: the confidence pair tensor after the stack
    handle = model.confidence_head.pae_layernorm.register_forward_pre_hook(lambda m, a: head_input.append(a[0].float()))
    try:
        with torch.no_grad():
            ref = model.fold(**f, num_diffusion_samples=1)
    finally:
        del model._init_pair_state
        handle.remove()
    assert dropout_calls == [0.25] * 3
    last = f"confidence.pair.{model.config.confidence_head.num_hidden_layers - 1}"
    (tokens, outputs, structure), = adapter.extractor.run([sample], ["confidence.single", last])
    monkeypatch.setattr(torch, "randn", real_randn)
    np.testing.assert_allclose(tokens[last], head_input[0][0].mean(1).numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(structure["coords"][0], ref.sample_atom_coords[0, : sample.num_atoms].numpy(), atol=1e-3, rtol=1e-4)
    assert outputs["ptm"] == pytest.approx(float(ref.ptm[0]), abs=1e-5)
    assert outputs["plddt"] == pytest.approx(float(ref.plddt[0].mean()), abs=1e-5)


def _count_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls, handle


def test_runs_only_the_stages_requested(adapter):
    model = adapter.model
    counters = {name: _count_calls(getattr(model, name)) for name in
                ("esmc", "input_embedder", "folding_trunk", "parcae", "structure_head", "confidence_head")}
    counters["lm_encoder"] = _count_calls(model.lm_encoder.layers[0])
    try:
        def run(layers):
            for calls, _ in counters.values():
                calls.clear()
            adapter.forward([PROTEIN], layers)
            return {k: len(c) for k, (c, _) in counters.items()}

        lm_only = run(["esmc.0", "esmc.2"])
        assert lm_only["esmc"] == 1 and lm_only["input_embedder"] == 0 and lm_only["folding_trunk"] == 0
        early = run(["lm_encoder.1"])  # stops inside the first trunk loop
        assert early["lm_encoder"] == 1 and early["folding_trunk"] == 0
        trunk = run(["folding_trunk.1", "parcae"])
        assert trunk["folding_trunk"] == 3 and trunk["lm_encoder"] == 3  # 3 loops, fresh LM dropout in each
        assert trunk["structure_head"] == 0 and trunk["confidence_head"] == 0
        steps = adapter.extractor.layout.diffusion_steps
        assert steps > 2
        diffusion = run(["diffusion.token_transformer.0"])  # the final step: the whole sampler, no confidence
        assert diffusion["structure_head"] == steps and diffusion["confidence_head"] == 0
        full = run(["confidence.single"])
        assert full["structure_head"] == steps and full["confidence_head"] == 1
    finally:
        for _, handle in counters.values():
            handle.remove()


def test_without_lm_dropout_the_lm_encoder_runs_once(ckpt):
    off = get_adapter("esmfold2", weights=str(ckpt), lm_dropout="off")
    off.ensure_loaded()
    calls, handle = _count_calls(off.model.lm_encoder.layers[0])
    try:
        feats = off.forward([SHORT], ["folding_trunk.1"])[0]
    finally:
        handle.remove()
    assert len(calls) == 1 and feats.tokens["folding_trunk.1"].shape == (6, PAIR_WIDTH)


def test_sampler_stops_after_the_last_step_asked_for(ckpt):
    a = get_adapter("esmfold2", weights=str(ckpt), sampling_steps_to_keep="1")
    a.ensure_loaded()
    calls, handle = _count_calls(a.model.structure_head)
    try:
        feats = a.forward([SHORT], ["diffusion.step1.single"])[0]
        assert len(calls) == 2 and feats.tokens["diffusion.step1.single"].shape == (6, DIFFUSION_WIDTH)
    finally:
        handle.remove()


def test_loop_and_step_selection_agree_with_defaults(ckpt, adapter):
    default = adapter.forward([SHORT], adapter.layer_names())[0].tokens
    every = get_adapter("esmfold2", weights=str(ckpt), loops="all", sampling_steps_to_keep="all",
                        raw_pair_layers="folding_trunk.loop2.1", pair_reduction="rowcol")
    names = every.layer_names()
    loops = sorted({n.split(".")[1] for n in names if n.startswith("folding_trunk.loop")})
    assert loops == ["loop0", "loop1", "loop2"]
    steps = sorted({int(n.split(".")[1][4:]) for n in names if n.startswith("diffusion.step")})
    assert steps == list(range(len(steps))) and len(steps) > 1
    feats = every.forward([SHORT], names)[0].tokens
    last = steps[-1]
    np.testing.assert_allclose(feats["folding_trunk.loop2.1"][:, :PAIR_WIDTH], default["folding_trunk.1"], atol=1e-6)
    np.testing.assert_allclose(feats[f"diffusion.step{last}.token_transformer.1"], default["diffusion.token_transformer.1"], atol=1e-6)
    assert not np.allclose(feats["folding_trunk.loop0.1"], feats["folding_trunk.loop2.1"])
    raw = feats["folding_trunk.loop2.1.raw"].reshape(6, 6, PAIR_WIDTH)  # row i*L + j is the pair (i, j)
    np.testing.assert_allclose(feats["folding_trunk.loop2.1"], np.concatenate([raw.mean(1), raw.mean(0)], -1), atol=1e-5)


def test_memory_guard_refuses_up_front(ckpt):
    a = get_adapter("esmfold2", weights=str(ckpt), max_memory_gb="0.00001")
    with pytest.raises(InvalidInput, match=r"p1: 19 residues need an estimated .* GB .*above the 0.0 GB limit.*max_memory_gb") as err:
        a.validate(PROTEIN)
    assert err.value.sample_id == "p1" and "\n" not in str(err.value)
    with pytest.raises(InvalidInput):
        a.forward([PROTEIN], ["parcae"])
    assert a.model is None  # refused before any model was loaded
    # the estimate grows with L^2 and with the batch
    free = get_adapter("esmfold2", weights=str(ckpt))
    assert free.estimate_gb([200]) == pytest.approx(4 * free.estimate_gb([100]), rel=1e-6)
    assert free.estimate_gb([19, 6]) == pytest.approx(2 * free.estimate_gb([19]), rel=1e-6)  # padded to 19


def test_batch_over_the_limit_runs_in_parts(ckpt, adapter):
    one = adapter.estimate_gb([PROTEIN.size])
    tight = get_adapter("esmfold2", weights=str(ckpt), max_memory_gb=str(1.5 * one))  # one fits, two do not
    tight.ensure_loaded()
    calls, handle = _count_calls(tight.model.esmc)
    try:
        got = tight.forward([PROTEIN, SHORT], ["esmc.1", "parcae"])
    finally:
        handle.remove()
    assert len(calls) == 2
    ref = adapter.forward([PROTEIN, SHORT], ["esmc.1", "parcae"])
    for g, r in zip(got, ref):
        for n in ("esmc.1", "parcae"):
            np.testing.assert_allclose(g.tokens[n], r.tokens[n], atol=1e-5)


def test_offline_missing_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for name, repo in [("esmfold2", "biohub/ESMFold2"), ("esmfold2-fast", "biohub/ESMFold2-Fast"), ("esmc-6b", "biohub/ESMC-6B")]:
        a = get_adapter(name)
        with pytest.raises(ModelUnavailable, match=f"fetch it with: hf download {repo}$") as err:
            a.ensure_loaded()
        assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelUnavailable, match="no such directory"):
        get_adapter("esmfold2", weights=str(tmp_path / "nowhere")).layer_names()


def test_complex_features_per_chain_and_iptm(adapter, tmp_path):
    a, b = COMPLEX.chains
    feats = adapter.forward([COMPLEX], adapter.layer_names())[0]
    for name, x in feats.tokens.items():
        assert x.shape[0] == len(a) + len(b), name
    assert 0.0 <= feats.outputs["iptm"] <= 1.0
    # Chain-aware ESMC: each chain's rows equal that chain run alone (attention stays in the chain,
    # rotary positions are relative).
    alone = adapter.forward([sequence_record("a", a), sequence_record("b", b)], ["esmc.2"])
    np.testing.assert_allclose(feats.tokens["esmc.2"][: len(a)], alone[0].tokens["esmc.2"], atol=1e-5)
    np.testing.assert_allclose(feats.tokens["esmc.2"][len(a):], alone[1].tokens["esmc.2"], atol=1e-5)


def test_structure_files_written(ckpt, tmp_path):
    out = tmp_path / "structures"
    a = get_adapter("esmfold2", weights=str(ckpt), structures_dir=str(out), diffusion_samples="2")
    feats = a.forward([COMPLEX], ["parcae"])[0]
    assert {"plddt", "ptm", "iptm", "ptm_best"} <= set(feats.outputs)
    lines = (out / "c1.pdb").read_text().splitlines()
    atoms = [ln for ln in lines if ln.startswith("ATOM")]
    from esmfold2_model.featurize import featurize_sequence

    assert len(atoms) == featurize_sequence(COMPLEX.payload).num_atoms
    assert {ln[21] for ln in atoms} == {"A", "B"}
    xyz = np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in atoms])
    assert np.isfinite(xyz).all() and xyz.std() > 0
    # mmCIF of the same (deterministic) prediction: same atoms, coordinates and pLDDT
    b = get_adapter("esmfold2", weights=str(ckpt), structures_dir=str(out), diffusion_samples="2", structure_format="mmcif")
    b.forward([COMPLEX], ["parcae"])
    cif = (out / "c1.cif").read_text().splitlines()
    fields = [ln.split(".", 1)[1] for ln in cif if ln.startswith("_atom_site.")]
    rows = [dict(zip(fields, ln.split())) for ln in cif if ln.startswith("ATOM ")]
    assert len(rows) == len(atoms)
    for row, ln in zip(rows, atoms):
        assert row["label_atom_id"] == ln[12:16].strip() and row["label_comp_id"] == ln[17:20]
        assert row["auth_asym_id"] == ln[21] and int(row["auth_seq_id"]) == int(ln[22:26])
        assert float(row["B_iso_or_equiv"]) == pytest.approx(float(ln[60:66]), abs=0.006)
    cif_xyz = np.array([[float(r["Cartn_x"]), float(r["Cartn_y"]), float(r["Cartn_z"])] for r in rows])
    np.testing.assert_allclose(cif_xyz, xyz, atol=1.5e-3)


def test_fast_variant_has_no_msa_stage(tmp_path):
    path = save_tiny(tmp_path / "fast", msa=False, seed=1)
    a = get_adapter("esmfold2-fast", weights=str(path))
    names = a.layer_names()
    assert not any(n.startswith("msa_encoder") for n in names)
    feats = a.forward([SHORT], ["lm_encoder.0", "confidence.single"])[0]
    assert feats.tokens["confidence.single"].shape == (6, TRUNK_WIDTH)


def test_esmc_adapter_alone_matches_esmfold2_backbone(ckpt, adapter):
    records = [PROTEIN, COMPLEX, SHORT]
    for name in ("esmc-300m", "esmc-600m", "esmc-6b"):
        lm = get_adapter(name, weights=str(ckpt / "esmc"))
        assert lm.layer_names() == ["esmc.0", "esmc.1", "esmc.2"]
    lm = get_adapter("esmc-300m", weights=str(ckpt / "esmc"))
    got = lm.forward(records, ["esmc.0", "esmc.2"])
    ref = adapter.forward(records, ["esmc.0", "esmc.2"])
    for g, r, rec in zip(got, ref, records):
        for n in ("esmc.0", "esmc.2"):
            assert g.tokens[n].shape == (rec.size, ESMC_WIDTH)
            np.testing.assert_allclose(g.tokens[n], r.tokens[n], atol=1e-5, err_msg=f"{rec.id} {n}")
    with pytest.raises(RepalignError, match="unknown esmc-300m layer"):
        lm.forward([SHORT], ["parcae"])
    with pytest.raises(RepalignError, match="unknown option"):
        get_adapter("esmc-300m", weights=str(ckpt / "esmc"), loops="all")


def test_bad_inputs_are_one_line_errors(adapter):
    with pytest.raises(InvalidInput, match="residue 'J'"):
        adapter.validate(sequence_record("bad", "MKJ"))
    with pytest.raises(RepalignError, match="unknown ESMFold2 layer 'trunk.0'"):
        adapter.forward([SHORT], ["trunk.0"])
    with pytest.raises(RepalignError, match="raw_pair_layers"):
        adapter.forward([SHORT], ["parcae.raw"])
    with pytest.raises(RepalignError, match="only on a GPU"):
        get_adapter("esmfold2", dtype="bfloat16")


def _cli_error(capsys, argv):
    from repalign.cli import main

    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("repalign: error: ") and "Traceback" not in err
    return err


def test_bad_inputs_fail_in_one_line_before_any_model_work(ckpt, tmp_path, capsys, monkeypatch):
    import shutil

    from esmfold2_model.adapters import EsmFold2Adapter

    def no_loading(self):
        raise AssertionError("model loaded")

    monkeypatch.setattr(EsmFold2Adapter, "load", no_loading)
    out = tmp_path / "c.h5"

    def run(fasta_text, *extra, weights=ckpt, model="esmfold2"):
        fasta = tmp_path / "in.fasta"
        fasta.write_text(fasta_text)
        return _cli_error(capsys, ["extract", str(fasta), "-m", model, "-o", str(out), "--weights", str(weights),
                                   "--layers", "parcae", *extra])

    good = ">ok\nMKTAYIAK\n"
    assert "residue 'J' at position 3" in run(good + ">bad\nMKJLV\n") and "bad:" in run(good + ">bad\nMKJLV\n")
    err = run(good + ">cplx\nMKV::GGA\n")  # the FASTA reader refuses it, naming file and sample
    assert "in.fasta: sequence 'cplx'" in err and "empty chain" in err
    with pytest.raises(InvalidInput, match="^cplx: chain 2 is empty"):  # the adapter too, for Python callers
        get_adapter("esmfold2", weights=str(ckpt)).validate(sequence_record("cplx", "MKV::GGA"))
    assert "long: 19 residues need an estimated" in run(">long\n" + PROTEIN.payload + "\n", "--option", "max_memory_gb=0.00001")
    # weights of another architecture: the bundled ESMC backbone given to esmfold2, ESMFold2 given to nothing
    assert "a 'esmc' checkpoint, not ESMFold2" in run(good, weights=ckpt / "esmc")
    # a truncated download
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken, ignore=shutil.ignore_patterns("esmc"))
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    err = run(good, weights=broken)
    assert f"{weights}: truncated or damaged safetensors file" in err and "download it again" in err
    with open(weights, "wb") as f:
        f.write(b"\xff" * 16)
    assert "not a readable safetensors file" in run(good, weights=broken)
    assert not out.exists()  # nothing was written


def test_esmc_refuses_other_architectures_and_truncated_weights(ckpt, tmp_path, tiny_esm2):
    import shutil

    with pytest.raises(RepalignError, match="not an ESMC checkpoint"):
        get_adapter("esmc-300m", weights=str(tiny_esm2)).layer_names()
    broken = tmp_path / "esmc"
    shutil.copytree(ckpt / "esmc", broken)
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 10)
    a = get_adapter("esmc-300m", weights=str(broken))
    with pytest.raises(ModelUnavailable, match="truncated or damaged safetensors"):
        a.layer_names()
    assert a.model is None


def test_dry_run_plan_from_the_config_alone(ckpt, tmp_path, capsys, monkeypatch):
    from embeddings_cache import Cache
    from esmfold2_model.adapters import EsmcAdapter, EsmFold2Adapter
    from repalign.extract import extract
    from repalign.extract_batches import format_plan, plan_extraction

    recs = [PROTEIN, COMPLEX, SHORT, sequence_record("p4", "MKTAYIAKQRQ")]
    layers = ["esmc.1", "lm_encoder.0", "parcae", "parcae.raw", "diffusion.single", "confidence.single"]
    opts = dict(raw_pair_layers="parcae", pair_reduction="rowcol")
    cache = tmp_path / "c.h5"
    (run,) = extract(recs[:1], ["esmfold2"], cache, layers=layers, tokens=["parcae.raw", "esmc.1"], weights=str(ckpt),
                     options=opts, quiet=True)

    def no_loading(self):
        raise AssertionError("model loaded")

    monkeypatch.setattr(EsmFold2Adapter, "load", no_loading)
    monkeypatch.setattr(EsmcAdapter, "load", no_loading)
    (plan,) = plan_extraction(recs, ["esmfold2"], cache, layers=layers, tokens=["parcae.raw", "esmc.1"],
                              weights=str(ckpt), options=opts, batch_tokens=30, device="cuda")
    assert plan.cached == 1 and sorted(i for b in plan.batches for i in b.ids) == ["c1", "p2", "p4"]
    assert max(plan.batches[0].sizes) == 15  # largest first on CUDA
    probe = get_adapter("esmfold2", weights=str(ckpt), **opts)
    for b in plan.batches:
        assert b.estimate_gb == pytest.approx(probe.estimate_gb(b.sizes))
    # disk: the widths and rows the real extraction stored
    with Cache(cache) as c:
        key = c.models[0]
        pooled = sum(c.read_layer(key, n).shape[1] for n in layers)
        tok = {n: c.read_tokens(key, n, ids=["p1"])[0] for n in ("parcae.raw", "esmc.1")}
    sizes = [r.size for r in recs[1:]]
    assert plan.pooled_bytes == 3 * pooled * 4
    assert tok["parcae.raw"].shape[0] == 19 * 19
    assert plan.token_bytes == 4 * sum(s * s * tok["parcae.raw"].shape[1] + s * tok["esmc.1"].shape[1] for s in sizes)
    n_params = sum(t.numel() for t in stored_tensors(ckpt))  # parameters and persistent buffers
    assert plan.weights_gb == pytest.approx(n_params * 4 / 1e9)
    text = format_plan([plan], cache)
    assert "1 already cached, 3 to extract" in text and "(largest first: CUDA)" in text and "working memory" in text
    (esmc_plan,) = plan_extraction(recs, ["esmc-300m"], tmp_path / "none.h5", weights=str(ckpt / "esmc"))
    assert esmc_plan.cached == 0 and esmc_plan.batches[0].estimate_gb > 0 and esmc_plan.pooled_bytes == 4 * 3 * ESMC_WIDTH * 4


def stored_tensors(ckpt):
    from transformers.models.esmfold2 import EsmFold2Model

    return EsmFold2Model.from_pretrained(str(ckpt)).state_dict().values()


def test_a_cache_is_never_resumed_in_the_other_lm_dropout_mode(ckpt, tmp_path):
    from embeddings_cache import Cache
    from repalign.extract import extract

    cache = tmp_path / "c.h5"
    extract([SHORT], ["esmfold2"], cache, layers=["esmc.1"], weights=str(ckpt), quiet=True)
    with Cache(cache) as c:
        prov = c.provenance("esmfold2")
    assert prov["options"]["model"]["lm_dropout"] == "on" and prov["lm_dropout"]["p_applied"] == 0.25
    with pytest.raises(RepalignError, match="other options.*lm_dropout"):
        extract([PROTEIN], ["esmfold2"], cache, layers=["esmc.1"], weights=str(ckpt), options={"lm_dropout": "off"},
                quiet=True)
