"""InceptionV3 (Szegedy et al. 2015, "Rethinking the Inception Architecture"), layer for layer as Keras
builds it: 94 convolutions, each followed by batch norm without scale (epsilon 1e-3) and ReLU, grouped in
Inception modules `mixed0` … `mixed10`."""

from __future__ import annotations

import flax.linen as nn
import jax

from cnn.models.applications.common import Application, top
from cnn.models.applications.names import Names
from cnn.models.layers import Activation, AvgPool, BatchNormalization, Concatenate, Conv2D, MaxPool


class InceptionV3(Application):
    """InceptionV3 with Keras' layer names (`conv2d_5`, `batch_normalization_5`, `mixed7`, ...)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        n = Names()

        def conv(x, filters, rows, cols, padding="SAME", strides=1):
            x = Conv2D(
                filters, (rows, cols), strides=strides, padding=padding, use_bias=False, name=n("conv2d")
            )(x)
            x = BatchNormalization(use_scale=False, name=n("batch_normalization"))(x, train)
            return Activation("relu", name=n("activation"))(x)

        def avg(x):
            return AvgPool(3, strides=1, padding="SAME", name=n("average_pooling2d"))(x)

        def max3(x):
            return MaxPool(3, strides=2, name=n("max_pooling2d"))(x)

        x = conv(x, 32, 3, 3, strides=2, padding="VALID")
        x = conv(x, 32, 3, 3, padding="VALID")
        x = conv(x, 64, 3, 3)
        x = max3(x)
        x = conv(x, 80, 1, 1, padding="VALID")
        x = conv(x, 192, 3, 3, padding="VALID")
        x = max3(x)
        for i, pool_filters in enumerate((32, 64, 64)):  # mixed0-2: 35×35 modules
            b1 = conv(x, 64, 1, 1)
            b5 = conv(conv(x, 48, 1, 1), 64, 5, 5)
            b3 = conv(conv(conv(x, 64, 1, 1), 96, 3, 3), 96, 3, 3)
            bp = conv(avg(x), pool_filters, 1, 1)
            x = Concatenate(name=f"mixed{i}")([b1, b5, b3, bp])
        b3 = conv(x, 384, 3, 3, strides=2, padding="VALID")  # mixed3: grid reduction
        bd = conv(conv(conv(x, 64, 1, 1), 96, 3, 3), 96, 3, 3, strides=2, padding="VALID")
        x = Concatenate(name="mixed3")([b3, bd, max3(x)])
        for i, width in enumerate((128, 160, 160, 192)):  # mixed4-7: 17×17 modules, factorised 7×7
            b1 = conv(x, 192, 1, 1)
            b7 = conv(conv(conv(x, width, 1, 1), width, 1, 7), 192, 7, 1)
            bd = conv(x, width, 1, 1)
            for filters, rows, cols in ((width, 7, 1), (width, 1, 7), (width, 7, 1), (192, 1, 7)):
                bd = conv(bd, filters, rows, cols)
            bp = conv(avg(x), 192, 1, 1)
            x = Concatenate(name=f"mixed{4 + i}")([b1, b7, bd, bp])
        b3 = conv(conv(x, 192, 1, 1), 320, 3, 3, strides=2, padding="VALID")  # mixed8: grid reduction
        b7 = conv(conv(conv(conv(x, 192, 1, 1), 192, 1, 7), 192, 7, 1), 192, 3, 3, strides=2, padding="VALID")
        x = Concatenate(name="mixed8")([b3, b7, max3(x)])
        for i in range(2):  # mixed9-10: 8×8 modules with expanded filter banks
            b1 = conv(x, 320, 1, 1)
            b3 = conv(x, 384, 1, 1)
            b3 = Concatenate(name=f"mixed9_{i}")([conv(b3, 384, 1, 3), conv(b3, 384, 3, 1)])
            bd = conv(conv(x, 448, 1, 1), 384, 3, 3)
            bd = Concatenate(name=n("concatenate"))([conv(bd, 384, 1, 3), conv(bd, 384, 3, 1)])
            bp = conv(avg(x), 192, 1, 1)
            x = Concatenate(name=f"mixed{9 + i}")([b1, b3, bd, bp])
        return top(x, n, self.include_top, self.pooling, self.classes, self.classifier_activation, "avg_pool")
