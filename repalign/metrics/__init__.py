"""Alignment metrics between two feature matrices whose row i is the same sample.

Pure functions on arrays (no files, no models): kNN metrics (mutual_knn / mknn, cycle_knn,
lcs_knn, edit_distance_knn), kernel metrics (cka, unbiased_cka, cka_rbf, cknna, hsic), svcca
(Raghu et al.) and svcca_platonic, pwcca, distance_correlation and its bias-corrected version;
procrustes, shape_similarity / angular_shape_distance (Williams et al.), rsa, information_imbalance
(asymmetric; registered as 1 - imbalance per direction) and the per-layer intrinsic_dimension;
``prepare`` for explicit preprocessing; ``relative_representation`` (anchors, Moschella et al.
2023); the registry (``get_metric``, ``metric_names``,
``register_metric``); the layer-state engine (``layer_state``, ``score``; :mod:`.engine`) and the
layer matrix built on it (``align_layers``). Conventions, ties included: docs/metrics.md.
"""

from repalign.metrics._validate import as_features
from repalign.metrics.anchors import draw_anchors, relative_representation
from repalign.metrics.cca import pwcca, svcca, svcca_platonic
from repalign.metrics.distance import bias_corrected_distance_correlation, distance_correlation
from repalign.metrics.engine import LayerState, layer_state, resolve_metrics, score
from repalign.metrics.imbalance import information_imbalance, information_imbalances
from repalign.metrics.intrinsic import intrinsic_dimension
from repalign.metrics.kernel import cka, cknna, hsic, unbiased_cka
from repalign.metrics.knn import KnnState, cycle_knn, edit_distance_knn, lcs_knn, mknn, mutual_knn, nearest_neighbors
from repalign.metrics.layers import LayerAlignment, align_layers, align_layers_multi, format_params
from repalign.metrics.prepare import prepare
from repalign.metrics.registry import METRICS, Metric, cka_rbf, get_metric, metric_names, register_metric
from repalign.metrics.rsa import rsa
from repalign.metrics.shape import angular_shape_distance, procrustes, shape_similarity

dcor = distance_correlation
bcdcor = bias_corrected_distance_correlation

__all__ = [
    "METRICS",
    "KnnState",
    "LayerAlignment",
    "LayerState",
    "Metric",
    "align_layers",
    "align_layers_multi",
    "angular_shape_distance",
    "as_features",
    "bcdcor",
    "bias_corrected_distance_correlation",
    "cka",
    "cka_rbf",
    "cknna",
    "cycle_knn",
    "dcor",
    "distance_correlation",
    "draw_anchors",
    "edit_distance_knn",
    "format_params",
    "get_metric",
    "hsic",
    "information_imbalance",
    "information_imbalances",
    "intrinsic_dimension",
    "layer_state",
    "lcs_knn",
    "metric_names",
    "mknn",
    "mutual_knn",
    "nearest_neighbors",
    "prepare",
    "procrustes",
    "pwcca",
    "register_metric",
    "relative_representation",
    "resolve_metrics",
    "rsa",
    "score",
    "shape_similarity",
    "svcca",
    "svcca_platonic",
    "unbiased_cka",
]
