"""cloud_sync has no import loops (issue 14): the modules it imports when they are imported (top-level imports,
not those inside functions or under ``if TYPE_CHECKING:``) form an acyclic graph."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "cloud_sync"
PKG = "edgefleet.cloud_sync"


def _module_names() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([PKG, *parts])] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: module level, and inside top-level if/try blocks other than
    ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                test = node.test
                name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
                if name != "TYPE_CHECKING":
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    visit(block)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _module_names()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if _is_package(path) else name.rpartition(".")[0]
        targets: list[str] = []
        for node in _top_level_imports(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets.append(mod)
            targets += [f"{mod}.{a.name}" for a in node.names]  # `from pkg import submodule`
        own_ancestors = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
        for t in targets:
            # importing a module runs its packages' __init__ too (but the importer's own packages already run)
            chain = [t.rsplit(".", k)[0] for k in range(t.count(".") + 1)]
            for m in chain:
                if m in modules and m != name and m not in own_ancestors:
                    graph[name].add(m)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = GREY
        stack.append(n)
        for m in sorted(graph[n]):
            if color[m] == GREY:
                return stack[stack.index(m):] + [m]
            if color[m] == WHITE and (cycle := visit(m)):
                return cycle
        stack.pop()
        color[n] = BLACK
        return None

    for n in sorted(graph):
        if color[n] == WHITE and (cycle := visit(n)):
            return cycle
    return None


def test_the_graph_is_built_from_cloud_sync() -> None:
    graph = import_graph()
    assert f"{PKG}.wire.protocol" in graph[f"{PKG}.wire.transfer"]
    assert f"{PKG}.device.machine" in graph[f"{PKG}.device.driver"]
    assert f"{PKG}.wire" in graph[f"{PKG}.device.driver"]  # a package's __init__ runs on import of its module
    assert f"{PKG}.device" not in graph[f"{PKG}.device.driver"]  # its own package is already being imported


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_cloud_sync_has_no_import_loops() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import loop: " + " -> ".join(cycle or [])
