"""The house reads top-down: benchmarks -> rl -> mi_estimators, and no module of `rl` imports itself back.

The import graph is built statically (ast), so a test run imports nothing. Every import counts, at module level or
inside a function (a lazy import is still a dependency, one that only shows up at run time), and so does
``importlib.import_module("literal")``; only imports under ``if TYPE_CHECKING:`` are left out (they never run).

An edge goes to the module whose namespace an import reads: ``import a.b`` and ``from a.b import c`` -> ``a.b``,
plus ``a.b.c`` when that is a submodule. The implicit import of parent packages (``a`` runs before ``a.b``) is not an
edge: a package ``__init__`` that re-exports its submodules would otherwise be "in a cycle" with each of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rl", "mi_estimators", "benchmarks")


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under each package directory of `root`."""
    out: dict[str, Path] = {}
    for pkg in packages:
        base = root / pkg
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` except the bodies of ``if TYPE_CHECKING:`` (their ``else`` still counts)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports (``from a import b`` gives ``a`` and ``a.b``), relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (
                fname in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value)
    return {n for n in names if n}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports (names outside the project, e.g. torch, are dropped)."""
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(module, path):
            # `from a.b import f` names a.b.f, which is no module: the edge goes to a.b
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]], within: str) -> list[str] | None:
    """A cycle among the modules of package `within` (``[a, b, ..., a]``), or None."""
    nodes = sorted(m for m in graph if m == within or m.startswith(within + "."))
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if n not in graph or not (n == within or n.startswith(within + ".")):
                continue
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in nodes:
        if m not in state and (found := visit(m)):
            return found
    return None


def _imports_of(graph: dict[str, set[str]], src: str, dst: str) -> list[str]:
    inside = lambda m, pkg: m == pkg or m.startswith(pkg + ".")  # noqa: E731
    return sorted(f"{m} -> {n}" for m in graph if inside(m, src) for n in graph[m] if inside(n, dst))


def test_rl_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "rl.data.generate" in graph and "rl.collect" in graph  # the graph sees the package
    cycle = find_cycle(graph, "rl")
    assert cycle is None, "import cycle in rl: " + " -> ".join(cycle or [])


def test_layers_read_top_down() -> None:
    graph = import_graph()
    assert not _imports_of(graph, "mi_estimators", "rl"), "mi_estimators must not import rl"
    assert not _imports_of(graph, "mi_estimators", "benchmarks"), "mi_estimators must not import benchmarks"
    assert not _imports_of(graph, "rl", "benchmarks"), "rl must not import benchmarks"
    assert _imports_of(graph, "rl", "mi_estimators")  # the direction that is allowed is seen


def test_the_graph_sees_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    """The checker itself: a cycle closed by a function-level or importlib import is found; TYPE_CHECKING is not."""
    pkg = tmp_path / "rl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from rl.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from rl import a\n")
    assert find_cycle(import_graph(tmp_path), "rl") == ["rl.a", "rl.b", "rl.a"]
    (pkg / "b.py").write_text("import importlib\n\ndef f():\n    return importlib.import_module('rl.a')\n")
    assert find_cycle(import_graph(tmp_path), "rl") == ["rl.a", "rl.b", "rl.a"]
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from rl.a import X\n\ndef f():\n    pass\n"
    )
    assert find_cycle(import_graph(tmp_path), "rl") is None
    (pkg / "b.py").write_text("from . import a\n")  # relative imports resolve too
    assert find_cycle(import_graph(tmp_path), "rl") == ["rl.a", "rl.b", "rl.a"]
