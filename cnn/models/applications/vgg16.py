"""VGG16 (Simonyan & Zisserman 2014, "Very Deep Convolutional Networks"), as Keras builds it: five blocks
of 3×3 convolutions (64, 128, 256, 512, 512 filters; `block1_conv1` … `block5_conv3`) each ending in a 2×2
max pool, then, with the top, two dense layers of 4096 (`fc1`, `fc2`) and the classifier."""

from __future__ import annotations

import flax.linen as nn
import jax

from cnn.models.applications.common import Application, top
from cnn.models.applications.names import Names
from cnn.models.layers import Conv2D, Dense, Flatten, MaxPool

BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGG16(Application):
    """VGG16 with Keras' layer names."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for b, (filters, convs) in enumerate(BLOCKS, start=1):
            for c in range(1, convs + 1):
                x = Conv2D(filters, (3, 3), padding="SAME", activation="relu", name=f"block{b}_conv{c}")(x)
            x = MaxPool(2, strides=2, name=f"block{b}_pool")(x)
        if not self.include_top:
            return top(x, Names(), False, self.pooling, self.classes, None)
        x = Flatten(name="flatten")(x)
        x = Dense(4096, activation="relu", name="fc1")(x)
        x = Dense(4096, activation="relu", name="fc2")(x)
        return Dense(self.classes, activation=self.classifier_activation, name="predictions")(x)
