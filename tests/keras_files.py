"""Keras as the test oracle (dev/test extra only): build a Keras application with random weights and
batch-norm statistics, and write its weights in the published Keras-2 HDF5 layout with h5py alone."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

KERAS_BUILDERS = {
    "inception_v3": ("InceptionV3", (75, 75, 3)),
    "vgg16": ("VGG16", (32, 32, 3)),
    "resnet50": ("ResNet50", (32, 32, 3)),
    "mobilenet_v2": ("MobileNetV2", (32, 32, 3)),
}


def keras_model(name: str, include_top: bool = False, seed: int = 0, **kwargs):
    """The Keras application with random weights, random (positive) variances and random means."""
    import keras

    builder, shape = KERAS_BUILDERS[name]
    model = getattr(keras.applications, builder)(
        include_top=include_top, weights=None, input_shape=shape, **kwargs
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            new = []
            for w in layer.weights:
                shape = w.shape
                if "variance" in w.path:
                    new.append(rng.uniform(0.5, 1.5, shape))
                elif "mean" in w.path:
                    new.append(rng.normal(0, 0.1, shape))
                elif "gamma" in w.path:
                    new.append(rng.uniform(0.8, 1.2, shape))
                else:
                    new.append(rng.normal(0, 0.1, shape))
            layer.set_weights([np.asarray(a, np.float32) for a in new])
    return model


def keras2_name(name: str) -> str:
    """Keras 2 numbered automatic names from 1 (`conv2d` -> `conv2d_1`, `conv2d_4` -> `conv2d_5`)."""
    match = re.fullmatch(
        r"(conv2d|batch_normalization|activation|max_pooling2d|average_pooling2d|concatenate|dense)(?:_(\d+))?",
        name,
    )
    if not match:
        return name
    return f"{match.group(1)}_{int(match.group(2) or 0) + 1}"


def write_keras2_h5(model, path: Path) -> Path:
    """The model's weights in the layout of Keras' published `*_notop.h5` files: root attributes
    `layer_names`, per layer `weight_names` like `conv2d_1/kernel:0`, fixed-length byte strings."""
    import h5py

    names = [keras2_name(layer.name) for layer in model.layers]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in names], dtype=f"S{max(map(len, names))}")
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.5"
        for layer, name in zip(model.layers, names, strict=True):
            group = f.create_group(name)
            keras2 = {"kernel": "depthwise_kernel"} if type(layer).__name__ == "DepthwiseConv2D" else {}
            weight_names = [
                f"{name}/{keras2.get(w.path.split('/')[-1], w.path.split('/')[-1])}:0" for w in layer.weights
            ]
            width = max([len(n) for n in weight_names] or [1])
            group.attrs["weight_names"] = np.array([n.encode() for n in weight_names], dtype=f"S{width}")
            for weight_name, w in zip(weight_names, layer.weights, strict=True):
                group.create_dataset(weight_name, data=np.asarray(w.numpy()))
    return path
