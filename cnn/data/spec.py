"""What every data set hands to training: the data description (`DataSpec`: image shape, classes, source,
fingerprint, sizes) and the splits (`Split`, `Splits`: uint8 NHWC images and int32 labels), resolved once
from the data and carried with it. The data sets themselves are in `cnn.data.load`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from cnn.errors import DataError

FASHION_MNIST_CLASSES = (
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


@dataclass(frozen=True)
class DataSpec:
    """The data description: what a model is built for and what a run records of its data.

    `image_shape` is (H, W, C) after the load-time transforms; `class_names` in label order; `source` where
    the data came from; `fingerprint` a short hash of the source data (empty when unknown); `sizes` the
    number of train / val / test examples."""

    name: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    source: str = ""
    fingerprint: str = ""
    sizes: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "sizes", dict(self.sizes))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def outputs(self, head: str = "softmax") -> int:
        """Output units of a classifier for this data: one per class, or one sigmoid unit."""
        return 1 if head == "sigmoid" else self.num_classes

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "image_shape": list(self.image_shape),
            "class_names": list(self.class_names),
            "sizes": dict(self.sizes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataSpec:
        return cls(
            name=d["name"],
            image_shape=tuple(d["image_shape"]),
            class_names=tuple(d["class_names"]),
            source=d.get("source", ""),
            fingerprint=d.get("fingerprint", ""),
            sizes=d.get("sizes", {}),
        )

    def differences(self, other: DataSpec) -> list[str]:
        """What differs from `other`, as 'field: a -> b' (a field empty on either side is not compared)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{k}: {mine[k]!r} -> {theirs[k]!r}"
            for k in mine
            if mine[k] not in ("", {}) and theirs[k] not in ("", {}) and mine[k] != theirs[k]
        ]


# Fashion-MNIST as it comes: what a model is built for when no data set is named.
FASHION_MNIST = DataSpec("fashion_mnist", (28, 28, 1), FASHION_MNIST_CLASSES, "Fashion-MNIST IDX files")


@dataclass(frozen=True)
class Split:
    """One split in memory: NHWC images (uint8 as every data set gives them; floats in [0, 1] are taken
    too) and int32 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Splits:
    """Train / validation / test splits of one data set and its description (`spec`). Splits made from
    arrays alone get a description from them: the image shape, classes '0'..'K-1' (K = the largest label
    + 1, at least 2)."""

    train: Split
    val: Split
    test: Split
    spec: DataSpec | None = None

    def __post_init__(self):
        if self.spec is None:
            object.__setattr__(self, "spec", describe_arrays(self.train, self.val, self.test))

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names


def describe_arrays(*splits: Split, name: str = "arrays") -> DataSpec:
    """The description of splits given as arrays: the first split's image shape, one class per label up to
    the largest (at least two), their sizes."""
    shape = tuple(np.shape(splits[0].images)[1:])
    if len(shape) != 3:
        raise DataError(f"{name}: expected NHWC images (N, H, W, C), got shape {np.shape(splits[0].images)}")
    top = max((int(np.max(s.labels)) for s in splits if len(s.labels)), default=1)
    names = tuple(str(i) for i in range(max(top + 1, 2)))
    sizes = dict(zip(("train", "val", "test"), (len(s) for s in splits), strict=False))
    return DataSpec(name, shape, names, source="in memory", sizes=sizes)


def with_sizes(spec: DataSpec, splits: Sequence[Split]) -> DataSpec:
    """`spec` with the sizes of the train / val / test `splits`."""
    return dataclasses.replace(spec, sizes=dict(zip(("train", "val", "test"), map(len, splits), strict=True)))


# Every uint8 pixel value as float32 in [0, 1], correctly rounded (as NumPy divides).
PIXELS = np.arange(256, dtype=np.float32) / np.float32(255.0)


def to_float(images: Any, exact: bool = False) -> Any:
    """uint8 pixels (NumPy or JAX) to float32 in [0, 1]; float images pass through unchanged. Inside a
    compiled step this keeps the data compact on the device until the last moment.

    Inside a compiled program XLA divides by 255 as a multiplication by its reciprocal, which rounds 126 of
    the 256 values one float32 step away from the correctly rounded quotient. The training step keeps that
    conversion (the histories of every earlier run depend on it); `exact` looks the values up in `PIXELS`
    instead, as evaluation and prediction do, so that uint8 pixels and the same pixels as floats divided
    by 255 in NumPy give the same probabilities."""
    if images.dtype != np.uint8:
        return images
    if exact:
        return PIXELS[images] if isinstance(images, np.ndarray) else jax.numpy.asarray(PIXELS)[images]
    return images.astype(np.float32) / 255.0
