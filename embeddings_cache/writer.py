"""CacheWriter: appends batches of one model's features to a cache, crash-safely, one writer at a time."""

from __future__ import annotations

import errno
import os
import stat
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from embeddings_cache.atomic import copy_permissions
from embeddings_cache.durable import is_read_only, require_posix_locks
from embeddings_cache.errors import CacheError
from embeddings_cache.format import (
    CACHE_COMPRESSION,
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    FORMAT_VERSION,
    HASHES,
    ID_INDEX,
    ID_KEYS,
    IDS,
    MODELS_GROUP,
    OUTPUTS,
    POOLED,
    STORAGE_DTYPES,
    TOKEN_DATA,
    TOKENS,
    check_format,
    check_hash,
    check_id_keys,
    check_name,
    check_names,
    check_regular,
    few,
    first_line,
    id_keys,
    keys_by_row,
    list_parts,
    lock_path,
    open_h5,
    packed_strings,
    read_strings,
    to_json,
)
from embeddings_cache.journal import (
    PartInfo,
    checked_part_ids,
    consolidate,
    create_empty,
    list_part_infos,
    model_header,
    recover,
    remove_stale_temporaries,
    write_part,
)
from embeddings_cache.untrusted import check_file, check_links, check_row_datasets


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
        different options or layers are an error. The new run's batches are staged in the journal
        and replace the old data only when the writer closes without an error (a successful
        run); until then readers see the old data. An interrupted overwrite is resumed by the
        next ``overwrite=True`` writer with the same options, or discarded by one with others.
    compression : "gzip" (readable by every HDF5 tool), "lzf" (about 4x faster to write and read;
        other tools than h5py need the lzf filter plugin), None or "none". The default, "default",
        is gzip in a new cache and the compression of the models already in an existing cache
        (a model keeps the compression it was created with in any case).
    staged : a new (or empty) model appears whole or not at all: the run's batches stay in the
        journal, unseen by readers, until the writer closes without an error, as an overwrite's
        do. A run interrupted or failed before is resumed by the next staged writer of the model
        with the same options (:meth:`stored` lists its samples) and discarded by one with other
        options; ``Cache.describe`` names it meanwhile. (A model that already holds samples is
        appended to as without it.)

    Every :meth:`append` is durable when it returns: a process killed at any moment keeps every
    completed batch, and a new writer resumes from there (see :meth:`stored`). Use as a context
    manager; completed batches are kept when the block raises (an overwrite is then not
    committed: the old data stays).

    The cache file keeps its permission bits and group; a cache without any write permission bit
    (``chmod a-w``) is refused, also for root.
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
        compression: str | None = CACHE_COMPRESSION,
        staged: bool = False,
    ):
        self.path = Path(path)
        # the real file: a symlinked cache is updated where it lives, and locked there
        self._file = Path(os.path.realpath(self.path))
        self.model = check_name(model, "model")
        self.staged = bool(staged)
        if not isinstance(provenance, Mapping):
            raise CacheError(f"provenance must be a dict, got {type(provenance).__name__}")
        self.layers = check_names(layers, "layer")
        self.token_layers = check_names(token_layers, "token layer")
        if str(dtype) not in STORAGE_DTYPES:
            raise CacheError(f"storage dtype {dtype!r} is not supported; use one of {list(STORAGE_DTYPES)}")
        self.dtype = np.dtype(str(dtype))
        compression = None if compression == "none" else compression
        if compression not in (*COMPRESSIONS, CACHE_COMPRESSION):
            raise CacheError(f"compression {compression!r} is not supported; use gzip, lzf or none")
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
        check_target(self.path, self._file)  # before the lock file is created next to it
        self._lock_fd = self._acquire_lock()
        try:
            self._open(overwrite)
        except BaseException:
            self._release_lock()
            raise
        self._closed = False

    # ---- lock ---------------------------------------------------------------------------------
    def _acquire_lock(self) -> int:
        locks = require_posix_locks(self.path)  # writers are POSIX-only; readers are not
        if not self._file.parent.is_dir():
            raise CacheError(f"folder {self.path.parent} does not exist; create it first")
        lock = lock_path(self._file)
        try:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                # a new lock file gets the mode and group of the cache (of this process if none yet)
                copy_permissions(fd, self._file if self._file.exists() else None)
            except FileExistsError:
                fd = os.open(lock, os.O_RDWR)
        except OSError as e:
            raise CacheError(
                f"cannot create the lock file {lock} ({e.strerror}); writing a cache needs a writable folder"
            ) from None
        try:
            locks.flock(fd, locks.LOCK_EX | locks.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CacheError(
                    f"cache {self.path} is being written by another process (pid {holder}); "
                    "wait for it or write to another file"
                ) from None
            raise CacheError(f"cannot lock {lock} ({e}); put the cache on a local filesystem") from None
        # the lock file outlives the writer on purpose: deleting it would race with a waiting writer.
        # Its first 32 bytes hold the pid; later bytes belong to readers (embeddings_cache.durable)
        os.pwrite(fd, str(os.getpid()).encode().ljust(32), 0)
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            locks = require_posix_locks(self.path)
            locks.flock(self._lock_fd, locks.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- opening ------------------------------------------------------------------------------
    def _open(self, overwrite: bool) -> None:
        remove_stale_temporaries(self._file)
        if not self._file.exists():
            create_empty(self._file)
        else:
            check_target(self.path, self._file)  # again, now that no other writer can change it
            recover(self._file)
            with open_h5(self._file) as f:
                check_format(f, self._file)
        # a previous writer was killed: fold its completed batches in first
        consolidate(self._file)
        self._run = ""  # the run id when this writer stages an overwrite
        self._seq = 0
        self._stored: dict[str, str] = {}
        self._dims: dict[str, int] = {}
        self._token_dims: dict[str, int] = {}
        self._output_names: list[str] | None = None
        with open_h5(self._file) as f:
            check_links(f, self.path)  # names lead to the file's own objects only
            models = f[MODELS_GROUP]
            if self._header["compression"] == CACHE_COMPRESSION:
                self._header["compression"] = cache_compression(models)
            group = models[self.model] if self.model in models else None
            found = self._stored_model(group) if group is not None and not overwrite else None
            try:
                has_rows = group is not None and group[IDS].shape[0] > 0
            except (OSError, KeyError):
                has_rows = True  # damaged: an overwrite stages, the old data goes only at its commit
        staged = [p for p in list_part_infos(self._file) if p.model == self.model]  # only staged parts remain
        starts = found is None or not found["ids"]  # a new model, one to replace, or one with no rows yet
        if overwrite or (self.staged and starts):
            if self._resume_staged(staged):
                return
            # stage when there is data to keep, or when asked to (the model appears whole or not at all)
            self._run = uuidlib.uuid4().hex if has_rows or self.staged else ""
        if starts:
            self._starts_model = True
        else:
            assert found is not None
            self._check_same_config(found["header"])
            self._starts_model = False
            self._stored = dict(zip(found["ids"], found["hashes"]))
            self._dims = found["dims"]
            self._token_dims = found["token_dims"]
            self._output_names = list(found["header"]["outputs"])
            self._header["provenance"] = to_json(found["header"]["provenance"], "provenance")
        if self._starts_model and not self._run:
            # make the model visible at once; an overwrite keeps the old data until it commits
            self._write(ids=[], hashes=[], pooled={}, tokens={}, outputs={})

    def _stored_model(self, group: Any) -> dict[str, Any]:
        """Header, ids (checked), hashes and layer widths of the stored model, to resume it."""
        try:
            check_row_datasets(group, self.path)  # ids, hashes and the id index, as the reader checks them
            return {
                "header": model_header(group),
                "ids": checked_ids(group, f"model {self.model!r} in {self.path}"),
                "hashes": read_strings(group[HASHES]),
                "dims": {k: v.shape[1] for k, v in group.get(POOLED, {}).items()},
                "token_dims": {k: v[TOKEN_DATA].shape[1] for k, v in group.get(TOKENS, {}).items()},
            }
        except CacheError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise CacheError(
                f"model {self.model!r} in {self.path} is damaged ({first_line(e)}); pass overwrite=True to re-extract it"
            )

    def _resume_staged(self, staged: list[PartInfo]) -> bool:
        """Continue an interrupted overwrite of this model run with the same options; True if so.
        Staged runs with other options are deleted (this overwrite supersedes them)."""
        runs: dict[str, list[PartInfo]] = {}
        for p in staged:
            runs.setdefault(p.run, []).append(p)
        resumed = None
        for run, parts in runs.items():
            contents = _staged_contents(parts) if resumed is None else None
            if contents is not None and self._config_difference(contents["header"]) is None:
                resumed = run
                self._run, self._starts_model = run, False
                self._stored = dict(zip(contents["ids"], contents["hashes"]))
                self._dims, self._token_dims = contents["dims"], contents["token_dims"]
                self._output_names = contents["outputs"]
                self._header["provenance"] = to_json(contents["header"]["provenance"], "provenance")
            else:
                for p in parts:
                    p.path.unlink(missing_ok=True)
        return resumed is not None

    def _check_same_config(self, stored: dict[str, Any]) -> None:
        problem = self._config_difference(stored)
        if problem is not None:
            fix = "pass overwrite=True to replace its data, or write to another cache file"
            raise CacheError(f"model {self.model!r} in {self.path} {problem}; {fix}")

    def _config_difference(self, stored: dict[str, Any]) -> str | None:
        return config_difference(stored, self.options, self.layers, self.token_layers, self.dtype.name)

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
            raise CacheError(f"writer of {self.path} is closed; open the cache for writing again to append")
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

    def close(self, commit: bool = True) -> None:
        """Consolidate this run's batches into the main file and release the lock.

        commit: for an overwrite, replace the model's old data with this run's (the run is
        complete). False keeps the old data and leaves this run's batches in the journal, for the
        next overwrite with the same options to resume. The context manager passes False when
        its block raised.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._run and commit:
                if self._starts_model:  # no batch: the model is replaced by an empty one
                    self._write(ids=[], hashes=[], pooled={}, tokens={}, outputs={})
                self._write(ids=[], hashes=[], pooled={}, tokens={}, outputs={}, commit=True)
            consolidate(self._file)
        finally:
            self._release_lock()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(commit=exc_type is None)

    # ---- internals ----------------------------------------------------------------------------
    def _write(self, commit: bool = False, **batch: Any) -> None:
        parts = list_parts(self._file)
        self._seq = max(self._seq, parts[-1][0] + 1 if parts else 0)
        header = dict(self._header)
        header["outputs"] = to_json(list(batch["outputs"]), "outputs")
        write_part(self._file, self._seq, self.model, header, self._starts_model, run=self._run, commit=commit,
                   **batch)
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
            check_sample_id(i)
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
            arr = self._features(pooled[layer], f"pooled layer {layer!r}", ids)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise CacheError(f"pooled layer {layer!r} has shape {arr.shape}, expected ({n}, D) for {n} ids")
            self._check_dim(layer, arr.shape[1], self._dims, "pooled layer")
            pooled_arrays[layer] = arr
        token_arrays = {}
        for layer in self.token_layers:
            rows = tokens[layer]
            if isinstance(rows, (str, bytes, Mapping)) or not hasattr(rows, "__len__") or len(rows) != n:
                raise CacheError(f"token layer {layer!r} needs a list of {n} arrays (L_i, D), one per id")
            mats = [self._features(r, f"token layer {layer!r}", [i], per_row=False) for r, i in zip(rows, ids)]
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

    def _features(self, value: Any, what: str, ids: list[str], per_row: bool = True) -> np.ndarray:
        """The array in the storage dtype; CacheError naming the sample when a value is not finite
        before or after the cast (a float32 overflow is as wrong as a NaN)."""
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise CacheError(
                f"{what} is not an array ({first_line(e)}); give a numpy array (float32 for bfloat16 tensors)"
            )
        if arr.dtype.kind not in "fiu":
            raise CacheError(f"{what} has dtype {arr.dtype}; give real numbers (float32 for bfloat16 tensors)")
        with np.errstate(over="ignore"):  # overflow is reported below, as an error
            stored = arr.astype(self.dtype)
        for values, problem in ((arr, "NaN or infinite values"), (stored, None)):
            finite = np.isfinite(values)
            if finite.all():
                continue
            sample = ids[int(np.argwhere(~finite)[0][0])] if per_row and values.ndim >= 1 else ids[0]
            if problem is None:
                limit = np.finfo(self.dtype).max
                fix = "use dtype='float32'" if self.dtype == np.float16 else "check the model run (dtype, inputs)"
                problem = f"values beyond the {self.dtype.name} range (+-{limit:.6g})"
            else:
                fix = "check the model run (dtype, inputs)"
            raise CacheError(f"{what} of sample {sample!r} holds {problem}; {fix}")
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


def check_sample_id(sample_id: Any) -> str:
    """Sample ids are stored as HDF5 strings: non-empty, no NUL character."""
    if not isinstance(sample_id, str) or not sample_id:
        raise CacheError(f"sample id {sample_id!r} is not a non-empty string; give string ids")
    if "\x00" in sample_id:
        raise CacheError(f"sample id {sample_id!r} contains a NUL character; remove it from the input")
    return sample_id


def check_target(path: Path, real: Path | None = None) -> None:
    """CacheError unless a writer may write the cache at ``path``: its folder exists and it is
    absent or a writable cache file. Checks only; nothing is created."""
    real = real or Path(os.path.realpath(path))
    if not real.parent.is_dir():
        raise CacheError(f"folder {path.parent} does not exist; create it first")
    if not os.path.lexists(real):
        return
    check_regular(real)
    if is_read_only(os.stat(real)):
        raise CacheError(
            f"cache {path} is read-only (mode {stat.S_IMODE(os.stat(real).st_mode):04o}); "
            f"make it writable (chmod u+w {path}) to add to it, or write to another file"
        )
    with open_h5(real) as f:
        check_format(f, real)


def config_difference(stored: dict[str, Any], options: Mapping[str, Any] | None, layers: list[str] | None,
                      token_layers: list[str] | None, dtype: str | None) -> str | None:
    """How a stored model's header differs from a run's configuration, or None.

    Arguments given as None are not compared."""
    stored_options = stored["provenance"].get("options", {})
    if options is not None and to_json(stored_options, "options") != to_json(options, "options"):
        keys = sorted(
            k for k in set(stored_options) | set(options)
            if to_json(stored_options.get(k), "o") != to_json(options.get(k), "o")
        )
        diff = ", ".join(f"{k}: {stored_options.get(k)!r} -> {options.get(k)!r}" for k in keys)
        return f"was extracted with other options ({diff})"
    for key, label, mine in (("layers", "layers", layers), ("token_layers", "token layers", token_layers)):
        if mine is not None and stored[key] != mine:
            return f"has {label} {stored[key]}, this run asks for {mine}"
    if dtype is not None and stored["dtype"] != dtype:
        return f"is stored as {stored['dtype']}, this run asks for {dtype}"
    return None


def check_can_append(path: str | os.PathLike, model: str | None = None, *, options: Mapping[str, Any] | None = None,
                     layers: Sequence[str] | None = None, token_layers: Sequence[str] | None = None,
                     dtype: str | None = None, overwrite: bool = False) -> None:
    """The checks a :class:`CacheWriter` would make at opening, without opening one (no lock, no
    file created): the target is usable and, unless ``overwrite``, a stored model with samples has
    the same configuration. ``options`` may hold only the options known so far (those not given
    are not compared), so a caller can check before the expensive part of its work (loading a
    model). Raises CacheError with the writer's message."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    check_target(path, real)
    if model is None:
        return
    check_name(model, "model")
    if overwrite or not real.exists():
        return
    with open_h5(real) as f:
        models = f.get(MODELS_GROUP, {})
        if model not in models or models[model][IDS].shape[0] == 0:
            return
        stored = model_header(models[model])
    if options is not None:
        stored_options = stored["provenance"].get("options", {})
        stored["provenance"] = {"options": {k: v for k, v in stored_options.items() if k in options}}
    problem = config_difference(stored, options, None if layers is None else list(layers),
                                None if token_layers is None else list(token_layers), dtype)
    if problem is not None:
        raise CacheError(f"model {model!r} in {path} {problem}; "
                         "pass overwrite=True to replace its data, or write to another cache file")


def cache_compression(models: Any) -> str:
    """The compression a new model of this cache gets by default: that of its first model (so an
    existing cache keeps the one it has), else DEFAULT_COMPRESSION."""
    for name in models:
        value = models[name].attrs.get("compression")
        if value is not None:
            return value.decode() if isinstance(value, bytes) else str(value)
    return DEFAULT_COMPRESSION


def checked_ids(group: Any, where: str) -> list[str]:
    """A model group's ids, each checked against its key in the id index where the index covers it
    (a cache written before the index has no checksum of its ids: they are taken as they are)."""
    packed = packed_strings(group[IDS])
    index = group.get(ID_INDEX)
    if index is not None and int(index.attrs.get("covers", -1)) == len(packed) == index[ID_KEYS].shape[0]:
        check_id_keys(packed, id_keys(packed), keys_by_row(index, len(packed), where), np.arange(len(packed)), where)
    return [x.decode() for x in packed]


def _staged_contents(parts: list[PartInfo]) -> dict[str, Any] | None:
    """Header, ids, hashes, widths and output names of a staged overwrite run; None if unusable."""
    if not parts or not parts[0].starts_model:
        return None
    out: dict[str, Any] = {"ids": [], "hashes": [], "dims": {}, "token_dims": {}, "outputs": None}
    try:
        for part in parts:
            with open_h5(part.path) as p:
                check_file(p, part.path, memory=False)
                if part is parts[0]:
                    out["header"] = model_header(p)
                ids = checked_part_ids(p, part.path)
                if ids and out["outputs"] is None:
                    out["outputs"] = sorted(p.get(OUTPUTS, {}))
                out["ids"] += ids
                out["hashes"] += read_strings(p[HASHES])
                for layer, ds in p.get(POOLED, {}).items():
                    out["dims"][layer] = ds.shape[1]
                for layer, g in p.get(TOKENS, {}).items():
                    out["token_dims"][layer] = g[TOKEN_DATA].shape[1]
    except (CacheError, OSError, KeyError, ValueError):
        return None  # a damaged staged run is not resumed: it is deleted and extracted again
    return out
