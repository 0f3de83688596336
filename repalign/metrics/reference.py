"""Plain reference implementations of the alignment metrics, in float64: full N x N matrices,
sorting, sets, textbook dynamic programming and explicit centring matrices.

They are slow on purpose and share no code with :mod:`repalign.metrics`, so agreeing with them
checks the fast paths (tests/test_metric_reference.py); use them to check a new metric or backend.
"""

from __future__ import annotations

import numpy as np


def knn_sets(X, k):
    """Each row's k nearest other rows by inner product (rows are l2-normalised), ties to the lower index."""
    X = np.asarray(X, dtype=np.float64)
    S = X @ X.T
    n = len(X)
    return [sorted((j for j in range(n) if j != i), key=lambda j: (-S[i, j], j))[:k] for i in range(n)]


def mutual_knn(X, Y, k):
    a, b = knn_sets(X, k), knn_sets(Y, k)
    return np.mean([len(set(p) & set(q)) / k for p, q in zip(a, b)])


def cycle_knn(X, Y, k):
    a, b = knn_sets(X, k), knn_sets(Y, k)
    return np.mean([any(i in a[j] for j in b[i]) for i in range(len(a))])


def lcs_len(x, y):
    T = np.zeros((len(x) + 1, len(y) + 1), dtype=int)
    for p in range(1, len(x) + 1):
        for q in range(1, len(y) + 1):
            T[p, q] = T[p - 1, q - 1] + 1 if x[p - 1] == y[q - 1] else max(T[p - 1, q], T[p, q - 1])
    return T[-1, -1]


def levenshtein(x, y):
    T = np.zeros((len(x) + 1, len(y) + 1), dtype=int)
    T[:, 0] = np.arange(len(x) + 1)
    T[0, :] = np.arange(len(y) + 1)
    for p in range(1, len(x) + 1):
        for q in range(1, len(y) + 1):
            T[p, q] = min(T[p - 1, q] + 1, T[p, q - 1] + 1, T[p - 1, q - 1] + (x[p - 1] != y[q - 1]))
    return T[-1, -1]


def lcs_knn(X, Y, k):
    return np.mean([lcs_len(p, q) for p, q in zip(knn_sets(X, k), knn_sets(Y, k))]) / k


def edit_distance_knn(X, Y, k):
    return 1 - np.mean([levenshtein(p, q) for p, q in zip(knn_sets(X, k), knn_sets(Y, k))]) / k


def hsic_biased(K, L):
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def hsic_unbiased(K, L):
    n = len(K)
    Kt = K * (1 - np.eye(n))
    Lt = L * (1 - np.eye(n))
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2)) - 2 * one @ Kt @ Lt @ one / (n - 2)) / (n * (n - 3))


def rbf_kernel(X, sigma):
    D2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    if sigma is None:
        sigma = np.median(np.sqrt(D2[np.triu_indices(len(X), 1)]))
    return np.exp(-D2 / (2 * sigma**2))


def cka(X, Y, kernel="linear", sigma=None, unbiased=False):
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    K, L = (X @ X.T, Y @ Y.T) if kernel == "linear" else (rbf_kernel(X, sigma), rbf_kernel(Y, sigma))
    h = hsic_unbiased if unbiased else hsic_biased
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def cknna(X, Y, k):
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n = len(X)
    K, L = X @ X.T, Y @ Y.T

    def mask(P):
        m = np.zeros((n, n))
        for i, row in enumerate(knn_from_kernel(P, k)):
            m[i, row] = 1
        return m

    mK, mL = mask(K), mask(L)
    M_ = mK * mL
    return hsic_unbiased(M_ * K, M_ * L) / np.sqrt(hsic_unbiased(mK * K, mK * K) * hsic_unbiased(mL * L, mL * L))


def knn_from_kernel(P, k):
    n = len(P)
    return [sorted((j for j in range(n) if j != i), key=lambda j: (-P[i, j], j))[:k] for i in range(n)]


def svcca(X, Y, dim=None, variance=None):
    """Standardised features and a fixed dim (platonic-rep's variant), or centred features and the
    directions explaining ``variance`` (Raghu et al., 2017); then textbook CCA."""
    def reduce(Z):
        Z = np.asarray(Z, dtype=np.float64)
        Z = Z - Z.mean(0)
        if dim is not None:
            sd = Z.std(0, ddof=1)
            Z = Z / np.where(sd > 0, sd, 1)
        U, s, Vt = np.linalg.svd(Z, full_matrices=False)
        keep = dim if dim is not None else next(i + 1 for i in range(len(s)) if np.sum(s[:i + 1] ** 2) >= variance * np.sum(s**2))
        return Z @ Vt[:keep].T  # projections onto the top directions (= U s), not orthonormalised

    A, B = reduce(X), reduce(Y)
    # Textbook CCA: singular values of Σaa^{-1/2} Σab Σbb^{-1/2}.
    n = len(A)
    Saa, Sbb, Sab = A.T @ A / (n - 1), B.T @ B / (n - 1), A.T @ B / (n - 1)
    # min(da, db) canonical correlations

    def inv_sqrt(S):
        w, V = np.linalg.eigh(S)
        return V @ np.diag(w**-0.5) @ V.T

    return np.mean(np.linalg.svd(inv_sqrt(Saa) @ Sab @ inv_sqrt(Sbb), compute_uv=False))


def dcor(X, Y):
    def centred(Z):
        Z = np.asarray(Z, dtype=np.float64)
        a = np.sqrt(((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1))
        return a - a.mean(0, keepdims=True) - a.mean(1, keepdims=True) + a.mean()

    A, B = centred(X), centred(Y)
    return np.sqrt((A * B).mean() / np.sqrt((A * A).mean() * (B * B).mean()))
