"""The networks, built by name through one registry (every model maps NHWC images to logits and takes
`train=`), for the image shape and classes of a data description (`model_for`): the sources' networks, the
configurable `ConvNet` of the experiments, a network cut for transfer learning (built with `cnn.surgery`),
and the famous ImageNet networks of `cnn.applications` trained from scratch."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax

from cnn.applications import application
from cnn.config import TrainConfig
from cnn.conv import output_size
from cnn.data import FASHION_MNIST, DataSpec
from cnn.layers import (
    AvgPool,
    Conv2D,
    Dense,
    DepthwiseAvgPool,
    DepthwiseMaxPool,
    Flatten,
    GlobalAvgPool,
    MaxPool,
    RandomRotation,
    RandomShiftFlip,
    activation,
)
from cnn.summary import format_summary, layer_rows
from cnn.surgery import TransferNet


class SeedCNN(nn.Module):
    """The sources' main network: two conv + max-pool blocks, a 100-unit dense layer, dropout, 10 logits."""

    num_classes: int = 10
    dropout_rate: float = 0.4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv2D(32, (3, 3), padding="SAME", activation="relu", name="conv1")(x)
        x = MaxPool(2, name="pool1")(x)
        x = Conv2D(64, (3, 3), padding="SAME", activation="relu", name="conv2")(x)
        x = MaxPool(2, name="pool2")(x)
        x = Flatten(name="flatten")(x)
        x = Dense(100, activation="relu", name="dense1")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return Dense(self.num_classes, name="logits")(x)


class HomlCNN(nn.Module):
    """A deeper network: 64 7×7, two 128 and two 256 3×3 convolutions, three max pools, two dense layers."""

    num_classes: int = 10
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv2D(64, (7, 7), padding="SAME", activation="relu", name="conv1")(x)
        x = MaxPool(2, name="pool1")(x)
        x = Conv2D(128, (3, 3), padding="SAME", activation="relu", name="conv2")(x)
        x = Conv2D(128, (3, 3), padding="SAME", activation="relu", name="conv3")(x)
        x = MaxPool(2, name="pool2")(x)
        x = Conv2D(256, (3, 3), padding="SAME", activation="relu", name="conv4")(x)
        x = Conv2D(256, (3, 3), padding="SAME", activation="relu", name="conv5")(x)
        x = MaxPool(2, name="pool3")(x)
        x = Flatten(name="flatten")(x)
        x = Dense(128, activation="relu", name="dense1")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout1")(x)
        x = Dense(64, activation="relu", name="dense2")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout2")(x)
        return Dense(self.num_classes, name="logits")(x)


class LectureCNN(nn.Module):
    """The lecture's network: conv 64, 32, 16 (no activation in the source), two max pools, dense 256, 128."""

    num_classes: int = 10
    conv_activation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv2D(64, (3, 3), padding="SAME", activation=self.conv_activation, name="conv1")(x)
        x = MaxPool(2, strides=2, name="pool1")(x)
        x = Conv2D(32, (3, 3), padding="SAME", activation=self.conv_activation, name="conv2")(x)
        x = MaxPool(2, strides=2, name="pool2")(x)
        x = Conv2D(16, (3, 3), padding="SAME", activation=self.conv_activation, name="conv3")(x)
        x = Flatten(name="flatten")(x)
        x = Dense(256, activation="relu", name="dense1")(x)
        x = Dense(128, activation="relu", name="dense2")(x)
        return Dense(self.num_classes, name="logits")(x)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998): tanh convolutions 6@5×5 and 16@5×5 with average pooling, dense 120, 84."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv2D(6, (5, 5), padding="SAME", activation="tanh", name="conv1")(x)  # 28×28 input: 'same'
        x = AvgPool(2, name="pool1")(x)
        x = Conv2D(16, (5, 5), padding="VALID", activation="tanh", name="conv2")(x)
        x = AvgPool(2, name="pool2")(x)
        x = Flatten(name="flatten")(x)
        x = Dense(120, activation="tanh", name="dense1")(x)
        x = Dense(84, activation="tanh", name="dense2")(x)
        return Dense(self.num_classes, name="logits")(x)


class MLP(nn.Module):
    """The dense baseline: flatten the image, hidden ReLU layers, 10 logits."""

    num_classes: int = 10
    hidden: Sequence[int] = (300, 100)
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Flatten(name="flatten")(x)
        for i, units in enumerate(self.hidden, start=1):
            x = Dense(units, activation="relu", name=f"dense{i}")(x)
            if self.dropout_rate:
                x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"dropout{i}")(x)
        return Dense(self.num_classes, name="logits")(x)


# ------------------------------------------------------------------------------------- configurable net
DOWNSAMPLE = ("max", "avg", "none", "strided_conv", "depthwise_max", "depthwise_avg")
HEADS = ("flatten_dense", "global_avg")


@dataclass(frozen=True)
class ConvBlock:
    """One block of `ConvNet`: `convs` convolutions, then a down-sampling step.

    downsample: 'max' / 'avg' pooling (window and stride `pool`), 'none', 'strided_conv' (the block's last
    convolution gets stride `pool` instead of a pooling layer), or 'depthwise_max' / 'depthwise_avg' (max
    or mean over groups of `pool` channels: the depth shrinks, not the map).
    """

    filters: int
    kernel: int = 3
    stride: int = 1
    padding: str = "same"
    activation: str | None = "relu"
    batch_norm: bool = False
    downsample: str = "max"
    pool: int = 2
    convs: int = 1


class ArchitectureError(ValueError):
    """Layers that do not fit together: a map shrinking to nothing, a kernel larger than its input."""


def as_blocks(blocks: Sequence[ConvBlock | Mapping[str, Any]]) -> tuple[ConvBlock, ...]:
    """Blocks from `ConvBlock`s or plain dicts (as in a JSON config), rejecting unknown keys by name."""
    fields = {f.name for f in dataclasses.fields(ConvBlock)}
    out = []
    for i, block in enumerate(blocks, start=1):
        if isinstance(block, Mapping):
            unknown = set(block) - fields
            if unknown:
                raise ArchitectureError(
                    f"block {i}: unknown keys {sorted(unknown)}; allowed: {sorted(fields)}"
                )
            block = ConvBlock(**block)
        out.append(block)
    return tuple(out)


def check_blocks(blocks: Sequence[ConvBlock]) -> None:
    """Each block's own settings (whatever the input): names, paddings, sizes and activations."""
    for i, b in enumerate(blocks, start=1):
        where = f"block {i}"
        if b.downsample not in DOWNSAMPLE:
            raise ArchitectureError(f"{where}: downsample {b.downsample!r} is not one of {DOWNSAMPLE}")
        if b.padding.lower() not in ("same", "valid"):
            raise ArchitectureError(f"{where}: padding {b.padding!r} is not 'same' or 'valid'")
        if min(b.filters, b.kernel, b.stride, b.pool, b.convs) < 1:
            raise ArchitectureError(f"{where}: filters, kernel, stride, pool and convs must be >= 1 ({b})")
        activation(b.activation)  # an unknown name raises here


def convnet_shapes(
    blocks: Sequence[ConvBlock],
    input_shape: tuple[int, int, int] = FASHION_MNIST.image_shape,
) -> list[tuple[int, int, int]]:
    """The (H, W, C) after each block, by arithmetic alone; raises `ArchitectureError` naming the block."""
    check_blocks(blocks)
    h, w, c = input_shape
    shapes = []
    for i, b in enumerate(blocks, start=1):
        where = f"block {i}"
        for j in range(1, b.convs + 1):
            stride = b.pool if (b.downsample == "strided_conv" and j == b.convs) else b.stride
            if b.padding.lower() == "valid" and b.kernel > min(h, w):
                layer = f"block{i}_conv{j}" if b.convs > 1 else f"block{i}_conv"
                raise ArchitectureError(
                    f"{where}, conv {j} (layer {layer}): a {b.kernel}×{b.kernel} kernel with 'valid' padding "
                    f"does not fit its {h}×{w}×{c} input"
                )
            h, w, c = (
                output_size(h, b.kernel, stride, b.padding.lower()),
                output_size(w, b.kernel, stride, b.padding.lower()),
                b.filters,
            )
        if b.downsample in ("max", "avg"):
            if b.pool > min(h, w):
                raise ArchitectureError(
                    f"{where} (layer block{i}_pool): a {b.pool}×{b.pool} pool does not fit its "
                    f"{h}×{w}×{c} input"
                )
            h, w = h // b.pool, w // b.pool
        elif b.downsample.startswith("depthwise"):
            if c % b.pool:
                raise ArchitectureError(
                    f"{where} (layer block{i}_pool): depthwise pooling of {b.pool} needs channels "
                    f"divisible by it; the input is {h}×{w}×{c}"
                )
            c //= b.pool
        shapes.append((h, w, c))
    return shapes


class ConvNet(nn.Module):
    """The configurable network of the experiments: conv blocks, then a head.

    The default reproduces the seed CNN layer for layer (same parameter count): blocks of 32 and 64 filters,
    each followed by a 2×2 max pool, then flatten, dense 100, dropout 0.4, 10 logits. In training only,
    `rotate` turns each image by a random angle up to ± that many degrees (rotated copies), and `augment`
    shifts and flips it.
    """

    blocks: tuple[ConvBlock, ...] = (ConvBlock(32), ConvBlock(64))
    head: str = "flatten_dense"
    dense: tuple[int, ...] = (100,)
    dropout_rate: float = 0.4
    augment: bool = False
    rotate: float = 0.0
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        validate_convnet(self, x.shape[1:])
        if self.rotate:
            x = RandomRotation(self.rotate, name="rotate")(x, train)
        if self.augment:
            x = RandomShiftFlip(name="augment")(x, train)
        for i, b in enumerate(self.blocks, start=1):
            x = self._block(x, i, b, train)
        x = GlobalAvgPool(name="global_avg")(x) if self.head == "global_avg" else Flatten(name="flatten")(x)
        for k, units in enumerate(self.dense, start=1):
            x = Dense(units, activation="relu", name=f"dense{k}")(x)
            if self.dropout_rate:
                x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"dropout{k}")(x)
        return Dense(self.num_classes, name="logits")(x)

    def _block(self, x: jax.Array, i: int, b: ConvBlock, train: bool) -> jax.Array:
        for j in range(1, b.convs + 1):
            stride = b.pool if (b.downsample == "strided_conv" and j == b.convs) else b.stride
            name = f"block{i}_conv{j}" if b.convs > 1 else f"block{i}_conv"
            conv_act = None if b.batch_norm else b.activation  # with batch norm: conv, BN, then activation
            x = Conv2D(
                b.filters,
                (b.kernel, b.kernel),
                strides=stride,
                padding=b.padding.upper(),
                activation=conv_act,
                use_bias=not b.batch_norm,
                name=name,
            )(x)
            if b.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not train, momentum=0.9, name=name.replace("conv", "bn")
                )(x)
                x = activation(b.activation)(x)
        if b.downsample == "max":
            x = MaxPool(b.pool, name=f"block{i}_pool")(x)
        elif b.downsample == "avg":
            x = AvgPool(b.pool, name=f"block{i}_pool")(x)
        elif b.downsample == "depthwise_max":
            x = DepthwiseMaxPool(b.pool, name=f"block{i}_pool")(x)
        elif b.downsample == "depthwise_avg":
            x = DepthwiseAvgPool(b.pool, name=f"block{i}_pool")(x)
        return x


def validate_convnet(model: ConvNet, input_shape: tuple[int, int, int] | None = None) -> None:
    """Checks a `ConvNet`'s configuration and, given an `input_shape`, its shapes, before anything is
    compiled."""
    if model.head not in HEADS:
        raise ArchitectureError(f"head: {model.head!r} is not one of {HEADS}")
    if not 0 <= model.dropout_rate < 1:
        raise ArchitectureError(f"dropout_rate: {model.dropout_rate} is not in [0, 1)")
    if not model.blocks:
        raise ArchitectureError("blocks: a ConvNet needs at least one block")
    check_blocks(model.blocks)
    if input_shape is not None:
        convnet_shapes(model.blocks, tuple(input_shape))


def convnet(
    blocks: Sequence[ConvBlock | Mapping[str, Any]] | None = None,
    dense: Sequence[int] = (100,),
    input_shape: tuple[int, int, int] | None = None,
    **kwargs: Any,
) -> ConvNet:
    """The configurable network, validated for `input_shape` images; its defaults are the seed CNN's
    layers. `blocks` may be dicts."""
    model = ConvNet(
        blocks=as_blocks(blocks) if blocks is not None else ConvNet.blocks, dense=tuple(dense), **kwargs
    )
    validate_convnet(model, input_shape)
    return model


def vgg_bn(
    widths: Sequence[int] = (32, 64, 128), input_shape: tuple[int, int, int] | None = None, **kwargs: Any
) -> ConvNet:
    """The strong model: three VGG blocks of two 3×3 convolutions with batch norm (32, 64, 128 filters),
    max pooling, a global-average head with dense 128, dropout 0.3, and random shift/flip augmentation.
    `widths` sets the filters of each block (e.g. `[64, 128, 256]` for the wide variant)."""
    if "blocks" in kwargs:
        raise ValueError("model_args: vgg_bn takes `widths`, not `blocks` (use the convnet model for blocks)")
    blocks = [ConvBlock(int(f), batch_norm=True, convs=2) for f in widths]
    defaults = dict(blocks=blocks, head="global_avg", dense=(128,), dropout_rate=0.3, augment=True)
    return convnet(input_shape=input_shape, **{**defaults, **kwargs})


def transfer_model(
    base: str = "seed_cnn",
    cut: str = "pool2",
    head: Sequence[int] = (64,),
    outputs: int = 10,
    base_args: dict[str, Any] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> TransferNet:
    """A zoo model cut at `cut` with a new head of `outputs` logits (`num_classes`, when given, wins: it is
    what a data set asks for); the error for an unknown cut lists the model's layers (at `input_shape`, or
    the base's default shape)."""
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(base)
    model = build_model(base, input_shape=shape, **(base_args or {}))
    names = [row.name for row in layer_rows(model, shape)]
    if cut not in names:
        raise ValueError(f"cut: {base} has no layer {cut!r}; its layers are {names}")
    return TransferNet(model, cut, tuple(head), outputs if num_classes is None else num_classes)


def _famous(name: str, default_shape: tuple[int, int, int], what: str) -> Callable[..., nn.Module]:
    def factory(
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = default_shape,
        include_top: bool = True,
        pooling: str | None = None,
        classifier_activation: str | None = None,
    ) -> nn.Module:
        return application(
            name, input_shape=input_shape, include_top=include_top, classes=num_classes,
            pooling=pooling, classifier_activation=classifier_activation,
        )  # fmt: skip

    factory.__doc__ = (
        f"{what} (`cnn.applications`, Keras' layers and names), trained from scratch here: "
        f"`num_classes` logits; needs at least {default_shape[0]}×{default_shape[1]} inputs."
    )
    factory.default_input_shape = default_shape  # type: ignore[attr-defined]
    return factory


MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed_cnn": SeedCNN,
    "homl_cnn": HomlCNN,
    "lecture_cnn": LectureCNN,
    "lenet5": LeNet5,
    "mlp": MLP,
    "convnet": convnet,
    "vgg_bn": vgg_bn,
    "transfer": transfer_model,
    "inception_v3": _famous("inception_v3", (75, 75, 3), "InceptionV3 (Szegedy et al. 2015)"),
    "vgg16": _famous("vgg16", (32, 32, 3), "VGG16 (Simonyan & Zisserman 2014)"),
    "resnet50": _famous("resnet50", (32, 32, 3), "ResNet50 (He et al. 2015)"),
    "mobilenet_v2": _famous("mobilenet_v2", (32, 32, 3), "MobileNetV2 (Sandler et al. 2018)"),
}


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The input shape a zoo model is shown at when none is given: Fashion-MNIST's, or a famous network's
    minimum."""
    return getattr(MODELS[name], "default_input_shape", FASHION_MNIST.image_shape)


def check_model_name(name: str) -> None:
    """Raises a ValueError naming the registered models (and the closest ones) if `name` is unknown."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"model: unknown model {name!r}; choose one of {sorted(MODELS)}.{hint}")


def model_for(config: TrainConfig, spec: DataSpec) -> nn.Module:
    """The network `config` trains on data described by `spec`: its input shape, and one output per class
    (one sigmoid unit for `head="sigmoid"`); the network's own checks (a map shrinking to nothing, an input
    below a famous network's minimum) run here."""
    return build_model(
        config.model,
        input_shape=spec.image_shape,
        **{**config.model_args, "num_classes": spec.outputs(config.head)},
    )


def check_model_args(config: TrainConfig) -> None:
    """The model's name, arguments and their kinds checked before any data is loaded (ValueError naming
    the problem); the checks that need the image shape run when the model is built (`model_for`)."""
    build_model(config.model, **{**config.model_args, "num_classes": 2 if config.head == "sigmoid" else 10})


def build_model(name: str, input_shape: tuple[int, ...] | None = None, **kwargs: Any) -> nn.Module:
    """The model registered as `name`, `kwargs` overriding its fields (e.g. `hidden=(512,)` for `mlp`).
    With `input_shape` (H, W, C), a network whose layers depend on it is checked against it. Equal requests
    return the same module, so the runs of a process share their compiled programs."""
    shape = None if input_shape is None else tuple(input_shape)
    key = (name, shape, json.dumps(kwargs, sort_keys=True, default=repr))
    if key not in BUILT:
        BUILT[key] = _build(name, shape, kwargs)
    return BUILT[key]


BUILT: dict[tuple[str, tuple[int, ...] | None, str], nn.Module] = {}  # see `build_model`


def _build(name: str, input_shape: tuple[int, ...] | None, kwargs: dict[str, Any]) -> nn.Module:
    check_model_name(name)
    factory = MODELS[name]
    kwargs = {k: tuple(v) if isinstance(v, list) and k != "blocks" else v for k, v in kwargs.items()}
    if input_shape is not None and "input_shape" in inspect.signature(factory).parameters:
        kwargs["input_shape"] = tuple(input_shape)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"model_args: {name} does not take these arguments ({e})") from None
    check_fields(name, model)
    return model


def check_fields(name: str, model: nn.Module) -> None:
    """Refuses, naming the field, a model whose fields do not have their defaults' kinds: a rate outside
    [0, 1), a number that is not finite, a count or a layer width below 1, a flag that is not a bool."""
    for f in dataclasses.fields(model):
        default, value = f.default, getattr(model, f.name)
        problem = _field_problem(f.name, default, value)
        if problem:
            shown = list(value) if isinstance(value, tuple) else value
            raise ValueError(f"model_args: {name}'s {f.name} must be {problem}, got {shown!r}")


def _field_problem(field: str, default: Any, value: Any) -> str | None:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if field.endswith("rate"):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1
        return None if ok else "a number in [0, 1)"
    if is_int(default):
        return None if is_int(value) and value >= 1 else "an integer >= 1"
    if isinstance(default, tuple) and default and all(is_int(v) for v in default):
        ok = isinstance(value, tuple) and all(is_int(v) and v >= 1 for v in value)
        return None if ok else "a list of integers >= 1"
    if isinstance(default, str):
        return None if isinstance(value, str) or value is None else "a string"
    if field == "rotate":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 180
        return None if ok else "an angle in degrees in [0, 180]"
    return None


def model_summary(
    model_or_name: nn.Module | str, input_shape: tuple[int, ...] = FASHION_MNIST.image_shape, **model_args
) -> str:
    """The summary table of a model or of a zoo model by name: `print(model_summary("lenet5"))`."""
    if isinstance(model_or_name, str):
        model = build_model(model_or_name, input_shape=input_shape, **model_args)
        return format_summary(layer_rows(model, input_shape), model_or_name)
    return format_summary(layer_rows(model_or_name, input_shape), type(model_or_name).__name__)
