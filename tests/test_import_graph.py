"""The package's modules import one another without a cycle, and each layer only downwards.

The graph is read from the source (every import, those inside functions too, except under
``if TYPE_CHECKING:``, which runs for type checkers only). A package's ``__init__`` gathers
names for users and is no node: the modules import each other directly.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "sysgenid_async"

#: Layers, bottom up: a module may import its own layer's modules and lower layers' only.
LAYERS = [
    {"uapi", "_version", "timeouts", "errors", "rawfile", "device"},
    {"handle", "edge_reader", "async_device", "blocking", "changes"},
    {"restore"},
    {"integrations", "testing", "selftest", "demo", "cli", "__main__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name in packages:
            continue
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                bases = [alias.name for alias in node.names]
                candidates = bases
            else:
                if node.level:
                    base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            targets |= {c for c in candidates if c in modules and c not in packages}
        graph[name] = targets - {name}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")[1:]
    top = parts[0] if parts else "__init__"
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_there_is_no_import_cycle() -> None:
    graph = _graph()
    assert "sysgenid_async.restore.gate" in graph and graph["sysgenid_async.restore.hooks"]
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"an import cycle: {' -> '.join(exc.args[1])}")
    assert set(order) >= set(graph)


def test_no_layer_imports_a_layer_above_it() -> None:
    for module in _graph():
            _layer(module)  # every module has its place
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_graph_sees_a_cycle() -> None:
    """The check itself: the cycle the restore layer once had (hooks <-> gate) is found."""
    graph = {"a.hooks": {"a.gate"}, "a.gate": {"a.hooks"}}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())
