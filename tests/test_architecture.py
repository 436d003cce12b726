"""The architecture rules of docs/architecture.md, checked on the source: layers import downward
only, no import cycles (imports inside functions count), no function over 100 lines, and a
``mednca --help`` that does not load torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mednca"

#: Layer of each part of the package: a module may import its own layer and the ones below.
LAYERS = {
    "mednca.version": 0, "mednca.errors": 0, "mednca.config": 0, "mednca.fsutil": 0, "mednca.formats": 0,
    "mednca.runtime": 0, "mednca.checkpoint": 0, "mednca.argtypes": 0,
    "mednca.nn": 1, "mednca.data": 1,
    "mednca.pipeline": 2,
    "mednca.edge": 3,
    "mednca.experiments": 4,
    "mednca.web": 5,
    "mednca.cli": 6, "mednca.__main__": 6, "mednca": 6,
}
#: Parts of one layer that must not import each other.
INDEPENDENT = {("mednca.nn", "mednca.data"), ("mednca.data", "mednca.nn")}
MAX_FUNCTION_LINES = 100


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """The key of :data:`LAYERS` a module belongs to (the longest matching prefix)."""
    best = max((key for key in LAYERS if module == key or module.startswith(key + ".")), key=len, default=None)
    if best is None:
        raise KeyError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")
    return best


def imports_of(path: Path) -> set[str]:
    """mednca modules imported anywhere in a file (module level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mednca")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mednca":
                continue
            # "from . import x" / "from .pkg import mod" may name submodules
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if (SRC / (sub.replace(".", "/") + ".py")).exists()
                          or (SRC / sub.replace(".", "/")).is_dir() else target)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up a layer or across independent parts."""
    bad = []
    for module, targets in graph.items():
        here = part_of(module)
        for target in sorted(targets):
            there = part_of(target)
            if LAYERS[there] > LAYERS[here] or (here, there) in INDEPENDENT:
                bad.append(f"{module} ({here}, layer {LAYERS[here]}) imports {target} ({there}, layer {LAYERS[there]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first search (each reported once per start)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    return out


# -- the rules ------------------------------------------------------------------------------------
def test_every_module_has_a_layer():
    for module in import_graph():
        part_of(module)  # raises for a module outside every layer


def test_imports_go_down_the_layers_only():
    assert layer_violations(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_function_over_100_lines():
    assert long_functions() == []


def test_help_does_not_import_torch():
    code = ("import sys; from mednca.cli import build_parser; build_parser().format_help(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the checks themselves can fail ------------------------------------------------------------------
def test_checker_finds_an_upward_import_and_a_cycle():
    graph = {"mednca.nn.model": {"mednca.pipeline.train"}, "mednca.pipeline.train": {"mednca.nn.model"},
             "mednca.data.cases": {"mednca.nn.level"}}
    assert any("mednca.nn.model" in v and "pipeline" in v for v in layer_violations(graph))
    assert any("mednca.data.cases" in v for v in layer_violations(graph))  # across independent parts
    assert cycles(graph) == [["mednca.nn.model", "mednca.pipeline.train", "mednca.nn.model"]]


def test_checker_reads_imports_inside_functions(tmp_path, monkeypatch):
    pkg = tmp_path / "mednca" / "nn"
    pkg.mkdir(parents=True)
    (tmp_path / "mednca" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from ..pipeline import train\n    from . import y\n")
    (pkg / "y.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert imports_of(pkg / "x.py") == {"mednca.pipeline", "mednca.nn.y"}


def test_checker_finds_a_long_function(tmp_path, monkeypatch):
    pkg = tmp_path / "mednca"
    pkg.mkdir()
    (pkg / "long.py").write_text("def f():\n" + "    x = 1\n" * 100)
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert long_functions() == ["mednca/long.py:1 f (101 lines)"]


@pytest.mark.parametrize("module", ["mednca.nn.unet", "mednca.pipeline.train", "mednca.cli.pipeline"])
def test_every_layer_is_known(module):
    assert part_of(module) in LAYERS
