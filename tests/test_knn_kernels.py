"""The exact search's numba kernels against their plain-numpy twins, and the whole neighbour-list
path (grouping, blocked search, float64 finish, completion, expansion) against lists built from
the definition with numpy alone, on layers with exact duplicate rows and near-ties, bit for bit."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import numpy as np
import pytest

from repalign.metrics import _numba, neighbors
from repalign.metrics.neighbors import knn_state
from repalign.metrics.outofcore import blocked_knn_state

FIELDS = ("indices", "similarities", "weights", "levels")


def all_dot64(X: np.ndarray) -> np.ndarray:
    """Every pair's _dot64 with numpy alone: exact float64 products, lane t % 4 summed in index
    order across all pairs at once, then ((s0 + s1) + (s2 + s3)) and the tail in order."""
    P = X.astype(np.float64)[:, None, :] * X.astype(np.float64)[None, :, :]
    d = X.shape[1]
    full = d - d % 4
    lanes = np.zeros(P.shape[:2] + (4,))
    for t in range(0, full, 4):
        lanes = lanes + P[:, :, t:t + 4]
    S = (lanes[..., 0] + lanes[..., 1]) + (lanes[..., 2] + lanes[..., 3])
    for t in range(full, d):
        S = S + P[:, :, t]
    return S


def reference_state(X: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The tie-aware lists from their definition (neighbors module docstring): per sample, the other
    samples by decreasing exact similarity, equal similarities one level, levels taken while fewer
    than k samples lie above; the boundary level's m samples with weight r/m."""
    n = X.shape[0]
    Z = X + X.dtype.type(0)  # -0.0 as 0.0, as the grouping reads rows
    S = all_dot64(Z)
    lists = []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        values = S[i, others]
        entries = []
        above = 0
        for rank, value in enumerate(np.unique(values)[::-1]):
            members = others[values == value]
            if above + members.size >= k:
                r = k - above
                weight = 1.0 if r == members.size else r / members.size
                entries += [(j, value, weight, rank) for j in members]
                break
            entries += [(j, value, 1.0, rank) for j in members]
            above += members.size
        lists.append(sorted(entries))
    width = max(len(e) for e in lists)
    out = {"indices": np.full((n, width), n, dtype=np.int64), "similarities": np.zeros((n, width)),
           "weights": np.zeros((n, width)), "levels": np.full((n, width), -1, dtype=np.int64)}
    for i, entries in enumerate(lists):
        for t, (j, value, weight, level) in enumerate(entries):
            out["indices"][i, t], out["similarities"][i, t] = j, value
            out["weights"][i, t], out["levels"][i, t] = weight, level
    return out


def duplicated_near_tied(rng, n, width):
    """Continuous rows, a fifth of them exact copies, zero rows written as 0.0 and -0.0, and rows one float32 ulp away
    from another row in one coordinate: exact ties, and similarities that BLAS rounding may tie."""
    X = rng.standard_normal((n, width)).astype(np.float32)
    copies = rng.choice(n, n // 5, replace=False)
    X[copies] = X[rng.choice(n, n // 5)]
    X[5], X[6] = 0.0, 0.0  # two rows of zeros, one partly -0.0: duplicates
    X[5, ::2] = -np.float32(0.0)
    near = rng.choice(n, n // 10, replace=False)
    X[near] = X[rng.choice(n, near.size)]
    col = rng.integers(0, width, near.size)
    X[near, col] = np.nextafter(X[near, col], np.float32(np.inf))
    return X


def lattice(rng, n, width):
    """Small integers: many exactly equal inner products between different rows, and duplicates."""
    X = rng.integers(-2, 3, (n, width)).astype(np.float32)
    X[rng.choice(n, n // 5, replace=False)] = X[rng.choice(n, n // 5)]
    return X


@pytest.mark.parametrize("width", [1, 4, 7, 13, 515])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_candidate_dots_equal_their_numpy_twin(width, dtype):
    rng = np.random.default_rng(width)
    X = rng.standard_normal((90, width)).astype(dtype)
    # about 5 candidates per row (groups of four and a remainder), a third of the pairs listed both
    # ways and a few rows listing themselves, as a row's own duplicate group does
    pairs = rng.integers(0, 90, (300, 2))
    pairs = np.concatenate([pairs, pairs[:150, ::-1]])
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(pairs[:, 0], minlength=90))]).astype(np.int64)
    cand = pairs[:, 1].astype(np.int64)
    twin = _numba.candidate_dots_numpy(X, ptr, cand)
    mirror = _numba.mirror_entries(ptr, cand)
    np.testing.assert_array_equal(mirror, _numba.mirror_entries_numpy(ptr, cand))
    assert (mirror >= 0).sum() > 100
    for skipped in (np.full(cand.size, -1), mirror):  # every entry computed, or pairs listed twice copied
        # rows and candidates split into blocks at offsets, as the out-of-core finish reads them
        out = np.full(cand.size, np.nan)
        for r0, r1 in ((0, 40), (40, 90)):
            for c0, c1 in ((0, 17), (17, 90)):
                _numba.candidate_dots(X[r0:r1], r0, X[c0:c1], c0, ptr, cand, skipped, out)
        copied = np.flatnonzero(skipped >= 0)
        assert np.isnan(out[copied]).all()
        out[copied] = out[skipped[copied]]
        np.testing.assert_array_equal(out, twin)
    for u in range(3):
        for e in range(ptr[u], ptr[u + 1]):
            assert twin[e] == _numba.dot64_numpy(X[u], X[cand[e]])


@pytest.mark.parametrize("make, width", [(duplicated_near_tied, 9), (duplicated_near_tied, 32), (lattice, 5)])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_lists_equal_the_numpy_definition_bit_for_bit(monkeypatch, make, width, k):
    """In memory with several blocks and panels, and out of core, against :func:`reference_state`."""
    rng = np.random.default_rng(width + k)
    X = make(rng, 260, width)
    ref = reference_state(X, k)
    states = [knn_state(X, k), knn_state(X, k, block=64)]
    monkeypatch.setattr(neighbors, "_PANEL_BYTES", 1)  # one block per panel: a pass per block
    states += [knn_state(X, k, block=48), blocked_knn_state([X[:100], X[100:]], k, normalize=None, block=40)]
    for state in states:
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(state, field), ref[field], err_msg=field)
    if make is lattice and k == 12:  # lists wider than the insertion sorts' limit took the other branch
        assert ref["indices"].shape[1] > _numba._SMALL_SORT


def test_panels_give_the_candidates_of_one_panel():
    """The blocked search's candidate lists do not depend on how many row blocks a pass holds."""
    rng = np.random.default_rng(4)
    rows = neighbors.DistinctRows.in_memory(lattice(rng, 700, 6))
    whole = neighbors.exact_search(rows, 9, 64)
    for panel_bytes in (1, 64 * 6 * 4 * 3):  # one block per panel; three blocks per panel
        original = neighbors._PANEL_BYTES
        neighbors._PANEL_BYTES = panel_bytes
        try:
            assert neighbors._panel_rows(rows, 64) == 64 * max(1, panel_bytes // (64 * 6 * 4))
            parts = neighbors.exact_search(rows, 9, 64)
        finally:
            neighbors._PANEL_BYTES = original
        np.testing.assert_array_equal(parts[0], whole[0])
        np.testing.assert_array_equal(parts[1], whole[1])


# ----------------------------------------------------------------------------- numba's OpenMP wait policy
_SHOW_POLICY = """
import ctypes, os
import numba
import repalign.metrics  # noqa: F401
numba.get_num_threads()  # starts numba's threads, as the first parallel kernel does
print(numba.threading_layer(), os.environ.get("OMP_WAIT_POLICY", "unset"))
for lib in sorted({line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}):
    ctypes.CDLL(lib).omp_display_env(1)  # the runtime's settings, on standard error
"""

_FORKED_POOL = """
import multiprocessing
import numpy as np
import repalign.metrics as M

def score(seed):
    rng = np.random.default_rng(seed)
    return float(M.mknn(rng.standard_normal((200, 6)), rng.standard_normal((200, 6)), k=5))

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2) as pool:
        print(pool.map(score, [0, 1]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads the loaded libraries from /proc (Linux)")
@pytest.mark.parametrize("chosen", [None, "ACTIVE"])
def test_numba_threads_wait_passively_unless_the_user_chose_a_policy(chosen):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if chosen:
        env["OMP_WAIT_POLICY"] = chosen
    run = subprocess.run([sys.executable, "-c", _SHOW_POLICY], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    layer, seen = run.stdout.split()
    if layer != "omp":
        pytest.skip(f"numba runs its {layer} threading layer here, which has no OpenMP wait policy")
    assert seen == (chosen or "PASSIVE")
    if chosen:
        assert f"OMP_WAIT_POLICY = '{chosen}'" in run.stderr, run.stderr
    else:  # libgomp shows an unset policy as PASSIVE too, but spins 300,000 times before sleeping
        assert "GOMP_SPINCOUNT = '0'" in run.stderr, run.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="fork() start method")
def test_importing_the_metrics_leaves_fork_based_pools_working(tmp_path):
    """libgomp is not fork-safe: a forked child that runs a parallel kernel aborts when the parent has
    started numba's OpenMP threads, so importing the metrics must not start them."""
    script = tmp_path / "pool.py"
    script.write_text(_FORKED_POOL)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert len(ast.literal_eval(run.stdout)) == 2, run.stdout


def test_rows_whose_inner_products_overflow_float32_get_the_lists_of_the_rows_scaled_down():
    """Activations near 1e24 square past float32's range: the search runs on rows scaled by a power
    of two (exact) and reports the unscaled similarities."""
    rng = np.random.default_rng(3)
    X = duplicated_near_tied(rng, 300, 40)
    big = X * np.float32(2.0**80)
    with np.errstate(over="ignore"):
        assert np.isinf(big[:2] @ big[:2].T).any()  # float32 products overflow
    base, scaled = knn_state(X, 7), knn_state(big, 7)
    for field in ("indices", "weights", "levels"):
        np.testing.assert_array_equal(getattr(scaled, field), getattr(base, field))
    np.testing.assert_array_equal(scaled.similarities, base.similarities * 2.0**160)
