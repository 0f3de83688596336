"""Pooling (mean, max, last, cls) in extraction and from stored tokens (repool); model-scoped options."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import run_main

from embeddings_cache import Cache
from repalign.errors import RepalignError
from repalign.inputs import sequence_record
from repalign.pooling import pool_rows, repool

SEQS = ["MKTAYIAKQR", "GAVLIPFW", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "ACDE", "WWYYHHKK", "MLKKRRPPAAGGVV"]


def test_pool_rows_against_numpy():
    rows = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    np.testing.assert_allclose(pool_rows(rows, "mean"), rows.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_array_equal(pool_rows(rows, "max"), rows.max(0))
    np.testing.assert_array_equal(pool_rows(rows, "last"), rows[6])
    with pytest.raises(RepalignError, match="CLS vector"):
        pool_rows(rows, "cls")
    with pytest.raises(RepalignError, match="no token rows"):
        pool_rows(np.zeros((0, 3)), "max")


def test_extract_max_and_last_pool_the_stored_token_rows_and_repool_matches(tiny_esm2, tmp_path):
    from repalign.extract import extract

    records = [sequence_record(f"p{i}", s) for i, s in enumerate(SEQS)]
    model = f"hf:{tiny_esm2}"
    cache = tmp_path / "c.h5"
    extract(records, [model], cache, layers=["all"], pool="mean", tokens=["all"], quiet=True)
    extract(records, [model], tmp_path / "max.h5", layers=["all"], pool="max", quiet=True)
    extract(records, [model], tmp_path / "last.h5", layers=["all"], pool="last", quiet=True)
    run = repool(cache, "hf:tiny", "max")
    assert run.model == "hf:tiny.max" and run.stored == len(SEQS)
    repool(cache, "hf:tiny", "last", name="by_last")
    ids = [r.id for r in records]
    with Cache(cache) as c, Cache(tmp_path / "max.h5") as cmax, Cache(tmp_path / "last.h5") as clast:
        assert c.provenance("hf:tiny.max")["options"]["pool"] == "max"
        assert c.hashes("hf:tiny.max") == c.hashes("hf:tiny") and c.ids("hf:tiny.max") == c.ids("hf:tiny")
        for layer in c.token_layers("hf:tiny"):
            rows = c["hf:tiny"].tokens(layer, ids=ids)
            assert [len(r) for r in rows] == [len(s) for s in SEQS]  # BOS/EOS and padding excluded
            want_max = np.stack([r.max(0) for r in rows])
            want_last = np.stack([r[-1] for r in rows])
            np.testing.assert_array_equal(c["hf:tiny.max"].layer(layer, ids=ids), want_max)
            np.testing.assert_array_equal(c["by_last"].layer(layer, ids=ids), want_last)
            # extraction with --pool max / last gives the same vectors (separate runs: allow float noise)
            np.testing.assert_allclose(cmax["hf:tiny"].layer(layer, ids=ids), want_max, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(clast["hf:tiny"].layer(layer, ids=ids), want_last, rtol=1e-5, atol=1e-6)
    again = repool(cache, "hf:tiny", "max")  # resumable and idempotent
    assert again.stored == 0 and again.skipped_existing == len(SEQS)
    with pytest.raises(RepalignError, match="already in"):  # the name holds another pooling
        repool(cache, "hf:tiny", "max", name="by_last")
    with pytest.raises(RepalignError, match="stores no token-level features"):
        repool(cache, "hf:tiny.max", "mean")
    res = run_main("cache", "repool", cache, "--model", "hf:tiny", "--pool", "mean", "--name", "m2")
    assert res.returncode == 0, res.stderr
    with Cache(cache) as c:
        np.testing.assert_allclose(c["m2"].layer("layer.1", ids=ids), c["hf:tiny"].layer("layer.1", ids=ids), rtol=1e-6)


# ---- options ------------------------------------------------------------------------------------


def test_plain_options_reach_the_models_that_take_them_and_scoped_ones_their_model():
    from repalign.models import check_options, options_for_model

    opts = {"single_chain": "heavy"}
    assert options_for_model("iglm", opts) == {"single_chain": "heavy"}
    assert options_for_model("antiberty", opts) == {}
    check_options(opts, ["antiberty", "iglm"])
    scoped = {"iglm:species": "mouse", "species": "human"}
    assert options_for_model("iglm", scoped) == {"species": "mouse"}
    assert options_for_model("ani-1x", {"ani-1x:member": "3", "species": "x"}) == {"member": "3"}
    assert options_for_model("hf:/some/ckpt", {"hf:/some/ckpt:x": 1}) == {"x": 1}
    with pytest.raises(RepalignError, match="no model of this run takes option 'species'"):
        check_options({"species": "human"}, ["antiberty", "chgnet-0.3.0"])
    with pytest.raises(RepalignError, match="model 'iglm' is not in this run"):
        check_options({"iglm:species": "human"}, ["antiberty"])


def test_antiberty_and_iglm_in_one_run_with_a_plain_or_a_scoped_option():
    """The run that used to fail with "model antiberty: unknown option(s) single_chain"."""
    from repalign.extract_options import ExtractOptions, plan_model
    from repalign.models import check_options

    pytest.importorskip("iglm")
    records = [sequence_record("h1", "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVS")]
    for opts in ({"single_chain": "heavy"}, {"iglm:single_chain": "heavy"}):
        check_options(opts, ["antiberty", "iglm"])
        plans = {m: plan_model(m, records, ExtractOptions(options=opts)) for m in ("antiberty", "iglm")}
        assert plans["iglm"].adapter.options == {"single_chain": "heavy"}
        assert plans["antiberty"].adapter.options == {}
    with pytest.raises(RepalignError, match="unknown option"):
        plan_model("antiberty", records, ExtractOptions(options={"antiberty:single_chain": "x"}))


def test_cli_unknown_plain_option_is_one_line(tmp_path):
    fasta = tmp_path / "x.fasta"
    fasta.write_text(">a\nMKT\n")
    res = run_main("extract", fasta, "--model", "antiberty", "--option", "nope=1", "-o", tmp_path / "c.h5")
    assert res.returncode == 1 and "no model of this run takes option 'nope'" in res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "c.h5").exists()


def test_get_adapter_resolves_scoped_options_for_any_caller():
    from repalign.models import get_adapter

    pytest.importorskip("iglm")
    a = get_adapter("iglm", **{"iglm:species": "mouse", "antiberty:x": 1, "iglm:single_chain": "heavy"})
    assert a.options == {"species": "mouse", "single_chain": "heavy"}
    with pytest.raises(RepalignError, match="unknown option"):  # plain options still checked by the adapter
        get_adapter("antiberty", single_chain="heavy")


def test_a_plain_option_of_ani_reaches_ani_and_not_a_baseline_in_the_same_run():
    """The run that used to fail with "model elements: unknown option(s) member": baselines declare OPTIONS."""
    from repalign.datasets.structures import molecule_records
    from repalign.extract_options import ExtractOptions, plan_model
    from repalign.models import check_options, options_for_model

    opts = {"member": "0"}
    check_options(opts, ["ani-1x", "elements"])
    assert options_for_model("elements", opts) == {}
    assert options_for_model("ani-1x", opts) == {"member": "0"}
    pytest.importorskip("torchani")
    records = [r for r in molecule_records(None) if r.id in ("H2O", "CH3CH2OH")]
    plans = {m: plan_model(m, records, ExtractOptions(options=opts)) for m in ("ani-1x", "elements")}
    assert plans["elements"].adapter.options == {}
    assert plans["ani-1x"].adapter.options["member"] in ("0", 0)
