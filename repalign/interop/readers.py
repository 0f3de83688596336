"""Readers of foreign feature files (see :mod:`repalign.interop`): each returns :class:`Features`,
validated (numbers, finite, consistent shapes) and not yet bound to samples."""

from __future__ import annotations

import json
import os
import pickle
import stat
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embeddings_cache import index_per_id_h5, read_per_id_h5
from embeddings_cache.foreign import open_foreign_h5
from embeddings_cache.untrusted import check_member_size, check_total_size, declared_bytes, size_text
from repalign.errors import RepalignError
from repalign.interop.formats import (
    CHECK_ROWS,
    ESM_BOS,
    ESM_HASH,
    ESM_LABEL,
    ESM_MEAN,
    ESM_TOKENS,
    FOLDER_INFO,
    NPZ_HASHES,
    NPZ_IDS,
    NPZ_OFFSETS,
    NPZ_TOKENS,
)
from repalign.interop.formats import first_line as _first
from repalign.pooling import pool_rows

#: largest pickled structure (data.pkl) of a .pt file, and its largest ratio to the bytes it stores
#: (checked above PICKLE_RATIO_FLOOR): whatever max_member_bytes says
PICKLE_BYTES = 64 << 20
PICKLE_RATIO = 10
PICKLE_RATIO_FLOOR = 1 << 20


@dataclass
class Features:
    """Features read from a file, before they are bound to samples.

    pooled: layer -> (n, D) per-sample vectors; tokens: layer -> n arrays (L_i, D); cls: layer ->
    (n, D) CLS/BOS vectors. ``named`` says whether the layer names come from the file (else they
    are ``layer.0`` ... and ``layers`` may rename them).
    """

    format: str
    n: int
    order: list[str]
    pooled: dict[str, np.ndarray] = field(default_factory=dict)
    tokens: dict[str, list[np.ndarray]] = field(default_factory=dict)
    cls: dict[str, np.ndarray] = field(default_factory=dict)
    ids: list[str] | None = None
    hashes: list[str] | None = None
    named: bool = True
    key: str | None = None  # the entry of the file the features came from (e.g. "feats")
    files: list[Path] | None = None  # the files read, for a folder (their digest is the source's)


def detect_format(path: str | os.PathLike) -> str:
    path = Path(path)
    if path.is_dir():
        return "esm-pt-folder"
    suffix = path.suffix.lower()
    formats = {".npy": "npy", ".npz": "npz", ".pt": "pt", ".pth": "pt", ".h5": "h5", ".hdf5": "h5", ".h5ad": "h5ad",
               ".parquet": "parquet"}
    if suffix not in formats:
        raise RepalignError(
            f"{path}: unknown feature file type {suffix or '(no suffix)'!r}; give .npy, .npz, .pt, a folder of ESM .pt "
            "files, a bio_embeddings .h5, an AnnData .h5ad or a .parquet written by 'repalign cache export'"
        )
    return formats[suffix]


def read_features(path: str | os.PathLike, pool: str = "mean", keep_tokens: bool = True,
                  max_member_bytes: int | None = None) -> Features:
    """Read a feature file (see the module docstring) into memory, validated: numbers, finite,
    consistent shapes. ``keep_tokens=False`` pools per-token rows while reading and keeps only
    the pooled vectors (less memory for large per-residue files).

    The file is data from elsewhere: nothing in it runs, its links and storage stay inside it, and
    no member is read whose declared size exceeds the allocation bound
    (:mod:`embeddings_cache.untrusted`; ``max_member_bytes`` replaces it by a plain size limit).
    """
    path = Path(path)
    if not path.exists():
        raise RepalignError(f"{path}: no such file or folder; check the path")
    fmt = detect_format(path)
    reader = {"npy": _read_npy, "npz": _read_npz, "pt": _read_pt, "esm-pt-folder": _read_esm_folder,
              "h5": _read_h5, "h5ad": _read_h5ad, "parquet": _read_parquet}[fmt]
    feats = reader(path, pool=pool, keep_tokens=keep_tokens, max_member_bytes=max_member_bytes)
    _check_features(feats, path)
    return feats


def _array(value: Any, path: Path, what: str) -> np.ndarray:
    """A float array from a numpy array or a torch tensor (any device, detached, bfloat16 widened)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = _tensor_values(value, path, what)
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise RepalignError(f"{path}: {what} has dtype {arr.dtype}; features must be numbers")
    return arr


def _tensor_values(tensor: Any, path: Path, what: str) -> np.ndarray:
    """A dense tensor's values as numpy; a one-line error for what holds none or is not dense."""
    layout = str(getattr(tensor, "layout", "torch.strided"))
    if layout != "torch.strided":
        raise RepalignError(f"{path}: {what} is a sparse tensor ({layout}); save a dense one (tensor.to_dense())")
    if getattr(tensor, "is_meta", False):
        raise RepalignError(f"{path}: {what} is on the meta device, so it holds no values; save the tensor "
                            "after computing it (not one made with device='meta')")
    if getattr(tensor, "is_quantized", False):
        raise RepalignError(f"{path}: {what} is a quantized tensor ({tensor.dtype}); save tensor.dequantize()")
    try:
        value = tensor.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    except (TypeError, RuntimeError, NotImplementedError) as e:
        raise RepalignError(f"{path}: {what} cannot be read as numbers ({_first(e)}); save a dense tensor of "
                            "numbers") from None


def _strings(value: Any, path: Path, what: str) -> list[str]:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise RepalignError(f"{path}: {what} must be a 1-D array of strings, got {arr.dtype} with shape {arr.shape}")
    if arr.dtype.kind == "U":
        return [str(x) for x in arr.tolist()]
    out = []
    for k, x in enumerate(arr.tolist()):
        try:
            out.append(x.decode("utf-8"))
        except UnicodeDecodeError:
            raise RepalignError(f"{path}: {what} entry {k} ({x[:40]!r}) is not UTF-8 text; save the ids as "
                                "str (numpy.array(ids, dtype=str))") from None
    return out


def _layers_from_array(arr: np.ndarray, path: Path, fmt: str, key: str | None = None) -> Features:
    """(N, D) -> one layer, (N, L, D) -> L layers named layer.0 ... (renamable)."""
    what = f"array {key!r}" if key else "the array"
    if arr.ndim == 2:
        mats = [arr]
    elif arr.ndim == 3:
        mats = [arr[:, i, :] for i in range(arr.shape[1])]
    else:
        raise RepalignError(
            f"{path}: {what} has shape {arr.shape}; give (samples, D) for one layer or (samples, layers, D)"
            + ("; a 1-D array holds one value per sample, not features" if arr.ndim == 1 else "")
        )
    names = [f"layer.{i}" for i in range(len(mats))]
    return Features(fmt, arr.shape[0], names, pooled=dict(zip(names, mats)), named=False, key=key)


def _npy_header(fh: Any, path: Path, what: str, strings: bool = False) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy stream ``fh``, refusing what is not plain numbers
    before any value is read."""
    try:
        version = np.lib.format.read_magic(fh)
    except ValueError:
        fh.seek(0)
        if fh.read(1) == b"\x80":
            raise RepalignError(f"{path}: refused, {what} is a Python pickle, which could run code; save a numeric "
                                "array with numpy.save") from None
        raise RepalignError(f"{path}: {what} is not a NumPy .npy array (no NumPy header); write it with "
                            "numpy.save") from None
    try:
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:  # 3.0 exists for structured dtypes with non-Latin-1 field names: not features
            raise ValueError(f"format version {version[0]}.{version[1]} holds structured data")
    except (ValueError, SyntaxError, TypeError, EOFError) as e:
        raise RepalignError(f"{path}: {what} has a damaged NumPy header ({_first(e)}); write it again with "
                            "numpy.save") from None
    if dtype.hasobject:
        raise RepalignError(f"{path}: refused, {what} holds Python objects that only pickle can load (which could "
                            "run code); save a numeric array")
    if dtype.kind not in ("fiuSU" if strings else "fiu"):
        raise RepalignError(f"{path}: {what} has dtype {dtype}; " + ("give strings" if strings else
                                                                      "features must be numbers"))
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _truncated(path: Path, what: str, shape: tuple[int, ...], dtype: np.dtype, declared: int, held: int) -> str:
    return (f"{path}: {what} declares shape {shape} {dtype} ({size_text(declared)}) but holds {size_text(held)} "
            "of values: it is truncated or its header lies; write it again")


def _read_npy(path: Path, **_: Any) -> Features:
    if not path.is_file():
        raise RepalignError(f"{path} is not a regular file (a device or a pipe); give a .npy file")
    with open(path, "rb") as fh:
        shape, _fortran, dtype = _npy_header(fh, path, "the file")
        held = path.stat().st_size - fh.tell()
    declared = declared_bytes(shape, dtype.itemsize)
    if declared > held:
        raise RepalignError(_truncated(path, "the file", shape, dtype, declared, held))
    try:
        # memory-mapped: rows are read when checked and when written, a batch at a time
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise RepalignError(f"{path}: not a readable .npy file ({_first(e)}); write it with numpy.save") from None
    return _layers_from_array(_array(arr, path, "the array"), path, "npy")


def _npz_entries(path: Path, max_member_bytes: int | None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file. Every header is read and checked (plain numbers, sizes within the
    allocation bound, no more than the member holds) before any array is, and each array is then
    read in blocks into memory of its declared size."""
    if not path.is_file():
        raise RepalignError(f"{path} is not a regular file (a device or a pipe); give an .npz file")
    try:
        with zipfile.ZipFile(path) as z:
            headers = _npz_headers(z, path, max_member_bytes)
            return {key: _npz_array(z, info, header, path) for key, (info, header) in headers.items()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as e:
        raise RepalignError(f"{path}: not a readable .npz file ({_first(e)}); write it with numpy.savez") from None
    except RuntimeError as e:  # zipfile's "File ... is encrypted, password required for extraction"
        raise RepalignError(f"{path}: not a readable .npz file ({_first(e)}); write it with numpy.savez, "
                            "without a password") from None


def _npz_headers(z: zipfile.ZipFile, path: Path, max_member_bytes: int | None) -> dict[str, tuple]:
    headers: dict[str, tuple] = {}
    total = 0
    for info in z.infolist():
        if info.is_dir():
            continue
        key = info.filename[:-4] if info.filename.endswith(".npy") else None
        if key is None or key in headers:
            problem = "is not a .npy array" if key is None else "is given twice"
            raise RepalignError(f"{path}: member {info.filename!r} {problem}; write the file with numpy.savez")
        what = f"entry {key!r}"
        with z.open(info) as fh:
            shape, fortran, dtype = _npy_header(fh, path, what, strings=key in (NPZ_IDS, NPZ_HASHES))
            offset = fh.tell()
        declared = declared_bytes(shape, dtype.itemsize)
        if declared > info.file_size - offset:
            raise RepalignError(_truncated(path, what, shape, dtype, declared, info.file_size - offset))
        check_member_size(declared, info.compress_size, f"{path}: {what} {shape} {dtype}", max_member_bytes)
        total += declared
        headers[key] = (info, (shape, fortran, dtype, offset))
    check_total_size(total, f"{path}: its {len(headers)} arrays together", max_member_bytes)
    return headers


def _npz_array(z: zipfile.ZipFile, info: zipfile.ZipInfo, header: tuple, path: Path) -> np.ndarray:
    shape, fortran, dtype, offset = header
    out = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
    view = memoryview(out.reshape(-1).view(np.uint8).data)
    with z.open(info) as fh:
        fh.read(offset)
        done = 0
        while done < len(view):
            block = fh.read(min(16 << 20, len(view) - done))  # in blocks: a lying stream ends early
            n = len(block)
            view[done:done + n] = block
            if not n:
                raise RepalignError(_truncated(path, f"entry {info.filename[:-4]!r}", shape, dtype, len(view), done))
            done += n
    return out.T if fortran else out


def _read_npz(path: Path, max_member_bytes: int | None = None, **_: Any) -> Features:
    entries = _npz_entries(path, max_member_bytes)
    ids = _strings(entries.pop(NPZ_IDS), path, "'ids'") if NPZ_IDS in entries else None
    hashes = _strings(entries.pop(NPZ_HASHES), path, "'hashes'") if NPZ_HASHES in entries else None
    tokens: dict[str, list[np.ndarray]] = {}
    for key in [k for k in entries if k.startswith(NPZ_TOKENS)]:
        layer = key[len(NPZ_TOKENS):]
        data = _array(entries.pop(key), path, f"entry {key!r}")
        if NPZ_OFFSETS + layer not in entries:
            raise RepalignError(f"{path}: {key!r} has no {NPZ_OFFSETS + layer!r}; give the (N+1,) row offsets too")
        offsets = np.asarray(entries.pop(NPZ_OFFSETS + layer))
        if (offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 1 or offsets[0] != 0
                or np.any(np.diff(offsets) < 0) or offsets[-1] != len(data) or data.ndim != 2):
            raise RepalignError(f"{path}: offsets of {layer!r} do not describe the rows of {key!r}; "
                                "offsets must rise from 0 to the row count")
        tokens[layer] = [data[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]
    stray = [k for k in entries if k.startswith(NPZ_OFFSETS)]
    if stray:
        raise RepalignError(f"{path}: {stray} have no matching 'tokens/<layer>' entries")
    if not entries and not tokens:
        raise RepalignError(f"{path}: the .npz holds no feature arrays; save one (samples, D) array per layer")
    pooled = {}
    for key, value in entries.items():
        arr = _array(value, path, f"entry {key!r}")
        if arr.ndim != 2:
            raise RepalignError(f"{path}: entry {key!r} has shape {arr.shape}; each layer must be a (samples, D) array"
                                + ("; a 1-D array is not features" if arr.ndim == 1 else ""))
        pooled[key] = arr
    n = _common_n(path, {k: len(v) for k, v in pooled.items()} | {k: len(v) for k, v in tokens.items()})
    return Features("npz", n, list(pooled) + [t for t in tokens if t not in pooled], pooled=pooled, tokens=tokens,
                    ids=ids, hashes=hashes)


def _torch_load(path: Path, max_member_bytes: int | None = None) -> Any:
    try:
        import torch
    except ImportError:
        raise RepalignError(f"{path}: reading .pt files needs torch; pip install 'repalign[models]'") from None
    if not path.is_file():
        raise RepalignError(f"{path} is not a regular file (a device or a pipe); give a .pt file")
    if not zipfile.is_zipfile(path):  # the legacy format: sizes are known only once every storage is read
        raise RepalignError(f"{path}: refused, a legacy (pre-1.6, non-zip) torch file, whose sizes cannot be checked "
                            "before loading; save it again with torch.save (torch >= 1.6)")
    _check_zip_members(path, max_member_bytes)
    try:
        with warnings.catch_warnings():  # torch's warnings about storages would add lines to a one-line error
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RepalignError(
            f"{path}: refused, it holds Python objects beyond tensors and plain containers, which only full pickle "
            f"can load and which could run code ({_first(e)}); save tensors or dicts/lists of tensors") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise RepalignError(f"{path}: not a readable torch file ({_first(e)}); write it with torch.save") from None
    _check_tensors(obj, path, torch, max_member_bytes)
    return obj


def _check_zip_members(path: Path, max_member_bytes: int | None) -> int:
    """The allocation bound over the members of a zip archive, from their declared sizes; their total."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise RepalignError(f"{path}: not a readable torch file ({_first(e)}); write it with torch.save") from None
    for info in infos:
        check_member_size(info.file_size, info.compress_size, f"{path}: member {info.filename!r}", max_member_bytes)
        if info.filename.endswith("/data.pkl") or info.filename == "data.pkl":
            _check_pickle_member(info, path)
    total = sum(info.file_size for info in infos)
    check_total_size(total, f"{path}: its {len(infos)} members together", max_member_bytes)
    return total


def _check_pickle_member(info: zipfile.ZipInfo, path: Path) -> None:
    """The pickle of a torch file (its containers, not its tensors' bytes) is small: every byte of it
    can make a Python object of ~64 bytes, so it is bounded hard, whatever max_member_bytes says."""
    size, packed = info.file_size, max(1, info.compress_size)
    if size > PICKLE_BYTES or (size > PICKLE_RATIO_FLOOR and size > PICKLE_RATIO * packed):
        raise RepalignError(
            f"{path}: refused, member {info.filename!r} (the pickled structure) holds {size_text(size)} in "
            f"{size_text(packed)}; a torch file's structure is at most {size_text(PICKLE_BYTES)} and "
            f"{PICKLE_RATIO}x compressed (objects built from it could fill memory); save tensors, or dicts/lists "
            "of tensors, with torch.save")


def _tensors_in(obj: Any, torch: Any) -> list[tuple[str, Any]]:
    """(where, tensor) for every tensor in the containers torch.load returned (dicts, lists, tuples)."""
    found, stack, seen = [], [("the tensor", obj)], set()
    while stack:
        where, value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            found.append((where, value))
        elif isinstance(value, dict):
            stack.extend((f"entry {k!r}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{k}]", v) for k, v in enumerate(value))
    return found


def _check_tensors(obj: Any, path: Path, torch: Any, max_member_bytes: int | None) -> None:
    """Every dense tensor's declared size against the bytes its storage holds: a view with zero or
    overlapping strides (torch.zeros(1).expand(10**5, 10**5)) declares far more than the file stores,
    and becomes that much memory once its values are read. Then the allocation bound, per tensor and
    for all together."""
    total, tensors = 0, _tensors_in(obj, torch)
    for where, t in tensors:
        if str(t.layout) != "torch.strided" or t.is_meta or t.is_quantized:
            continue  # refused in one line where its values are read
        declared = declared_bytes(tuple(t.shape), t.element_size())
        held = t.untyped_storage().nbytes()
        what = f"{path}: {where} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
        zero = any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape))
        if zero or declared > held:
            raise RepalignError(
                f"{what} declares {size_text(declared)} but its storage holds {size_text(held)} (a view with "
                f"{'zero' if zero else 'overlapping'} strides); refused: reading it would allocate the declared "
                "size; save tensor.contiguous() or tensor.clone()")
        check_member_size(declared, held, what, max_member_bytes)
        total += declared
    check_total_size(total, f"{path}: its {len(tensors)} tensors together", max_member_bytes)


def _read_pt(path: Path, pool: str = "mean", keep_tokens: bool = True, max_member_bytes: int | None = None,
             **_: Any) -> Features:
    obj = _torch_load(path, max_member_bytes)
    if isinstance(obj, dict) and ESM_LABEL in obj:
        return _esm_features([obj], [path], pool, keep_tokens)
    if isinstance(obj, dict) and "feats" in obj:  # platonic-rep: {"feats": (N, L, D), "num_params": ..., ...}
        return _layers_from_array(_array(obj["feats"], path, "'feats'"), path, "pt", key="feats")
    if isinstance(obj, dict):
        obj = dict(obj)
        ids = None
        if NPZ_IDS in obj:
            ids = obj.pop(NPZ_IDS)
            if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
                raise RepalignError(f"{path}: 'ids' must be a list of strings")
            ids = list(ids)
        if not obj:
            raise RepalignError(f"{path}: the dict holds no feature tensors; give one (samples, D) tensor per layer")
        pooled = {}
        for key, value in obj.items():
            arr = _array(value, path, f"entry {key!r}")
            if arr.ndim != 2:
                raise RepalignError(f"{path}: entry {key!r} has shape {arr.shape}; each layer must be (samples, D)")
            pooled[str(key)] = arr
        n = _common_n(path, {k: len(v) for k, v in pooled.items()})
        return Features("pt", n, list(pooled), pooled=pooled, ids=ids)
    if hasattr(obj, "shape"):
        return _layers_from_array(_array(obj, path, "the tensor"), path, "pt")
    raise RepalignError(f"{path}: holds a {type(obj).__name__}; give a tensor, a dict of tensors, platonic-rep's "
                        "{'feats': ...} or an ESM extract.py file")


def _read_esm_folder(path: Path, pool: str = "mean", keep_tokens: bool = True, max_member_bytes: int | None = None,
                     **_: Any) -> Features:
    files = esm_folder_files(path)
    # every file is held in memory until the folder is read: the bound applies to all of them together
    total = sum(_check_zip_members(f, max_member_bytes) for f in files if zipfile.is_zipfile(f))
    check_total_size(total, f"{path}: its {len(files)} .pt files together", max_member_bytes)
    feats = _esm_features([_torch_load(f, max_member_bytes) for f in files], files, pool, keep_tokens)
    feats.files = files
    return _in_exported_order(feats, path)


def esm_folder_files(path: Path) -> list[Path]:
    """The ``*.pt`` files of an ESM folder, sorted: regular files only, looked at without following
    links (a symbolic link, a FIFO or a device named ``x.pt`` is refused: reading it could read
    another file or never end). The reader and the import's provenance digest use this one list."""
    files = []
    for p in sorted(path.iterdir()):
        if p.suffix != ".pt" or p.name.startswith("."):
            continue
        mode = os.lstat(p).st_mode
        if not stat.S_ISREG(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file (a FIFO, device or folder)"
            raise RepalignError(f"{p}: refused, {kind} in the ESM folder; only regular files are read: copy the file "
                                "into the folder or remove that entry")
        files.append(p)
    if not files:
        raise RepalignError(f"{path}: no .pt files in the folder; give the output folder of ESM's extract.py")
    return files


def _in_exported_order(feats: Features, folder: Path) -> Features:
    """Samples and layers in the order an export wrote them (``provenance.json``), else samples in
    file-name order and layers in the files' order."""
    try:
        info = json.loads((folder / FOLDER_INFO).read_text())
        order, layers = info.get("ids"), list(info.get("pooled_layers", [])) + list(info.get("token_layers", []))
    except (OSError, ValueError, AttributeError, TypeError):
        return feats
    layers = [str(x) for x in dict.fromkeys(map(str, layers))]
    if sorted(layers) == sorted(feats.order):
        feats.order = layers
    ids = feats.ids or []
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(ids):
        return feats
    at = {i: k for k, i in enumerate(ids)}
    rows = [at[str(i)] for i in order]
    feats.ids = [ids[k] for k in rows]
    if feats.hashes is not None:
        feats.hashes = [feats.hashes[k] for k in rows]
    for kind in ("pooled", "cls"):
        setattr(feats, kind, {l: a[rows] for l, a in getattr(feats, kind).items()})
    feats.tokens = {l: [r[k] for k in rows] for l, r in feats.tokens.items()}
    return feats


def _esm_layer_name(key: Any) -> str:
    """ESM's repr layer i is hidden state i: 0 -> embeddings, i -> layer.{i-1} (as hf: models name them)."""
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        i = int(key)
        return "embeddings" if i == 0 else f"layer.{i - 1}"
    return str(key)


def _esm_features(objs: list, files: list[Path], pool: str, keep_tokens: bool) -> Features:
    """Features of ESM extract.py files, one per sample. Pooled vectors: ``mean_representations``
    for ``pool="mean"`` where the file has them, else ``pool`` over the per-token rows; ``cls``:
    ``bos_representations``."""
    ids, hashes = [], []
    tokens: dict[str, list] = {}
    pooled: dict[str, list] = {}
    cls: dict[str, list] = {}
    first_keys = None
    for obj, f in zip(objs, files):
        if not isinstance(obj, dict) or ESM_LABEL not in obj:
            raise RepalignError(f"{f}: not an ESM extract.py file (no 'label'); keep only those in the folder")
        label = str(obj[ESM_LABEL])
        if ESM_HASH in obj:  # written by export: the label is the id
            hashes.append(str(obj[ESM_HASH]))
        elif label.split():  # ESM's label is the whole FASTA header; the id is its first word
            label = label.split()[0]
        ids.append(label)
        kinds = {k: {_esm_layer_name(layer): v for layer, v in obj[k].items()}
                 for k in (ESM_TOKENS, ESM_MEAN, ESM_BOS) if isinstance(obj.get(k), dict)}
        keys = {k: list(v) for k, v in kinds.items()}
        if first_keys is None:
            first_keys = keys
            if not any(keys.get(k) for k in (ESM_TOKENS, ESM_MEAN)):
                raise RepalignError(f"{f}: no representations; run ESM's extract.py with --include mean or per_tok")
        elif keys != first_keys:
            raise RepalignError(f"{f}: holds other layers or kinds ({keys}) than {files[0].name} ({first_keys}); "
                                "give files of one extract.py run")
        rows_of = {layer: _array(v, f, f"representations[{layer}]") for layer, v in kinds.get(ESM_TOKENS, {}).items()}
        means = {layer: _array(v, f, f"mean_representations[{layer}]") for layer, v in kinds.get(ESM_MEAN, {}).items()}
        for layer, rows in rows_of.items():
            if rows.ndim != 2:
                raise RepalignError(f"{f}: representations of {layer} have shape {rows.shape}; expected (L, D)")
            if keep_tokens:
                tokens.setdefault(layer, []).append(rows)
        for layer in dict.fromkeys(list(rows_of) + list(means)):
            if pool == "mean" and layer in means:
                pooled.setdefault(layer, []).append(means[layer])
            elif pool in ("mean", "max", "last") and layer in rows_of:
                pooled.setdefault(layer, []).append(pool_rows(rows_of[layer], pool, f"{f} layer {layer}"))
            elif pool in ("max", "last"):
                raise RepalignError(f"{f}: layer {layer} has mean vectors only; {pool} pooling needs the per-token "
                                    "representations (extract.py --include per_tok), or import with pool='mean'")
        for layer, value in kinds.get(ESM_BOS, {}).items():
            cls.setdefault(layer, []).append(_array(value, f, f"bos_representations[{layer}]"))
    if hashes and len(hashes) != len(ids):
        raise RepalignError(f"{files[0].parent}: some files carry a content_hash and some do not")
    order = list(dict.fromkeys([l for k in (first_keys or {}).values() for l in k]))
    feats = Features("esm-pt" if len(files) == 1 else "esm-pt-folder", len(ids), order,
                     tokens=tokens, ids=ids, hashes=hashes or None)
    for name, values in (("pooled", pooled), ("cls", cls)):
        for layer, vecs in values.items():
            if len({np.shape(v) for v in vecs}) != 1 or np.ndim(vecs[0]) != 1:
                raise RepalignError(f"{files[0].parent}: {name} vectors of {layer} differ in shape between files")
            getattr(feats, name)[layer] = np.stack(vecs)
    return feats


def _read_h5(path: Path, pool: str = "mean", keep_tokens: bool = True, max_member_bytes: int | None = None,
             **_: Any) -> Features:
    index = index_per_id_h5(path, max_member_bytes)
    arrays = read_per_id_h5(path, [d.key for d in index], max_member_bytes)
    ids = [d.id for d in index]
    rank = len(index[0].shape)
    if rank == 1:
        return Features("h5", len(ids), ["layer.0"], pooled={"layer.0": np.stack(_same_width(arrays, path))},
                        ids=ids, named=False)
    if rank == 3 and len({a.shape[0] for a in arrays}) != 1:
        raise RepalignError(f"{path}: datasets hold different numbers of layers; give (layers, L, D) alike")
    per_layer = [arrays] if rank == 2 else [[a[k] for a in arrays] for k in range(index[0].shape[0])]
    names = [f"layer.{k}" for k in range(len(per_layer))]
    feats = Features("h5", len(ids), names, ids=ids, named=False)
    for name, rows in zip(names, per_layer):
        _same_width(rows, path)
        if keep_tokens:
            feats.tokens[name] = rows
        if pool != "cls":
            feats.pooled[name] = np.stack([pool_rows(r, pool, f"{path} sample {i!r}") for r, i in zip(rows, ids)])
    return feats


def _read_h5ad(path: Path, max_member_bytes: int | None = None, **_: Any) -> Features:
    try:
        try:
            from anndata.io import read_elem
        except ImportError:  # anndata < 0.11
            from anndata.experimental import read_elem
    except ImportError:
        raise RepalignError(f"{path}: reading .h5ad needs anndata; pip install 'repalign[anndata]'") from None
    # checked before anndata follows a link or reads a byte, and read from the same open file
    with open_foreign_h5(path, max_member_bytes) as f:
        if _text_attr(f.attrs.get("encoding-type")) != "anndata":
            raise RepalignError(f"{path}: not an AnnData file of anndata >= 0.8 (no encoding-type 'anndata'); "
                                "write it again with AnnData.write_h5ad")
        try:
            adata = read_elem(f["/"])  # the root as a plain h5py Group: anndata dispatches on exact types
        except Exception as e:  # anndata wraps HDF5 and format errors in many types
            raise RepalignError(f"{path}: not a readable AnnData file ({_first(e)}); write it with "
                                "AnnData.write_h5ad") from None
    ids = [str(i) for i in adata.obs_names]
    hashes = [str(h) for h in adata.obs["content_hash"]] if "content_hash" in adata.obs else None
    pooled: dict[str, np.ndarray] = {}

    def add(name: str, value: Any, where: str) -> None:
        if hasattr(value, "toarray"):  # sparse: its dense size comes from a declared shape
            stored = sum(getattr(value, k).nbytes for k in ("data", "indices", "indptr") if hasattr(value, k))
            check_member_size(declared_bytes(value.shape, value.dtype.itemsize), stored,
                              f"{path}: {where} (sparse, {value.shape})", max_member_bytes)
            value = value.toarray()
        elif hasattr(value, "to_numpy"):
            value = value.to_numpy()
        arr = _array(value, path, where)
        if arr.ndim != 2:
            raise RepalignError(f"{path}: {where} has shape {arr.shape}; layers must be (samples, D)")
        if name in pooled:
            raise RepalignError(f"{path}: two matrices are named {name!r} (obsm, layers, X); rename one")
        pooled[name] = arr

    for key in adata.obsm.keys():
        add(key, adata.obsm[key], f"obsm[{key!r}]")
    if adata.n_vars:
        for key in adata.layers.keys():
            add(key, adata.layers[key], f"layers[{key!r}]")
        if adata.X is not None:
            add("X", adata.X, "X")
    if not pooled:
        raise RepalignError(f"{path}: the AnnData object holds no matrices (obsm, layers or X) to import")
    order = list(pooled)
    stored_order = adata.uns.get("layers") if hasattr(adata, "uns") else None
    if stored_order is not None and sorted(map(str, stored_order)) == sorted(order):
        order = [str(x) for x in stored_order]  # the layer order export wrote
    return Features("h5ad", adata.n_obs, order, pooled=pooled, ids=ids, hashes=hashes)


def _text_attr(value: Any) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else (None if value is None else str(value))


def _read_parquet(path: Path, max_member_bytes: int | None = None, **_: Any) -> Features:
    """A table as 'repalign cache export' writes it: ``id``, ``content_hash``, one fixed-size list column
    of numbers per pooled layer (in the order of the ``repalign.layers`` metadata); scalar number columns
    (per-sample outputs) are left out. Every size is checked against the footer before a value is read."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RepalignError(f"{path}: reading .parquet needs pyarrow; pip install 'repalign[parquet]'") from None
    try:
        footer = pq.ParquetFile(path)
        schema, meta = footer.schema_arrow, footer.metadata
    except Exception as e:  # pyarrow's errors differ by version
        raise RepalignError(f"{path}: not a readable Parquet file ({_first(e)}); export it with 'repalign cache export'") from None
    layers = [f.name for f in schema if pa.types.is_fixed_size_list(f.type)]
    for f in schema:
        number = pa.types.is_floating(f.type) or pa.types.is_integer(f.type)
        text = pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        if f.name in ("id", "content_hash") and not text:
            raise RepalignError(f"{path}: column {f.name!r} has type {f.type}; it must hold plain strings (pyarrow "
                                "string), as 'repalign cache export' writes it")
        if f.name not in layers and f.name not in ("id", "content_hash") and not number:
            raise RepalignError(f"{path}: column {f.name!r} has type {f.type}; a feature table holds 'id', "
                                "'content_hash' and one fixed-size list of numbers per layer")
    if not layers:
        raise RepalignError(f"{path}: no layer columns (fixed-size lists of numbers); export one with 'repalign cache export'")
    stored = path.stat().st_size
    for name in layers:
        kind = schema.field(name).type
        if not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
            raise RepalignError(f"{path}: layer column {name!r} holds {kind.value_type}; features must be numbers")
        declared = declared_bytes((meta.num_rows, kind.list_size), kind.value_type.bit_width // 8)
        check_member_size(declared, stored, f"{path}: column {name!r} ({meta.num_rows}, {kind.list_size})", max_member_bytes)
    check_total_size(sum(declared_bytes((meta.num_rows, schema.field(n).type.list_size), 8) for n in layers),
                     f"{path}: {len(layers)} layer columns", max_member_bytes)
    keep = [c for c in ("id", "content_hash") if c in schema.names]
    _check_parquet_footer(path, meta, keep + layers, max_member_bytes)
    try:  # strings as dictionaries: a repeated long string stays one value until its size is checked
        table = pq.read_table(path, columns=keep + layers, read_dictionary=keep)
    except Exception as e:  # a damaged page: pyarrow's errors differ by version
        raise RepalignError(f"{path}: not a readable Parquet file ({_first(e)}); export it again") from None
    pooled = {}
    for name in layers:
        column = table.column(name).combine_chunks()
        if column.null_count or column.flatten().null_count:
            raise RepalignError(f"{path}: layer column {name!r} has missing values; give every sample a vector")
        pooled[name] = _array(column.flatten().to_numpy(), path, f"column {name!r}").reshape(len(column), -1)
    texts = _parquet_texts(table, keep, path, max_member_bytes)
    if any(v is None for values in texts.values() for v in values):
        raise RepalignError(f"{path}: column 'id' or 'content_hash' has missing values; give every sample one")
    stored_order = (schema.metadata or {}).get(b"repalign.layers")
    order = json.loads(stored_order) if stored_order else layers
    if sorted(map(str, order)) != sorted(layers):
        order = layers
    return Features("parquet", meta.num_rows, [str(x) for x in order], pooled=pooled,
                    ids=[str(x) for x in texts["id"]] if "id" in texts else None,
                    hashes=[str(x) for x in texts["content_hash"]] if "content_hash" in texts else None)


def _check_parquet_footer(path: Path, meta: Any, columns: list[str], max_member_bytes: int | None) -> None:
    """The row groups' row counts add up to the file's, and each column read (its total uncompressed
    size over the row groups, from the footer) is within the allocation bound, alone and together."""
    groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    if sum(g.num_rows for g in groups) != meta.num_rows:
        raise RepalignError(f"{path}: its row groups hold {sum(g.num_rows for g in groups)} rows but the footer says "
                            f"{meta.num_rows}; the file is damaged or crafted: export it again")
    sizes: dict[str, list[int]] = {}
    for g in groups:
        for k in range(g.num_columns):
            chunk = g.column(k)
            top = chunk.path_in_schema.split(".")[0]
            if top in columns:
                got = sizes.setdefault(top, [0, 0])
                got[0] += int(chunk.total_uncompressed_size)
                got[1] += int(chunk.total_compressed_size)
    for name, (unpacked, packed) in sizes.items():
        check_member_size(unpacked, packed, f"{path}: column {name!r} (uncompressed)", max_member_bytes)
    check_total_size(sum(v[0] for v in sizes.values()), f"{path}: its {len(sizes)} columns (uncompressed) together",
                     max_member_bytes)


def _parquet_texts(table: Any, keep: list[str], path: Path, max_member_bytes: int | None) -> dict[str, list]:
    """The id and content_hash columns (read as dictionaries) as Python strings, once their decoded
    size (each row's string, plus a Python object per row) is within the allocation bound."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = 0
    for name in keep:
        for chunk in table.column(name).chunks:
            lengths = pc.binary_length(chunk.dictionary) if isinstance(chunk, pa.DictionaryArray) else \
                pc.binary_length(chunk)
            if isinstance(chunk, pa.DictionaryArray):
                lengths = pc.take(lengths, chunk.indices)
            total += int(pc.sum(lengths).as_py() or 0) + 64 * len(chunk)
    check_total_size(total, f"{path}: columns {keep} as text ({table.num_rows} rows)", max_member_bytes)
    if max_member_bytes is not None and total > max_member_bytes:
        raise RepalignError(f"{path}: columns {keep} as text take {size_text(total)}, more than max_member_bytes="
                            f"{max_member_bytes}; pass max_member_bytes={total} if you trust the file")
    return {c: table.column(c).to_pylist() for c in keep}


def _same_width(arrays: list[np.ndarray], path: Path) -> list[np.ndarray]:
    widths = {a.shape[-1] for a in arrays}
    if len(widths) != 1:
        raise RepalignError(f"{path}: samples have features of different widths {sorted(widths)}; give one width")
    return arrays


def _common_n(path: Path, lengths: dict[str, int]) -> int:
    if len(set(lengths.values())) != 1:
        raise RepalignError(f"{path}: layers have different sample counts {lengths}; give one row per sample in each")
    return next(iter(lengths.values()))


def _check_features(feats: Features, path: Path) -> None:
    if feats.n == 0:
        raise RepalignError(f"{path}: holds no samples")
    for kind in ("pooled", "cls"):
        for layer, arr in getattr(feats, kind).items():
            if arr.shape[0] != feats.n:
                raise RepalignError(f"{path}: layer {layer!r} has {arr.shape[0]} rows for {feats.n} samples")
            if arr.shape[1] == 0:
                raise RepalignError(f"{path}: layer {layer!r} has width 0")
            bad = sum(int((~np.isfinite(arr[i:i + CHECK_ROWS])).any(axis=1).sum())
                      for i in range(0, feats.n, CHECK_ROWS))
            if bad:
                raise RepalignError(f"{path}: layer {layer!r} holds NaN or infinite values in {bad} samples; "
                                    "fix or drop those samples before importing")
    for layer, rows in feats.tokens.items():
        if len(rows) != feats.n:
            raise RepalignError(f"{path}: token layer {layer!r} has {len(rows)} samples, expected {feats.n}")
        if any(r.ndim != 2 for r in rows) or len({r.shape[1] for r in rows}) != 1:
            raise RepalignError(f"{path}: token rows of {layer!r} must be (L_i, D) with one D")
        if not all(np.isfinite(r).all() for r in rows):
            raise RepalignError(f"{path}: token layer {layer!r} holds NaN or infinite values; fix them before importing")
