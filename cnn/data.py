"""Fashion-MNIST through tensorflow-datasets (IDX files in, NHWC arrays and fixed splits out), and the
split types every data set returns (see `cnn.datasets` for the others)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import shutil
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cnn.disk import DiskFull, out_of_space


class _QuietTfds(logging.Filter):
    """Drops tfds' own info and warning lines ('Variant folder ... has no dataset_info.json' while a set is
    being prepared, ...): `cnn` says what it prepares and reads; tfds' errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "tensorflow_datasets" not in record.pathname


logging.getLogger("absl").addFilter(_QuietTfds())

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28, 1)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHION_MNIST_DIR"
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# (size in bytes, sha256) of the official gzip files, as published with tensorflow-datasets.
OFFICIAL_FILES = {
    "train-images-idx3-ubyte.gz": (
        26421880,
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ),
    "train-labels-idx1-ubyte.gz": (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    "t10k-images-idx3-ubyte.gz": (
        4422102,
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ),
    "t10k-labels-idx1-ubyte.gz": (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
}
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned bytes, 1-D labels / 3-D images


class DataError(ValueError):
    """The Fashion-MNIST source files are missing, truncated or corrupt."""


@dataclass(frozen=True)
class Split:
    """One split in memory: float32 images in [0, 1], NHWC, and int32 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Splits:
    """Train / validation / test splits of one data set, and what it is (`info`: name, source, image shape,
    class names; None means Fashion-MNIST as `load_fashion_mnist` gives it)."""

    train: Split
    val: Split
    test: Split
    info: dict[str, Any] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.info["class_names"]) if self.info else CLASS_NAMES


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Reads a gzip-compressed IDX file of unsigned bytes, checking magic number, shape and length."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); delete it and provide a good copy") from e
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: file is {len(raw)} bytes, shorter than its {header}-byte IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise DataError(
            f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{_IDX_MAGIC[ndim]:08x} "
            f"({ndim}-D unsigned bytes); is this the right file?"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header declares shape {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_split(source_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads and cross-checks one split's images `(N, 28, 28, 1)` and labels `(N,)` from IDX files."""
    image_file, label_file = (source_dir / name for name in SPLIT_FILES[split])
    images = read_idx(image_file, 3)
    labels = read_idx(label_file, 1)
    if images.shape[1:] != IMAGE_SHAPE[:2]:
        raise DataError(f"{image_file}: images are {images.shape[1:]}, expected {IMAGE_SHAPE[:2]}")
    if len(images) != len(labels):
        raise DataError(
            f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{label_file}: label {labels.max()} is outside 0..{NUM_CLASSES - 1}")
    return images[..., None], labels


def _missing(directory: Path) -> list[str]:
    return [name for pair in SPLIT_FILES.values() for name in pair if not (directory / name).is_file()]


def download_official(dest: Path, timeout: float = 60.0) -> Path:
    """Downloads the four official files into `dest`, verifying each one's size and sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, (size, sha256) in OFFICIAL_FILES.items():
        target = dest / name
        if target.is_file() and _sha256(target) == sha256:
            continue
        partial = dest / f".{name}.part"
        try:
            with (
                open(partial, "wb") as out,
                urllib.request.urlopen(OFFICIAL_URL + name, timeout=timeout) as src,
            ):
                shutil.copyfileobj(src, out)
        except OSError:
            partial.unlink(missing_ok=True)
            raise
        got_size, got_sha = partial.stat().st_size, _sha256(partial)
        if (got_size, got_sha) != (size, sha256):
            partial.unlink()
            raise DataError(
                f"download of {OFFICIAL_URL + name} failed verification: got {got_size} bytes with sha256 "
                f"{got_sha}, expected {size} bytes with sha256 {sha256}"
            )
        partial.replace(target)
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_source_dir(source_dir: str | os.PathLike | None = None, download_dir: Path | None = None) -> Path:
    """Finds the IDX files: the argument, then $FASHION_MNIST_DIR, then the Debian package, then a download.

    An explicitly named directory (argument or environment variable) must hold all four files.
    """
    for origin, value in (("source_dir argument", source_dir), (f"${ENV_VAR}", os.environ.get(ENV_VAR))):
        if value:
            missing = _missing(Path(value))
            if missing:
                raise DataError(f"{origin} points to {value}, which lacks {', '.join(missing)}")
            return Path(value)
    if not _missing(SYSTEM_DIR):
        return SYSTEM_DIR
    download_dir = (
        download_dir or Path(tfds.core.constants.DATA_DIR).expanduser() / "downloads" / "fashion_mnist"
    )
    try:
        return download_official(download_dir)
    except (OSError, DataError) as e:
        raise DataError(
            "Fashion-MNIST IDX files not found. Provide them in one of three ways: "
            "(1) pass source_dir= (CLI: --source-dir DIR) naming a folder with the four .gz files; "
            f"(2) set {ENV_VAR}=DIR; "
            "(3) install the Debian package: apt-get install -y dataset-fashion-mnist "
            f"(files land in {SYSTEM_DIR}). "
            f"The download from {OFFICIAL_URL} failed too: {e}"
        ) from e


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder):
    """tfds builder over the four Fashion-MNIST IDX files (no TensorFlow: Tensor features, array_record)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Built from the IDX files, original order kept in `index`."}

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
        self._source_dir = source_dir
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def read_sources(self) -> None:
        """Finds, reads and validates every IDX file, so that bad input fails before tfds writes anything."""
        source = find_source_dir(self._source_dir, Path(self.data_dir_root) / "downloads" / "fashion_mnist")
        self._arrays = {split: read_split(source, split) for split in SPLIT_FILES}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST: 28x28 grayscale images of 10 clothing classes: "
            + ", ".join(CLASS_NAMES),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "index": tfds.features.Tensor(shape=(), dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        if self._arrays is None:
            self.read_sources()
        return {split: self._generate_examples(*self._arrays[split]) for split in SPLIT_FILES}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i]), "index": i}


def read_prepared(builder: tfds.core.DatasetBuilder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A prepared tfds split's `image` and `label` arrays, in the original order (the `index` feature)."""
    fix = f"delete {builder.data_dir} and run again to prepare it afresh"
    try:
        source = builder.as_data_source(split=split)
        records = source.__getitems__(list(range(len(source))))
    except KeyError:
        raise DataError(
            f"the prepared data set in {builder.data_dir} is incomplete (no {split} split); {fix}"
        ) from None
    except (RuntimeError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(f"the prepared data set in {builder.data_dir} is damaged ({first}); {fix}") from None
    order = np.argsort([r["index"] for r in records])
    images = np.stack([records[i]["image"] for i in order])
    labels = np.array([records[i]["label"] for i in order], np.int32)
    return images, labels


def prepare(
    data_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
) -> FashionMnistIdx:
    """Prepares the tfds dataset once (atomically: tfds writes to a temporary folder and renames it)."""
    builder = FashionMnistIdx(data_dir=data_dir, source_dir=source_dir)
    if builder.is_prepared() and (source_dir is not None or os.environ.get(ENV_VAR)):
        print(
            f"Note: using the data set already prepared in {builder.data_dir}; the IDX files of --source-dir "
            f"or ${ENV_VAR} are read only when preparing (delete that folder to prepare it from them again)"
        )
    if not builder.is_prepared():
        builder.read_sources()
        print(f"Preparing Fashion-MNIST into {builder.data_dir} (once; later runs reuse it)", flush=True)
        tfds.disable_progress_bar()
        download_and_prepare(builder)
    return builder


def download_and_prepare(builder: tfds.core.DatasetBuilder) -> None:
    """tfds' preparation, with a full disk (or a quota, or a file-size limit) reported in one line and the
    half-written temporary folder removed: nothing half-prepared is left to be taken for good."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # tfds prints sizes and paths; cnn says its own
            builder.download_and_prepare()
    except (OSError, RuntimeError, ValueError) as e:
        if not out_of_space(e):
            raise
        for partial in Path(builder.data_dir).parent.glob("incomplete.*"):
            shutil.rmtree(partial, ignore_errors=True)
        raise DiskFull(
            f"no space to prepare the data set {builder.name} in {Path(builder.data_dir).parent} ({e}): free "
            "some space, or give another --data-dir, and run again"
        ) from None


def split_indices(
    n: int, val_fraction: float, seed: int, last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices, validation being `round(n * val_fraction)` long: a fixed-seed draw, or with
    `last` the final examples in order (what Keras' `validation_split` holds out)."""
    order = np.arange(n)[::-1] if last else np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """NHWC images moved `dy` pixels down and `dx` right (negative: up, left), the uncovered border zero."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    src_y, dst_y = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    src_x, dst_x = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    out[:, dst_y, dst_x] = images[:, src_y, src_x]
    return out


def to_float(images: Any) -> Any:
    """uint8 pixels (NumPy or JAX) to float32 in [0, 1]; float images pass through unchanged. Inside a
    compiled step this keeps the data compact on the device until the last moment."""
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 42,
    val_split: str = "seeded",
) -> Splits:
    """Loads Fashion-MNIST as train/validation (80/20 of the official train set, fixed seed) and test.

    Args:
      data_dir: the tfds data directory (default `~/tensorflow_datasets` or $TFDS_DATA_DIR).
      source_dir: a folder holding the four IDX `.gz` files (see `find_source_dir` for the fall-backs).
      val_fraction: fraction of the official train set held out for validation.
      split_seed: seed of the train/validation permutation.
      val_split: 'seeded' (that permutation) or 'last' (the last `val_fraction`, as Keras'
        `validation_split`).
    Returns:
      `Splits` of float32 NHWC images in [0, 1] and int32 labels.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    builder = prepare(data_dir, source_dir)
    images, labels = read_prepared(builder, "train")
    train_idx, val_idx = split_indices(len(labels), val_fraction, split_seed, last=val_split == "last")
    test_images, test_labels = read_prepared(builder, "test")
    return Splits(
        train=Split(to_float(images[train_idx]), labels[train_idx]),
        val=Split(to_float(images[val_idx]), labels[val_idx]),
        test=Split(to_float(test_images), test_labels),
    )
