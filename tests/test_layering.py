"""The library's shape: every import points down the layer order, no private name crosses a module, and no
function grows past what can be read at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cnn"
# Lower layers first; a module may import only from layers strictly below its own.
LAYERS = [
    {"config", "data", "disk", "host_memory", "compile_cache", "costs"},
    {"conv", "parallel", "checkpoints", "plots", "events", "augment"},
    {"layers", "receptive_field", "datasets.transforms", "datasets.splits", "applications.names"},
    {"datasets.prepared", "applications.weights", "members"},
    {"datasets.fashion_mnist", "datasets.image_folder", "datasets.lfw_faces", "summary", "surgery"},
    {"datasets", "applications.common"},
    {"applications.inception_v3", "applications.vgg16", "applications.resnet50", "applications.mobilenet_v2"},
    {"applications"},
    {"models.sources", "models.convnet", "models.wide_resnet"},
    {"models"},
    {"state"},
    {"steps", "placement"},
    {"evaluation"},
    {"run_folder", "resume", "explain", "assessment"},
    {"results"},
    {"bookkeeping"},
    {"train", "together"},
    {"sweep", "transfer", "viz", "bench", "classify", "export"},
    {"tune", "experiments", "run_report"},
    {"cli"},
    {"__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_FUNCTION_LINES = 60


def module_paths() -> dict[str, Path]:
    """Every module of the package by its dotted name under `cnn` (a package by its `__init__.py`)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
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
    assert sorted(set(module_paths()) - set(RANK)) == []


@pytest.mark.parametrize("module", sorted(module_paths()))
def test_imports_point_down_and_no_private_name_crosses(module):
    tree = ast.parse(module_paths()[module].read_text())
    for target, names, line in _imports(tree):
        assert target in RANK, f"{module}:{line} imports unknown module cnn.{target}"
        if module not in ("__init__", "__main__"):
            assert RANK[target] < RANK[module], f"{module}:{line} imports cnn.{target}, which is not below it"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{module}:{line} imports private names {private} from cnn.{target}"


@pytest.mark.parametrize("module", sorted(module_paths()))
def test_functions_are_short(module):
    tree = ast.parse(module_paths()[module].read_text())
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


def test_the_readme_layout_table_is_the_generated_one():
    """README's module table is `python scripts/readme_tables.py layout`: every module, in layer order, with
    the first sentence of its docstring; regenerate it after adding, moving or renaming a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "readme_tables", PACKAGE.parent / "scripts" / "readme_tables.py"
    )
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    generated = tables.layout_table()
    assert tables.block_text("layout") == generated, "run: python scripts/readme_tables.py layout"
    assert len(generated.splitlines()) == len(module_paths()) + 2
