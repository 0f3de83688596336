"""Short model names (esm2-8m ... esm2-3b, prott5) loaded offline from a Hugging Face hub cache laid out
by the test, with tiny random checkpoints saved by save_pretrained; features against direct
transformers calls."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_esm2

from embeddings_cache import Cache
from repalign.errors import ModelUnavailable
from repalign.extract import extract
from repalign.inputs import sequence_record

pytest.importorskip("transformers")

SEQS = {"a": "MKTAYIAKQR", "b": "GAVLIPFWUZ", "c": "MSTNPKPQRKTKRNT"}
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def into_hub_cache(cache: Path, repo: str, checkpoint: Path) -> None:
    """Lay out a checkpoint folder as `hf download REPO` leaves it in the hub cache."""
    root = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(checkpoint, root / "snapshots" / SNAPSHOT)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(SNAPSHOT)


def save_tiny_prott5(folder: Path, layers: int = 24) -> Path:
    """A random-initialised T5 encoder with a ProtT5-style vocabulary ("▁A" pieces, </s>, <pad>, <unk>)."""
    import torch
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + a, -1.0) for a in "ALGVSREDTIPKFQNYMHWCXBOUZ"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    config = T5Config(vocab_size=len(pieces), d_model=16, d_kv=4, d_ff=32, num_layers=layers, num_heads=4,
                      is_encoder_decoder=False, use_cache=False)
    torch.manual_seed(1)
    T5EncoderModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def records():
    return [sequence_record(i, s) for i, s in SEQS.items()]


def test_esm2_8m_from_the_hub_cache_matches_a_direct_call(hub, tmp_path):
    import torch
    from transformers import EsmModel

    ckpt = save_tiny_esm2(tmp_path / "esm2_8m", layers=6)
    into_hub_cache(hub, "facebook/esm2_t6_8M_UR50D", ckpt)
    recs = [r for r in records() if r.id != "b"]  # ESM-2's vocabulary has no U/Z mapping step
    extract(recs, ["esm2-8m"], tmp_path / "c.h5", layers=["all"], quiet=True)
    vocab = {t: i for i, t in enumerate((ckpt / "vocab.txt").read_text().split())}
    model = EsmModel.from_pretrained(str(ckpt), add_pooling_layer=False).eval()
    with Cache(tmp_path / "c.h5") as c:
        m = c["esm2-8m"]
        assert m.layers == ["embeddings"] + [f"layer.{i}" for i in range(6)]
        assert m.provenance["repo"] == "facebook/esm2_t6_8M_UR50D"
        for r in recs:
            ids = [vocab["<cls>"]] + [vocab[ch] for ch in r.payload] + [vocab["<eos>"]]
            with torch.no_grad():
                hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            for name, h in zip(m.layers, hidden):
                np.testing.assert_allclose(m.layer(name, ids=[r.id])[0], h[0, 1:-1].double().mean(0).numpy(),
                                           rtol=1e-4, atol=1e-5)


def test_prott5_runs_the_encoder_only_with_rare_residues_as_x(hub, tmp_path):
    import torch
    from transformers import T5EncoderModel

    ckpt = save_tiny_prott5(tmp_path / "prott5")
    into_hub_cache(hub, "Rostlab/prot_t5_xl_half_uniref50-enc", ckpt)
    extract(records(), ["prott5"], tmp_path / "c.h5", layers=["embeddings", "layer.23"], pool="last", quiet=True)
    extract(records(), ["prott5"], tmp_path / "m.h5", layers=["layer.23"], quiet=True)
    vocab = {p: i for i, p in enumerate(["<pad>", "</s>", "<unk>"] + ["▁" + a for a in "ALGVSREDTIPKFQNYMHWCXBOUZ"])}
    model = T5EncoderModel.from_pretrained(str(ckpt)).eval()
    with Cache(tmp_path / "c.h5") as c, Cache(tmp_path / "m.h5") as cm:
        assert c.layers("prott5") == ["embeddings", "layer.23"]
        for r in records():
            seq = r.payload.replace("U", "X").replace("Z", "X")
            ids = [vocab["▁" + ch] for ch in seq] + [vocab["</s>"]]
            with torch.no_grad():
                hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            assert len(hidden) == 25
            np.testing.assert_allclose(c["prott5"].layer("layer.23", ids=[r.id])[0], hidden[24][0, -2].numpy(),
                                       rtol=1e-4, atol=1e-5)  # last residue, </s> excluded
            np.testing.assert_allclose(cm["prott5"].layer("layer.23", ids=[r.id])[0],
                                       hidden[24][0, :-1].double().mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_missing_or_other_checkpoints_are_one_line_errors(hub, tmp_path):
    from repalign.models import get_adapter

    with pytest.raises(ModelUnavailable, match="hf download facebook/esm2_t12_35M_UR50D") as info:
        get_adapter("esm2-35m").load()
    assert "\n" not in str(info.value)
    into_hub_cache(hub, "facebook/esm2_t6_8M_UR50D", save_tiny_esm2(tmp_path / "two", layers=2))
    with pytest.raises(ModelUnavailable, match="has 2 layers, esm2-8m has 6"):
        get_adapter("esm2-8m").load()
    # the layer list is known without weights
    assert get_adapter("esm2-3b").layer_names()[-1] == "layer.35"
    assert len(get_adapter("prott5").layer_names()) == 25


def test_a_bad_layer_name_suggests_a_call_and_a_command_that_exist(tmp_path):
    from cli_helpers import run_main

    from repalign import zoo
    from repalign.cli import build_parser
    from repalign.errors import RepalignError

    # the library names a Python call that lists the layers ...
    with pytest.raises(RepalignError, match="no layer matching 'layer.99'") as info:
        extract(records(), ["esm2-8m"], tmp_path / "c.h5", layers=["layer.99"], quiet=True)
    assert "repalign.zoo.model_table()" in str(info.value)
    assert any("layer.5" in row.get("layers", "") or "layer.5" in str(row) for row in zoo.model_table(["esm2-8m"]))
    # ... and the command line names the command that does
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">s1\nMKTAYIAKQR\n")
    res = run_main("extract", fasta, "--model", "esm2-8m", "--layers", "layer.99", "-o", tmp_path / "d.h5")
    assert res.returncode != 0 and "no layer matching 'layer.99'" in res.stderr
    command = res.stderr.split("'repalign ")[-1].split("'")[0].split()
    assert command == ["models", "--layers"]
    build_parser().parse_args(command)  # parses: the suggested command exists
    assert not (tmp_path / "c.h5").exists()
