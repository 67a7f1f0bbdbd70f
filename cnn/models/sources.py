"""The networks of the sources (the textbook chapters and lecture notes this project reproduces, see
README): the seed CNN, the deeper CNN of Géron's *Hands-On Machine Learning* ("HOML", `homl_cnn`), the
lecture's network, LeNet-5 and the dense baseline. Each maps NHWC images to `num_classes` logits."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from cnn.models.layers import AvgPool, Conv2D, Dense, Flatten, MaxPool


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
