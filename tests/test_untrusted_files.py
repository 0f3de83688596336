"""Feature files and caches from strangers (embeddings_cache.untrusted): real hostile files crafted with
h5py, numpy, torch and anndata are refused in one line before any value is read, so no byte of
another file reaches a cache or an export, nothing crashes and nothing large is allocated."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from embeddings_cache import Cache, CacheError, CacheWriter
from repalign.cli import main
from repalign.errors import RepalignError
from repalign.interop import export_features, import_features

SECRET = b"TOPSECRET-bytes!" * 4  # stands for /etc/shadow: any file of the machine


@pytest.fixture
def run_main(capsys):
    """`repalign ARGS` in this process (main is the whole CLI): exit code, stdout, stderr."""

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        root = logging.getLogger()
        saved = root.handlers[:]
        root.handlers = []  # main's logging.basicConfig then writes to this call's captured stderr
        try:
            code = main([str(a) for a in args])
        finally:
            root.handlers = saved
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["repalign", *args], code, out.out, out.err)

    return run


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_bytes(SECRET)
    return path


def _ids(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


def _hashes(ids: list[str]) -> list[str]:
    return [hashlib.sha256(i.encode()).hexdigest() for i in ids]


def _cache(path: Path, n: int = 2, dim: int = 4) -> Path:
    ids = _ids(n)
    with CacheWriter(path, "m", {"options": {}}, ["l"]) as w:
        w.append(ids, _hashes(ids), {"l": np.ones((n, dim), np.float32)})
    return path


def _crafted_cache(tmp_path: Path, name: str, make) -> Path:
    """A real cache whose pooled layer ``l`` was replaced by ``make(group, shape)``."""
    path = shutil.copy(_cache(tmp_path / f"{name}-src.h5"), tmp_path / name)
    with h5py.File(path, "r+") as f:
        group = f["models/m/pooled"]
        shape = group["l"].shape
        del group["l"]
        make(group, shape)
    return Path(path)


def _no_secret_anywhere(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and path.name != "secret.txt":
            assert SECRET[:16] not in path.read_bytes(), path


def _one_line_error(res, *fragments: str) -> None:
    assert res.returncode == 1, res
    assert res.stderr.startswith("repalign: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    for fragment in fragments:
        assert fragment in res.stderr, res.stderr


def _anndata_file(path: Path, n: int = 3) -> Path:
    anndata = pytest.importorskip("anndata")
    adata = anndata.AnnData(obs={"content_hash": ["0" * 64] * n})
    adata.obs_names = _ids(n)
    adata.obsm["emb"] = np.ones((n, 4), np.float32)
    adata.write_h5ad(path)
    return path


def _replace_obsm(path: Path, make) -> None:
    with h5py.File(path, "r+") as f:
        attrs = dict(f["obsm/emb"].attrs)
        shape = f["obsm/emb"].shape
        del f["obsm/emb"]
        ds = make(f["obsm"], shape)
        ds.attrs.update(attrs)


# ---- another file's bytes --------------------------------------------------------------------------


def test_external_storage_in_feature_files_is_refused_and_no_byte_is_read(tmp_path, secret, run_main):
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.create_dataset("s0", shape=(4,), dtype="f4", external=[(str(secret), 0, 16)])
    h5ad = _anndata_file(tmp_path / "ext.h5ad")
    _replace_obsm(h5ad, lambda g, shape: g.create_dataset("emb", shape=(3, 4), dtype="f4",
                                                          external=[(str(secret), 0, 48)]))
    cache = tmp_path / "c.h5"
    for name in ("ext.h5", "ext.h5ad"):
        res = run_main("cache", "import", tmp_path / name, "--model", "m", "-o", cache)
        _one_line_error(res, f"{tmp_path / name}: dataset", "another file", "secret.txt", "refused")
    assert not cache.exists()
    _no_secret_anywhere(tmp_path)


def test_a_cache_with_external_storage_is_refused_and_export_copies_nothing(tmp_path, secret, run_main):
    crafted = _crafted_cache(tmp_path, "ext-cache.h5", lambda g, shape: g.create_dataset(
        "l", shape=shape, dtype="f4", external=[(str(secret), 0, 32)]))
    res = run_main("cache", "export", crafted, "--model", "m", "-o", tmp_path / "out.npz")
    _one_line_error(res, "dataset '/models/m/pooled/l' keeps its values in another file", "secret.txt")
    assert not (tmp_path / "out.npz").exists()
    with Cache(crafted) as c, pytest.raises(CacheError, match="external storage"):
        c.read_layer("m", "l")
    _no_secret_anywhere(tmp_path)


def test_virtual_datasets_are_refused_in_feature_files_and_caches(tmp_path, run_main):
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["a"] = np.arange(8.0)
    with h5py.File(tmp_path / "vds.h5", "w") as f:  # importing this crashed h5py (SIGSEGV)
        for key in ("s0", "s1"):
            layout = h5py.VirtualLayout(shape=(8,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(tmp_path / "src.h5"), "a", shape=(8,))
            f.create_virtual_dataset(key, layout)
    res = run_main("cache", "import", tmp_path / "vds.h5", "--model", "m", "-o", tmp_path / "c.h5")
    _one_line_error(res, "dataset '/s0' is a virtual dataset mapped from", "src.h5")

    def virtual(group, shape):
        layout = h5py.VirtualLayout(shape=shape, dtype="f4")
        layout[0, :] = h5py.VirtualSource(str(tmp_path / "src.h5"), "a", shape=(8,))[: shape[1]]
        group.create_virtual_dataset("l", layout)

    crafted = _crafted_cache(tmp_path, "vds-cache.h5", virtual)
    with Cache(crafted) as c, pytest.raises(CacheError, match="virtual dataset"):
        c.read_layer("m", "l")  # it read back as zeros


def test_links_are_refused_as_what_they_are(tmp_path, run_main):
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["a"] = np.arange(8.0)
    cases = {
        "elink.h5": (h5py.ExternalLink(str(tmp_path / "src.h5"), "/a"), "is an external link to"),
        "dangling.h5": (h5py.SoftLink("/nowhere"), "is a soft link to '/nowhere'"),
        "inside.h5": (h5py.SoftLink("/s1"), "is a soft link to '/s1'"),
    }
    for name, (link, fragment) in cases.items():
        with h5py.File(tmp_path / name, "w") as f:
            f["s1"] = np.zeros(3)
            f["s0"] = link
        res = run_main("cache", "import", tmp_path / name, "--model", "m", "-o", tmp_path / "c.h5")
        _one_line_error(res, "member '/s0'", fragment, "refused")  # it said "member 's0' is a group"

    def linked(group, shape):
        group["l"] = h5py.ExternalLink(str(tmp_path / "src.h5"), "/a")

    crafted = _crafted_cache(tmp_path, "link-cache.h5", linked)
    with pytest.raises(CacheError, match=r"member '/models/m/pooled/l' is an external link to .*src.h5:/a"):
        Cache(crafted)
    assert not (tmp_path / "c.h5").exists()


def test_compound_object_and_reference_dtypes_are_refused(tmp_path, run_main):
    with h5py.File(tmp_path / "compound.h5", "w") as f:
        f["s0"] = np.zeros(3, dtype=[("a", "f4"), ("b", "i4")])
    with h5py.File(tmp_path / "vlen.h5", "w") as f:
        ds = f.create_dataset("s0", shape=(2,), dtype=h5py.vlen_dtype(np.int32))
        ds[0] = np.arange(3)
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        f["x"] = np.zeros(2)
        f.create_dataset("s0", data=[f["x"].ref], dtype=h5py.ref_dtype)
    for name, kind in (("compound.h5", "compound"), ("vlen.h5", "variable-length"), ("ref.h5", "reference")):
        res = run_main("cache", "import", tmp_path / name, "--model", "m", "-o", tmp_path / "c.h5")
        _one_line_error(res, f"has a {kind} dtype", "refused")
    crafted = _crafted_cache(tmp_path, "compound-cache.h5", lambda g, shape: g.create_dataset(
        "l", shape=(shape[0],), dtype=[("a", "f4"), ("b", "f4")]))
    with Cache(crafted) as c, pytest.raises(CacheError, match="compound dtype"):
        c.read_layer("m", "l")


# ---- decompression bombs ---------------------------------------------------------------------------


def _npy_header(shape, descr="<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_declared_sizes_beyond_the_bound_are_refused_before_any_allocation(tmp_path, run_main):
    with h5py.File(tmp_path / "bomb.h5", "w") as f:  # 1.6 KB asking for 93 GiB
        f.create_dataset("s0", shape=(10**5, 250_000), dtype="f4", chunks=(1000, 1000), compression="gzip")
    with zipfile.ZipFile(tmp_path / "lies.npz", "w") as z:  # a header claiming 95 GiB
        z.writestr("x.npy", _npy_header((100_000, 128_000)) + bytes(64))
    (tmp_path / "lies.npy").write_bytes(_npy_header((100_000, 128_000)) + bytes(64))
    with zipfile.ZipFile(tmp_path / "deflated.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("x.npy", "w", force_zip64=True) as w:  # 1.1 GiB of zeros in 5 MB
            w.write(_npy_header((290_000, 1024), "<f4"))
            for _ in range(290_000 * 1024 * 4 // (1 << 24) + 1):
                w.write(bytes(1 << 24))
    h5ad = _anndata_file(tmp_path / "bomb.h5ad")
    _replace_obsm(h5ad, lambda g, shape: g.create_dataset("emb", shape=(3, 10**10 * 2), dtype="f4",
                                                          chunks=(1, 1 << 16), compression="gzip"))
    (tmp_path / "ids.txt").write_text("a\nb\n")
    cases = {
        "bomb.h5": ("dataset '/s0' (100000, 250000) float32 declares 93.1 GiB but stores", "decompression bomb"),
        "lies.npz": ("entry 'x' declares shape (100000, 128000) float64 (95.4 GiB) but holds 64 B", "header lies"),
        "lies.npy": ("declares shape (100000, 128000) float64 (95.4 GiB) but holds 64 B", "truncated"),
        "deflated.npz": ("entry 'x' (290000, 1024) float32 declares 1.1 GiB but stores", "decompression bomb"),
        "bomb.h5ad": ("dataset '/obsm/emb' (3, 20000000000) float32 declares 223.5 GiB", "decompression bomb"),
    }
    for name, fragments in cases.items():
        res = []
        peak = _peak_bytes(lambda: res.append(run_main("cache", "import", tmp_path / name, "--model", "m",
                                                       "--ids", tmp_path / "ids.txt", "-o", tmp_path / "c.h5")))
        _one_line_error(res[0], *fragments)
        assert peak < 64 << 20, (name, peak)
        if "bomb" in fragments[1]:
            assert "--max-member-size" in res[0].stderr  # the flag that raises the bound, not the parameter
    crafted = _crafted_cache(tmp_path, "bomb-cache.h5", lambda g, shape: g.create_dataset(
        "l", shape=(shape[0], 10**10), dtype="f4", chunks=(1, 1 << 18)))
    res = run_main("cache", "export", crafted, "--model", "m", "-o", tmp_path / "out.npz")
    _one_line_error(res, "declares 74.5 GiB but stores 0 B on disk", "--max-member-size 80000000000")
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "out.npz").exists()


def test_max_member_bytes_is_a_plain_size_limit(tmp_path, run_main):
    np.savez(tmp_path / "f.npz", ids=np.array(["a", "b"]), x=np.ones((2, 64)))
    with pytest.raises(RepalignError, match=r"entry 'x' \(2, 64\) float64 declares 1.0 KiB, more than "
                                            r"max_member_bytes=100; pass max_member_bytes=1024"):
        import_features(tmp_path / "f.npz", tmp_path / "c.h5", "m", max_member_bytes=100)
    assert not (tmp_path / "c.h5").exists()
    res = run_main("cache", "import", tmp_path / "f.npz", "-m", "m", "-o", tmp_path / "c.h5", "--max-member-size", "1K")
    assert res.returncode == 0, res.stderr
    with Cache(tmp_path / "c.h5") as c:
        np.testing.assert_array_equal(c.read_layer("m", "x"), np.ones((2, 64)))
    res = run_main("cache", "import", tmp_path / "f.npz", "-m", "m2", "-o", tmp_path / "c.h5", "--max-member-size", "x")
    _one_line_error(res, "--max-member-size 'x' is not a size")
    out = export_features(tmp_path / "c.h5", "m", tmp_path / "out.npz", max_member_bytes=1 << 20)
    assert np.load(out)["x"].shape == (2, 64)
