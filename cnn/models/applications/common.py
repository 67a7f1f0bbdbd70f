"""What the networks of `cnn.models.applications.networks` share: Keras' automatic layer names, the input-size
rules and the classifier top."""

from __future__ import annotations

import flax.linen as nn
import jax

from cnn.models.applications.names import Names
from cnn.models.layers import Dense, GlobalAvgPool, GlobalMaxPool

POOLINGS = (None, "avg", "max")


class Application(nn.Module):
    """What every network of `cnn.models.applications.networks` takes, as `keras.applications` does: the
    classifier on top (or not), its classes and final activation, and the pooling of the last feature maps
    without it."""

    include_top: bool = True
    classes: int = 1000
    pooling: str | None = None
    classifier_activation: str | None = "softmax"


def top(
    x: jax.Array,
    names: Names,
    include_top: bool,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
    top_pool: str | None = None,
    pool_names: tuple[str | None, str | None] = (None, None),
) -> jax.Array:
    """The end of a Keras application: with `include_top`, global average pooling (`top_pool` its name)
    and the `predictions` layer; without, the optional global `pooling` ('avg' or 'max')."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
    if include_top:
        x = GlobalAvgPool(name=top_pool or names("global_average_pooling2d"))(x)
        return Dense(classes, activation=classifier_activation, name="predictions")(x)
    if pooling == "avg":
        return GlobalAvgPool(name=pool_names[0] or names("global_average_pooling2d"))(x)
    if pooling == "max":
        return GlobalMaxPool(name=pool_names[1] or names("global_max_pooling2d"))(x)
    return x
