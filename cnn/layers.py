"""Keras-semantics layers: convolution and dense with a built-in activation, pooling, flatten."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str | None, Callable[[jax.Array], jax.Array] | None] = {
    None: None,
    "linear": None,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
}


def activation(name: str | None) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name` (None or 'linear' for none)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: unknown {name!r}; choose one of {[k for k in ACTIVATIONS if k]}")
    fn = ACTIVATIONS[name]
    return fn if fn is not None else (lambda x: x)


class Conv2D(nn.Conv):
    """`nn.Conv` followed by an activation, one layer as in Keras (its output is the activated map)."""

    activation: str | None = None
    kernel_init: Callable = nn.initializers.glorot_uniform()  # Keras' default

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        return activation(self.activation)(super().__call__(inputs))


class Dense(nn.Dense):
    """`nn.Dense` followed by an activation, one layer as in Keras."""

    activation: str | None = None
    kernel_init: Callable = nn.initializers.glorot_uniform()  # Keras' default

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        return activation(self.activation)(super().__call__(inputs))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _Pool(nn.Module):
    """Spatial pooling with Keras defaults: stride = pool size, 'VALID' padding."""

    pool_size: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: str = "VALID"

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        size = _pair(self.pool_size)
        return size, _pair(self.strides) if self.strides is not None else size


class MaxPool(_Pool):
    """Max pooling over NHWC feature maps."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size, strides = self.window()
        if self.padding.upper() == "VALID" and size == strides:
            # Non-overlapping windows as a reshape + max: same values, and on XLA:CPU a far cheaper
            # gradient than reduce_window's select-and-scatter.
            n, h, w, c = x.shape
            oh, ow = h // size[0], w // size[1]
            x = x[:, : oh * size[0], : ow * size[1], :].reshape(n, oh, size[0], ow, size[1], c)
            return x.max(axis=(2, 4))
        return nn.max_pool(x, size, strides, self.padding)


class AvgPool(_Pool):
    """Average pooling over NHWC feature maps (padded zeros are not counted, as in Keras)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size, strides = self.window()
        return nn.avg_pool(x, size, strides, self.padding, count_include_pad=False)


class Flatten(nn.Module):
    """Flattens every axis but the batch axis (NHWC order, as Keras does for channels-last)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)
