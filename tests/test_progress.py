"""Progress bars: drawn on a terminal, never in a pipe unless asked, never with --no-progress or -q.

The terminal is a real pseudo-terminal: the command runs in a tmux session of its own (a private
tmux server, `-L`) with standard error on the pane and standard output in a file, and the test
reads the pane's text once the command has ended. Without tmux (.ci/run installs it) those tests
skip and say why; the policy itself (repalign.progress) is tested without a terminal.
"""

from __future__ import annotations

import contextlib
import io
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from repalign.progress import bars_beside_logs, progress, progress_setting, shows_bars

TMUX = shutil.which("tmux")
needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (.ci/run installs it): no pseudo-terminal")
#: a finished tqdm bar: "DESC: 100%|#####| N/N [elapsed<eta, rate]"
FINISHED_BAR = r"{desc}: 100%\|[^|]*\| {n}/{n} \["


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A FASTA of 40 sequences and a cache of two hand-crafted models of them (onehot, aa-composition)."""
    folder = tmp_path_factory.mktemp("progress")
    rng = random.Random(0)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    (folder / "x.fasta").write_text("".join(f">s{i}\n{''.join(rng.choice(aa) for _ in range(rng.randint(8, 30)))}\n"
                                            for i in range(40)))
    done = subprocess.run([sys.executable, "-m", "repalign", "extract", "x.fasta", "-m", "onehot", "-m", "aa-composition",
                           "-o", "cache.h5", "-q"], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return folder


def in_terminal(folder, *args: str) -> tuple[int, str]:
    """``repalign ARGS`` in ``folder`` with standard error on a tmux pseudo-terminal; its exit status
    and the text of the pane (with its scroll-back) after it ended."""
    name = f"repalign-test-{uuid.uuid4().hex[:10]}"
    tmux = [TMUX, "-L", name, "-f", "/dev/null"]
    command = shlex.join([sys.executable, "-m", "repalign", *args])
    script = f"{command} > {name}.out; echo $? > {name}.rc; sleep 600"
    subprocess.run([*tmux, "new-session", "-d", "-s", name, "-x", "200", "-y", "50", "-c", str(folder), script], check=True)
    rc_file = folder / f"{name}.rc"
    try:
        deadline = time.monotonic() + 300
        while not (rc_file.exists() and rc_file.read_text().strip()):
            assert time.monotonic() < deadline, f"repalign {' '.join(args)} did not end within 300 s"
            time.sleep(0.2)
        screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", name, "-S", "-500"], capture_output=True, text=True,
                                check=True).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    return int(rc_file.read_text()), screen


def in_pipe(folder, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "repalign", *args], cwd=folder, capture_output=True, text=True)


# ---- the policy ------------------------------------------------------------------------------------


def test_bars_show_on_request_and_never_by_default_off_a_terminal():
    def drawn(setting, **options) -> str:
        err = io.StringIO()  # not a terminal
        with contextlib.redirect_stderr(err), progress_setting(setting):
            assert shows_bars() is (setting is True)
            for _ in progress(range(7), desc="steps", **options):
                pass
        return err.getvalue()

    assert re.search(FINISHED_BAR.format(desc="steps", n=7), drawn(True))
    assert drawn(None) == "" and drawn(False) == ""
    assert drawn(True, quiet=True) == ""
    with progress_setting(True):
        with progress_setting(False):
            assert not shows_bars()
        assert shows_bars()  # the setting before the block comes back


def test_show_progress_refuses_other_values():
    from repalign.progress import show_progress

    with pytest.raises(TypeError, match="True, False or None"):
        show_progress("yes")  # type: ignore[arg-type]


# ---- on a terminal ----------------------------------------------------------------------------------


@needs_tmux
def test_extract_draws_loading_and_sample_bars_on_a_terminal(workdir):
    rc, screen = in_terminal(workdir, "extract", "x.fasta", "-m", "onehot", "-o", "fresh.h5")
    assert rc == 0, screen
    assert re.search(FINISHED_BAR.format(desc="onehot: loading weights", n=1), screen), screen
    bar = re.search(FINISHED_BAR.format(desc="onehot", n=40) + r"[^\]]*tokens/s\]", screen)
    assert bar, screen


@needs_tmux
def test_compare_draws_layer_and_permutation_bars_on_a_terminal(workdir):
    rc, screen = in_terminal(workdir, "compare", "cache.h5", "--a", "onehot", "--b", "aa-composition", "--k", "3",
                             "--permutations", "19")
    assert rc == 0, screen
    assert re.search(FINISHED_BAR.format(desc="layers", n=2), screen), screen
    assert re.search(FINISHED_BAR.format(desc="permutations", n=19), screen), screen


@needs_tmux
def test_report_draws_bars_on_a_terminal(workdir):
    rc, screen = in_terminal(workdir, "report", "cache.h5", "-o", "report", "--k", "3", "--permutations", "19")
    assert rc == 0, screen
    # the outermost bar stays on screen (bars nested in it are cleared when done): whichever step it counts
    assert re.search(r"[\w ]+: 100%\|[^|]*\| (\d+)/\1 \[", screen), screen


@needs_tmux
@pytest.mark.parametrize("flag", ["--no-progress", "-q"])
def test_no_bars_on_a_terminal_with_no_progress_or_quiet(workdir, flag):
    rc, screen = in_terminal(workdir, "compare", "cache.h5", "--a", "onehot", "--b", "aa-composition", "--k", "3",
                             "--permutations", "19", flag)
    assert rc == 0, screen
    assert "permutations:" not in screen and "%|" not in screen, screen


@needs_tmux
def test_no_progress_before_the_command_applies_too(workdir):
    rc, screen = in_terminal(workdir, "--no-progress", "extract", "x.fasta", "-m", "onehot", "-o", "quiet.h5")
    assert rc == 0, screen
    assert "%|" not in screen and "loading weights" not in screen, screen


# ---- in a pipe --------------------------------------------------------------------------------------


def test_no_bar_text_when_standard_error_is_a_pipe(workdir):
    for args in (["extract", "x.fasta", "-m", "onehot", "-o", "piped.h5"],
                 ["compare", "cache.h5", "--a", "onehot", "--b", "aa-composition", "--k", "3", "--permutations", "19"]):
        done = in_pipe(workdir, *args)
        assert done.returncode == 0, done.stderr
        assert "%|" not in done.stderr and "\r" not in done.stderr and "it/s" not in done.stderr, done.stderr


def test_progress_flag_draws_bars_into_a_pipe(workdir):
    done = in_pipe(workdir, "compare", "cache.h5", "--a", "onehot", "--b", "aa-composition", "--k", "3",
                   "--permutations", "19", "--progress")
    assert done.returncode == 0, done.stderr
    assert re.search(FINISHED_BAR.format(desc="permutations", n=19), done.stderr), done.stderr
    assert "%|" not in done.stdout  # the summary on standard output carries no bar


def test_a_log_line_goes_above_an_open_bar():
    import logging

    err = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = root.handlers[:]
    root.handlers = [handler]
    try:
        with contextlib.redirect_stderr(err), progress_setting(True), bars_beside_logs():
            with progress(total=4, desc="steps") as bar:
                bar.update(2)
                logging.getLogger("repalign.test").warning("half way")
                bar.update(2)
    finally:
        root.handlers = saved
    pieces = re.split(r"[\r\n]", err.getvalue())
    assert "WARNING repalign.test: half way" in [p.strip() for p in pieces], err.getvalue()
    assert not any("half way" in p and "%|" in p for p in pieces)  # never on the bar's line
    assert re.search(FINISHED_BAR.format(desc="steps", n=4), err.getvalue())
