"""The cache reader's id index: packed ids and a sorted permutation instead of a dict of strings.

Lookups are checked against a plain Python reference (first row of a repeated id, ids missing,
ids longer than any stored one, non-ASCII ids); memory is measured with tracemalloc.
"""

import tracemalloc

import numpy as np
import pytest

from embeddings_cache import Cache, CacheError, CacheWriter


def write(path, ids, batch=7, model="m"):
    hashes = [f"{i:064x}" for i in range(len(ids))]
    X = np.arange(len(ids) * 3, dtype=np.float32).reshape(-1, 3)
    with CacheWriter(path, model, provenance={"options": {}}, layers=["l"]) as w:
        for s in range(0, len(ids), batch):
            w.append(ids[s:s + batch], hashes[s:s + batch], {"l": X[s:s + batch]})
    return X


def test_lookup_matches_a_python_index(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"p{int(v)}" for v in rng.permutation(60)] + ["β-lactamase", "x", "Ω1"]
    X = write(tmp_path / "c.h5", ids)
    reference = {i: r for r, i in enumerate(ids)}
    query = [ids[j] for j in rng.integers(0, len(ids), 40)] + ["β-lactamase", "x"]
    with Cache(tmp_path / "c.h5") as c:
        assert c.ids("m") == ids
        np.testing.assert_array_equal(c.read_layer("m", "l", ids=query), X[[reference[i] for i in query]])
        for missing in (["p1000"], ["p1", "xx"], ["a-much-longer-id-than-any-stored"], ["x\x00"], [3]):
            with pytest.raises(CacheError, match="has no samples"):
                c.read_layer("m", "l", ids=missing)
        assert c.read_layer("m", "l", ids=[]).shape[0] == 0


def test_memory_of_the_index_is_packed(tmp_path):
    """Open + a lookup of 1% of the ids holds about (id + hash + 8) bytes per sample, not a dict of strings."""
    n = 60000
    ids = [f"UniRef50_A{i:07d}" for i in range(n)]
    write(tmp_path / "big.h5", ids, batch=20000)
    tracemalloc.start()
    try:
        with Cache(tmp_path / "big.h5") as c:
            rows = c.read_layer("m", "l", ids=ids[::100])
            held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows.shape == (n // 100, 3)
    packed = n * (len(ids[0]) + 64 + 8)
    assert held < 1.3 * packed + (1 << 20), (held / n, packed / n)
