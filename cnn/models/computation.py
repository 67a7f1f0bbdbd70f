"""How the layers compute on XLA where the plain formulation is slow: a convolution as the patches of
its input times the kernel (runs trained together under `jax.vmap`), a convolution whose gradient is written
out in the layout XLA:CPU computes fast (rolled training loops), and max pooling over non-overlapping windows
as strided slices with a hand-written gradient. Each gives the numbers of the plain formulation (tested)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from functools import partial

import jax
import jax.numpy as jnp

# How `Conv2D` computes while a program is traced: XLA's convolution, or (`"matmul"`) the patches of the
# input times the kernel as one matrix product. Under `jax.vmap` over runs with their own kernels, XLA turns
# a convolution into a grouped one, which accelerators run slowly; the patches' product becomes a batched
# matrix product instead. Set for the tracing of a program by `conv_formulation` (see `cnn.engine.vmap`).
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
# `conv_with_plain_gradients`); set while a rolled training loop is traced on the CPU (see
# `cnn.engine.steps`).
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


def window_max(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Max over non-overlapping `size` windows ('valid'), computed so that XLA differentiates it cheaply.

    The same values and gradient as `reduce_window` max (a tie's gradient shared equally by the tied
    inputs, as `jnp.max` shares it), whose select-and-scatter gradient is slow on XLA:CPU. On the CPU:
    `reduce_window` where nothing differentiates it, and where something does, the maximum of the window's
    strided slices with a hand-written gradient, faster there than a reshape's (`scripts/profile_step.py`
    compares them); elsewhere a reshape and a max, the faster on a GPU."""
    n, h, w, c = x.shape
    oh, ow = h // size[0], w // size[1]
    x = x[:, : oh * size[0], : ow * size[1], :]
    if jax.default_backend() == "cpu":
        return _slices_max(x, tuple(size))
    return x.reshape(n, oh, size[0], ow, size[1], c).max(axis=(2, 4))


def _window_slices(x: jax.Array, size: tuple[int, int]) -> list[jax.Array]:
    """Each position of a window as its own map: `x[:, i::rows, j::cols]`, row by row."""
    return [x[:, i :: size[0], j :: size[1], :] for i in range(size[0]) for j in range(size[1])]


# Whether non-overlapping max pooling computes as the maximum of strided slices also where nothing
# differentiates it (see `window_max`); set while a program is traced for ONNX (see `cnn.inference.export`).
MAX_AS_SLICES = contextvars.ContextVar("max_as_slices", default=False)


@contextlib.contextmanager
def max_as_slices() -> Iterator[None]:
    """While tracing inside this block, `window_max` is the maximum of the window's strided slices even
    where it is not differentiated: operations every ONNX runtime runs (jax2onnx turns `reduce_window`
    into an NHWC MaxPool that onnxruntime refuses)."""
    token = MAX_AS_SLICES.set(True)
    try:
        yield
    finally:
        MAX_AS_SLICES.reset(token)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _slices_max(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    # Not differentiated (evaluation, prediction): `reduce_window`, which XLA:CPU fuses with the layers
    # around it (the seed CNN's evaluation ran 2.4-3.2x as many images a second as with the slices).
    if MAX_AS_SLICES.get():
        return _maximum_of_slices(x, size)
    window = (1, *size, 1)
    return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, window, window, "VALID")


def _maximum_of_slices(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    y, *rest = _window_slices(x, size)
    for s in rest:
        y = jnp.maximum(y, s)
    return y


def _slices_max_forward(x: jax.Array, size: tuple[int, int]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    # Differentiated (training): the slices' maximum, the same values, faster in the training step.
    y = _maximum_of_slices(x, size)
    return y, (x, y)


def _slices_max_backward(size: tuple[int, int], saved: tuple[jax.Array, jax.Array], g: jax.Array):
    x, y = saved
    hits = [s == y for s in _window_slices(x, size)]
    share = g / sum(hit.astype(g.dtype) for hit in hits)  # a tie's gradient split equally
    parts = [jnp.where(hit, share, 0).astype(x.dtype) for hit in hits]
    rows = [jnp.stack(parts[i * size[1] : (i + 1) * size[1]], axis=3) for i in range(size[0])]
    return (jnp.stack(rows, axis=2).reshape(x.shape),)


_slices_max.defvjp(_slices_max_forward, _slices_max_backward)
