"""Helpers every model family shares: weight-file hashing, package versions, availability checks,
forward-hook capture and the provenance record."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from repalign.errors import ModelUnavailable
from repalign.packages import package_version

if TYPE_CHECKING:
    from repalign.models.base import ModelAdapter

_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of one file's bytes.

    Computed once per process and reused while the file's size and mtime are unchanged, because
    weight files are large and provenance is asked for on every extraction.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _SHA256_CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        digest = _SHA256_CACHE[key] = h.hexdigest()
    return digest


def sha256_of_files(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over the given files (sorted by name; name and bytes both hashed):
    sha256 of the concatenated ``name \\0 sha256(bytes)`` of each file."""
    total = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        total.update(path.name.encode() + b"\0" + sha256_of_file(path).encode())
    return total.hexdigest()


def package_versions(*names: str) -> dict[str, str | None]:
    """Installed version of each distribution (None when not installed)."""
    return {name: package_version(name) for name in names}


def missing_modules(*modules: str) -> list[str]:
    """The importable module names among ``modules`` that are not installed, in the given order."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def raise_if_unavailable(adapter: ModelAdapter, name: str | None = None) -> None:
    """Raise ModelUnavailable with the adapter's ``unavailable_reason`` (which names the fix)."""
    reason = adapter.unavailable_reason()
    if reason:
        raise ModelUnavailable(f"model {name or adapter.info.name}: {reason}")


@contextlib.contextmanager
def captured_outputs(modules: Mapping[str, Any], keep: Callable[[str, Any], Any]) -> Iterator[dict[str, Any]]:
    """Forward hooks on ``modules`` (name -> torch module) while the block runs.

    Yields a dict that each hooked module's forward fills with ``keep(name, output)``; the hooks are
    removed on exit, also when the forward raises, so a failed batch leaves the model unhooked.
    """
    captured: dict[str, Any] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, output, name=name: captured.__setitem__(name, keep(name, output)))
        for name, module in modules.items()
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def provenance_record(
    adapter: ModelAdapter,
    weights: Mapping[str, Any],
    packages: Sequence[str],
    *,
    model: str | None = None,
    options: Mapping[str, Any] | None = None,
    notes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance every adapter stores: model, family, the weights fields, package versions,
    dtype, device and options (the adapter's own unless given), then model-specific notes."""
    return {
        "model": model or adapter.info.name,
        "family": adapter.info.family,
        **weights,
        "packages": package_versions(*packages),
        "dtype": adapter.dtype,
        "device": adapter.device,
        "options": dict(adapter.options if options is None else options),
        **(notes or {}),
    }
