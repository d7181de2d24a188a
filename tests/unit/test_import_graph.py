"""No import cycles in src/berth: no module imports one that imports it back, directly or transitively.

The graph is read from the source with ast: every ``import`` / ``from ... import`` of a berth module, at
module level or inside a function (a late import still runs), except under ``if TYPE_CHECKING:`` (never
runs). ``from package import name`` counts as importing the submodule when ``name`` is one, else the
package. Importing a submodule runs its package's ``__init__`` too, but that is Python's doing, not an
edge we draw: a package that imports its own submodules is the normal shape, not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "berth").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def target(module: str) -> None:
        while module and module not in modules:  # `import berth.x.y` of a function: its module
            module = module.rpartition(".")[0]
        if module and module != name:
            found.add(module)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("berth"):
                    target(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("berth"):
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    target(sub if sub in modules else module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_graph_sees_imports():
    graph = import_graph()
    assert "berth.agent.supervisor" in graph
    assert "berth.agent.apps" in graph["berth.agent.supervisor"]
    assert graph["berth.agent.ssh.openssh"] >= {"berth.agent.ssh.process"}


def test_supervisor_and_worker_name_no_app_and_no_backend():
    """They reach apps and backends through their registries and contracts only (issue #8)."""
    graph = import_graph()
    specific = ("berth.agent.apps.ssh_session", "berth.agent.backends.process", "berth.agent.ssh", "berth.agent.setup")
    for module in ("berth.agent.supervisor", "berth.agent.worker"):
        named = {m for m in graph[module] if m.startswith(specific)}
        assert not named, f"{module} imports {sorted(named)}"


def test_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []
