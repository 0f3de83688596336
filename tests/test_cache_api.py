"""The Python cache object: Cache(path)[model][layer], ids, provenance, summary, AnnData and xarray."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from embeddings_cache import Cache, CacheError, CacheWriter


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture()
def cache(tmp_path):
    path = tmp_path / "c.h5"
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(9)]
    x = {"layer.0": rng.normal(size=(9, 4)), "layer.3": rng.normal(size=(9, 6))}
    toks = [rng.normal(size=(n, 6)).astype(np.float32) for n in range(1, 10)]
    prov = {"model": "antiberty", "options": {"pool": "mean"}}
    with CacheWriter(path, "antiberty", prov, ["layer.0", "layer.3"], token_layers=["layer.3"]) as w:
        for sl in (slice(0, 4), slice(4, 9)):
            w.append(ids[sl], [sha(i) for i in ids[sl]], {k: v[sl] for k, v in x.items()},
                     tokens={"layer.3": toks[sl]}, outputs={"plddt": np.arange(9.0)[sl]})
    return path, ids, x, toks


def test_model_object_reads_layers_ids_and_provenance(cache):
    path, ids, x, toks = cache
    with Cache(path) as c:
        assert "antiberty" in c and list(c) == ["antiberty"] and bool(c)
        m = c["antiberty"]
        assert m.ids == ids and m.hashes == [sha(i) for i in ids] and len(m) == 9
        assert m.provenance["model"] == "antiberty" and "created" in m.provenance
        assert list(m) == ["layer.0", "layer.3"] and "layer.3" in m
        np.testing.assert_array_equal(m["layer.3"], x["layer.3"].astype(np.float32))
        np.testing.assert_array_equal(m.layer("layer.0", ids=["s8", "s1"]), x["layer.0"][[8, 1]].astype(np.float32))
        for got, want in zip(m.tokens("layer.3"), toks):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(m.output("plddt"), np.arange(9.0))
        with pytest.raises(CacheError, match="not in cache"):
            c["iglm"]
        with pytest.raises(CacheError, match="no pooled layer"):
            m["layer.9"]


def test_summary_is_a_dataframe(cache):
    path, *_ = cache
    with Cache(path) as c:
        table = c.summary()
        mine = c["antiberty"].summary()
    assert list(table["kind"]) == ["pooled", "pooled", "tokens", "output"]
    assert list(table["dim"].astype(object).where(table["dim"].notna(), None)) == [4, 6, 6, None]
    assert list(table["rows"]) == [9, 9, 45, 9]
    assert mine.equals(table)


def test_to_anndata(cache):
    pytest.importorskip("anndata")
    path, ids, x, _ = cache
    with Cache(path) as c:
        a = c["antiberty"].to_anndata()
        only = c["antiberty"].to_anndata(layers=["layer.3"])
    assert list(a.obs_names) == ids and a.n_vars == 0
    assert list(a.obs["content_hash"]) == [sha(i) for i in ids]
    np.testing.assert_array_equal(a.obs["plddt"], np.arange(9.0))
    np.testing.assert_array_equal(a.obsm["layer.0"], x["layer.0"].astype(np.float32))
    assert json.loads(a.uns["provenance"])["model"] == "antiberty" and list(a.uns["layers"]) == ["layer.0", "layer.3"]
    assert list(only.obsm.keys()) == ["layer.3"]


def test_to_xarray(cache):
    pytest.importorskip("xarray")
    path, ids, x, _ = cache
    with Cache(path) as c:
        ds = c["antiberty"].to_xarray()
    assert list(ds["sample"].values) == ids
    assert ds["layer.3"].dims == ("sample", "layer.3.dim") and ds["layer.3"].shape == (9, 6)
    np.testing.assert_array_equal(ds["layer.0"].sel(sample="s4").values, x["layer.0"][4].astype(np.float32))
    np.testing.assert_array_equal(ds["plddt"].values, np.arange(9.0))
    assert list(ds["content_hash"].values) == [sha(i) for i in ids]
    assert json.loads(ds.attrs["layers"]) == ["layer.0", "layer.3"]


def test_a_closed_cache_leaves_no_open_file_behind(cache):
    """Closing a Cache (or a writer) closes the file object HDF5 read through: no ResourceWarning."""
    import gc
    import warnings

    path, ids, x, _ = cache
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Cache(path) as c:
            c.read_layer("antiberty", "layer.0")
        with CacheWriter(path, "second", {"options": {}}, ["l"]) as w:
            w.append(ids[:2], [sha(i) for i in ids[:2]], {"l": x["layer.0"][:2]})
        del c, w
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
