"""Shared fixtures: small real checkpoints and caches written by the tests themselves."""

import os
from pathlib import Path

import numpy as np
import pytest
from cluster_helpers import random_fasta

from embeddings_cache import CacheWriter
from repalign.extract import extract
from repalign.inputs import read_inputs


def pytest_configure(config):
    """Under several pytest-xdist workers, one thread per worker (and per child process it starts):
    on the 2-core machine two workers with two threads each made torch's OpenMP waits spin against
    numba's, and real-model tests ran up to 70x slower. A plain `pytest` keeps the default threads.
    NUMBA_NUM_THREADS keeps its value (numba refuses a change once its threads run), so tests that
    compare thread counts still can."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) <= 1:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"  # children
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    config._thread_limits = threadpool_limits(1)  # held for the session
    numba.set_num_threads(1)
    torch.set_num_threads(1)


ESM_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"]


def save_tiny_esm2(folder: Path, layers: int = 2) -> Path:
    """A random-initialised ESM-2 checkpoint (2 layers unless told) with its tokenizer, saved with save_pretrained."""
    import torch
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(ESM_TOKENS) + "\n")
    tokenizer = EsmTokenizer(vocab_file=str(folder / "vocab.txt"))
    config = EsmConfig(
        vocab_size=len(ESM_TOKENS), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=300, pad_token_id=1, mask_token_id=32,
        position_embedding_type="rotary", token_dropout=True,
    )
    torch.manual_seed(0)
    model = EsmModel(config, add_pooling_layer=False)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_esm2(tmp_path_factory):
    return save_tiny_esm2(tmp_path_factory.mktemp("esm2") / "tiny")


@pytest.fixture(scope="module")
def esm_inputs(tiny_esm2, tmp_path_factory):
    """Records and the single-process reference cache (one torch thread, like a Dask worker)."""
    import torch

    folder = tmp_path_factory.mktemp("dist_ref")
    records = read_inputs([str(random_fasta(folder / "in.fasta", 32, seed=5))])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(records, [f"hf:{tiny_esm2}"], folder / "single.h5", layers=["all"], batch_tokens=160, quiet=True)
    finally:
        torch.set_num_threads(threads)
    return records, folder / "single.h5"


@pytest.fixture(scope="module")
def layer_cache(tmp_path_factory):
    """A cache with two models of 3 and 2 layers (N=3000) and their arrays."""
    rng = np.random.default_rng(3)
    n = 3000
    base = rng.standard_normal((n, 8))
    mats = {"A": [(base @ rng.standard_normal((8, d)) + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
                  for d in (48, 64, 32)],
            "B": [(base @ rng.standard_normal((8, d)) + 0.7 * rng.standard_normal((n, d))).astype(np.float32)
                  for d in (40, 56)]}
    mats["A"][1][100:110] = mats["A"][1][7]  # duplicated rows: tied neighbours
    path = tmp_path_factory.mktemp("tcp_layers") / "layers.h5"
    ids = [f"s{i}" for i in range(n)]
    hashes = [f"{i:064x}" for i in range(n)]
    for model, arrays in mats.items():
        names = [f"l{i}" for i in range(len(arrays))]
        with CacheWriter(path, model, provenance={"options": {}}, layers=names) as w:
            for s in range(0, n, 500):
                w.append(ids[s:s + 500], hashes[s:s + 500], {nm: m[s:s + 500] for nm, m in zip(names, arrays)})
    return path, mats
