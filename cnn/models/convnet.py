"""The configurable network of the experiments: conv blocks (filters, kernel, stride, padding, activation,
batch norm, down-sampling) then a head, its shapes checked by arithmetic before anything is compiled; and
`vgg_bn`, the strong model built from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax

from cnn.data.spec import FASHION_MNIST
from cnn.errors import ArchitectureError
from cnn.models.conv import output_size
from cnn.models.layers import (
    AvgPool,
    Conv2D,
    Dense,
    DepthwiseAvgPool,
    DepthwiseMaxPool,
    Flatten,
    GlobalAvgPool,
    MaxPool,
    activation,
)
from cnn.models.preprocessing import RandomRotation, RandomShiftFlip

DOWNSAMPLE = ("max", "avg", "none", "strided_conv", "depthwise_max", "depthwise_avg")
CONVNET_HEADS = ("flatten_dense", "global_avg")  # what follows the conv blocks


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
    if model.head not in CONVNET_HEADS:
        raise ArchitectureError(f"head: {model.head!r} is not one of {CONVNET_HEADS}")
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
