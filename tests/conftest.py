"""Shared fixtures: tiny Fashion-MNIST-format IDX files of a learnable pattern, prepared through tfds."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

# JAX's persistent compilation cache, shared by the test workers and the processes they start: many tests
# train the same tiny programs, and a new TrainState (a new apply_fn) misses the in-memory jit cache. The
# programs still compile once per run of the suite on a clean machine; results are unchanged. A size limit
# turns on JAX's file lock around every read and write of the cache: without it one worker can read an
# entry another is still writing, and deserialising the half-written executable crashes the worker.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "cnn-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cnn import data  # noqa: E402

TRAIN_SIZE, TEST_SIZE = 600, 200


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
        labels = rng.integers(0, data.NUM_CLASSES, size=n).astype(np.uint8)
        images = synthetic_images(labels, rng)
        image_file, label_file = data.SPLIT_FILES[split]
        write_idx(directory / image_file, images)
        write_idx(directory / label_file, labels)
        written[split] = (images, labels)
    return written


@pytest.fixture(autouse=True)
def _no_real_sources(monkeypatch, tmp_path):
    """Keeps tests off the real dataset and the network unless a test asks for them."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "no-system-dir")
    monkeypatch.setattr(data, "OFFICIAL_URL", (tmp_path / "no-server").as_uri() + "/")


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("idx")
    write_dataset(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_splits(idx_dir, tmp_path_factory) -> data.Splits:
    """The tiny dataset through the real builder: 480 train, 120 validation, 200 test."""
    return data.load_fashion_mnist(data_dir=tmp_path_factory.mktemp("tfds"), source_dir=idx_dir)


@pytest.fixture(scope="session")
def prepared(idx_dir, tmp_path_factory) -> Path:
    """A tfds data dir with the tiny dataset already prepared, for the processes tests start (they only
    read it)."""
    data_dir = tmp_path_factory.mktemp("tfds-prepared")
    data.load_fashion_mnist(data_dir=data_dir, source_dir=idx_dir)
    return data_dir
