"""Keras-semantics layers: convolution and dense with a built-in activation, pooling, flatten."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn.conv import pair

ACTIVATIONS: dict[str | None, Callable[[jax.Array], jax.Array] | None] = {
    None: None,
    "linear": None,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "softmax": nn.softmax,
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


class _Pool(nn.Module):
    """Spatial pooling with Keras defaults: stride = pool size, 'VALID' padding."""

    pool_size: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: str = "VALID"

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        size = pair(self.pool_size)
        return size, pair(self.strides) if self.strides is not None else size


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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        if c % self.pool_size:
            raise ValueError(f"pool_size: {c} channels do not split into groups of {self.pool_size}")
        return x.reshape(n, h, w, c // self.pool_size, self.pool_size).max(axis=-1)


class RandomShiftFlip(nn.Module):
    """Training-time augmentation on the device: a random shift of up to `max_shift` pixels (zero fill)
    and a random horizontal flip per image. The identity when not training.
    """

    max_shift: int = 2
    flip: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train:
            return x
        shift_key, flip_key = jax.random.split(self.make_rng("augment"))
        n, h, w, c = x.shape
        s = self.max_shift
        padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
        offsets = jax.random.randint(shift_key, (n, 2), 0, 2 * s + 1)
        x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
        if self.flip:
            x = jnp.where(jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1)), x[:, :, ::-1, :], x)
        return x


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
    padding: str = "VALID"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        return nn.Conv(
            c,
            pair(self.kernel_size),
            strides=pair(self.strides),
            padding=self.padding.upper(),
            feature_group_count=c,
            use_bias=self.use_bias,
            kernel_init=nn.initializers.glorot_uniform(),
            name="depthwise",
        )(x)


class ZeroPadding2D(nn.Module):
    """Zeros around the map: `((top, bottom), (left, right))` rows and columns."""

    padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.pad(x, ((0, 0), tuple(self.padding[0]), tuple(self.padding[1]), (0, 0)))


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
