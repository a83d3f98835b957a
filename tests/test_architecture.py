"""Package architecture: no import cycles between the modules of urlk_forecast, and the command line is a leaf
(nothing outside ``urlk_forecast/cli/`` imports it). Static (ast only, nothing is imported), so it runs in
well under a second."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import urlk_forecast

PKG_DIR = Path(urlk_forecast.__file__).resolve().parent
PKG = PKG_DIR.name


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (``__init__`` names its package)."""
    out = {}
    for path in sorted(PKG_DIR.rglob("*.py")):
        parts = (PKG, *path.relative_to(PKG_DIR).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run when the module is imported: the body, ``if``/``try``/``with`` blocks and class bodies, but
    not function bodies nor ``if TYPE_CHECKING:`` blocks (their ``else`` branch does run)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _module_level(node.body)


def _targets(node: ast.stmt, module: str) -> Iterator[str]:
    """Modules of the package that an import statement in ``module`` loads (the named module itself)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            yield sub if sub in MODULES else base


def _imports(module: str, everywhere: bool) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    nodes = ast.walk(tree) if everywhere else _module_level(tree.body)
    found = set()
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(t for t in _targets(node, module) if t in MODULES and t != module)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_to_package_modules() -> None:
    graph = _imports(f"{PKG}.models.forecast_net", everywhere=False)
    assert {f"{PKG}.models.encoders", f"{PKG}.models.registry", f"{PKG}.utils"} <= graph


def test_no_import_cycles() -> None:
    graph = {m: _imports(m, everywhere=False) for m in MODULES}
    assert import_cycles(graph) == []


def test_the_cli_is_a_leaf() -> None:
    cli = f"{PKG}.cli"
    if not (PKG_DIR / "cli").is_dir():
        return  # the package is being created; until then there is nothing to check
    offenders = {m: sorted(t for t in _imports(m, everywhere=True) if t == cli or t.startswith(cli + "."))
                 for m in MODULES if m != cli and not m.startswith(cli + ".")}
    assert {m: t for m, t in offenders.items() if t} == {}
