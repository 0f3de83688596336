"""The cache's id index: sorted id keys and rows on disk, written in the commit of the rows they index.

Lookups are checked against a plain Python reference (first row of a repeated id, ids missing,
ids longer than any stored one, non-ASCII ids, ids in the main file and in journal parts not yet
consolidated, keys that collide); caches in the layout written before the index existed read the
same and get the index at their next write; the reader's memory (tracemalloc) does not grow with
the number of samples.
"""

import tracemalloc

import h5py
import numpy as np
import pytest

import embeddings_cache.journal as journal
import embeddings_cache.reader as reader
from embeddings_cache import Cache, CacheError, CacheWriter, align_ids
from embeddings_cache.format import ID_INDEX, ID_INDEX_CHUNK, INSTANCE, id_keys


def write(path, ids, batch=7, model="m", start=0, close=True, overwrite=False, scale=1):
    """Append ``ids`` (hashes and rows numbered from ``start``); return the rows written."""
    hashes = [f"{start + i:064x}" for i in range(len(ids))]
    X = scale * np.arange(start * 3, (start + len(ids)) * 3, dtype=np.float32).reshape(-1, 3)
    w = CacheWriter(path, model, provenance={"options": {}}, layers=["l"], overwrite=overwrite)
    for s in range(0, len(ids), batch):
        w.append(ids[s:s + batch], hashes[s:s + batch], {"l": X[s:s + batch]})
    if close:
        w.close()
        return X
    return X, w


def fnv1a(text):
    """FNV-1a 64 written out byte by byte, the reference for id_keys."""
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) % 2**64
    return h


def check_lookups(cache, ids, X, rng, model="m"):
    """Every lookup equals the first row of the id in a Python reference."""
    reference = {}
    for r, i in enumerate(ids):
        reference.setdefault(i, r)
    query = [ids[j] for j in rng.integers(0, len(ids), 60)] + list(reference)[:3]
    np.testing.assert_array_equal(cache.read_layer(model, "l", ids=query), X[[reference[i] for i in query]])
    for missing in (["p1000000"], [ids[0], "xx"], ["a-much-longer-id-than-any-stored-id-here"], [ids[0] + "\x00"], [3]):
        with pytest.raises(CacheError, match="has no samples"):
            cache.read_layer(model, "l", ids=missing)
    assert cache.read_layer(model, "l", ids=[]).shape[0] == 0


def test_keys_are_fnv1a_of_the_utf8_bytes():
    ids = ["", "a", "ab", "β-lactamase", "UniRef50_A0000001", "x" * 70, "Ω1"]
    keys = id_keys(np.array([i.encode() for i in ids], dtype="S"))
    assert [int(k) for k in keys] == [fnv1a(i) for i in ids]


def test_lookup_matches_a_python_index_in_the_main_file_and_the_journal(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"p{int(v)}" for v in rng.permutation(60)] + ["β-lactamase", "x", "Ω1"]
    X = write(tmp_path / "c.h5", ids[:40])
    with h5py.File(tmp_path / "c.h5", "r") as f:  # the index is on disk and covers the rows
        index = f["models/m"][ID_INDEX]
        assert int(index.attrs["covers"]) == 40
        np.testing.assert_array_equal(np.sort(index["rows"][()]), np.arange(40))
        assert np.all(np.diff(index["keys"][()].astype(np.float64)) >= 0)
    X2, w = write(tmp_path / "c.h5", ids[40:], start=40, close=False)  # parts not consolidated yet
    X = np.concatenate([X, X2])
    try:
        with Cache(tmp_path / "c.h5") as c:
            assert c.n_pending_parts > 0
            assert c.ids("m") == ids
            assert c.hashes("m") == [f"{i:064x}" for i in range(len(ids))]
            check_lookups(c, ids, X, rng)
    finally:
        w.close()
    with Cache(tmp_path / "c.h5") as c:
        assert c.n_pending_parts == 0
        assert c._views["m"].indexed == len(ids)  # all in the index now
        assert c.ids("m") == ids
        check_lookups(c, ids, X, rng)
        blocks = list(c.iter_row_blocks("m", "l", block_rows=9))
        np.testing.assert_array_equal(np.concatenate(blocks), X)


def test_every_id_is_found_also_at_the_boundaries_of_the_index_chunks(tmp_path):
    """All ids of a cache of three index chunks, the ids whose keys open a chunk first."""
    n = 2 * ID_INDEX_CHUNK + 10
    ids = [f"s{i}" for i in range(n)]
    X = write(tmp_path / "c.h5", ids, batch=n)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        rows = f["models/m"][ID_INDEX]["rows"][()]
    first_of_chunks = [ids[r] for r in rows[::ID_INDEX_CHUNK]] + [ids[r] for r in rows[ID_INDEX_CHUNK - 1::ID_INDEX_CHUNK]]
    with Cache(tmp_path / "c.h5") as c:
        for query in (first_of_chunks, ids[::-1]):
            np.testing.assert_array_equal(c.read_layer("m", "l", ids=query), X[[int(i[1:]) for i in query]])


def test_colliding_keys_are_told_apart_by_the_stored_ids(tmp_path, monkeypatch):
    """With a hash of 3 values every key is shared by ~850 ids and runs over chunk boundaries:
    the lookups still give the first row of each id (the candidates' stored ids are compared)."""
    weak = lambda packed: id_keys(packed) % np.uint64(3)  # noqa: E731
    monkeypatch.setattr(journal, "id_keys", weak)
    monkeypatch.setattr(reader, "id_keys", weak)
    n = 2 * ID_INDEX_CHUNK + 500
    ids = [f"s{i}" for i in np.random.default_rng(1).permutation(n)]
    X = write(tmp_path / "c.h5", ids, batch=5000)
    with Cache(tmp_path / "c.h5") as c:
        assert c._views["m"].indexed == n
        check_lookups(c, ids, X, np.random.default_rng(2))


def old_layout(path):
    """Make a cache written here look as written before the id index existed."""
    with h5py.File(path, "r+") as f:
        for group in f["models"].values():
            del group[ID_INDEX]
            del group.attrs[INSTANCE]


def test_a_cache_in_the_old_layout_reads_the_same_and_gets_the_index_at_its_next_write(tmp_path):
    rng = np.random.default_rng(3)
    ids = [f"q{i}" for i in rng.permutation(50)]
    X = write(tmp_path / "c.h5", ids[:30])
    old_layout(tmp_path / "c.h5")
    with Cache(tmp_path / "c.h5") as c:
        assert c._views["m"].indexed == 0  # the ids are read into memory, as before the index
        assert c.ids("m") == ids[:30]
        check_lookups(c, ids[:30], X, rng)
    X = np.concatenate([X, write(tmp_path / "c.h5", ids[30:], start=30)])
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert int(f["models/m"][ID_INDEX].attrs["covers"]) == 50
    with Cache(tmp_path / "c.h5") as c:
        assert c._views["m"].indexed == 50
        assert c.ids("m") == ids
        check_lookups(c, ids, X, rng)


def test_rows_appended_by_a_version_without_the_index_are_found(tmp_path, monkeypatch):
    """An older writer appends rows without updating the index: the reader sees that the index
    covers fewer rows and reads the ids into memory; the next writer rebuilds the index."""
    rng = np.random.default_rng(4)
    ids = [f"r{i}" for i in rng.permutation(45)]
    X = write(tmp_path / "c.h5", ids[:20])
    with monkeypatch.context() as m:
        m.setattr(journal, "update_id_index", lambda group: None)
        X = np.concatenate([X, write(tmp_path / "c.h5", ids[20:35], start=20)])
    with Cache(tmp_path / "c.h5") as c:
        assert c._views["m"].indexed == 0
        check_lookups(c, ids[:35], X, rng)
    X = np.concatenate([X, write(tmp_path / "c.h5", ids[35:], start=35)])
    with Cache(tmp_path / "c.h5") as c:
        assert c._views["m"].indexed == 45
        assert c.ids("m") == ids
        check_lookups(c, ids, X, rng)


def test_repeated_ids_give_the_first_row_with_and_without_the_index(tmp_path):
    """Writers refuse repeated ids, but a damaged or foreign cache may hold them: the lookup gives
    the first row and align_ids names them, before and after the index is built."""
    ids = ["a", "b", "a", "c", "b"]
    X = write(tmp_path / "c.h5", [f"t{i}" for i in range(5)])
    old_layout(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r+") as f:
        f["models/m/ids"][:] = np.array(ids, dtype=object)
    for round_ in range(2):
        with Cache(tmp_path / "c.h5") as c:
            assert c.ids("m") == ids
            np.testing.assert_array_equal(c.read_layer("m", "l", ids=["b", "a", "c"]), X[[1, 0, 3]])
            with pytest.raises(CacheError, match="duplicated ids 'a', 'b'"):
                align_ids(c, "m")
        write(tmp_path / "c.h5", [f"u{round_}"], model="other")  # a write: builds the index of every model
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert int(f["models/m"][ID_INDEX].attrs["covers"]) == 5


def held_after_open_and_lookup(path, ids):
    """Bytes held (tracemalloc) by an open cache after looking up 100 ids and reading them."""
    tracemalloc.start()
    try:
        with Cache(path) as c:
            rows = c.read_layer("m", "l", ids=ids)
            del rows
            held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held


def test_the_reader_memory_does_not_grow_with_the_number_of_samples(tmp_path):
    """Open + a lookup of 100 ids: the memory held is the same at 10,000 and 60,000 samples (the
    packed in-memory index it replaced held (id + hash + 8) = 89 bytes per sample)."""
    held = {}
    for n in (10_000, 60_000):
        ids = [f"UniRef50_A{i:07d}" for i in range(n)]
        write(tmp_path / f"c{n}.h5", ids, batch=20_000)
        query = ids[:: n // 100]
        held_after_open_and_lookup(tmp_path / f"c{n}.h5", query)  # h5py's one-time allocations
        held[n] = held_after_open_and_lookup(tmp_path / f"c{n}.h5", query)
    growth = (held[60_000] - held[10_000]) / 50_000
    assert growth < 2, (held, growth)  # bytes per sample; fences are 8 bytes per 1,024 samples
    assert held[60_000] < 1 << 20, held


def test_a_reader_sees_the_same_samples_after_a_commit(tmp_path):
    """A reader keeps reading its snapshot's samples when a writer commits under it: rows appended
    in place keep their numbers; after an overwrite (a new main file) a read gets the same ids;
    row blocks of a model replaced between two blocks are an error, not a mix of two extractions."""
    ids = [f"v{i}" for i in range(30)]
    X = write(tmp_path / "c.h5", ids[:20])
    with Cache(tmp_path / "c.h5") as c:
        blocks = c.iter_row_blocks("m", "l", block_rows=8)
        first = next(blocks)
        write(tmp_path / "c.h5", ids[20:], start=20)  # appended and committed in place
        np.testing.assert_array_equal(np.concatenate([first] + list(blocks)), X)  # this snapshot's 20 rows
        assert c.ids("m") == ids  # reopened: the new rows are seen from now on
    with Cache(tmp_path / "c.h5") as c:
        Y = write(tmp_path / "c.h5", ids[::-1], overwrite=True, scale=-1)[::-1]  # rebuilt: same ids, new rows
        # the snapshot's samples in its order, read by id from the new main file
        np.testing.assert_array_equal(c.read_layer("m", "l"), Y)
        assert c.ids("m") == ids[::-1]  # reopened: the new order from now on
    for in_place_first in (False, True):
        with Cache(tmp_path / "c.h5") as c:
            blocks = c.iter_row_blocks("m", "l", block_rows=8)
            next(blocks)
            if in_place_first:  # the old main file changes in place: the old ids are no longer on disk
                write(tmp_path / "c.h5", ["w0"], start=30, scale=-1)
            write(tmp_path / "c.h5", ids, overwrite=True)  # then replaced
            with pytest.raises(CacheError, match="was overwritten while being read; open the cache again"):
                next(blocks)


def test_rows_looked_up_once_read_as_the_ids_do_across_commits_and_not_after_an_overwrite(tmp_path):
    """sample_rows + read_layer_rows give read_layer(ids=...)'s rows (main file and journal parts,
    repeated ids, any order, any slice); the rows stay valid after an append by a writer, and an
    overwrite of the model is an error, not other samples."""
    rng = np.random.default_rng(5)
    ids = [f"p{i}" for i in range(50)]
    X = write(tmp_path / "c.h5", ids[:30])
    X2, w = write(tmp_path / "c.h5", ids[30:], start=30, close=False)  # parts not consolidated yet
    X = np.concatenate([X, X2])
    query = [ids[j] for j in rng.permutation(50)] + [ids[3], ids[3]]
    try:
        with Cache(tmp_path / "c.h5") as c:
            assert c.n_pending_parts > 0
            rows = c.sample_rows("m", query)
            assert len(rows) == len(query)
            expected = X[[int(i[1:]) for i in query]]
            for start, stop in ((0, None), (0, 7), (7, 40), (40, None)):
                np.testing.assert_array_equal(c.read_layer_rows("l", rows, start, stop), expected[start:stop])
                np.testing.assert_array_equal(c.read_layer_rows("l", rows, start, stop), c.read_layer("m", "l", ids=query[start:stop]))
            assert c.read_layer_rows("l", rows, 52).shape[0] == 0  # past the end: no rows, as read_layer(ids=[])
            with pytest.raises(CacheError, match="has no samples"):
                c.sample_rows("m", ["p1", "nope"])
            with pytest.raises(CacheError, match="wrap it in a list"):
                c.sample_rows("m", "p1")
    finally:
        w.close()
    with Cache(tmp_path / "c.h5") as c:
        rows = c.sample_rows("m", query)
        write(tmp_path / "c.h5", ["q1", "q2"], start=50)  # a writer appends: row numbers are kept
        np.testing.assert_array_equal(c.read_layer_rows("l", rows), expected)
        write(tmp_path / "c.h5", ids, overwrite=True, scale=2)  # another extraction of the model
        with pytest.raises(CacheError, match="overwritten"):
            c.read_layer_rows("l", rows)  # the reader learns of the overwrite while reading
    with Cache(tmp_path / "c.h5") as c:
        with pytest.raises(CacheError, match="overwritten since its rows were looked up"):
            c.read_layer_rows("l", rows)
        np.testing.assert_array_equal(c.read_layer_rows("l", c.sample_rows("m", query)), 2 * expected)
