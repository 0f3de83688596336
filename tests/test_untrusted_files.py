"""Feature files and caches from strangers (embeddings_cache.untrusted): real hostile files crafted with
h5py, numpy, torch and anndata are refused in one line before any value is read, so no byte of
another file reaches a cache or an export, nothing crashes and nothing large is allocated."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import stat
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
    # refused before any value is read: the layers to export, held together, exceed half the memory
    _one_line_error(res, "the 1 layers to export take 74.5 GiB in memory together", "--max-member-size 80000000000")
    res = run_main("cache", "export", crafted, "--model", "m", "-o", tmp_path / "out.npz", "--max-member-size", "1G")
    _one_line_error(res, "declares 74.5 GiB, more than --max-member-size 1073741824")
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


# ---- ids: checksummed, checked against the id index ---------------------------------------------------


def _flip_id_byte(path: Path, stored: str, damaged: str) -> None:
    """Replace one stored id's bytes in the file itself (the ids live in HDF5's global heap)."""
    raw = path.read_bytes()
    assert raw.count(stored.encode()) == 1 and len(stored) == len(damaged)
    path.write_bytes(raw.replace(stored.encode(), damaged.encode()))


def test_a_flipped_byte_in_a_stored_id_is_an_error_not_a_dropped_sample(tmp_path):
    path = tmp_path / "c.h5"
    ids = [f"sample-{i:05d}" for i in range(3000)]
    with CacheWriter(path, "m", {"options": {}}, ["l"]) as w:
        w.append(ids, _hashes(ids), {"l": np.ones((3000, 2), np.float32)})
    _flip_id_byte(path, "sample-01234", "sample-0I234")
    with Cache(path) as c:
        with pytest.raises(CacheError, match=r"model 'm' in .*c.h5: the stored id of row 1234 \('sample-0I234'\) "
                                             r"does not match its checksum \(1 such row\(s\)\); the file is damaged"):
            c.ids("m")
        with pytest.raises(CacheError, match="row 1234"):  # looked up by its true id: damaged, not "missing"
            c.read_layer("m", "l", ids=["sample-01234"])
        np.testing.assert_array_equal(c.read_layer("m", "l", ids=["sample-00007"]), np.ones((1, 2)))
    with pytest.raises(CacheError, match="row 1234"):  # a writer resuming the model checks them too
        CacheWriter(path, "m", {"options": {}}, ["l"])


def test_ids_of_journal_parts_are_checksummed_and_old_files_stay_readable(tmp_path):
    path = tmp_path / "c.h5"
    ids = ["alpha-1", "alpha-2"]
    w = CacheWriter(path, "m", {"options": {}}, ["l"])
    w.append(ids, _hashes(ids), {"l": np.ones((2, 2), np.float32)})
    part = next(p for p in (tmp_path / "c.h5.parts").glob("*.h5") if b"alpha-2" in p.read_bytes())
    saved = part.read_bytes()
    _flip_id_byte(part, "alpha-2", "alpha-Z")
    with pytest.raises(CacheError, match=r"journal part .*: the stored id of row 1 \('alpha-Z'\)"):
        Cache(path)
    part.write_bytes(saved)
    w.close()
    # a cache written before ids had checksums: parts without id_keys, a model without an id index
    old = tmp_path / "old.h5"
    with CacheWriter(old, "m", {"options": {}}, ["l"]) as w:
        w.append(ids, _hashes(ids), {"l": np.ones((2, 2), np.float32)})
    with h5py.File(old, "r+") as f:
        del f["models/m/id_index"]
    with Cache(old) as c:
        assert c.ids("m") == ids
    w = CacheWriter(old, "m", {"options": {}}, ["l"])
    w.append(["beta"], _hashes(["beta"]), {"l": np.ones((1, 2), np.float32)})
    for part in (tmp_path / "old.h5.parts").glob("*.h5"):
        with h5py.File(part, "r+") as f:
            del f["id_keys"]
    with Cache(old) as c:
        assert c.ids("m") == ids + ["beta"]
    w.close()
    with Cache(old) as c:
        assert c.ids("m") == ids + ["beta"] and c.read_layer("m", "l", ids=["beta"]).shape == (1, 2)


# ---- one-line errors naming the file, the member and the fix ------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: sparse CSR is beta, quantized tensors deprecated
def test_unreadable_npy_npz_and_pt_files_are_one_line_errors_saying_what_they_are(tmp_path, run_main):
    torch = pytest.importorskip("torch")
    ones = torch.ones(3, 4)
    files = {
        "text.npz": (b"not a zip", "not a readable .npz file (File is not a zip file)"),
        "text.npy": (b"plain text, no header", "is not a NumPy .npy array (no NumPy header)"),
        "cut.npy": (_npy_header((3, 4)) + bytes(40), "declares shape (3, 4) float64 (96 B) but holds 40 B"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    np.savez(tmp_path / "latin1.npz", ids=np.array([b"ok", b"\xff\xfe"]), x=np.zeros((2, 3)))
    files["latin1.npz"] = (b"", "'ids' entry 1 (b'\\xff\\xfe') is not UTF-8 text; save the ids as str")
    (tmp_path / "zero.npy").symlink_to("/dev/zero")
    files["zero.npy"] = (b"", "is not a regular file (a device or a pipe)")
    tensors = {"coo.pt": (ones.to_sparse(), "is a sparse tensor (torch.sparse_coo); save a dense one"),
               "csr.pt": ({"emb": ones.to_sparse_csr()}, "entry 'emb' is a sparse tensor (torch.sparse_csr)"),
               "meta.pt": (torch.empty(3, 4, device="meta"), "is on the meta device, so it holds no values"),
               "quantized.pt": (torch.quantize_per_tensor(ones, 0.1, 0, torch.qint8),
                                "is a quantized tensor (torch.qint8); save tensor.dequantize()")}
    for name, (value, fragment) in tensors.items():
        torch.save(value, tmp_path / name)
        files[name] = (b"", fragment)
    (tmp_path / "ids.txt").write_text("a\nb\nc\n")
    for name, (_, fragment) in files.items():
        res = run_main("cache", "import", tmp_path / name, "-m", "m", "--ids", tmp_path / "ids.txt", "-o",
                       tmp_path / "c.h5")
        _one_line_error(res, str(tmp_path / name), fragment)
        assert "pickle" not in res.stderr, name  # they said "holds Python objects that only pickle can load"
    assert not (tmp_path / "c.h5").exists()


def _damage_first_chunk(path: Path, dataset: str) -> None:
    with h5py.File(path, "r") as f:
        chunk = f[dataset].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset + 10:chunk.byte_offset + 40] = b"\x07" * 30
    path.write_bytes(bytes(raw))


def test_a_damaged_chunk_is_reported_with_the_file_and_the_dataset(tmp_path, run_main):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "per-id.h5", "w") as f:
        for i in range(3):
            f.create_dataset(f"s{i}", data=rng.normal(size=(50, 64)).astype("f4"), compression="gzip")
    _damage_first_chunk(tmp_path / "per-id.h5", "s1")
    res = run_main("cache", "import", tmp_path / "per-id.h5", "-m", "m", "-o", tmp_path / "c.h5")
    _one_line_error(res, "cannot read rows 0-49 of dataset '/s1' of", "per-id.h5", "filter returned failure",
                    "write it again")
    cache = _cache(tmp_path / "damaged.h5", n=5000)
    _damage_first_chunk(cache, "models/m/ids")  # lzf, no checksum: HDF5 said only "filter returned failure"
    for args in (("cache", "export", cache, "-m", "m", "-o", tmp_path / "out.npz"),
                 ("compare", cache, "--a", "m", "--b", "m")):
        _one_line_error(run_main(*args), "cannot read the ids of model 'm' in", "damaged.h5", "the file is damaged")
    assert not (tmp_path / "out.npz").exists()


def test_values_beyond_the_storage_dtype_are_refused_before_writing_and_name_the_flag(tmp_path, run_main):
    x = np.ones((3000, 4))
    x[2000, 1] = 1e300  # finite in the file, infinite as float32
    np.save(tmp_path / "big.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(_ids(3000)))
    res = run_main("cache", "import", tmp_path / "big.npy", "-m", "imp", "--ids", tmp_path / "ids.txt",
                   "-o", tmp_path / "c.h5")
    _one_line_error(res, "layer 'layer.0' of sample 's2000' holds values beyond the float32 range")
    assert not (tmp_path / "c.h5").exists()  # found before the first batch was written
    x[2000, 1] = 1e5
    np.save(tmp_path / "big.npy", x)
    with pytest.raises(RepalignError, match=r"beyond the float16 range \(\+-65504\); import with "
                                            r"store_dtype='float32'"):
        import_features(tmp_path / "big.npy", tmp_path / "c.h5", "imp", ids=_ids(3000), store_dtype="float16")
    res = run_main("cache", "import", tmp_path / "big.npy", "-m", "imp", "--ids", tmp_path / "ids.txt",
                   "-o", tmp_path / "c.h5", "--store-dtype", "float16")
    _one_line_error(res, "import with --store-dtype float32")
    # the writer's own message, as extract shows it, names the flag too
    with CacheWriter(tmp_path / "w.h5", "m", {"options": {}}, ["l"], dtype="float16") as w:
        with pytest.raises(CacheError, match="use dtype='float32'") as info:
            w.append(["a"], _hashes(["a"]), {"l": np.full((1, 2), 1e5)})
    from repalign.cli import cli_message

    assert cli_message(info.value).endswith("use --store-dtype float32")


def test_new_journal_folders_and_lock_files_get_the_mode_and_group_of_the_cache(tmp_path):
    path = _cache(tmp_path / "c.h5")
    shutil.rmtree(tmp_path / "c.h5.parts")
    (tmp_path / "c.h5.lock").unlink()
    gid = next(g for g in (1, 2, 100) if g != os.getgid()) if os.getuid() == 0 else os.getgid()
    if os.getuid() == 0:
        os.chown(path, -1, gid)  # root:daemon
    os.chmod(path, 0o640)
    with CacheWriter(path, "m", {"options": {}}, ["l"]) as w:
        w.append(["z"], _hashes(["z"]), {"l": np.ones((1, 4), np.float32)})
    parts, lock = os.stat(tmp_path / "c.h5.parts"), os.stat(tmp_path / "c.h5.lock")
    assert (stat.S_IMODE(parts.st_mode), parts.st_gid) == (0o750, gid)  # they were 750 root:root
    assert (stat.S_IMODE(lock.st_mode), lock.st_gid) == (0o640, gid)  # and 644 root:root


# ---- bounded work per structure ----------------------------------------------------------------------------


def test_a_degenerate_crystal_is_a_one_line_error_naming_it_and_skippable(tmp_path, run_main):
    ase = pytest.importorskip("ase")
    from ase.build import bulk
    from ase.io import write

    # one Na atom in a 0.3 A cube: ~33,500 neighbours within 6 A, which made CHGNet's graph grow without end
    frames = [bulk("Cu", "fcc", a=3.6), ase.Atoms("Na", cell=[0.3] * 3, pbc=True), bulk("C", "diamond", a=3.57)]
    for frame, name in zip(frames, ("cu", "squeezed", "diamond")):
        frame.info["id"] = name
    write(tmp_path / "s.extxyz", frames, format="extxyz")
    res = run_main("extract", tmp_path / "s.extxyz", "-m", "elements", "-o", tmp_path / "s.h5", "-q")
    _one_line_error(res, "squeezed: 1 atom(s) in a 0.027 A^3 cell would have about 33,510 neighbours per atom",
                    "pass --skip-invalid")
    res = run_main("extract", tmp_path / "s.extxyz", "-m", "elements", "-o", tmp_path / "s.h5", "-q", "--skip-invalid")
    assert res.returncode == 0 and "skipped 1 invalid samples: squeezed" in res.stdout, res.stderr
    with Cache(tmp_path / "s.h5") as c:
        assert c.ids("elements") == ["cu", "diamond"]  # diamond, the densest real crystal, passes
    try:
        from repalign.models import get_adapter

        chgnet = get_adapter("chgnet-0.3.0")  # its checks run before any weight is loaded
    except RepalignError:
        return
    from repalign.errors import InvalidInput
    from repalign.inputs import read_inputs

    squeezed = next(r for r in read_inputs(tmp_path / "s.extxyz") if r.id == "squeezed")
    with pytest.raises(InvalidInput, match="squeezed: .* neighbours per atom within 6 A"):
        chgnet.validate(squeezed)


def test_pt_views_legacy_files_and_pickle_bombs_are_refused_before_values_are_read(tmp_path, run_main):
    torch = pytest.importorskip("torch")
    torch.save(torch.zeros(1).expand(200_000, 100_000), tmp_path / "zero-stride.pt")  # 4 B stored, 74.5 GiB declared
    torch.save({"emb": torch.zeros(7000).as_strided((3000, 4000), (1, 1))}, tmp_path / "overlap.pt")
    torch.save({"feats": torch.zeros(1).expand(5, 2, 4)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save([], tmp_path / "empty.pt")
    with zipfile.ZipFile(tmp_path / "empty.pt") as src, \
            zipfile.ZipFile(tmp_path / "pickle-bomb.pt", "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():  # PROTO 2, EMPTY_LIST, MARK, 2M x EMPTY_DICT, APPENDS, STOP: 2 MiB in 2 KiB
            bomb = b"\x80\x02]q\x00(" + b"}" * (2 << 20) + b"e."
            z.writestr(info.filename, bomb if info.filename.endswith("data.pkl") else src.read(info))
    (tmp_path / "ids.txt").write_text("a\nb\nc\n")
    cases = {
        "zero-stride.pt": "the tensor (200000, 100000) float32 declares 74.5 GiB but its storage holds 4 B (a view "
                          "with zero strides)",
        "overlap.pt": "entry 'emb' (3000, 4000) float32 declares 45.8 MiB but its storage holds 27.3 KiB (a view with "
                      "overlapping strides)",
        "legacy.pt": "a legacy (pre-1.6, non-zip) torch file",
        "pickle-bomb.pt": "member 'empty/data.pkl' (the pickled structure) holds 2.0 MiB in",
    }
    for name, fragment in cases.items():
        res = []
        peak = _peak_bytes(lambda: res.append(run_main("cache", "import", tmp_path / name, "-m", "m", "--ids",
                                                       tmp_path / "ids.txt", "-o", tmp_path / "c.h5")))
        _one_line_error(res[0], str(tmp_path / name), fragment)
        assert peak < 64 << 20, (name, peak)
    assert not (tmp_path / "c.h5").exists()
    torch.save({"emb": torch.arange(12.0).reshape(4, 3).T}, tmp_path / "transposed.pt")  # not contiguous, not a bomb
    res = run_main("cache", "import", tmp_path / "transposed.pt", "-m", "m", "--ids", tmp_path / "ids.txt",
                   "-o", tmp_path / "c.h5")
    assert res.returncode == 0, res.stderr
    with Cache(tmp_path / "c.h5") as c:
        np.testing.assert_array_equal(c.read_layer("m", "emb"), np.arange(12.0).reshape(4, 3).T)


def test_crafted_token_offsets_are_one_line_errors_naming_the_dataset(tmp_path):
    ids = _ids(4)
    path = tmp_path / "tok.h5"
    with CacheWriter(path, "m", {"options": {}}, ["l"], token_layers=["t"]) as w:
        w.append(ids, _hashes(ids), {"l": np.ones((4, 8), np.float32)}, tokens={"t": [np.ones((3, 8), np.float32)] * 4})
    with Cache(path) as c:
        assert c.read_tokens("m", "t")[0].shape == (12, 8)
    cases = {  # offsets written into a real cache -> what the error says
        "[0, 3, 6, 9, 10**12]": "runs from 0 to 1000000000000, not from 0 to the 12 rows of its data",
        "[0, 3, -5, 9, 12]": "decreases somewhere",
        "[5, 3, 6, 9, 12]": "runs from 5 to 12",
        "np.array([0, 3, 6, 9, 12], 'f8')": "has dtype float64 and shape (5,); offsets are a 1-D array of integers",
        "[0, 3, 12]": "holds 3 offsets for 4 samples; it needs 5",
    }
    for values, fragment in cases.items():
        crafted = shutil.copy(path, tmp_path / "crafted.h5")
        with h5py.File(crafted, "r+") as f:
            del f["models/m/tokens/t/offsets"]
            f["models/m/tokens/t/offsets"] = np.asarray(eval(values))
        for read in ("read_tokens", "read_token_counts"):
            with Cache(crafted) as c, pytest.raises(CacheError) as err:
                getattr(c, read)("m", "t")
            message = str(err.value)
            assert "\n" not in message and str(crafted) in message and "'/models/m/tokens/t/offsets'" in message
            assert fragment in message, (values, message)


def test_short_layers_bad_index_rows_encrypted_npz_and_infinite_sizes_are_one_line_errors(tmp_path, run_main):
    ids = _ids(4)
    path = _cache(tmp_path / "c.h5", n=4)

    def short(f):
        del f["models/m/pooled/l"]
        f["models/m/pooled/l"] = np.ones((2, 4), np.float32)

    def rows(values):
        return lambda f: f["models/m/id_index/rows"].__setitem__(slice(None), np.array(values))

    cases = {"short.h5": (short, "dataset '/models/m/pooled/l' of model 'm' has shape (2, 4) for 4 samples"),
             "huge-row.h5": (rows([10**12, 1, 2, 3]), "'/models/m/id_index/rows' gives row 1000000000000, outside"),
             "negative-row.h5": (rows([-5, 1, 2, 3]), "'/models/m/id_index/rows' gives row -5, outside the 4")}
    for name, (mutate, fragment) in cases.items():
        crafted = shutil.copy(path, tmp_path / name)
        with h5py.File(crafted, "r+") as f:
            mutate(f)
        with Cache(crafted) as c, pytest.raises(CacheError, match=re.escape(fragment)):
            c.read_layer("m", "l", ids=ids)  # by id: through the id index
        with Cache(crafted) as c, pytest.raises(CacheError) as err:  # the crafted entry need not be looked up
            c.read_layer("m", "l", ids=["s3", "s0"])
        assert "\n" not in str(err.value) and str(crafted) in str(err.value)
    _one_line_error(run_main("cache", "export", tmp_path / "short.h5", "-m", "m", "-o", tmp_path / "out.npz"),
                    cases["short.h5"][1])
    with zipfile.ZipFile(tmp_path / "enc.npz", "w") as z:
        z.writestr("x.npy", _npy_header((2, 3)) + bytes(48))
    raw = bytearray((tmp_path / "enc.npz").read_bytes())
    for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the "encrypted" bit of the flags
        raw[raw.index(signature) + at] |= 0x1  # zipfile then raises RuntimeError: password required
    (tmp_path / "enc.npz").write_bytes(bytes(raw))
    (tmp_path / "ids.txt").write_text("\n".join(ids[:2]) + "\n")
    res = run_main("cache", "import", tmp_path / "enc.npz", "-m", "m", "--ids", tmp_path / "ids.txt", "-o",
                   tmp_path / "new.h5")
    _one_line_error(res, str(tmp_path / "enc.npz"), "is encrypted, password required", "without a password")
    for size in ("inf", "nan", "1e400"):
        res = run_main("cache", "import", tmp_path / "enc.npz", "-m", "m", "-o", tmp_path / "new.h5",
                       "--max-member-size", size)
        _one_line_error(res, f"--max-member-size {size!r} is not a size")
    assert not (tmp_path / "new.h5").exists()


def test_h5ad_sparse_matrices_count_at_their_dense_size_and_hard_links_are_refused(tmp_path, run_main, monkeypatch):
    anndata = pytest.importorskip("anndata")
    sparse = pytest.importorskip("scipy.sparse")
    import embeddings_cache.untrusted as untrusted

    n = 100
    adata = anndata.AnnData(X=sparse.csr_matrix((n, 2500), dtype=np.float32))
    adata.obs_names = _ids(n)
    for k in range(6):  # 1 MB each when dense, a few bytes stored
        adata.layers[f"L{k}"] = sparse.csr_matrix((n, 2500), dtype=np.float32)
    adata.write_h5ad(tmp_path / "sparse.h5ad")
    monkeypatch.setattr(untrusted, "available_memory", lambda: 4_000_000)  # half: 2 MB, below 7 dense MB
    _one_line_error(run_main("cache", "import", tmp_path / "sparse.h5ad", "-m", "m", "-o", tmp_path / "c.h5"),
                    "its datasets and the dense sizes of its sparse matrices together declares 6.7 MiB, more than half "
                    "the available memory")
    monkeypatch.setattr(untrusted, "available_memory", lambda: 1 << 34)
    _one_line_error(run_main("cache", "import", tmp_path / "sparse.h5ad", "-m", "m", "-o", tmp_path / "c.h5",
                             "--max-member-size", "500K"),
                    "sparse matrix '/X' (100, 2500) float32 (dense) declares 976.6 KiB, more than")
    h5ad = _anndata_file(tmp_path / "hard.h5ad")
    with h5py.File(h5ad, "r+") as f:
        for k in range(3):
            f[f"obsm/copy{k}"] = f["obsm/emb"]  # one dataset, four names
    _one_line_error(run_main("cache", "import", h5ad, "-m", "m", "-o", tmp_path / "c.h5"),
                    "member '/obsm/copy0' has 4 names (hard links); refused")
    assert not (tmp_path / "c.h5").exists()
    res = run_main("cache", "import", _anndata_file(tmp_path / "plain.h5ad"), "-m", "m", "-o", tmp_path / "c.h5")
    assert res.returncode == 0, res.stderr


def test_parquet_id_columns_are_plain_strings_bounded_by_their_decoded_size(tmp_path, run_main, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import embeddings_cache.untrusted as untrusted

    n = 2_000
    layer = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n, np.float32)), 1)
    one_long_id = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array(["x" * 10_000]))
    pq.write_table(pa.table({"id": one_long_id, "l": layer}), tmp_path / "typed.parquet")
    # plain strings, dictionary-encoded by the writer: 20 MB of ids in a file of a few KB
    pq.write_table(pa.table({"id": pa.array(["x" * 10_000] * n), "l": layer}), tmp_path / "bomb.parquet")
    assert (tmp_path / "bomb.parquet").stat().st_size < 100_000
    monkeypatch.setattr(untrusted, "available_memory", lambda: 20 << 20)  # half: 10 MiB
    _one_line_error(run_main("cache", "import", tmp_path / "typed.parquet", "-m", "m", "-o", tmp_path / "c.h5"),
                    "column 'id' has type dictionary<values=string")
    res = run_main("cache", "import", tmp_path / "bomb.parquet", "-m", "m", "-o", tmp_path / "c.h5")
    _one_line_error(res, "columns ['id'] as text (2000 rows) declares 19.2 MiB, more than half the available memory")
    res = run_main("cache", "import", tmp_path / "bomb.parquet", "-m", "m", "-o", tmp_path / "c.h5",
                   "--max-member-size", "1M")
    _one_line_error(res, "columns ['id'] as text take 19.2 MiB, more than --max-member-size 1048576")
    assert not (tmp_path / "c.h5").exists()


def test_the_writer_checks_the_id_index_like_the_reader_before_reading_it(tmp_path, secret):
    for name in ("keys", "rows"):
        path = _cache(tmp_path / f"{name}.h5", n=4)
        with h5py.File(path, "r+") as f:
            index = f["models/m/id_index"]
            dtype = index[name].dtype
            del index[name]  # its values would come from another file of the machine
            index.create_dataset(name, shape=(4,), dtype=dtype, external=[(str(secret), 0, 32)])
        for make in (lambda: Cache(path).read_layer("m", "l", ids=["s0"]),
                     lambda: CacheWriter(path, "m", {"options": {}}, ["l"]).close()):
            with pytest.raises(CacheError) as err:
                make()
            message = str(err.value)
            assert "\n" not in message and f"dataset '/models/m/id_index/{name}' keeps its values in another " \
                f"file ({secret}, HDF5 external storage)" in message, message


def test_opening_checks_a_journal_parts_ids_not_its_layers_which_are_checked_when_read(tmp_path, secret):
    path = tmp_path / "c.h5"
    w = CacheWriter(path, "m", {"options": {}}, ["l"])
    w.append(["a", "b"], _hashes(["a", "b"]), {"l": np.ones((2, 2), np.float32)})
    part = next(p for p in (tmp_path / "c.h5.parts").glob("*.h5") if b"pooled" in p.read_bytes())
    saved = part.read_bytes()
    with h5py.File(part, "r+") as f:  # the batch's layer would read another file of the machine
        del f["pooled/l"]
        f.create_dataset("pooled/l", shape=(2, 2), dtype="f4", external=[(str(secret), 0, 16)])
    with Cache(path) as c:  # opening reads ids and hashes only
        assert c.ids("m") == ["a", "b"]
        with pytest.raises(CacheError, match=r"dataset '/pooled/l' keeps its values in another file"):
            c.read_layer("m", "l")
    part.write_bytes(saved)
    with h5py.File(part, "r+") as f:  # ids are read at open: refused then
        del f["hashes"]
        f.create_dataset("hashes", shape=(2,), dtype="S64", external=[(str(secret), 0, 128)])
    with pytest.raises(CacheError, match=r"dataset '/hashes' keeps its values in another file"):
        Cache(path)
    part.write_bytes(saved)
    w.close()
    with Cache(path) as c:
        np.testing.assert_array_equal(c.read_layer("m", "l"), np.ones((2, 2)))


def test_cache_reads_compressible_layers_and_bounds_what_a_read_allocates(tmp_path, monkeypatch):
    import embeddings_cache.untrusted as untrusted

    ids = _ids(2000)
    with CacheWriter(tmp_path / "c.h5", "m", {"options": {}}, ["l"], compression="gzip") as w:
        w.append(ids, _hashes(ids), {"l": np.zeros((2000, 1000), np.float32)})  # 7.6 MiB, stored in ~40 KiB
    monkeypatch.setattr(untrusted, "MEMBER_BYTES", 1 << 20)  # the 1 GiB of the ratio rule, scaled down
    with Cache(tmp_path / "c.h5") as c:  # a gzip layer of the tool's own: read, not taken for a bomb
        assert c.read_layer("m", "l").shape == (2000, 1000)
    monkeypatch.setattr(untrusted, "available_memory", lambda: 10 << 20)  # half: 5 MiB
    with Cache(tmp_path / "c.h5") as c:
        with pytest.raises(CacheError) as err:
            c.read_layer("m", "l")
        assert str(err.value) == (f"{tmp_path / 'c.h5'}: reading '/models/m/pooled/l' of model 'm' needs 7.6 MiB for "
                                  "(2000, 1000) float32, more than half the available memory (5.0 MiB); read fewer "
                                  "samples or layers at a time, or free memory")
        assert c.read_layer("m", "l", ids=ids[:100]).shape == (100, 1000)  # what is allocated is bounded
    with Cache(tmp_path / "c.h5", max_member_bytes=1 << 30) as c:  # a trusted cache: the plain limit only
        assert c.read_layer("m", "l").shape == (2000, 1000)


def test_h5ad_is_read_from_the_file_that_was_checked_even_if_the_path_is_replaced(tmp_path, secret, monkeypatch):
    import embeddings_cache.foreign as foreign

    checked = _anndata_file(tmp_path / "x.h5ad")  # obsm['emb'] of ones
    hostile = _anndata_file(tmp_path / "hostile.h5ad")
    _replace_obsm(hostile, lambda g, shape: g.create_dataset("emb", shape=shape, dtype="f4",
                                                             external=[(str(secret), 0, 48)]))
    check = foreign._check_loaded_whole

    def check_then_swap(f, path, max_member_bytes):
        check(f, path, max_member_bytes)
        os.replace(hostile, path)  # the path now names a file that reads /etc/shadow: too late to matter

    monkeypatch.setattr(foreign, "_check_loaded_whole", check_then_swap)
    import_features(checked, tmp_path / "c.h5", "m")
    with Cache(tmp_path / "c.h5") as c:
        np.testing.assert_array_equal(c.read_layer("m", "emb"), np.ones((3, 4)))
    _no_secret_anywhere(tmp_path)


def test_a_parquet_footer_whose_row_count_differs_from_its_row_groups_is_refused(tmp_path, run_main):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    layer = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(6, np.float32)), 2)
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": pa.array(["a", "b", "c"]), "l": layer}), path)
    raw = bytearray(path.read_bytes())
    start = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    # the file's num_rows (thrift compact: field 3, i64, zigzag 3 = 0x06, before the row_groups list 0x19)
    at = start + bytes(raw[start:-8]).index(b"\x16\x06\x19") + 1
    raw[at] = 0x08  # 4 rows, while its one row group holds 3
    path.write_bytes(bytes(raw))
    assert pq.ParquetFile(path).metadata.num_rows == 4
    _one_line_error(run_main("cache", "import", path, "-m", "m", "-o", tmp_path / "c.h5"),
                    "its row groups hold 3 rows but the footer says 4")
