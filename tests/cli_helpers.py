"""Running the `repalign` command line in the test process.

`main(argv)` is the whole CLI (parsing, one-line errors, exit codes), so most CLI tests call it
in-process: a `python -m repalign` subprocess costs seconds of interpreter start-up and imports per
call. Tests where the process boundary is the point (signals, resource limits, a fresh interpreter,
what reaches a pipe) keep real subprocesses, started with `default_signals`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import subprocess
import sys

from repalign.cli import main


def run_main(*args, cwd=None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`repalign ARGS` in this process: exit code, stdout and stderr as a subprocess would give them."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []  # so main's logging.basicConfig writes to this call's stderr, as in a fresh process
    saved_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(err))
            if cwd is not None:
                stack.enter_context(contextlib.chdir(cwd))
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's usage errors and --help
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, level = saved
        root.setLevel(level)
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(["repalign", *argv], code, out.getvalue(), err.getvalue())


def default_signals() -> None:
    """`preexec_fn` for a child the test will signal: SIGINT and SIGTERM at their default
    dispositions, also when the tests run as a background job of a non-interactive shell (which
    starts jobs with SIGINT ignored, a disposition that Python and its children would keep)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
