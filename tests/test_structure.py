"""The package reads top to bottom: imports follow the data flow one way, and no two modules import each other
(directly or round a longer loop), counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "imae"

# What the notebooks and the command line use (the top of the package): nothing below may import these.
TOP = {"imae.chapter", "imae.notebook", "imae.experiments", "imae.comparison", "imae.plots", "imae.plotdata",
       "imae.findings", "imae.reproduce", "imae.cli", "imae.evaluate_cli"}
# The engine and the measurements underneath them.
BELOW = ("imae.config", "imae.errors", "imae.runs", "imae.checkpoint", "imae.devices", "imae.parameters",
         "imae.controls", "imae.train", "imae.data", "imae.models", "imae.metrics")


def _modules() -> dict[str, Path]:
    """{dotted module name: file} of every module of the package (a package is named by its __init__)."""
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _targets(module: str, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> list[str]:
    """The dotted names an import statement of ``module`` refers to (``from . import x`` names module x when
    it is one, else the package)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = module if mods[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    if node.level:
        base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports}, module-level and function-level imports alike. Importing a
    parent package (``imae`` itself, or the package a module sits in) is not counted: Python runs the
    parent's ``__init__`` first anyway."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, node, mods):
                while target and target not in mods:  # `from .x import name`: the module x
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != module and target != "imae" and not module.startswith(target + "."):
                    edges[module].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm): every import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_and_relative_imports():
    edges = import_graph()
    assert "imae.train" in edges["imae.experiments"]  # imported inside cached_run
    assert "imae.evaluate_cli" in edges["imae.cli"]  # inside build_parser
    assert "imae.metrics.features" in edges["imae.metrics.separability"]  # from .features import ...


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, (f"import cycles: {found}. Fix: move what the lower module needs further down (e.g. into "
                       f"imae/runs.py or imae/config.py) so the imports go one way")


def test_nothing_below_the_notebook_layer_imports_it():
    edges = import_graph()
    upward = {f"{m} -> {t}" for m, targets in edges.items() if m.startswith(BELOW) for t in targets if t in TOP}
    assert not upward, (f"modules of the engine or the metrics import notebook-facing modules: {sorted(upward)}. "
                        f"Fix: move the needed function into a lower module")


def test_the_command_line_is_a_parent_and_its_evaluate_subcommand_a_child():
    edges = import_graph()
    assert "imae.evaluate_cli" in edges["imae.cli"] and "imae.cli" not in edges["imae.evaluate_cli"]
