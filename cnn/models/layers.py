"""Keras-semantics layers: Keras' argument names and defaults (`Conv2D(filters, kernel_size, strides=1,
padding="valid", activation=None, use_bias=True)`, `MaxPooling2D(pool_size=2, strides=None,
padding="valid")`, ...), NHWC, parameters named `kernel` and `bias` as Flax names them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn.models.computation import (
    CONV_FORMULATION,
    DIMENSIONS,
    PLAIN_GRADIENTS,
    conv_as_matmul,
    conv_with_plain_gradients,
    window_max,
)
from cnn.models.conv import pair

ACTIVATIONS: dict[str | None, Callable[[jax.Array], jax.Array] | None] = {
    None: None,
    "linear": None,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": partial(nn.gelu, approximate=False),  # Keras' 'gelu' is the exact one (Flax's default: tanh)
    "softmax": nn.softmax,
}
PADDINGS = ("valid", "same")


def activation(name: str | None) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name` (None or 'linear' for none)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: unknown {name!r}; choose one of {[k for k in ACTIVATIONS if k]}")
    fn = ACTIVATIONS[name]
    return fn if fn is not None else (lambda x: x)


def padding_mode(padding: str) -> str:
    """'valid' or 'same', either case (Keras writes them in lower case, Flax and XLA in upper case)."""
    if not isinstance(padding, str) or padding.lower() not in PADDINGS:
        raise ValueError(f"padding: expected 'valid' or 'same', got {padding!r}")
    return padding.lower()


def _promote(x: jax.Array, kernel: jax.Array, bias: jax.Array | None):
    """The inputs and weights in their common dtype (a missing bias takes no part: under jax_enable_x64 a
    None would count as a float64)."""
    if bias is None:
        return (*nn.dtypes.promote_dtype(x, kernel), None)
    return nn.dtypes.promote_dtype(x, kernel, bias)


class Conv2D(nn.Module):
    """Keras' `Conv2D`: `filters` kernels of `kernel_size` sliding with `strides` over NHWC maps, no
    padding unless `padding="same"`, then the `activation` (the layer's output is the activated map).

    The kernel is `(kh, kw, C_in // groups, filters)` (Keras' and Flax's layout), Glorot-uniform initialised
    as in Keras; the bias starts at zero."""

    filters: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str = "valid"
    dilation_rate: int | Sequence[int] = 1
    groups: int = 1
    activation: str | None = None
    use_bias: bool = True
    kernel_initializer: Callable = nn.initializers.glorot_uniform()
    bias_initializer: Callable = nn.initializers.zeros_init()
    param_dtype: jnp.dtype = jnp.float32  # as Flax's layers: float32 even under jax_enable_x64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = pair(self.kernel_size, "kernel_size")
        if x.shape[-1] % self.groups or self.filters % self.groups:
            raise ValueError(
                f"groups: {self.groups} does not divide the input's {x.shape[-1]} channels and the "
                f"{self.filters} filters"
            )
        shape = (kh, kw, x.shape[-1] // self.groups, self.filters)
        kernel = self.param("kernel", self.kernel_initializer, shape, self.param_dtype)
        bias = (
            self.param("bias", self.bias_initializer, (self.filters,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = _promote(x, kernel, bias)
        strides, dilation = pair(self.strides, "strides"), pair(self.dilation_rate, "dilation_rate")
        padding = padding_mode(self.padding).upper()
        if CONV_FORMULATION.get() == "matmul" and self.groups == 1:
            y = conv_as_matmul(x, kernel, strides, padding, dilation)
        elif PLAIN_GRADIENTS.get() and self.groups == 1:
            y = conv_with_plain_gradients(x, kernel, strides, padding, dilation)
        else:
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=strides,
                padding=padding,
                rhs_dilation=dilation,
                dimension_numbers=DIMENSIONS,
                feature_group_count=self.groups,
            )
        if bias is not None:
            y = y + bias
        return activation(self.activation)(y)


class Dense(nn.Module):
    """Keras' `Dense`: `units` outputs from the last axis, then the `activation`; kernel `(in, units)`."""

    units: int
    activation: str | None = None
    use_bias: bool = True
    kernel_initializer: Callable = nn.initializers.glorot_uniform()
    bias_initializer: Callable = nn.initializers.zeros_init()
    param_dtype: jnp.dtype = jnp.float32  # as Flax's layers: float32 even under jax_enable_x64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_initializer, (x.shape[-1], self.units), self.param_dtype)
        bias = (
            self.param("bias", self.bias_initializer, (self.units,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = _promote(x, kernel, bias)
        y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        if bias is not None:
            y = y + bias
        return activation(self.activation)(y)


class _Pool(nn.Module):
    """Spatial pooling with Keras' defaults: `strides=None` (the pool size), `padding="valid"`."""

    pool_size: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: str = "valid"

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        size = pair(self.pool_size, "pool_size")
        return size, pair(self.strides, "strides") if self.strides is not None else size


class MaxPool(_Pool):
    """Max pooling over NHWC feature maps."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size, strides = self.window()
        if padding_mode(self.padding) == "valid" and size == strides:
            return window_max(x, size)
        return nn.max_pool(x, window_shape=size, strides=strides, padding=padding_mode(self.padding).upper())


class AvgPool(_Pool):
    """Average pooling over NHWC feature maps (padded zeros are not counted, as in Keras)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size, strides = self.window()
        return nn.avg_pool(
            x,
            window_shape=size,
            strides=strides,
            padding=padding_mode(self.padding).upper(),
            count_include_pad=False,
        )


class Flatten(nn.Module):
    """Flattens every axis but the batch axis (NHWC order, as Keras does for channels-last)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)


class GlobalAvgPool(nn.Module):
    """One number per feature map: the mean over all positions, `(N, H, W, C) -> (N, C)`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.mean(axis=(1, 2))


class GlobalMaxPool(nn.Module):
    """One number per feature map: the maximum over all positions, `(N, H, W, C) -> (N, C)`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.max(axis=(1, 2))


class DepthwiseMaxPool(nn.Module):
    """Max across groups of `pool_size` consecutive channels instead of across space (C -> C / pool_size).

    Keras has no such layer; TensorFlow does it with `tf.nn.max_pool(ksize=(1, 1, 1, k))`. A network can
    learn, say, the same pattern at several rotations in neighbouring channels and keep the strongest.
    """

    pool_size: int = 2

    def groups(self, x: jax.Array) -> jax.Array:
        """`(N, H, W, C)` as `(N, H, W, C / pool_size, pool_size)`: the channels in groups."""
        n, h, w, c = x.shape
        if c % self.pool_size:
            raise ValueError(f"pool_size: {c} channels do not split into groups of {self.pool_size}")
        return x.reshape(n, h, w, c // self.pool_size, self.pool_size)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.groups(x).max(axis=-1)


class DepthwiseAvgPool(DepthwiseMaxPool):
    """The mean across groups of `pool_size` consecutive channels (C -> C / pool_size): depth-wise pooling
    that averages the responses instead of keeping the strongest."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.groups(x).mean(axis=-1)


# --------------------------------------------------------------------- the layers of Keras' applications
class BatchNormalization(nn.BatchNorm):
    """Batch norm with Keras' defaults: momentum 0.99, epsilon 1e-3; running statistics in evaluation."""

    momentum: float = 0.99
    epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return super().__call__(x, use_running_average=not train)


class DepthwiseConv2D(nn.Module):
    """One `kernel_size` filter per input channel (`depth_multiplier` 1), as Keras' DepthwiseConv2D; its
    kernel is stored as Flax's grouped convolution, `(kh, kw, 1, C)`."""

    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: str = "valid"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        return nn.Conv(
            c,
            pair(self.kernel_size),
            strides=pair(self.strides),
            padding=padding_mode(self.padding).upper(),
            feature_group_count=c,
            use_bias=self.use_bias,
            kernel_init=nn.initializers.glorot_uniform(),
            name="depthwise",
        )(x)


class ZeroPadding2D(nn.Module):
    """Zeros around the map, as Keras takes `padding`: `p` (all four sides), `(rows, cols)` (symmetric) or
    `((top, bottom), (left, right))`."""

    padding: int | Sequence[int] | Sequence[Sequence[int]] = (1, 1)

    def amounts(self) -> tuple[tuple[int, int], tuple[int, int]]:
        p = self.padding
        if isinstance(p, int):
            return (p, p), (p, p)
        if len(p) == 2 and all(isinstance(v, int) for v in p):
            return (p[0], p[0]), (p[1], p[1])
        if len(p) == 2 and all(len(v) == 2 and all(isinstance(n, int) for n in v) for v in p):
            return (tuple(p[0]), tuple(p[1]))
        raise ValueError(f"padding: expected p, (rows, cols) or ((top, bottom), (left, right)), got {p!r}")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rows, cols = self.amounts()
        return jnp.pad(x, ((0, 0), rows, cols, (0, 0)))


class Activation(nn.Module):
    """An activation as a layer of its own (Keras' `Activation`, or `ReLU(max_value)` with `max_value`)."""

    activation: str | None = "relu"
    max_value: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = activation(self.activation)(x)
        return x if self.max_value is None else jnp.minimum(x, self.max_value)


class Add(nn.Module):
    """The sum of its inputs (a residual connection)."""

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Concatenate(nn.Module):
    """Its inputs joined along the channel axis (an Inception module's branches)."""

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
        return jnp.concatenate(list(xs), axis=-1)


# Keras' class names for the same layers, so that Keras code reads the same here.
MaxPooling2D = MaxPool
AveragePooling2D = AvgPool
GlobalAveragePooling2D = GlobalAvgPool
GlobalMaxPooling2D = GlobalMaxPool
