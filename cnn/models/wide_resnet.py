"""The wide residual network of Zagoruyko & Komodakis (2016), WRN-`depth`-`width`: a 3×3 convolution of 16
filters, three groups of `(depth - 4) / 6` pre-activation basic blocks (batch norm, ReLU, 3×3 convolution,
twice) of 16·`width`, 32·`width` and 64·`width` filters, the second and third group starting with stride 2,
then batch norm, ReLU, global average pooling and the logits. A block whose input has another width or
size adds a 1×1 convolution of its activated input (the paper's shortcut); dropout between a block's two
convolutions when `dropout_rate` is set. Convolutions have no bias and start He-normal (fan-out), as in the
paper's code."""

from __future__ import annotations

import flax.linen as nn
import jax

from cnn.models.layers import Conv2D, Dense, GlobalAvgPool

HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class WideBlock(nn.Module):
    """A pre-activation basic block: BN, ReLU, 3×3 conv (stride `strides`), BN, ReLU, dropout, 3×3 conv,
    plus the input (or its 1×1 convolution when the width or size changes)."""

    filters: int
    strides: int = 1
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        activated = nn.relu(_bn("bn1", train)(x))
        shortcut = x
        if x.shape[-1] != self.filters or self.strides != 1:
            shortcut = _conv(self.filters, 1, self.strides, "shortcut")(activated)
        y = _conv(self.filters, 3, self.strides, "conv1")(activated)
        y = nn.relu(_bn("bn2", train)(y))
        if self.dropout_rate:
            y = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(y)
        return _conv(self.filters, 3, 1, "conv2")(y) + shortcut


class WideResNet(nn.Module):
    """WRN-`depth`-`width` (see the module): `depth` = 6n + 4 (16, 22, 28, 40, ...), `width` k ≥ 1."""

    depth: int = 16
    width: int = 4
    dropout_rate: float = 0.0
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_depth(self.depth)
        x = _conv(16, 3, 1, "conv")(x)
        for group, (filters, strides) in enumerate(zip(widths(self.width), (1, 2, 2), strict=True), start=1):
            for block in range(1, blocks_per_group(self.depth) + 1):
                x = WideBlock(
                    filters,
                    strides if block == 1 else 1,
                    self.dropout_rate,
                    name=f"group{group}_block{block}",
                )(x, train)
        x = nn.relu(_bn("bn", train)(x))
        return Dense(self.num_classes, name="logits")(GlobalAvgPool(name="global_avg")(x))


def widths(width: int) -> tuple[int, int, int]:
    """The filters of the three groups: 16k, 32k, 64k."""
    return 16 * width, 32 * width, 64 * width


def blocks_per_group(depth: int) -> int:
    return (depth - 4) // 6


def check_depth(depth: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(
            "model_args: wide_resnet's depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), "
            f"got {depth!r}"
        )


def wide_resnet(
    depth: int = 16, width: int = 4, dropout_rate: float = 0.0, num_classes: int = 10
) -> WideResNet:
    """The wide residual network WRN-`depth`-`width` (Zagoruyko & Komodakis 2016; default WRN-16-4):
    pre-activation residual blocks in three groups of 16k, 32k and 64k filters, batch norm, global average
    pooling, the logits; `depth` 6n + 4, `width` k, `dropout_rate` inside the blocks."""
    check_depth(depth)
    return WideResNet(depth=depth, width=width, dropout_rate=dropout_rate, num_classes=num_classes)


def _conv(filters: int, kernel: int, strides: int, name: str) -> Conv2D:
    return Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=HE_NORMAL,
        name=name,
    )


def _bn(name: str, train: bool) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
