"""The shape of lab/, read from its source: every import between its modules (at the top or inside a
function), no cycles, nothing below importing upward, and no module reaching into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

LAB = ROOT / "lab"
# Lower layers first; a module may import its own layer and those before it, never one after it.
LAYERS = [
    {"lab", "lab.errors", "lab.interface", "lab.config", "lab.runtime", "lab.pump", "lab.db"},
    {"lab.engine"},
    {"lab.models"},
    {"lab.chat", "lab.eval", "lab.compare"},
    {"lab.cli", "lab.space", "lab.spaces", "lab.serve", "lab.ui", "lab.bench", "lab.eval.__main__"},
]
# The middle layer calls models only through the interface: it imports no backend and no engine.
MIDDLE_MAY_NOT = ("lab.models", "lab.engine")
# Private names of other libraries that are their documented way in (PyTorch's compiler and CUDA internals).
FOREIGN = {"_dynamo", "_C", "_cuda_clearCublasWorkspaces", "_scaled_dot_product_flash_attention",
           "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
           "_exit", "_getframe", "_get_default_executor", "_asdict"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(LAB.rglob("*.py"))}


def lab_imports(name: str) -> set[str]:
    """The lab modules `name` imports, anywhere in its source (resolved to modules, not names in them)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t.startswith("lab") and t != name:
                found.add(t)
    # a module's own package __init__ is not an import of something else
    return {t for t in found if not name.startswith(t + ".") or t == "lab"} - {"lab"}


GRAPH = {name: lab_imports(name) for name in MODULES}


def layer(name: str) -> int:
    """The layer of the most specific entry that holds `name` (lab.eval.__main__ is a CLI, lab.eval is not)."""
    found = [(len(m), i) for i, members in enumerate(LAYERS) for m in members
             if name == m or (m != "lab" and name.startswith(m + "."))]
    assert found, f"{name} belongs to no layer; add it to LAYERS"
    return max(found)[1]


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_nothing_imports_upward():
    upward = [(a, b) for a, deps in GRAPH.items() for b in deps if layer(b) > layer(a)]
    assert not upward, upward


def test_the_middle_layer_talks_to_models_through_the_interface():
    reaching = [(a, b) for a, deps in GRAPH.items() if layer(a) == 3 for b in deps if b.startswith(MIDDLE_MAY_NOT)]
    assert not reaching, reaching


def test_no_import_cycles():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(GRAPH[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(GRAPH):
        if n not in state:
            visit(n)


def test_the_ui_is_a_leaf():
    assert not [a for a, deps in GRAPH.items() if not a.startswith("lab.ui") and any(d.startswith("lab.ui") for d in deps)]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(name):
    """`x._name` is only for `self`/`cls` (a class's own) and for names the module defines itself."""
    source = MODULES[name].read_text(encoding="utf-8")
    tree = ast.parse(source)
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
    own |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lab"):
            bad += [f"imports {a.name} from {node.module}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if node.attr in own or node.attr in FOREIGN:
                continue
            bad.append(f"line {node.lineno}: .{node.attr}")
    assert not bad, bad
