"""Numba kernels of the metric engine, each followed by its plain-numpy twin used in the tests.

Conventions shared by all kernels:
- neighbour lists are int64 arrays (N, k), ordered by decreasing similarity, ties broken by the
  lower sample index, self excluded;
- similarities are produced in the input precision (float32 or float64) and kept in float64;
  every sum is accumulated in float64.

``cache=True`` keeps the compiled code on disk so a new process does not recompile.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Columns handled together by one thread when scanning a similarity block column-wise: each thread
# reads 512-byte runs of a row (whole cache lines, few TLB misses) while updating 128 lists.
_COLUMN_CHUNK = 128


# ----------------------------------------------------------------------------- blocked top-k search
@njit(cache=True, inline="always")
def _insert(best_sim, best_idx, i, s, j):
    """Insert candidate (s, j) into row i's sorted list if it beats the current last entry."""
    k = best_sim.shape[1]
    last_s = best_sim[i, k - 1]
    if s < last_s or (s == last_s and j > best_idx[i, k - 1]):
        return
    p = k - 1
    while p > 0:
        ps = best_sim[i, p - 1]
        if ps > s or (ps == s and best_idx[i, p - 1] < j):
            break
        best_sim[i, p] = ps
        best_idx[i, p] = best_idx[i, p - 1]
        p -= 1
    best_sim[i, p] = s
    best_idx[i, p] = j


@njit(parallel=True, cache=True)
def topk_update_rows(S, row0, col0, best_sim, best_idx, upper_only):
    """Merge block S = sim(rows row0.., cols col0..) into the running lists of its rows.

    ``upper_only`` (diagonal blocks, row0 == col0): only entries above the diagonal are read;
    :func:`topk_update_cols` merges the same entries into the column samples' lists, so each
    pair's similarity is one number used in both directions (the tie rule stays exact).
    """
    n_rows, n_cols = S.shape
    k = best_sim.shape[1]
    for r in prange(n_rows):
        i = row0 + r
        c_start = r + 1 if upper_only else 0
        last_s = best_sim[i, k - 1]
        for c in range(c_start, n_cols):
            s = np.float64(S[r, c])
            if s < last_s:
                continue
            _insert(best_sim, best_idx, i, s, col0 + c)
            last_s = best_sim[i, k - 1]


@njit(parallel=True, cache=True)
def topk_update_cols(S, row0, col0, best_sim, best_idx, upper_only):
    """Merge the transpose of block S: column c is a sample whose candidates are the rows row0+r."""
    n_rows, n_cols = S.shape
    k = best_sim.shape[1]
    n_chunks = (n_cols + _COLUMN_CHUNK - 1) // _COLUMN_CHUNK
    for ch in prange(n_chunks):
        c_start = ch * _COLUMN_CHUNK
        c_stop = min(n_cols, c_start + _COLUMN_CHUNK)
        r_stop = min(n_rows, c_stop) if upper_only else n_rows
        # Current admission threshold of each column's list, kept local: most candidates fail it.
        last_s = np.empty(_COLUMN_CHUNK)
        for c in range(c_start, c_stop):
            last_s[c - c_start] = best_sim[col0 + c, k - 1]
        for r in range(r_stop):
            j = row0 + r
            for c in range(max(c_start, r + 1) if upper_only else c_start, c_stop):
                s = np.float64(S[r, c])
                if s < last_s[c - c_start]:
                    continue
                _insert(best_sim, best_idx, col0 + c, s, j)
                last_s[c - c_start] = best_sim[col0 + c, k - 1]


def topk_blocked(X: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row of X by inner product, self excluded.

    Only blocks on and above the diagonal of X Xᵀ are formed (each block updates the lists of its
    rows and, transposed, of its columns), so memory is O(N·k + block²) and the matrix product
    costs half of the full Gram. Returns (indices int64 (N, k), similarities float64 (N, k)).
    """
    n = X.shape[0]
    best_sim = np.full((n, k), -np.inf)
    best_idx = np.full((n, k), n, dtype=np.int64)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        Xr = X[r0:r1]
        for c0 in range(r0, n, block):
            c1 = min(n, c0 + block)
            S = Xr @ X[c0:c1].T
            topk_update_rows(S, r0, c0, best_sim, best_idx, c0 == r0)
            topk_update_cols(S, r0, c0, best_sim, best_idx, c0 == r0)
    return best_idx, best_sim


def topk_numpy(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Twin of :func:`topk_blocked`: full N×N similarity in float64, stable argsort of its negation."""
    X = np.asarray(X, dtype=np.float64)
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]  # stable: equal values keep lower index first
    return order.astype(np.int64), np.take_along_axis(S, order, axis=1)


# ----------------------------------------------------------------------------- list comparisons
@njit(parallel=True, cache=True)
def overlap_counts(a, b):
    """|a[i] ∩ b[i]| for every row (lists hold distinct indices)."""
    n, k = a.shape
    out = np.zeros(n, dtype=np.int64)
    for i in prange(n):
        c = 0
        for p in range(k):
            v = a[i, p]
            for q in range(b.shape[1]):
                if b[i, q] == v:
                    c += 1
                    break
        out[i] = c
    return out


def overlap_counts_numpy(a, b):
    return np.array([len(set(x) & set(y)) for x, y in zip(a.tolist(), b.tolist())], dtype=np.int64)


@njit(parallel=True, cache=True)
def cycle_hits(a, b):
    """hit[i] = 1 if i is in a[j] for some j in b[i] (a Y-neighbour of i has i as an X-neighbour)."""
    n, k = a.shape
    out = np.zeros(n, dtype=np.int64)
    for i in prange(n):
        hit = 0
        for q in range(b.shape[1]):
            j = b[i, q]
            for p in range(k):
                if a[j, p] == i:
                    hit = 1
                    break
            if hit:
                break
        out[i] = hit
    return out


def cycle_hits_numpy(a, b):
    return np.array([int(any(i in set(a[j].tolist()) for j in b[i].tolist())) for i in range(len(a))], dtype=np.int64)


@njit(parallel=True, cache=True)
def lcs_lengths(a, b):
    """Longest common subsequence length of the ordered lists a[i] and b[i]."""
    n, ka = a.shape
    kb = b.shape[1]
    out = np.zeros(n, dtype=np.int64)
    for i in prange(n):
        prev = np.zeros(kb + 1, dtype=np.int64)
        cur = np.zeros(kb + 1, dtype=np.int64)
        for p in range(1, ka + 1):
            for q in range(1, kb + 1):
                if a[i, p - 1] == b[i, q - 1]:
                    cur[q] = prev[q - 1] + 1
                else:
                    cur[q] = max(prev[q], cur[q - 1])
            for q in range(kb + 1):
                prev[q] = cur[q]
        out[i] = prev[kb]
    return out


@njit(parallel=True, cache=True)
def levenshtein_distances(a, b):
    """Levenshtein distance (unit insert / delete / substitute) between a[i] and b[i]."""
    n, ka = a.shape
    kb = b.shape[1]
    out = np.zeros(n, dtype=np.int64)
    for i in prange(n):
        prev = np.arange(kb + 1).astype(np.int64)
        cur = np.zeros(kb + 1, dtype=np.int64)
        for p in range(1, ka + 1):
            cur[0] = p
            for q in range(1, kb + 1):
                cost = 0 if a[i, p - 1] == b[i, q - 1] else 1
                cur[q] = min(prev[q] + 1, cur[q - 1] + 1, prev[q - 1] + cost)
            for q in range(kb + 1):
                prev[q] = cur[q]
        out[i] = prev[kb]
    return out


def _lcs_py(x, y):
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for p in range(1, len(x) + 1):
        for q in range(1, len(y) + 1):
            table[p][q] = table[p - 1][q - 1] + 1 if x[p - 1] == y[q - 1] else max(table[p - 1][q], table[p][q - 1])
    return table[-1][-1]


def _levenshtein_py(x, y):
    table = [[p + q if p == 0 or q == 0 else 0 for q in range(len(y) + 1)] for p in range(len(x) + 1)]
    for p in range(1, len(x) + 1):
        for q in range(1, len(y) + 1):
            table[p][q] = min(table[p - 1][q] + 1, table[p][q - 1] + 1, table[p - 1][q - 1] + (x[p - 1] != y[q - 1]))
    return table[-1][-1]


def lcs_lengths_numpy(a, b):
    return np.array([_lcs_py(x, y) for x, y in zip(a.tolist(), b.tolist())], dtype=np.int64)


def levenshtein_distances_numpy(a, b):
    return np.array([_levenshtein_py(x, y) for x, y in zip(a.tolist(), b.tolist())], dtype=np.int64)


# ----------------------------------------------------------------------------- HSIC statistics
@njit(cache=True)
def hsic_unbiased_from_stats(trace_kl, sum_k, sum_l, sum_kl, n):
    """Song et al. (2012) unbiased HSIC from the statistics of zero-diagonal kernels K̃, L̃:
    trace_kl = tr(K̃ L̃), sum_k = 1ᵀK̃1, sum_l = 1ᵀL̃1, sum_kl = 1ᵀK̃L̃1.
    """
    return (trace_kl + sum_k * sum_l / ((n - 1.0) * (n - 2.0)) - 2.0 * sum_kl / (n - 2.0)) / (n * (n - 3.0))


def hsic_unbiased_numpy(K, L):
    """Twin of :func:`hsic_unbiased_from_stats` on full matrices (need not be symmetric)."""
    n = K.shape[0]
    Kt = np.array(K, dtype=np.float64)
    Lt = np.array(L, dtype=np.float64)
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    trace_kl = np.trace(Kt @ Lt)
    return (trace_kl + Kt.sum() * Lt.sum() / ((n - 1) * (n - 2)) - 2.0 * (Kt @ Lt).sum() / (n - 2)) / (n * (n - 3))


@njit(cache=True)
def _position(row, value):
    for p in range(row.shape[0]):
        if row[p] == value:
            return p
    return -1


@njit(cache=True)
def masked_kernel_stats(idx_k, sim_k, idx_l, sim_l):
    """Statistics of A = M⊙K and B = M⊙L with M[i, j] = [j ∈ idx_k[i]]·[j ∈ idx_l[i]].

    K[i, j] for j in idx_k[i] is sim_k[i, ·] (likewise L). Returns (tr(AB), 1ᵀA1, 1ᵀB1, 1ᵀAB1)
    in float64; A and B have zero diagonals because neighbour lists exclude self. Passing the
    same lists twice gives the statistics of mask_K⊙K with itself.
    """
    n, k = idx_k.shape
    col_sum_a = np.zeros(n)
    row_sum_b = np.zeros(n)
    sum_a = 0.0
    sum_b = 0.0
    trace_ab = 0.0
    for i in range(n):
        for p in range(k):
            j = idx_k[i, p]
            q = _position(idx_l[i], j)
            if q < 0:
                continue
            a_ij = sim_k[i, p]
            b_ij = sim_l[i, q]
            sum_a += a_ij
            sum_b += b_ij
            col_sum_a[j] += a_ij
            row_sum_b[i] += b_ij
            # tr(AB) = Σ_ij A_ij B_ji: B_ji is non-zero only if i is in both lists of j.
            pk = _position(idx_k[j], i)
            if pk >= 0:
                pl = _position(idx_l[j], i)
                if pl >= 0:
                    trace_ab += a_ij * sim_l[j, pl]
    sum_ab = 0.0
    for m in range(n):
        sum_ab += col_sum_a[m] * row_sum_b[m]
    return trace_ab, sum_a, sum_b, sum_ab


def masked_kernel_stats_numpy(idx_k, sim_k, idx_l, sim_l):
    """Twin of :func:`masked_kernel_stats` with dense N×N masks and kernels."""
    n = idx_k.shape[0]
    rows = np.arange(n)[:, None]
    K = np.zeros((n, n))
    L = np.zeros((n, n))
    K[rows, idx_k] = sim_k
    L[rows, idx_l] = sim_l
    mask_k = np.zeros((n, n), dtype=bool)
    mask_l = np.zeros((n, n), dtype=bool)
    mask_k[rows, idx_k] = True
    mask_l[rows, idx_l] = True
    M = mask_k & mask_l
    A = np.where(M, K, 0.0)
    B = np.where(M, L, 0.0)
    return np.trace(A @ B), A.sum(), B.sum(), (A @ B).sum()
