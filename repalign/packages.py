"""Installed packages: the folder a package's data files ship in and a distribution's version, both
found without importing the package (an import can be slow, or fail for reasons of its own)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path


def package_dir(module: str) -> Path | None:
    """Folder of the installed package or module ``module`` (dotted names allowed), or None when it
    or a parent package is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:  # a dotted name whose parent package is missing
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:  # a package: its (first) folder, also for namespace packages
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def package_version(distribution: str) -> str | None:
    """Installed version of the distribution ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
