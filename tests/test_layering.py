"""The library's shape: every import points down the layer order, no private name crosses a module, and no
function grows past what can be read at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cnn"
# The packages from the bottom: a module may import from its own package and from the packages below it,
# never from one above (`__init__` and `__main__`, the doors in, import what they open).
PACKAGES = ["errors", "config", "data", "models", "engine", "runs", "analysis", "train", "inference",
"studies",
            "cli", "__init__", "__main__"]  # fmt: skip
# Inside each package, its modules from the bottom: a module imports only modules of lower floors of its
# own package (a package's `__init__` holds its docstring alone and sits on the lowest floor).
FLOORS = {
    "data": [{"data", "data.spec", "data.splits", "data.transforms", "data.prepared"},
             {"data.fashion_mnist", "data.image_folder", "data.lfw_faces"},
             {"data.load"}],
    "models": [{"models", "models.applications", "models.applications.names", "models.conv",
    "models.computation",
                "models.preprocessing"},
               {"models.layers"},
               {"models.applications.common", "models.convnet", "models.cutting", "models.sources",
                "models.summary", "models.wide_resnet"},
               {"models.applications.inception_v3", "models.applications.mobilenet_v2",
                "models.applications.resnet50", "models.applications.vgg16", "models.applications.weights"},
               {"models.applications.networks"},
               {"models.registry"}],
    "engine": [{"engine", "engine.compile_cache", "engine.costs", "engine.host_memory", "engine.devices",
                "engine.augment", "engine.vmap"},
               {"engine.placement", "engine.state"},
               {"engine.epochs", "engine.steps"},
               {"engine.chunking", "engine.evaluation"}],
    "runs": [{"runs", "runs.disk", "runs.events", "runs.curves", "runs.lock", "runs.signals"},
             {"runs.checkpoints", "runs.folder"},
             {"runs.resume", "runs.outputs"},
             {"runs.results"},
             {"runs.record"}],
    "analysis": [{"analysis", "analysis.plots", "analysis.explain", "analysis.scores",
    "analysis.receptive_field"},
                 {"analysis.inputs"},
                 {"analysis.viz"},
                 {"analysis.report"}],
    "inference": [{"inference", "inference.predict", "inference.export"}],
    "studies": [{"studies", "studies.grid", "studies.grouping", "studies.queue", "studies.transfer"},
                {"studies.ahead", "studies.bench", "studies.space", "studies.storage", "studies.tables"},
                {"studies.overhead", "studies.sweep", "studies.tune"},
                {"studies.scripts"}],
    "cli": [{"cli", "cli.flags"},
            {"cli.bench", "cli.studies", "cli.train", "cli.use"},
            {"cli.main"}],
}  # fmt: skip
SINGLE = {"errors", "config", "train", "__init__", "__main__"}


def package_of(module: str) -> str:
    return module if module in SINGLE else module.split(".")[0]


RANK = {m: (PACKAGES.index(package_of(m)), 0) for m in SINGLE}
RANK |= {
    m: (PACKAGES.index(p), i) for p, floors in FLOORS.items() for i, floor in enumerate(floors) for m in floor
}
MAX_MODULE_LINES = 400
MAX_TOP_MODULES = 8
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
                subs = [n for n in names if f"{module}.{n}" in RANK]  # from cnn.data import lfw_faces
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
            mine, theirs = RANK[module], RANK[target]
            below = theirs[0] < mine[0] or (theirs[0] == mine[0] and theirs[1] < mine[1])
            assert below, f"{module}:{line} imports cnn.{target}, which is not below it"
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
    assert target == "train" and RANK[target] > RANK["engine.steps"] and names == ["_train_step"]


def test_modules_are_short_and_the_top_holds_only_what_a_reader_starts_from():
    """Every module fits the line budget; the top of the package holds at most 8 modules (the config, the
    training story, the errors, the doors in); every package's `__init__` is its docstring alone."""
    long = {
        name: n
        for name, p in module_paths().items()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
    assert len(list(PACKAGE.glob("*.py"))) <= MAX_TOP_MODULES
    for init in PACKAGE.glob("*/**/__init__.py"):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{init}: only a docstring"
        assert "May import" in ast.get_docstring(ast.parse(init.read_text())), (
            f"{init}: say what it may import"
        )


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
