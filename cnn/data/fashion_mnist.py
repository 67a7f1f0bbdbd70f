"""Fashion-MNIST: the four IDX files (found in a folder, $FASHION_MNIST_DIR, the Debian package, or
downloaded and verified), read and checked, prepared once through a tensorflow-datasets builder, loaded as
whole arrays with the fixed 80/20 train/validation split of the sources."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cnn.data.prepared import LocalDatasetInfo, download_and_prepare, keep_arrays, read_arrays
from cnn.data.spec import FASHION_MNIST, Split, Splits, with_sizes
from cnn.data.splits import split_indices
from cnn.errors import DataError

CLASS_NAMES = FASHION_MNIST.class_names
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = FASHION_MNIST.image_shape
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
        self.source_arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def read_sources(self) -> None:
        """Finds, reads and validates every IDX file, so that bad input fails before tfds writes anything."""
        source = find_source_dir(self._source_dir, Path(self.data_dir_root) / "downloads" / "fashion_mnist")
        self.source_arrays = {split: read_split(source, split) for split in SPLIT_FILES}

    def _info(self) -> tfds.core.DatasetInfo:
        return LocalDatasetInfo(
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
        if self.source_arrays is None:
            self.read_sources()
        return {split: self._generate_examples(*self.source_arrays[split]) for split in SPLIT_FILES}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i]), "index": i}


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
        download_and_prepare(builder)
        keep_arrays(builder, builder.source_arrays)
    return builder


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
      `Splits` of uint8 NHWC images and int32 labels, with their description (`spec`: the source data's
      fingerprint and the split sizes).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    arrays, stamp = read_arrays(prepare(data_dir, source_dir), ("train", "test"))
    (images, labels), test = arrays["train"], Split(*arrays["test"])
    train_idx, val_idx = split_indices(len(labels), val_fraction, split_seed, last=val_split == "last")
    parts = (Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx]), test)
    spec = with_sizes(dataclasses.replace(FASHION_MNIST, fingerprint=stamp), parts)
    return Splits(*parts, spec=spec)
