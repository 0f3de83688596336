"""`repalign extract` end to end on a real (tiny, random-initialised) ESM-2 checkpoint written by the test.

Covers pooling against an independent direct transformers call, batch-vs-alone equality, resume and
idempotence, option changes, bad input leaving the cache untouched, --skip-invalid, token features,
and resume after SIGKILL of a real extraction process.
"""

import hashlib
import signal
import subprocess
import sys
import time

import numpy as np
from cli_helpers import run_main

from embeddings_cache import Cache
from repalign.extract import extract
from repalign.inputs import read_inputs

AA = "ACDEFGHIKLMNPQRSTVWY"
MODEL_KEY = "hf:tiny"


def random_fasta(path, n, seed=0, lo=8, hi=60):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        seq = "".join(rng.choice(list(AA), rng.integers(lo, hi)))
        lines += [f">p{i:03d}", seq]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args):
    return run_main(*args)

def direct_mean_features(folder, sequence):
    """Independent reference: tokenise by vocab.txt lookup, call EsmModel, drop <cls>/<eos>, average."""
    import torch
    from transformers import EsmModel

    vocab = {t: i for i, t in enumerate((folder / "vocab.txt").read_text().split())}
    ids = [vocab["<cls>"]] + [vocab[c] for c in sequence] + [vocab["<eos>"]]
    model = EsmModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return [h[0, 1:-1].double().mean(0).numpy() for h in out.hidden_states]


def file_digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_extract_pools_like_a_direct_model_call_and_batching_does_not_matter(tiny_esm2, tmp_path):
    fasta = random_fasta(tmp_path / "in.fasta", 12)
    records = read_inputs(fasta)
    batched, alone = tmp_path / "batched.h5", tmp_path / "alone.h5"
    extract(records, [f"hf:{tiny_esm2}"], batched, layers=["all"], batch_tokens=2000, quiet=True)
    extract(records, [f"hf:{tiny_esm2}"], alone, layers=["all"], batch_tokens=1, quiet=True)
    cb, ca = Cache(batched), Cache(alone)
    assert cb.models == [MODEL_KEY]
    layers = cb.layers(MODEL_KEY)
    assert layers == ["embeddings", "layer.0", "layer.1"]
    ids = [r.id for r in records]
    for li, layer in enumerate(layers):
        xb = cb.read_layer(MODEL_KEY, layer, ids=ids)
        xa = ca.read_layer(MODEL_KEY, layer, ids=ids)
        np.testing.assert_allclose(xb, xa, atol=2e-5)
    for r in records[:3]:
        ref = direct_mean_features(tiny_esm2, r.payload)
        for li, layer in enumerate(layers):
            np.testing.assert_allclose(cb.read_layer(MODEL_KEY, layer, ids=[r.id])[0], ref[li], atol=2e-5)


def test_cli_extract_resume_idempotence_options_and_tokens(tiny_esm2, tmp_path):
    fasta = random_fasta(tmp_path / "in.fasta", 10)
    cache = tmp_path / "c.h5"
    model = f"hf:{tiny_esm2}"
    res = run_cli("extract", fasta, "--model", model, "-o", cache, "--layers", "all", "--tokens", "layer.1",
                  "--limit", 6, "--quiet")
    assert res.returncode == 0, res.stderr
    assert "stored 6 samples" in res.stdout
    res = run_cli("extract", fasta, "--model", model, "-o", cache, "--layers", "all", "--tokens", "layer.1", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "stored 4 samples" in res.stdout and "6 already in the cache" in res.stdout
    c = Cache(cache)
    assert c.n_samples(MODEL_KEY) == 10
    data, offsets = c.read_tokens(MODEL_KEY, "layer.1", ids=["p000", "p005"])
    lengths = [len(r.payload) for r in read_inputs(fasta) if r.id in ("p000", "p005")]
    assert list(np.diff(offsets)) == lengths
    # the pooled vector is the mean of the stored token rows
    np.testing.assert_allclose(data[: offsets[1]].mean(0), c.read_layer(MODEL_KEY, "layer.1", ids=["p000"])[0], atol=1e-6)
    info = run_cli("cache", "info", cache)
    assert info.returncode == 0 and "layer.1" in info.stdout and MODEL_KEY in info.stdout

    before = file_digest(cache)
    res = run_cli("extract", fasta, "--model", model, "-o", cache, "--layers", "all", "--tokens", "layer.1", "--quiet")
    assert res.returncode == 0 and "stored 0 samples" in res.stdout and "10 already" in res.stdout
    # a changed extraction option for a stored model is refused, cache untouched
    res = run_cli("extract", fasta, "--model", model, "-o", cache, "--layers", "all", "--pool", "cls", "--quiet")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "overwrite" in res.stderr
    assert file_digest(cache) == before
    res = run_cli("extract", fasta, "--model", model, "-o", cache, "--layers", "all", "--pool", "cls", "--overwrite", "--quiet")
    assert res.returncode == 0, res.stderr
    assert Cache(cache).provenance(MODEL_KEY)["options"]["pool"] == "cls"


def test_bad_input_leaves_the_cache_exactly_as_it_was(tiny_esm2, tmp_path):
    good = random_fasta(tmp_path / "good.fasta", 4)
    cache = tmp_path / "c.h5"
    model = f"hf:{tiny_esm2}"
    assert run_cli("extract", good, "--model", model, "-o", cache, "--quiet").returncode == 0
    before = file_digest(cache)
    bad = tmp_path / "bad.fasta"
    bad.write_text(good.read_text() + ">weird\nMKT*LLV\n>fine\nMKTAYIAK\n")
    res = run_cli("extract", bad, "--model", model, "-o", cache, "--quiet")
    assert res.returncode != 0
    assert len(res.stderr.strip().splitlines()) == 1 and "weird" in res.stderr and "Traceback" not in res.stderr
    assert file_digest(cache) == before
    assert not (tmp_path / "c.h5.parts").exists() or not any((tmp_path / "c.h5.parts").iterdir())
    # a new cache is not even created
    res = run_cli("extract", bad, "--model", model, "-o", tmp_path / "new.h5", "--quiet")
    assert res.returncode != 0 and not (tmp_path / "new.h5").exists()
    # --skip-invalid stores the rest and reports the skipped id
    res = run_cli("extract", bad, "--model", model, "-o", cache, "--skip-invalid", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "skipped 1 invalid samples: weird" in res.stdout
    assert "fine" in Cache(cache).ids(MODEL_KEY) and "weird" not in Cache(cache).ids(MODEL_KEY)


def test_unknown_model_and_layer_are_one_line_errors(tmp_path):
    fasta = random_fasta(tmp_path / "in.fasta", 2)
    res = run_cli("extract", fasta, "--model", "no-such-model", "-o", tmp_path / "c.h5")
    assert res.returncode != 0 and "unknown model 'no-such-model'" in res.stderr and "repalign models" in res.stderr
    assert not (tmp_path / "c.h5").exists()


def test_resume_after_sigkill_gives_the_same_cache_as_a_clean_run(tiny_esm2, tmp_path):
    fasta = random_fasta(tmp_path / "in.fasta", 40, seed=3)
    model = f"hf:{tiny_esm2}"
    clean = tmp_path / "clean.h5"
    assert run_cli("extract", fasta, "--model", model, "-o", clean, "--layers", "all", "--quiet").returncode == 0
    ref = Cache(clean)
    ids = ref.ids(MODEL_KEY)
    rng = np.random.default_rng(7)
    # one cache killed three times, each run resuming the one killed before it, then resumed to the end
    cache = tmp_path / "killed.h5"
    parts = tmp_path / "killed.h5.parts"
    completed = 0
    for trial in range(3):
        before = set(parts.iterdir()) if parts.exists() else set()
        proc = subprocess.Popen(
            [sys.executable, "-m", "repalign", "extract", str(fasta), "--model", model, "-o", str(cache),
             "--layers", "all", "--batch-tokens", "64", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # until this run writes a part of its own
            if parts.exists() and any(p.suffix == ".h5" and p not in before for p in parts.iterdir()):
                break
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the killed cache opens and holds only complete samples
        if cache.exists() or parts.exists():
            partial = Cache(cache)
            kept = partial.ids(MODEL_KEY) if MODEL_KEY in partial.models else []
            # a prefix of complete samples, each once (a kill during the final consolidation keeps them all)
            assert len(set(kept)) == len(kept) and set(kept) <= set(ids)
            assert len(kept) >= completed  # a kill never loses what an earlier run completed
            completed = len(kept)
            for layer in ref.layers(MODEL_KEY):
                if kept:
                    np.testing.assert_allclose(partial.read_layer(MODEL_KEY, layer, ids=kept),
                                               ref.read_layer(MODEL_KEY, layer, ids=kept), atol=2e-5)
    res = run_cli("extract", fasta, "--model", model, "-o", cache, "--layers", "all", "--quiet")
    assert res.returncode == 0, res.stderr
    done = Cache(cache)
    assert sorted(done.ids(MODEL_KEY)) == sorted(ids)
    for layer in ref.layers(MODEL_KEY):
        np.testing.assert_allclose(done.read_layer(MODEL_KEY, layer, ids=ids),
                                   ref.read_layer(MODEL_KEY, layer, ids=ids), atol=2e-5)
