"""Library errors name Python parameters; the command line shows the same errors with its flags."""

import numpy as np
import pytest
from cli_helpers import run_main

from repalign.cli import extract_wording
from repalign.errors import RepalignError
from repalign.extract_options import ExtractOptions


@pytest.mark.parametrize("library, cli", [
    ("use pool='mean'", "use --pool mean"),
    ("check it, or pass skip_invalid=True", "check it, or pass --skip-invalid"),
    ("tokens=['a', 'b'] are not among the extracted layers; add them to layers=", "--tokens a b are not among the extracted layers; add them to --layers"),
    ("export fewer layers at a time (layers=[NAME, ...])", "export fewer layers at a time (--layers NAME ...)"),
    ("pass options={'species': '...'} listing every element", "pass --option species=... listing every element"),
    ("not dtype='float16'; pass dtype='float32'", "not --dtype float16; pass --dtype float32"),
    ("weights=/w applies to one model", "--weights /w applies to one model"),
    ("raise it with options={'max_memory_gb': '...'} or split the input", "raise it with --option max_memory_gb=... or split the input"),
    ("pass dtype='float32' (CPU) or dtype='bfloat16' (GPU)", "pass --dtype float32 (CPU) or --dtype bfloat16 (GPU)"),
    ("model 'x' has layers: embeddings, layer.0", "model 'x' has layers: embeddings, layer.0"),  # prose stays prose
    ("store_dtypes=2 and the_pool=3", "store_dtypes=2 and the_pool=3"),  # only whole parameter names
])
def test_extract_wording_turns_parameters_into_flags(library, cli):
    assert extract_wording(library) == cli


def test_the_library_names_parameters_and_the_cli_flags(tmp_path):
    with pytest.raises(RepalignError) as info:
        ExtractOptions(batch_tokens=0)
    assert str(info.value) == "batch_tokens=0 must be a positive whole number of tokens, e.g. 4096"
    fasta = tmp_path / "x.fasta"
    fasta.write_text(">p1\nMKTAYIAKQR\n>p2\nMKVLAAGIVG\n")
    cases = [
        (["--batch-tokens", "0"], "--batch-tokens 0 must be a positive whole number of tokens, e.g. 4096"),
        (["--limit", "0"], "--limit 0 must be a positive number of inputs"),
        (["--dtype", "float16"], "model onehot computes float32 features, not --dtype float16; pass --dtype float32"),
        (["-m", "aa-composition", "--weights", str(tmp_path)],
         f"--weights {tmp_path} applies to one model; extract each model with its own weights, one model per run"),
    ]
    for extra, message in cases:
        res = run_main("extract", fasta, "-m", "onehot", "-o", tmp_path / "c.h5", "-q", *extra)
        assert (res.returncode, res.stderr) == (1, f"repalign: error: {message}\n")


def test_cache_commands_word_their_errors_with_flags(tmp_path):
    fasta = tmp_path / "x.fasta"
    fasta.write_text(">p1\nMKTAYIAKQR\n>p2\nMKVLAAGIVG\n")
    assert run_main("extract", fasta, "-m", "onehot", "-o", tmp_path / "c.h5", "-q").returncode == 0
    res = run_main("cache", "repool", tmp_path / "c.h5", "-m", "onehot", "--pool", "max")
    assert res.returncode == 1 and "extract it with --tokens LAYER (or --pool none) to keep them" in res.stderr, res.stderr
    np.save(tmp_path / "feats.npy", np.zeros((2, 3), dtype=np.float32))
    res = run_main("cache", "import", tmp_path / "feats.npy", "-m", "mine", "-o", tmp_path / "c.h5")
    assert res.returncode == 1 and "give the inputs in row order (--inputs) or their ids in row order (--ids)" in res.stderr
    fasta.write_text(">p1\nMKTAYIAKQQ\n>p2\nMKVLAAGIVG\n")  # p1's content changed, same id
    res = run_main("extract", fasta, "-m", "onehot", "-o", tmp_path / "c.h5", "-q")
    assert res.returncode == 1 and "or pass --overwrite to re-extract the model" in res.stderr, res.stderr


def test_plot_errors_name_parameters_in_python_and_flags_on_the_command_line(tmp_path):
    import pandas as pd

    from repalign.plot import draw

    table = pd.DataFrame({"model_a": "a", "layer_a": ["x.0", "x.0", "x.1", "x.1"], "model_b": "b",
                          "layer_b": ["y.0", "y.1", "y.0", "y.1"], "metric": "mutual_knn", "params": "k=2",
                          "score": [0.1, 0.2, 0.3, 0.4], "n_samples": 20})
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    cases = [  # (figure kind and options, library wording, command-line flags, command-line wording)
        ("controls", {}, "repalign.compare.compare_controls, or use kind='layers'", [],
         "'repalign compare --controls SEEDS', or use --kind layers"),
        ("n-curve", {}, "an n-curve draws a table of repalign.compare.compare_curves", [],
         "an n-curve draws a table of 'repalign compare --n-samples N,N,...'"),
        ("layers", {"value": "calibrated"}, "compare with permutations=N, or draw value='score'", ["--calibrated"],
         "compare with --permutations N, or draw without --calibrated"),
        ("layers", {"metric": "cka"}, "pass one as metric=NAME", ["--metric", "cka"], "pass one as --metric NAME"),
    ]
    for kind, options, library, flags, cli in cases:
        with pytest.raises(RepalignError) as info:
            draw(table, kind, **options)
        assert library in str(info.value)
        res = run_main("plot", path, "--kind", kind, *flags, "-o", tmp_path / "f")
        assert res.returncode == 1 and cli in res.stderr and "=" not in res.stderr.split(";")[-1], res.stderr
