"""Alignment metrics on layers too large for memory, computed from row blocks.

The functions here never see a file: they take a *block source*, a callable that returns a fresh
iterator over row blocks (n_b, D) of one layer, always in the same sample order (e.g.
``lambda: cache.iter_row_blocks(model, layer, 65536)``). A list of arrays is accepted too.
Several passes are made over a source, so a one-shot iterator is refused.

- :func:`blocked_knn_state` / :func:`blocked_nearest_neighbors`: exact k nearest neighbours with
  memory O(N·k + panel + block²) and the same tie-aware lists as the in-memory search for any block size
  (the definition does not depend on BLAS blocking, :mod:`repalign.metrics.neighbors`).
- :class:`LinearCkaStats` / :func:`streamed_linear_cka`: linear CKA from sufficient statistics
  accumulated over blocks, memory O(D_x·D_y) whatever N; :class:`LayerCkaMoments` holds the
  per-layer part, computed once per layer and reused by every pair.

Preprocessing is applied per block: ``normalize="l2"`` (and ``None``) are row-local, so block-safe.
``normalize="center"`` needs the column means of all rows: kNN refuses it (centre in memory
instead); linear CKA accepts it, since CKA centres its inputs anyway (the value is unchanged).
``clip_quantile`` needs a quantile over all rows and is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics import _numba
from repalign.metrics._validate import as_features, check_k, check_min_samples
from repalign.metrics.neighbors import (
    DEFAULT_BLOCK,
    DistinctRows,
    KnnState,
    build_knn_state,
    exact_search,
    overflow_scale,
    refined_groups,
    row_bytes,
    row_digests,
    row_hashes,
    unscaled,
)
from repalign.metrics.prepare import check_prepare_options, prepare_valid

# Rows per update of the CKA statistics: (rows x D) float64 copies stay small next to D x D sums.
_CKA_ROWS = 8192

BlockSource = Callable[[], Iterable[np.ndarray]]


def as_block_source(source, name: str = "source") -> BlockSource:
    """A re-iterable block source from a callable or a sequence of arrays (one-shot iterators refused)."""
    if callable(source):
        return source
    if isinstance(source, (list, tuple)):
        blocks = list(source)
        return lambda: iter(blocks)
    if isinstance(source, np.ndarray):
        raise RepalignError(f"{name} is a single array; pass a list of row blocks, or a callable returning an iterator of blocks")
    raise RepalignError(
        f"{name} is a {type(source).__name__}; pass a callable returning a fresh iterator of row blocks "
        f"(e.g. lambda: cache.iter_row_blocks(model, layer)), since the computation reads the rows several times"
    )


def _check_options(normalize, clip_quantile, allow_center: bool, what: str) -> None:
    check_prepare_options(normalize, clip_quantile)
    if clip_quantile is not None:
        raise RepalignError(
            f"clip_quantile is not supported for {what} computed out of core (its threshold needs every row); "
            f"use clip_quantile=None, or compute in memory"
        )
    if normalize == "center" and not allow_center:
        raise RepalignError(
            f"normalize='center' is not supported for {what} computed out of core (it needs the column means "
            f"of all rows first); use normalize='l2' or None, or compute in memory"
        )


def _prepared_blocks(source: BlockSource, normalize, name: str, width: list) -> Iterator[np.ndarray]:
    """Validated, row-normalised blocks; checks every block has the same width (stored in ``width``)."""
    row0 = 0
    for block in source():
        X = as_features(block, f"{name} block at row {row0}")
        if width[0] is None:
            width[0] = X.shape[1]
        elif X.shape[1] != width[0]:
            raise RepalignError(f"{name} block at row {row0} has {X.shape[1]} columns, earlier blocks {width[0]}; every block must be the same layer")
        if normalize == "l2":
            X = prepare_valid(X, "l2")
        row0 += X.shape[0]
        yield X


def _rechunk(blocks: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of blocks into blocks of exactly ``rows`` rows (the last may be shorter)."""
    pending: list[np.ndarray] = []
    count = 0
    for b in blocks:
        pending.append(b)
        count += b.shape[0]
        while count >= rows:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(joined[:rows])
            rest = joined[rows:]
            pending = [rest] if rest.shape[0] else []
            count = rest.shape[0]
    if count:
        yield np.ascontiguousarray(np.concatenate(pending) if len(pending) > 1 else pending[0])


def count_rows(source, name: str = "source") -> int:
    """Number of rows a block source yields (one pass)."""
    return sum(np.shape(b)[0] for b in as_block_source(source, name)())


# ----------------------------------------------------------------------------- exact kNN
def blocked_knn_state(source, k: int = 10, normalize="l2", clip_quantile=None, block: int = DEFAULT_BLOCK,
                      n_samples: int | None = None, name: str = "layer", search=None) -> KnnState:
    """Tie-aware neighbour lists of a layer read in row blocks: the same :class:`KnnState` as the
    in-memory search gives (:mod:`repalign.metrics.neighbors`), whatever the block sizes.

    Passes over the source: one to hash rows into duplicate groups (a second, for BLAKE2b digests of
    the rows whose 64-bit hash another row shares, only when some do), then the blocked search over
    the distinct rows (one pass for the diagonal blocks and one per panel of row blocks held in
    memory, ``neighbors._PANEL_BYTES``), one per panel for the float64 similarities of the
    candidates, and a rare completion pass. Memory: O(N·k + panel + block²).
    ``search``: another candidate search (a :data:`repalign.metrics.neighbors.CandidateSearch`, e.g.
    one spread over Dask workers); the lists do not depend on it.
    """
    _check_options(normalize, clip_quantile, allow_center=False, what="kNN")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise RepalignError(f"block={block!r} is invalid; pass a positive number of rows, e.g. 2048")
    source = as_block_source(source, name)
    width: list = [None]
    hashes, norms = [], []
    dtype = None
    top = 0.0
    for X in _prepared_blocks(source, normalize, name, width):
        dtype = X.dtype
        hashes.append(row_hashes(row_bytes(X)))
        norms.append(np.sqrt(_numba.row_dots(X)))
        top = max(top, float(np.max(np.abs(X))))
    scale = overflow_scale(top)
    n = sum(h.shape[0] for h in hashes)
    if n_samples is not None and n != int(n_samples):
        raise RepalignError(f"{name} yielded {n} rows but {n_samples} were expected; the block source must give the same rows each pass")
    k = check_k(k, n)

    def digests_of(mask: np.ndarray) -> np.ndarray:  # one more pass, only when rows share a hash
        parts, row0 = [], 0
        for X in _prepared_blocks(source, normalize, name, width):
            parts.append(row_digests(X[mask[row0:row0 + X.shape[0]]]))
            row0 += X.shape[0]
        if row0 != n:
            raise RepalignError(f"{name} yielded {row0} rows, then {n}; the block source must give the same rows each pass")
        return np.concatenate(parts)

    groups = refined_groups(np.concatenate(hashes), digests_of)
    keep = np.zeros(n, dtype=bool)
    keep[groups.first] = True

    def distinct_blocks():
        row0 = 0
        out0 = 0
        for X in _prepared_blocks(source, normalize, name, width):
            if row0 + X.shape[0] > n:
                raise RepalignError(f"{name} yielded more than the {n} rows announced; the block source must give the same rows each pass")
            D = np.ascontiguousarray(X[keep[row0:row0 + X.shape[0]]] * X.dtype.type(scale))
            row0 += X.shape[0]
            if D.shape[0]:
                yield out0, D
                out0 += D.shape[0]

    assert dtype is not None  # a source without rows was refused by check_k
    rows = DistinctRows(distinct_blocks, groups.n_groups, width[0], dtype, scale * np.concatenate(norms)[groups.first])
    search = search or (lambda r, ks: exact_search(r, ks, int(block)))
    return unscaled(build_knn_state(groups, rows, k, search), scale)


def blocked_nearest_neighbors(source, k: int = 10, normalize="l2", block: int = DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row of a layer given as row blocks.

    Same definition and the same lists as :func:`repalign.metrics.nearest_neighbors` (inner
    product of the ``normalize``-d rows, self excluded, decreasing similarity, samples tied with
    the k-th taken in increasing index), whatever ``block`` is. Memory: O(N·k + block·D).

    Returns (indices int64 (N, k), similarities float64 (N, k)).
    """
    return blocked_knn_state(source, k, normalize, None, block).ordered()


# ----------------------------------------------------------------------------- streamed linear CKA
@dataclass
class LinearCkaStats:
    """Sufficient statistics of linear CKA between X (N, Dx) and Y (N, Dy), accumulated over row blocks.

    With n rows, column sums s_x, s_y and cross products XᵀY, XᵀX, YᵀY (float64), the centred
    cross products are C_xy = XᵀY − s_x s_yᵀ / n (likewise C_xx, C_yy), and

        CKA = ‖C_xy‖_F² / (‖C_xx‖_F · ‖C_yy‖_F)

    which equals the biased-HSIC linear CKA of Kornblith et al. (2019), i.e.
    :func:`repalign.metrics.cka` (``kernel="linear"``, ``unbiased=False``). Statistics of disjoint
    row ranges add up (:meth:`merge`), so row ranges can be reduced on different workers.
    Subtracting s sᵀ/n loses precision when the column means are large next to the spread
    (raw, uncentred activations with N in the millions): the l2 rows used by default are fine.
    """

    n: int = 0
    sum_x: np.ndarray | None = None
    sum_y: np.ndarray | None = None
    xty: np.ndarray | None = None
    xtx: np.ndarray | None = None
    yty: np.ndarray | None = None

    def update(self, X: np.ndarray, Y: np.ndarray, self_products: bool = True) -> "LinearCkaStats":
        """Add the rows of one block pair (X_b, Y_b), same samples in the same order.

        Products are formed in the blocks' precision (float32 for cached layers, as the in-memory
        :func:`~repalign.metrics.cka` does, and 3x faster than float64 here) over at most a block
        of rows, and summed across blocks in float64. ``self_products=False`` accumulates XᵀY only,
        for a pair whose layers' own statistics are known (:class:`LayerCkaMoments`).
        """
        X = np.asarray(X)
        Y = np.asarray(Y)
        dtype = np.float32 if X.dtype == np.float32 and Y.dtype == np.float32 else np.float64
        X = np.ascontiguousarray(X, dtype=dtype)
        Y = np.ascontiguousarray(Y, dtype=dtype)
        if X.shape[0] != Y.shape[0]:
            raise RepalignError(f"block of X has {X.shape[0]} rows but block of Y has {Y.shape[0]}; "
                                "both sources must yield the same samples in the same blocks")
        if self.xty is None:
            dx, dy = X.shape[1], Y.shape[1]
            self.sum_x, self.sum_y = np.zeros(dx), np.zeros(dy)
            self.xty, self.xtx, self.yty = np.zeros((dx, dy)), np.zeros((dx, dx)), np.zeros((dy, dy))
        elif X.shape[1] != self.xty.shape[0] or Y.shape[1] != self.xty.shape[1]:  # xty is (Dx, Dy)
            raise RepalignError(f"block widths ({X.shape[1]}, {Y.shape[1]}) differ from earlier blocks ({self.xty.shape[0]}, {self.xty.shape[1]})")
        self.n += X.shape[0]
        self.sum_x += X.sum(axis=0, dtype=np.float64)
        self.sum_y += Y.sum(axis=0, dtype=np.float64)
        self.xty += X.T @ Y
        if self_products:
            self.xtx += X.T @ X
            self.yty += Y.T @ Y
        return self

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sum_x, sum_y, xty, xtx, yty) of statistics with rows: :meth:`update` sets all five together."""
        assert self.sum_x is not None and self.sum_y is not None and self.xty is not None and self.xtx is not None and self.yty is not None
        return self.sum_x, self.sum_y, self.xty, self.xtx, self.yty

    def merge(self, other: "LinearCkaStats") -> "LinearCkaStats":
        """Statistics of the union of two disjoint row sets."""
        if other.xty is None:
            return self
        if self.xty is None:
            return LinearCkaStats(other.n, *(a.copy() for a in other._arrays()))
        if other.xty.shape != self.xty.shape:
            raise RepalignError(f"cannot merge statistics of shapes {self.xty.shape} and {other.xty.shape}; they belong to different layers")
        return LinearCkaStats(self.n + other.n, *(a + b for a, b in zip(self._arrays(), other._arrays())))

    def cka(self, self_x: float | None = None, self_y: float | None = None) -> float:
        """Linear CKA (biased HSIC) of the accumulated rows; ``self_x``/``self_y`` (‖C_xx‖_F²,
        ‖C_yy‖_F²) are taken as given when the self products were not accumulated."""
        if self.xty is None:
            raise RepalignError("no rows were accumulated; the block sources yielded nothing")
        check_min_samples(self.n, 2, "CKA")
        n = float(self.n)
        sum_x, sum_y, xty, xtx, yty = self._arrays()
        cxy = xty - np.outer(sum_x, sum_y) / n
        if self_x is None:
            self_x = _centred_square_norm(xtx, sum_x, self.n)
        if self_y is None:
            self_y = _centred_square_norm(yty, sum_y, self.n)
        for value, side in ((self_x, "X"), (self_y, "Y")):
            if not value > 0.0:
                raise RepalignError(f"{side} has zero (or negative) HSIC self-similarity ({value:.3g}), e.g. all rows identical "
                                    "after preprocessing; the score is undefined, check the input or preprocessing")
        return float(np.einsum("ij,ij->", cxy, cxy) / np.sqrt(self_x * self_y))


def _centred_square_norm(gram: np.ndarray, col_sum: np.ndarray, n: int) -> float:
    """‖XᵀX − s sᵀ/n‖_F², the HSIC self-term of one layer from its raw statistics."""
    centred = gram - np.outer(col_sum, col_sum) / float(n)
    return float(np.einsum("ij,ij->", centred, centred))


@dataclass(frozen=True)
class LayerCkaMoments:
    """The statistics of one layer that every linear-CKA pair it enters needs: n, the column sums
    and ‖XcᵀXc‖_F². Computed once per layer (one pass, :func:`linear_cka_moments`), so a pair
    streams only its cross product XᵀY: Dx·Dy instead of (Dx + Dy)² + Dx·Dy flops per row."""

    n: int
    col_sum: np.ndarray
    self_term: float


def linear_cka_moments(source, normalize="l2") -> LayerCkaMoments:
    """One pass over a block source -> :class:`LayerCkaMoments` (preprocessing as in :func:`linear_cka_stats`)."""
    _check_options(normalize, None, allow_center=True, what="linear CKA")
    width: list = [None]
    n, col_sum, gram = 0, None, None
    for block in _prepared_blocks(as_block_source(source, "source"), _cka_normalize(normalize), "source", width):
        if gram is None:
            col_sum, gram = np.zeros(block.shape[1]), np.zeros((block.shape[1], block.shape[1]))
        n += block.shape[0]
        col_sum += block.sum(axis=0, dtype=np.float64)
        gram += block.T @ block
    if gram is None or col_sum is None:  # both are set by the first block
        raise RepalignError("no rows were accumulated; the block source yielded nothing")
    return LayerCkaMoments(n, col_sum, _centred_square_norm(gram, col_sum, n))


def _cka_normalize(normalize):
    # "center" is dropped: CKA centres its inputs, so pre-centring does not change the value.
    return "l2" if normalize == "l2" else None


def linear_cka_stats(source_x, source_y, normalize="l2", clip_quantile=None, self_products: bool = True) -> LinearCkaStats:
    """One pass over two block sources (same samples, same order; block sizes may differ) -> :class:`LinearCkaStats`."""
    _check_options(normalize, clip_quantile, allow_center=True, what="linear CKA")
    source_x = as_block_source(source_x, "source_x")
    source_y = as_block_source(source_y, "source_y")
    stats = LinearCkaStats()
    wx: list = [None]
    wy: list = [None]
    norm = _cka_normalize(normalize)
    # both streams are re-cut to the same rows, so the sources may use different block sizes
    blocks_x = _rechunk(_prepared_blocks(source_x, norm, "source_x", wx), _CKA_ROWS)
    blocks_y = _rechunk(_prepared_blocks(source_y, norm, "source_y", wy), _CKA_ROWS)
    while True:
        bx = next(blocks_x, None)  # None: that stream is exhausted
        by = next(blocks_y, None)
        if bx is None or by is None or bx.shape[0] != by.shape[0]:
            if bx is not by:
                raise RepalignError("source_x and source_y yielded different numbers of rows; both must give the same samples in the same order")
            break
        stats.update(bx, by, self_products)
    return stats


def streamed_linear_cka(source_x, source_y, normalize="l2", moments_x: LayerCkaMoments | None = None,
                        moments_y: LayerCkaMoments | None = None) -> float:
    """Linear CKA (biased HSIC, Kornblith et al., 2019) of two layers streamed in row blocks.

        CKA = ‖XcᵀYc‖_F² / (‖XcᵀXc‖_F · ‖YcᵀYc‖_F),  Xc = X − 1 x̄ᵀ,

    from the float64 statistics of :class:`LinearCkaStats` (one pass, memory O((Dx + Dy)²),
    independent of N). Equals :func:`repalign.metrics.cka` on ``prepare(X, normalize)`` up to
    float64 rounding. Unbiased and RBF CKA are not available out of core. With both layers'
    :class:`LayerCkaMoments` (computed once per layer, with the same ``normalize``) only the
    cross product is streamed.
    """
    if moments_x is None or moments_y is None:
        return linear_cka_stats(source_x, source_y, normalize).cka()
    stats = linear_cka_stats(source_x, source_y, normalize, self_products=False)
    if stats.n != moments_x.n or stats.n != moments_y.n:
        raise RepalignError(f"the layers yielded {stats.n} rows but their moments were computed on {moments_x.n} and {moments_y.n}; "
                            "recompute the layer states")
    return stats.cka(moments_x.self_term, moments_y.self_term)
