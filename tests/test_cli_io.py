"""Command-line input and output: tables through pipes ('-'), machine-readable listings (--json),
model availability, repeatable --model, exports that import back exactly, and portable caches."""

from __future__ import annotations

import ast
import errno
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main

from embeddings_cache import CacheWriter

N_SAMPLES = 40


def write_two_model_cache(path, n: int = N_SAMPLES):
    """A cache with models A (2 layers) and B (1 layer) over the same n samples."""
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(n)]
    hashes = [f"{i:064x}" for i in range(n)]
    base = rng.standard_normal((n, 6)).astype(np.float32)
    for model, dims in (("A", (8, 5)), ("B", (7,))):
        names = [f"layer.{i}" for i in range(len(dims))]
        arrays = {nm: base @ rng.standard_normal((6, d)).astype(np.float32) for nm, d in zip(names, dims)}
        with CacheWriter(path, model, provenance={"options": {}}, layers=names) as writer:
            writer.append(ids, hashes, arrays)
    return path


@pytest.fixture(scope="module")
def two_model_cache(tmp_path_factory):
    return write_two_model_cache(tmp_path_factory.mktemp("cli_io") / "cache.h5")


# ---- 1. '-' as a table path ---------------------------------------------------------------------------


def test_compare_writes_csv_to_stdout_and_messages_to_stderr(two_model_cache):
    res = run_main("compare", two_model_cache, "--a", "A", "--b", "B", "--metric", "mknn", "cka", "--k", "5", "-o", "-")
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(io.StringIO(res.stdout))
    assert len(table) == 4 and set(table["metric"]) == {"mutual_knn", "cka"}
    assert "wrote 4 rows to standard output" in res.stderr


def test_ci_on_a_metric_without_valid_intervals_says_so_on_stderr(two_model_cache, tmp_path):
    out = tmp_path / "ci.csv"
    res = run_main("compare", two_model_cache, "--a", "A", "--b", "B", "--metric", "mknn", "unbiased_cka", "--k", "5",
                   "--ci", "0.9", "--subsamples", "20", "-o", out)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out)
    mknn, ucka = table[table.metric == "mutual_knn"], table[table.metric == "unbiased_cka"]
    assert mknn["ci_low"].isna().all() and ucka["ci_low"].notna().all()
    notes = [line for line in res.stderr.splitlines() if line.startswith("repalign: note: ")]
    assert notes == [f"repalign: note: {mknn['note'].iloc[0]}"] and "mutual_knn" in notes[0]


def test_plot_reads_a_table_from_stdin(two_model_cache, tmp_path):
    table = run_main("compare", two_model_cache, "--a", "A", "--b", "B", "--k", "5", "-o", "-").stdout
    res = run_main("plot", "-", "-o", tmp_path / "heatmap", "--format", "png", stdin=table)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "heatmap.png").stat().st_size > 0


def test_stdin_table_errors_are_one_line(two_model_cache, tmp_path):
    res = run_main("plot", "-", "-o", tmp_path / "x", stdin="")
    assert res.returncode == 1 and res.stderr.startswith("repalign: error: standard input is empty")
    res = run_main("report", "-", "-o", tmp_path / "report", stdin="")  # report renders a piped table too
    assert res.returncode == 1 and res.stderr.startswith("repalign: error: standard input is empty"), res.stderr
    assert len(res.stderr.splitlines()) == 1


def test_compare_output_pipes_into_pandas(two_model_cache):
    """The real pipe: compare's stdout is a CSV that another program reads, whatever is logged."""
    compare = subprocess.Popen([sys.executable, "-m", "repalign", "compare", str(two_model_cache), "--a", "A",
                                "--b", "B", "--k", "5", "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = subprocess.run([sys.executable, "-c", "import pandas as pd, sys; t = pd.read_csv(sys.stdin); "
                             "print(len(t), sorted(t['layer_a']))"], stdin=compare.stdout, capture_output=True, text=True)
    compare.stdout.close()
    assert compare.wait() == 0, compare.stderr.read()
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout.strip() == "2 ['layer.0', 'layer.1']"


# ---- 2. --json on models and cache info ------------------------------------------------------------------


def hub_snapshot(cache, repo: str, files: tuple[str, ...]) -> None:
    """A checkpoint laid out as huggingface_hub stores it: refs/main -> snapshots/COMMIT/FILES."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text("{}")


def test_models_json_has_stable_keys_and_hub_models_are_here_only_when_cached(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    hub_snapshot(hub, "facebook/esm2_t6_8M_UR50D", ("config.json", "model.safetensors"))
    hub_snapshot(hub, "facebook/esm2_t12_35M_UR50D", ("config.json",))  # weights never fetched
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import repalign.zoo

    listed = ("onehot", "esm2-8m", "esm2-35m", "esm2-150m", "prott5", "esmc-300m", "esmfold2")
    # the models of this test only: listing them all imports every model family (seconds)
    monkeypatch.setattr(repalign.zoo, "REGISTRY", {name: repalign.zoo.REGISTRY[name] for name in listed})
    res = run_main("models", "--json")
    assert res.returncode == 0, res.stderr
    rows = {row["name"]: row for row in json.loads(res.stdout)}
    keys = {"name", "family", "modality", "input", "available", "why_unavailable", "n_layers", "layers",
            "license", "extra", "weights"}
    assert all(set(row) == keys for row in rows.values())
    assert list(rows) == list(listed)
    assert rows["onehot"]["available"] and rows["onehot"]["n_layers"] == len(rows["onehot"]["layers"]) >= 1
    assert rows["esm2-8m"]["available"] and rows["esm2-8m"]["why_unavailable"] == ""
    assert not rows["esm2-35m"]["available"] and "no weights" in rows["esm2-35m"]["why_unavailable"]
    for name in ("esm2-150m", "prott5", "esmc-300m", "esmfold2"):
        assert not rows[name]["available"] and f"({hub})" in rows[name]["why_unavailable"]
    assert rows["esm2-150m"]["n_layers"] == 31  # the layer list is known without the weights


def test_cache_info_json_describes_models_arrays_and_files_beside(two_model_cache):
    res = run_main("cache", "info", two_model_cache, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert set(info) == {"path", "format_version", "pending_batches", "unfinished_runs", "files_beside", "models"}
    by_name = {m["name"]: m for m in info["models"]}
    assert by_name["A"]["n_samples"] == N_SAMPLES and by_name["A"]["dtype"] == "float32"
    assert [(a["name"], a["rows"], a["dim"]) for a in by_name["A"]["pooled_layers"]] == [
        ("layer.0", N_SAMPLES, 8), ("layer.1", N_SAMPLES, 5)]
    assert by_name["B"]["token_layers"] == [] and isinstance(by_name["B"]["provenance"], dict)
    lock = [f for f in info["files_beside"] if f["path"].endswith("cache.h5.lock")]
    assert lock and "part of the format" in lock[0]["role"]


# ---- 4. --model takes one name ---------------------------------------------------------------------------


def test_a_second_model_name_after_model_is_a_one_line_error(tmp_path):
    fasta = tmp_path / "x.fasta"
    fasta.write_text(">ab1\nEVQLVESGGGLVQPGGSLRLSCAASGFTFS:DIQMTQSPSSLSASVGDRVTITC\n")
    res = run_main("extract", "--model", "antiberty", "iglm", fasta, "-o", tmp_path / "c.h5")
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith("repalign: error: input 'iglm' is a model name")
    assert "--model antiberty --model iglm" in res.stderr and not (tmp_path / "c.h5").exists()
    res = run_main("extract", fasta, "--model", "onehot", "--model", "aa-composition", "-o", tmp_path / "c.h5", "-q")
    assert res.returncode == 0, res.stderr
    assert "onehot: stored 1 samples" in res.stdout and "aa-composition: stored 1 samples" in res.stdout


# ---- 5. every export format imports back exactly ---------------------------------------------------------


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    """One model with two pooled layers and a token layer (ragged rows), ids that need quoting in file names."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("export") / "tokens.h5"
    ids = [f"ab/{i}" if i % 3 else f"s{i}" for i in range(12)]
    hashes = [f"{i + 7:064x}" for i in range(12)]
    tokens = [rng.standard_normal((int(rng.integers(2, 6)), 4)).astype(np.float32) for _ in ids]
    pooled = {"layer.0": rng.standard_normal((12, 6)).astype(np.float32),
              "layer.1": np.stack([t.mean(axis=0) for t in tokens])}
    with CacheWriter(path, "m", provenance={"options": {}}, layers=["layer.0", "layer.1"],
                     token_layers=["layer.1"]) as writer:
        writer.append(ids, hashes, pooled, tokens={"layer.1": tokens})
    return path


@pytest.mark.parametrize("output", ["m.parquet", "m.npz", "m.h5ad", "pt-folder"])
def test_an_export_imports_back_with_the_same_arrays_and_ids(token_cache, tmp_path, output):
    from embeddings_cache import Cache

    exported = tmp_path / output
    res = run_main("cache", "export", token_cache, "--model", "m", "-o", exported)
    assert res.returncode == 0, res.stderr
    res = run_main("cache", "import", exported, "--model", "back", "-o", tmp_path / "back.h5")
    assert res.returncode == 0, res.stderr
    with Cache(token_cache) as original, Cache(tmp_path / "back.h5") as back:
        assert back.ids("back") == original.ids("m") and back.hashes("back") == original.hashes("m")
        assert back.layers("back") == original.layers("m")
        for layer in original.layers("m"):
            np.testing.assert_array_equal(back.read_layer("back", layer), original.read_layer("m", layer))
        if output in ("m.npz", "pt-folder"):  # the formats that carry token rows
            assert back.token_layers("back") == ["layer.1"]
            for got, want in zip(back["back"].tokens("layer.1"), original["m"].tokens("layer.1")):
                np.testing.assert_array_equal(got, want)


def test_a_parquet_import_checks_sizes_and_column_types_before_reading(token_cache, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    exported = tmp_path / "m.parquet"
    assert run_main("cache", "export", token_cache, "--model", "m", "-o", exported).returncode == 0
    res = run_main("cache", "import", exported, "--model", "b", "-o", tmp_path / "b.h5", "--max-member-size", "100")
    assert res.returncode == 1 and "column 'layer.0' (12, 6) declares" in res.stderr and "--max-member-size" in res.stderr
    odd = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"id": ["a"], "layer.0": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2)),
                             "notes": pa.array([{"x": 1}])}), odd)
    res = run_main("cache", "import", odd, "--model", "b", "-o", tmp_path / "b.h5")
    assert res.returncode == 1 and "column 'notes' has type struct" in res.stderr and len(res.stderr.splitlines()) == 1
    assert not (tmp_path / "b.h5").exists()


# ---- 6. portable caches: readers without fcntl/resource, gzip by default, plain HDF5 tools ---------------


def test_a_new_cache_is_gzip_and_an_existing_cache_keeps_its_compression(tmp_path):
    import h5py

    fasta = tmp_path / "x.fasta"
    fasta.write_text(">p1\nMKTAYIAKQR\n>p2\nMKVLAAGIVG\n")
    assert run_main("extract", fasta, "--model", "onehot", "-o", tmp_path / "new.h5", "-q").returncode == 0
    res = run_main("extract", fasta, "--model", "onehot", "--compression", "lzf", "-o", tmp_path / "old.h5", "-q")
    assert res.returncode == 0, res.stderr
    assert run_main("extract", fasta, "--model", "aa-composition", "-o", tmp_path / "old.h5", "-q").returncode == 0
    exported = tmp_path / "onehot.npz"
    assert run_main("cache", "export", tmp_path / "new.h5", "--model", "onehot", "-o", exported).returncode == 0
    res = run_main("cache", "import", exported, "--model", "plain", "--compression", "none", "-o", tmp_path / "new.h5")
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "new.h5", "r") as new, h5py.File(tmp_path / "old.h5", "r") as old:
        def filters(f, model):
            group = f["models"][model]["pooled"]
            return {group[layer].compression for layer in group}
        assert filters(new, "onehot") == {"gzip"} and filters(new, "plain") == {None}
        assert filters(old, "onehot") == {"lzf"} and filters(old, "aa-composition") == {"lzf"}  # kept its own
    info = json.loads(run_main("cache", "info", tmp_path / "new.h5", "--json").stdout)
    assert [m["compression"] for m in info["models"]] == ["gzip", "none"]


def test_a_new_cache_reads_with_h5py_alone_by_the_documented_names(two_model_cache):
    """docs/cache-format.md, "Reading a cache with plain h5py": only the names documented there."""
    import h5py

    with h5py.File(two_model_cache, "r") as f:
        assert f.attrs["format"] == "repalign-embeddings-cache" and f.attrs["format_version"] <= 1
        g = f["models/A"]
        layers = json.loads(g.attrs["layers"])
        ids = g["ids"].asstr()[()]
        hashes = g["hashes"][()].astype(str)
        X = g["pooled"][layers[-1]][()]
        assert g["pooled"][layers[-1]].compression == "gzip" and g.attrs["compression"] == "gzip"
    assert layers == ["layer.0", "layer.1"] and list(ids) == [f"s{i}" for i in range(N_SAMPLES)]
    assert hashes[3] == f"{3:064x}" and X.shape == (N_SAMPLES, 5) and X.dtype == np.float32


def test_h5dump_reads_a_layer_of_a_new_gzip_cache(two_model_cache):
    import shutil

    from embeddings_cache import Cache

    if shutil.which("h5dump") is None:
        pytest.skip("h5dump is not installed (Debian package hdf5-tools; .ci/run installs it)")
    res = subprocess.run(["h5dump", "-d", "/models/B/pooled/layer.0", "-y", "-m", "%.9g", str(two_model_cache)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    data = res.stdout.split("DATA {", 1)[1].split("}", 1)[0]
    values = np.array([float(v) for v in data.replace(",", " ").split()], dtype=np.float32)
    with Cache(two_model_cache) as cache:
        np.testing.assert_array_equal(values.reshape(N_SAMPLES, 7), cache.read_layer("B", "layer.0"))


READ_WITHOUT_POSIX = """
import sys, os, warnings
sys.modules["fcntl"] = None     # import fcntl raises ImportError, as on Windows
sys.modules["resource"] = None
for name in ("pread", "preadv"):
    delattr(os, name)
warnings.simplefilter("always")
from embeddings_cache import Cache, CacheWriter, CacheError
with warnings.catch_warnings(record=True) as caught:
    with Cache(sys.argv[1]) as cache:
        first = cache.read_layer("A", "layer.1")
    with Cache(sys.argv[1]) as cache:
        second = cache.read_layer("A", "layer.1")
no_lock = [w for w in caught if type(w.message).__name__ == "NoLockWarning"]
print(first.shape[0], (first == second).all(), len(no_lock), [str(w.message) for w in caught])
try:
    CacheWriter(sys.argv[1], "C", provenance={}, layers=["x"])
except CacheError as exc:
    print(str(exc))
"""


def test_a_cache_reads_where_fcntl_and_resource_do_not_exist(two_model_cache):
    """A fresh interpreter without the POSIX modules (the point is what imports there)."""
    res = subprocess.run([sys.executable, "-c", READ_WITHOUT_POSIX, str(two_model_cache)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    shape, same, warned, messages = res.stdout.splitlines()[0].split(" ", 3)
    assert (shape, same, warned) == (str(N_SAMPLES), "True", "1"), messages
    assert "no POSIX file locks (fcntl)" in res.stdout.splitlines()[1]


# ---- 7. the files beside a cache, and messages in the user's words ---------------------------------------


def test_cache_info_names_the_files_beside_the_cache(two_model_cache, tmp_path):
    res = run_main("cache", "info", two_model_cache)
    assert res.returncode == 0, res.stderr
    beside = res.stdout.split("files beside the cache (part of it):", 1)[1]
    assert "cache.h5.lock: lock file" in beside and "part of the format" in beside
    assert "cache.h5.parts: journal folder, empty" in beside  # every batch consolidated: the .h5 alone is whole
    assert "compression gzip" in res.stdout
    missing = run_main("cache", "info", tmp_path / "none.h5")
    assert missing.returncode == 1 and "'repalign extract'" in missing.stderr and "CacheWriter" not in missing.stderr


INTERNAL_NAMES = re.compile(r"\b(CacheWriter|CachedModel|ModelPlan|ExtractOptions|GuardedFile|OverlayReader|"
                            r"HFProteinLM|ModelAdapter|LayerState|ImportRun|_[a-z]\w+)\b")
#: messages only a Python caller can get, about the Python type it passed
PYTHON_TYPE_ERRORS = {("repalign/extract_options.py", "settings must be an ExtractOptions, got ")}


def test_error_messages_name_commands_and_flags_not_internal_classes():
    """Every string in a raised error of the store and the toolkit (the comparison path aside: another
    module's rules) is free of internal class and private names."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for package in ("embeddings_cache", "repalign", "esmfold2_model"):
        for path in sorted((root / package).rglob("*.py")):
            name = path.relative_to(root).as_posix()
            if name.startswith(("repalign/compare", "repalign/metrics", "repalign/distributed")):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                    for text in [c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant)
                                 and isinstance(c.value, str)]:
                        if INTERNAL_NAMES.search(text) and (name, text) not in PYTHON_TYPE_ERRORS:
                            found.append(f"{name}:{node.lineno}: {text!r}")
    assert not found, "\n".join(found)


def test_a_system_error_is_one_line_without_a_class_name():
    from repalign.cli import system_error_text

    assert system_error_text(PermissionError(errno.EACCES, "Permission denied", "scores.csv")) == \
        "scores.csv: Permission denied"
    assert system_error_text(MemoryError()).startswith("out of memory")


# ---- 8. ESM layer numbers ----------------------------------------------------------------------------------


def test_cache_import_help_states_the_esm_layer_renumbering():
    res = run_main("cache", "import", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "repr layer 0 is 'embeddings'" in text and "ESM's layer 6 becomes layer.5" in text
