"""No import cycles between vmsbx's parts, read from the source (nothing is imported or run).

A node is a subpackage directly under vmsbx (vmsbx.agent.egress counts as `agent`) or a module
directly under it (vmsbx.contract, vmsbx.errors, vmsbx.paths each stand alone). An edge is any
`import` or `from ... import` in any .py file, relative ones resolved, wherever it is written:
at module top level, inside a function, or under `if TYPE_CHECKING:`. A function-level import
only defers a cycle to run time, and a TYPE_CHECKING import is still a dependency of the
module's meaning (mypy follows it), so counting all of them is what "no cycle" means here.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import vmsbx

PACKAGE_ROOT = Path(vmsbx.__file__).parent

# Edges that still close a cycle, each the one that goes against ARCHITECTURE.md's layering.
# They are being removed (issue 19); an entry here must still exist, and nothing may be added.
KNOWN_BACK_EDGES: frozenset[tuple[str, str]] = frozenset(
    {
        ("config", "providers"),  # config is data: the loader asks providers.walls for a VM's wall
        ("agent", "observe"),  # the sampler, an agent service, lives in observe/
        ("agent", "runs"),  # the host agent imports runs.record
    }
)

Edges = dict[tuple[str, str], list[str]]


def _module_name(path: Path) -> tuple[str, bool]:
    """The dotted module name of `path` and whether it is a package's __init__."""
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _node(module: str) -> str:
    """The graph node of a vmsbx module: its first component under vmsbx ("vmsbx" itself alone)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vmsbx"


def _imported_modules(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every module an import statement anywhere in `tree` names, absolute, with its line."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[str, int]] = []
    for statement in ast.walk(tree):
        if isinstance(statement, ast.Import):
            found.extend((alias.name, statement.lineno) for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            if statement.level:
                base = package[: len(package) - (statement.level - 1)]
                target = ".".join(base + ([statement.module] if statement.module else []))
            else:
                target = statement.module or ""
            found.append((target, statement.lineno))
            # `from vmsbx import errors` or `from . import x` names modules in its aliases.
            if statement.module is None or target == "vmsbx":
                found.extend((f"{target}.{alias.name}", statement.lineno) for alias in statement.names)
    return found


@functools.cache
def import_graph() -> Edges:
    """Edges between nodes, each with the file:line of every import that makes it."""
    edges: Edges = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        module, is_package = _module_name(path)
        source = _node(module)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target, line in _imported_modules(tree, module, is_package):
            if target != "vmsbx" and not target.startswith("vmsbx."):
                continue
            destination = _node(target)
            if destination != source:
                where = f"{path.relative_to(PACKAGE_ROOT.parent)}:{line}"
                edges.setdefault((source, destination), []).append(where)
    return edges


def strongly_connected(edges: Edges) -> list[list[str]]:
    """The groups of nodes that reach each other (Tarjan), only those of two or more."""
    successors: dict[str, list[str]] = {}
    for source, destination in edges:
        successors.setdefault(source, []).append(destination)
        successors.setdefault(destination, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in successors[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(successors):
        if node not in index:
            visit(node)
    return sorted(groups)


def _describe(groups: list[list[str]], edges: Edges) -> str:
    lines = []
    for group in groups:
        lines.append("cycle among " + ", ".join(group) + ":")
        for (source, destination), places in sorted(edges.items()):
            if source in group and destination in group:
                lines.append(f"  {source} -> {destination}: " + ", ".join(places))
    return "\n".join(lines)


def test_the_graph_sees_top_level_function_level_and_relative_imports() -> None:
    edges = import_graph()
    assert "vmsbx/agent/egress/rules.py:" in " ".join(edges[("agent", "config")])
    # vmsbx/config/loader.py asks vmsbx.providers.walls inside a function.
    assert any(place.startswith("vmsbx/config/loader.py:") for place in edges[("config", "providers")])
    assert all(source != destination for source, destination in edges)


def test_relative_and_function_level_imports_resolve() -> None:
    tree = ast.parse("from . import a\nfrom ..b import c\ndef f():\n    import vmsbx.d\n")
    found = [name for name, _ in _imported_modules(tree, "vmsbx.x.y", is_package=False)]
    assert found == ["vmsbx.x", "vmsbx.x.a", "vmsbx.b", "vmsbx.d"]


def test_no_import_cycle_but_the_known_ones() -> None:
    edges = import_graph()
    remaining = {edge: places for edge, places in edges.items() if edge not in KNOWN_BACK_EDGES}
    groups = strongly_connected(remaining)
    assert not groups, "import cycles between vmsbx parts:\n" + _describe(groups, remaining)


def test_each_known_back_edge_still_exists() -> None:
    edges = import_graph()
    gone = sorted(KNOWN_BACK_EDGES - set(edges))
    assert not gone, f"these edges are gone: drop them from KNOWN_BACK_EDGES: {gone}"


def test_config_imports_no_host_agent() -> None:
    edges = import_graph()
    assert ("config", "agent") not in edges, edges.get(("config", "agent"))


def test_the_transport_imports_no_provider() -> None:
    edges = import_graph()
    assert ("transport", "providers") not in edges, edges.get(("transport", "providers"))
