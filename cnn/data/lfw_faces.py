"""`lfw_faces`: the 200 real photographs scikit-image ships (`skimage.data.lfw_subset()`, no download):
100 Labeled-Faces-in-the-Wild face crops and 100 crops without a face, 25×25 grayscale, as the two classes
`face` / `not_face`, through a tfds builder. scikit-image is the optional extra `cnn[photos]`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cnn.data.prepared import LocalDatasetInfo, download_and_prepare, keep_arrays, read_arrays
from cnn.errors import DataError

CLASS_NAMES = ("face", "not_face")
SHAPE = (25, 25, 1)


def lfw_subset() -> np.ndarray:
    """scikit-image's 200 LFW crops as uint8 `(200, 25, 25, 1)`: faces first, then non-faces."""
    try:
        from skimage.data import lfw_subset as load
    except ImportError:
        raise DataError(
            "lfw_faces needs scikit-image, the optional extra cnn[photos]: pip install -e '.[photos]' "
            "(make train and make test install it)"
        ) from None
    images = np.asarray(load(), dtype=np.float64)
    return np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)[..., None]


class LfwFaces(tfds.core.GeneratorBasedBuilder):
    """tfds builder over scikit-image's LFW subset (Tensor features, array_record, no TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "skimage.data.lfw_subset(): 100 faces, 100 non-faces, 25x25 grayscale."}

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return LocalDatasetInfo(
            builder=self,
            description="Faces and non-faces from Labeled Faces in the Wild, as shipped by scikit-image.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=SHAPE, dtype=np.uint8),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "index": tfds.features.Tensor(shape=(), dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://vis-www.cs.umass.edu/lfw/",
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(lfw_subset())}

    def _generate_examples(self, images: np.ndarray):
        for i, image in enumerate(images):
            yield i, {"image": image, "label": int(i >= 100), "index": i}


def load(
    data_dir: str | os.PathLike | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    """The 200 images, their labels (0 face, 1 not_face), the class names and the data's fingerprint,
    prepared once with tfds."""
    builder = LfwFaces(data_dir=data_dir)
    if not builder.is_prepared():
        images = lfw_subset()  # a missing extra fails before tfds writes anything
        print(f"Preparing lfw_faces into {builder.data_dir} (once; later runs reuse it)", flush=True)
        download_and_prepare(builder)
        keep_arrays(builder, {"train": (images, (np.arange(len(images)) >= 100).astype(np.int32))})
    arrays, stamp = read_arrays(builder, ["train"])
    return *arrays["train"], CLASS_NAMES, stamp
