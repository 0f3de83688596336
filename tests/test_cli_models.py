import json
import subprocess
import sys

from cli_helpers import run_main

from repalign.models import REGISTRY, get_adapter_class
from repalign.zoo import model_table


def test_models_lists_every_registered_model_with_licence_and_extra(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty Hugging Face cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    res = subprocess.run([sys.executable, "-m", "repalign", "models"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for name in REGISTRY:
        assert name in res.stdout
        info = get_adapter_class(name).info
        assert info.license in res.stdout and f"extra: {info.extra}" in res.stdout
    rows = {r["name"]: r for r in model_table()}
    # models whose weights ship in installed packages are usable here and list their layers in order
    for name in ("antiberty", "chgnet-0.3.0", "ani-1x"):
        assert rows[name]["available"] and rows[name]["n_layers"] == len(rows[name]["layers"]) > 1
    # hub models without a local checkpoint say how to fetch them
    assert not rows["esmfold2"]["available"] and "hf download biohub/ESMFold2" in rows["esmfold2"]["why_unavailable"]


# ---- repalign models --model NAME --weights PATH: what the path really holds ---------------------------


def _row(*args):
    res = run_main("models", "--json", *args)
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    return row


def test_a_checkpoint_folder_is_here_only_with_its_config_and_weights(tmp_path):
    folder = tmp_path / "esm2"
    folder.mkdir()
    row = _row("--model", "esm2-8m", "--weights", folder)
    assert not row["available"] and "lacks config.json and a non-empty weights file" in row["why_unavailable"]
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")  # an empty (interrupted) download is no weights
    row = _row("--model", "esm2-8m", "--weights", folder)
    assert not row["available"] and row["why_unavailable"].startswith(f"weights {folder} lacks a non-empty weights file")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    row = _row("--model", "esm2-8m", "--weights", folder)
    assert row["available"] and row["why_unavailable"] == "" and row["weights"] == str(folder)
    assert row["layers"] == ["embeddings"] + [f"layer.{i}" for i in range(6)]  # esm2-8m: 6 transformer layers


def test_a_model_reading_named_files_lists_the_missing_ones(tmp_path):
    folder = tmp_path / "diep"
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    row = _row("--model", "diep", "--weights", folder)
    assert not row["available"] and row["why_unavailable"] == f"weights {folder} lacks model.pt and state.pt"


def test_a_one_file_checkpoint_refuses_a_folder_and_a_missing_path(tmp_path):
    row = _row("--model", "chgnet-0.3.0", "--weights", tmp_path)
    assert not row["available"] and "is a folder; chgnet-0.3.0 takes one checkpoint file" in row["why_unavailable"]
    row = _row("--model", "chgnet-0.3.0", "--weights", tmp_path / "nothing.pth.tar")
    assert not row["available"] and row["why_unavailable"].endswith("nothing.pth.tar does not exist")
    checkpoint = tmp_path / "mine.pth.tar"
    checkpoint.write_bytes(b"\0" * 64)
    assert _row("--model", "chgnet-0.3.0", "--weights", checkpoint)["available"]


def test_weights_need_exactly_one_model_and_a_model_that_takes_weights(tmp_path):
    for args in ([], ["--model", "esm2-8m", "--model", "onehot"]):
        res = run_main("models", "--weights", tmp_path, *args)
        assert res.returncode == 1 and res.stderr == "repalign: error: --weights is checked for one model; name it with --model NAME\n"
    row = _row("--model", "onehot", "--weights", tmp_path)
    assert not row["available"] and row["why_unavailable"] == "onehot is hand-crafted and takes no weights"
    text = run_main("models", "--model", "onehot", "--model", "antiberty").stdout
    assert "onehot" in text and "antiberty" in text and "chgnet" not in text
