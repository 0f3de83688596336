"""The extraction API: ExtractOptions (settings validated once), ModelPlan and extract_model.

Real extractions with the amino-acid composition baseline (a registered model, no weights): the
public steps (plan_model, model_writer, extract_model) store what ``extract`` stores, and an
ExtractOptions given whole or field by field is the same run.
"""

from __future__ import annotations

import numpy as np
import pytest

from embeddings_cache import Cache
from repalign.errors import RepalignError
from repalign.extract import extract, extract_model, model_writer
from repalign.extract_batches import plan_extraction
from repalign.extract_options import ExtractOptions, ModelPlan, plan_model
from repalign.inputs import sequence_record

MODEL = "aa-composition"
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def records(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [sequence_record(f"s{i}", "".join(rng.choice(list(AMINO), int(rng.integers(5, 40))))) for i in range(n)]


def stored(path):
    with Cache(path) as c:
        return c.ids(MODEL), {layer: c.read_layer(MODEL, layer) for layer in c.layers(MODEL)}, c.provenance(MODEL)["options"]


def test_unknown_option_is_one_line_naming_it(tmp_path):
    with pytest.raises(RepalignError, match="unknown extraction option 'layer'") as info:
        extract(records(), [MODEL], tmp_path / "c.h5", layer=["all"])
    assert "\n" not in str(info.value) and "layers" in str(info.value)  # names the accepted fields
    assert not list(tmp_path.iterdir())
    with pytest.raises(RepalignError, match="unknown extraction option 'shards'"):
        plan_extraction(records(), [MODEL], tmp_path / "c.h5", shards=2)
    with pytest.raises(RepalignError, match="settings must be an ExtractOptions"):
        extract(records(), [MODEL], tmp_path / "c.h5", {"layers": ["all"]})


@pytest.mark.parametrize("fields, fragment", [
    ({"batch_tokens": 0}, "batch_tokens=0 must be a positive whole number of tokens"),
    ({"batch_tokens": True}, "batch_tokens=True must be a positive whole number of tokens"),
    ({"pool": "median"}, "unknown pooling 'median'"),
    ({"store_dtype": "float64"}, "unknown storage dtype 'float64'"),
    ({"limit": 0}, "limit=0 must be a positive number of inputs"),
])
def test_bad_settings_fail_when_built(fields, fragment):
    with pytest.raises(RepalignError, match=fragment):
        ExtractOptions(**fields)
    with pytest.raises(RepalignError, match=fragment):  # also when replacing a field of valid settings
        ExtractOptions.build(ExtractOptions(), **fields)


def test_fields_replace_those_of_the_settings():
    base = ExtractOptions(layers=["all"], pool="max", batch_tokens=64)
    changed = ExtractOptions.build(base, pool="mean")
    assert (changed.layers, changed.pool, changed.batch_tokens) == (["all"], "mean", 64)
    assert base.pool == "max"  # settings are not changed in place


def test_settings_whole_or_by_field_store_the_same(tmp_path):
    recs = records()
    settings = ExtractOptions(layers=["all"], pool="mean", batch_tokens=60, quiet=True)
    (a,) = extract(recs, [MODEL], tmp_path / "a.h5", settings)
    (b,) = extract(recs, [MODEL], tmp_path / "b.h5", layers=["all"], pool="mean", batch_tokens=60, quiet=True)
    assert a.stored == b.stored == len(recs)
    ids_a, layers_a, opts_a = stored(tmp_path / "a.h5")
    ids_b, layers_b, opts_b = stored(tmp_path / "b.h5")
    assert ids_a == ids_b and sorted(ids_a) == sorted(r.id for r in recs) and opts_a == opts_b
    for layer in layers_a:
        np.testing.assert_array_equal(layers_a[layer], layers_b[layer])


def test_public_steps_store_what_extract_stores(tmp_path):
    """plan_model -> model_writer -> extract_model (the path Dask workers take) equals extract()."""
    recs = records(15, seed=3)
    settings = ExtractOptions(layers=["all"], batch_tokens=50, quiet=True)
    extract(recs, [MODEL], tmp_path / "ref.h5", settings)
    plan = plan_model(MODEL, recs, settings)
    assert isinstance(plan, ModelPlan) and plan.key == MODEL and len(plan.records) == 15 and not plan.invalid
    with model_writer(plan, tmp_path / "steps.h5", settings) as writer:
        run = extract_model(plan, writer, settings)
    assert run.stored == 15 and run.skipped_existing == 0
    ref, got = stored(tmp_path / "ref.h5"), stored(tmp_path / "steps.h5")
    assert got[0] == ref[0] and got[2] == ref[2]
    for layer in ref[1]:
        np.testing.assert_array_equal(got[1][layer], ref[1][layer])
    # a second pass through the same steps finds every sample stored
    with model_writer(plan, tmp_path / "steps.h5", settings) as writer:
        again = extract_model(plan, writer, settings)
    assert again.stored == 0 and again.skipped_existing == 15
