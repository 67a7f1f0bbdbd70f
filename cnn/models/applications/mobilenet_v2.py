"""MobileNetV2 (Sandler et al. 2018), alpha 1.0, as Keras builds it: a strided 3×3 stem, 17 inverted
residual blocks (1×1 expansion → 3×3 depth-wise → 1×1 linear projection, `block_16_project_BN`), a 1×1
convolution to 1280 channels; batch norm epsilon 1e-3, momentum 0.999; ReLU6."""

from __future__ import annotations

import flax.linen as nn
import jax

from cnn.models.applications.common import Application, top
from cnn.models.applications.names import Names
from cnn.models.layers import Activation, Add, BatchNormalization, Conv2D, DepthwiseConv2D, ZeroPadding2D

# (filters, stride, expansion) of blocks 0..16
BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)  # fmt: skip


def correct_pad(size: tuple[int, int], kernel: int = 3) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras' padding before a strided 'valid' convolution: one pixel less at the top/left of an even side."""
    k = kernel // 2
    return tuple((k - (1 - s % 2), k) for s in size)  # type: ignore[return-value]


class MobileNetV2(Application):
    """MobileNetV2 (alpha 1.0) with Keras' layer names."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv2D(32, (3, 3), strides=2, padding="SAME", use_bias=False, name="Conv1")(x)
        x = self.bn(x, "bn_Conv1", train)
        x = Activation("relu", max_value=6.0, name="Conv1_relu")(x)
        for block_id, (filters, stride, expansion) in enumerate(BLOCKS):
            x = self.block(x, filters, stride, expansion, block_id, train)
        x = Conv2D(1280, (1, 1), padding="VALID", use_bias=False, name="Conv_1")(x)
        x = self.bn(x, "Conv_1_bn", train)
        x = Activation("relu", max_value=6.0, name="out_relu")(x)
        return top(x, Names(), self.include_top, self.pooling, self.classes, self.classifier_activation)

    @staticmethod
    def bn(x: jax.Array, name: str, train: bool) -> jax.Array:
        return BatchNormalization(epsilon=1e-3, momentum=0.999, name=name)(x, train)

    def block(
        self, inputs: jax.Array, filters: int, stride: int, expansion: int, block_id: int, train: bool
    ) -> jax.Array:
        """An inverted residual block, added to its input where the shapes allow."""
        x, prefix = inputs, f"block_{block_id}_" if block_id else "expanded_conv_"
        if block_id:
            x = Conv2D(
                expansion * inputs.shape[-1], (1, 1), padding="SAME", use_bias=False, name=f"{prefix}expand"
            )(x)
            x = self.bn(x, f"{prefix}expand_BN", train)
            x = Activation("relu", max_value=6.0, name=f"{prefix}expand_relu")(x)
        if stride == 2:
            x = ZeroPadding2D(correct_pad(x.shape[1:3]), name=f"{prefix}pad")(x)
        padding = "SAME" if stride == 1 else "VALID"
        x = DepthwiseConv2D(3, strides=stride, padding=padding, use_bias=False, name=f"{prefix}depthwise")(x)
        x = self.bn(x, f"{prefix}depthwise_BN", train)
        x = Activation("relu", max_value=6.0, name=f"{prefix}depthwise_relu")(x)
        x = Conv2D(filters, (1, 1), padding="SAME", use_bias=False, name=f"{prefix}project")(x)
        x = self.bn(x, f"{prefix}project_BN", train)
        if inputs.shape[-1] == filters and stride == 1:
            return Add(name=f"{prefix}add")([inputs, x])
        return x
