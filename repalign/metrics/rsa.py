"""Representational similarity analysis (Kriegeskorte et al. 2008): compare the two layers'
representational dissimilarity matrices (RDMs) over their upper triangles.

RDMs of the rows (samples), as rsatoolbox computes them:

* ``"correlation"``: 1 − Pearson correlation of the two rows (each row centred over its features);
* ``"euclidean"``: squared Euclidean distance divided by the number of features (rsatoolbox's
  ``calc_rdm(method="euclidean")``; the ranks are those of the Euclidean distance);
* ``"cosine"``: 1 − cosine similarity of the two rows.

Comparisons of the two vectors of N(N−1)/2 dissimilarities, as rsatoolbox's ``compare``:
``"pearson"``, ``"spearman"`` (Pearson of average ranks), ``"cosine"``, ``"rho_a"`` (Spearman's
rho without tie correction: 12 Σ (r−r̄)(s−s̄)/(M³ − M)) and ``"tau_a"`` (Kendall's tau-a:
(concordant − discordant)/(M(M−1)/2), ties counted in neither).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_pair, check_permutation, check_square_size

RDMS = ("correlation", "euclidean", "cosine")
COMPARISONS = ("pearson", "spearman", "cosine", "rho_a", "tau_a")
_RANKED = ("spearman", "rho_a")


@dataclass(frozen=True)
class RsaState:
    """The layer's RDM (N, N), or for rank comparisons the RDM's upper-triangle ranks written back
    into a symmetric matrix: a row permutation permutes rows and columns of either exactly."""

    matrix: np.ndarray
    compare: str

    @property
    def n_samples(self) -> int:
        return self.matrix.shape[0]

    def permuted(self, perm) -> "RsaState":
        perm = check_permutation(perm, self.n_samples)
        return RsaState(np.ascontiguousarray(self.matrix[np.ix_(perm, perm)]), self.compare)

    def vector(self) -> np.ndarray:
        return self.matrix[np.triu_indices(self.n_samples, 1)]


def check_rsa_options(rdm, compare) -> tuple[str, str]:
    if rdm not in RDMS:
        raise RepalignError(f"rdm={rdm!r} is not known; use one of {', '.join(RDMS)}")
    if compare not in COMPARISONS:
        raise RepalignError(f"compare={compare!r} is not known; use one of {', '.join(COMPARISONS)}")
    return rdm, compare


def rdm_matrix(X: np.ndarray, rdm: str, side: str = "X") -> np.ndarray:
    """The (N, N) float64 RDM of X's rows (see the module docstring)."""
    check_square_size(X.shape[0], "rsa")
    Z = np.asarray(X, dtype=np.float64)
    if rdm == "euclidean":
        sq = np.einsum("ij,ij->i", Z, Z)
        D = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (Z @ Z.T), 0.0) / Z.shape[1]
    else:
        if rdm == "correlation":
            Z = Z - Z.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(Z, axis=1)
        if np.any(norms == 0):
            what = "constant" if rdm == "correlation" else "zero"
            raise RepalignError(f"{side} has {int(np.sum(norms == 0))} {what} row(s); the {rdm} RDM is undefined for them, "
                                "drop those samples or use rdm='euclidean'")
        Z = Z / norms[:, None]
        D = 1.0 - Z @ Z.T
    np.fill_diagonal(D, 0.0)
    return D


def rsa_state(X: np.ndarray, rdm: str = "correlation", compare: str = "spearman", side: str = "X") -> RsaState:
    """The layer's :class:`RsaState` (internal: options checked)."""
    D = rdm_matrix(X, rdm, side)
    n = D.shape[0]
    if compare in _RANKED:
        from scipy.stats import rankdata  # lazy: scipy.stats costs ~1 s at import, and only ranked comparisons need it

        iu = np.triu_indices(n, 1)
        R = np.zeros_like(D)
        R[iu] = rankdata(D[iu])
        D = R + R.T
    return RsaState(D, compare)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt(np.dot(a, a) * np.dot(b, b))
    if not den > 0:
        raise RepalignError("an RDM is constant over all pairs; its correlation with another RDM is undefined, check the input")
    return float(np.dot(a, b) / den)


def tau_a(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a from scipy's tau-b: (C − D) = tau_b·√((n0 − n1)(n0 − n2)), tau_a = (C − D)/n0."""
    m = a.size
    n0 = m * (m - 1) / 2.0

    def tied_pairs(v):
        _, counts = np.unique(v, return_counts=True)
        return float(np.sum(counts * (counts - 1) / 2.0))

    n1, n2 = tied_pairs(a), tied_pairs(b)
    if n1 == n0 or n2 == n0:
        return 0.0  # one side constant: every pair is a tie, none concordant or discordant
    from scipy.stats import kendalltau  # lazy: scipy.stats costs ~1 s at import

    tau_b = kendalltau(a, b, variant="b").statistic
    return float(tau_b * np.sqrt((n0 - n1) * (n0 - n2)) / n0)


def compare_vectors(a: np.ndarray, b: np.ndarray, compare: str) -> float:
    """One comparison of two dissimilarity (or rank) vectors."""
    if compare in ("pearson", "spearman"):
        return _pearson(a, b)
    if compare == "cosine":
        den = np.linalg.norm(a) * np.linalg.norm(b)
        if not den > 0:
            raise RepalignError("an RDM is zero over all pairs (all rows identical); its cosine with another RDM is undefined, check the input")
        return float(np.dot(a, b) / den)
    if compare == "rho_a":
        m = a.size
        return float(12.0 * np.dot(a - a.mean(), b - b.mean()) / (m**3 - m))
    return tau_a(a, b)


def rsa_from_states(a: RsaState, b: RsaState) -> float:
    return compare_vectors(a.vector(), b.vector(), a.compare)


def rsa(X, Y, rdm="correlation", compare="spearman") -> float:
    """RSA score of X and Y: ``compare`` of their ``rdm`` RDMs over the upper triangles (see the module).

    In [−1, 1]; about 0 for unrelated X and Y with the correlation-type comparisons (pearson,
    spearman, rho_a, tau_a), well above 0 with cosine (dissimilarities are non-negative).
    Memory O(N²). Needs N ≥ 3 (at least two pairs).
    """
    X, Y = as_pair(X, Y)
    rdm, compare = check_rsa_options(rdm, compare)
    if X.shape[0] < 3:
        raise RepalignError(f"rsa needs at least 3 samples (two pairs to compare); got {X.shape[0]}")
    return rsa_from_states(rsa_state(X, rdm, compare, "X"), rsa_state(Y, rdm, compare, "Y"))
