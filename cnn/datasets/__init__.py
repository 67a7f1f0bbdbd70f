"""Data sets by name or by path, all through tensorflow-datasets builders (no TensorFlow), with the
transforms applied once at load time (resize, grayscale ↔ colour) and the train/validation/test splits.

| name | what |
|---|---|
| `fashion_mnist` | the default: 70,000 28×28 grayscale clothes, 10 classes (`cnn.data`) |
| `lfw_faces` | 200 real 25×25 grayscale photos shipped by scikit-image: 100 faces, 100 non-faces |
| a folder path | one sub-folder per class of PNG/JPEG/BMP/GIF files, optional train/ val/ test/ folders |

    config = dataset_config(TrainConfig(dataset="lfw_faces", image_size=(32, 32)))   # shape and classes
    splits = load_dataset(config)                                                   # uint8 NHWC images
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnn.config import TrainConfig
from cnn.data import CLASS_NAMES, DataError, Split, Splits, load_fashion_mnist, split_indices
from cnn.datasets import image_folder, lfw_faces
from cnn.datasets.transforms import transform


@dataclasses.dataclass(frozen=True)
class Raw:
    """A data set as prepared: uint8 NHWC images per split (`val`/`test` may be None: split off `train`),
    its class names and where it came from."""

    name: str
    source: str
    class_names: tuple[str, ...]
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None = None
    test: tuple[np.ndarray, np.ndarray] | None = None


def _fashion_mnist(config: TrainConfig, data_dir: Any, source_dir: Any) -> Raw:
    c = config
    splits = load_fashion_mnist(data_dir, source_dir, c.val_fraction, c.split_seed, c.val_split)
    as_uint8 = {
        k: (np.rint(getattr(splits, k).images * 255).astype(np.uint8), getattr(splits, k).labels)
        for k in ("train", "val", "test")
    }
    return Raw("fashion_mnist", "Fashion-MNIST IDX files", CLASS_NAMES, **as_uint8)


def _lfw_faces(config: TrainConfig, data_dir: Any, source_dir: Any) -> Raw:
    images, labels, names = lfw_faces.load(data_dir)
    return Raw("lfw_faces", "skimage.data.lfw_subset()", names, (images, labels))


def _folder(config: TrainConfig, data_dir: Any, source_dir: Any) -> Raw:
    parts, names = image_folder.load(
        Path(config.dataset), config.image_size, config.channels, config.skip_bad_images, data_dir
    )
    return Raw(str(Path(config.dataset).resolve().name), str(Path(config.dataset).resolve()), names, **parts)


DATASETS: dict[str, Callable[[TrainConfig, Any, Any], Raw]] = {
    "fashion_mnist": _fashion_mnist,
    "lfw_faces": _lfw_faces,
}


def _reader(config: TrainConfig) -> Callable[[TrainConfig, Any, Any], Raw]:
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


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): `round(fraction × n_c)` of every class c held out, at least one where a
    class has two or more examples, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx))))) if len(idx) > 1 else 0
        held.append(idx[:k])
        kept.append(idx[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def _split_off(raw: Raw, config: TrainConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train/val/test from the prepared parts, splitting off what the data set does not have itself."""
    parts = {"train": raw.train, "val": raw.val, "test": raw.test}
    if parts["test"] is None:
        keep, held = stratified_split(raw.train[1], config.test_fraction, config.split_seed)
        parts["train"], parts["test"] = _take(raw.train, keep), _take(raw.train, held)
    if parts["val"] is None and config.val_split == "last":
        keep, held = split_indices(len(parts["train"][1]), config.val_fraction, 0, last=True)
        parts["train"], parts["val"] = _take(parts["train"], keep), _take(parts["train"], held)
    if parts["val"] is None:
        keep, held = stratified_split(parts["train"][1], config.val_fraction, config.split_seed + 1)
        parts["train"], parts["val"] = _take(parts["train"], keep), _take(parts["train"], held)
    return parts


def _take(part: tuple[np.ndarray, np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return part[0][idx], part[1][idx]


def load_dataset(
    config: TrainConfig,
    data_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
) -> Splits:
    """The data set `config.dataset` as train/validation/test `Splits` of uint8 NHWC images (compact: the
    train step converts them to [0, 1] on the device), resized to `config.image_size` and converted to
    `config.channels` where asked, with `info` (name, source, image shape, class names)."""
    raw = _reader(config)(config, data_dir, source_dir)
    parts = _split_off(raw, config)
    for name, (images, _) in parts.items():
        if len(images) == 0:
            raise DataError(
                f"dataset {raw.name}: its {name} split is empty; give more images or other fractions"
            )
    parts = {
        k: (transform(x, config.image_size, config.channels), y.astype(np.int32))
        for k, (x, y) in parts.items()
    }
    info = {
        "name": raw.name,
        "source": raw.source,
        "image_shape": list(parts["train"][0].shape[1:]),
        "class_names": list(raw.class_names),
        "sizes": {k: len(y) for k, (_, y) in parts.items()},
    }
    return Splits(**{k: Split(x, y) for k, (x, y) in parts.items()}, info=info)


def dataset_config(
    config: TrainConfig,
    data_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
) -> TrainConfig:
    """`config` with `input_shape` and `num_classes` taken from its data set (preparing it once if needed),
    so the model is built for that data; Fashion-MNIST without transforms leaves them unset (28×28×1, 10)."""
    if is_plain_fashion_mnist(config):
        return config
    return with_data(config, load_dataset(config, data_dir, source_dir))


def is_plain_fashion_mnist(config: TrainConfig) -> bool:
    """Fashion-MNIST as it comes (28×28×1, 10 classes): the models' defaults, no data needed to know it."""
    return config.dataset == "fashion_mnist" and config.image_size is None and config.channels in (None, 1)


def with_data(config: TrainConfig, splits: Splits) -> TrainConfig:
    """`config` with the image shape and number of classes of `splits` (what `fit` trains on)."""
    if splits.info is None or (
        splits.info["name"] == "fashion_mnist" and tuple(splits.info["image_shape"]) == (28, 28, 1)
    ):
        return config
    return dataclasses.replace(
        config, input_shape=tuple(splits.info["image_shape"]), num_classes=len(splits.info["class_names"])
    )
