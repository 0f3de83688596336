"""Writing one model of a cache to other formats: :func:`export_features` (``repalign cache export``)."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from embeddings_cache import Cache
from embeddings_cache.atomic import atomic_files
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

log = logging.getLogger("repalign.interop")


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

    layers: pooled and token layers to write (names or patterns; default all). The file appears
    whole or not at all (written under a temporary name, then renamed); an existing ``out`` is
    replaced only with ``overwrite``.
    """
    out = Path(out)
    fmt = export_format(out)
    if out.exists() and not overwrite:
        raise RepalignError(f"{out} already exists; pass --overwrite to replace it, or choose another name")
    if not out.parent.is_dir():
        raise RepalignError(f"folder {out.parent} does not exist; create it first")
    with Cache(cache, max_member_bytes=max_member_bytes) as c:
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
        if fmt in ("h5ad", "parquet") and tokens:
            log.warning("model %s: token layers %s are not written to %s (per-sample rows only); export them to "
                        ".npz or a folder of .pt files", model, tokens, fmt)
        if fmt in ("h5ad", "parquet") and not pooled:
            raise RepalignError(f"model {model!r} has no pooled layers to write to {fmt}; export token layers to "
                                ".npz or a folder, or pool them first (repalign cache repool)")
        with atomic_files([out], create=False) as (tmp,):  # the writers make a file or a folder there
            {"h5ad": _write_h5ad, "npz": _write_npz, "parquet": _write_parquet, "pt-folder": _write_pt_folder}[fmt](
                m, pooled, tokens, tmp)
            if out.exists():  # a rename puts neither a folder nor a file over a folder
                if out.is_dir() and not out.is_symlink():
                    shutil.rmtree(out)
                else:
                    out.unlink()
    return out


def _write_h5ad(m, pooled: list[str], tokens: list[str], tmp: Path) -> None:
    try:
        import anndata
    except ImportError:
        raise RepalignError("exporting to .h5ad needs anndata; pip install 'repalign[anndata]'") from None
    adata = m.to_anndata(layers=pooled)
    settings = getattr(anndata, "settings", None)
    if settings is not None and hasattr(settings, "allow_write_nullable_strings"):
        # pandas >= 3 stores strings as arrow arrays; anndata writes them only when allowed
        with settings.override(allow_write_nullable_strings=True):
            adata.write_h5ad(tmp)
    else:
        adata.write_h5ad(tmp)


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
        np.savez(fh, **arrays)


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
        torch.save(obj, tmp / name)
    info = {"model": m.name, "pooled_layers": pooled, "token_layers": tokens, "provenance": m.provenance, "ids": ids}
    (tmp / FOLDER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))


def sample_file_name(sample: str, index: int) -> str:
    """A file name for a sample's .pt file: the id, percent-encoded where a file name cannot hold it."""
    name = urllib.parse.quote(sample, safe="-_.@+=,") + ".pt"
    if name.startswith(".") or len(name.encode()) > 200:
        name = f"{index:08d}.pt"
    return name
