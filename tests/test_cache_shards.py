"""embeddings_cache.merge_shards and remove_cache on real caches written by CacheWriter."""

from __future__ import annotations

import numpy as np

from embeddings_cache import Cache, CacheWriter, merge_shards, remove_cache

PROV = {"options": {"pool": "mean"}, "source": "test"}


def write_shard(path, ids, rng, model="m"):
    n = len(ids)
    pooled = {"l0": rng.standard_normal((n, 4)).astype(np.float32), "l1": rng.standard_normal((n, 3)).astype(np.float32)}
    tokens = {"l1": [rng.standard_normal((int(k), 3)).astype(np.float32) for k in rng.integers(1, 6, n)]}
    outputs = {"plddt": rng.random(n)}
    hashes = [f"{abs(hash(i)) % 16**8:064x}" for i in ids]
    with CacheWriter(path, model, provenance=PROV, layers=["l0", "l1"], token_layers=["l1"]) as w:
        w.append(ids[: n // 2], hashes[: n // 2], {k: v[: n // 2] for k, v in pooled.items()},
                 tokens={k: v[: n // 2] for k, v in tokens.items()}, outputs={k: v[: n // 2] for k, v in outputs.items()})
        w.append(ids[n // 2:], hashes[n // 2:], {k: v[n // 2:] for k, v in pooled.items()},
                 tokens={k: v[n // 2:] for k, v in tokens.items()}, outputs={k: v[n // 2:] for k, v in outputs.items()})
    return ids, hashes, pooled, tokens, outputs


def test_merge_appends_shards_in_order_and_is_idempotent(tmp_path):
    rng = np.random.default_rng(0)
    shards = [write_shard(tmp_path / f"s{i}.h5", [f"p{i}-{j}" for j in range(n)], rng) for i, n in enumerate((7, 1, 12))]
    paths = [tmp_path / f"s{i}.h5" for i in range(3)]
    target = tmp_path / "target.h5"
    assert merge_shards(paths, target, "m", rows_per_append=5) == 20
    with Cache(target) as c:
        assert c.ids("m") == [i for s in shards for i in s[0]]
        assert c.hashes("m") == [h for s in shards for h in s[1]]
        assert c.provenance("m")["source"] == "test" and c.provenance("m")["options"] == PROV["options"]
        for layer in ("l0", "l1"):
            np.testing.assert_array_equal(c.read_layer("m", layer), np.concatenate([s[2][layer] for s in shards]))
        data, offsets = c.read_tokens("m", "l1")
        expected = [t for s in shards for t in s[3]["l1"]]
        for j, rows in enumerate(expected):
            np.testing.assert_array_equal(data[offsets[j]:offsets[j + 1]], rows)
        np.testing.assert_array_equal(c.read_output("m", "plddt"), np.concatenate([s[4]["plddt"] for s in shards]))
    # an interrupted merge run again: the samples already there are skipped
    assert merge_shards(paths, target, "m") == 0
    with Cache(target) as c:
        assert len(c.ids("m")) == 20
    assert merge_shards(paths, target, "other") == 0  # no shard holds the model



def test_overlapping_shards_merge_each_sample_once_from_the_first_shard_holding_it(tmp_path):
    rng = np.random.default_rng(1)
    first = write_shard(tmp_path / "a.h5", [f"x{j}" for j in range(6)], rng)
    second = write_shard(tmp_path / "b.h5", [f"x{j}" for j in range(3, 10)], rng)  # x3-x5 in both
    target = tmp_path / "target.h5"
    assert merge_shards([tmp_path / "a.h5", tmp_path / "b.h5"], target, "m", rows_per_append=4) == 10
    with Cache(target) as c:
        assert c.ids("m") == [f"x{j}" for j in range(10)]
        np.testing.assert_array_equal(c.read_layer("m", "l0"), np.concatenate([first[2]["l0"], second[2]["l0"][3:]]))

def test_remove_cache_removes_the_file_and_its_journal(tmp_path):
    rng = np.random.default_rng(1)
    write_shard(tmp_path / "s.h5", ["a", "b", "c"], rng)
    (tmp_path / "keep.txt").write_text("x")
    assert {p.name for p in tmp_path.iterdir()} >= {"s.h5", "s.h5.lock", "s.h5.parts"}
    remove_cache(tmp_path / "s.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    remove_cache(tmp_path / "s.h5")  # nothing left to remove: no error
