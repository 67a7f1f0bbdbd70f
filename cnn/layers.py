"""Keras-semantics layers: Keras' argument names and defaults (`Conv2D(filters, kernel_size, strides=1,
padding="valid", activation=None, use_bias=True)`, `MaxPooling2D(pool_size=2, strides=None,
padding="valid")`, ...), NHWC, parameters named `kernel` and `bias` as Flax names them."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from functools import partial

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


# How `Conv2D` computes while a program is traced: XLA's convolution, or (`"matmul"`) the patches of the
# input times the kernel as one matrix product. Under `jax.vmap` over runs with their own kernels, XLA turns
# a convolution into a grouped one, which accelerators run slowly; the patches' product becomes a batched
# matrix product instead. Set for the tracing of a program by `conv_formulation` (see `cnn.members`).
CONV_FORMULATION = contextvars.ContextVar("conv_formulation", default="conv")


@contextlib.contextmanager
def conv_formulation(kind: str) -> Iterator[None]:
    """While tracing inside this block, `Conv2D` computes as `kind`: 'conv' or 'matmul'."""
    if kind not in ("conv", "matmul"):
        raise ValueError(f"conv formulation: expected 'conv' or 'matmul', got {kind!r}")
    token = CONV_FORMULATION.set(kind)
    try:
        yield
    finally:
        CONV_FORMULATION.reset(token)


# Whether `Conv2D`'s gradient is written out as convolutions in the layout XLA:CPU computes fast (see
# `conv_with_plain_gradients`); set while a rolled training loop is traced on the CPU (see `cnn.steps`).
PLAIN_GRADIENTS = contextvars.ContextVar("plain_gradients", default=False)


@contextlib.contextmanager
def plain_gradients(on: bool = True) -> Iterator[None]:
    """While tracing inside this block, `Conv2D` (without groups) differentiates through
    `conv_with_plain_gradients`."""
    token = PLAIN_GRADIENTS.set(on)
    try:
        yield
    finally:
        PLAIN_GRADIENTS.reset(token)


DIMENSIONS = ("NHWC", "HWIO", "NHWC")


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_with_plain_gradients(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str, dilation: tuple[int, int]
) -> jax.Array:
    """`lax.conv_general_dilated` (NHWC, HWIO, no groups) whose gradient is two convolutions of that same
    layout on transposed operands. JAX's own gradient convolves in other layouts (the kernel's gradient
    with the batch as the feature axis); XLA:CPU rewrites those into this layout in straight-line code,
    but not inside a rolled loop's body, where it falls back to a generic loop that is an order of magnitude
    slower. Both gradients are the same sums (equal to JAX's in the tests)."""
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=DIMENSIONS
    )


def _plain_forward(x, kernel, strides, padding, dilation):
    return conv_with_plain_gradients(x, kernel, strides, padding, dilation), (x, kernel)


def _plain_backward(strides, padding, dilation, saved, g):
    x, kernel = saved
    kh, kw = kernel.shape[:2]
    spans = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilation, strict=True)]
    pads = jax.lax.padtype_to_pads(x.shape[1:3], spans, strides, padding)
    # The input's gradient: `g` dilated by the strides, against the flipped kernel, its channels swapped.
    dx_pads = [
        (span - 1 - low, size + low - (out - 1) * stride - 1)
        for (low, _), size, stride, span, out in zip(
            pads, x.shape[1:3], strides, spans, g.shape[1:3], strict=True
        )
    ]
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
    dx = jax.lax.conv_general_dilated(
        g, flipped, (1, 1), dx_pads, lhs_dilation=strides, rhs_dilation=dilation, dimension_numbers=DIMENSIONS
    )
    # The kernel's gradient: the input's channels as the batch, its examples as the features.
    dk = jax.lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), dilation, pads,
        rhs_dilation=strides, dimension_numbers=DIMENSIONS,
    )  # fmt: skip
    dk = jnp.transpose(dk[:, :kh, :kw, :], (1, 2, 0, 3))
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


conv_with_plain_gradients.defvjp(_plain_forward, _plain_backward)


def conv_as_matmul(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str, dilation: tuple[int, int]
) -> jax.Array:
    """`lax.conv_general_dilated` (NHWC, HWIO, no groups) as the input's patches times the kernel: the
    kh·kw shifted, strided views of the padded input side by side, then one matrix product."""
    kh, kw, cin, filters = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    h, w = x.shape[1:3]
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "SAME":
        out_h, out_w = -(-h // sh), -(-w // sw)
        pad_h, pad_w = max((out_h - 1) * sh + span_h - h, 0), max((out_w - 1) * sw + span_w - w, 0)
        x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    else:
        out_h, out_w = (h - span_h) // sh + 1, (w - span_w) // sw + 1
    views = [
        x[:, i * dh : i * dh + (out_h - 1) * sh + 1 : sh, j * dw : j * dw + (out_w - 1) * sw + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(views, axis=-1)  # (N, out_h, out_w, kh·kw·C), in the kernel's (kh, kw, C) order
    return patches @ kernel.reshape(kh * kw * cin, filters)


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


def window_max(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Max over non-overlapping `size` windows ('valid'), computed so that XLA differentiates it cheaply.

    The same values and gradient as `reduce_window` max (a tie's gradient shared equally by the tied
    inputs, as `jnp.max` shares it), whose select-and-scatter gradient is slow on XLA:CPU. On the CPU: the
    maximum of the window's strided slices with a hand-written gradient, 2–3× faster than a reshape's at
    batch 128–256 (`scripts/profile_step.py`); elsewhere a reshape and a max (what was measured on GPU)."""
    n, h, w, c = x.shape
    oh, ow = h // size[0], w // size[1]
    x = x[:, : oh * size[0], : ow * size[1], :]
    if jax.default_backend() == "cpu":
        return _slices_max(x, tuple(size))
    return x.reshape(n, oh, size[0], ow, size[1], c).max(axis=(2, 4))


def _window_slices(x: jax.Array, size: tuple[int, int]) -> list[jax.Array]:
    """Each position of a window as its own map: `x[:, i::rows, j::cols]`, row by row."""
    return [x[:, i :: size[0], j :: size[1], :] for i in range(size[0]) for j in range(size[1])]


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _slices_max(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    out, *rest = _window_slices(x, size)
    for s in rest:
        out = jnp.maximum(out, s)
    return out


def _slices_max_forward(x: jax.Array, size: tuple[int, int]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = _slices_max(x, size)
    return y, (x, y)


def _slices_max_backward(size: tuple[int, int], saved: tuple[jax.Array, jax.Array], g: jax.Array):
    x, y = saved
    hits = [s == y for s in _window_slices(x, size)]
    share = g / sum(hit.astype(g.dtype) for hit in hits)  # a tie's gradient split equally
    parts = [jnp.where(hit, share, 0).astype(x.dtype) for hit in hits]
    rows = [jnp.stack(parts[i * size[1] : (i + 1) * size[1]], axis=3) for i in range(size[0])]
    return (jnp.stack(rows, axis=2).reshape(x.shape),)


_slices_max.defvjp(_slices_max_forward, _slices_max_backward)


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


def rotate(images: jax.Array, degrees: jax.Array) -> jax.Array:
    """NHWC images turned `degrees` (one angle per image) counter-clockwise about their centres, bilinear,
    zeros where the turned image does not reach."""
    n, h, w, c = images.shape
    rows, cols = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    cy, cx = (h - 1) / 2, (w - 1) / 2

    def one(image: jax.Array, angle: jax.Array) -> jax.Array:
        t = jnp.deg2rad(angle)
        # Where each output pixel comes from: the inverse rotation of its coordinates.
        src_r = cy + (rows - cy) * jnp.cos(t) + (cols - cx) * jnp.sin(t)
        src_c = cx - (rows - cy) * jnp.sin(t) + (cols - cx) * jnp.cos(t)
        sample = partial(jax.scipy.ndimage.map_coordinates, coordinates=[src_r, src_c], order=1, cval=0.0)
        return jnp.stack([sample(image[:, :, k]) for k in range(c)], axis=-1)

    return jax.vmap(one)(images, jnp.broadcast_to(jnp.asarray(degrees, jnp.float32), (n,)))


class RandomRotation(nn.Module):
    """Training-time augmentation on the device: each image turned by a random angle in
    [-`max_degrees`, `max_degrees`] (Keras' `RandomRotation` takes the range as a fraction of a full turn:
    `factor = max_degrees / 360`). The identity when not training."""

    max_degrees: float = 180.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train or not self.max_degrees:
            return x
        angles = jax.random.uniform(self.make_rng("augment"), (x.shape[0],), minval=-1.0, maxval=1.0)
        return rotate(x, angles * self.max_degrees)


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
