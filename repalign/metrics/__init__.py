"""Alignment metrics between two feature matrices whose row i is the same sample.

Pure functions on arrays (no files, no models): kNN metrics (mutual_knn / mknn, cycle_knn,
lcs_knn, edit_distance_knn), kernel metrics (cka, unbiased_cka, cka_rbf, cknna, hsic), svcca,
distance_correlation; ``prepare`` for explicit preprocessing; the registry (``get_metric``,
``metric_names``) and the layer engine (``align_layers``). Conventions: docs/metrics.md.
"""

from repalign.metrics.cca import svcca
from repalign.metrics.distance import distance_correlation
from repalign.metrics.kernel import cka, cknna, hsic, unbiased_cka
from repalign.metrics.knn import KnnState, cycle_knn, edit_distance_knn, lcs_knn, mknn, mutual_knn, nearest_neighbors
from repalign.metrics.layers import LayerAlignment, align_layers, align_layers_multi, format_params
from repalign.metrics.prepare import prepare
from repalign.metrics.registry import METRICS, Metric, cka_rbf, get_metric, metric_names

dcor = distance_correlation

__all__ = [
    "KnnState",
    "LayerAlignment",
    "METRICS",
    "Metric",
    "align_layers",
    "align_layers_multi",
    "cka",
    "cka_rbf",
    "cknna",
    "cycle_knn",
    "dcor",
    "distance_correlation",
    "edit_distance_knn",
    "format_params",
    "get_metric",
    "hsic",
    "lcs_knn",
    "metric_names",
    "mknn",
    "mutual_knn",
    "nearest_neighbors",
    "prepare",
    "svcca",
    "unbiased_cka",
]
