"""Compare two models stored in embeddings caches, layer by layer: the Python side of ``repalign compare``.

Samples are matched by id (the intersection of both models' ids, with content hashes checked),
never by position. Each layer is read once, prepared (``normalize``), and the per-layer state is
shared by every layer pair and every metric of a call.

- :mod:`repalign.compare.options`: :class:`EngineOptions`, :class:`StatsOptions`, :class:`TokenOptions`
  (the settings, validated where built);
- :mod:`repalign.compare.sources`: what is scored per layer (arrays, :class:`CacheLayer`, :class:`TokenLayer`);
- :mod:`repalign.compare.run`: the checks, the scoring with statistics and the tidy table, shared by
  :func:`compare_models` (pooled layers, :mod:`repalign.compare.pooled`), :func:`compare_tokens` (token rows, :mod:`repalign.compare.tokens`)
  and :func:`compare_curves` (every k on seeded subsets of several sizes, :mod:`repalign.compare.curves`).
"""

from __future__ import annotations

from repalign.compare.controls import compare_controls
from repalign.compare.curves import compare_curves
from repalign.compare.every_pair import CacheComparison, compare_cache, k_for_samples
from repalign.compare.headline import headlines
from repalign.compare.options import EngineOptions, StatsOptions, TokenOptions
from repalign.compare.pooled import compare_models
from repalign.compare.run import Comparison, select_layers
from repalign.compare.sources import CacheLayer, TokenLayer, TokenRows
from repalign.compare.tokens import compare_tokens

__all__ = ["CacheComparison", "CacheLayer", "Comparison", "EngineOptions", "StatsOptions", "TokenLayer", "TokenOptions", "TokenRows",
           "compare_cache", "compare_controls", "compare_curves", "compare_models", "compare_tokens", "headlines", "k_for_samples", "select_layers"]
