"""CacheWriter: appends batches of one model's features to a cache, crash-safely, one writer at a time."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from embeddings_cache.format import (
    COMPRESSIONS,
    FORMAT_VERSION,
    HASHES,
    IDS,
    MODELS_GROUP,
    POOLED,
    STORAGE_DTYPES,
    TOKEN_DATA,
    TOKENS,
    CacheError,
    check_format,
    check_hash,
    check_name,
    check_names,
    few,
    first_line,
    list_parts,
    lock_path,
    open_h5,
    read_strings,
    to_json,
)
from embeddings_cache.journal import (
    consolidate,
    create_empty,
    model_header,
    remove_stale_temporaries,
    write_part,
)


class CacheWriter:
    """Append one model's features to the cache at ``path``, batch by batch.

    Parameters
    ----------
    path : cache file (created when missing; its folder must exist).
    model : model name, the group the features go to.
    provenance : JSON-able dict describing how the features were made (model name and version,
        weights id or hash, package versions, dtype, device, pooling, ...). ``provenance["options"]``
        are the extraction options: resuming with different options is refused. The writer adds
        ``created`` (UTC, ISO 8601) and ``format_version``.
    layers : pooled layers, in model order; every batch gives an (n, D) array for each.
    token_layers : layers whose per-token (per residue / atom) rows are also stored, ragged.
    dtype : storage dtype of features, "float32" or "float16" (float16 halves the file; values
        beyond +-65504 are refused).
    overwrite : replace this model's stored data. Without it, an existing model is resumed, and
        different options or layers are an error. The old data stays readable until the first
        batch of the new run is durable (or until ``close`` when no batch is appended).
    compression : "lzf" (default: fast; any h5py reads it), "gzip" (about 5x slower to write and
        read, readable by every HDF5 tool) or None.

    Every :meth:`append` is durable when it returns: a process killed at any moment keeps every
    completed batch, and a new writer resumes from there (see :meth:`stored`). Use as a context
    manager; completed batches are kept when the block raises.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: str,
        provenance: Mapping[str, Any],
        layers: Sequence[str],
        token_layers: Sequence[str] = (),
        dtype: str = "float32",
        overwrite: bool = False,
        compression: str | None = "lzf",
    ):
        self.path = Path(path)
        # the real file: a symlinked cache is updated where it lives, and locked there
        self._file = Path(os.path.realpath(self.path))
        self.model = check_name(model, "model")
        if not isinstance(provenance, Mapping):
            raise CacheError(f"provenance must be a dict, got {type(provenance).__name__}")
        self.layers = check_names(layers, "layer")
        self.token_layers = check_names(token_layers, "token layer")
        if str(dtype) not in STORAGE_DTYPES:
            raise CacheError(f"storage dtype {dtype!r} is not supported; use one of {list(STORAGE_DTYPES)}")
        self.dtype = np.dtype(str(dtype))
        if compression not in COMPRESSIONS:
            raise CacheError(f"compression {compression!r} is not supported; use one of {list(COMPRESSIONS)}")
        if not self.layers and not self.token_layers:
            raise CacheError(f"model {model!r}: no layers given; pass at least one layer or token layer")
        self.options = dict(provenance).get("options", {})
        if not isinstance(self.options, Mapping):
            raise CacheError(
                f"provenance['options'] must be a dict of extraction options, got {type(self.options).__name__}"
            )
        prov = dict(provenance)
        prov["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        prov["format_version"] = FORMAT_VERSION
        self._header = {
            "provenance": to_json(prov, f"provenance of model {model!r}"),
            "layers": to_json(self.layers, "layers"),
            "token_layers": to_json(self.token_layers, "token layers"),
            "outputs": "[]",
            "dtype": self.dtype.name,
            "compression": compression or "none",
        }
        self._closed = True
        self._lock_fd: int | None = None
        self._lock_fd = self._acquire_lock()
        try:
            self._open(overwrite)
        except BaseException:
            self._release_lock()
            raise
        self._closed = False

    # ---- lock ---------------------------------------------------------------------------------
    def _acquire_lock(self) -> int:
        if not self._file.parent.is_dir():
            raise CacheError(f"folder {self.path.parent} does not exist; create it first")
        lock = lock_path(self._file)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CacheError(
                    f"cache {self.path} is being written by another process (pid {holder}); "
                    "wait for it or write to another file"
                ) from None
            raise CacheError(f"cannot lock {lock} ({e}); put the cache on a local filesystem") from None
        # the lock file outlives the writer on purpose: deleting it would race with a waiting writer
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- opening ------------------------------------------------------------------------------
    def _open(self, overwrite: bool) -> None:
        remove_stale_temporaries(self._file)
        if not self._file.exists():
            create_empty(self._file)
        else:
            with open_h5(self._file) as f:
                check_format(f, self._file)
        # a previous writer was killed: fold its completed batches in first
        consolidate(self._file)
        self._seq = 0
        self._stored: dict[str, str] = {}
        self._dims: dict[str, int] = {}
        self._token_dims: dict[str, int] = {}
        self._output_names: list[str] | None = None
        ids: list[str] = []
        with open_h5(self._file) as f:
            models = f[MODELS_GROUP]
            group = models[self.model] if self.model in models else None
            if group is not None and not overwrite:
                try:
                    stored = model_header(group)
                    ids = read_strings(group[IDS])
                    hashes = read_strings(group[HASHES])
                    dims = {k: v.shape[1] for k, v in group.get(POOLED, {}).items()}
                    token_dims = {k: v[TOKEN_DATA].shape[1] for k, v in group.get(TOKENS, {}).items()}
                except (OSError, KeyError, ValueError) as e:
                    raise CacheError(
                        f"model {self.model!r} in {self.path} is damaged ({first_line(e)}); "
                        "pass overwrite=True to re-extract it"
                    )
        if group is None or overwrite or not ids:
            # a new model, a model to replace, or one with no rows yet (nothing to keep)
            self._starts_model = True
        else:
            self._check_same_config(stored)
            self._starts_model = False
            self._stored = dict(zip(ids, hashes))
            self._dims = dims
            self._token_dims = token_dims
            self._output_names = list(stored["outputs"])
            self._header["provenance"] = to_json(stored["provenance"], "provenance")
        if self._starts_model and not overwrite:
            # make the model visible at once; for overwrite, the old data stays until the first batch
            self._write(ids=[], hashes=[], pooled={}, tokens={}, outputs={})

    def _check_same_config(self, stored: dict[str, Any]) -> None:
        what = f"model {self.model!r} in {self.path}"
        fix = "pass overwrite=True to replace its data, or write to another cache file"
        stored_options = stored["provenance"].get("options", {})
        if to_json(stored_options, "options") != to_json(self.options, "options"):
            keys = sorted(
                k
                for k in set(stored_options) | set(self.options)
                if to_json(stored_options.get(k), "o") != to_json(self.options.get(k), "o")
            )
            diff = ", ".join(f"{k}: {stored_options.get(k)!r} -> {self.options.get(k)!r}" for k in keys)
            raise CacheError(f"{what} was extracted with other options ({diff}); {fix}")
        for key, label in (("layers", "layers"), ("token_layers", "token layers")):
            mine = getattr(self, key)
            if stored[key] != mine:
                raise CacheError(f"{what} has {label} {stored[key]}, this run asks for {mine}; {fix}")
        if stored["dtype"] != self.dtype.name:
            raise CacheError(f"{what} is stored as {stored['dtype']}, this run asks for {self.dtype.name}; {fix}")

    # ---- public API ---------------------------------------------------------------------------
    def stored(self) -> dict[str, str]:
        """id -> content hash of the samples already stored for this model (including this run's)."""
        return dict(self._stored)

    def append(
        self,
        ids: Sequence[str],
        hashes: Sequence[str],
        pooled: Mapping[str, Any],
        tokens: Mapping[str, Sequence[Any]] | None = None,
        outputs: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one batch of n samples; durable when this returns.

        pooled: layer -> (n, D) array, for every layer of the writer.
        tokens: layer -> list of n arrays (L_i, D), for every token layer of the writer.
        outputs: name -> (n,) per-sample scalars (NaN = not available); the first batch of the
            model fixes the names.
        Invalid input raises CacheError and writes nothing.
        """
        if self._closed:
            raise CacheError(f"writer of {self.path} is closed; open a new CacheWriter to append")
        batch = self._validate(ids, hashes, pooled, tokens or {}, outputs or {})
        if batch is None:
            return
        self._write(**batch)
        ids = batch["ids"]
        self._stored.update(zip(ids, batch["hashes"]))
        for layer, arr in batch["pooled"].items():
            self._dims[layer] = arr.shape[1]
        for layer, (data, _) in batch["tokens"].items():
            self._token_dims[layer] = data.shape[1]
        self._output_names = list(batch["outputs"])

    def close(self) -> None:
        """Consolidate this run's batches into the main file and release the lock."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._starts_model:
                # overwrite with no batch appended: the model is replaced by an empty one
                self._write(ids=[], hashes=[], pooled={}, tokens={}, outputs={})
            consolidate(self._file)
        finally:
            self._release_lock()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------------------------
    def _write(self, **batch: Any) -> None:
        parts = list_parts(self._file)
        self._seq = max(self._seq, parts[-1][0] + 1 if parts else 0)
        header = dict(self._header)
        header["outputs"] = to_json(list(batch["outputs"]), "outputs")
        write_part(self._file, self._seq, self.model, header, self._starts_model, **batch)
        self._seq += 1
        self._starts_model = False

    def _validate(self, ids, hashes, pooled, tokens, outputs) -> dict[str, Any] | None:
        if isinstance(ids, str) or isinstance(hashes, str):
            raise CacheError("ids and hashes must be lists of strings, not a single string; wrap them in lists")
        ids = list(ids)
        hashes = list(hashes)
        n = len(ids)
        if len(hashes) != n:
            raise CacheError(f"{n} ids but {len(hashes)} content hashes; give one hash per id")
        for i in ids:
            if not isinstance(i, str) or not i:
                raise CacheError(f"sample id {i!r} is not a non-empty string; give string ids")
        dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != n else []
        if dup:
            raise CacheError(f"ids repeated within the batch: {few(dup)}; give each sample once")
        again = [i for i in ids if i in self._stored]
        if again:
            raise CacheError(
                f"model {self.model!r} already stores ids {few(again)}; skip the samples in writer.stored()"
            )
        hashes = [check_hash(h, i) for h, i in zip(hashes, ids)]
        if n == 0:
            return None
        if not isinstance(pooled, Mapping) or not isinstance(tokens, Mapping) or not isinstance(outputs, Mapping):
            raise CacheError("pooled, tokens and outputs must be dicts keyed by layer / output name")
        self._check_keys(pooled, self.layers, "pooled layers")
        self._check_keys(tokens, self.token_layers, "token layers")
        if self._output_names is not None:
            self._check_keys(outputs, self._output_names, "outputs")
        for name in outputs:
            check_name(name, "output")

        pooled_arrays = {}
        for layer in self.layers:
            arr = self._features(pooled[layer], f"pooled layer {layer!r}")
            if arr.ndim != 2 or arr.shape[0] != n:
                raise CacheError(f"pooled layer {layer!r} has shape {arr.shape}, expected ({n}, D) for {n} ids")
            self._check_dim(layer, arr.shape[1], self._dims, "pooled layer")
            pooled_arrays[layer] = arr
        token_arrays = {}
        for layer in self.token_layers:
            rows = tokens[layer]
            if isinstance(rows, (str, bytes, Mapping)) or not hasattr(rows, "__len__") or len(rows) != n:
                raise CacheError(f"token layer {layer!r} needs a list of {n} arrays (L_i, D), one per id")
            mats = [self._features(r, f"token layer {layer!r} of sample {i!r}") for r, i in zip(rows, ids)]
            dims = {m.shape[1] if m.ndim == 2 else -1 for m in mats}
            if -1 in dims or len(dims) != 1:
                shapes = [m.shape for m in mats[:5]]
                raise CacheError(f"token layer {layer!r}: arrays must be (L_i, D) with one D, got shapes {shapes}")
            dim = dims.pop()
            self._check_dim(layer, dim, self._token_dims, "token layer")
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum([m.shape[0] for m in mats], out=offsets[1:])
            data = np.concatenate(mats, axis=0) if offsets[-1] else np.zeros((0, dim), self.dtype)
            token_arrays[layer] = (data, offsets)
        output_arrays = {}
        for name in sorted(outputs):
            try:
                arr = np.asarray(outputs[name], dtype=np.float64)
            except (TypeError, ValueError):
                raise CacheError(f"output {name!r} is not numeric; give (n,) numbers")
            if arr.shape != (n,):
                raise CacheError(f"output {name!r} has shape {arr.shape}, expected ({n},) for {n} ids")
            if np.isinf(arr).any():
                raise CacheError(f"output {name!r} holds infinite values; use NaN for 'not available'")
            output_arrays[name] = arr
        return {"ids": ids, "hashes": hashes, "pooled": pooled_arrays, "tokens": token_arrays, "outputs": output_arrays}

    def _features(self, value: Any, what: str) -> np.ndarray:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise CacheError(
                f"{what} is not an array ({first_line(e)}); give a numpy array (float32 for bfloat16 tensors)"
            )
        if arr.dtype.kind not in "fiu":
            raise CacheError(f"{what} has dtype {arr.dtype}; give real numbers (float32 for bfloat16 tensors)")
        if not np.isfinite(arr).all():
            raise CacheError(f"{what} holds NaN or infinite values; check the model run (dtype, inputs)")
        with np.errstate(over="ignore"):  # overflow is reported below, as an error
            stored = arr.astype(self.dtype)
        if not np.isfinite(stored).all():
            raise CacheError(f"{what} has values beyond the float16 range (+-65504); use dtype='float32'")
        return stored

    def _check_keys(self, given: Mapping, expected: list[str], what: str) -> None:
        missing = [k for k in expected if k not in given]
        extra = [k for k in given if k not in expected]
        if missing or extra:
            raise CacheError(
                f"{what} of model {self.model!r}: missing {missing}, unexpected {extra}; "
                f"give exactly {expected}"
            )

    def _check_dim(self, layer: str, dim: int, known: dict[str, int], what: str) -> None:
        if layer in known and known[layer] != dim:
            raise CacheError(
                f"{what} {layer!r} of model {self.model!r} has width {dim}, earlier batches {known[layer]}; "
                "the same layer must keep its width"
            )
