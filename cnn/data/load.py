"""Data sets by name or by path, all prepared once through tensorflow-datasets builders (no TensorFlow) and
read back as whole arrays, with the transforms applied at load time (resize, grayscale ↔ colour), the
train/validation/test splits, and the data description (`cnn.data.spec.DataSpec`) resolved from the data.

| name | what |
|---|---|
| `fashion_mnist` | the default: 70,000 28×28 grayscale clothes, 10 classes (`fashion_mnist.py`) |
| `lfw_faces` | 200 real 25×25 grayscale photos shipped by scikit-image: 100 faces, 100 non-faces |
| a folder path | one sub-folder per class of PNG/JPEG/BMP/GIF files, optional train/ val/ test/ folders |

    splits = load_dataset(TrainConfig(dataset="lfw_faces", image_size=(32, 32)))  # uint8 NHWC images
    splits.spec.image_shape, splits.spec.class_names  # (32, 32, 1), ('face', 'not_face')

A process loads each data set once: every run, seed and variant of a sweep, experiment or study asking for
the same data (the same fields of `DATA_FIELDS`, the same folder contents) shares the same arrays.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnn.config import DATA_FIELDS, TrainConfig
from cnn.data import fashion_mnist, image_folder, lfw_faces
from cnn.data.spec import DataSpec, Split, Splits
from cnn.data.splits import split_indices, stratified_split
from cnn.data.transforms import transform
from cnn.errors import DataError


@dataclasses.dataclass(frozen=True)
class SourceData:
    """A data set as its source gives it: uint8 NHWC images with labels per split (`val`/`test` None where
    the source has no such split: they are split off `train`), its class names, where it came from and the
    fingerprint of its data."""

    name: str
    source: str
    class_names: tuple[str, ...]
    fingerprint: str
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None = None
    test: tuple[np.ndarray, np.ndarray] | None = None


def _fashion_mnist(config: TrainConfig, data_dir: Any, source_dir: Any) -> SourceData:
    c = config
    splits = fashion_mnist.load_fashion_mnist(data_dir, source_dir, c.val_fraction, c.split_seed, c.val_split)
    parts = {k: (getattr(splits, k).images, getattr(splits, k).labels) for k in ("train", "val", "test")}
    return SourceData(
        "fashion_mnist", splits.spec.source, splits.class_names, splits.spec.fingerprint, **parts
    )


def _lfw_faces(config: TrainConfig, data_dir: Any, source_dir: Any) -> SourceData:
    images, labels, names, stamp = lfw_faces.load(data_dir)
    return SourceData("lfw_faces", "skimage.data.lfw_subset()", names, stamp, (images, labels))


def _folder(config: TrainConfig, data_dir: Any, source_dir: Any) -> SourceData:
    root = Path(config.dataset).expanduser().resolve()
    parts, names, stamp = image_folder.load(
        root, config.image_size, config.channels, config.skip_bad_images, data_dir
    )
    return SourceData(root.name, str(root), names, stamp, **parts)


DATASETS: dict[str, Callable[[TrainConfig, Any, Any], SourceData]] = {
    "fashion_mnist": _fashion_mnist,
    "lfw_faces": _lfw_faces,
}


def _reader(config: TrainConfig) -> Callable[[TrainConfig, Any, Any], SourceData]:
    if config.dataset in DATASETS:
        return DATASETS[config.dataset]
    path = Path(config.dataset).expanduser()
    if path.is_dir():
        return _folder
    if os.sep in config.dataset or path.exists():
        raise DataError(
            f"dataset: {config.dataset} is not a folder (an image folder holds one sub-folder per class)"
        )
    raise DataError(
        f"dataset: unknown data set {config.dataset!r}; choose one of {sorted(DATASETS)} "
        "or give a folder of images"
    )


def _split_off(data: SourceData, config: TrainConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train/val/test from the source's parts, splitting off what the data set does not have itself."""
    parts = {"train": data.train, "val": data.val, "test": data.test}
    if parts["test"] is None:
        keep, held = stratified_split(data.train[1], config.test_fraction, config.split_seed)
        parts["train"], parts["test"] = _take(data.train, keep), _take(data.train, held)
    if parts["val"] is None and config.val_split == "last":
        keep, held = split_indices(len(parts["train"][1]), config.val_fraction, 0, last=True)
        parts["train"], parts["val"] = _take(parts["train"], keep), _take(parts["train"], held)
    if parts["val"] is None:
        keep, held = stratified_split(parts["train"][1], config.val_fraction, config.split_seed + 1)
        parts["train"], parts["val"] = _take(parts["train"], keep), _take(parts["train"], held)
    return parts


def _take(part: tuple[np.ndarray, np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return part[0][idx], part[1][idx]


LOADED: collections.OrderedDict[tuple, Splits] = collections.OrderedDict()
KEEP_LOADED = 4  # data sets a process keeps in memory for the next run that asks for one of them


def load_dataset(
    config: TrainConfig,
    data_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
) -> Splits:
    """The data set `config.dataset` as train/validation/test `Splits` of uint8 NHWC images (the train step
    turns them into [0, 1] on the device), resized to `config.image_size` and converted to
    `config.channels` where asked, with the data description `spec` (name, source, fingerprint, image
    shape, class names, sizes). Loaded once per process: a second call for the same data returns the same
    (read-only) arrays."""
    reader = _reader(config)
    key = (
        *(repr(getattr(config, f)) for f in DATA_FIELDS),
        str(data_dir),
        str(source_dir),
        image_folder.fingerprint(Path(config.dataset).expanduser(), None, None, False)
        if reader is _folder
        else "",
    )
    if key not in LOADED:
        LOADED[key] = _load(reader, config, data_dir, source_dir)
        while len(LOADED) > KEEP_LOADED:
            LOADED.popitem(last=False)
    LOADED.move_to_end(key)
    return LOADED[key]


def _load(reader: Callable, config: TrainConfig, data_dir: Any, source_dir: Any) -> Splits:
    data = reader(config, data_dir, source_dir)
    parts = _split_off(data, config)
    for name, (images, _) in parts.items():
        if len(images) == 0:
            raise DataError(
                f"dataset {data.name}: its {name} split is empty; give more images or other fractions"
            )
    splits = {}
    for k, (x, y) in parts.items():
        x, y = transform(x, config.image_size, config.channels), y.astype(np.int32)
        x.flags.writeable = y.flags.writeable = False  # shared by every run of the process
        splits[k] = Split(x, y)
    spec = DataSpec(
        name=data.name,
        image_shape=splits["train"].images.shape[1:],
        class_names=data.class_names,
        source=data.source,
        fingerprint=data.fingerprint,
        sizes={k: len(s) for k, s in splits.items()},
    )
    return Splits(**splits, spec=spec)
