"""Famous ImageNet networks in Flax, layer for layer as `keras.applications` builds them, with Keras'
layer names. Cutting, freezing and weight loading address the names a Keras user knows:

| name | network | Keras' input minimum | preprocessing |
|---|---|---|---|
| `inception_v3` | InceptionV3 (GoogLeNet's successor; the sources' network) | 75×75 | [-1, 1] |
| `vgg16` | VGG16 | 32×32 | "caffe": BGR, ImageNet mean subtracted |
| `resnet50` | ResNet50 | 32×32 | "caffe" |
| `mobilenet_v2` | MobileNetV2, alpha 1.0 | 32×32 | [-1, 1] |

    model, variables = build("inception_v3", input_shape=(75, 75, 3), cut="mixed7", weights="imagenet")
    features = model.apply(variables, preprocess_input("inception_v3", images))

`weights="imagenet"` reads the file Keras publishes (looked for where Keras caches downloads, never
downloaded here); any Keras weight file can be given by path (see `cnn.models.applications.weights`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn.errors import WeightsError
from cnn.models.applications.common import POOLINGS
from cnn.models.applications.inception_v3 import InceptionV3
from cnn.models.applications.mobilenet_v2 import MobileNetV2
from cnn.models.applications.resnet50 import ResNet50
from cnn.models.applications.vgg16 import VGG16
from cnn.models.applications.weights import BASE_URL, cached, find_file, match_weights
from cnn.models.cutting import Cut
from cnn.models.summary import layer_rows, remembered


@dataclasses.dataclass(frozen=True)
class Spec:
    """What `cnn.models.applications.networks` knows of a network: its module, Keras' input sizes, weight
    files and preprocessing mode."""

    module: type[nn.Module]
    min_size: int
    default_size: int
    notop_file: str
    top_file: str
    url_folder: str
    preprocessing: str  # 'tf': [-1, 1]; 'caffe': BGR with the ImageNet mean subtracted


APPLICATIONS = {
    "inception_v3": Spec(
        InceptionV3, 75, 299,
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "inception_v3_weights_tf_dim_ordering_tf_kernels.h5", "inception_v3/", "tf",
    ),
    "vgg16": Spec(
        VGG16, 32, 224,
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5", "vgg16/", "caffe",
    ),
    "resnet50": Spec(
        ResNet50, 32, 224,
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet50_weights_tf_dim_ordering_tf_kernels.h5", "resnet/", "caffe",
    ),
    "mobilenet_v2": Spec(
        MobileNetV2, 32, 224,
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", "mobilenet_v2/", "tf",
    ),
}  # fmt: skip
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def _spec(name: str) -> Spec:
    if name not in APPLICATIONS:
        raise ValueError(f"application: unknown network {name!r}; choose one of {sorted(APPLICATIONS)}")
    return APPLICATIONS[name]


def check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    """`input_shape` as (H, W, C) of positive integers; else a ValueError naming the argument."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    ok = shape is not None and len(shape) == 3
    ok = ok and all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 1 for v in shape)
    if not ok:
        raise ValueError(
            f"input_shape: expected three positive integers (height, width, channels), e.g. (75, 75, 3); "
            f"got {input_shape!r}"
        )
    return tuple(int(v) for v in shape)  # type: ignore[return-value]


def application(
    name: str,
    *,
    input_shape: Sequence[int],
    include_top: bool = True,
    classes: int = 1000,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
) -> nn.Module:
    """The Flax module of `name`, checked as Keras checks it: the input at least the network's minimum
    size; with the top, VGG16 (whose dense layers fix the size) at exactly 224×224 only with ImageNet
    weights (see `build`)."""
    spec = _spec(name)
    h, w, c = check_input_shape(input_shape)
    if min(h, w) < spec.min_size:
        raise ValueError(
            f"input_shape: {name} needs images of at least {spec.min_size}×{spec.min_size}, got {h}×{w}"
        )
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
    if classes < 1:
        raise ValueError(f"classes: expected at least 1, got {classes}")
    return spec.module(
        include_top=include_top, classes=classes, pooling=pooling, classifier_activation=classifier_activation
    )


def layer_names(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """The network's layers in call order (every Keras layer, from shapes alone)."""
    return [row.name for row in layer_rows(model, tuple(input_shape))]


KERAS_CLASSES = {  # the Keras class of each weighted layer type (Keras 3 files key layers by it)
    "Conv2D": "conv2d",
    "BatchNormalization": "batch_normalization",
    "Dense": "dense",
    "DepthwiseConv2D": "depthwise_conv2d",
}


def layer_graph(model: nn.Module, input_shape: Sequence[int]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The network as a graph, from shapes alone: each layer's parent layers (those whose outputs it takes;
    none for the first) in call order, and each layer's type (traced once per network and shape)."""
    parents, kinds = remembered(_layer_graph, model, tuple(input_shape))
    return {name: list(p) for name, p in parents.items()}, dict(kinds)


def _layer_graph(
    model: nn.Module, input_shape: tuple[int, ...]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    calls: dict[str, tuple[list[int], int, str]] = {}
    keep = []  # the traced arrays stay alive, so their ids stay unique

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if len(module.scope.path) == 1 and context.method_name == "__call__":
            inputs = list(args[0]) if isinstance(args[0], list | tuple) else [args[0]]
            keep.extend([out, *inputs])
            calls[module.name] = ([id(x) for x in inputs], id(out), type(module).__name__)  # outer call last
        return out

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    producer = {out: name for name, (_, out, _) in calls.items()}
    parents = {name: [producer[i] for i in ins if i in producer] for name, (ins, _, _) in calls.items()}
    return parents, {name: kind for name, (_, _, kind) in calls.items()}


def keras_order(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, str]]:
    """The network's layers, with their Keras class, in the order of Keras' `model.layers` for the same
    graph: by depth from the input, ties in the order a depth-first walk back from the output meets them
    (how `keras.Functional` sorts its operations)."""
    parents, kinds = layer_graph(model, input_shape)
    return [(name, KERAS_CLASSES.get(kinds[name], "")) for name in _keras_sort(parents, list(parents)[-1])]


def _keras_sort(parents: dict[str, list[str]], output: str) -> list[str]:
    index: dict[str, int] = {}
    postorder: list[str] = []

    def visit(name: str) -> None:
        if name in index:
            return
        index[name] = len(index)
        for parent in parents[name]:
            visit(parent)
        postorder.append(name)

    visit(output)
    depth: dict[str, int] = {}
    for name in reversed(postorder):
        d = depth.setdefault(name, 0)
        for parent in parents[name]:
            depth[parent] = max(depth.get(parent, 0), d + 1)
    return sorted(postorder, key=lambda n: (-depth[n], index[n]))


def build(
    name: str,
    *,
    input_shape: Sequence[int],
    include_top: bool = False,
    classes: int = 1000,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
    cut: str | None = None,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """The network `name` and its variables, as `keras.applications.NAME(...)` gives it.

    Args:
      input_shape: (H, W, C) of the images.
      include_top: Keras' option: the classifier on top.
      classes: Keras' option: the classifier's outputs.
      pooling: Keras' option: None, 'avg' or 'max' after the last block.
      classifier_activation: Keras' option: the classifier's activation.
      cut: a layer name (`mixed7`, `block5_conv3`, `conv4_block6_out`, `block_16_project_BN`, ...): the
        network runs up to that layer's output (a `cnn.models.cutting.Cut`; the layers after it have no
        variables).
      weights: None (random, Keras' initialisers), 'imagenet' (the file Keras publishes, see
        `imagenet_file`) or a path to any Keras weight file (Keras 2 `.h5`, Keras 3 `.weights.h5`/`.keras`).
      seed: of the random initialisation.
    Returns:
      (module, variables) for `module.apply(variables, images)`; images preprocessed with
      `preprocess_input`, in inference mode by default (`train=False`).
    """
    model = application(
        name, input_shape=input_shape, include_top=include_top, classes=classes,
        pooling=pooling, classifier_activation=classifier_activation,
    )  # fmt: skip
    if weights is not None:
        weight_file(name, weights, include_top)  # a missing or misnamed file fails here, before any work
    names = layer_names(model, input_shape)
    if cut is not None and cut not in names:
        raise ValueError(f"cut: {name} has no layer {cut!r}; its layers are {names[:6]} … {names[-3:]}")
    if weights is not None and include_top and weights == "imagenet" and classes != 1000:
        raise ValueError("classes: ImageNet weights with the top have 1000 classes; use include_top=False")
    init = remembered(compiled_init, model)
    key, x = jax.random.PRNGKey(seed), jnp.zeros((1, *input_shape), jnp.float32)
    if weights is None:
        variables = dict(init(key, x))
    else:
        # The file gives every array: the random initialisation is only traced, for the shapes.
        variables = load_weights(
            name, model, dict(jax.eval_shape(init, key, x)), weights, include_top, input_shape
        )
        if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(variables)):
            fresh = init(key, x)  # a variable the file does not hold keeps its initialisation
            variables = jax.tree.map(_filled, variables, dict(fresh))
    if cut is None:
        return model, variables
    cut_model = Cut(model, cut)
    shapes = jax.eval_shape(lambda x: cut_model.init(jax.random.PRNGKey(0), x), jnp.zeros((1, *input_shape)))
    kept = {col: {k: variables[col][k] for k in tree["base"]} for col, tree in shapes.items()}
    return cut_model, {col: {"base": tree} for col, tree in kept.items()}


def compiled_init(model: nn.Module) -> Any:
    """`model.init` as one compiled program, the same per equal network (the same values as running the
    initialisers op by op, which compiles every operation on its own)."""
    return jax.jit(model.init)


def imagenet_file(name: str, include_top: bool = False) -> tuple[str, str]:
    """The file name Keras publishes `name`'s ImageNet weights under, and the URL Keras downloads it from."""
    spec = _spec(name)
    file_name = spec.top_file if include_top else spec.notop_file
    return file_name, f"{BASE_URL}{spec.url_folder}{file_name}"


def weight_file(name: str, weights: str | os.PathLike, include_top: bool) -> Path:
    """The Keras weight file `weights` names ('imagenet': the published one, found in Keras' cache folders);
    WeightsError when it is misnamed, a folder or missing."""
    if isinstance(weights, str) and weights.lower() == "imagenet" and weights != "imagenet":
        raise WeightsError(f"weights: {weights!r}: the published weights are named 'imagenet' (lower case)")
    path = find_file(*imagenet_file(name, include_top)) if str(weights) == "imagenet" else Path(weights)
    if path.is_dir():
        raise WeightsError(f"weights: {path} is a folder; give a Keras weight file (.h5, .keras)")
    if not path.is_file():
        raise WeightsError(f"weights: {path} does not exist")
    return path


def load_weights(
    name: str,
    model: nn.Module,
    variables: dict[str, Any],
    weights: str | os.PathLike,
    include_top: bool,
    input_shape: Sequence[int],
) -> dict[str, Any]:
    """`variables` (the network's, or only their shapes, as `jax.eval_shape` gives them) with every layer's
    arrays from a Keras weight file ('imagenet': the published one, found in Keras' cache folders),
    converted once and cached as an orbax checkpoint."""
    path = weight_file(name, weights, include_top)
    order = keras_order(model, input_shape)
    key = f"{name}-{'top' if include_top else 'notop'}-{'x'.join(map(str, input_shape))}"
    loaded = cached(path, key, lambda: match_weights(jax.device_get(variables), order, path))
    return jax.tree.map(_on_device, loaded)


def _on_device(leaf: Any) -> Any:
    return leaf if isinstance(leaf, jax.ShapeDtypeStruct) else jnp.asarray(leaf)


def _filled(leaf: Any, initialised: jax.Array) -> Any:
    return initialised if isinstance(leaf, jax.ShapeDtypeStruct) else leaf


def preprocess_input(name: str, images: Any) -> jax.Array:
    """Keras' preprocessing of `name` for RGB images in 0..255 (uint8 or float): 'tf' networks scale to
    [-1, 1]; 'caffe' networks (VGG16, ResNet50) flip to BGR and subtract the ImageNet channel means."""
    x = jnp.asarray(images, jnp.float32)
    if _spec(name).preprocessing == "tf":
        return x / 127.5 - 1.0
    return x[..., ::-1] - CAFFE_MEAN_BGR


__all__ = [
    "APPLICATIONS",
    "WeightsError",
    "application",
    "build",
    "imagenet_file",
    "load_weights",
    "preprocess_input",
    "weight_file",
]
