"""Extraction and layer comparison on a Dask cluster (optional: ``pip install 'repalign[dask]'``).

- :mod:`repalign.distributed.cluster`: the ``--cluster`` specs (``local:N``, ``tcp://HOST:PORT``,
  ``slurm:CONFIG.yaml``) and the client's lifecycle, with bounded waits.
- :mod:`repalign.distributed.extraction`: :func:`extract_distributed`, shards of whole length
  batches extracted on workers by :func:`repalign.extract.extract_model`, merged in shard order by
  :func:`embeddings_cache.merge_shards`; the cache of a single-process run.
- :mod:`repalign.distributed.comparison`: :func:`align_layers_distributed`, the metrics engine's
  per-layer states (:func:`repalign.metrics.engine.layer_state`) built on workers; the numbers of
  :func:`repalign.metrics.align_layers_multi`.

See docs/scaling.md. The names below load their module on first use, so a worker that runs a shard
of an extraction does not import the metrics engine (less memory under a worker's memory limit).
"""

import importlib

_EXPORTS = {
    **dict.fromkeys(("CLUSTER_FORMS", "connect_timeout_s", "WORKER_TIMEOUT_S", "PAUSED_TIMEOUT_S", "ClusterSpec",
                     "check_slurm_queue", "gather_watched", "open_client", "parse_cluster", "read_slurm_config"),
                    "repalign.distributed.cluster"),
    **dict.fromkeys(("DaskCandidateSearch", "align_layers_distributed", "distributed_knn_state"),
                    "repalign.distributed.comparison"),
    **dict.fromkeys(("DistributedModelRun", "extract_distributed", "plan_shards", "shard_folder"),
                    "repalign.distributed.extraction"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'repalign.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
