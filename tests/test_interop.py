"""Import and export of features: real files written by numpy, torch, h5py and anndata; round
trips; imported models compared with extracted ones; untrusted files refused; bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_main

from embeddings_cache import UNKNOWN_HASH, Cache
from repalign.errors import RepalignError
from repalign.inputs import read_inputs
from repalign.interop import export_features, import_features

N, L, D = 24, 3, 5


def seq_hash(seq: str) -> str:
    return hashlib.sha256(seq.encode()).hexdigest()


@pytest.fixture()
def fasta(tmp_path):
    rng = np.random.default_rng(0)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    path = tmp_path / "in.fasta"
    path.write_text("".join(f">p{i:02d}\n{''.join(rng.choice(letters, 6 + i % 9))}\n" for i in range(N)))
    return path


def features(n=N, layers=L, dim=D, seed=1):
    return np.random.default_rng(seed).normal(size=(n, layers, dim)).astype(np.float32)


def cache_state(path: Path):
    """Everything a write could change: the cache's bytes and its journal folder."""
    parts = path.with_name(path.name + ".parts")
    return (path.read_bytes() if path.exists() else None,
            sorted(os.listdir(parts)) if parts.exists() else [])


def run_cli(*args):
    return run_main(*args)

# ---- every import format, written by the library that normally writes it -------------------------


def test_npy_with_inputs_binds_rows_to_ids_and_hashes(tmp_path, fasta):
    x = features()
    np.save(tmp_path / "f.npy", x)
    run = import_features(tmp_path / "f.npy", tmp_path / "c.h5", "mine", inputs=read_inputs(fasta))
    records = read_inputs(fasta)
    with Cache(tmp_path / "c.h5") as c:
        m = c["mine"]
        assert m.ids == [r.id for r in records]
        assert m.hashes == [r.content_hash for r in records]
        assert m.layers == ["layer.0", "layer.1", "layer.2"] == run.layers
        for i in range(L):
            np.testing.assert_array_equal(m[f"layer.{i}"], x[:, i])
        prov = m.provenance
    assert prov["source"]["format"] == "npy"
    assert prov["source"]["sha256"] == hashlib.sha256((tmp_path / "f.npy").read_bytes()).hexdigest()
    assert prov["source"]["ids_from"] == "inputs"


def test_npz_named_layers_ids_and_token_rows(tmp_path):
    ids = [f"s{i}" for i in range(6)]
    lengths = [3, 1, 4, 2, 5, 2]
    rng = np.random.default_rng(3)
    tok = rng.normal(size=(sum(lengths), 4)).astype(np.float32)
    offsets = np.r_[0, np.cumsum(lengths)]
    a, b = rng.normal(size=(6, 7)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    np.savez(tmp_path / "f.npz", ids=np.array(ids), b=b, a=a, **{"tokens/t": tok, "offsets/t": offsets})
    import_features(tmp_path / "f.npz", tmp_path / "c.h5", "m")
    with Cache(tmp_path / "c.h5") as c:
        m = c["m"]
        assert m.ids == ids and m.hashes == [UNKNOWN_HASH] * 6
        assert m.layers == ["b", "a", "t"]  # file order; t pooled from its token rows
        np.testing.assert_array_equal(m["a"], a)
        np.testing.assert_array_equal(m["b"], b)
        rows = m.tokens("t")
        for k in range(6):
            np.testing.assert_array_equal(rows[k], tok[offsets[k]:offsets[k + 1]])
        np.testing.assert_allclose(m["t"], np.stack([r.mean(0) for r in rows]), rtol=1e-6)
    import_features(tmp_path / "f.npz", tmp_path / "c.h5", "only_a", layers=["a"], ids=ids[::-1])
    with Cache(tmp_path / "c.h5") as c:
        assert c.layers("only_a") == ["a"] and c.ids("only_a") == ids  # the file's own ids bind the rows


def test_pt_tensor_platonic_rep_dict_and_layer_dict(tmp_path, fasta):
    import torch

    x = features()
    records = read_inputs(fasta)
    torch.save(torch.from_numpy(x), tmp_path / "t.pt")
    torch.save({"feats": torch.from_numpy(x), "num_params": 1234}, tmp_path / "p.pt")
    torch.save({"ids": [r.id for r in records][::-1], "hidden": torch.from_numpy(x[::-1, 0].copy())}, tmp_path / "d.pt")
    cache = tmp_path / "c.h5"
    import_features(tmp_path / "t.pt", cache, "tensor", inputs=records, layers=["e", "l1", "l2"])
    import_features(tmp_path / "p.pt", cache, "platonic", ids=[r.id for r in records])
    import_features(tmp_path / "d.pt", cache, "named", inputs=records)
    with Cache(cache) as c:
        assert c.layers("tensor") == ["e", "l1", "l2"]
        np.testing.assert_array_equal(c["tensor"]["l2"], x[:, 2])
        np.testing.assert_array_equal(c["platonic"]["layer.1"], x[:, 1])
        assert c.provenance("platonic")["source"]["entry"] == "feats"
        assert c.hashes("platonic") == [UNKNOWN_HASH] * N
        # rows bound by the file's ids (reversed), hashes looked up in the inputs by id
        np.testing.assert_array_equal(c["named"].layer("hidden", ids=[r.id for r in records]), x[:, 0])
        assert dict(zip(c.ids("named"), c.hashes("named"))) == {r.id: r.content_hash for r in records}


def esm_file(label, seq_len, layers=(0, 6), dim=D, seed=0, mean=True, per_tok=True, bos=True):
    """One file as ESM's scripts/extract.py writes it (torch.save of this dict)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    reps = {layer: torch.randn(seq_len, dim, generator=g) for layer in layers}
    out = {"label": label}
    if per_tok:
        out["representations"] = reps
    if mean:
        out["mean_representations"] = {layer: r.mean(0).clone() for layer, r in reps.items()}
    if bos:
        out["bos_representations"] = {layer: torch.randn(dim, generator=g) for layer in layers}
    return out


def test_esm_extract_folder(tmp_path):
    import torch

    folder = tmp_path / "esm"
    folder.mkdir()
    files = {}
    for k in range(5):
        files[f"seq{k}"] = esm_file(f"seq{k} some description" if k % 2 else f"seq{k}", 4 + k, seed=k)
        torch.save(files[f"seq{k}"], folder / f"seq{k}.pt")
    cache = tmp_path / "c.h5"
    import_features(folder, cache, "esm")
    import_features(folder, cache, "esm_cls", pool="cls", keep_tokens=False)
    import_features(folder, cache, "esm_max", pool="max")
    ids = [f"seq{k}" for k in range(5)]
    with Cache(cache) as c:
        m = c["esm"]
        assert m.ids == ids and m.layers == ["embeddings", "layer.5"] and m.token_layers == ["embeddings", "layer.5"]
        for name, key in (("embeddings", 0), ("layer.5", 6)):
            np.testing.assert_array_equal(m[name], np.stack([files[i]["mean_representations"][key].numpy() for i in ids]))
            np.testing.assert_array_equal(c["esm_cls"][name], np.stack([files[i]["bos_representations"][key].numpy() for i in ids]))
            np.testing.assert_array_equal(c["esm_max"][name], np.stack([files[i]["representations"][key].numpy().max(0) for i in ids]))
            for got, i in zip(m.tokens(name), ids):
                np.testing.assert_array_equal(got, files[i]["representations"][key].numpy())
        assert c.token_layers("esm_cls") == []


def test_bio_embeddings_h5_per_residue_and_reduced(tmp_path):
    import h5py

    rng = np.random.default_rng(4)
    per_res = {f"prot{k}": rng.normal(size=(3 + k, 6)).astype(np.float32) for k in range(4)}
    with h5py.File(tmp_path / "embeddings_file.h5", "w") as f:
        for k, (sample, rows) in enumerate(per_res.items()):
            # bio_embeddings names datasets by a sequence hash when remapping, the id in an attribute
            ds = f.create_dataset(hashlib.md5(sample.encode()).hexdigest() if k % 2 else sample, data=rows)
            if k % 2:
                ds.attrs["original_id"] = sample
    with h5py.File(tmp_path / "reduced_embeddings_file.h5", "w") as f:
        for sample, rows in per_res.items():
            f.create_dataset(sample, data=rows.mean(0))
    cache = tmp_path / "c.h5"
    import_features(tmp_path / "embeddings_file.h5", cache, "per_res", layers=["seqvec"])
    import_features(tmp_path / "reduced_embeddings_file.h5", cache, "reduced")
    with Cache(cache) as c:
        assert sorted(c.ids("per_res")) == sorted(per_res)
        got = dict(zip(c.ids("per_res"), c["per_res"]["seqvec"]))
        for sample, rows in per_res.items():
            np.testing.assert_allclose(got[sample], rows.mean(0), rtol=1e-6)
        for sample, rows in zip(c.ids("per_res"), c["per_res"].tokens("seqvec")):
            np.testing.assert_array_equal(rows, per_res[sample])
        np.testing.assert_array_equal(c["reduced"].layer("layer.0", ids=list(per_res)),
                                      np.stack([r.mean(0) for r in per_res.values()]))


def test_h5ad_obsm_layers_and_x(tmp_path):
    anndata = pytest.importorskip("anndata")
    import pandas as pd

    rng = np.random.default_rng(5)
    ids = [f"cell{i}" for i in range(7)]
    x = rng.normal(size=(7, 3)).astype(np.float32)
    adata = anndata.AnnData(X=x, obs=pd.DataFrame(index=pd.Index(ids, dtype=object)),
                            obsm={"X_esm": rng.normal(size=(7, 4)).astype(np.float32)},
                            layers={"counts": x * 2})
    with anndata.settings.override(allow_write_nullable_strings=True):
        adata.write_h5ad(tmp_path / "a.h5ad")
    import_features(tmp_path / "a.h5ad", tmp_path / "c.h5", "sc")
    with Cache(tmp_path / "c.h5") as c:
        m = c["sc"]
        assert m.ids == ids and m.layers == ["X_esm", "counts", "X"]
        np.testing.assert_array_equal(m["X_esm"], adata.obsm["X_esm"])
        np.testing.assert_array_equal(m["counts"], x * 2)
        np.testing.assert_array_equal(m["X"], x)


# ---- round trips and comparison with extracted models ----------------------------------------------


def test_import_export_round_trips_are_exact(tmp_path, fasta):
    anndata = pytest.importorskip("anndata")
    import pyarrow.parquet as pq
    import torch

    x = features()
    perm = np.random.default_rng(7).permutation(N)
    records = [read_inputs(fasta)[i] for i in perm]
    lengths = np.random.default_rng(8).integers(1, 5, size=N)
    tok = np.random.default_rng(9).normal(size=(lengths.sum(), 3)).astype(np.float32)
    offsets = np.r_[0, np.cumsum(lengths)]
    np.savez(tmp_path / "in.npz", ids=np.array([r.id for r in records]),
             **{f"L{i}": x[:, i] for i in range(L)}, **{"tokens/res": tok, "offsets/res": offsets})
    cache = tmp_path / "c.h5"
    import_features(tmp_path / "in.npz", cache, "m", inputs=read_inputs(fasta))
    ids = [r.id for r in records]
    hashes = [r.content_hash for r in records]
    layers = ["L0", "L1", "L2", "res"]
    with Cache(cache) as c:
        pooled = {l: c["m"][l] for l in layers}
        assert c.ids("m") == ids

    for out in ("e.npz", "e.h5ad", "e.parquet", "e_pt"):
        export_features(cache, "m", tmp_path / out)
    z = np.load(tmp_path / "e.npz", allow_pickle=False)
    assert list(z["ids"]) == ids and list(z["hashes"]) == hashes
    for i in range(L):
        np.testing.assert_array_equal(z[f"L{i}"], x[:, i])
    np.testing.assert_array_equal(z["tokens/res"], tok)
    np.testing.assert_array_equal(z["offsets/res"], offsets)

    a = anndata.read_h5ad(tmp_path / "e.h5ad")
    assert list(a.obs_names) == ids and list(a.obs["content_hash"]) == hashes
    assert list(a.uns["layers"]) == layers and json.loads(a.uns["provenance"])["source"]["format"] == "npz"
    for l in layers:
        np.testing.assert_array_equal(a.obsm[l], pooled[l])

    t = pq.read_table(tmp_path / "e.parquet")
    assert t.column("id").to_pylist() == ids and t.column("content_hash").to_pylist() == hashes
    for l in layers:
        np.testing.assert_array_equal(np.array(t.column(l).to_pylist(), dtype=np.float32), pooled[l])
    assert json.loads(t.schema.metadata[b"repalign.layers"]) == layers

    for k, sample in enumerate(ids):
        obj = torch.load(tmp_path / "e_pt" / f"{sample}.pt", weights_only=True)
        assert obj["label"] == sample and obj["content_hash"] == hashes[k]
        np.testing.assert_array_equal(obj["mean_representations"]["L1"].numpy(), x[k, 1])
        np.testing.assert_array_equal(obj["representations"]["res"].numpy(), tok[offsets[k]:offsets[k + 1]])

    # the exports import back to the same model (ids, hashes kept from the files)
    for out in ("e.npz", "e.h5ad", "e_pt"):
        import_features(tmp_path / out, cache, f"back_{out}")
        with Cache(cache) as c:
            back = c[f"back_{out}"]
            assert back.ids == ids and back.hashes == hashes
            for l in layers:
                np.testing.assert_array_equal(back[l], pooled[l])


def test_imported_model_compares_with_the_extracted_one_by_id(tiny_esm2, tmp_path, fasta):
    from repalign.compare import compare_models
    from repalign.extract import extract
    from repalign.report import build_report

    cache = tmp_path / "c.h5"
    records = read_inputs(fasta)
    extract(records, [f"hf:{tiny_esm2}"], cache, layers=["all"], quiet=True)
    key = "hf:tiny"
    with Cache(cache) as c:
        layers = c.layers(key)
        stack = np.stack([c[key].layer(l, ids=[r.id for r in records]) for l in layers], axis=1)
    # written by another tool in another row order, with a little noise: bound by id, not position
    perm = np.random.default_rng(2).permutation(N)
    # (noise small against the spread between samples, which is small in a random-weight model)
    spread = stack.std(axis=0, keepdims=True)
    noisy = (stack + 1e-3 * spread * np.random.default_rng(3).normal(size=stack.shape)).astype(np.float32)[perm]
    np.save(tmp_path / "other.npy", noisy)
    ordered = tmp_path / "ordered.fasta"
    ordered.write_text("".join(f">{records[i].id}\n{records[i].payload}\n" for i in perm))
    import_features(tmp_path / "other.npy", cache, "imported", inputs=read_inputs(ordered), layers=layers)
    result = compare_models(cache, key, "imported", ["cka", "mknn"], k=3)
    table = result.table
    same = table[table["layer_a"] == table["layer_b"]]
    assert result.n_samples == N
    assert (same[same["metric"] == "cka"]["score"] > 0.999).all()
    shuffled = import_features(tmp_path / "other.npy", cache, "by_position", inputs=records, layers=layers)
    assert shuffled.n_samples == N
    wrong = compare_models(cache, key, "by_position", ["cka"]).table
    assert wrong[wrong["layer_a"] == wrong["layer_b"]]["score"].max() < 0.9  # rows bound to the wrong ids
    report = build_report(cache, tmp_path / "report", metrics=["cka"], k=3, quiet=True)
    assert "imported" in Path(report).read_text()
    from repalign.plot import plot_table

    written = plot_table(table, tmp_path / "heatmap", "layers", "png", metric="cka", model_a=key, model_b="imported")
    assert all(Path(w).stat().st_size > 0 for w in written) and written


def test_ids_only_models_are_matched_by_id_and_the_log_says_so(tmp_path, fasta, caplog):
    from repalign.compare import compare_models

    x = features()
    np.save(tmp_path / "f.npy", x)
    cache = tmp_path / "c.h5"
    records = read_inputs(fasta)
    import_features(tmp_path / "f.npy", cache, "hashed", inputs=records)
    (tmp_path / "ids.txt").write_text("\n".join(r.id for r in records) + "\n")
    from repalign.interop import read_id_list

    import_features(tmp_path / "f.npy", cache, "unhashed", ids=read_id_list(tmp_path / "ids.txt"))
    with caplog.at_level(logging.WARNING, logger="embeddings_cache"):
        table = compare_models(cache, "hashed", "unhashed", ["cka"]).table
    assert "matched by id alone" in caplog.text
    np.testing.assert_allclose(table[table["layer_a"] == table["layer_b"]]["score"], 1.0, atol=1e-5)


# ---- untrusted files ---------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_pt_whose_pickle_would_run_code_is_refused_and_does_not_run(tmp_path, fasta):
    import torch

    marker = tmp_path / "marker.txt"
    torch.save({"feats": torch.zeros(N, 2, 3), "payload": _RunsCode(str(marker))}, tmp_path / "evil.pt")
    cache = tmp_path / "c.h5"
    with pytest.raises(RepalignError, match="refused") as info:
        import_features(tmp_path / "evil.pt", cache, "evil", inputs=read_inputs(fasta))
    assert "\n" not in str(info.value)
    assert not marker.exists() and not cache.exists()
    # the same through the command line: one line, exit 1, no traceback
    res = run_cli("cache", "import", tmp_path / "evil.pt", "--model", "evil", "--inputs", fasta, "-o", cache)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "refused" in res.stderr
    assert not marker.exists() and not cache.exists()


def test_npy_and_npz_needing_pickle_are_refused(tmp_path, fasta):
    obj = np.empty(N, dtype=object)
    obj[:] = [np.zeros(3)] * N
    np.save(tmp_path / "o.npy", obj, allow_pickle=True)
    np.savez(tmp_path / "o.npz", a=obj)
    for name in ("o.npy", "o.npz"):
        with pytest.raises(RepalignError, match="refused.*pickle"):
            import_features(tmp_path / name, tmp_path / "c.h5", "m", inputs=read_inputs(fasta))
    assert not (tmp_path / "c.h5").exists()


# ---- bad input: one line, nothing written ------------------------------------------------------


def test_bad_input_leaves_the_cache_unchanged(tmp_path, fasta):
    cache = tmp_path / "c.h5"
    records = read_inputs(fasta)
    np.save(tmp_path / "ok.npy", features())
    import_features(tmp_path / "ok.npy", cache, "existing", inputs=records)
    before = cache_state(cache)
    nan = features()
    nan[3, 1, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    inf = features()
    inf[0, 0, 0] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    np.save(tmp_path / "short.npy", features(n=N - 1))
    np.save(tmp_path / "flat.npy", np.zeros(N, dtype=np.float32))
    np.savez(tmp_path / "empty.npz")
    np.savez(tmp_path / "nul.npz", ids=np.array(["a\x00b", "c"]), x=np.zeros((2, 3)))
    np.savez(tmp_path / "dup.npz", ids=np.array(["a", "a"]), x=np.zeros((2, 3)))
    cases = [
        ("nan.npy", "new", dict(inputs=records), "NaN or infinite"),
        ("inf.npy", "new", dict(inputs=records), "NaN or infinite"),
        ("short.npy", "new", dict(inputs=records), f"{N - 1} rows of features but {N} inputs"),
        ("flat.npy", "new", dict(inputs=records), "1-D"),
        ("empty.npz", "new", {}, "no feature arrays"),
        ("nul.npz", "new", {}, "NUL"),
        ("dup.npz", "new", {}, "more than once"),
        ("ok.npy", "existing", dict(inputs=records), "already in"),
        ("ok.npy", "new", {}, "does not name its samples"),
        ("ok.npy", "new", dict(ids=[r.id for r in records][:-1] + [records[0].id]), "more than once"),
        ("ok.npy", "new", dict(inputs=records, layers=["a", "b"]), "3 unnamed layer"),
    ]
    for name, model, kw, fragment in cases:
        with pytest.raises(RepalignError, match=fragment) as info:
            import_features(tmp_path / name, cache, model, **kw)
        assert "\n" not in str(info.value)
        assert cache_state(cache) == before, name
    res = run_cli("cache", "import", tmp_path / "nan.npy", "--model", "x", "--inputs", fasta, "-o", cache)
    assert res.returncode == 1 and res.stderr.startswith("repalign: error:") and "Traceback" not in res.stderr
    assert cache_state(cache) == before
    import_features(tmp_path / "ok.npy", cache, "existing", inputs=records, layers=["a", "b", "c"], overwrite=True)
    with Cache(cache) as c:
        assert c.layers("existing") == ["a", "b", "c"]


def test_export_refuses_to_replace_without_overwrite(tmp_path, fasta):
    np.save(tmp_path / "ok.npy", features())
    cache = tmp_path / "c.h5"
    import_features(tmp_path / "ok.npy", cache, "m", inputs=read_inputs(fasta))
    (tmp_path / "out.npz").write_bytes(b"keep me")
    with pytest.raises(RepalignError, match="already exists"):
        export_features(cache, "m", tmp_path / "out.npz")
    with pytest.raises(RepalignError, match="did not write"):  # --overwrite replaces only an earlier export
        export_features(cache, "m", tmp_path / "out.npz", overwrite=True)
    assert (tmp_path / "out.npz").read_bytes() == b"keep me"
    export_features(cache, "m", tmp_path / "mine.npz")
    export_features(cache, "m", tmp_path / "mine.npz", overwrite=True, layers=["layer.1"])
    assert sorted(np.load(tmp_path / "mine.npz").files) == ["hashes", "ids", "layer.1"]
    with pytest.raises(RepalignError, match="cannot export"):
        export_features(cache, "m", tmp_path / "out.csv")
    # the manifest of what export wrote there; no temporary left
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".repalign-exports"]


# ---- the command line: import -> compare -> export -----------------------------------------------


def test_cli_import_compare_export(tmp_path, fasta):
    x = features()
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x[:, ::-1] * 2.0)
    cache = tmp_path / "c.h5"
    for name, model in (("a.npy", "a"), ("b.npy", "b")):
        res = run_cli("cache", "import", tmp_path / name, "--model", model, "--inputs", fasta, "-o", cache)
        assert res.returncode == 0, res.stderr
        assert f"stored {N} samples x 3 layers" in res.stdout
    res = run_cli("compare", cache, "--a", "a", "--b", "b", "--metric", "cka", "-o", tmp_path / "s.csv")
    assert res.returncode == 0, res.stderr
    import pandas as pd

    table = pd.read_csv(tmp_path / "s.csv")
    best = table.loc[table.groupby("layer_a")["score"].idxmax()]
    assert dict(zip(best["layer_a"], best["layer_b"])) == {"layer.0": "layer.2", "layer.1": "layer.1", "layer.2": "layer.0"}
    res = run_cli("cache", "export", cache, "--model", "a", "-o", tmp_path / "a.npz")
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["layer.2"], x[:, 2])
    res = run_cli("cache", "export", cache, "--model", "nope", "-o", tmp_path / "n.npz")
    assert res.returncode == 1 and "not in" in res.stderr and res.stderr.count("\n") == 1


def test_import_waits_for_no_one_while_a_writer_holds_the_cache(tmp_path, fasta):
    from embeddings_cache import CacheWriter

    np.save(tmp_path / "ok.npy", features())
    cache = tmp_path / "c.h5"
    with CacheWriter(cache, "other", {"options": {}}, ["l"]):
        before = cache_state(cache)
        with pytest.raises(RepalignError, match="being written by another process"):
            import_features(tmp_path / "ok.npy", cache, "mine", inputs=read_inputs(fasta))
        assert cache_state(cache) == before
    with Cache(cache) as c:
        assert c.models == ["other"]
