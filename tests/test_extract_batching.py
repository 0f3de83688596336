import numpy as np
import pytest

from repalign.errors import RepalignError
from repalign.extract import length_batches, pool_features
from repalign.inputs import sequence_record
from repalign.models import SampleFeatures


def test_length_batches_cover_every_record_once_within_budget():
    rng = np.random.default_rng(0)
    sizes = list(rng.integers(5, 300, 200))
    recs = [sequence_record(f"s{i}", "A" * s) for i, s in enumerate(sizes)]
    batches = length_batches(recs, sizes, batch_tokens=1000)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(200))
    for b in batches:
        padded = max(sizes[i] for i in b) * len(b)
        assert padded <= 1000 or len(b) == 1
    # bucketing: within a batch sizes are contiguous in sorted order, so padding waste is small
    waste = sum(max(sizes[i] for i in b) * len(b) - sum(sizes[i] for i in b) for b in batches)
    assert waste < 0.1 * sum(sizes)


def test_oversized_record_gets_its_own_batch_and_bad_budget_errors():
    recs = [sequence_record(f"s{i}", "A" * s) for i, s in enumerate([10, 5000, 20])]
    batches = length_batches(recs, [10, 5000, 20], batch_tokens=100)
    assert [1] in batches
    with pytest.raises(RepalignError, match=r"batch_tokens=0 must be a positive whole number of tokens"):
        length_batches(recs, [10, 5000, 20], batch_tokens=0)


def test_mean_pooling_is_float64_accurate_and_cls_requires_a_vector():
    rng = np.random.default_rng(1)
    tok = (rng.standard_normal((500, 8)) * 1e3 + 1e4).astype(np.float32)
    f = SampleFeatures(tokens={"l0": tok})
    pooled = pool_features(f, ["l0"], "mean", "s")["l0"]
    assert pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, tok.astype(np.float64).mean(0), rtol=1e-7)
    with pytest.raises(RepalignError, match="no CLS vector"):
        pool_features(f, ["l0"], "cls", "s")
