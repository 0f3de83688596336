"""Approximate nearest neighbours for very large N (optional: ``pip install 'repalign[faiss]'``).

:func:`approximate_knn` returns neighbour lists in the :class:`~repalign.metrics.KnnState`
convention (inner product, self excluded, decreasing similarity, ties to the lower index,
similarities recomputed exactly in float64) together with their measured recall against exact
lists on a random sample of queries, so every score computed from them can be reported with it.

Methods (Johnson, Douze & Jégou, 2019, "Billion-scale similarity search with GPUs", faiss):

- ``"exact"``: the exact blocked search of :func:`repalign.metrics.nearest_neighbors` (recall 1).
- ``"faiss-hnsw"``: a hierarchical navigable small-world graph (Malkov & Yashunin, 2018),
  ``IndexHNSWFlat`` with inner product; ``hnsw_m`` links per node, ``ef_search`` candidates per query.
- ``"faiss-ivf"``: an inverted file, ``IndexIVFFlat`` with ``nlist`` k-means cells (default
  ≈ 4·√N) of which ``nprobe`` are searched.
"""

from __future__ import annotations

import numbers

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_features, check_int, check_k
from repalign.metrics.knn import KnnState, knn_state

KNN_METHODS = ("exact", "faiss-hnsw", "faiss-ivf")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise RepalignError("approximate neighbours need faiss: pip install 'repalign[faiss]' (faiss-cpu), or use knn='exact'") from None
    return faiss


def exact_neighbors_of(X: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Exact neighbour indices (len(queries), k) of the rows ``queries`` of X, self excluded, ties to the lower index."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        S = (X[q] @ X.T).astype(np.float64)
        S[np.arange(len(q)), q] = -np.inf
        out[s:s + chunk] = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return out


def knn_recall(indices: np.ndarray, exact_indices: np.ndarray) -> float:
    """Recall@k: mean over queries of |approximate list ∩ exact list| / k."""
    indices = np.asarray(indices)
    exact_indices = np.asarray(exact_indices)
    if indices.shape != exact_indices.shape:
        raise RepalignError(f"neighbour lists of shapes {indices.shape} and {exact_indices.shape} cannot be compared; use the same queries and k")
    k = indices.shape[1]
    hits = sum(len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(indices, exact_indices))
    return float(hits / (k * len(indices)))


def _pair_similarities(X: np.ndarray, rows: np.ndarray, idx: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """float64 inner products of X[rows[i]] with X[idx[i, j]], in row chunks to bound memory."""
    out = np.empty(idx.shape)
    for s in range(0, len(rows), chunk):
        q = X[rows[s:s + chunk]].astype(np.float64)
        out[s:s + chunk] = np.einsum("ij,ikj->ik", q, X[idx[s:s + chunk]].astype(np.float64))
    return out


def _finish_lists(X: np.ndarray, raw: np.ndarray, k: int) -> KnnState:
    """From faiss results (k+1 columns, -1 = missing): drop self, recompute similarities in float64, sort by the tie rule."""
    n = X.shape[0]
    rows = np.arange(n)[:, None]
    raw = np.where((raw < 0) | (raw == rows), n, raw)  # self and missing become the sentinel n
    # a missing entry (graph search found fewer than k+1 points) is rare: such rows are searched exactly
    bad = np.flatnonzero((raw != n).sum(axis=1) < k)
    # keep the k best non-sentinel candidates of each row, ordered by (-similarity, index)
    cand = raw.copy()
    valid = cand != n
    sims = np.where(valid, _pair_similarities(X, np.arange(n), np.where(valid, cand, 0)), -np.inf)
    order = np.lexsort((cand, -sims), axis=1)[:, :k]
    idx = np.take_along_axis(cand, order, axis=1)
    sim = np.take_along_axis(sims, order, axis=1)
    if bad.size:
        idx[bad] = exact_neighbors_of(X, bad, k)
        sim[bad] = _pair_similarities(X, bad, idx[bad])
    return KnnState(np.ascontiguousarray(idx), np.ascontiguousarray(sim))


def approximate_knn(X, k=10, method="faiss-hnsw", *, hnsw_m=32, ef_construction=80, ef_search=128,
                    nlist=None, nprobe=16, recall_queries=1000, seed=0, threads=None) -> tuple[KnnState, float]:
    """Approximate k nearest neighbours of every row of X (inner product; cosine for unit rows).

    X should be prepared already (``prepare(X, "l2")``). Returns ``(state, recall)``: ``state`` is
    a KnnState (indices int64 (N, k), similarities float64 (N, k), recomputed exactly; self
    excluded; decreasing similarity, ties to the lower index) usable by every kNN metric, and
    ``recall`` the mean |approximate ∩ exact| / k over ``recall_queries`` random rows (all rows
    when N is smaller; exact lists by brute force with the same tie rule), i.e. the fraction of
    true neighbours found. method="exact" gives the exact lists and recall 1.0.

    hnsw_m, ef_construction, ef_search: HNSW graph degree and search widths (faiss-hnsw).
    nlist, nprobe: number of k-means cells (default round(4·√N), at most N/39 so each cell
    trains on ≥ 39 points) and cells searched per query (faiss-ivf). threads: faiss threads
    (default: faiss's own). Results of faiss-ivf depend on ``seed`` (k-means initialisation).
    """
    if method not in KNN_METHODS:
        raise RepalignError(f"knn={method!r} is not supported; use one of {', '.join(KNN_METHODS)}")
    X = as_features(X, "X")
    n, d = X.shape
    k = check_k(k, n)
    recall_queries = check_int(recall_queries, "recall_queries", 1)
    if method == "exact":
        return knn_state(X, k), 1.0
    faiss = _faiss()
    if threads is not None:
        faiss.omp_set_num_threads(check_int(threads, "threads", 1))
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    search_k = min(k + 1, n)
    if method == "faiss-hnsw":
        hnsw_m = check_int(hnsw_m, "hnsw_m", 2)
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = check_int(ef_construction, "ef_construction", 1)
        index.hnsw.efSearch = max(check_int(ef_search, "ef_search", 1), search_k)
        index.add(X32)
    else:
        max_cells = max(1, n // 39)
        if nlist is None:
            nlist = int(min(max_cells, max(1, round(4 * np.sqrt(n)))))
        nlist = check_int(nlist, "nlist", 1, n, f" (the number of k-means cells cannot exceed N = {n})")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.train(X32)
        index.add(X32)
        index.nprobe = check_int(nprobe, "nprobe", 1, nlist, f" (at most nlist = {nlist})")
    _, raw = index.search(X32, search_k)
    state = _finish_lists(X, raw.astype(np.int64), k)
    rng = np.random.default_rng(seed)
    queries = np.arange(n) if n <= recall_queries else np.sort(rng.choice(n, recall_queries, replace=False))
    recall = knn_recall(state.indices[queries], exact_neighbors_of(X, queries, k))
    return state, recall


def check_knn_options(knn, **options) -> dict:
    """Validate ``knn`` and its options at a boundary (CLI, compare layer); returns the options."""
    if knn not in KNN_METHODS:
        raise RepalignError(f"--knn {knn!r} is not supported; use one of {', '.join(KNN_METHODS)}")
    if knn != "exact":
        _faiss()
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise RepalignError(f"{key}={value!r} must be a whole number")
    return options
