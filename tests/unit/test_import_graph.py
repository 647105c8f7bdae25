"""The package graph of edge_agent has no cycle (issue 13): e.g. engine/ and model/ both read artifact/, and
model/ may use engine/, never the other way round. Read from the source (every import, function-level ones too;
`if TYPE_CHECKING:` blocks aside, they never run)."""

import ast
from pathlib import Path

import edge_agent

ROOT = Path(edge_agent.__file__).parent


def _unit(module: str) -> str | None:
    """The top-level part of edge_agent a dotted module belongs to: a subpackage or a flat module."""
    parts = module.split(".")
    return parts[1] if parts[0] == "edge_agent" and len(parts) > 1 else None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(relative.parts)
        package = parts[:-1]  # what a relative import starts from, for a module and an __init__ alike
        source = _unit(".".join(parts))
        if source is None:  # edge_agent/__init__.py
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [prefix] if node.module else [f"{prefix}.{alias.name}" for alias in node.names]
            for target in targets:
                unit = _unit(target)
                if unit is not None and unit != source:
                    graph.setdefault(source, set()).add(unit)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as a path [a, b, ..., a], or [] when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_graph_is_read_from_real_imports():
    graph = import_graph()
    assert "artifact" in graph["engine"] and "artifact" in graph["model"]
    assert "engine" in graph["model"]  # the build verifies with the engine


def test_engine_model_and_artifact_form_no_cycle():
    graph = import_graph()
    assert "model" not in graph.get("engine", set())
    assert not graph.get("artifact", set()) - {"errors"}  # the format depends on nothing but the error tree


def test_the_package_graph_is_acyclic():
    assert find_cycle(import_graph()) == []


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) == []
