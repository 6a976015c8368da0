"""The house reads top-down: benchmarks -> rl -> mi_estimators, and no module of `rl` imports itself back.

Inside `rl`, the dataset factory (`rl.collect`: SAC behaviour policies, generation, reference measurement, shipped
checkpoints) sits above the reader (`rl.data`): the reader imports the factory only lazily, in the one hook that
generates the project's own dataset names on first use. See docs/architecture.md.

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

import pytest

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


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _nodes(tree: ast.AST, lazy: bool = True) -> Iterator[ast.AST]:
    """Every node of `tree` except the bodies of ``if TYPE_CHECKING:`` (their ``else`` still counts); without
    `lazy`, also except function bodies (what runs when the module is imported, not when it is called)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if not lazy and isinstance(node, _FUNCTIONS):
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(module: str, path: Path, lazy: bool = True) -> set[str]:
    """Every dotted name `module` imports (``from a import b`` gives ``a`` and ``a.b``), relative imports resolved;
    without `lazy`, only the imports that run when the module is imported (none inside a function)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _nodes(tree, lazy):
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


def import_graph(root: Path = ROOT, lazy: bool = True) -> dict[str, set[str]]:
    """Module -> the project modules it imports (names outside the project, e.g. torch, are dropped); without
    `lazy`, only the imports that run at import time."""
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(module, path, lazy):
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
    assert "rl.collect.generate" in graph and "rl.data.load" in graph  # the graph sees the package
    cycle = find_cycle(graph, "rl")
    assert cycle is None, "import cycle in rl: " + " -> ".join(cycle or [])


def test_layers_read_top_down() -> None:
    graph = import_graph()
    assert not _imports_of(graph, "mi_estimators", "rl"), "mi_estimators must not import rl"
    assert not _imports_of(graph, "mi_estimators", "benchmarks"), "mi_estimators must not import benchmarks"
    assert not _imports_of(graph, "rl", "benchmarks"), "rl must not import benchmarks"
    assert _imports_of(graph, "rl", "mi_estimators")  # the direction that is allowed is seen


def test_the_reader_needs_no_factory() -> None:
    """`rl.data` imports nothing of `rl.collect` when it is imported; its one lazy import of the factory is the
    generate-on-first-use hook of `rl.data.load` for the project's own names."""
    eager = _imports_of(import_graph(lazy=False), "rl.data", "rl.collect")
    assert not eager, f"the reader imports the dataset factory at import time: {eager}"
    assert _imports_of(import_graph(), "rl.data", "rl.collect") == ["rl.data.load -> rl.collect.generate"]


def test_the_factory_is_one_package() -> None:
    """The D4RL-style dataset factory lives in `rl.collect`; the old module paths are gone (no shims)."""
    files = module_files(ROOT)
    for module in ("rl.collect", "rl.collect.generate", "rl.collect.sac", "rl.collect.snapshots"):
        assert module in files, module
    for gone in ("rl.sac", "rl.references", "rl.snapshots", "rl.data.generate"):
        assert gone not in files, f"{gone} moved (rl.collect, rl.data.references); no shim stays behind"
    assert not (ROOT / "rl" / "checkpoints").exists() and not (ROOT / "rl" / "references").exists()


def test_package_data_globs_match_the_shipped_files() -> None:
    """Every package-data pattern of pyproject.toml matches files, and every shipped file is matched by one."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    matched = set()
    for package, patterns in table.items():
        base = ROOT.joinpath(*package.split("."))
        for pattern in patterns:
            found = sorted(base.glob(pattern))
            assert found, f"package-data {package}: {pattern!r} matches nothing under {base}"
            matched.update(found)
    shipped = {
        *(ROOT / "rl/collect/checkpoints").glob("*.pt"),
        *(ROOT / "rl/collect/checkpoints").glob("*.json"),
    }
    shipped |= set((ROOT / "rl/data/references").glob("*.json"))
    assert shipped and shipped <= matched, sorted(str(p) for p in shipped - matched)


def test_no_compatibility_reexports_in_rl() -> None:
    """``from a import b as b`` (the re-export idiom) keeps an old name alive for no one; import from where it lives."""
    found = []
    for module, path in module_files(ROOT, ("rl",)).items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found += [f"{module}: {a.name} as {a.asname}" for a in node.names if a.asname == a.name]
    assert not found, found


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
