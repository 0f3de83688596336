import subprocess
import sys

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
