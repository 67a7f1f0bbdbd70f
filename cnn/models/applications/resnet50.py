"""ResNet50 (He et al. 2015, "Deep Residual Learning"), as Keras builds it: a 7×7 stem, then four stages
of bottleneck residual blocks (3, 4, 6, 3 blocks; `conv2_block1_out` … `conv5_block3_out`), each block
1×1 → 3×3 → 1×1 convolutions with batch norm (epsilon 1.001e-5) added to its shortcut."""

from __future__ import annotations

import flax.linen as nn
import jax

from cnn.models.applications.common import Application, top
from cnn.models.applications.names import Names
from cnn.models.layers import Activation, Add, BatchNormalization, Conv2D, MaxPool, ZeroPadding2D

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # filters, blocks, first stride
EPSILON = 1.001e-5


class ResNet50(Application):
    """ResNet50 with Keras' layer names."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
        x = Conv2D(64, (7, 7), strides=2, padding="VALID", name="conv1_conv")(x)
        x = BatchNormalization(epsilon=EPSILON, name="conv1_bn")(x, train)
        x = Activation("relu", name="conv1_relu")(x)
        x = ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
        x = MaxPool(3, strides=2, name="pool1_pool")(x)
        for stage, (filters, blocks, stride) in enumerate(STAGES, start=2):
            for block in range(1, blocks + 1):
                first = block == 1
                x = self.block(x, filters, stride if first else 1, first, f"conv{stage}_block{block}", train)
        return top(
            x,
            Names(),
            self.include_top,
            self.pooling,
            self.classes,
            self.classifier_activation,
            "avg_pool",
            ("avg_pool", "max_pool"),
        )

    def block(
        self, x: jax.Array, filters: int, stride: int, conv_shortcut: bool, name: str, train: bool
    ) -> jax.Array:
        """A bottleneck block: 1×1 (strided) → 3×3 → 1×1 ×4 filters, added to the shortcut (a strided 1×1
        convolution in a stage's first block, else the input), then ReLU."""
        shortcut = x
        if conv_shortcut:
            shortcut = Conv2D(4 * filters, (1, 1), strides=stride, padding="VALID", name=f"{name}_0_conv")(x)
            shortcut = BatchNormalization(epsilon=EPSILON, name=f"{name}_0_bn")(shortcut, train)
        x = Conv2D(filters, (1, 1), strides=stride, padding="VALID", name=f"{name}_1_conv")(x)
        x = BatchNormalization(epsilon=EPSILON, name=f"{name}_1_bn")(x, train)
        x = Activation("relu", name=f"{name}_1_relu")(x)
        x = Conv2D(filters, (3, 3), padding="SAME", name=f"{name}_2_conv")(x)
        x = BatchNormalization(epsilon=EPSILON, name=f"{name}_2_bn")(x, train)
        x = Activation("relu", name=f"{name}_2_relu")(x)
        x = Conv2D(4 * filters, (1, 1), padding="VALID", name=f"{name}_3_conv")(x)
        x = BatchNormalization(epsilon=EPSILON, name=f"{name}_3_bn")(x, train)
        x = Add(name=f"{name}_add")([shortcut, x])
        return Activation("relu", name=f"{name}_out")(x)
