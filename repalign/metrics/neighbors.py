"""Neighbour lists with tie semantics that are a property of the data (docs/metrics.md, "Ties").

Every kNN metric and CKNNA is computed from a :class:`KnnState`: for each sample, its k nearest
neighbours by inner product (self excluded), where samples whose similarity to the query is exactly
equal form one *tie level*. Levels are taken in decreasing similarity while fewer than k samples lie
above them; the level where the count reaches k (m samples, r slots left) enters with weight r/m,
the probability that each of its samples is a neighbour under uniformly random tie-breaking. Scores
are then exact expectations (mknn, cycle_knn), or defined on the sequence of tie levels (lcs_knn,
edit_distance_knn), or use the probabilities as a soft mask (CKNNA). Without ties every weight is 1
and every level holds one neighbour, so the classical definitions (and platonic-rep's values) hold.

Two sources of ties that must not depend on sample order or on the BLAS build are handled here:

* exact duplicate rows (same bytes after preprocessing, -0.0 read as 0.0) are grouped by a content
  hash; the search runs on one row per group, and a group's samples share every similarity;
* the final similarity of every neighbour pair is an inner product summed in float64 in index
  order (``_numba._dot64``), a function of the two rows alone. BLAS products only propose
  candidates; a row whose candidate list may have missed a sample within BLAS rounding of its
  boundary is completed against all rows.

Hence the lists (and every score) are the same for any reordering of the samples, any block size,
the in-memory, out-of-core, Dask and approximate paths (up to the candidates faiss finds), and any
thread count.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numba
import numpy as np

from repalign.errors import RepalignError
from repalign.metrics import _numba
from repalign.metrics._validate import check_permutation

# Rows per block of the similarity matrix: a float32 block is 16 MiB, small next to the features.
DEFAULT_BLOCK = 2048
# Candidates searched per distinct row beyond k, so that a boundary blurred by BLAS rounding rarely
# needs the completion pass.
_EXTRA_CANDIDATES = 2
# Entries (samples × list width) a state may hold; heavy duplication widens every list of a tie.
_MAX_ENTRIES = 1 << 27
# Query rows per BLAS product in the completion pass.
_COMPLETION_CHUNK = 1024
# Column-list entries a thread may defer per block row in the fused top-k merge (beyond: a direct column scan).
_BUFFER = 16


@dataclass(frozen=True)
class KnnState:
    """Neighbour lists of one layer with their ties, computed once and reused for every comparison.

    indices: int64 (N, W), each row's neighbours sorted by sample index, padded with N.
    similarities: float64 (N, W), the inner products (float64, index-order sums).
    weights: float64 (N, W), the probability that the entry is among the k nearest neighbours under
    uniformly random tie-breaking (1 above the boundary level, r/m on it, 0 for padding).
    levels: int64 (N, W), rank of the entry's tie level (0 = most similar, −1 for padding).
    k: the number of neighbours.
    """

    indices: np.ndarray
    similarities: np.ndarray
    weights: np.ndarray
    levels: np.ndarray
    k: int

    @property
    def n_samples(self) -> int:
        return self.indices.shape[0]

    def permuted(self, perm) -> "KnnState":
        """State of X[perm] (sample i of the result is old sample perm[i]) without a new search.

        Exact: the lists are defined by the data alone, so relabelling equals a fresh search."""
        perm = check_permutation(perm, self.n_samples)
        n = self.n_samples
        inverse = np.empty(n + 1, dtype=np.int64)
        inverse[perm] = np.arange(n)
        inverse[n] = n
        idx, sim, w, lev = _numba.relabel_rows(self.indices, self.similarities, self.weights, self.levels, perm, inverse)
        return KnnState(idx, sim, w, lev, self.k)

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        """Plain lists (N, k) by decreasing similarity, ties taken in increasing sample index (the
        convention of :func:`repalign.metrics.nearest_neighbors`)."""
        key_level = np.where(self.levels < 0, np.iinfo(np.int64).max, self.levels)
        order = np.lexsort((self.indices, key_level), axis=1)[:, : self.k]
        return np.take_along_axis(self.indices, order, axis=1), np.take_along_axis(self.similarities, order, axis=1)


# ----------------------------------------------------------------------------- duplicate rows
@dataclass(frozen=True)
class DuplicateGroups:
    """Samples grouped by identical rows; groups numbered by first occurrence.

    group: int64 (N,), the group of each sample; counts: int64 (G,); first: int64 (G,), the
    first sample of each group (its representative row); mptr, members: CSR lists of each
    group's samples in increasing index.
    """

    group: np.ndarray
    counts: np.ndarray
    first: np.ndarray
    mptr: np.ndarray
    members: np.ndarray

    @property
    def n_groups(self) -> int:
        return self.counts.shape[0]


def row_digests(X: np.ndarray) -> np.ndarray:
    """16-byte BLAKE2b digest of each row's bytes (-0.0 written as 0.0, so equal values hash equal)."""
    Z = np.ascontiguousarray(X + X.dtype.type(0))
    return np.array([hashlib.blake2b(row.data, digest_size=16).digest() for row in Z.view(np.uint8).reshape(Z.shape[0], Z.shape[1] * Z.itemsize)],
                    dtype="S16")


def row_bytes(X: np.ndarray) -> np.ndarray:
    """Each row's bytes (N, bytes) uint8, -0.0 written as 0.0."""
    Z = np.ascontiguousarray(X + X.dtype.type(0))
    return Z.view(np.uint8).reshape(Z.shape[0], Z.shape[1] * Z.itemsize)


def row_hashes(B: np.ndarray) -> np.ndarray:
    """64-bit hash (numba FNV-1a) of each row of :func:`row_bytes`: equal rows hash equal."""
    return _numba.row_hashes(B.view(np.uint64) if B.shape[1] % 8 == 0 else B)  # 8 bytes per step where possible


def row_groups(X: np.ndarray) -> DuplicateGroups:
    """Samples grouped by identical rows (-0.0 as 0.0), as ``duplicate_groups(row_digests(X))`` gives
    them: rows are grouped by a 64-bit hash computed by numba, and every row is then checked byte
    for byte against its group's first row (on a collision, the BLAKE2b digests decide)."""
    B = row_bytes(X)
    groups = duplicate_groups(row_hashes(B))
    if _numba.rows_equal_their_first(B, groups.group, groups.first):
        return groups
    return duplicate_groups(row_digests(X))


def refined_groups(hashes: np.ndarray, digests_of: Callable[[np.ndarray], np.ndarray]) -> DuplicateGroups:
    """The groups of ``duplicate_groups(row_digests(X))`` from the rows' 64-bit :func:`row_hashes`,
    for rows that cannot all be held at once: rows whose hash no other row shares are alone, and
    only the others get a BLAKE2b digest (``digests_of(mask)``: the digests of the rows where
    ``mask`` is True, in row order), so a collision of the 64-bit hashes never joins different rows."""
    by_hash = duplicate_groups(hashes)
    shared = by_hash.counts[by_hash.group] > 1
    if not shared.any():
        return by_hash
    keys = np.zeros((hashes.shape[0], 24), dtype=np.uint8)  # (hash group, digest or zeros)
    keys[:, :8] = by_hash.group.astype("<u8")[:, None].view(np.uint8)
    keys[shared, 8:] = digests_of(shared).view(np.uint8).reshape(-1, 16)
    return duplicate_groups(keys.view("S24").ravel())


def duplicate_groups(digests: np.ndarray) -> DuplicateGroups:
    """Groups of equal digests (see :func:`row_digests`)."""
    _, first_sorted, inverse = np.unique(digests, return_index=True, return_inverse=True)
    rank = np.empty(first_sorted.size, dtype=np.int64)
    rank[np.argsort(first_sorted, kind="stable")] = np.arange(first_sorted.size)
    group = rank[inverse.reshape(-1)]
    counts = np.bincount(group, minlength=first_sorted.size).astype(np.int64)
    members = np.argsort(group, kind="stable").astype(np.int64)
    mptr = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=mptr[1:])
    return DuplicateGroups(group, counts, np.sort(first_sorted).astype(np.int64), mptr, members)


# ----------------------------------------------------------------------------- distinct-row sources
@dataclass
class DistinctRows:
    """The distinct rows (one per duplicate group, in group order) as re-iterable row blocks.

    blocks(): a fresh iterator of (row0, block) over the distinct rows; norms: float64 (G,);
    dtype: the rows' precision (it bounds the rounding of BLAS products).
    """

    blocks: Callable[[], Iterator[tuple[int, np.ndarray]]]
    n: int
    width: int
    dtype: np.dtype
    norms: np.ndarray

    @classmethod
    def in_memory(cls, U: np.ndarray) -> "DistinctRows":
        return cls(lambda: iter([(0, U)]), U.shape[0], U.shape[1], U.dtype, np.sqrt(_numba.row_dots(U)))


# A candidate search: (rows, ks) -> (indices (G, ks) int64 with sentinel G, BLAS similarities (G, ks)).
CandidateSearch = Callable[[DistinctRows, int], tuple[np.ndarray, np.ndarray]]


def exact_search(rows: DistinctRows, ks: int, block: int = DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Top-ks candidates of every distinct row by BLAS inner products, blocks of X Xᵀ above the
    diagonal (each block updates its rows' and, transposed, its columns' lists).

    Row blocks are held a panel at a time (:func:`_panel_rows`), and each pass over the rows serves
    every block of the panel: 1 + N / panel passes over a source read from disk, not 1 + N / block."""
    n = rows.n
    best_sim = np.full((n, ks), -np.inf)
    best_idx = np.full((n, ks), n, dtype=np.int64)
    chunks = max(1, numba.get_num_threads())
    buffers = (np.empty((chunks, _BUFFER * block), dtype=np.int32), np.empty((chunks, _BUFFER * block), dtype=np.int32),
               np.empty((chunks, _BUFFER * block)))
    # Diagonal blocks first: every list then holds candidates, so the off-diagonal blocks' column
    # thresholds admit few entries (the lists do not depend on the order of the blocks). A diagonal
    # block is symmetric, so merging its rows serves both directions.
    for r0, Xr in _rechunked(rows, block):
        _numba.topk_update_symmetric(Xr @ Xr.T, r0, best_sim, best_idx)
    panel = _panel_rows(rows, block)
    for p0 in range(0, n, panel):
        held: list[tuple[int, np.ndarray]] = []
        for c0, Xc in _rechunked(rows, block):
            if c0 < p0:
                continue
            for r0, Xr in held:  # the pair (c, r) with c <= r is merged when c is the row block
                S = Xr @ Xc.T
                _numba.topk_update_block(S, r0, c0, best_sim, best_idx, *buffers)
                del S  # the next block's product must not coexist with this one
            if c0 < p0 + panel:
                held.append((c0, Xc))
    return best_idx, best_sim


# Bytes of distinct rows held at once by the blocked search (a panel of row blocks).
_PANEL_BYTES = 256 << 20


def _panel_rows(rows: DistinctRows, block: int) -> int:
    """Rows per panel: whole blocks within ``_PANEL_BYTES`` (at least one block)."""
    per_row = max(1, rows.width * np.dtype(rows.dtype).itemsize)
    return max(1, _PANEL_BYTES // (per_row * block)) * block


def block_pair_topk(Xr: np.ndarray, Xc: np.ndarray, r0: int, c0: int, ks: int, n: int) -> tuple[tuple, tuple]:
    """One task of a search split into row block × column block (``r0 <= c0``, the blocks' first rows).

    Returns the top-ks candidates (indices with sentinel ``n``, BLAS similarities, sorted as
    :func:`exact_search` sorts) of the rows of ``Xr`` among the rows of ``Xc``, and of the rows of
    ``Xc`` among the rows of ``Xr`` (one product, read in both directions; on the diagonal block only
    the pairs above the diagonal). :func:`merge_topk` combines the parts of one block."""
    diagonal = r0 == c0
    S = Xr @ Xc.T
    row_sim, row_idx = np.full((Xr.shape[0], ks), -np.inf), np.full((Xr.shape[0], ks), n, dtype=np.int64)
    col_sim, col_idx = np.full((Xc.shape[0], ks), -np.inf), np.full((Xc.shape[0], ks), n, dtype=np.int64)
    _numba.topk_update_rows(S, 0, c0, row_sim, row_idx, diagonal)
    _numba.topk_update_cols(S, r0, 0, col_sim, col_idx, diagonal)
    return (row_idx, row_sim), (col_idx, col_sim)


def merge_topk(parts, ks: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-ks of candidate lists of the same rows over disjoint column sets: (indices, similarities)
    by decreasing similarity, equal similarities in increasing index (the order of :func:`exact_search`)."""
    idx = np.concatenate([p[0] for p in parts], axis=1)
    sim = np.concatenate([p[1] for p in parts], axis=1)
    order = np.lexsort((idx, -sim), axis=1)[:, :ks]
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(sim, order, axis=1)


def rechunked_rows(rows: DistinctRows, block: int) -> Iterator[tuple[int, np.ndarray]]:
    """The distinct rows re-cut into blocks of ``block`` rows: (first row, block) pairs."""
    return _rechunked(rows, block)


def _rechunked(rows: DistinctRows, block: int) -> Iterator[tuple[int, np.ndarray]]:
    """The distinct rows re-cut into blocks of ``block`` rows (the last may be shorter)."""
    pending: list[np.ndarray] = []
    count = 0
    start = 0
    for _, b in rows.blocks():
        pending.append(b)
        count += b.shape[0]
        while count >= block:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield start, np.ascontiguousarray(joined[:block])
            start += block
            rest = joined[block:]
            pending = [rest] if rest.shape[0] else []
            count = rest.shape[0]
    if count:
        yield start, np.ascontiguousarray(np.concatenate(pending) if len(pending) > 1 else pending[0])


def _exact_candidate_sims(rows: DistinctRows, ptr: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Float64 index-order inner products of every (row, candidate) pair of the CSR lists; a pair
    listed both ways is computed once."""
    out = np.full(cand.shape[0], np.nan)
    mirror = _numba.mirror_entries(ptr, cand)
    for r0, Xr in _rechunked(rows, _panel_rows(rows, DEFAULT_BLOCK)):  # one pass over the rows per panel
        for c0, Xc in rows.blocks():
            _numba.candidate_dots(Xr, r0, Xc, c0, ptr, cand, mirror, out)
    copied = np.flatnonzero(mirror >= 0)
    out[copied] = out[mirror[copied]]
    return out


def _completion(rows: DistinctRows, targets: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct row v ≠ u with BLAS similarity ≥ bounds[t] to u = targets[t], with its exact
    similarity: flat arrays (t, v, exact similarity), grouped by t, each target's rows in increasing v."""
    Q = np.empty((targets.size, rows.width), dtype=rows.dtype)
    for r0, Xr in rows.blocks():
        inside = np.flatnonzero((targets >= r0) & (targets < r0 + Xr.shape[0]))
        Q[inside] = Xr[targets[inside] - r0]
    found_t, found_v, found_s = [], [], []
    for c0, Xc in rows.blocks():
        for q0 in range(0, targets.size, _COMPLETION_CHUNK):
            Qc = Q[q0:q0 + _COMPLETION_CHUNK]
            S = Qc @ Xc.T
            qi, cj = np.nonzero(S >= bounds[q0:q0 + _COMPLETION_CHUNK, None])
            keep = targets[q0 + qi] != c0 + cj
            qi, cj = qi[keep].astype(np.int64), cj[keep].astype(np.int64)
            found_t.append(q0 + qi)
            found_v.append(c0 + cj)
            found_s.append(_numba.pair_dots(Qc, qi, Xc, cj))
    t, v, sims = (np.concatenate(a) if a else np.empty(0) for a in (found_t, found_v, found_s))
    order = np.argsort(t, kind="stable")  # blocks come in increasing v, and nonzero is row-major
    return t[order].astype(np.int64), v[order].astype(np.int64), sims[order].astype(np.float64)


def _unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2.0


def build_knn_state(groups: DuplicateGroups, rows: DistinctRows, k: int, search: CandidateSearch | None = None,
                    complete_search: bool = True) -> KnnState:
    """The tie-aware neighbour lists of N samples from their distinct rows (see the module docstring).

    search: proposes candidates among the distinct rows (default: :func:`exact_search` in
    ``DEFAULT_BLOCK`` blocks); ``complete_search`` True when it is exact, so that only rows whose
    boundary lies within BLAS rounding of the last candidate are completed against all rows.
    """
    n = groups.group.shape[0]
    g = rows.n
    if k < 1 or k > n - 1:
        raise RepalignError(f"k={k} is out of range for {n} samples; k must be between 1 and {n - 1}")
    ks = min(k + _EXTRA_CANDIDATES, g - 1)
    if ks > 0:
        cand_idx, cand_blas = (search or exact_search)(rows, ks)
    else:
        cand_idx, cand_blas = np.empty((g, 0), dtype=np.int64), np.empty((g, 0))
    # CSR lists: a row's own group first (its other samples), then its candidate groups.
    own = groups.counts > 1
    ptr, cand = _csr(np.arange(g), own, cand_idx, g)
    sims = _exact_candidate_sims(rows, ptr, cand)
    mult = groups.counts[cand].copy()
    mult[ptr[:-1][own]] -= 1  # a sample is not its own neighbour
    weight, level = _levels(ptr, sims, mult, k)

    # Rows whose candidate list may have cut their boundary level: anything not listed has a BLAS
    # similarity ≤ the last listed one, and BLAS is within eps of the exact value.
    last = cand_blas[:, -1] if ks > 0 else np.full(g, -np.inf)
    truncated = (ks < g - 1) | (not complete_search)
    threshold = _thresholds(ptr, sims, level)
    eps = (rows.width + 2) * _unit_roundoff(rows.dtype) * rows.norms * (rows.norms.max() if g else 0.0) * 2.0
    flagged = np.flatnonzero(truncated & np.isfinite(last) & (last >= threshold - eps))
    if flagged.size:
        found = _completion(rows, flagged, threshold[flagged] - eps[flagged])
        ptr, cand, sims, mult = _replace_rows(ptr, cand, sims, mult, flagged, found, groups.counts)
        weight, level = _levels(ptr, sims, mult, k)

    widths = _numba.list_widths(groups.group, ptr, mult, level)
    width = int(widths.max()) if widths.size else 0
    if n * width > _MAX_ENTRIES:
        raise RepalignError(
            f"{n} samples hold only {g} distinct rows, and ties make neighbour lists of up to {width} samples "
            f"({n * width * 32 / 2**30:.1f} GiB); remove duplicate samples or compare the distinct rows"
        )
    out_idx = np.empty((n, width), dtype=np.int64)
    out_sim = np.empty((n, width))
    out_w = np.empty((n, width))
    out_lev = np.empty((n, width), dtype=np.int64)
    _numba.expand_lists(groups.group, groups.mptr, groups.members, ptr, cand, sims, weight, level,
                        out_idx, out_sim, out_w, out_lev)
    return KnnState(out_idx, out_sim, out_w, out_lev, int(k))


def _csr(rows_u, own, cand_idx, g):
    """CSR candidate lists: [u itself if own[u]] + the valid candidates of u."""
    valid = cand_idx < g
    lengths = own.astype(np.int64) + valid.sum(axis=1)
    ptr = np.zeros(rows_u.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    cand = np.empty(ptr[-1], dtype=np.int64)
    selfs = np.full((rows_u.size, 1), -1, dtype=np.int64)
    selfs[own, 0] = rows_u[own]
    table = np.concatenate([selfs, np.where(valid, cand_idx, -1)], axis=1)
    cand[:] = table[table >= 0]
    return ptr, cand


def _levels(ptr, sims, mult, k):
    weight = np.zeros(sims.shape[0])
    level = np.full(sims.shape[0], -1, dtype=np.int64)
    _numba.tie_levels(ptr, sims, mult, int(k), weight, level)
    return weight, level


def _thresholds(ptr, sims, level) -> np.ndarray:
    """Similarity of each row's boundary level (the lowest taken)."""
    taken = np.where(level >= 0, sims, np.inf)
    g = ptr.shape[0] - 1
    out = np.full(g, np.inf)
    counts = np.diff(ptr)
    nonempty = counts > 0
    out[nonempty] = np.minimum.reduceat(taken, ptr[:-1][nonempty]) if taken.size else out[nonempty]
    return out


def _replace_rows(ptr, cand, sims, mult, flagged, found, counts):
    """CSR lists with the candidate groups of the ``flagged`` rows replaced by a complete list
    (their own-group entry is kept, first); ``found``: the (t, v, similarity) arrays of :func:`_completion`."""
    found_t, found_v, found_s = found
    owner = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
    is_flagged = np.zeros(ptr.size - 1, dtype=bool)
    is_flagged[flagged] = True
    keep = ~is_flagged[owner] | (cand == owner)
    rows_of = np.concatenate([owner[keep], flagged[found_t]])
    order = np.argsort(rows_of, kind="stable")  # kept entries before the found ones, each in its order
    new_ptr = np.zeros(ptr.size, dtype=np.int64)
    np.cumsum(np.bincount(rows_of, minlength=ptr.size - 1), out=new_ptr[1:])
    new_cand = np.concatenate([cand[keep], found_v])[order]
    new_sims = np.concatenate([sims[keep], found_s])[order]
    new_mult = np.concatenate([mult[keep], counts[found_v]])[order].astype(np.int64)
    return new_ptr, new_cand, new_sims, new_mult


def overflow_scale(top: float) -> float:
    """1, or the power of two that brings the largest |value| ``top`` to about 1 when inner products
    could overflow (unnormalised activations near 1e38): exact, and neighbour ranks do not change."""
    return 1.0 if top < 2.0**40 else float(2.0 ** -np.ceil(np.log2(top)))


def unscaled(state: KnnState, scale: float) -> KnnState:
    """The state of the unscaled rows from that of rows multiplied by ``scale`` (similarities / scale²)."""
    if scale == 1.0:
        return state
    return dataclasses.replace(state, similarities=state.similarities / (scale * scale))


def knn_state(X: np.ndarray, k: int, block: int = DEFAULT_BLOCK, search: CandidateSearch | None = None) -> KnnState:
    """Tie-aware neighbour lists of an already validated, preprocessed matrix (internal: no checks).

    search: the candidate search among the distinct rows (default: :func:`exact_search` in
    ``block`` blocks), e.g. that of :class:`repalign.metrics.torch_engine.TorchBackend`; the lists
    do not depend on it."""
    groups = row_groups(X)
    scale = overflow_scale(max(float(X.max()), -float(X.min())))
    if scale == 1.0 and groups.n_groups == X.shape[0] and X.flags.c_contiguous:
        U = X  # every row distinct (groups.first is 0..N-1): read in place, not copied
    else:
        U = np.ascontiguousarray(X[groups.first] * X.dtype.type(scale))
    search = search or (lambda rows, ks: exact_search(rows, ks, block))
    return unscaled(build_knn_state(groups, DistinctRows.in_memory(U), k, search), scale)
