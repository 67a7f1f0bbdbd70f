"""Every research notebook runs top to bottom, and none is committed with outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from cnn.data import fashion_mnist as data
from tests.conftest import REAL_INSTALLED, write_dataset

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# What a notebook must print: the results the sources print for their worked examples.
PRINTS = {
    "00_from_the_textbook.ipynb": [
        "Conv2D(10, (3, 3)) on (10, 28, 28, 1) -> (10, 26, 26, 10)",
        "Conv2D(10, (3, 3), strides=2) on (10, 28, 28, 1) -> (10, 13, 13, 10)",
        "Conv2D(10, (3, 3), strides=2, padding='same') on (10, 28, 28, 1) -> (10, 14, 14, 10)",
        "Conv2D(10, (3, 3), padding='same') on (10, 28, 28, 1) -> (10, 28, 28, 10)",
        "output of one image: (2, 2, 10)",
        "MaxPooling2D(2) on (10, 28, 28, 1) -> (10, 14, 14, 1)",
        "AveragePooling2D(3) on (10, 28, 28, 1) -> (10, 9, 9, 1)",
        "= [[33. 45. 57.]]",
        "-> (1, 62, 62, 32)  params 896",
        "-> (1, 31, 31, 32)  params 0",
        "-> (1, 31, 31, 64)  params 18,496",
    ]
}


@pytest.fixture(scope="session")
def notebook_env(request, tmp_path_factory) -> dict[str, str]:
    """Environment for the kernels: real Fashion-MNIST where installed, prepared once for the test run
    (`real_tfds`), else a tiny stand-in; a temporary folder of the test's own (the notebooks' runs go to
    `tempfile.mkdtemp()`). They inherit the suite's compilation cache (`CNN_COMPILE_CACHE`, set by conftest)
    and its XLA flags."""
    env = {"TMPDIR": str(tmp_path_factory.mktemp("notebook-tmp"))}
    if REAL_INSTALLED:
        env["TFDS_DATA_DIR"] = str(request.getfixturevalue("real_tfds"))
    else:
        source = tmp_path_factory.mktemp("notebook-idx")
        write_dataset(source, train_size=2000, test_size=500)
        env[data.ENV_VAR] = str(source)
        env["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("notebook-tfds"))
    return env


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, notebook_env, monkeypatch):
    for key, value in notebook_env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute(env=dict(os.environ))
    errors = [
        o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    missing = [line for line in PRINTS.get(path.name, []) if line not in printed]
    assert not missing, f"{path.name} does not print {missing}"
    images = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert images, "the notebook drew nothing"
