"""Pure functions of esmfold2_model: pair reductions, layer-name parsing, option parsing, featurisation."""

import numpy as np
import pytest
import torch

from esmfold2_model import stages
from esmfold2_model.extractor import ExtractionOptions
from esmfold2_model.featurize import check_sequence, collate, esmc_token_ids, featurize_sequence
from repalign.errors import InvalidInput, RepalignError


def _masked_means(pair, mask):
    """Reference: plain loops over the real partners."""
    b, n, _, c = pair.shape
    row = np.zeros((b, n, c))
    col = np.zeros((b, n, c))
    for k in range(b):
        real = [j for j in range(n) if mask[k, j]]
        for i in range(n):
            row[k, i] = np.mean([pair[k, i, j] for j in real], axis=0)
            col[k, i] = np.mean([pair[k, j, i] for j in real], axis=0)
    return row, col


def test_reduce_pair_matches_masked_loops():
    rng = np.random.default_rng(0)
    pair = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)
    pair[1, :, 3:] = 1e6  # padding must not leak into real rows
    row, col = _masked_means(pair, mask)
    got_row = stages.reduce_pair(torch.from_numpy(pair), torch.from_numpy(mask), "row").numpy()
    got_rc = stages.reduce_pair(torch.from_numpy(pair), torch.from_numpy(mask), "rowcol").numpy()
    np.testing.assert_allclose(got_row[0], row[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_row[1, :3], row[1, :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_rc[1, :3, :3], row[1, :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_rc[0, :, 3:], col[0], rtol=1e-5, atol=1e-5)


def test_reduce_pair_rejects_bad_shapes():
    with pytest.raises(ValueError, match="pair"):
        stages.reduce_pair(torch.zeros(1, 3, 4, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="reduction"):
        stages.reduce_pair(torch.zeros(1, 3, 3, 2), torch.ones(1, 3), "max")


def test_layer_names_round_trip_through_the_parser():
    layout = stages.StageLayout(esmc_layers=3, msa_layers=2, lm_encoder_layers=2, trunk_layers=3, trunk_loops=4,
                                kept_loops=(0, 3), diffusion_layers=2, diffusion_steps=5, kept_steps=(1, 4),
                                confidence_layers=2, raw_pair_layers=("parcae", "folding_trunk.loop3.2"))
    names = stages.layer_names(layout)
    assert len(names) == len(set(names))
    assert names[0] == "esmc.0" and names[-1] == "confidence.single"
    assert names.index("parcae.raw") == names.index("parcae") + 1
    assert "folding_trunk.loop0.2" in names and "diffusion.step4.token_transformer.1" in names
    stage_order = []
    for n in names:
        ref = stages.parse_layer(n)
        assert ref is not None and ref.name == n and n.startswith(ref.stage)
        if not stage_order or stage_order[-1] != ref.stage:
            stage_order.append(ref.stage)
    assert stage_order == ["esmc", "input_embedder", "language_model", "msa_encoder", "lm_encoder", "folding_trunk",
                           "parcae", "distogram", "diffusion", "confidence"]
    assert stages.parse_layer("folding_trunk.loop3.2").loop == 3
    assert stages.parse_layer("diffusion.step1.single").step == 1
    assert stages.parse_layer("esmc.0.raw") is None  # single representations have no raw pair
    assert stages.parse_layer("trunk.0") is None


def test_option_parsing_from_cli_strings():
    o = ExtractionOptions.parse({"loops": "0,5,-1", "diffusion_samples": "2", "pair_reduction": "rowcol",
                                 "raw_pair_layers": "parcae, distogram", "max_memory_gb": "1.5", "seed": "3",
                                 "lm_dropout": "OFF"}, "esmfold2")
    assert o.loops == (0, 5, -1) and o.diffusion_samples == 2 and o.pair_reduction == "rowcol"
    assert o.raw_pair_layers == ("parcae", "distogram") and o.max_memory_gb == 1.5 and o.seed == 3
    assert o.lm_dropout == "off" and ExtractionOptions().lm_dropout == "on"
    for bad, match in [({"colour": "red"}, "unknown option"), ({"pair_reduction": "max"}, "pair_reduction"),
                       ({"diffusion_samples": "0"}, "at least 1"), ({"loops": "first"}, "loops"),
                       ({"raw_pair_layers": "esmc.3"}, "not a pair layer"), ({"max_memory_gb": "lots"}, "number"),
                       ({"lm_dropout": "0.1"}, "use on .* or off"), ({"deterministic": "true"}, "options={'lm_dropout': 'off'}")]:
        with pytest.raises(RepalignError, match=match):
            ExtractionOptions.parse(bad, "esmfold2")


def test_sequence_check_names_the_residue():
    assert check_sequence("p", "MKV:GGA") == ["MKV", "GGA"]
    with pytest.raises(InvalidInput, match="'B' at chain 2 position 2"):
        check_sequence("p", "MKV:GBA")
    with pytest.raises(InvalidInput, match="chain 2 is empty"):
        check_sequence("p", "MKV:")


def test_complex_features_and_padding():
    a = featurize_sequence("MKG")
    ab = featurize_sequence("MKG:WA:MKG")
    assert ab.chain_lengths == [3, 2, 3] and ab.num_tokens == 8
    f = ab.features
    assert f["residue_index"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert f["token_index"].tolist() == list(range(8))
    assert f["asym_id"].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert f["entity_id"].tolist() == [1, 1, 1, 2, 2, 1, 1, 1]  # the two MKG copies are one entity
    assert f["sym_id"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    # atoms of the third chain point at its own tokens; the atom axis is padded to a multiple of 32
    atoms = ab.num_atoms
    assert atoms == 2 * a.num_atoms + (14 + 5)  # TRP 14 heavy atoms, ALA 5
    assert f["atom_to_token"][:atoms].max() == 7 and f["atom_attention_mask"].shape[0] % 32 == 0
    assert int(f["atom_attention_mask"].sum()) == atoms
    rep = f["distogram_atom_idx"]
    assert all(int(f["atom_to_token"][rep[t]]) == t for t in range(8))
    batch = collate([a, ab])
    assert batch["attention_mask"].tolist()[0] == [True] * 3 + [False] * 5
    assert batch["token_bonds"].shape == (2, 8, 8, 1) and batch["msa"].shape == (2, 1, 8)


def test_esmc_tokens_skip_special_tokens():
    ids, seq_id, pos = esmc_token_ids(["MK", "G"])
    assert ids[0] == 0 and ids[3] == 2 and ids[4] == 0 and ids[-1] == 2
    assert pos == [1, 2, 5] and seq_id == [0, 0, 0, 0, 1, 1, 1]


def test_reduce_pair_accumulates_bfloat16_in_float32():
    """A bf16 pair tensor (GPU runs) is averaged in float32: the result equals the float64 mean of the
    bf16 values to float32 precision (a bf16 result would be off by ~1e-3 relative: 8 bits of mantissa)."""
    rng = np.random.default_rng(2)
    n = 512
    values = rng.uniform(0, 1, size=(1, 4, n, 2))
    values[..., 0, :] = 1000.0  # one large partner: a bf16 running sum would drop the small ones
    pair = torch.zeros(1, n, n, 2, dtype=torch.bfloat16)
    pair[:, :4] = torch.from_numpy(values).to(torch.bfloat16)
    exact = pair[:, :4].double().mean(2).numpy()
    got = stages.reduce_pair(pair, torch.ones(1, n, dtype=torch.bool), "row")
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got[:, :4].numpy(), exact, rtol=1e-6)
    as_bf16 = torch.from_numpy(exact).to(torch.bfloat16).double().numpy()
    assert np.abs(as_bf16 - exact).max() / exact.max() > 1e-4  # the precision a bf16 result would have
