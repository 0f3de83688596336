"""Extraction and layer comparison on a Dask cluster (optional: ``pip install 'repalign[dask]'``).

- :mod:`repalign.distributed.cluster`: the ``--cluster`` specs (``local:N``, ``tcp://HOST:PORT``,
  ``slurm:CONFIG.yaml``) and the client's lifecycle, with bounded waits.
- :mod:`repalign.distributed.extraction`: :func:`extract_distributed`, shards of whole length
  batches extracted on workers by :func:`repalign.extract.extract_model`, merged in shard order by
  :func:`embeddings_cache.merge_shards`; the cache of a single-process run.
- :mod:`repalign.distributed.comparison`: :func:`align_layers_distributed`, the metrics engine's
  per-layer states (:func:`repalign.metrics.engine.layer_state`) built on workers; the numbers of
  :func:`repalign.metrics.align_layers_multi`.

See docs/scaling.md.
"""

from repalign.distributed.cluster import (
    CLUSTER_FORMS,
    CONNECT_TIMEOUT_S,
    WORKER_TIMEOUT_S,
    ClusterSpec,
    check_slurm_queue,
    open_client,
    parse_cluster,
    read_slurm_config,
)
from repalign.distributed.comparison import CacheLayer, DaskCandidateSearch, align_layers_distributed, distributed_knn_state
from repalign.distributed.extraction import DistributedModelRun, extract_distributed, plan_shards, shard_folder

__all__ = [
    "CLUSTER_FORMS", "CONNECT_TIMEOUT_S", "WORKER_TIMEOUT_S", "ClusterSpec", "check_slurm_queue", "open_client",
    "parse_cluster", "read_slurm_config",
    "CacheLayer", "DaskCandidateSearch", "align_layers_distributed", "distributed_knn_state",
    "DistributedModelRun", "extract_distributed", "plan_shards", "shard_folder",
]
