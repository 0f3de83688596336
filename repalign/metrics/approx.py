"""Approximate nearest neighbours for very large N (optional: ``pip install 'repalign[faiss]'``).

:func:`approximate_knn` returns neighbour lists as a :class:`~repalign.metrics.KnnState` (the
tie-aware lists of :mod:`repalign.metrics.neighbors`: faiss only proposes the candidates among the
distinct rows, which are then finished exactly as in the exact search) together with their
measured recall against exact lists on a random sample of queries, so every score computed from
them can be reported with it.

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
from repalign.metrics.neighbors import DistinctRows, KnnState, build_knn_state, duplicate_groups, knn_state, row_digests

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


def approximate_knn(X, k=10, method="faiss-hnsw", *, hnsw_m=32, ef_construction=80, ef_search=128,
                    nlist=None, nprobe=16, recall_queries=1000, seed=0, threads=None) -> tuple[KnnState, float]:
    """Approximate k nearest neighbours of every row of X (inner product; cosine for unit rows).

    X should be prepared already (``prepare(X, "l2")``). Returns ``(state, recall)``: ``state`` is
    a tie-aware KnnState usable by every kNN metric (faiss proposes candidates among the distinct
    rows; similarities, ties and boundaries are then computed exactly, and rows whose boundary
    lies near the last candidate are searched exactly), and ``recall`` the mean
    |approximate ∩ exact| / k over ``recall_queries`` random rows (all rows when N is smaller;
    exact lists by brute force, ties to the lower index), i.e. the fraction of true neighbours
    found. method="exact" gives the exact lists and recall 1.0.

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

    def search(rows, ks):
        U = np.ascontiguousarray(next(rows.blocks())[1], dtype=np.float32)
        g = U.shape[0]
        if method == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(d, check_int(hnsw_m, "hnsw_m", 2), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = check_int(ef_construction, "ef_construction", 1)
            index.hnsw.efSearch = max(check_int(ef_search, "ef_search", 1), ks + 1)
            index.add(U)
        else:
            cells = _nlist(nlist, g)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = int(seed)
            index.train(U)
            index.add(U)
            index.nprobe = check_int(nprobe, "nprobe", 1, cells, f" (at most nlist = {cells})")
        sims, raw = index.search(U, ks + 1)
        rows_u = np.arange(g)[:, None]
        valid = (raw >= 0) & (raw != rows_u)
        # keep the ks best non-self candidates of each row, in faiss's (decreasing) order
        order = np.argsort(~valid, axis=1, kind="stable")[:, :ks]
        idx = np.where(np.take_along_axis(valid, order, axis=1), np.take_along_axis(raw, order, axis=1), g)
        sim = np.where(idx < g, np.take_along_axis(sims, order, axis=1).astype(np.float64), -np.inf)
        # a row with fewer than ks candidates (the graph search came up short) is searched exactly
        short = np.flatnonzero((idx < g).sum(axis=1) < ks)
        if short.size:
            idx[short] = exact_neighbors_of(U, short, ks)
            sim[short] = np.einsum("ij,ikj->ik", U[short].astype(np.float64), U[idx[short]].astype(np.float64))
        return idx.astype(np.int64), sim

    groups = duplicate_groups(row_digests(X))
    state = build_knn_state(groups, DistinctRows.in_memory(np.ascontiguousarray(X[groups.first])), k, search,
                            complete_search=False)
    rng = np.random.default_rng(seed)
    queries = np.arange(n) if n <= recall_queries else np.sort(rng.choice(n, recall_queries, replace=False))
    recall = knn_recall(state.ordered()[0][queries], exact_neighbors_of(X, queries, k))
    return state, recall


def _nlist(nlist, n: int) -> int:
    """k-means cells: default round(4·√N), at most N/39 so each cell trains on ≥ 39 points."""
    if nlist is None:
        nlist = int(min(max(1, n // 39), max(1, round(4 * np.sqrt(n)))))
    return check_int(nlist, "nlist", 1, n, f" (the number of k-means cells cannot exceed the {n} distinct rows)")


def check_knn_options(knn, **options) -> dict:
    """Validate ``knn`` and its options at a boundary (CLI, compare layer); returns the options."""
    if knn not in KNN_METHODS:
        raise RepalignError(f"knn={knn!r} is not supported; use one of {', '.join(KNN_METHODS)}")
    if knn != "exact":
        _faiss()
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise RepalignError(f"{key}={value!r} must be a whole number")
    return options
