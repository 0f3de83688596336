"""Token-level comparisons (`repalign compare --tokens`): rows, checks, out-of-core equality, and
permutation tests that move whole samples (calibrated under within-sample dependence)."""


import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main
from scipy.stats import binom

from embeddings_cache import CacheWriter
from repalign.compare import compare_tokens
from repalign.errors import RepalignError
from repalign.inputs import sequence_record, structure_record
from repalign.metrics import cka, mutual_knn, prepare
from repalign.metrics.engine import layer_state, resolve_metrics
from repalign.stats import block_permutation, permutation_tests, subsample_intervals


def run_cli(*args):
    return run_main(*args)

def write_tokens(path, model, ids, hashes, layers):
    """A model with token layers only: layers maps name -> list of per-sample (L_i, D) arrays."""
    with CacheWriter(path, model, provenance={"model": model, "options": {}}, layers=[], token_layers=list(layers)) as w:
        half = len(ids) // 2
        for sl in (slice(0, half), slice(half, None)):
            w.append(ids[sl], hashes[sl], {}, tokens={k: v[sl] for k, v in layers.items()})


def clustered(rng, lengths, dim, within=0.3):
    """Per-sample token rows: a sample effect shared by all its tokens plus token noise (strong
    within-sample dependence)."""
    return [(rng.standard_normal(dim) + within * rng.standard_normal((n, dim))).astype(np.float32) for n in lengths]


LENGTHS = [6] * 8 + [9] * 8  # two groups of equal length: block permutations move samples within each


@pytest.fixture()
def token_cache(tmp_path):
    """Two models whose token rows share a signal (B sees A's rows through a linear map)."""
    rng = np.random.default_rng(3)
    records = [sequence_record(f"p{i:02d}", "ACDEFGHIKLMNPQRSTVWY"[i % 5:][:n]) for i, n in enumerate(LENGTHS)]
    ids, hashes = [r.id for r in records], [r.content_hash for r in records]
    a0 = clustered(rng, LENGTHS, 12)
    a1 = [x + 0.5 * rng.standard_normal(x.shape).astype(np.float32) for x in a0]
    w = rng.standard_normal((12, 10))
    b0 = [(x @ w + 0.8 * rng.standard_normal((len(x), 10))).astype(np.float32) for x in a0]
    path = tmp_path / "t.h5"
    write_tokens(path, "ma", ids, hashes, {"a0": a0, "a1": a1})
    # model B stored in another sample order: rows must be matched through the sample ids
    order = rng.permutation(len(ids))
    write_tokens(path, "mb", [ids[i] for i in order], [hashes[i] for i in order], {"b0": [b0[i] for i in order]})
    return path, records, {"a0": a0, "a1": a1}, {"b0": b0}


def test_token_scores_match_direct_metric_calls_on_stacked_rows(token_cache):
    path, _, fa, fb = token_cache
    res = compare_tokens(path, "ma", "mb", ["mknn", "cka"], k=5)
    table = res.table
    assert (table["granularity"] == "token").all() and (table["n_samples"] == sum(LENGTHS)).all()
    assert (table["n_units"] == len(LENGTHS)).all()
    for _, row in table.iterrows():
        x = prepare(np.concatenate(fa[row.layer_a]).astype(np.float64), normalize="l2")
        y = prepare(np.concatenate(fb[row.layer_b]).astype(np.float64), normalize="l2")
        expected = mutual_knn(x, y, k=5) if row.metric == "mutual_knn" else cka(x, y)
        assert row.score == pytest.approx(expected, abs=1e-6)
        assert "granularity=token" in row.params


def test_block_permutation_moves_whole_samples_onto_samples_of_the_same_length():
    offsets = np.concatenate([[0], np.cumsum([3, 5, 3, 5, 4, 3])])
    draw = block_permutation(offsets)
    assert draw.movable == 5 and draw.count == 6 * 2  # 3! for length 3, 2! for length 5, 1 for length 4
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        perm = draw(rng)
        assert sorted(perm) == list(range(offsets[-1]))
        for s in range(len(offsets) - 1):
            block = perm[offsets[s]:offsets[s + 1]]
            source = np.searchsorted(offsets, block[0], side="right") - 1
            assert block.tolist() == list(range(offsets[source], offsets[source + 1]))  # whole sample, in order
            assert offsets[source + 1] - offsets[source] == offsets[s + 1] - offsets[s]
        assert perm[offsets[4]:offsets[5]].tolist() == list(range(offsets[4], offsets[5]))  # alone with its length
        seen.add(tuple(perm))
    assert len(seen) == 12  # every block permutation is reachable


def test_block_permuted_states_equal_fresh_states_on_permuted_rows():
    rng = np.random.default_rng(1)
    X = np.concatenate(clustered(rng, LENGTHS, 8)).astype(np.float64)
    Y = np.concatenate(clustered(rng, LENGTHS, 8)).astype(np.float64)
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
    resolved = resolve_metrics(["mknn", "cka"], len(X), {"k": 4})
    perm = block_permutation(offsets)(rng)
    sa = layer_state(X, resolved)
    moved = layer_state(Y, resolved).permuted(perm)
    fresh = layer_state(Y[perm], resolved)
    for m, (metric, p) in enumerate(resolved):
        assert metric.score(sa.states[m], moved.states[m], p) == pytest.approx(metric.score(sa.states[m], fresh.states[m], p), abs=1e-12)


def test_type_one_error_block_permutation_calibrated_token_permutation_inflated():
    """40 null data sets: A and B independent, tokens of a sample strongly dependent in both.

    Block permutations (whole samples) must reject at about alpha; uniform permutations of token
    rows must not: they destroy B's within-sample structure, so the null is far too low."""
    datasets, permutations, alpha, k = 40, 49, 0.1, 4
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
    draw = block_permutation(offsets)
    rng = np.random.default_rng(2024)
    rejected = {"block": 0, "token": 0}
    for d in range(datasets):
        X = np.concatenate(clustered(rng, LENGTHS, 8)).astype(np.float64)
        Y = np.concatenate(clustered(rng, LENGTHS, 8)).astype(np.float64)  # independent of X
        resolved = resolve_metrics(["mknn"], len(X), {"k": k})
        sa, sb = [layer_state(X, resolved, name="a")], [layer_state(Y, resolved, name="b")]
        block = permutation_tests(sa, sb, resolved, permutations, seed=d, alpha=alpha, draw=draw)[0]
        token = permutation_tests(sa, sb, resolved, permutations, seed=d, alpha=alpha)[0]
        rejected["block"] += bool(block.p_value[0, 0] <= alpha)
        rejected["token"] += bool(token.p_value[0, 0] <= alpha)
    # the exact test rejects with probability <= alpha (= 5/50 here): 99.9% binomial band
    low, high = binom.ppf(0.0005, datasets, alpha), binom.ppf(0.9995, datasets, alpha)
    assert low <= rejected["block"] <= high, rejected
    assert rejected["token"] > high, rejected  # token-level permutation is anti-conservative
    assert rejected["token"] >= 0.9 * datasets, rejected


def test_compare_tokens_permutations_are_block_permutations(token_cache):
    path, _, fa, fb = token_cache
    res = compare_tokens(path, "ma", "mb", ["mknn"], layers_a=["a0"], k=4, permutations=29, seed=7)
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
    X = np.concatenate(fa["a0"]).astype(np.float64)
    Y = np.concatenate(fb["b0"]).astype(np.float64)
    resolved = resolve_metrics(["mknn"], len(X), {"k": 4})
    direct = permutation_tests([layer_state(X, resolved)], [layer_state(Y, resolved)], resolved, 29, seed=7,
                               draw=block_permutation(offsets))[0]
    assert res.table["p_value"].iloc[0] == pytest.approx(direct.p_value[0, 0])
    assert res.table["null_mean"].iloc[0] == pytest.approx(direct.null_mean[0, 0], abs=1e-9)
    uniform = permutation_tests([layer_state(X, resolved)], [layer_state(Y, resolved)], resolved, 29, seed=7)[0]
    assert uniform.null_mean[0, 0] < direct.null_mean[0, 0] - 0.05  # the token-level null is much lower


@pytest.mark.parametrize("options, block_rows", [
    ({"layers_a": ["a0"]}, 8),  # blocks shorter than a sample of 9 rows: such samples are split across blocks
    ({"max_tokens": 70, "subsample": "uniform", "permutations": 9}, 32),
    ({"max_tokens": 70, "permutations": 9}, 32),
    ({"group_by": "residue", "permutations": 9}, 24),
])
def test_out_of_core_equals_in_memory(token_cache, options, block_rows):
    path, records, _, _ = token_cache
    if "group_by" in options:
        options = {**options, "inputs": records}
    common = dict(k=4, seed=3, **options)
    memory = compare_tokens(path, "ma", "mb", ["mknn", "cknna"], **common)
    blocked = compare_tokens(path, "ma", "mb", ["mknn", "cknna"], block_rows=block_rows, **common)
    cols = ["layer_a", "layer_b", "metric", "params", "n_samples", "n_units"]
    pd.testing.assert_frame_equal(memory.table[cols], blocked.table[cols])
    np.testing.assert_allclose(blocked.table["score"], memory.table["score"], atol=1e-12)
    if "permutations" in options:
        np.testing.assert_allclose(blocked.table["p_value"], memory.table["p_value"])
    options.pop("permutations", None)
    lin_memory = compare_tokens(path, "ma", "mb", ["cka"], **options)
    lin_blocked = compare_tokens(path, "ma", "mb", ["cka"], block_rows=block_rows, **options)
    np.testing.assert_allclose(lin_blocked.table["score"], lin_memory.table["score"], rtol=1e-6)


def test_max_tokens_draws_whole_samples_or_uniform_rows(token_cache):
    path = token_cache[0]
    by_samples = compare_tokens(path, "ma", "mb", ["mknn"], k=3, max_tokens=70, seed=1)
    n, units = int(by_samples.table["n_samples"].iloc[0]), int(by_samples.table["n_units"].iloc[0])
    # samples are added until the next one does not fit: 70 - 9 < n <= 70
    assert 61 < n <= 70
    assert any(sum(c) == n for c in _length_combinations(units))  # whole samples: n is a sum of their lengths
    assert "max_tokens=70" in by_samples.table["params"].iloc[0] and "subsample=samples" in by_samples.table["params"].iloc[0]
    uniform = compare_tokens(path, "ma", "mb", ["mknn"], k=3, max_tokens=70, subsample="uniform", seed=1)
    assert int(uniform.table["n_samples"].iloc[0]) == 70
    again = compare_tokens(path, "ma", "mb", ["mknn"], k=3, max_tokens=70, subsample="uniform", seed=1)
    assert again.table["score"].iloc[0] == uniform.table["score"].iloc[0]  # seeded


def _length_combinations(units):
    sixes, nines = LENGTHS.count(6), LENGTHS.count(9)
    return [[6] * a + [9] * (units - a) for a in range(min(units, sixes) + 1) if units - a <= nines]


def test_group_by_pools_tokens_per_group(tmp_path):
    rng = np.random.default_rng(4)
    records = [sequence_record(f"s{i}", seq) for i, seq in enumerate(["ACD:EF", "GHIK:LM", "NP:QRS", "TV:WYA"] * 3)]
    records = [sequence_record(f"s{i}", r.payload) for i, r in enumerate(records)]
    ids, hashes = [r.id for r in records], [r.content_hash for r in records]
    feats_a = [rng.standard_normal((r.size, 6)).astype(np.float32) for r in records]
    feats_b = [rng.standard_normal((r.size, 5)).astype(np.float32) for r in records]
    path = tmp_path / "g.h5"
    write_tokens(path, "ma", ids, hashes, {"x": feats_a})
    write_tokens(path, "mb", ids, hashes, {"y": feats_b})
    res = compare_tokens(path, "ma", "mb", ["cka"], group_by="chain", inputs=records)
    assert int(res.table["n_samples"].iloc[0]) == 2 * len(records)  # two chains each

    def chain_means(feats):
        return np.concatenate([np.stack([f[:len(r.chains[0])].mean(0), f[len(r.chains[0]):].mean(0)])
                               for f, r in zip(feats, records)])

    expected = cka(prepare(chain_means(feats_a).astype(np.float64), normalize="l2"),
                   prepare(chain_means(feats_b).astype(np.float64), normalize="l2"))
    assert res.table["score"].iloc[0] == pytest.approx(expected, abs=1e-6)
    assert "group_by=chain" in res.table["params"].iloc[0]


def test_structures_group_by_element(tmp_path):
    from ase import Atoms

    rng = np.random.default_rng(5)
    records = [structure_record(f"m{i}", Atoms("H2O" if i % 2 else "CH4", positions=rng.standard_normal((3 if i % 2 else 5, 3))))
               for i in range(10)]
    ids, hashes = [r.id for r in records], [r.content_hash for r in records]
    path = tmp_path / "s.h5"
    write_tokens(path, "pa", ids, hashes, {"x": [rng.standard_normal((r.size, 4)).astype(np.float32) for r in records]})
    write_tokens(path, "pb", ids, hashes, {"y": [rng.standard_normal((r.size, 4)).astype(np.float32) for r in records]})
    res = compare_tokens(path, "pa", "pb", ["mknn"], k=2, group_by="element", inputs=records, permutations=19)
    assert int(res.table["n_samples"].iloc[0]) == 2 * 10 and int(res.table["n_units"].iloc[0]) == 10
    with pytest.raises(RepalignError, match="unknown grouping column 'chain'.*available: element"):
        compare_tokens(path, "pa", "pb", ["mknn"], group_by="chain", inputs=records)


def test_intervals_resample_whole_samples():
    """With one row per sample, whole-sample subsampling is ordinary subsampling (same draws)."""
    rng = np.random.default_rng(6)
    X, Y = rng.standard_normal((40, 5)), rng.standard_normal((40, 4))
    resolved = resolve_metrics(["unbiased_cka"], 40, {})
    plain = subsample_intervals([X], [Y], resolved, n_subsamples=20, seed=2)[0]
    grouped = subsample_intervals([X], [Y], resolved, n_subsamples=20, seed=2, offsets=np.arange(41))[0]
    np.testing.assert_allclose(grouped[0], plain[0], atol=1e-12)
    np.testing.assert_allclose(grouped[1], plain[1], atol=1e-12)
    # with clusters the interval is wider than one that treats dependent rows as independent
    lengths = [8] * 30
    Xc = np.concatenate(clustered(rng, lengths, 5, within=0.2)).astype(np.float64)
    Yc = Xc @ rng.standard_normal((5, 4)) + 2.0 * np.concatenate(clustered(rng, lengths, 4, within=0.2))
    resolved = resolve_metrics(["unbiased_cka"], len(Xc), {})
    rows = subsample_intervals([Xc], [Yc], resolved, n_subsamples=40, seed=1)[0]
    samples = subsample_intervals([Xc], [Yc], resolved, n_subsamples=40, seed=1,
                                  offsets=np.concatenate([[0], np.cumsum(lengths)]))[0]
    assert (samples[1] - samples[0])[0, 0] > 1.5 * (rows[1] - rows[0])[0, 0]


def test_ci_through_compare_tokens(token_cache):
    path, _, _, _ = token_cache
    res = compare_tokens(path, "ma", "mb", ["unbiased_cka", "mknn"], k=3, ci=0.9, n_subsamples=10)
    t = res.table
    ucka = t[t["metric"] == "unbiased_cka"]
    assert ((ucka["ci_low"] <= ucka["score"]) & (ucka["score"] <= ucka["ci_high"])).all()
    assert t[t["metric"] == "mutual_knn"]["ci_low"].isna().all()


# ----------------------------------------------------------------------------- bad input
@pytest.fixture()
def mismatched(tmp_path):
    ids = [f"q{i}" for i in range(6)]
    hashes = [sequence_record(i, "ACDE").content_hash for i in ids]
    rng = np.random.default_rng(8)
    path = tmp_path / "m.h5"
    write_tokens(path, "plain", ids, hashes, {"t": [rng.standard_normal((4, 3)).astype(np.float32) for _ in ids]})
    # keeps BOS/EOS on sample q2
    write_tokens(path, "special", ids, hashes,
                 {"t": [rng.standard_normal((6 if i == "q2" else 4, 3)).astype(np.float32) for i in ids]})
    with CacheWriter(path, "pooled", provenance={"model": "pooled", "options": {}}, layers=["p"]) as w:
        w.append(ids, hashes, {"p": rng.standard_normal((6, 3)).astype(np.float32)})
    return path


@pytest.mark.parametrize("args, fragment", [
    (["--a", "plain", "--b", "special"], "tokenise sample 'q2' differently (4 vs 6 rows"),
    (["--a", "plain", "--b", "pooled"], "'pooled'"),
    (["--a", "plain", "--b", "special", "--max-tokens", "0"], "--max-tokens 0 is invalid"),
    (["--a", "plain", "--b", "plain", "--layers-a", "t", "--layers-b", "t"], "trivial"),
    (["--a", "plain", "--b", "special", "--group-by", "chainz"], "unknown grouping column 'chainz'; available: chain, element, residue"),
])
def test_bad_token_input_is_one_line(mismatched, args, fragment):
    res = run_cli("compare", mismatched, "--tokens", *args)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repalign: error:") and fragment in lines[0], res.stderr
    assert "stores no token layers" in run_cli("compare", mismatched, "--tokens", "--a", "plain", "--b", "pooled").stderr


def test_bad_token_options_in_python(mismatched, tmp_path):
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">q{i}\nACDE\n" for i in range(6)))
    with pytest.raises(RepalignError, match="unknown grouping column 'element'.*available: chain, residue"):
        compare_tokens(mismatched, "plain", "plain", group_by="element", inputs=[str(fasta)])
    with pytest.raises(RepalignError, match="group_by=chain labels tokens from the inputs; add inputs"):
        compare_tokens(mismatched, "plain", "special", group_by="chain")
    res = run_cli("compare", mismatched, "--a", "plain", "--b", "pooled", "--max-tokens", "5")
    assert res.returncode == 1 and "--max-tokens applies to token rows; add --tokens" in res.stderr
    fasta.write_text("".join(f">q{i}\n{'ACDE' if i != 3 else 'ACDEF'}\n" for i in range(6)))
    with pytest.raises(RepalignError, match="sample 'q3' in inputs differs"):
        compare_tokens(mismatched, "plain", "plain", layers_a=["t"], layers_b=["t"], inputs=[str(fasta)], metrics=["cka"])


def test_inputs_check_names_a_model_that_kept_special_tokens(tmp_path):
    records = [sequence_record(f"r{i}", "ACDEF") for i in range(5)]
    ids, hashes = [r.id for r in records], [r.content_hash for r in records]
    rng = np.random.default_rng(9)
    path = tmp_path / "x.h5"
    write_tokens(path, "bos", ids, hashes, {"t": [rng.standard_normal((7, 3)).astype(np.float32) for _ in ids]})
    write_tokens(path, "bos2", ids, hashes, {"t": [rng.standard_normal((7, 3)).astype(np.float32) for _ in ids]})
    with pytest.raises(RepalignError, match="bos stores 7 token rows for sample 'r0', which has 5 residues"):
        compare_tokens(path, "bos", "bos2", inputs=records)


# ----------------------------------------------------------------------------- tables, plots, report
def test_report_shows_token_pairs_beside_pooled_and_plot_reads_token_rows(tmp_path):
    from repalign.report import build_report
    from repalign.table import granularities, granularity_rows, read_table

    rng = np.random.default_rng(11)
    records = [sequence_record(f"s{i:02d}", "ACDEFGHIK"[: 4 + i % 3]) for i in range(30)]
    ids, hashes = [r.id for r in records], [r.content_hash for r in records]
    path = tmp_path / "both.h5"
    base = clustered(rng, [r.size for r in records], 6)
    for model, width in (("ma", 6), ("mb", 5)):
        w = rng.standard_normal((6, width))
        toks = [(x @ w + 0.5 * rng.standard_normal((len(x), width))).astype(np.float32) for x in base]
        with CacheWriter(path, model, provenance={"model": model, "options": {}}, layers=["l0"], token_layers=["l0"]) as wr:
            wr.append(ids, hashes, {"l0": np.stack([t.mean(0) for t in toks])}, tokens={"l0": toks})
    out = tmp_path / "report"
    build_report(path, out, metrics=["mknn"], k=3, permutations=19)
    table = read_table(out / "scores.csv")
    assert granularities(table) == ["pooled", "token"]
    token = granularity_rows(table, "token")
    assert len(token) == 1 and int(token["n_samples"].iloc[0]) == sum(r.size for r in records)
    assert token["p_value"].notna().all()
    page = (out / "index.html").read_text()
    assert "ma vs mb (token level)" in page and "layer x layer, ma vs mb (token level)" in page
    res = run_cli("plot", out / "scores.csv", "--granularity", "token", "--kind", "layers", "-o", tmp_path / "tok", "--format", "png")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "tok.png").stat().st_size > 0
    granularity_rows(table, "pooled").to_csv(tmp_path / "pooled.csv", index=False)
    res = run_cli("plot", tmp_path / "pooled.csv", "--granularity", "token", "--kind", "layers", "-o", tmp_path / "y")
    assert res.returncode == 1 and "the table has no token rows; it holds: pooled" in res.stderr


def test_uniform_subsample_keeps_rows_paired_when_samples_drop_out(tmp_path):
    rng = np.random.default_rng(12)
    records = [sequence_record(f"u{i:02d}", "ACDEFG"[: 3 + i % 3]) for i in range(20)]
    ids, hashes = [r.id for r in records], [r.content_hash for r in records]
    feats = clustered(rng, [r.size for r in records], 5, within=1.0)
    path = tmp_path / "u.h5"
    write_tokens(path, "ma", ids, hashes, {"x": feats})
    # B is A rotated row by row (stored in reverse sample order): linear CKA is 1 only if rows stay paired
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    write_tokens(path, "mb", ids[::-1], hashes[::-1], {"y": [(f @ q).astype(np.float32) for f in feats][::-1]})
    res = compare_tokens(path, "ma", "mb", ["cka"], normalize=None, max_tokens=12, subsample="uniform", seed=4)
    assert int(res.table["n_samples"].iloc[0]) == 12 and int(res.table["n_units"].iloc[0]) < 12  # samples dropped out
    assert res.table["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    blocked = compare_tokens(path, "ma", "mb", ["cka"], normalize=None, max_tokens=12, subsample="uniform", seed=4,
                             block_rows=4)
    assert blocked.table["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_permutations_need_samples_that_can_move(tmp_path):
    rng = np.random.default_rng(13)
    records = [sequence_record(f"d{i}", "ACDEFGHIKLMN"[: 3 + i]) for i in range(6)]  # all lengths differ
    ids, hashes = [r.id for r in records], [r.content_hash for r in records]
    path = tmp_path / "d.h5"
    for model in ("ma", "mb"):
        write_tokens(path, model, ids, hashes, {"t": [rng.standard_normal((r.size, 3)).astype(np.float32) for r in records]})
    with pytest.raises(RepalignError, match="no two of the 6 samples have the same number of rows"):
        compare_tokens(path, "ma", "mb", ["mknn"], k=2, permutations=19)
    # two equal lengths: 2 block permutations exist, fewer than 1/alpha: a warning says so
    records2 = [sequence_record(f"e{i}", "ACDEFGHIKLMN"[: 3 + min(i, 4)]) for i in range(6)]
    path2 = tmp_path / "e.h5"
    for model in ("ma", "mb"):
        write_tokens(path2, model, [r.id for r in records2], [r.content_hash for r in records2],
                     {"t": [rng.standard_normal((r.size, 3)).astype(np.float32) for r in records2]})
    res = compare_tokens(path2, "ma", "mb", ["mknn"], k=2, permutations=19)
    assert any("only 2 distinct block permutations exist" in w for w in res.warnings), res.warnings
