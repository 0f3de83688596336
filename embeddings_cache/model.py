"""CachedModel: one model of a cache as a Python object, ``Cache(path)["antiberty"]``.

An embeddings cache is to layer activations what an AnnData object is to a single-cell matrix:
``model.ids`` names the rows, ``model["layer.3"]`` is the (n_samples, D) array of one layer,
``model.provenance`` says how it was made, and :meth:`CachedModel.to_anndata` /
:meth:`CachedModel.to_xarray` hand the whole model to those ecosystems. Layers are read from disk
when asked for, one at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from embeddings_cache.errors import CacheError

if TYPE_CHECKING:
    from embeddings_cache.reader import Cache

#: name of the sample axis in xarray objects
SAMPLE_DIM = "sample"


class CachedModel:
    """One model of an open :class:`~embeddings_cache.Cache` (read-only; reads go through the cache)."""

    def __init__(self, cache: "Cache", name: str):
        self.cache = cache
        self.name = name

    def __repr__(self) -> str:
        return (f"CachedModel({self.name!r}: {self.n_samples} samples, {len(self.layers)} pooled layers, "
                f"{len(self.token_layers)} token layers; cache {str(self.cache.path)!r})")

    # ---- description --------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        """Sample ids, in stored order (row i of every layer is sample ids[i])."""
        return self.cache.ids(self.name)

    @property
    def hashes(self) -> list[str]:
        """sha256 of each sample's input, aligned with :attr:`ids` (64 zeros: not known)."""
        return self.cache.hashes(self.name)

    @property
    def provenance(self) -> dict[str, Any]:
        return self.cache.provenance(self.name)

    @property
    def layers(self) -> list[str]:
        """Pooled layers in model order (the keys of ``model[...]``)."""
        return self.cache.layers(self.name)

    @property
    def token_layers(self) -> list[str]:
        return self.cache.token_layers(self.name)

    @property
    def outputs(self) -> list[str]:
        return self.cache.outputs(self.name)

    @property
    def n_samples(self) -> int:
        return self.cache.n_samples(self.name)

    def __len__(self) -> int:
        return self.n_samples

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

    def keys(self) -> list[str]:
        return self.layers

    def summary(self):
        """The rows of :meth:`Cache.summary` that describe this model (a pandas DataFrame)."""
        table = self.cache.summary()
        return table[table["model"] == self.name].reset_index(drop=True)

    # ---- arrays -------------------------------------------------------------------------------
    def __getitem__(self, layer: str) -> np.ndarray:
        """Pooled features of one layer, (n_samples, D) float32, rows in :attr:`ids` order."""
        if layer not in self.layers and layer in self.token_layers:
            raise CacheError(
                f"model {self.name!r} stores layer {layer!r} per token only; read it with .tokens({layer!r}), "
                "or pool it with 'repalign cache repool'"
            )
        return self.cache.read_layer(self.name, layer)

    def layer(self, layer: str, ids: Sequence[str] | None = None, dtype: Any = np.float32) -> np.ndarray:
        """Pooled features of one layer, rows in stored order or in the order of ``ids``."""
        return self.cache.read_layer(self.name, layer, ids=ids, dtype=dtype)

    def tokens(self, layer: str, ids: Sequence[str] | None = None, dtype: Any = np.float32) -> list[np.ndarray]:
        """Per-token features of one layer: one (L_i, D) array per sample."""
        data, offsets = self.cache.read_tokens(self.name, layer, ids=ids, dtype=dtype)
        return [data[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]

    def output(self, name: str, ids: Sequence[str] | None = None) -> np.ndarray:
        """A per-sample scalar output (energy, pLDDT, ...), NaN where not available."""
        return self.cache.read_output(self.name, name, ids=ids)

    def _pooled_layers(self, layers: Sequence[str] | None) -> list[str]:
        if layers is None:
            return self.layers
        if isinstance(layers, str):
            layers = [layers]
        unknown = [l for l in layers if l not in self.layers]
        if unknown:
            raise CacheError(f"model {self.name!r} has no pooled layer(s) {unknown}; its pooled layers: {self.layers}")
        return list(layers)

    # ---- other ecosystems ---------------------------------------------------------------------
    def to_anndata(self, layers: Sequence[str] | None = None):
        """An ``anndata.AnnData`` with one row per sample: ``obs_names`` = ids, ``obs["content_hash"]``,
        one ``obs`` column per scalar output, one ``obsm`` entry per pooled layer, and
        ``uns["provenance"]`` (JSON text), ``uns["layers"]`` (layer order) and ``uns["model"]``.
        ``X`` is empty (no variables): layers differ in width, so none is privileged."""
        try:
            import anndata
            import pandas as pd
        except ImportError:
            raise CacheError("to_anndata needs anndata; pip install 'repalign[anndata]'") from None
        chosen = self._pooled_layers(layers)
        obs = pd.DataFrame(index=pd.Index(self.ids, dtype=object, name=None))
        obs["content_hash"] = np.asarray(self.hashes, dtype=object)
        for name in self.outputs:
            obs[name] = self.output(name)
        return anndata.AnnData(
            obs=obs,
            obsm={layer: self[layer] for layer in chosen},
            uns={"model": self.name, "layers": list(chosen), "provenance": json.dumps(self.provenance, sort_keys=True)},
        )

    def to_xarray(self, layers: Sequence[str] | None = None):
        """An ``xarray.Dataset``: one variable per pooled layer with dims (``sample``, ``<layer>.dim``),
        one per scalar output with dim ``sample``; coordinates ``sample`` (ids) and ``content_hash``;
        attrs ``model``, ``layers`` and ``provenance`` (JSON text). Needs xarray (optional)."""
        try:
            import xarray as xr
        except ImportError:
            raise CacheError("to_xarray needs xarray; pip install xarray") from None
        chosen = self._pooled_layers(layers)
        data_vars: dict[str, Any] = {layer: ((SAMPLE_DIM, f"{layer}.dim"), self[layer]) for layer in chosen}
        for name in self.outputs:
            if name in data_vars:
                raise CacheError(f"model {self.name!r} has an output and a layer both named {name!r}")
            data_vars[name] = ((SAMPLE_DIM,), self.output(name))
        return xr.Dataset(
            data_vars,
            coords={SAMPLE_DIM: np.asarray(self.ids, dtype=object),
                    "content_hash": (SAMPLE_DIM, np.asarray(self.hashes, dtype=object))},
            attrs={"model": self.name, "layers": json.dumps(list(chosen)),
                   "provenance": json.dumps(self.provenance, sort_keys=True)},
        )
