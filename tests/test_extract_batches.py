"""Batch order, out-of-memory retries and the dry-run plan of the extraction pipeline, for any model.

No GPU runs these tests. The out-of-memory condition is produced by a test double: a wrapper around a
real model (a tiny ESM-2 checkpoint, run for real on the CPU) that raises ``torch.OutOfMemoryError``,
the error CUDA raises, whenever a batch holds more padded tokens than its budget.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddings_cache import Cache
from repalign.cli import main
from repalign.errors import RepalignError
from repalign.extract import extract
from repalign.extract_batches import format_plan, order_batches, plan_extraction
from repalign.inputs import sequence_record
from repalign.models import ModelAdapter, get_adapter

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def records(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [sequence_record(f"s{i}", "".join(rng.choice(list(AMINO), n))) for i, n in enumerate(lengths)]


class OutOfMemoryAbove(ModelAdapter):
    """A real adapter that fails like a GPU when a batch's padded tokens exceed ``budget``."""

    def __init__(self, inner: ModelAdapter, budget: int, device: str = "cpu"):
        super().__init__(device=device)
        self.inner, self.budget = inner, budget
        self.info = inner.info
        self.name = getattr(inner, "name", None)
        self.calls: list[tuple[str, list[str]]] = []

    def load(self):
        self.inner.ensure_loaded()

    def layer_names(self):
        return self.inner.layer_names()

    def default_layers(self):
        return self.inner.default_layers()

    def provenance(self):
        return self.inner.provenance()

    def validate(self, record):
        self.inner.validate(record)

    def size(self, record):
        return self.inner.size(record)

    def forward(self, recs, layers):
        ids = [r.id for r in recs]
        if max(self.size(r) for r in recs) * len(recs) > self.budget:
            self.calls.append(("oom", ids))
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(recs)} GiB")
        self.calls.append(("ok", ids))
        return self.inner.forward(recs, layers)


def wrapped(tiny_esm2, budget, device="cpu"):
    made = []

    def factory(name, **kw):
        made.append(OutOfMemoryAbove(get_adapter(f"hf:{tiny_esm2}"), budget, device))
        return made[-1]

    return factory, made


def test_order_batches_longest_first_on_cuda_only():
    sizes = [5, 50, 20, 7, 49]
    batches = [[0, 3], [2], [4, 1]]
    assert order_batches(batches, sizes, "cpu") == batches
    assert order_batches(batches, sizes, "cuda:1") == [[4, 1], [2], [0, 3]]
    assert order_batches([[0], [1, 3], [4]], [10, 10, 0, 10, 10], "cuda") == [[1, 3], [0], [4]]  # ties: more padded first


def test_out_of_memory_batches_are_halved_and_features_equal_an_unsplit_run(tiny_esm2, tmp_path):
    recs = records([30, 31, 32, 33, 34, 35, 36, 60])
    plain, split = tmp_path / "plain.h5", tmp_path / "split.h5"
    extract(recs, [f"hf:{tiny_esm2}"], plain, layers=["all"], batch_tokens=10_000, quiet=True)
    factory, made = wrapped(tiny_esm2, budget=80)  # 8 x 60 fails; pairs up to 2 x 35 fit; 36 + 60 does not
    (run,) = extract(recs, ["oom-double"], split, layers=["all"], batch_tokens=10_000, quiet=True, adapter_factory=factory)
    calls = made[0].calls
    assert calls[0] == ("oom", [r.id for r in recs])  # one batch of all 8, shortest first
    assert [c for c in calls if c[0] == "ok"] == [("ok", ["s0", "s1"]), ("ok", ["s2", "s3"]), ("ok", ["s4", "s5"]),
                                                 ("ok", ["s6"]), ("ok", ["s7"])]
    assert [r.halves for r in run.retries] == [(4, 4), (2, 2), (2, 2), (1, 1)]
    assert run.retries[0].ids == [r.id for r in recs] and "out of memory" in run.retries[0].error
    assert run.stored == 8
    a, b = Cache(plain), Cache(split)
    key = a.models[0]
    ids = [r.id for r in recs]
    assert b.models == [key]
    for layer in a.layers(key):  # other batch shapes: equal to float32 rounding, not bit for bit
        np.testing.assert_allclose(b.read_layer(key, layer, ids=ids), a.read_layer(key, layer, ids=ids), atol=2e-5)


def test_a_sample_that_fails_alone_is_named_and_on_cuda_fails_first(tiny_esm2, tmp_path):
    recs = records([10, 12, 14, 16, 90])
    # CPU order (shortest first): the short batches are stored, then the 90-residue sample fails alone
    factory, made = wrapped(tiny_esm2, budget=80)
    with pytest.raises(RepalignError, match=r"^s4: out of memory on cpu even alone \(90 tokens/atoms, no estimate") as err:
        extract(recs, ["oom-double"], tmp_path / "cpu.h5", layers=["all"], batch_tokens=40, quiet=True,
                adapter_factory=factory)
    assert "\n" not in str(err.value)
    with Cache(tmp_path / "cpu.h5") as c:
        assert sorted(c.ids(c.models[0])) == ["s0", "s1", "s2", "s3"]  # completed work is kept
    # CUDA order (largest first): the failure is the very first thing that happens
    factory, made = wrapped(tiny_esm2, budget=80, device="cuda:0")
    with pytest.raises(RepalignError, match="^s4: out of memory on cuda:0 even alone"):
        extract(recs, ["oom-double"], tmp_path / "cuda.h5", layers=["all"], batch_tokens=40, quiet=True,
                adapter_factory=factory)
    assert made[0].calls == [("oom", ["s4"])]


def test_dry_run_plans_without_writing(tiny_esm2, tmp_path, capsys):
    recs = records([20, 25, 30, 35, 40, 45])
    cache = tmp_path / "c.h5"
    extract(recs[:2], [f"hf:{tiny_esm2}"], cache, layers=["all"], quiet=True)
    before = cache.stat().st_mtime_ns
    # (this model reads its layer list from the loaded model; ESMFold2 and ESMC plan from the config:
    # tests/test_esmfold2.py)
    (plan,) = plan_extraction(recs, [f"hf:{tiny_esm2}"], cache, layers=["all"], batch_tokens=100)
    assert cache.stat().st_mtime_ns == before
    assert plan.cached == 2 and plan.valid == 6
    assert sorted(i for b in plan.batches for i in b.ids) == ["s2", "s3", "s4", "s5"]
    assert all(b.padded_tokens <= 100 or len(b.ids) == 1 for b in plan.batches)
    text = format_plan([plan], cache)
    assert "2 already cached, 4 to extract" in text and "layers stored: 3 pooled (mean)" in text
    # the CLI prints the same plan and creates nothing
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.payload}\n" for r in recs))
    assert main(["extract", str(fasta), "-m", f"hf:{tiny_esm2}", "-o", str(tmp_path / "new.h5"), "--layers", "all",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 already cached, 6 to extract" in out and not (tmp_path / "new.h5").exists()
