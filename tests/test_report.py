"""`repalign report`: a page drawn from a table (a cache is compared first with the demo's settings),
findings first, figures that never mix groups or chance levels, sortable details, atomic
replacement, and the page rendered by a real headless browser at 1280 and 390 px."""

import base64
import hashlib
import html
import json
import os
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main

from embeddings_cache import Cache, CacheWriter
from repalign.cli import main
from repalign.compare import compare_controls, compare_models, headlines, k_for_samples
from repalign.errors import RepalignError
from repalign.report import build_report, figure_specs, model_groups, trained_rows
from repalign.table import chance_levels

N = 30
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GROUP_1 = ["esmc-300m", "esm2-8m", "fold"]
GROUP_2 = ["g1", "g2", "g3"]


def sha(sample_id):
    return hashlib.sha256(sample_id.encode()).hexdigest()


def _write(path, model, layers, ids, seed):
    shared = np.random.default_rng(0).standard_normal((len(ids), 6))
    rng = np.random.default_rng(seed)
    feats = {name: (shared @ rng.standard_normal((6, 4)) + (1 + i) * rng.standard_normal((len(ids), 4))).astype(np.float32)
             for i, name in enumerate(layers)}
    prov = {"model": model, "version": f"{seed}.0", "weights": f"sha256:{sha(model)[:12]}", "options": {"pool": "mean"}}
    with CacheWriter(path, model, provenance=prov, layers=layers) as w:
        w.append(ids, [sha(i) for i in ids], feats)


def _write_cache(path):
    ids = [f"s{i:02d}" for i in range(N)]
    _write(path, "esmc-300m", ["esmc.0", "esmc.1"], ids, seed=1)
    _write(path, "esm2-8m", ["layer.0", "layer.1", "layer.2"], ids, seed=2)
    _write(path, "fold", ["esmc.0", "lm_encoder.0", "folding_trunk.0"], ids[:20], seed=3)  # a subset of samples
    _write(path, "other", ["x.0"], [f"t{i}" for i in range(8)], seed=4)  # shares no sample
    for seed in (0, 1):  # controls of one pair
        _write(path, f"esmc-300m@random:{seed}", ["esmc.0", "esmc.1"], ids, seed=10 + seed)
        _write(path, f"esm2-8m@random:{seed}", ["layer.0", "layer.1", "layer.2"], ids, seed=20 + seed)
    group = [f"u{i:02d}" for i in range(40)]  # a second group of models, sharing no sample with the first
    for i, model in enumerate(GROUP_2):
        _write(path, model, ["a.0", "a.1"], group, seed=30 + i)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "c.h5"
    _write_cache(path)
    return path


@pytest.fixture(scope="module")
def report(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "report"
    return build_report(cache, out)


@pytest.fixture(scope="module")
def scores(report):
    return pd.read_csv(report.parent / "scores.csv", float_precision="round_trip")


class Page(HTMLParser):
    """The parts of the page the tests look at: images, links, scripts, tables, provenance, headlines."""

    def __init__(self, text):
        super().__init__()
        self.imgs, self.links, self.tags, self.scripts = [], [], [], []
        self.tables, self._table, self._row, self._cell = {}, None, None, None
        self.provenance, self._prov = {}, None
        self.not_compared, self._li = [], None
        self.headlines, self.details = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a)
        if tag == "script":
            self.scripts.append(a)
        if tag == "details":
            self.details.append(a)
        if "href" in a:
            self.links.append(a["href"])
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = {"value": a.get("data-value"), "text": ""}
        elif tag == "pre" and "data-model" in a:
            self._prov = a["data-model"]
            self.provenance[self._prov] = ""
        elif tag == "li" and a.get("class") == "not-compared":
            self._li = ""
        elif tag == "li" and a.get("class") == "headline":
            self.headlines.append(a)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self.tables[self._table].append(self._row)
        elif tag == "pre":
            self._prov = None
        elif tag == "li" and self._li is not None:
            self.not_compared.append(self._li)
            self._li = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._prov is not None:
            self.provenance[self._prov] += data
        if self._li is not None:
            self._li += data


def test_report_folder_holds_the_page_the_table_and_its_settings(report):
    assert sorted(p.name for p in report.parent.iterdir()) == [".repalign-report", "index.html", "scores.csv",
                                                                "scores.csv.settings.json"]
    assert sorted(p.name for p in report.parent.parent.iterdir()) == ["report"]  # no temporary folder left
    mask = os.umask(0)
    os.umask(mask)
    # not the private modes of temporary files: the report is meant to be shared
    assert report.parent.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (report.parent / "scores.csv").stat().st_mode & 0o777 == 0o666 & ~mask
    assert report.stat().st_mode & 0o777 == 0o666 & ~mask


def test_k_is_chosen_so_that_n_is_at_least_ten_k():
    assert (k_for_samples(48), k_for_samples(40), k_for_samples(30), k_for_samples(20)) == (4, 4, 3, 2)
    for n in range(1, 400):
        k = k_for_samples(n)
        assert 1 <= k <= 10
        assert k == 1 or n >= 10 * k  # never the small-N warning where N >= 10
        assert k == 10 or n < 10 * (k + 1)  # the largest such k


def test_a_cache_is_compared_with_the_demo_settings(scores, cache):
    trained = trained_rows(scores)
    pairs = sorted(set(zip(trained["model_a"], trained["model_b"])))
    assert pairs == [("esm2-8m", "esmc-300m"), ("esm2-8m", "fold"), ("esmc-300m", "fold"),
                     ("g1", "g2"), ("g1", "g3"), ("g2", "g3")]
    assert sorted(set(scores["metric"])) == ["mutual_knn", "unbiased_cka"]
    # the pair with controls of two seeds went through compare_controls, the others through compare_models,
    # each with k chosen for its shared samples and 99 permutations; the same rows as those calls on their own
    direct = compare_controls(cache, "esm2-8m", "esmc-300m", ["mknn", "unbiased_cka"], [0, 1], k=3,
                              permutations=99, seed=0).table
    mine = scores[(scores["model_a"].str.startswith("esm2-8m")) & scores["model_b"].str.startswith("esmc-300m")]
    assert set(mine["level"]) == {"trained", "random_init", "contrast"}
    _same_rows(mine, direct)
    direct = compare_models(cache, "esm2-8m", "fold", ["mknn", "unbiased_cka"], k=2, permutations=99, seed=0).table
    _same_rows(scores[(scores["model_a"] == "esm2-8m") & (scores["model_b"] == "fold")], direct)
    assert set(scores.loc[scores["model_b"] == "fold", "n_samples"]) == {20}
    knn = scores[scores["metric"] == "mutual_knn"]
    for n, k in ((20, 2), (30, 3), (40, 4)):
        assert {p.split(",")[0] for p in knn.loc[knn["n_samples"] == n, "params"]} == {f"k={k}"}


def _same_rows(mine, direct):
    mine = mine.reset_index(drop=True)
    for column in direct.columns:
        left, right = mine[column], direct[column].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(right) and right.dtype != bool:
            np.testing.assert_allclose(left.to_numpy(float), right.to_numpy(float), rtol=1e-12, equal_nan=True)
        else:
            assert [str(v) if pd.notna(v) else "" for v in left] == [str(v) if pd.notna(v) else "" for v in right], column


def test_the_page_opens_with_the_headlines_of_each_group(report, scores):
    text = report.read_text()
    page = Page(text)
    assert text.index('id="findings"') < min(text.index("<img"), text.index('id="pairs"'), text.index('id="reproduce"'))
    expected = headlines(scores)
    assert len(page.headlines) == len(expected) == 6 * 2  # one per trained pair and metric: no control rows
    assert not any("@random" in h["data-model-a"] + h["data-model-b"] for h in page.headlines)
    for h, (_, row) in zip(page.headlines, expected.iterrows()):
        assert (h["data-metric"], h["data-model-a"], h["data-model-b"]) == (row.metric, row.model_a, row.model_b)
        assert (h["data-layer-a"], h["data-layer-b"]) == (row.layer_a, row.layer_b)
        assert float(h["data-score"]) == row.score
    # the headline pair is the trained row marked best, the highest score of the pair
    for h in page.headlines:
        part = scores[(scores["model_a"] == h["data-model-a"]) & (scores["model_b"] == h["data-model-b"])
                      & (scores["metric"] == h["data-metric"]) & (scores["level"] == "trained")]
        assert float(h["data-score"]) == part["score"].max()
    # controls as context of their trained pair: the mean over seeds of each seed's best score
    controls = scores[scores["level"] == "random_init"]
    for h in page.headlines:
        if h["data-model-a"] != "esm2-8m" or h["data-model-b"] != "esmc-300m":
            assert h["data-control-mean"] == "nan"
            continue
        rows = controls[controls["metric"] == h["data-metric"]]
        best_per_seed = rows.groupby("control_seed")["score"].max()
        assert len(best_per_seed) == 2
        assert float(h["data-control-mean"]) == pytest.approx(best_per_seed.mean(), rel=1e-12)
        assert float(h["data-difference"]) == pytest.approx(float(h["data-score"]) - best_per_seed.mean(), rel=1e-9)
    sentences = [html.unescape(s) for s in re.findall(r'<li class="headline"[^>]*>([^<]*)</li>', text)]
    control_lines = [s for s in sentences if s.startswith("esm2-8m") and "esmc-300m" in s]
    assert all("random-init controls" in s and "smallest attainable 0.33" in s for s in control_lines)  # 1/(2+1)


def test_groups_and_matrices_never_mix_groups_or_chance_levels(scores, report):
    groups = model_groups(trained_rows(scores))
    assert [sorted(g) for g in groups] == [sorted(GROUP_1), sorted(GROUP_2)]
    specs = figure_specs(scores)
    matrices = [s for s in specs if s["kind"] == "models"]
    assert matrices
    for spec in matrices:
        models = set(spec["rows"]["model_a"]) | set(spec["rows"]["model_b"])
        assert any(models <= set(g) for g in groups)
        assert "@random" not in "".join(models)
        levels = np.round(chance_levels(spec["rows"]), 9)
        assert len(set(levels)) == 1
    # group 2 (N = 40 for every pair): one matrix per metric holding its three models
    assert sum(set(s["rows"]["model_a"]) | set(s["rows"]["model_b"]) == set(GROUP_2) for s in matrices) == 2
    # group 1 mixes N = 30 (k = 3) and N = 20 (k = 2): its mutual kNN matrix holds only the pairs at one chance level
    knn_1 = [s for s in matrices if s["metric"] == "mutual_knn" and set(s["rows"]["model_a"]) <= set(GROUP_1)]
    assert len(knn_1) == 1 and set(knn_1[0]["rows"]["n_samples"]) == {20}
    page = Page(report.read_text())
    assert len(page.imgs) == len(specs)


def test_pairs_not_compared_are_one_collapsed_line(report, cache):
    text = report.read_text()
    page = Page(text)
    assert [d.get("id") for d in page.details].count("not-compared") == 1
    summary = re.search(r'<details id="not-compared"><summary>([^<]*)</summary>', text).group(1)
    n_other = len(GROUP_1) + len(GROUP_2)  # 'other' shares no sample with any; group 1 none with group 2
    assert summary == f"{n_other + 3 * 3} model pair(s) not compared: no shared samples"
    assert len(page.not_compared) == n_other + 9
    assert all(li.endswith(": no shared samples") for li in page.not_compared)
    assert str(cache) not in "".join(page.not_compared)


def test_page_is_self_contained(report):
    text = report.read_text()
    page = Page(text)
    assert page.scripts == [{}]  # one inline script (table sorting), nothing loaded
    assert "link" not in page.tags and "iframe" not in page.tags
    assert page.imgs and all(img["src"].startswith("data:image/svg+xml;base64,") for img in page.imgs)
    assert all(h == "scores.csv" or h.startswith("#") for h in page.links)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text and "fetch(" not in text


def test_embedded_figures_are_valid_svg(report):
    page = Page(report.read_text())
    titles = []
    for img in page.imgs:
        svg = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert float(root.get("width").removesuffix("pt")) > 100
        texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
        assert texts  # text stays text
        if "against random-init controls" not in img["alt"]:
            assert not any("@random" in t for t in texts)  # controls are never drawn as models of their own
        titles.append(img["alt"])
    assert "mutual_knn: layer x layer, esm2-8m vs fold" in titles


def test_scores_table_matches_the_csv(report):
    csv = pd.read_csv(report.parent / "scores.csv", keep_default_na=False, float_precision="round_trip")
    page = Page(report.read_text())
    rows = page.tables["scores-table"]
    assert [c["text"] for c in rows[0]] == list(csv.columns)
    body = rows[1:]
    assert len(body) == len(csv)
    for row, (_, expected) in zip(body, csv.iterrows()):
        for cell, column in zip(row, csv.columns):
            value = expected[column]
            if column in ("score", "n_samples"):
                assert float(cell["value"]) == float(value)  # every digit of the CSV
                assert float(cell["text"]) == pytest.approx(float(value), abs=5e-5)


def test_all_pairs_table_has_one_row_per_comparison_and_metric(report, scores):
    page = Page(report.read_text())
    rows = page.tables["pairs-table"]
    header = [c["text"] for c in rows[0]]
    body = [dict(zip(header, (c["text"] for c in r))) for r in rows[1:]]
    values = [dict(zip(header, (c["value"] for c in r))) for r in rows[1:]]
    # 6 trained pairs + 2 control seeds of one pair, 2 metrics each; no contrast rows
    assert len(body) == (6 + 2) * 2
    assert sorted({r["level"] for r in body}) == ["random_init", "trained"]
    for r, v in zip(body, values):
        part = scores[(scores["model_a"] == r["model_a"]) & (scores["model_b"] == r["model_b"])
                      & (scores["metric"] == r["metric"]) & (scores["level"] == r["level"])]
        best = part[part["best"].astype(bool)].iloc[0]
        assert r["best layer pair"] == f"{best['layer_a']} ~ {best['layer_b']}"
        assert float(v["score"]) == best["score"]
        p = float(v["p, layer search"])
        assert p == best["p_value_best"] or (np.isnan(p) and np.isnan(best["p_value_best"]))
    # the trained rows carry the p-value adjusted for the layer search
    assert all(np.isfinite(float(v["p, layer search"])) for r, v in zip(body, values) if r["level"] == "trained")


def test_provenance_of_every_model_is_shown(report, cache):
    page = Page(report.read_text())
    with Cache(cache) as c:
        assert sorted(page.provenance) == sorted(c.models)
        for model, text in page.provenance.items():
            assert json.loads(text) == c.provenance(model)
    models = {row[0]["text"]: row for row in page.tables["models-table"][1:]}
    assert models["fold"][1]["text"] == "20" and models["esm2-8m"][2]["text"] == "3"


def test_page_lists_the_reproducing_commands(report, cache, tmp_path):
    text = html.unescape(report.read_text())
    assert f"repalign report {cache} -o {report.parent}" in text
    compare = re.findall(r"repalign compare [^\n<]*", text)
    assert len(compare) == 6
    assert (f"repalign compare {cache} --a esm2-8m --b esmc-300m --metric mutual_knn unbiased_cka --k 3 "
            "--permutations 99 --seed 0 --controls 0,1 -o esm2-8m-vs-esmc-300m.csv") in compare
    # the listed plot commands of layer heatmaps run as written on the report's table
    commands = re.findall(r"repalign plot [^\n<]*", text)
    assert len(commands) == len(Page(report.read_text()).imgs)
    shutil.copy(report.parent / "scores.csv", tmp_path / "scores.csv")
    layers = next(c for c in commands if "--kind layers" in c and "--a esm2-8m --b fold" in c)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(shlex.split(layers)[1:] + ["--format", "svg"]) == 0
    finally:
        os.chdir(old)
    assert list(tmp_path.glob("*.svg"))


def test_a_table_is_rendered_with_the_settings_written_beside_it(cache, tmp_path):
    table = tmp_path / "t.csv"
    res = run_main("compare", cache, "--a", "esm2-8m", "--b", "fold", "--metric", "mknn", "--k", "2",
                   "--permutations", "19", "--seed", "5", "-o", table)
    assert res.returncode == 0, res.stderr
    settings = json.loads((tmp_path / "t.csv.settings.json").read_text())
    assert (settings["k"], settings["permutations"], settings["seed"], settings["metrics"]) == (2, 19, 5, ["mknn"])
    res = run_main("report", table, "-o", tmp_path / "r")
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "r" / "index.html").read_text()
    assert "Settings: metrics mknn; k 2; permutations 19; seed 5; layer family hidden." in text
    written = pd.read_csv(table, float_precision="round_trip")
    best = written[written["best"]].iloc[0]
    h = Page(text).headlines
    assert len(h) == 1 and float(h[0]["data-score"]) == best["score"] and h[0]["data-layer-a"] == best["layer_a"]
    assert json.loads((tmp_path / "r" / "scores.csv.settings.json").read_text()) == settings
    # '-o -' writes no settings file; a table on standard input is rendered without settings
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run_main("compare", cache, "--a", "esm2-8m", "--b", "fold", "--metric", "mknn", "--k", "2", "-o", "-")
    assert res.returncode == 0 and sorted(p.name for p in tmp_path.iterdir()) == before
    res = run_main("report", "-", "-o", tmp_path / "piped", stdin=res.stdout)
    assert res.returncode == 0, res.stderr
    assert "no settings file beside the table" in (tmp_path / "piped" / "index.html").read_text()


def test_a_report_of_its_own_table_gives_the_same_findings(report, tmp_path):
    again = build_report(report.parent / "scores.csv", tmp_path / "again")

    def findings(path):
        text = path.read_text()
        return text[text.index('id="findings"'):text.index('id="figures"')]

    assert findings(again) == findings(report)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "scores.csv", float_precision="round_trip"),
                                  pd.read_csv(report.parent / "scores.csv", float_precision="round_trip"))


def test_cache_settings_are_refused_for_a_table(report, tmp_path):
    with pytest.raises(RepalignError, match="k apply to a cache; a table is rendered with the settings"):
        build_report(report.parent / "scores.csv", tmp_path / "r", k=3)
    res = run_main("report", report.parent / "scores.csv", "-o", tmp_path / "r", "--k", "3")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "--k apply to a cache" in res.stderr and not (tmp_path / "r").exists()


def test_permutation_columns_match_repalign_stats(cache, tmp_path):
    from repalign.stats import permutation_test

    index = build_report(cache, tmp_path / "r", metrics=["mknn"], k=4, permutations=9, seed=7)
    table = pd.read_csv(index.parent / "scores.csv", float_precision="round_trip")
    trained = trained_rows(table)
    for column in ("p_value", "p_value_adjusted", "null_mean", "calibrated"):
        assert trained[column].notna().all()
    for _, rows in trained.groupby(["model_a", "model_b", "metric"]):
        assert rows["p_value_best"].notna().sum() == 1 == rows["best"].sum()
    rows = trained[(trained["model_a"] == "esm2-8m") & (trained["model_b"] == "fold")]
    with Cache(cache) as c:
        ids = c.ids("fold")
        mats_a = [c.read_layer("esm2-8m", n, ids=ids) for n in c.layers("esm2-8m")]
        mats_b = [c.read_layer("fold", n, ids=ids) for n in c.layers("fold")]
    ref = permutation_test(mats_a, mats_b, "mknn", permutations=9, seed=7, k=4)
    np.testing.assert_allclose(rows["p_value"].to_numpy().reshape(3, 3), ref.p_value)
    np.testing.assert_allclose(rows["score"].to_numpy().reshape(3, 3), ref.scores, rtol=1e-12)
    assert np.allclose(trained["p_value"] * 10, np.round(trained["p_value"] * 10))  # (1 + c) / (1 + T)


def test_existing_report_is_replaced_and_a_failed_run_keeps_it(cache, tmp_path):
    out = tmp_path / "r"
    build_report(cache, out, metrics=["cka"], permutations=0)
    assert set(pd.read_csv(out / "scores.csv")["metric"]) == {"cka"}
    build_report(cache, out, metrics=["mknn"], k=3, permutations=0)
    assert set(pd.read_csv(out / "scores.csv")["metric"]) == {"mutual_knn"}
    before = (out / "index.html").read_bytes()
    # k larger than the samples of a pair fails inside the comparison, after checks passed
    with pytest.raises(RepalignError):
        build_report(cache, out, metrics=["mknn"], k=25, permutations=0)
    assert (out / "index.html").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


@pytest.mark.parametrize("setup, kwargs, message", [
    ("file", {}, "is a file"),
    ("foreign", {}, r"holds files the report did not write \(notes.txt\)"),
    ("nofolder", {}, "no such folder"),
    (None, {"metrics": ["nonsense"]}, "nonsense"),
    (None, {"k": 0}, "k must be an integer >= 1"),
    (None, {"permutations": -1}, "permutations must be an integer >= 0"),
    ("nocache", {}, "no cache at"),
    ("notable", {}, "no such table"),
])
def test_bad_input_writes_nothing(cache, tmp_path, setup, kwargs, message):
    out = tmp_path / "r"
    source = cache
    if setup == "file":
        out.write_text("x")
    elif setup == "foreign":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif setup == "nofolder":
        out = tmp_path / "missing" / "r"
    elif setup == "nocache":
        source = tmp_path / "absent.h5"
    elif setup == "notable":
        source = tmp_path / "absent.csv"
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(RepalignError, match=message):
        build_report(source, out, **kwargs)
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing


def test_cli_report_end_to_end(cache, tmp_path):
    res = run_main("report", cache, "-o", tmp_path / "rep", "--metric", "cka", "--permutations", "0", "-q")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"wrote {tmp_path / 'rep' / 'index.html'}"
    res = run_main("report", tmp_path / "nope.h5", "-o", tmp_path / "rep2")
    assert res.returncode == 1 and res.stderr.startswith("repalign: error: no cache at") and res.stderr.count("\n") == 1
    assert not (tmp_path / "rep2").exists()


def _listing(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_report_into_a_project_folder_never_deletes_the_users_files(cache, tmp_path):
    """A project folder with the cache, notes and an index.html of the user's."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(cache, proj / "cache.h5")
    (proj / "notes.txt").write_text("n\n")
    (proj / "index.html").write_text("<html>\n")
    before = _listing(proj)
    fast = ["--metric", "cka", "--permutations", "0"]
    for extra in ([], ["--force"]):
        res = run_main("report", "cache.h5", "-o", ".", *fast, *extra, cwd=proj)
        assert res.returncode == 1, res.stdout
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
        assert _listing(proj) == before  # not one byte changed, nothing added
    assert "index.html was not written by 'repalign report'" in res.stderr
    (proj / "index.html").unlink()
    before = _listing(proj)
    res = run_main("report", "cache.h5", "-o", ".", *fast, cwd=proj)
    assert res.returncode == 1 and "holds files the report did not write (cache.h5, notes.txt)" in res.stderr
    assert _listing(proj) == before
    res = run_main("report", "cache.h5", "-o", ".", *fast, "--force", cwd=proj)
    assert res.returncode == 0, res.stderr
    after = _listing(proj)
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == [".repalign-report", "index.html", "scores.csv", "scores.csv.settings.json"]


def test_files_added_to_a_report_folder_are_kept(cache, tmp_path):
    out = tmp_path / "r"
    fast = {"permutations": 0}
    build_report(cache, out, metrics=["cka"], **fast)
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "fig.png").write_bytes(b"\x89PNG")
    with pytest.raises(RepalignError, match=r"holds files the report did not write \(notes.txt, sub\)"):
        build_report(cache, out, metrics=["mknn"], k=3, **fast)
    build_report(cache, out, metrics=["mknn"], k=3, force=True, **fast)
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub" / "fig.png").read_bytes() == b"\x89PNG"
    assert set(pd.read_csv(out / "scores.csv")["metric"]) == {"mutual_knn"}
    # a report file the user edited is theirs now: never replaced, even with force
    (out / "index.html").write_text((out / "index.html").read_text() + "<!-- my note -->")
    edited = (out / "index.html").read_bytes()
    with pytest.raises(RepalignError, match="index.html was not written by 'repalign report' or was changed"):
        build_report(cache, out, metrics=["cka"], force=True, **fast)
    assert (out / "index.html").read_bytes() == edited


def test_an_empty_folder_is_used_and_an_earlier_report_is_recognised(cache, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    build_report(cache, out, metrics=["cka"], permutations=0)
    manifest = json.loads((out / ".repalign-report").read_text())
    assert sorted(manifest["files"]) == ["index.html", "scores.csv", "scores.csv.settings.json"]
    for name, digests in manifest["files"].items():
        assert digests == [hashlib.sha256((out / name).read_bytes()).hexdigest()]
    build_report(cache, out, metrics=["mknn"], k=3, permutations=0)  # its own files: replaced without --force
    assert sorted(p.name for p in out.iterdir()) == [".repalign-report", "index.html", "scores.csv",
                                                     "scores.csv.settings.json"]


def test_single_model_cache_gives_a_report_with_nothing_compared(tmp_path):
    path = tmp_path / "one.h5"
    _write(path, "solo", ["l.0"], [f"s{i}" for i in range(5)], seed=1)
    index = build_report(path, tmp_path / "r")
    assert pd.read_csv(index.parent / "scores.csv").empty
    page = Page(index.read_text())
    assert page.imgs == [] and list(page.provenance) == ["solo"]
    assert "Nothing was compared: the cache holds a single model." in index.read_text()


# Run in the page once it has loaded: marks every <img> with whether it decoded and its natural size;
# measures every element not inside a box scrolling on its own (.scroll) against the window; clicks the
# score column of the pairs table twice and records the order after each click; posts the results to
# the frame holding the page.
PROBE = """<script>
window.addEventListener('load', () => {
  const out = {images: Array.from(document.images).map(img => img.complete + ':' + img.naturalWidth + 'x' + img.naturalHeight)};
  const root = document.documentElement, width = window.innerWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('.scroll') !== null && !el.classList.contains('scroll')) continue;
    const box = el.getBoundingClientRect();
    if (box.width > 0 && (box.right > width + 0.5 || box.left < -0.5)) wide.push(el.tagName + '#' + el.id + '.' + el.className);
  }
  out.wide = wide;
  const table = document.getElementById('pairs-table');
  const column = Array.from(table.tHead.rows[0].cells).findIndex(th => th.textContent === 'score');
  const order = () => Array.from(table.tBodies[0].rows).map(r => r.cells[column].getAttribute('data-value'));
  table.tHead.rows[0].cells[column].click();
  out.ascending = order();
  table.tHead.rows[0].cells[column].click();
  out.descending = order();
  out.layout = [root.scrollWidth, width, window.innerHeight,
                Math.round(document.querySelector('li.headline').getBoundingClientRect().top)];
  parent.postMessage(JSON.stringify(out), '*');
});
</script>"""

# The window that holds the page in an iframe of the width under test (headless windows are at least 500 px).
FRAME = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="{page}" style="width:{width}px;height:900px;border:0;display:block"></iframe>
<script>window.addEventListener('message', e => document.body.setAttribute('data-probe', e.data));</script>
</body></html>"""


def _chromium(tmp_path, page, width, *args):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={max(width, 500)},900", "--virtual-time-budget=10000",
           *args, page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
@pytest.mark.parametrize("width", [1280, 390])
def test_headless_browser_renders_the_page_without_horizontal_scrolling(report, tmp_path, width):
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    frame = tmp_path / "frame.html"
    frame.write_text(FRAME.format(page=probed.name, width=width))
    dom = _chromium(tmp_path, frame, width, "--allow-file-access-from-files", "--dump-dom")
    out = json.loads(html.unescape(re.search(r'<body[^>]* data-probe="([^"]*)"', dom).group(1)))
    n_images = len(Page(report.read_text()).imgs)
    assert len(out["images"]) == n_images
    for probe in out["images"]:
        complete, size = probe.split(":")
        w, h = map(int, size.split("x"))
        assert complete == "true" and w > 100 and h > 100, probe
    scroll_width, inner_width, inner_height, first_headline = out["layout"]
    assert inner_width == width
    assert scroll_width <= inner_width  # nothing wider than the window: no horizontal scrolling
    assert out["wide"] == []  # every element fits; wide tables scroll inside their own box
    assert first_headline < inner_height  # the findings are on the first screen
    # the sortable table: ascending, then descending, empty values last both times
    for name, sign in (("ascending", 1), ("descending", -1)):
        values = [float(v) for v in out[name]]
        finite = [v for v in values if np.isfinite(v)]
        assert len(finite) > 3 and finite == sorted(finite, key=lambda v: sign * v)
        assert all(np.isfinite(values[: len(finite)]))
    shot = Path(os.environ.get("REPALIGN_TEST_ARTIFACTS", tmp_path)) / f"report-{width}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    frame.write_text(FRAME.format(page=report.as_uri(), width=width))
    _chromium(tmp_path, frame, width, "--allow-file-access-from-files", f"--screenshot={shot}")
    print(f"report screenshot: {shot}")


def _matrix(fig) -> np.ndarray:
    return np.asarray(fig.axes[0].images[0].get_array(), dtype=float)


def test_model_matrix_commands_carry_the_figures_options_and_draw_the_same_matrix(report, scores, tmp_path):
    """Each printed model-matrix command names the figure's metric and models (--a), and its Python
    equivalent, on the whole table the report wrote, draws the report's matrix: same models, order
    and cells. The figure's caption is the one the page shows."""
    from repalign import plot
    from repalign.report import draw_figure, plot_command
    from repalign.table import read_table

    table = read_table(report.parent / "scores.csv")
    page = html.unescape(report.read_text())
    matrices = [s for s in figure_specs(scores) if s["kind"] == "models"]
    same_level = [s for s in matrices if set(s["a"].split(",")) == set(GROUP_2)]
    assert len(same_level) == 2  # one per metric
    for spec in matrices:
        command = plot_command(spec)
        flags = dict(zip(command[3::2], command[4::2]))
        models = list(dict.fromkeys([*spec["rows"]["model_a"], *spec["rows"]["model_b"]]))
        assert flags["--metric"] == spec["metric"] and sorted(flags["--a"].split(",")) == sorted(models)
        assert " ".join(command) in page
    for spec in same_level:
        command = plot_command(spec)
        flags = dict(zip(command[3::2], command[4::2]))
        options = plot.figure_options("models", metric=flags["--metric"], a=flags["--a"])
        assert sorted(options["models"]) == sorted(GROUP_2)
        printed = plot.draw(table, "models", **options)
        drawn = plot.draw(spec["rows"], "models", **plot.figure_options("models", metric=spec["metric"], a=spec["a"]))
        assert printed.repalign_order == drawn.repalign_order
        np.testing.assert_array_equal(_matrix(printed), _matrix(drawn))
        figure = draw_figure(spec)
        assert figure["caption"].endswith(plot.caption(drawn)) and html.unescape(figure["caption"]) in page
    # every matrix command, as printed, runs on the report's table: a matrix whose models also have
    # pairs at another N (another chance level) names its N
    assert any("--n-samples" in plot_command(spec) for spec in matrices)
    shutil.copy(report.parent / "scores.csv", tmp_path / "scores.csv")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        for spec in matrices:
            assert main(plot_command(spec)[1:] + ["--format", "svg"]) == 0
        assert main(["plot", "scores.csv", "--kind", "models", "--n-samples", "7", "-o", "x", "--format", "svg"]) != 0
    finally:
        os.chdir(old)
