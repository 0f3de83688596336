"""Writing one model of a cache to other formats: :func:`export_features` (``repalign cache export``)."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import io
import json
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from embeddings_cache import Cache, new_h5_file, untrusted
from embeddings_cache.atomic import sigterm_as_interrupt
from embeddings_cache.durable import describe_write_failure
from embeddings_cache.untrusted import declared_bytes, size_text
from repalign.errors import RepalignError
from repalign.interop.formats import (
    ESM_HASH,
    ESM_LABEL,
    ESM_MEAN,
    ESM_TOKENS,
    EXPORT_FORMATS,
    FOLDER_INFO,
    NPZ_HASHES,
    NPZ_IDS,
    NPZ_OFFSETS,
    NPZ_TOKENS,
)
from repalign.interop.owned import Manifest, work_folder

log = logging.getLogger("repalign.interop")

#: the manifest of a folder receiving exports: the names export wrote there and their digests
EXPORTS_MANIFEST = ".repalign-exports"
EXPORT_WRITER = "repalign cache export"


def export_format(out: str | os.PathLike) -> str:
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in EXPORT_FORMATS:
        return EXPORT_FORMATS[suffix]
    if not suffix or out.is_dir() or str(out).endswith(os.sep):
        return "pt-folder"
    raise RepalignError(f"{out}: cannot export to {suffix!r}; give .h5ad, .npz, .parquet, or a folder name "
                        "(one .pt file per sample, like ESM's extract.py)")


def export_features(cache: str | os.PathLike, model: str, out: str | os.PathLike, *,
                    layers: Sequence[str] | None = None, overwrite: bool = False,
                    max_member_bytes: int | None = None) -> Path:
    """Write one model of a cache to ``out`` (format from its suffix, see the module docstring).

    layers: pooled and token layers to write (names or patterns; default all). The output appears
    whole or not at all: it is written in a hidden work folder beside ``out`` (removed on an error,
    Ctrl-C or SIGTERM; by the next export there after a kill), then renamed. ``overwrite`` replaces
    only an earlier export, unchanged since (listed in the folder's manifest ``.repalign-exports``,
    see :mod:`repalign.interop.owned`): never another file or folder, a link, or the cache.
    """
    out = Path(os.path.abspath(out))  # '.' and 'a/..' get a real name
    fmt = export_format(out)
    manifest = Manifest(out.parent, EXPORTS_MANIFEST, EXPORT_WRITER)
    _check_target(out, Path(cache), overwrite, manifest)
    with sigterm_as_interrupt(), Cache(cache, max_member_bytes=max_member_bytes) as c:
        m, pooled, tokens = _chosen_layers(c, cache, model, layers, fmt)
        if max_member_bytes is None:  # an explicit bound (a trusted cache) replaces this one
            _check_export_memory(c, model, pooled, tokens)
        with work_folder(out.parent) as work:
            tmp = work / out.name
            _write(fmt, m, pooled, tokens, tmp, out)
            _check_target(out, Path(cache), overwrite, manifest)  # the folder may have changed meanwhile
            manifest.replace(tmp, out, work)
    if fmt in ("h5ad", "parquet") and tokens:  # said after success, so a failure stays one line
        log.warning("model %s: token layers %s are not written to %s (per-sample rows only); export them to "
                    ".npz or a folder of .pt files", model, tokens, fmt)
    return out


def _check_target(out: Path, cache: Path, overwrite: bool, manifest: Manifest) -> None:
    """RepalignError unless ``out`` may be written: never the cache or a folder holding it, never a
    link, and an existing output only with ``overwrite`` and only when an earlier export wrote it."""
    if not out.parent.is_dir():
        raise RepalignError(f"folder {out.parent} does not exist; create it first")
    real_out, real_cache = os.path.realpath(out), os.path.realpath(cache)
    journal = {real_cache + suffix for suffix in ("", ".parts", ".lock", ".redo", ".consolidating")}
    if real_out in journal or real_cache.startswith(real_out.rstrip(os.sep) + os.sep):
        raise RepalignError(f"{out} is the cache {cache}, a file of it or a folder holding it; export to another "
                            "name (the cache is never replaced)")
    if out.name == EXPORTS_MANIFEST:
        raise RepalignError(f"{out}: that name is the manifest of the exports in {out.parent}; choose another name")
    manifest.files()  # a manifest file we did not write is an error before anything is done
    if not os.path.lexists(out):
        return
    if out.is_symlink():
        raise RepalignError(f"{out} is a symbolic link; export never replaces a link (nor what it points to): "
                            "remove it or choose another name")
    if not overwrite:
        raise RepalignError(f"{out} already exists; pass overwrite=True to replace an earlier export, or choose "
                            "another name")
    if not manifest.owns(out):
        what = "folder" if out.is_dir() else "file"
        raise RepalignError(f"{out} is a {what} that 'repalign cache export' did not write (or that was changed "
                            "since); overwrite=True replaces only an earlier export: move it away or choose another name")


def _chosen_layers(c: Cache, cache, model: str, layers: Sequence[str] | None, fmt: str) -> tuple[Any, list, list]:
    """(the model, its pooled layers, its token layers) to export: all, or those ``layers`` names."""
    if model not in c.models:
        raise RepalignError(f"model {model!r} is not in {cache}; it holds: {', '.join(c.models) or 'no models'}")
    m = c[model]
    pooled, tokens = m.layers, m.token_layers
    if layers:
        chosen = set()
        for pat in layers:
            hits = [n for n in pooled + tokens if fnmatch.fnmatchcase(n, pat)]
            if not hits:
                raise RepalignError(f"model {model!r} has no layer matching {pat!r}; "
                                    f"its layers: {', '.join((pooled + tokens)[:10])}")
            chosen.update(hits)
        pooled = [l for l in pooled if l in chosen]
        tokens = [l for l in tokens if l in chosen]
    if fmt in ("h5ad", "parquet") and not pooled:
        raise RepalignError(f"model {model!r} has no pooled layers to write to {fmt}; export token layers to "
                            ".npz or a folder, or pool them first (repalign cache repool)")
    return m, pooled, tokens


def _check_export_memory(c: Cache, model: str, pooled: list[str], tokens: list[str]) -> None:
    """RepalignError, before any value is read, when the chosen layers, which every export format
    holds in memory together (as float32: rows x width x 4 bytes), exceed half the available memory."""
    sizes = {(r["kind"], r["name"]): declared_bytes((r["rows"], r["dim"] or 1), 4)
             for r in c.records() if r["model"] == model}
    total = sum(sizes.get(("pooled", l), 0) for l in pooled) + sum(sizes.get(("tokens", l), 0) for l in tokens)
    half = untrusted.available_memory() // 2
    if total > half:
        raise RepalignError(f"model {model!r}: the {len(pooled) + len(tokens)} layers to export take "
                            f"{size_text(total)} in memory together, more than half the available memory "
                            f"({size_text(half)}); export fewer layers at a time (layers=[NAME, ...]), free memory, or "
                            f"pass max_member_bytes={total} if the cache is yours and the memory is there")


#: exceptions of writers that report a failed write by its errno inside a message (h5py, torch, pyarrow)
_ERRNO_TEXT = {"File too large": errno.EFBIG, "errno = 27": errno.EFBIG, "No space left": errno.ENOSPC,
               "errno = 28": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT}


def _write(fmt: str, m, pooled: list[str], tokens: list[str], tmp: Path, out: Path) -> None:
    """Write the export to ``tmp``; a failed write (full disk, file size limit) is one line naming ``out``."""
    writer = {"h5ad": _write_h5ad, "npz": _write_npz, "parquet": _write_parquet, "pt-folder": _write_pt_folder}[fmt]
    try:
        writer(m, pooled, tokens, tmp)
    except (OSError, RuntimeError) as e:
        code = e.errno if isinstance(e, OSError) else None
        code = code or next((n for text, n in _ERRNO_TEXT.items() if text in str(e)), None)
        if code is None and not isinstance(e, OSError):
            raise
        needed = sum(m.n_samples * 4 * max(1, _width(m, l)) for l in pooled) + (1 << 20)
        failure = OSError(code, os.strerror(code)) if code else e
        assert isinstance(failure, OSError)
        raise RepalignError(describe_write_failure(failure, out, needed) + "; nothing was written") from None


def _width(m, layer: str) -> int:
    dims = [r["dim"] for r in m.cache.records() if r["model"] == m.name and r["name"] == layer]
    return int(dims[0]) if dims and dims[0] is not None else 1


def _write_h5ad(m, pooled: list[str], tokens: list[str], tmp: Path) -> None:
    try:
        import anndata
        from anndata.io import write_elem
    except ImportError:
        try:  # anndata < 0.11
            import anndata
            from anndata.experimental import write_elem
        except ImportError:
            raise RepalignError("exporting to .h5ad needs anndata; pip install 'repalign[anndata]'") from None
    adata = m.to_anndata(layers=pooled)
    adata.strings_to_categoricals()  # as AnnData.write_h5ad does
    settings = getattr(anndata, "settings", None)
    override = contextlib.nullcontext()
    if settings is not None and hasattr(settings, "allow_write_nullable_strings"):
        # pandas >= 3 stores strings as arrow arrays; anndata writes them only when allowed
        override = settings.override(allow_write_nullable_strings=True)
    # what AnnData.write_h5ad writes, through a file that survives a full disk (HDF5 crashed there)
    with override, new_h5_file(tmp) as f:
        write_elem(f, "/", adata)


def _write_npz(m, pooled: list[str], tokens: list[str], tmp: Path) -> None:
    arrays: dict[str, np.ndarray] = {NPZ_IDS: np.asarray(m.ids, dtype=str), NPZ_HASHES: np.asarray(m.hashes, dtype=str)}
    for layer in pooled:
        if layer in (NPZ_IDS, NPZ_HASHES):
            raise RepalignError(f"layer {layer!r} would clash with the npz entry of the same name; export to .h5ad")
        arrays[layer] = m[layer]
    for layer in tokens:
        data, offsets = m.cache.read_tokens(m.name, layer)
        arrays[NPZ_TOKENS + layer], arrays[NPZ_OFFSETS + layer] = data, offsets
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its allow_pickle


def _write_parquet(m, pooled: list[str], tokens: list[str], tmp: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RepalignError("exporting to .parquet needs pyarrow; pip install 'repalign[parquet]'") from None
    columns = {"id": pa.array(m.ids, pa.string()), "content_hash": pa.array(m.hashes, pa.string())}
    for layer in pooled:
        if layer in columns:
            raise RepalignError(f"layer {layer!r} would clash with the column of the same name; export to .h5ad")
        x = np.ascontiguousarray(m[layer])
        columns[layer] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    for name in m.outputs:
        columns.setdefault(name, pa.array(m.output(name)))
    meta = {"repalign.model": m.name, "repalign.layers": json.dumps(pooled),
            "repalign.provenance": json.dumps(m.provenance, sort_keys=True)}
    table = pa.table(columns).replace_schema_metadata(meta)
    pq.write_table(table, tmp)


def _write_pt_folder(m, pooled: list[str], tokens: list[str], tmp: Path) -> None:
    try:
        import torch
    except ImportError:
        raise RepalignError("exporting .pt files needs torch; pip install 'repalign[models]'") from None
    tmp.mkdir()
    ids, hashes = m.ids, m.hashes
    token_rows = {layer: m.tokens(layer) for layer in tokens}
    means = {layer: m[layer] for layer in pooled}
    names = set()
    for k, (sample, digest) in enumerate(zip(ids, hashes)):
        obj: dict[str, Any] = {ESM_LABEL: sample, ESM_HASH: digest,
                               ESM_MEAN: {l: torch.from_numpy(np.array(means[l][k])) for l in pooled}}
        if tokens:
            obj[ESM_TOKENS] = {l: torch.from_numpy(np.array(token_rows[l][k])) for l in tokens}
        name = sample_file_name(sample, k)
        if name in names:
            name = f"{k:08d}.pt"
        names.add(name)
        buffer = io.BytesIO()
        torch.save(obj, buffer)  # written by Python: a full disk is an OSError with its errno, not torch's RuntimeError
        (tmp / name).write_bytes(buffer.getbuffer())
    info = {"model": m.name, "pooled_layers": pooled, "token_layers": tokens, "provenance": m.provenance, "ids": ids}
    (tmp / FOLDER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))


def sample_file_name(sample: str, index: int) -> str:
    """A file name for a sample's .pt file: the id, percent-encoded where a file name cannot hold it."""
    name = urllib.parse.quote(sample, safe="-_.@+=,") + ".pt"
    if name.startswith(".") or len(name.encode()) > 200:
        name = f"{index:08d}.pt"
    return name
