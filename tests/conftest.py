"""Shared fixtures: tiny Fashion-MNIST-format IDX files of a learnable pattern, prepared through tfds."""

from __future__ import annotations

import gc  # noqa: E402
import gzip
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests import compile_profile
from tests.processes import CACHE, with_test_xla_flags

# Before JAX starts its backend:
os.environ["XLA_FLAGS"] = with_test_xla_flags(os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

# The suite's one compilation cache (`tests.processes.CACHE`), set before `cnn` is imported: `import cnn`
# turns it on with its size limit, which is what makes JAX lock its entries for the processes sharing it.
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
os.environ["CNN_COMPILE_CACHE"] = str(CACHE)

from cnn.data import fashion_mnist  # noqa: E402
from cnn.data.spec import Splits  # noqa: E402

# Only programs that take 0.1 s or more to compile are written to the cache: the suite's many tiny ones
# (every eager operation of a property test's new shape) made it thousands of entries, and JAX's size-limited
# cache lists every entry on each write (the figures: README, "Measurements behind the code").
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
compile_profile.start()

TRAIN_SIZE, TEST_SIZE = 600, 200
REAL_DIR = fashion_mnist.SYSTEM_DIR  # taken at import, before `_no_real_sources` points it elsewhere
REAL_INSTALLED = (REAL_DIR / "t10k-labels-idx1-ubyte.gz").is_file()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Writes `array` (uint8) as a gzip-compressed IDX file."""
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 noise with a bright 7x7 square whose position encodes the label (learnable by a CNN)."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        r, c = 1 + 9 * row + rng.integers(0, 2), 1 + 6 * col + rng.integers(0, 2)
        images[i, r : r + 7, c : c + 7] = rng.integers(180, 256, size=(7, 7))
    return images


def write_dataset(
    directory: Path, seed: int = 0, train_size: int = TRAIN_SIZE, test_size: int = TEST_SIZE
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes the four IDX files into `directory`; returns the arrays written, by split."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", train_size), ("test", test_size)):
        labels = rng.integers(0, fashion_mnist.NUM_CLASSES, size=n).astype(np.uint8)
        images = synthetic_images(labels, rng)
        image_file, label_file = fashion_mnist.SPLIT_FILES[split]
        write_idx(directory / image_file, images)
        write_idx(directory / label_file, labels)
        written[split] = (images, labels)
    return written


# When a worker holds more memory mappings than this after a test module, its compiled programs are dropped.
MAPPINGS_TO_CLEAR = 20_000


def memory_mappings() -> int:
    """How many memory mappings this process holds (Linux); elsewhere `MAPPINGS_TO_CLEAR`, so that the
    compiled programs are dropped after every module."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return MAPPINGS_TO_CLEAR


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With `CNN_TEST_PROFILE` set, records the JAX tracing and compiling of a test, its set-up and
    teardown included (`tests.compile_profile`)."""
    started = compile_profile.begin()
    try:
        return (yield)
    finally:
        compile_profile.end(item.nodeid, started)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After a test module, drops JAX's compiled programs once the worker holds 20,000 memory mappings.
    Every XLA:CPU executable keeps about six; a test worker that compiled thousands of programs (hypothesis
    draws many shapes) ran into the kernel's limit of 65,530 mappings, and LLVM crashed the worker with a
    segmentation fault while compiling or loading the next one. Dropping them after every module cost
    29 s of the fast tier's 753 s of test time, most of it for modules far from the limit."""
    yield
    if memory_mappings() >= MAPPINGS_TO_CLEAR:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(autouse=True)
def _fast_tests_start_no_python(request, monkeypatch):
    """A test not marked `slow` may not start a Python process (a kernel, a worker, `python -m cnn`): that is
    what makes the fast tier fast. Other programs (git, for a run's commit) are allowed."""
    if request.node.get_closest_marker("slow") is not None:
        return
    real = subprocess.Popen

    class Refused(real):
        def __init__(self, args, *more, **kwargs):
            program = str(args[0] if isinstance(args, list | tuple) else shlex.split(str(args))[0])
            if program == sys.executable or Path(program).name.startswith("python"):
                raise AssertionError(
                    f"{request.node.nodeid} starts a Python process ({program}): mark it @pytest.mark.slow"
                )
            super().__init__(args, *more, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Refused)


@pytest.fixture(autouse=True)
def _no_real_sources(monkeypatch, tmp_path):
    """Keeps tests off the real dataset and the network unless a test asks for them."""
    monkeypatch.delenv(fashion_mnist.ENV_VAR, raising=False)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dir")
    monkeypatch.setattr(fashion_mnist, "OFFICIAL_URL", (tmp_path / "no-server").as_uri() + "/")


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("idx")
    write_dataset(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_splits(idx_dir, tmp_path_factory) -> Splits:
    """The tiny dataset through the real builder: 480 train, 120 validation, 200 test."""
    return fashion_mnist.load_fashion_mnist(data_dir=tmp_path_factory.mktemp("tfds"), source_dir=idx_dir)


@pytest.fixture(scope="session")
def prepared(idx_dir, tmp_path_factory) -> Path:
    """A tfds data dir with the tiny dataset already prepared, for the processes tests start (they only
    read it)."""
    data_dir = tmp_path_factory.mktemp("tfds-prepared")
    fashion_mnist.load_fashion_mnist(data_dir=data_dir, source_dir=idx_dir)
    return data_dir


@pytest.fixture(scope="session")
def real_tfds(tmp_path_factory) -> Path:
    """A tfds data dir holding the real Fashion-MNIST (Debian's package), prepared once for the whole test
    run: the first worker to ask prepares it under a file lock, the others find it prepared (the notebooks'
    kernels and the tests only read it). Skips where the package is not installed."""
    if not REAL_INSTALLED:
        pytest.skip("real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    run_folder = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_folder = run_folder.parent  # this run's folder, above every worker's own
    data_dir = run_folder / "real-fashion-mnist-tfds"
    with FileLock(f"{data_dir}.lock"):
        fashion_mnist.load_fashion_mnist(data_dir=data_dir, source_dir=REAL_DIR)
    return data_dir
