"""The shape of the code (docs/architecture.md): imports flow one way, no private name crosses a
module boundary, first-party imports sit at module top unless a comment says why, functions stay
short. Read with ``ast`` from the source files, so a rule names every offender at once."""

from __future__ import annotations

import ast
import functools
import io
import os
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

from embeddings_cache import Cache, CacheError
from repalign.errors import InvalidInput, ModelUnavailable, RepalignError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("repalign", "embeddings_cache", "esmfold2_model", "analyses")
#: package -> first-party packages it must never import: the store stands alone, studies sit on top,
#: and esmfold2_model is reached through its registry strings only
FORBIDDEN = {
    "embeddings_cache": ("repalign", "esmfold2_model", "analyses"),
    "repalign": ("analyses", "esmfold2_model"),
    "esmfold2_model": ("analyses",),
}
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. repalign.metrics.knn
    path: Path
    tree: ast.Module
    comment_lines: frozenset[int]  # lines holding a comment that explains something (not a bare noqa)

    @property
    def package(self) -> str:
        """The package the module lives in (itself for an __init__)."""
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(ROOT)}:{node.lineno}"


def _comment_lines(source: str) -> frozenset[int]:
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip().lower()
            if text and not text.startswith(("noqa", "type: ignore")):
                lines.add(tok.start[0])
    return frozenset(lines)


@functools.cache
def modules() -> tuple[Module, ...]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            source = path.read_text()
            found.append(Module(name, path, ast.parse(source, str(path)), _comment_lines(source)))
    return tuple(found)


def imported(module: Module, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(absolute module, imported name or None) for each alias of an import statement."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.package.split(".")[: len(module.package.split(".")) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    return [(base, alias.name) for alias in node.names]


def first_party(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def inside(package: str, owner: str) -> bool:
    return package == owner or package.startswith(owner + ".")


def private_crossings(module: Module, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The private names an import statement takes from another module: ``from m import _x``, or any
    module path with a private part (``pkg._mod``) imported from outside ``pkg``."""
    bad = []
    for target, name in imported(module, node):
        if not first_party(target):
            continue
        parts = target.split(".")
        for i, part in enumerate(parts):
            if private(part) and not inside(module.package, ".".join(parts[:i])):
                bad.append(target)
                break
        if name is not None and private(name):
            # a package's own private submodule (from repalign.metrics import _numba inside repalign.metrics)
            is_own_submodule = (Path(ROOT, *parts, name + ".py").exists() or Path(ROOT, *parts, name).is_dir()) and inside(
                module.package, target
            )
            if not is_own_submodule:
                bad.append(f"{target}.{name}")
    return bad


def function_nodes(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def statement_lists(node: ast.AST):
    """Every list of statements under ``node`` (bodies, else branches, handlers, ...)."""
    for child in ast.walk(node):
        for field in ("body", "orelse", "finalbody"):
            value = getattr(child, field, None)
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                yield value


def lazy_import_groups(tree: ast.Module):
    """Runs of consecutive import statements inside functions (a comment may cover one run)."""
    seen = set()
    for function in function_nodes(tree):
        for body in statement_lists(function):
            run: list[ast.stmt] = []
            for stmt in [*body, None]:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    run.append(stmt)
                    continue
                if run and id(run[0]) not in seen:
                    seen.add(id(run[0]))
                    yield run
                run = []


# ---- the rules --------------------------------------------------------------------------------------


def layering_offenders() -> list[str]:
    out = []
    for module in modules():
        forbidden = FORBIDDEN.get(module.name.split(".")[0], ())
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, _ in imported(module, node):
                    if target.split(".")[0] in forbidden:
                        out.append(f"{module.where(node)} imports {target}")
    return out


def long_function_offenders() -> list[str]:
    out = []
    for module in modules():
        for node in function_nodes(module.tree):
            length = node.end_lineno - node.lineno + 1
            argument_parser = node.name == "build_parser" or node.name.endswith("_parser")
            if length > MAX_FUNCTION_LINES and not argument_parser:
                out.append(f"{module.where(node)} {node.name}: {length} lines")
    return out


def private_import_offenders() -> list[str]:
    out = []
    for module in modules():
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out += [f"{module.where(node)} imports {name}" for name in dict.fromkeys(private_crossings(module, node))]
    return out


def unexplained_lazy_import_offenders() -> list[str]:
    out = []
    for module in modules():
        for run in lazy_import_groups(module.tree):
            targets = [t for stmt in run for t, _ in imported(module, stmt) if first_party(t)]
            covered = range(run[0].lineno - 1, run[-1].end_lineno + 1)
            if targets and not any(line in module.comment_lines for line in covered):
                out.append(f"{module.where(run[0])} imports {', '.join(sorted(set(targets)))} inside a function without a comment")
    return out


def import_graph() -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports, anywhere in its source (function-level
    imports too) but under ``if TYPE_CHECKING:``; ``from pkg import sub`` is an edge to the submodule."""
    names = {m.name for m in modules()}
    graph: dict[str, set[str]] = {}
    for module in modules():
        typing_only = {id(n) for node in ast.walk(module.tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        edges = graph.setdefault(module.name, set())
        for node in ast.walk(module.tree):
            if id(node) in typing_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, name in imported(module, node):
                target = f"{target}.{name}" if name and f"{target}.{name}" in names else target
                while target and target not in names:
                    target = target.rpartition(".")[0]
                if target and target != module.name:
                    edges.add(target)
    return graph


def import_cycle_offenders() -> list[str]:
    """Every import cycle between first-party modules (strongly connected components, Tarjan)."""
    graph, index, low, stack, out = import_graph(), {}, {}, [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(" <-> ".join(sorted(component)))

    for v in graph:
        if v not in index:
            visit(v)
    return out


#: the modules of analyses/ that studies share; every other module of analyses/ is a study
STUDY_SHARED = ("analyses", "analyses.common", "analyses.datasets", "analyses.atomistic", "analyses.families")


def study_import_offenders() -> list[str]:
    """Studies share code through analyses' shared modules, never by importing each other."""
    out = []
    for module in modules():
        if not module.name.startswith("analyses") or module.name in STUDY_SHARED:
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, name in imported(module, node):
                    full = f"{target}.{name}" if name else target
                    study = next((m.name for m in modules() if m.name in (target, full) and m.name.startswith("analyses.")
                                  and m.name not in STUDY_SHARED), None)
                    if study is not None and study != module.name:
                        out.append(f"{module.where(node)} imports the study {study}")
    return list(dict.fromkeys(out))


RULES = {
    "layering": layering_offenders,
    "studies apart": study_import_offenders,
    "no import cycles": import_cycle_offenders,
    "long functions": long_function_offenders,
    "private imports": private_import_offenders,
    "unexplained lazy imports": unexplained_lazy_import_offenders,
}


@pytest.mark.parametrize("rule", RULES)
def test_layout_rule(rule):
    offenders = RULES[rule]()
    assert not offenders, f"{rule}:\n" + "\n".join(offenders)


# ---- the checker itself, on small sources -----------------------------------------------------------


def _module(name: str, source: str, init: bool = False) -> Module:
    parts = name.split(".")
    path = ROOT.joinpath(*parts, "__init__.py") if init else ROOT.joinpath(*parts[:-1], parts[-1] + ".py")
    return Module(name, path, ast.parse(source), _comment_lines(source))


def test_private_crossings_tell_package_private_from_foreign():
    inner = _module("repalign.metrics.knn", "from repalign.metrics._numba import topk\nfrom repalign.metrics import _numba\n")
    outer = _module("repalign.stats", "from repalign.metrics._validate import as_features\nfrom repalign.extract import _extract_one\n")
    found = [bad for m in (inner, outer) for node in m.tree.body for bad in private_crossings(m, node)]
    assert found == ["repalign.metrics._validate", "repalign.extract._extract_one"]


def test_a_comment_covers_one_run_of_lazy_imports():
    source = (
        "def f():\n"
        "    # lazy: optional extra\n"
        "    import torch\n"
        "    from repalign.models import get_adapter\n"
        "    x = 1\n"
        "    from repalign.extract import extract\n"
        "    return x\n"
    )
    m = _module("repalign.demo", source)
    runs = [[stmt.lineno for stmt in run] for run in lazy_import_groups(m.tree)]
    assert runs == [[3, 4], [6]]
    assert [line for line in m.comment_lines] == [2]


def test_relative_imports_resolve_against_the_package():
    m = _module("repalign.metrics", "from . import _numba\nfrom ..errors import RepalignError\n", init=True)
    assert [imported(m, node) for node in m.tree.body] == [[("repalign.metrics", "_numba")], [("repalign.errors", "RepalignError")]]


# ---- the store stands alone ------------------------------------------------------------------------


def test_embeddings_cache_imports_without_repalign():
    names = sorted(p.stem for p in (ROOT / "embeddings_cache").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module('embeddings_cache.' + name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('repalign', 'esmfold2_model', 'analyses')))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_one_error_class_catches_the_store_and_the_toolkit():
    assert all(issubclass(cls, RepalignError) for cls in (CacheError, InvalidInput, ModelUnavailable))
    with pytest.raises(RepalignError, match="no cache at"):
        Cache(ROOT / "no-such-cache.h5")
