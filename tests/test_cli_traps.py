"""Flags that take several words (--layers a b) end only at the next flag, so they could swallow the
command's positional argument (``extract x.fasta --layers a y.fasta``). Each such flag refuses a word
that is the positional's kind, in one line naming the fix, before anything runs."""

import pandas as pd
import pytest
from cli_helpers import run_main

from repalign.cli import build_parser

TRAPS = [
    # (argv, flag, swallowed word)
    (["extract", "x.fasta", "--layers", "all", "y.fasta", "-m", "onehot", "-o", "out.h5"], "--layers", "y.fasta"),
    (["extract", "--layers", "all", "x.fasta", "-m", "onehot", "-o", "out.h5"], "--layers", "x.fasta"),
    (["extract", "x.fasta", "--tokens", "onehot", "y.fasta", "-m", "onehot", "-o", "out.h5"], "--tokens", "y.fasta"),
    (["extract", "x.fasta", "--option", "species=human", "y.fasta", "-m", "onehot", "-o", "out.h5"], "--option", "y.fasta"),
    (["extract", "--layers", "all", "-", "-m", "onehot", "-o", "out.h5"], "--layers", "-"),
    (["extract", "--layers", "all", "seqs", "-m", "onehot", "-o", "out.h5"], "--layers", "seqs"),  # an existing folder
    (["compare", "--metric", "mknn", "cka", "cache.h5", "--a", "A", "--b", "B"], "--metric", "cache.h5"),
    (["compare", "--layers-a", "l0", "cache.h5", "--a", "A", "--b", "B"], "--layers-a", "cache.h5"),
    (["compare", "--layers-b", "l0", "cache.h5", "--a", "A", "--b", "B"], "--layers-b", "cache.h5"),
    (["compare", "--tokens", "--inputs", "x.fasta", "cache.h5", "--a", "A", "--b", "B"], "--inputs", "cache.h5"),
    (["cache", "import", "--inputs", "x.fasta", "feats.npy", "-m", "mine", "-o", "out.h5"], "--inputs", "feats.npy"),
    (["cache", "import", "--layers", "l0", "feats.npy", "-m", "mine", "-o", "out.h5"], "--layers", "feats.npy"),
    (["cache", "export", "--layers", "l0", "cache.h5", "-m", "A", "-o", "out.npz"], "--layers", "cache.h5"),
    (["cache", "repool", "--layers", "l0", "cache.h5", "-m", "A", "--pool", "max"], "--layers", "cache.h5"),
    (["plot", "--layer", "A=l0", "scores.csv", "--kind", "models", "-o", "fig"], "--layer", "scores.csv"),
    (["plot", "--size", "A=8", "scores.csv", "--kind", "size", "-o", "fig"], "--size", "scores.csv"),
    (["report", "--metric", "mknn", "cache.h5", "-o", "report"], "--metric", "cache.h5"),
]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "x.fasta").write_text(">p1\nMKTAYIAKQR\n>p2\nMKVLAAGIVG\n")
    (tmp_path / "y.fasta").write_text(">p3\nMKTAYIAKQQ\n")
    (tmp_path / "seqs").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv, flag, word", TRAPS, ids=[f"{a[0]}-{flag}-{word}" for a, flag, word in TRAPS])
def test_a_swallowed_positional_is_a_one_line_error_naming_the_fix(folder, argv, flag, word):
    before = sorted(p.name for p in folder.iterdir())
    res = run_main(*argv, cwd=folder)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("repalign: error: "), res.stderr
    assert f"{flag} took {word!r}" in res.stderr and f"put {word} before {flag}" in res.stderr, res.stderr
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_several_words_up_to_the_next_flag_still_work(folder):
    res = run_main("extract", "x.fasta", "y.fasta", "-m", "onehot", "-m", "aa-composition", "--layers", "all",
                   "--option", "onehot:max_length=100", "-o", "out.h5", "-q", cwd=folder)
    assert res.returncode == 0, res.stderr
    assert "onehot: stored 3 samples x 1 layers" in res.stdout
    res = run_main("compare", "out.h5", "--a", "onehot", "--b", "aa-composition", "--metric", "mknn", "cka", "--k", "1",
                   "-o", "scores.csv", cwd=folder)
    assert res.returncode == 0, res.stderr
    assert set(pd.read_csv(folder / "scores.csv")["metric"]) == {"mutual_knn", "cka"}
    args = build_parser().parse_args(["compare", "out.h5", "--a", "A", "--b", "B", "--tokens", "--inputs", "x.fasta",
                                      "y.fasta", "--inputs", "z.csv", "--layers-a", "l0", "l1", "--layers-a", "l2"])
    assert args.inputs == ["x.fasta", "y.fasta", "z.csv"] and args.layers_a == [["l0", "l1"], ["l2"]]
