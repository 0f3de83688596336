"""embeddings_cache: round trips, validation, format checks and align_ids, on real HDF5 files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from embeddings_cache import FORMAT_VERSION, Cache, CacheError, CacheWriter, align_ids

LAYERS = ["z.10", "embeddings", "folding_trunk.47", "diffusion.token_transformer.3", "a.2"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def features(ids: list[str], dim: int, salt: int) -> np.ndarray:
    """Deterministic features of samples: a function of the id, so any row can be checked alone."""
    rows = []
    for i in ids:
        rng = np.random.default_rng(int(sha(f"{i}/{salt}")[:12], 16))
        rows.append(rng.normal(scale=3.0, size=dim))
    return np.array(rows, dtype=np.float64)


def token_rows(id_: str, dim: int) -> np.ndarray:
    length = int(sha(id_)[:4], 16) % 5  # includes empty samples (length 0)
    rng = np.random.default_rng(int(sha(id_ + "tok")[:12], 16))
    return rng.normal(size=(length, dim)).astype(np.float32)


def write_batches(path, model, batches, layers=("l.0", "l.1"), dims=(6, 4), dtype="float32", options=None, **kw):
    prov = {"model": model, "version": "1.0", "options": options or {"pool": "mean"}}
    with CacheWriter(path, model, prov, list(layers), dtype=dtype, **kw) as w:
        for ids in batches:
            w.append(ids, [sha(i) for i in ids], {l: features(ids, d, k) for k, (l, d) in enumerate(zip(layers, dims))})


def ids_range(prefix: str, start: int, stop: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(start, stop)]


# ---- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("compression", ["lzf", "gzip", None])
def test_round_trip_pooled_in_any_order(tmp_path, dtype, compression):
    path = tmp_path / "c.h5"
    batches = [ids_range("s", 0, 7), ids_range("s", 7, 9), ids_range("s", 9, 20)]
    write_batches(path, "m", batches, dtype=dtype, compression=compression)
    with h5py.File(path, "r") as f:
        assert f["models/m/pooled/l.0"].compression == compression
        assert f["models/m/pooled/l.0"].dtype == np.dtype(dtype)
    all_ids = sum(batches, [])
    with Cache(path) as c:
        assert c.models == ["m"]
        assert c.ids("m") == all_ids
        assert c.hashes("m") == [sha(i) for i in all_ids]
        assert c.n_samples("m") == 20
        for k, (layer, dim) in enumerate([("l.0", 6), ("l.1", 4)]):
            expected = features(all_ids, dim, k).astype(dtype).astype(np.float32)
            got = c.read_layer("m", layer)
            assert got.dtype == np.float32 and got.shape == (20, dim)
            np.testing.assert_array_equal(got, expected)
            order = list(np.random.default_rng(1).permutation(all_ids)[:13]) + ["s3", "s3"]
            np.testing.assert_array_equal(
                c.read_layer("m", layer, ids=order), features(order, dim, k).astype(dtype).astype(np.float32)
            )
            wide = c.read_layer("m", layer, ids=order, dtype=np.float64)
            assert wide.dtype == np.float64
            np.testing.assert_array_equal(wide, features(order, dim, k).astype(dtype).astype(np.float64))
        assert c.storage_dtype("m") == dtype


def test_inputs_of_other_dtypes_are_stored_in_the_writer_dtype(tmp_path):
    path = tmp_path / "c.h5"
    ids = ["a", "b", "c"]
    ints = np.arange(12, dtype=np.int64).reshape(3, 4)
    f64 = np.array([[1 / 3, 2 / 3], [1e-8, -7.25], [1e30, 0.0]])
    with CacheWriter(path, "m", {"options": {}}, ["ints", "f64"]) as w:
        w.append(ids, [sha(i) for i in ids], {"ints": ints, "f64": f64})
    with Cache(path) as c:
        np.testing.assert_array_equal(c.read_layer("m", "ints"), ints.astype(np.float32))
        np.testing.assert_array_equal(c.read_layer("m", "f64"), f64.astype(np.float32))
    with h5py.File(path, "r") as f:
        assert f["models/m/pooled/f64"].dtype == np.float32


def test_ragged_tokens_and_outputs_round_trip(tmp_path):
    path = tmp_path / "c.h5"
    batches = [ids_range("p", 0, 5), ids_range("p", 5, 6), ids_range("p", 6, 15)]
    with CacheWriter(path, "fold", {"options": {}}, ["trunk.1"], token_layers=["trunk.1", "s.0"], dtype="float16") as w:
        for ids in batches:
            toks = [token_rows(i, 3) for i in ids]
            w.append(
                ids,
                [sha(i) for i in ids],
                {"trunk.1": features(ids, 3, 0)},
                tokens={"trunk.1": toks, "s.0": [2 * t for t in toks]},
                outputs={"plddt": [len(i) * 1.5 for i in ids], "energy": [np.nan if i == "p3" else -1.0 for i in ids]},
            )
        mid = Cache(path)  # before close: batches still in journal parts
    all_ids = sum(batches, [])
    for c in (mid, Cache(path)):
        with c:
            assert c.token_layers("fold") == ["trunk.1", "s.0"]
            assert c.outputs("fold") == ["energy", "plddt"]
            order = ["p14", "p0", "p7", "p7", "p5"] + [i for i in all_ids if i not in ("p14", "p0", "p7", "p5")]
            for ids in (None, order, ["p5"], []):
                want_ids = all_ids if ids is None else ids
                data, offsets = c.read_tokens("fold", "trunk.1", ids=ids)
                assert offsets.shape == (len(want_ids) + 1,) and offsets[0] == 0
                for k, i in enumerate(want_ids):
                    ref = token_rows(i, 3).astype(np.float16).astype(np.float32)
                    np.testing.assert_array_equal(data[offsets[k] : offsets[k + 1]], ref)
                assert data.shape[0] == offsets[-1]
            data2, offsets2 = c.read_tokens("fold", "s.0", ids=order)
            data1, offsets1 = c.read_tokens("fold", "trunk.1", ids=order)
            np.testing.assert_array_equal(offsets1, offsets2)
            np.testing.assert_allclose(data2, 2 * data1, rtol=1e-3)
            energy = c.read_output("fold", "energy", ids=["p3", "p4"])
            assert np.isnan(energy[0]) and energy[1] == -1.0
            np.testing.assert_array_equal(c.read_output("fold", "plddt"), [len(i) * 1.5 for i in all_ids])


def test_token_only_model(tmp_path):
    path = tmp_path / "c.h5"
    ids = ["x", "y"]
    with CacheWriter(path, "atoms", {"options": {}}, [], token_layers=["conv.2"]) as w:
        w.append(ids, [sha(i) for i in ids], {}, tokens={"conv.2": [np.ones((3, 2)), np.zeros((1, 2))]})
    with Cache(path) as c:
        assert c.layers("atoms") == [] and c.n_samples("atoms") == 2
        data, offsets = c.read_tokens("atoms", "conv.2", ids=["y", "x"])
        np.testing.assert_array_equal(offsets, [0, 1, 4])
        np.testing.assert_array_equal(data, np.r_[np.zeros((1, 2)), np.ones((3, 2))])


def test_layer_order_is_the_writer_order_and_dots_are_kept(tmp_path):
    path = tmp_path / "c.h5"
    ids = ["a", "b"]
    with CacheWriter(path, "m", {"options": {}}, LAYERS) as w:
        w.append(ids, [sha(i) for i in ids], {l: np.full((2, 3), k) for k, l in enumerate(LAYERS)})
    with Cache(path) as c:
        assert c.layers("m") == LAYERS
        for k, layer in enumerate(LAYERS):
            np.testing.assert_array_equal(c.read_layer("m", layer), np.full((2, 3), k, dtype=np.float32))
        assert [r["name"] for r in c.records() if r["kind"] == "pooled"] == LAYERS


def test_iter_row_blocks_equals_read_layer_across_main_and_parts(tmp_path):
    path = tmp_path / "c.h5"
    write_batches(path, "m", [ids_range("s", 0, 11)])
    with CacheWriter(path, "m", {"options": {"pool": "mean"}}, ["l.0", "l.1"]) as w:
        for start in (11, 14, 15):
            ids = ids_range("s", start, start + (3 if start != 14 else 1))
            w.append(ids, [sha(i) for i in ids], {"l.0": features(ids, 6, 0), "l.1": features(ids, 4, 1)})
        with Cache(path) as c:  # main file (11 rows) + 3 parts
            assert c.n_pending_parts == 3
            blocks = list(c.iter_row_blocks("m", "l.0", block_rows=4))
            assert all(len(b) <= 4 for b in blocks)
            full = c.read_layer("m", "l.0")
            np.testing.assert_array_equal(np.concatenate(blocks), full)
            np.testing.assert_array_equal(full, features(ids_range("s", 0, 18), 6, 0).astype(np.float32))


def test_several_models_in_one_cache_are_independent(tmp_path):
    path = tmp_path / "c.h5"
    write_batches(path, "a", [ids_range("s", 0, 5)])
    write_batches(path, "b", [ids_range("s", 2, 9)], layers=("x",), dims=(2,))
    write_batches(path, "a", [ids_range("s", 5, 7)])  # resume a
    with Cache(path) as c:
        assert c.models == ["a", "b"]
        assert c.ids("a") == ids_range("s", 0, 7) and c.ids("b") == ids_range("s", 2, 9)
        np.testing.assert_array_equal(c.read_layer("b", "x"), features(ids_range("s", 2, 9), 2, 0).astype(np.float32))
        np.testing.assert_array_equal(
            c.read_layer("a", "l.1"), features(ids_range("s", 0, 7), 4, 1).astype(np.float32)
        )


# ---- the writer: resuming, validation, overwrite ---------------------------------------------------


def test_stored_and_resume(tmp_path):
    path = tmp_path / "c.h5"
    write_batches(path, "m", [ids_range("s", 0, 4)])
    with CacheWriter(path, "m", {"options": {"pool": "mean"}}, ["l.0", "l.1"]) as w:
        assert w.stored() == {i: sha(i) for i in ids_range("s", 0, 4)}
        ids = ids_range("s", 4, 6)
        w.append(ids, [sha(i) for i in ids], {"l.0": features(ids, 6, 0), "l.1": features(ids, 4, 1)})
        assert set(w.stored()) == set(ids_range("s", 0, 6))
    assert not list((tmp_path / "c.h5.parts").iterdir())  # consolidated


def test_exception_inside_with_keeps_completed_batches(tmp_path):
    path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError, match="model crashed"):
        with CacheWriter(path, "m", {"options": {}}, ["l"]) as w:
            w.append(["a"], [sha("a")], {"l": np.ones((1, 2))})
            raise RuntimeError("model crashed")
    with Cache(path) as c:
        assert c.ids("m") == ["a"]


def _bad_appends():
    good_ids = ["n1", "n2"]
    good = {"l.0": features(good_ids, 6, 0), "l.1": features(good_ids, 4, 1)}
    nan = {"l.0": np.full((2, 6), np.nan), "l.1": good["l.1"]}
    return [
        ("missing", good_ids, {"l.0": good["l.0"]}, {}, r"missing \['l.1'\]"),
        ("unexpected", good_ids, {**good, "l.9": good["l.0"]}, {}, r"unexpected \['l.9'\]"),
        ("rows", good_ids, {"l.0": good["l.0"][:1], "l.1": good["l.1"]}, {}, r"shape \(1, 6\), expected \(2, D\)"),
        ("width", good_ids, {"l.0": np.ones((2, 5)), "l.1": good["l.1"]}, {}, "width 5, earlier batches 6"),
        ("nan", good_ids, nan, {}, "NaN or infinite"),
        ("repeat in batch", ["n1", "n1"], good, {}, "repeated within the batch"),
        ("already stored", ["s0", "n2"], good, {}, "already stores ids 's0'"),
        ("overflow", good_ids, {"l.0": np.full((2, 6), 1e6), "l.1": good["l.1"]}, {}, "float16 range"),
        ("text", good_ids, {"l.0": np.full((2, 6), "x"), "l.1": good["l.1"]}, {}, "give real numbers"),
        ("output shape", good_ids, good, {"energy": [1.0]}, r"output 'energy' has shape \(1,\)"),
        ("output names", good_ids, good, {"forces": [1.0, 2.0]}, r"missing \['energy'\]"),
    ]


@pytest.mark.parametrize("case", _bad_appends(), ids=lambda c: c[0])
def test_invalid_batches_are_refused_and_write_nothing(tmp_path, case):
    _, ids, pooled, outputs, message = case
    path = tmp_path / "c.h5"
    with CacheWriter(path, "m", {"options": {}}, ["l.0", "l.1"], dtype="float16") as w:
        first = ["s0", "s1"]
        w.append(first, [sha(i) for i in first], {"l.0": features(first, 6, 0), "l.1": features(first, 4, 1)},
                 outputs={"energy": [0.5, 1.5]})
        parts_before = sorted((tmp_path / "c.h5.parts").iterdir())
        with pytest.raises(CacheError, match=message):
            w.append(ids, [sha(i) for i in ids], pooled, outputs=outputs or {"energy": [1.0, 2.0]})
        assert sorted((tmp_path / "c.h5.parts").iterdir()) == parts_before
        assert set(w.stored()) == set(first)
    with Cache(path) as c:
        assert c.ids("m") == first


def test_bad_hashes_and_names_are_refused(tmp_path):
    path = tmp_path / "c.h5"
    with pytest.raises(CacheError, match="contains '/'"):
        CacheWriter(path, "m", {"options": {}}, ["encoder/3"])
    with pytest.raises(CacheError, match="model name 'a/b' contains '/'"):
        CacheWriter(path, "a/b", {"options": {}}, ["l"])
    with pytest.raises(CacheError, match="repeated"):
        CacheWriter(path, "m", {"options": {}}, ["l", "l"])
    with pytest.raises(CacheError, match="storage dtype 'bfloat16'"):
        CacheWriter(path, "m", {"options": {}}, ["l"], dtype="bfloat16")
    with pytest.raises(CacheError, match="cannot be stored"):
        CacheWriter(path, "m", {"options": {"f": object()}}, ["l"])
    with CacheWriter(path, "m", {"options": {}}, ["l"]) as w:
        with pytest.raises(CacheError, match="sha256 hex digest"):
            w.append(["a"], ["not-a-hash"], {"l": np.ones((1, 2))})
        with pytest.raises(CacheError, match="1 ids but 2 content hashes"):
            w.append(["a"], [sha("a"), sha("b")], {"l": np.ones((1, 2))})
        with pytest.raises(CacheError, match="output name 'x/y'"):
            w.append(["a"], [sha("a")], {"l": np.ones((1, 2))}, outputs={"x/y": [1.0]})
    with pytest.raises(CacheError, match="closed"):
        w.append(["a"], [sha("a")], {"l": np.ones((1, 2))})


def test_changed_options_or_layers_need_overwrite(tmp_path):
    path = tmp_path / "c.h5"
    write_batches(path, "m", [ids_range("s", 0, 3)], options={"pool": "mean", "chunk": 1})
    with pytest.raises(CacheError, match=r"other options \(pool: 'mean' -> 'cls'\); pass overwrite=True"):
        CacheWriter(path, "m", {"options": {"pool": "cls", "chunk": 1}}, ["l.0", "l.1"])
    with pytest.raises(CacheError, match=r"has layers \['l.0', 'l.1'\], this run asks for \['l.0'\]"):
        CacheWriter(path, "m", {"options": {"pool": "mean", "chunk": 1}}, ["l.0"])
    with pytest.raises(CacheError, match="stored as float32, this run asks for float16"):
        CacheWriter(path, "m", {"options": {"pool": "mean", "chunk": 1}}, ["l.0", "l.1"], dtype="float16")
    # a refused writer releases the lock and leaves the data alone
    with Cache(path) as c:
        assert c.ids("m") == ids_range("s", 0, 3)
        assert c.provenance("m")["options"] == {"pool": "mean", "chunk": 1}


def test_overwrite_keeps_old_data_until_the_new_run_completes(tmp_path):
    path = tmp_path / "c.h5"
    write_batches(path, "m", [ids_range("old", 0, 50)], dims=(64, 64))
    write_batches(path, "other", [ids_range("s", 0, 2)])
    size_before = path.stat().st_size
    w = CacheWriter(path, "m", {"options": {"pool": "cls"}}, ["new"], overwrite=True)
    assert w.stored() == {}
    w.append(["n0"], [sha("n0")], {"new": np.ones((1, 2))})
    with Cache(path) as c:  # staged: readers still see the old model
        assert c.ids("m") == ids_range("old", 0, 50) and c.layers("m") == ["l.0", "l.1"]
        assert c.n_pending_parts == 0
    w.close()  # the run completed: its batches replace the model
    with Cache(path) as c:
        assert c.ids("m") == ["n0"] and c.layers("m") == ["new"]
        assert c.provenance("m")["options"] == {"pool": "cls"}
        assert c.ids("other") == ids_range("s", 0, 2)
        other = features(ids_range("s", 0, 2), 6, 0).astype(np.float32)
        np.testing.assert_array_equal(c.read_layer("other", "l.0"), other)
    assert path.stat().st_size < size_before  # the old model's space was reclaimed
    with CacheWriter(path, "m", {"options": {}}, ["x"], overwrite=True):
        pass  # overwrite and no batch: the model is replaced by an empty one
    with Cache(path) as c:
        assert c.n_samples("m") == 0 and c.layers("m") == ["x"]
        assert c.read_layer("m", "x").shape[0] == 0


def test_a_failed_overwrite_keeps_the_old_data_and_resumes(tmp_path):
    path = tmp_path / "c.h5"
    write_batches(path, "m", [ids_range("old", 0, 12)])
    old = features(ids_range("old", 0, 12), 6, 0).astype(np.float32)
    new_prov = {"options": {"pool": "cls"}}
    with pytest.raises(RuntimeError, match="model crashed"):
        with CacheWriter(path, "m", new_prov, ["new"], overwrite=True) as w:
            w.append(["n0", "n1"], [sha("n0"), sha("n1")], {"new": features(["n0", "n1"], 3, 5)})
            raise RuntimeError("model crashed")
    with Cache(path) as c:  # the old model, whole
        assert c.ids("m") == ids_range("old", 0, 12)
        np.testing.assert_array_equal(c.read_layer("m", "l.0"), old)
    # the staged batches of the failed run were kept and a second overwrite with its options resumes them
    with CacheWriter(path, "m", new_prov, ["new"], overwrite=True) as w:
        assert w.stored() == {"n0": sha("n0"), "n1": sha("n1")}
        w.append(["n2"], [sha("n2")], {"new": features(["n2"], 3, 5)})
    with Cache(path) as c:
        assert c.ids("m") == ["n0", "n1", "n2"]
        np.testing.assert_array_equal(c.read_layer("m", "new"), features(["n0", "n1", "n2"], 3, 5).astype(np.float32))
    assert list((tmp_path / "c.h5.parts").iterdir()) == []
    # a failed overwrite is discarded by an overwrite with other options, and resuming without overwrite ignores it
    with pytest.raises(RuntimeError):
        with CacheWriter(path, "m", {"options": {"pool": "max"}}, ["new"], overwrite=True) as w:
            w.append(["z"], [sha("z")], {"new": np.ones((1, 3))})
            raise RuntimeError
    with CacheWriter(path, "m", new_prov, ["new"]) as w:
        assert set(w.stored()) == {"n0", "n1", "n2"}
    with CacheWriter(path, "m", {"options": {"pool": "mean"}}, ["new"], overwrite=True) as w:
        assert w.stored() == {}
    assert list((tmp_path / "c.h5.parts").iterdir()) == []


def test_provenance_is_stored_with_creation_time_and_format_version(tmp_path):
    path = tmp_path / "c.h5"
    prov = {"model": "esm2_t6", "weights_sha256": sha("w"), "packages": {"torch": "2.13.0"}, "device": "cpu",
            "dtype": "bfloat16", "pooling": "mean", "options": {"max_len": np.int64(1022)}}
    with CacheWriter(path, "esm2", prov, ["l"]) as w:
        w.append(["a"], [sha("a")], {"l": np.ones((1, 2))})
    with Cache(path) as c:
        got = c.provenance("esm2")
    assert got.pop("format_version") == FORMAT_VERSION
    assert got.pop("created").endswith("+00:00")
    assert got == {**prov, "options": {"max_len": 1022}}


# ---- reading: errors ----------------------------------------------------------------------------


def test_unknown_model_layer_or_id_lists_what_exists(tmp_path):
    path = tmp_path / "c.h5"
    write_batches(path, "m", [ids_range("s", 0, 3)])
    with Cache(path) as c:
        with pytest.raises(CacheError, match=r"model 'x' is not in cache .* it holds \['m'\]"):
            c.layers("x")
        with pytest.raises(CacheError, match=r"no pooled layer 'l.7'; its pooled layers: \['l.0', 'l.1'\]"):
            c.read_layer("m", "l.7")
        with pytest.raises(CacheError, match="no token layer"):
            c.read_tokens("m", "l.0")
        with pytest.raises(CacheError, match="has no samples 'zz'"):
            c.read_layer("m", "l.0", ids=["s0", "zz"])
        with pytest.raises(CacheError, match="read as floating point; dtype int32"):
            c.read_layer("m", "l.0", dtype=np.int32)
    with pytest.raises(CacheError, match="closed"):
        c.read_layer("m", "l.0")


def test_missing_foreign_and_corrupt_files_are_one_line_errors(tmp_path):
    with pytest.raises(CacheError, match="no cache at"):
        Cache(tmp_path / "nope.h5")
    text = tmp_path / "text.h5"
    text.write_text("id,sequence\na,MKV\n")
    with pytest.raises(CacheError, match="not a readable HDF5 file"):
        Cache(text)
    with pytest.raises(CacheError, match="not a readable HDF5 file"):
        CacheWriter(text, "m", {"options": {}}, ["l"])
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(CacheError, match="not an embeddings cache"):
        Cache(foreign)
    good = tmp_path / "good.h5"
    write_batches(good, "m", [ids_range("s", 0, 200)], dims=(64, 32))
    for cut in (0.3, 0.9):
        truncated = tmp_path / f"cut{cut}.h5"
        truncated.write_bytes(good.read_bytes()[: int(good.stat().st_size * cut)])
        with pytest.raises(CacheError) as info:
            with Cache(truncated) as c:
                c.read_layer("m", "l.0")
        assert "\n" not in str(info.value) and "extract again" in str(info.value)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    write_batches(path, "m", [["a"]])
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CacheError, match=f"format version {FORMAT_VERSION + 1}.*upgrade repalign"):
        Cache(path)
    with pytest.raises(CacheError, match="upgrade repalign"):
        CacheWriter(path, "m", {"options": {}}, ["l.0", "l.1"])


# ---- align_ids --------------------------------------------------------------------------------


def test_align_ids_intersection_in_model_a_order(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_batches(a, "esm", [["s5", "s1", "s9"], ["s2", "s7"]])
    write_batches(b, "fold", [["s7", "s0", "s5"], ["s2", "s8"]])
    write_batches(a, "fold2", [["s2", "s9"]])
    assert align_ids(a, "esm", b, "fold") == ["s5", "s2", "s7"]
    assert align_ids(b, "fold", a, "esm") == ["s7", "s5", "s2"]
    with Cache(a) as ca:
        assert align_ids(ca, "esm", model_b="fold2") == ["s9", "s2"]
        assert align_ids(ca, "esm") == ["s5", "s1", "s9", "s2", "s7"]


def test_align_ids_errors_name_the_ids(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_batches(a, "x", [ids_range("s", 0, 10)])
    write_batches(b, "y", [ids_range("t", 0, 10)])
    with pytest.raises(CacheError, match="share no sample ids"):
        align_ids(a, "x", b, "y")
    # same ids, changed inputs for 7 of them
    with CacheWriter(b, "z", {"options": {}}, ["l"]) as w:
        ids = ids_range("s", 0, 10)
        changed = [sha(i + "changed") if n < 7 else sha(i) for n, i in enumerate(ids)]
        w.append(ids, changed, {"l": np.ones((10, 2))})
    expected = r"ids 's0', 's1', 's2', 's3', 's4', \.\.\. \(7 in all\) name different inputs"
    with pytest.raises(CacheError, match=expected):
        align_ids(a, "x", b, "z")
    # a damaged cache holding an id twice
    dup = tmp_path / "dup.h5"
    shutil.copyfile(a, dup)
    with h5py.File(dup, "r+") as f:
        f["models/x/ids"][3] = "s1"
    # the id index is the checksum of the ids: the damaged row is named
    with pytest.raises(CacheError, match=r"the stored id of row 3 \('s1'\) does not match its checksum"):
        align_ids(a, "x", dup, "x")
    with h5py.File(dup, "r+") as f:  # as in a cache written before the id index: no checksum of the ids
        del f["models/x/id_index"]
    with pytest.raises(CacheError, match=r"duplicated ids 's1'"):
        align_ids(a, "x", dup, "x")


# ---- the layout, read with plain h5py as docs/cache-format.md says --------------------------------


def test_layout_readable_with_plain_h5py(tmp_path):
    path = tmp_path / "c.h5"
    ids = ids_range("s", 0, 40)
    with CacheWriter(path, "m", {"options": {}}, ["big", "small"], token_layers=["small"], dtype="float16",
                     compression="gzip") as w:
        w.append(ids, [sha(i) for i in ids], {"big": features(ids, 3000, 0), "small": features(ids, 8, 1)},
                 tokens={"small": [token_rows(i, 8) for i in ids]}, outputs={"e": np.arange(40.0)})
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "repalign-embeddings-cache" and f.attrs["format_version"] == FORMAT_VERSION
        g = f["models/m"]
        assert json.loads(g.attrs["layers"]) == ["big", "small"]
        assert json.loads(g.attrs["provenance"])["options"] == {}
        assert list(g["ids"].asstr()[()]) == ids
        assert [h.decode() for h in g["hashes"][()]] == [sha(i) for i in ids]
        big = g["pooled/big"]
        assert big.dtype == np.float16 and big.compression == "gzip" and big.maxshape == (None, 3000)
        assert big.chunks[1] == 3000 and big.chunks[0] * 3000 * 2 <= 1 << 20 < (big.chunks[0] + 1) * 3000 * 2
        np.testing.assert_array_equal(big[()], features(ids, 3000, 0).astype(np.float16))
        offsets = g["tokens/small/offsets"][()]
        k = ids.index("s17")
        np.testing.assert_array_equal(
            g["tokens/small/data"][offsets[k] : offsets[k + 1]], token_rows("s17", 8).astype(np.float16)
        )
        np.testing.assert_array_equal(g["outputs/e"][()], np.arange(40.0))


def test_describe_and_summary(tmp_path):
    path = tmp_path / "c.h5"
    ids = ["a", "b", "c"]
    with CacheWriter(path, "m", {"model": "esm2", "options": {"k": 1}}, ["l.2", "l.1"], token_layers=["l.1"]) as w:
        w.append(ids, [sha(i) for i in ids], {"l.2": np.ones((3, 5)), "l.1": np.ones((3, 4))},
                 tokens={"l.1": [np.ones((n, 4)) for n in (1, 2, 3)]}, outputs={"plddt": [1.0, 2.0, 3.0]})
    with Cache(path) as c:
        text = c.describe()
        records = c.records()
    assert text.index("l.2") < text.index("l.1") and "(3, 5)" in text and "(6 tokens, 4)" in text
    assert '"model": "esm2"' in text and "3 samples" in text and "plddt" in text
    table = [(r["kind"], r["name"], r["position"], r["rows"], r["dim"], r["dtype"]) for r in records]
    assert table == [
        ("pooled", "l.2", 0, 3, 5, "float32"),
        ("pooled", "l.1", 1, 3, 4, "float32"),
        ("tokens", "l.1", 0, 6, 4, "float32"),
        ("output", "plddt", 0, 3, None, "float64"),
    ]
    assert all(r["model"] == "m" and r["n_samples"] == 3 for r in records)


def test_reader_survives_a_consolidation_under_it(tmp_path):
    path = tmp_path / "c.h5"
    write_batches(path, "m", [ids_range("s", 0, 4)])
    w = CacheWriter(path, "m", {"options": {"pool": "mean"}}, ["l.0", "l.1"])
    for start in (4, 6):
        ids = ids_range("s", start, start + 2)
        w.append(ids, [sha(i) for i in ids], {"l.0": features(ids, 6, 0), "l.1": features(ids, 4, 1)})
    with Cache(path) as c:
        assert c.n_pending_parts == 2
        w.close()  # the parts this reader listed are now in the new main file, and deleted
        assert not list((tmp_path / "c.h5.parts").iterdir())
        expected = features(ids_range("s", 0, 8), 6, 0).astype(np.float32)
        np.testing.assert_array_equal(c.read_layer("m", "l.0"), expected)
        assert c.n_pending_parts == 0  # it reopened the new main file
        np.testing.assert_array_equal(c.read_layer("m", "l.0", ids=["s7", "s1"]), expected[[7, 1]])


def test_the_plain_h5py_recipe_of_the_docs_runs(tmp_path, monkeypatch):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cache-format.md").read_text()
    recipe = doc.split("## Reading a cache with plain h5py")[1].split("```python")[1].split("```")[0]
    ids = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    with CacheWriter(tmp_path / "features.h5", "esm2_t33", {"options": {}}, ["layer.1", "layer.33"],
                     token_layers=["layer.33"]) as w:
        w.append(ids, [sha(i) for i in ids], {"layer.1": features(ids, 4, 0), "layer.33": features(ids, 5, 1)},
                 tokens={"layer.33": [token_rows(i, 5) for i in ids]}, outputs={"plddt": np.arange(9.0)})
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(recipe, scope)
    assert list(scope["ids"]) == ids and list(scope["hashes"]) == [sha(i) for i in ids]
    np.testing.assert_array_equal(scope["X"], features(ids, 5, 1).astype(np.float32))
    np.testing.assert_array_equal(scope["tokens_of_sample_7"], token_rows("h", 5))
    np.testing.assert_array_equal(scope["plddt"], np.arange(9.0))


def test_bfloat16_activations_are_passed_as_float32(tmp_path):
    torch = pytest.importorskip("torch")
    act = torch.linspace(-3, 3, 12, dtype=torch.bfloat16).reshape(3, 4)
    with CacheWriter(tmp_path / "c.h5", "m", {"options": {}}, ["l"]) as w:
        with pytest.raises(CacheError, match="float32 for bfloat16"):
            w.append(["a", "b", "c"], [sha(i) for i in "abc"], {"l": act})
        w.append(["a", "b", "c"], [sha(i) for i in "abc"], {"l": act.float()})
    with Cache(tmp_path / "c.h5") as c:
        np.testing.assert_array_equal(c.read_layer("m", "l"), act.float().numpy())


def test_a_symlinked_cache_is_written_where_it_lives(tmp_path):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "c.h5"
    link = tmp_path / "link.h5"
    write_batches(real, "m", [["a", "b"]])
    link.symlink_to(real)
    with CacheWriter(link, "m", {"options": {"pool": "mean"}}, ["l.0", "l.1"]) as w:
        with pytest.raises(CacheError, match="being written by another process"):
            CacheWriter(real, "m", {"options": {"pool": "mean"}}, ["l.0", "l.1"])
        w.append(["c"], [sha("c")], {"l.0": features(["c"], 6, 0), "l.1": features(["c"], 4, 1)})
        with Cache(link) as c:
            assert c.ids("m") == ["a", "b", "c"]
    assert link.is_symlink()
    with Cache(real) as c:
        assert c.ids("m") == ["a", "b", "c"]


@pytest.mark.parametrize("compression", ["lzf", None])
def test_a_damaged_chunk_is_an_error_not_wrong_numbers(tmp_path, compression):
    path = tmp_path / "c.h5"
    write_batches(path, "m", [ids_range("s", 0, 50)], dims=(64, 8), compression=compression)
    with h5py.File(path, "r") as f:
        chunk = f["models/m/pooled/l.0"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset + chunk.size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with Cache(path) as c:
        intact = features(ids_range("s", 0, 50), 8, 1).astype(np.float32)
        np.testing.assert_array_equal(c.read_layer("m", "l.1"), intact)
        with pytest.raises(CacheError, match=r"cannot read /models/m/pooled/l.0 .* the file is damaged"):
            c.read_layer("m", "l.0")
