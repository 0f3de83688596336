"""Every zoo model whose weights ship in an installed package, through extract + compare on small real inputs."""

import numpy as np
import pytest

from embeddings_cache import Cache
from repalign.compare import compare_models
from repalign.datasets.antibodies import antibody_records
from repalign.datasets.structures import crystal_records, molecule_records
from repalign.extract import extract
from repalign.models import REGISTRY, get_adapter_class

# model -> (inputs, the model it is compared with)
CASES = {
    "antiberty": ("antibodies", "iglm"),
    "iglm": ("antibodies", "antiberty"),
    "igfold": ("antibodies", "antiberty"),
    "unirep-64": ("antibodies", "antiberty"),
    "unirep-256": ("antibodies", "antiberty"),
    "unirep-1900": ("antibodies", "antiberty"),
    "chgnet-0.3.0": ("crystals", "sevennet-0"),
    "chgnet-0.2.0": ("crystals", "chgnet-0.3.0"),
    "chgnet-r2scan": ("crystals", "chgnet-0.3.0"),
    "sevennet-0": ("crystals", "chgnet-0.3.0"),
    "sevennet-l3i5": ("crystals", "chgnet-0.3.0"),
    "sevennet-mf-0": ("crystals", "chgnet-0.3.0"),
    "diep": ("crystals", "chgnet-0.3.0"),
    "ani-1x": ("molecules", "chgnet-0.3.0"),
    # domain-knowledge baselines (default SOAP/ACSF species H, C, N, O: the molecules)
    "elements": ("crystals", "chgnet-0.3.0"),
    "soap": ("molecules", "ani-1x"),
    "acsf": ("molecules", "ani-1x"),
    "morgan": ("molecules", "ani-1x"),
    "aa-composition": ("antibodies", "antiberty"),
    "kmer-composition": ("antibodies", "antiberty"),
    "blosum62": ("antibodies", "antiberty"),
    "onehot": ("antibodies", "antiberty"),
}
INPUTS = {"antibodies": lambda: antibody_records(5), "crystals": lambda: crystal_records(6),
          "molecules": lambda: molecule_records(6)}


def test_every_bundled_zoo_model_has_a_case():
    bundled = {n for n in REGISTRY if not n.startswith(("esmfold2", "esmc-", "esm2-", "prott5"))}  # hub checkpoints: tests/test_hub_lms.py
    assert bundled == set(CASES)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return {kind: tmp_path_factory.mktemp(kind) / "c.h5" for kind in INPUTS}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CASES))
def test_extract_and_compare(model, caches):
    kind, other = CASES[model]
    if get_adapter_class(model).unavailable_reason():
        pytest.skip(get_adapter_class(model).unavailable_reason())  # an optional extra that is not installed
    records = INPUTS[kind]()
    cache = caches[kind]
    extract(records, [model, other], cache, layers=["all"], quiet=True)
    c = Cache(cache)
    assert sorted(c.ids(model)) == sorted(r.id for r in records)
    for layer in c.layers(model):
        x = c.read_layer(model, layer)
        assert x.shape[0] == len(records) and np.isfinite(x).all()
    result = compare_models(cache, model, other, ["mknn", "cka"], k=2)
    assert len(result.table) == 2 * len(c.layers(model)) * len(c.layers(other))
    assert result.table["score"].between(-1e-9, 1 + 1e-9).all()
