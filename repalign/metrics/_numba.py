"""Numba kernels of the metric engine, each followed by its plain-numpy twin used in the tests.

Conventions shared by all kernels:
- neighbour lists are int64 arrays (N, k), ordered by decreasing similarity, ties broken by the
  lower sample index, self excluded;
- similarities are produced in the input precision (float32 or float64) and kept in float64;
  every sum is accumulated in float64.

``cache=True`` keeps the compiled code on disk so a new process does not recompile.
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit, prange

# Under libgomp's default wait policy numba's OpenMP workers spin after every parallel kernel and take
# a core from the BLAS product that follows: with two threads the neighbour search spent 1.4x the CPU
# time and 1.4x the wall time it spends with passive waits (docs/performance.md). The runtime reads
# the policy when numba starts its threads (at the first parallel kernel), so it is set here, in this
# process's environment, unless the user chose one. The threads are not started here: libgomp is not
# fork-safe, and a fork()ed child that runs a kernel aborts if the parent's threads exist.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Columns handled together by one thread when scanning a similarity block column-wise: each thread
# reads 512-byte runs of a row (whole cache lines, few TLB misses) while updating 128 lists.
_COLUMN_CHUNK = 128
# Entries of a row scanned branch-free before any is examined in the fused top-k merge.
_SEGMENT = 32


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
def topk_update_symmetric(S, row0, best_sim, best_idx):
    """Merge a diagonal block S = sim(rows row0.., the same rows) into its rows' lists: every entry
    but the diagonal, row by row. One pass row-major instead of :func:`topk_update_rows` and
    :func:`topk_update_cols` over the upper triangle (S from ``Xr @ Xr.T`` is symmetric: numpy forms
    it with syrk). Each row's segments are scanned branch-free first: once a list holds k entries
    most segments hold no candidate."""
    n_rows = S.shape[0]
    k = best_sim.shape[1]
    for r in prange(n_rows):
        i = row0 + r
        last_s = S.dtype.type(best_sim[i, k - 1])
        for seg in range(0, n_rows, _SEGMENT):
            stop = min(n_rows, seg + _SEGMENT)
            hit = False
            for c in range(seg, stop):
                hit |= S[r, c] >= last_s
            if not hit:
                continue
            for c in range(seg, stop):
                s = S[r, c]
                if s >= last_s and c != r:
                    _insert(best_sim, best_idx, i, np.float64(s), row0 + c)
                    last_s = S.dtype.type(best_sim[i, k - 1])


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


@njit(parallel=True, cache=True)
def topk_update_block(S, row0, col0, best_sim, best_idx, buf_r, buf_c, buf_s):
    """:func:`topk_update_rows` and :func:`topk_update_cols` in one pass over S (each entry read once,
    row-major, while the block is still in cache): the same lists. For off-diagonal blocks only
    (diagonal blocks go through those two, with ``upper_only``).

    Rows are split into ``buf_r.shape[0]`` chunks, one thread each. A thread merges its rows' lists
    directly; an entry that may enter its column's list (at least that column's admission threshold
    when the pass began, a lower bound of the current one) is appended to the chunk's buffer
    (``buf_r``/``buf_c``/``buf_s``, (chunks, capacity)). The buffers are then merged by column
    ranges in parallel; a chunk whose buffer filled up (e.g. the first blocks, when every list is
    still empty) has its rows' columns merged by a direct column scan instead. A list holds the
    top entries under one total order (similarity, then index), whatever the insertion order.
    """
    n_rows, n_cols = S.shape
    k = best_sim.shape[1]
    n_chunks, cap = buf_r.shape
    rows_per = (n_rows + n_chunks - 1) // n_chunks
    # Thresholds in S's precision: every list value is a value of S, so the comparisons are exact.
    threshold = np.empty(n_cols, dtype=S.dtype)
    for c in range(n_cols):
        threshold[c] = best_sim[col0 + c, k - 1]
    counts = np.zeros(n_chunks, dtype=np.int64)
    for ch in prange(n_chunks):
        used = 0
        for r in range(ch * rows_per, min(n_rows, (ch + 1) * rows_per)):
            i = row0 + r
            last_s = S.dtype.type(best_sim[i, k - 1])
            for seg in range(0, n_cols, _SEGMENT):
                stop = min(n_cols, seg + _SEGMENT)
                hit = False  # a branch-free scan of the segment first: most segments hold no candidate
                for c in range(seg, stop):
                    hit |= (S[r, c] >= last_s) | (S[r, c] >= threshold[c])
                if not hit:
                    continue
                for c in range(seg, stop):
                    s = S[r, c]
                    if s >= last_s:
                        _insert(best_sim, best_idx, i, np.float64(s), col0 + c)
                        last_s = S.dtype.type(best_sim[i, k - 1])
                    if s >= threshold[c]:
                        if used < cap:
                            buf_r[ch, used] = r
                            buf_c[ch, used] = c
                            buf_s[ch, used] = s
                        used += 1
        counts[ch] = used
    n_col_chunks = (n_cols + _COLUMN_CHUNK - 1) // _COLUMN_CHUNK
    for cc in prange(n_col_chunks):
        c_lo = cc * _COLUMN_CHUNK
        c_hi = min(n_cols, c_lo + _COLUMN_CHUNK)
        for ch in range(n_chunks):
            if counts[ch] <= cap:
                for e in range(counts[ch]):
                    c = buf_c[ch, e]
                    if c_lo <= c < c_hi:
                        _insert(best_sim, best_idx, col0 + c, buf_s[ch, e], row0 + buf_r[ch, e])
            else:  # the buffer overflowed: scan this chunk's rows for these columns
                for r in range(ch * rows_per, min(n_rows, (ch + 1) * rows_per)):
                    for c in range(c_lo, c_hi):
                        s = np.float64(S[r, c])
                        if s >= best_sim[col0 + c, k - 1]:
                            _insert(best_sim, best_idx, col0 + c, s, row0 + r)


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


# ----------------------------------------------------------------------------- exact similarities
@njit(cache=True, inline="always")
def _dot64(x, y):
    """Inner product in float64 with a fixed summation order (four interleaved partial sums, then
    ((s0 + s1) + (s2 + s3)) + tail): the value depends only on the two rows, not on BLAS blocking,
    alignment or thread count, and dot(x, y) == dot(y, x) exactly. The four independent sums let
    the compiler use vector registers without reordering any addition."""
    d = x.shape[0]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    t = 0
    while t + 4 <= d:
        s0 += np.float64(x[t]) * np.float64(y[t])
        s1 += np.float64(x[t + 1]) * np.float64(y[t + 1])
        s2 += np.float64(x[t + 2]) * np.float64(y[t + 2])
        s3 += np.float64(x[t + 3]) * np.float64(y[t + 3])
        t += 4
    s = (s0 + s1) + (s2 + s3)
    while t < d:
        s += np.float64(x[t]) * np.float64(y[t])
        t += 1
    return s


@njit(parallel=True, cache=True)
def row_dots(X):
    """_dot64 of every row with itself."""
    out = np.empty(X.shape[0])
    for i in prange(X.shape[0]):
        out[i] = _dot64(X[i], X[i])
    return out


@njit(cache=True, inline="always")
def _dot64_four(x, y0, y1, y2, y3):
    """_dot64(x, y0), ..., _dot64(x, y3), each with exactly _dot64's additions in _dot64's order:
    sixteen independent sums keep the floating-point units busy where one dot's four cannot, and
    each element of x is converted once for the four rows."""
    d = x.shape[0]
    a0 = a1 = a2 = a3 = 0.0
    b0 = b1 = b2 = b3 = 0.0
    c0 = c1 = c2 = c3 = 0.0
    e0 = e1 = e2 = e3 = 0.0
    t = 0
    while t + 4 <= d:
        x0 = np.float64(x[t])
        x1 = np.float64(x[t + 1])
        x2 = np.float64(x[t + 2])
        x3 = np.float64(x[t + 3])
        a0 += x0 * np.float64(y0[t])
        a1 += x1 * np.float64(y0[t + 1])
        a2 += x2 * np.float64(y0[t + 2])
        a3 += x3 * np.float64(y0[t + 3])
        b0 += x0 * np.float64(y1[t])
        b1 += x1 * np.float64(y1[t + 1])
        b2 += x2 * np.float64(y1[t + 2])
        b3 += x3 * np.float64(y1[t + 3])
        c0 += x0 * np.float64(y2[t])
        c1 += x1 * np.float64(y2[t + 1])
        c2 += x2 * np.float64(y2[t + 2])
        c3 += x3 * np.float64(y2[t + 3])
        e0 += x0 * np.float64(y3[t])
        e1 += x1 * np.float64(y3[t + 1])
        e2 += x2 * np.float64(y3[t + 2])
        e3 += x3 * np.float64(y3[t + 3])
        t += 4
    sa = (a0 + a1) + (a2 + a3)
    sb = (b0 + b1) + (b2 + b3)
    sc = (c0 + c1) + (c2 + c3)
    se = (e0 + e1) + (e2 + e3)
    while t < d:
        xt = np.float64(x[t])
        sa += xt * np.float64(y0[t])
        sb += xt * np.float64(y1[t])
        sc += xt * np.float64(y2[t])
        se += xt * np.float64(y3[t])
        t += 1
    return sa, sb, sc, se


@njit(parallel=True, cache=True)
def candidate_dots(Xr, r0, Xc, c0, ptr, cand, mirror, out):
    """out[e] = _dot64(row u, row cand[e]) for the candidates e of rows u in [r0, r0 + len(Xr)) whose
    candidate lies in [c0, c0 + len(Xc)), except the entries with ``mirror[e] >= 0`` (the same pair in
    the partner's list, :func:`mirror_entries`: copied afterwards); ``ptr`` is the CSR row pointer of
    the candidate lists. A row's candidates go four at a time through :func:`_dot64_four` (the same numbers)."""
    nc = Xc.shape[0]
    for r in prange(Xr.shape[0]):
        u = r0 + r
        x = Xr[r]
        inside = np.empty(ptr[u + 1] - ptr[u], dtype=np.int64)  # this row's entries to compute in Xc
        m = 0
        for e in range(ptr[u], ptr[u + 1]):
            if c0 <= cand[e] < c0 + nc and mirror[e] < 0:
                inside[m] = e
                m += 1
        q = 0
        while q + 4 <= m:
            e0, e1, e2, e3 = inside[q], inside[q + 1], inside[q + 2], inside[q + 3]
            s0, s1, s2, s3 = _dot64_four(x, Xc[cand[e0] - c0], Xc[cand[e1] - c0], Xc[cand[e2] - c0], Xc[cand[e3] - c0])
            out[e0] = s0
            out[e1] = s1
            out[e2] = s2
            out[e3] = s3
            q += 4
        while q < m:
            out[inside[q]] = _dot64(x, Xc[cand[inside[q]] - c0])
            q += 1


@njit(parallel=True, cache=True)
def mirror_entries(ptr, cand):
    """For each entry e = (u, v) of the CSR lists: the entry of the pair (v, u) in v's list when v < u
    and v lists u, else -1. Most neighbour pairs are listed both ways, and _dot64 is symmetric bit
    for bit, so such an entry's similarity is copied instead of computed twice."""
    out = np.full(cand.shape[0], -1, dtype=np.int64)
    for u in prange(ptr.shape[0] - 1):
        for e in range(ptr[u], ptr[u + 1]):
            v = cand[e]
            if v < u:
                for f in range(ptr[v], ptr[v + 1]):
                    if cand[f] == u:
                        out[e] = f
                        break
    return out


def mirror_entries_numpy(ptr: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Twin of :func:`mirror_entries`: a dictionary of every listed (owner, candidate) pair."""
    owner = np.repeat(np.arange(ptr.shape[0] - 1), np.diff(ptr))
    first: dict[tuple[int, int], int] = {}
    for f, (v, u) in enumerate(zip(owner.tolist(), cand.tolist())):
        first.setdefault((v, u), f)
    return np.array([first.get((v, u), -1) if v < u else -1 for u, v in zip(owner.tolist(), cand.tolist())], dtype=np.int64)


def dot64_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Twin of :func:`_dot64`: float64 products (exact for float32 rows), lane t % 4 summed in index
    order, then ((s0 + s1) + (s2 + s3)) and the tail in order."""
    p = np.asarray(x, dtype=np.float64) * np.asarray(y, dtype=np.float64)
    full = p.shape[0] - p.shape[0] % 4
    lanes = np.zeros(4)
    for quad in p[:full].reshape(-1, 4):  # one addition per lane per step: index order
        lanes = lanes + quad
    s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    for value in p[full:]:
        s = s + value
    return float(s)


def candidate_dots_numpy(X: np.ndarray, ptr: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Twin of :func:`candidate_dots` on one block holding every row."""
    owner = np.repeat(np.arange(ptr.shape[0] - 1), np.diff(ptr))
    return np.array([dot64_numpy(X[u], X[v]) for u, v in zip(owner, cand)])


@njit(parallel=True, cache=True)
def pair_dots(Xq, qi, Xc, cj):
    """_dot64(Xq[qi[t]], Xc[cj[t]]) for every t."""
    out = np.empty(qi.shape[0])
    for t in prange(qi.shape[0]):
        out[t] = _dot64(Xq[qi[t]], Xc[cj[t]])
    return out


# ----------------------------------------------------------------------------- duplicate rows
@njit(parallel=True, cache=True)
def row_hashes(B):
    """64-bit FNV-1a hash of each row of B (N, bytes or 8-byte words): equal rows hash equal."""
    out = np.empty(B.shape[0], dtype=np.uint64)
    for i in prange(B.shape[0]):
        h = np.uint64(14695981039346656037)
        for t in range(B.shape[1]):
            h = (h ^ np.uint64(B[i, t])) * np.uint64(1099511628211)
        out[i] = h
    return out


@njit(parallel=True, cache=True)
def rows_equal_their_first(B, group, first):
    """True when every row of B holds the same bytes as the first row of its group (no hash collision)."""
    ok = np.ones(B.shape[0], dtype=np.bool_)
    for i in prange(B.shape[0]):
        f = first[group[i]]
        if f != i:
            for t in range(B.shape[1]):
                if B[i, t] != B[f, t]:
                    ok[i] = False
                    break
    return ok.all()


# ----------------------------------------------------------------------------- tie levels
# Entries up to which a list is sorted by insertion (no allocation besides the result); longer
# lists (completed rows with many ties) use numpy's sorts.
_SMALL_SORT = 32


@njit(cache=True, inline="always")
def _order_decreasing(values):
    """Stable order of ``values`` by decreasing value (``np.argsort(-values, kind="mergesort")``)."""
    m = values.shape[0]
    if m > _SMALL_SORT:
        return np.argsort(-values, kind="mergesort")
    order = np.empty(m, dtype=np.int64)
    for t in range(m):
        v = values[t]
        p = t
        while p > 0 and values[order[p - 1]] < v:  # strict: equal values keep their order
            order[p] = order[p - 1]
            p -= 1
        order[p] = t
    return order


@njit(parallel=True, cache=True)
def tie_levels(ptr, sims, mult, k, weight, level):
    """Neighbour lists with ties, one CSR row per distinct row of the data.

    Row u lists candidate groups e (ptr[u]..ptr[u+1]) with similarity sims[e] and mult[e] samples.
    Groups are ranked by decreasing similarity; equal similarities form one level. Levels are
    taken while fewer than k samples are above them; the level where the count reaches k (the
    boundary, m samples, r = k − samples above it slots left) is taken with weight r/m: each of
    its samples is a neighbour with probability r/m under uniformly random tie-breaking. Writes
    weight[e] (1, r/m, or 0 = not a neighbour) and level[e] (rank of e's level, −1 if not taken).
    """
    for u in prange(ptr.shape[0] - 1):
        s0 = ptr[u]
        seg = sims[s0:ptr[u + 1]]
        order = _order_decreasing(seg)
        above = 0
        rank = 0
        t = 0
        done = False
        while t < order.shape[0]:
            value = seg[order[t]]
            t2 = t
            count = 0
            while t2 < order.shape[0] and seg[order[t2]] == value:
                count += mult[s0 + order[t2]]
                t2 += 1
            if done:
                w = 0.0
                lev = -1
            elif above + count >= k:
                r = k - above
                w = 1.0 if r == count else r / count
                lev = rank
                done = True
            else:
                w = 1.0
                lev = rank
                above += count
                rank += 1
            for e in range(t, t2):
                weight[s0 + order[e]] = w
                level[s0 + order[e]] = lev
            t = t2


@njit(cache=True)
def list_widths(group, ptr, mult, level):
    """Entries of each sample's expanded list (members of every taken group, self excluded)."""
    widths = np.zeros(ptr.shape[0] - 1, dtype=np.int64)
    for u in range(ptr.shape[0] - 1):
        for e in range(ptr[u], ptr[u + 1]):
            if level[e] >= 0:
                widths[u] += mult[e]
    return widths


@njit(parallel=True, cache=True)
def expand_lists(group, mptr, members, ptr, cand, sims, weight, level, out_idx, out_sim, out_w, out_lev):
    """Sample-level lists from the lists of distinct rows: sample i of group u gets every member j ≠ i
    of each group taken in u's list, with that group's similarity, weight and level; rows sorted
    by sample index and padded with index N (weight 0, level −1)."""
    n, width = out_idx.shape
    for i in prange(n):
        u = group[i]
        c = 0
        for e in range(ptr[u], ptr[u + 1]):
            if level[e] < 0:
                continue
            v = cand[e]
            for t in range(mptr[v], mptr[v + 1]):
                j = members[t]
                if j == i:
                    continue
                out_idx[i, c] = j
                out_sim[i, c] = sims[e]
                out_w[i, c] = weight[e]
                out_lev[i, c] = level[e]
                c += 1
        if c <= _SMALL_SORT:  # in place, by insertion (the labels of a row are distinct)
            for t in range(1, c):
                j, sm, wt, lv = out_idx[i, t], out_sim[i, t], out_w[i, t], out_lev[i, t]
                p = t
                while p > 0 and out_idx[i, p - 1] > j:
                    out_idx[i, p] = out_idx[i, p - 1]
                    out_sim[i, p] = out_sim[i, p - 1]
                    out_w[i, p] = out_w[i, p - 1]
                    out_lev[i, p] = out_lev[i, p - 1]
                    p -= 1
                out_idx[i, p] = j
                out_sim[i, p] = sm
                out_w[i, p] = wt
                out_lev[i, p] = lv
        else:
            order = np.argsort(out_idx[i, :c])
            idx = out_idx[i, :c][order]
            sim = out_sim[i, :c][order]
            w = out_w[i, :c][order]
            lev = out_lev[i, :c][order]
            for t in range(c):
                out_idx[i, t] = idx[t]
                out_sim[i, t] = sim[t]
                out_w[i, t] = w[t]
                out_lev[i, t] = lev[t]
        for t in range(c, width):
            out_idx[i, t] = n
            out_sim[i, t] = 0.0
            out_w[i, t] = 0.0
            out_lev[i, t] = -1


@njit(cache=True)
def relabel_rows(idx, sim, w, lev, perm, inverse):
    """Lists of X[perm] from the lists of X: row i is old row perm[i], labels renamed by inverse
    (the padding label N stays N), each row re-sorted by its new labels."""
    n, width = idx.shape
    o_idx = np.empty_like(idx)
    o_sim = np.empty_like(sim)
    o_w = np.empty_like(w)
    o_lev = np.empty_like(lev)
    for i in range(n):
        src = perm[i]
        new = np.empty(width, dtype=np.int64)
        for t in range(width):
            j = idx[src, t]
            new[t] = n if j >= n else inverse[j]
        order = np.argsort(new)
        for t in range(width):
            o_idx[i, t] = new[order[t]]
            o_sim[i, t] = sim[src, order[t]]
            o_w[i, t] = w[src, order[t]]
            o_lev[i, t] = lev[src, order[t]]
    return o_idx, o_sim, o_w, o_lev


# ----------------------------------------------------------------------------- list comparisons
@njit(cache=True, inline="always")
def _find(row, value):
    """Position of value in the ascending row (padding N sorts last), or −1."""
    lo = 0
    hi = row.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if row[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    if lo < row.shape[0] and row[lo] == value:
        return lo
    return -1


@njit(parallel=True, cache=True)
def expected_overlap(ai, aw, bi, bw):
    """Σ_j aw_ij·bw_ij over the labels j in both rows: the expected |N_X(i) ∩ N_Y(i)| under
    independent random tie-breaking on the two sides (rows sorted by label).

    A row's weights are 1 or its boundary weight α (likewise 1 or β), so the sum is formed from
    integer counts as c11 + c1β·β + cα1·α + cαβ·αβ: exactly the same whatever the labels' order."""
    n, wa = ai.shape
    wb = bi.shape[1]
    out = np.zeros(n)
    for i in prange(n):
        p = 0
        q = 0
        alpha = 1.0
        beta = 1.0
        c11 = 0
        c1b = 0
        ca1 = 0
        cab = 0
        while p < wa and q < wb:
            x = ai[i, p]
            y = bi[i, q]
            if x >= n or y >= n:
                break
            if x == y:
                sure_a = aw[i, p] >= 1.0
                sure_b = bw[i, q] >= 1.0
                if not sure_a:
                    alpha = aw[i, p]
                if not sure_b:
                    beta = bw[i, q]
                if sure_a and sure_b:
                    c11 += 1
                elif sure_a:
                    c1b += 1
                elif sure_b:
                    ca1 += 1
                else:
                    cab += 1
                p += 1
                q += 1
            elif x < y:
                p += 1
            else:
                q += 1
        out[i] = c11 + c1b * beta + ca1 * alpha + cab * (alpha * beta)
    return out


def _dense(idx, values, n):
    out = np.zeros((n, n + 1))
    np.put_along_axis(out, idx, values, axis=1)
    return out[:, :n]


def expected_overlap_numpy(ai, aw, bi, bw):
    n = ai.shape[0]
    return (_dense(ai, aw, n) * _dense(bi, bw, n)).sum(axis=1)


@njit(parallel=True, cache=True)
def cycle_probabilities(ai, aw, bi, bw, k):
    """P(i ∈ N_X(j) for some j ∈ N_Y(i)) under independent random tie-breaking of every list.

    The Y-list of i holds f sure members and a uniformly random r-subset of its m tied members
    (r = k − f); with q_j = 1 − P(i ∈ N_X(j)), the probability of no hit is
    Π_sure q_j · e_r(q_tied) / C(m, r), e_r the elementary symmetric polynomial, computed by the
    recurrence M(t, s) = ((t − s)/t)·M(t − 1, s) + (s/t)·q_t·M(t − 1, s − 1) of its mean form.
    """
    n, wb = bi.shape
    out = np.zeros(n)
    for i in prange(n):
        sure = 1.0
        fixed = 0
        sure_q = np.empty(wb)
        n_sure = 0
        q = np.empty(wb)
        m = 0
        for t in range(wb):
            j = bi[i, t]
            if j >= n:
                break
            pos = _find(ai[j], i)
            p_in = aw[j, pos] if pos >= 0 else 0.0
            if bw[i, t] >= 1.0:
                fixed += 1
                if p_in >= 1.0:
                    sure = 0.0
                elif p_in > 0.0:
                    sure_q[n_sure] = 1.0 - p_in
                    n_sure += 1
            else:
                q[m] = 1.0 - p_in
                m += 1
        for t in np.sort(sure_q[:n_sure]):
            sure *= t
        r = k - fixed
        # sorted factors: the result does not depend on the order of the labels
        q = np.sort(q[:m])
        mean = np.zeros(r + 1)
        mean[0] = 1.0
        for t in range(1, m + 1):
            for s in range(min(t, r), 0, -1):
                mean[s] = ((t - s) / t) * mean[s] + (s / t) * q[t - 1] * mean[s - 1]
        out[i] = 1.0 - sure * mean[r]
    return out


def cycle_probabilities_numpy(ai, aw, bi, bw, k):
    """Twin by enumeration of the r-subsets of each Y-list's tied members (small cases only)."""
    import itertools

    n = ai.shape[0]
    A = _dense(ai, aw, n)  # A[j, i] = P(i in N_X(j))
    out = np.zeros(n)
    for i in range(n):
        row = [(j, w) for j, w in zip(bi[i], bw[i]) if j < n]
        sure = [j for j, w in row if w >= 1.0]
        tied = [j for j, w in row if w < 1.0]
        r = k - len(sure)
        base = np.prod([1.0 - A[j, i] for j in sure])
        subsets = list(itertools.combinations(tied, r))
        miss = np.mean([np.prod([1.0 - A[j, i] for j in s]) for s in subsets]) if subsets else 1.0
        out[i] = 1.0 - base * miss
    return out


@njit(cache=True)
def _group_grid(ai, aw, alev, bi, bw, blev, i):
    """Overlap grid c[p, q] = Σ_j aw·bw over labels j in level p of row i of A and level q of B,
    and the level sizes (sum of weights: members, or r for the boundary level)."""
    n = ai.shape[0]
    na = 0
    for t in range(ai.shape[1]):
        if alev[i, t] + 1 > na:
            na = alev[i, t] + 1
    nb = 0
    for t in range(bi.shape[1]):
        if blev[i, t] + 1 > nb:
            nb = blev[i, t] + 1
    c = np.zeros((na, nb))
    size_a = np.zeros(na)
    size_b = np.zeros(nb)
    for t in range(bi.shape[1]):
        if bi[i, t] < n:
            size_b[blev[i, t]] += bw[i, t]
    for t in range(ai.shape[1]):
        j = ai[i, t]
        if j >= n:
            break
        size_a[alev[i, t]] += aw[i, t]
        q = _find(bi[i], j)
        if q >= 0:
            c[alev[i, t], blev[i, q]] += aw[i, t] * bw[i, q]
    return c, size_a, size_b


@njit(parallel=True, cache=True)
def group_lcs(ai, aw, alev, bi, bw, blev):
    """Longest common subsequence of the two rows' sequences of tie levels, matching level with
    level (one-to-one, in order) for a gain of their expected overlap. Without ties every level
    holds one neighbour and this is the LCS of the ordered lists."""
    n = ai.shape[0]
    out = np.zeros(n)
    for i in prange(n):
        c, size_a, size_b = _group_grid(ai, aw, alev, bi, bw, blev, i)
        na, nb = c.shape
        dp = np.zeros((na + 1, nb + 1))
        for p in range(1, na + 1):
            for q in range(1, nb + 1):
                dp[p, q] = max(dp[p - 1, q], dp[p, q - 1], dp[p - 1, q - 1] + c[p - 1, q - 1])
        out[i] = dp[na, nb]
    return out


@njit(parallel=True, cache=True)
def group_levenshtein(ai, aw, alev, bi, bw, blev):
    """Levenshtein distance between the rows' sequences of tie levels: deleting or inserting a level
    costs its size, aligning level P with level Q costs max(|P|, |Q|) − overlap(P, Q) (matched
    members free, the rest substituted, the size difference inserted or deleted). Without ties
    this is the unit-cost Levenshtein distance of the ordered lists."""
    n = ai.shape[0]
    out = np.zeros(n)
    for i in prange(n):
        c, size_a, size_b = _group_grid(ai, aw, alev, bi, bw, blev, i)
        na, nb = c.shape
        d = np.zeros((na + 1, nb + 1))
        for p in range(1, na + 1):
            d[p, 0] = d[p - 1, 0] + size_a[p - 1]
        for q in range(1, nb + 1):
            d[0, q] = d[0, q - 1] + size_b[q - 1]
        for p in range(1, na + 1):
            for q in range(1, nb + 1):
                d[p, q] = min(d[p - 1, q] + size_a[p - 1], d[p, q - 1] + size_b[q - 1],
                              d[p - 1, q - 1] + max(size_a[p - 1], size_b[q - 1]) - c[p - 1, q - 1])
        out[i] = d[na, nb]
    return out


def _levels_numpy(idx, w, lev, n):
    """Per row: list of (set of labels, weight of each, size) per level, in level order."""
    rows = []
    for r_idx, r_w, r_lev in zip(idx.tolist(), w.tolist(), lev.tolist()):
        levels: dict = {}
        for j, x, l in zip(r_idx, r_w, r_lev):
            if j < n:
                levels.setdefault(l, {})[j] = x
        rows.append([levels[l] for l in sorted(levels)])
    return rows


def _grid_numpy(la, lb):
    c = np.array([[sum(wa * P_b[j] for j, wa in P_a.items() if j in P_b) for P_b in lb] for P_a in la]).reshape(len(la), len(lb))
    return c, [sum(P.values()) for P in la], [sum(P.values()) for P in lb]


def group_lcs_numpy(ai, aw, alev, bi, bw, blev):
    n = ai.shape[0]
    out = []
    for la, lb in zip(_levels_numpy(ai, aw, alev, n), _levels_numpy(bi, bw, blev, n)):
        c, _, _ = _grid_numpy(la, lb)
        dp = [[0.0] * (len(lb) + 1) for _ in range(len(la) + 1)]
        for p in range(1, len(la) + 1):
            for q in range(1, len(lb) + 1):
                dp[p][q] = max(dp[p - 1][q], dp[p][q - 1], dp[p - 1][q - 1] + c[p - 1, q - 1])
        out.append(dp[-1][-1])
    return np.array(out)


def group_levenshtein_numpy(ai, aw, alev, bi, bw, blev):
    n = ai.shape[0]
    out = []
    for la, lb in zip(_levels_numpy(ai, aw, alev, n), _levels_numpy(bi, bw, blev, n)):
        c, sa, sb = _grid_numpy(la, lb)
        d = [[0.0] * (len(lb) + 1) for _ in range(len(la) + 1)]
        for p in range(1, len(la) + 1):
            d[p][0] = d[p - 1][0] + sa[p - 1]
        for q in range(1, len(lb) + 1):
            d[0][q] = d[0][q - 1] + sb[q - 1]
        for p in range(1, len(la) + 1):
            for q in range(1, len(lb) + 1):
                d[p][q] = min(d[p - 1][q] + sa[p - 1], d[p][q - 1] + sb[q - 1],
                              d[p - 1][q - 1] + max(sa[p - 1], sb[q - 1]) - c[p - 1, q - 1])
        out.append(d[-1][-1])
    return np.array(out)

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
def masked_kernel_stats(ai, asim, aw, bi, bsim, bw):
    """Statistics of A = M⊙K and B = M⊙L with M[i, j] = P_K(j ∈ N(i))·P_L(j ∈ N(i)).

    Rows hold neighbour labels sorted ascending (padding N), kernel values (K[i, j] = asim for j in
    row i of ``ai``; likewise L) and inclusion probabilities (1 without ties). Returns
    (tr(AB), 1ᵀA1, 1ᵀB1, 1ᵀAB1) in float64; A and B have zero diagonals because lists exclude
    self. Passing the same lists twice gives the statistics of (P_K⊙P_K)⊙K with itself.
    """
    n, width = ai.shape
    col_sum_a = np.zeros(n)
    row_sum_b = np.zeros(n)
    sum_a = 0.0
    sum_b = 0.0
    trace_ab = 0.0
    for i in range(n):
        for p in range(width):
            j = ai[i, p]
            if j >= n:
                break
            q = _find(bi[i], j)
            if q < 0:
                continue
            m_ij = aw[i, p] * bw[i, q]
            a_ij = m_ij * asim[i, p]
            b_ij = m_ij * bsim[i, q]
            sum_a += a_ij
            sum_b += b_ij
            col_sum_a[j] += a_ij
            row_sum_b[i] += b_ij
            # tr(AB) = Σ_ij A_ij B_ji: B_ji is non-zero only if i is in both lists of j.
            pa = _find(ai[j], i)
            if pa >= 0:
                pb = _find(bi[j], i)
                if pb >= 0:
                    trace_ab += a_ij * aw[j, pa] * bw[j, pb] * bsim[j, pb]
    sum_ab = 0.0
    for m in range(n):
        sum_ab += col_sum_a[m] * row_sum_b[m]
    return trace_ab, sum_a, sum_b, sum_ab


def masked_kernel_stats_numpy(ai, asim, aw, bi, bsim, bw):
    """Twin of :func:`masked_kernel_stats` with dense N×N masks and kernels."""
    n = ai.shape[0]
    M = _dense(ai, aw, n) * _dense(bi, bw, n)
    A = M * _dense(ai, asim, n)
    B = M * _dense(bi, bsim, n)
    return np.trace(A @ B), A.sum(), B.sum(), (A @ B).sum()
