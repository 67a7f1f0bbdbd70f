"""The library's shape: every import points down the layer order, no private name crosses a module, and no
function grows past what can be read at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cnn"
# Lower layers first; a module may import only from layers strictly below its own.
LAYERS = [
    {"disk", "host_memory"},
    {"conv", "data", "parallel", "checkpoints", "plots", "events"},
    {"layers", "datasets.transforms", "applications.names"},
    {"applications.weights"},
    {"summary", "surgery", "applications.common"},
    {"applications.inception_v3", "applications.vgg16", "applications.resnet50", "applications.mobilenet_v2"},
    {"applications"},
    {"models"},
    {"config"},
    {"datasets.lfw_faces", "datasets.image_folder"},
    {"datasets", "steps"},
    {"rundir"},
    {"train"},
    {"sweep", "transfer", "viz", "bench"},
    {"tune"},
    {"cli"},
    {"__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)
        found[name] = path
    return found


def _imports(tree: ast.AST) -> list[tuple[str, list[str], int]]:
    """(cnn module, imported names, line) of every import of the package, at any depth (lazy ones too)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnn"):
            module = node.module.removeprefix("cnn").lstrip(".")
            names = [a.name for a in node.names]
            if not module:  # from cnn import conv, data
                out += [(n, [], node.lineno) for n in names if n in RANK]
            else:
                subs = [n for n in names if f"{module}.{n}" in RANK]  # from cnn.datasets import lfw_faces
                out += [(f"{module}.{n}", [], node.lineno) for n in subs]
                if len(subs) < len(names):
                    out.append((module, [n for n in names if n not in subs], node.lineno))
        elif isinstance(node, ast.Import):
            out += [
                (a.name.removeprefix("cnn."), [], node.lineno)
                for a in node.names
                if a.name.startswith("cnn.")
            ]
    return out


def test_every_module_has_a_layer():
    assert sorted(set(_modules()) - set(RANK)) == []


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_point_down_and_no_private_name_crosses(module):
    tree = ast.parse(_modules()[module].read_text())
    for target, names, line in _imports(tree):
        assert target in RANK, f"{module}:{line} imports unknown module cnn.{target}"
        if module not in ("__init__", "__main__"):
            assert RANK[target] < RANK[module], f"{module}:{line} imports cnn.{target}, which is not below it"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{module}:{line} imports private names {private} from cnn.{target}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_functions_are_short(module):
    tree = ast.parse(_modules()[module].read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checker_sees_a_violation(tmp_path):
    tree = ast.parse("def f():\n    from cnn.train import _train_step\n")
    ((target, names, _),) = _imports(tree)
    assert target == "train" and RANK[target] > RANK["steps"] and names == ["_train_step"]
