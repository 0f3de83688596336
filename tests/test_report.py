"""`repalign report`: every comparable pair compared, a self-contained HTML page, atomic replacement,
and the page rendered by a real headless browser."""

import base64
import hashlib
import json
import os
import re
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
from repalign.compare import compare_models
from repalign.errors import RepalignError
from repalign.report import build_report

N = 30
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "c.h5"
    ids = [f"s{i:02d}" for i in range(N)]
    _write(path, "esmc-300m", ["esmc.0", "esmc.1"], ids, seed=1)
    _write(path, "esm2-8m", ["layer.0", "layer.1", "layer.2"], ids, seed=2)
    _write(path, "fold", ["esmc.0", "lm_encoder.0", "folding_trunk.0"], ids[:20], seed=3)  # a subset of samples
    _write(path, "other", ["x.0"], [f"t{i}" for i in range(8)], seed=4)  # shares no sample
    return path


@pytest.fixture(scope="module")
def report(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "report"
    index = build_report(cache, out, metrics=["mknn", "cka"], k=4)
    return index


class Page(HTMLParser):
    """The parts of the page the tests look at: images, links, scripts, tables, provenance blocks."""

    def __init__(self, text):
        super().__init__()
        self.imgs, self.links, self.tags = [], [], []
        self.tables, self._table, self._row, self._cell = {}, None, None, None
        self.provenance, self._prov = {}, None
        self.not_comparable, self._li = [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a)
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
        elif tag == "li" and a.get("class") == "not-comparable":
            self._li = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self.tables[self._table].append(self._row)
        elif tag == "pre":
            self._prov = None
        elif tag == "li" and self._li is not None:
            self.not_comparable.append(self._li)
            self._li = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._prov is not None:
            self.provenance[self._prov] += data
        if self._li is not None:
            self._li += data


def test_report_folder_holds_the_page_and_the_table(report):
    assert sorted(p.name for p in report.parent.iterdir()) == [".repalign-report", "index.html", "scores.csv"]
    assert sorted(p.name for p in report.parent.parent.iterdir()) == ["report"]  # no temporary folder left
    mask = os.umask(0)
    os.umask(mask)
    # not the private modes of temporary files: the report is meant to be shared
    assert report.parent.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (report.parent / "scores.csv").stat().st_mode & 0o777 == 0o666 & ~mask
    assert report.stat().st_mode & 0o777 == 0o666 & ~mask


def test_every_pair_sharing_samples_is_compared(report, cache):
    table = pd.read_csv(report.parent / "scores.csv", float_precision="round_trip")
    pairs = sorted(set(zip(table["model_a"], table["model_b"])))
    assert pairs == [("esm2-8m", "esmc-300m"), ("esm2-8m", "fold"), ("esmc-300m", "fold")]
    assert sorted(set(table["metric"])) == ["cka", "mutual_knn"]
    # each pair's rows are those of compare_models on its own, over the shared samples only
    for a, b in pairs:
        direct = compare_models(cache, a, b, ["mknn", "cka"], k=4).table
        mine = table[(table["model_a"] == a) & (table["model_b"] == b)].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine[direct.columns], direct, check_dtype=False)
    assert set(table.loc[table["model_b"] == "fold", "n_samples"]) == {20}
    page = Page(report.read_text())
    # one short line per pair that could not be compared; the full message is its tooltip
    assert len(page.not_comparable) == 3 and all("other" in li and li.endswith(": no shared samples")
                                                 for li in page.not_comparable)
    assert str(cache) not in "".join(page.not_comparable)


def test_page_is_self_contained(report):
    text = report.read_text()
    page = Page(text)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert page.imgs and all(img["src"].startswith("data:image/svg+xml;base64,") for img in page.imgs)
    assert all(h == "scores.csv" or h.startswith("#") for h in page.links)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text


def test_embedded_figures_are_valid_svg(report):
    page = Page(report.read_text())
    # 3 pairs x 2 metrics layer heatmaps + (model matrix + depth profile) per metric
    assert len(page.imgs) == 3 * 2 + 2 * 2
    titles = []
    for img in page.imgs:
        svg = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert float(root.get("width").removesuffix("pt")) > 100
        texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
        assert texts  # text stays text
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
            else:
                assert cell["text"] == str(value)


def test_provenance_of_every_model_is_shown(report, cache):
    page = Page(report.read_text())
    with Cache(cache) as c:
        assert sorted(page.provenance) == c.models
        for model, text in page.provenance.items():
            assert json.loads(text) == c.provenance(model)
    models = {row[0]["text"]: row for row in page.tables["models-table"][1:]}
    assert models["fold"][1]["text"] == "20" and models["esm2-8m"][2]["text"] == "3"


def test_page_lists_the_reproducing_commands(report, cache, tmp_path):
    text = report.read_text()
    assert f"repalign report {cache} -o {report.parent} --metric mutual_knn cka --k 4 --permutations 0" in text
    # the listed plot commands run as written on the report's table
    import html

    commands = re.findall(r"repalign plot [^\n<]*", html.unescape(text))
    assert len(commands) == 10
    shutil.copy(report.parent / "scores.csv", tmp_path / "scores.csv")
    import shlex

    from repalign.cli import main

    argv = shlex.split(commands[0])[1:] + ["--format", "svg"]
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(argv) == 0
    finally:
        os.chdir(old)
    assert list(tmp_path.glob("*.svg"))


def test_permutation_columns_match_repalign_stats(cache, tmp_path):
    from repalign.stats import permutation_test

    index = build_report(cache, tmp_path / "r", metrics=["mknn"], k=4, permutations=9, seed=7)
    table = pd.read_csv(index.parent / "scores.csv", float_precision="round_trip")
    for column in ("p_value", "p_value_adjusted", "null_mean", "calibrated"):
        assert table[column].notna().all()
    # p_value_best once per model pair, on the row the "best" column marks
    for _, rows in table.groupby(["model_a", "model_b", "metric"]):
        assert rows["p_value_best"].notna().sum() == 1 == rows["best"].sum()
        assert rows.loc[rows["best"], "p_value_best"].notna().all()
    rows = table[(table["model_a"] == "esm2-8m") & (table["model_b"] == "esmc-300m")]
    with Cache(cache) as c:
        ids = c.ids("esm2-8m")
        mats_a = [c.read_layer("esm2-8m", n, ids=ids) for n in c.layers("esm2-8m")]
        mats_b = [c.read_layer("esmc-300m", n, ids=ids) for n in c.layers("esmc-300m")]
    ref = permutation_test(mats_a, mats_b, "mknn", permutations=9, seed=7, k=4)
    np.testing.assert_allclose(rows["p_value"].to_numpy().reshape(3, 2), ref.p_value)
    np.testing.assert_allclose(rows["score"].to_numpy().reshape(3, 2), ref.scores, rtol=1e-12)
    # p-values take the values (1 + c) / (1 + T)
    assert np.allclose(table["p_value"] * 10, np.round(table["p_value"] * 10))
    heatmap = next(img for img in Page(index.read_text()).imgs if "layer x layer" in img["alt"])
    assert "p(best)" in base64.b64decode(heatmap["src"].split(",", 1)[1]).decode()


def test_existing_report_is_replaced_and_a_failed_run_keeps_it(cache, tmp_path):
    out = tmp_path / "r"
    build_report(cache, out, metrics=["cka"])
    first = pd.read_csv(out / "scores.csv", float_precision="round_trip")
    assert set(first["metric"]) == {"cka"}
    build_report(cache, out, metrics=["mknn"], k=3)
    assert set(pd.read_csv(out / "scores.csv", float_precision="round_trip")["metric"]) == {"mutual_knn"}
    before = (out / "index.html").read_bytes()
    # k larger than the samples of a pair fails inside the comparison, after checks passed
    with pytest.raises(RepalignError):
        build_report(cache, out, metrics=["mknn"], k=25)
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
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(RepalignError, match=message):
        build_report(source, out, **kwargs)
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing


def test_cli_report_end_to_end(cache, tmp_path):
    res = run_main("report", cache, "-o", tmp_path / "rep", "--metric", "cka", "-q")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"wrote {tmp_path / 'rep' / 'index.html'}"
    res = run_main("report", tmp_path / "nope.h5", "-o", tmp_path / "rep2")
    assert res.returncode == 1 and res.stderr.startswith("repalign: error: no cache at") and res.stderr.count("\n") == 1
    assert not (tmp_path / "rep2").exists()


def test_summary_comes_first_with_the_best_pair_of_every_pair(report):
    text = report.read_text()
    page = Page(text)
    # the summary table precedes every figure, the provenance and the reproducing commands
    assert text.index('id="summary-table"') < min(text.index("<img"), text.index('id="models"'),
                                                  text.index('id="reproduce"'))
    rows = page.tables["summary-table"][1:]
    csv = pd.read_csv(report.parent / "scores.csv", float_precision="round_trip")
    assert len(rows) == 3 * 2  # one row per compared pair and metric
    header = [c["text"] for c in page.tables["summary-table"][0]]
    # no permutations, no intervals: no empty statistics columns
    assert header == ["model pair", "metric", "samples", "best layer pair", "score", "chance / null mean"]
    for row in rows:
        a, b = row[0]["text"].split(" vs ")
        metric = row[1]["text"].split(" (")[0]
        part = csv[(csv["model_a"] == a) & (csv["model_b"] == b) & (csv["metric"] == metric)]
        best = part.loc[part["score"].idxmax()]
        assert row[3]["text"] == f"{best['layer_a']} ~ {best['layer_b']}"
        assert float(row[4]["value"]) == best["score"]
        assert int(row[2]["text"]) == best["n_samples"]
        if metric == "mutual_knn":  # closed-form chance level k / (N - 1), k = 4
            assert row[5]["text"] == f"{4 / (best['n_samples'] - 1):.3f} (chance)"
        else:  # biased CKA has no closed form and no permutations were run
            assert row[5]["text"] == ""


def test_summary_reports_adjusted_p_values_and_calibrated_scores(cache, tmp_path):
    index = build_report(cache, tmp_path / "r", metrics=["mknn"], k=4, permutations=19, seed=3)
    csv = pd.read_csv(index.parent / "scores.csv", float_precision="round_trip")
    page = Page(index.read_text())
    assert [c["text"] for c in page.tables["summary-table"][0]][6:] == ["calibrated", "p, adjusted for the layer search"]
    rows = page.tables["summary-table"][1:]
    assert len(rows) == 3
    for row in rows:
        a, b = row[0]["text"].split(" vs ")
        part = csv[(csv["model_a"] == a) & (csv["model_b"] == b)]
        best = part.loc[part["score"].idxmax()] if "best" not in part else part[part["best"].astype(bool)].iloc[0]
        assert float(row[6]["value"]) == best["calibrated"]
        assert float(row[7]["text"]) == pytest.approx(best["p_value_best"], rel=0.01)


def _listing(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_report_into_a_project_folder_never_deletes_the_users_files(cache, tmp_path):
    """The reproduction: a project folder with the cache, notes and an index.html of the user's."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(cache, proj / "cache.h5")
    (proj / "notes.txt").write_text("n\n")
    (proj / "index.html").write_text("<html>\n")
    before = _listing(proj)
    for extra in ([], ["--force"]):
        res = run_main("report", "cache.h5", "-o", ".", "--metric", "cka", *extra, cwd=proj)
        assert res.returncode == 1, res.stdout
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
        assert _listing(proj) == before  # not one byte changed, nothing added
    assert "index.html was not written by 'repalign report'" in res.stderr
    # without a foreign index.html: refused unless --force, then written beside the user's files
    (proj / "index.html").unlink()
    before = _listing(proj)
    res = run_main("report", "cache.h5", "-o", ".", "--metric", "cka", cwd=proj)
    assert res.returncode == 1 and "holds files the report did not write (cache.h5, notes.txt)" in res.stderr
    assert _listing(proj) == before
    res = run_main("report", "cache.h5", "-o", ".", "--metric", "cka", "--force", cwd=proj)
    assert res.returncode == 0, res.stderr
    after = _listing(proj)
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == [".repalign-report", "index.html", "scores.csv"]


def test_files_added_to_a_report_folder_are_kept(cache, tmp_path):
    out = tmp_path / "r"
    build_report(cache, out, metrics=["cka"])
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "fig.png").write_bytes(b"\x89PNG")
    with pytest.raises(RepalignError, match=r"holds files the report did not write \(notes.txt, sub\)"):
        build_report(cache, out, metrics=["mknn"], k=3)
    build_report(cache, out, metrics=["mknn"], k=3, force=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub" / "fig.png").read_bytes() == b"\x89PNG"
    assert set(pd.read_csv(out / "scores.csv", float_precision="round_trip")["metric"]) == {"mutual_knn"}
    # a report file the user edited is theirs now: never replaced, even with force
    (out / "index.html").write_text((out / "index.html").read_text() + "<!-- my note -->")
    edited = (out / "index.html").read_bytes()
    with pytest.raises(RepalignError, match="index.html was not written by 'repalign report' or was changed"):
        build_report(cache, out, metrics=["cka"], force=True)
    assert (out / "index.html").read_bytes() == edited


def test_an_empty_folder_is_used_and_an_earlier_report_is_recognised(cache, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    build_report(cache, out, metrics=["cka"])
    manifest = json.loads((out / ".repalign-report").read_text())
    assert sorted(manifest["files"]) == ["index.html", "scores.csv"]
    for name, digests in manifest["files"].items():
        assert digests == [hashlib.sha256((out / name).read_bytes()).hexdigest()]
    build_report(cache, out, metrics=["mknn"], k=3)  # its own files: replaced without --force
    assert sorted(p.name for p in out.iterdir()) == [".repalign-report", "index.html", "scores.csv"]


# Marks every <img> with whether it decoded and its natural size, and the page with its layout
# numbers, once the page has loaded.
PROBE = """<script>
window.addEventListener('load', () => {
  for (const img of document.images) {
    img.setAttribute('data-probe', img.complete + ':' + img.naturalWidth + 'x' + img.naturalHeight);
  }
  const root = document.documentElement;
  document.body.setAttribute('data-probed', String(document.images.length));
  document.body.setAttribute('data-layout', [root.scrollWidth, window.innerWidth, window.innerHeight,
    Math.round(document.getElementById('summary-table').getBoundingClientRect().bottom)].join(','));
});
</script>"""


def _chromium(tmp_path, page, *args):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900", "--virtual-time-budget=10000",
           *args, page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_headless_browser_renders_every_figure_without_overflow(report, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(tmp_path, probed, "--dump-dom")
    n_images = len(Page(report.read_text()).imgs)
    assert f'data-probed="{n_images}"' in dom
    probes = re.findall(r'data-probe="([^"]*)"', dom)
    assert len(probes) == n_images
    for probe in probes:
        complete, size = probe.split(":")
        width, height = map(int, size.split("x"))
        assert complete == "true" and width > 100 and height > 100, probe
    scroll_width, inner_width, inner_height, summary_bottom = map(int, re.search(r'data-layout="([^"]*)"', dom).group(1).split(","))
    assert inner_width == 1280
    assert scroll_width <= inner_width  # nothing wider than the window: no horizontal scrolling
    assert summary_bottom <= inner_height  # the results are on the first screen
    # a screenshot of the first screen for the test log
    shot = Path(os.environ.get("REPALIGN_TEST_ARTIFACTS", tmp_path)) / "report-1280.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    _chromium(tmp_path, report, f"--screenshot={shot}")
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 900)
    print(f"report screenshot: {shot}")


def test_single_model_cache_gives_a_report_with_nothing_compared(tmp_path):
    path = tmp_path / "one.h5"
    _write(path, "solo", ["l.0"], [f"s{i}" for i in range(5)], seed=1)
    index = build_report(path, tmp_path / "r")
    assert pd.read_csv(index.parent / "scores.csv", float_precision="round_trip").empty
    page = Page(index.read_text())
    assert page.imgs == [] and list(page.provenance) == ["solo"]
    assert "Nothing was compared: the cache holds a single model." in index.read_text()
