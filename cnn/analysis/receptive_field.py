"""Receptive fields: how many input pixels each layer's output sees, computed analytically (size, jump and
start of every layer, from the layers' kernels, strides, dilations and paddings) and measured empirically
(the input pixels whose gradient reaches one output unit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnn.data.spec import FASHION_MNIST
from cnn.models.conv import Padding, conv2d, output_size, pair, pool2d, resolve_padding


@dataclass(frozen=True)
class SpatialLayer:
    """One layer's geometry along an axis: kernel (or window), stride, dilation and its leading padding."""

    name: str
    kernel: int
    stride: int = 1
    padding: Padding = "valid"
    dilation: int = 1
    pool: bool = False


@dataclass(frozen=True)
class ReceptiveField:
    """After a layer: receptive-field size, jump (input pixels between neighbouring outputs), start
    (input coordinate of the centre of output 0's field) and the output length."""

    name: str
    size: int
    jump: int
    start: float
    output: int


def receptive_field(
    layers: Sequence[SpatialLayer | tuple] | Any, input_size: int = 28
) -> list[ReceptiveField]:
    """Receptive field of each layer of a stack, along one axis.

    With k_eff = d·(k − 1) + 1 and p the padding before the first pixel, through each layer:
      size  <- size + (k_eff − 1) · jump
      start <- start + ((k_eff − 1) / 2 − p) · jump
      jump  <- jump · s

    Args:
      layers: `SpatialLayer`s, or (kernel, stride, padding, dilation) tuples, or a zoo model (its conv and
        pooling layers up to the first non-spatial one are read from the module).
      input_size: the input's length along the axis (needed to resolve 'same' padding).
    """
    specs = (
        spatial_layers(layers)
        if hasattr(layers, "init")
        else [
            layer if isinstance(layer, SpatialLayer) else SpatialLayer(f"layer{i + 1}", *layer)
            for i, layer in enumerate(layers)
        ]
    )
    size, jump, start, n = 1, 1, 0.0, input_size
    fields = []
    for layer in specs:
        (before, _), _ = resolve_padding(
            layer.padding, (n, 1), (layer.kernel, 1), (layer.stride, 1), (layer.dilation, 1)
        )
        span = layer.dilation * (layer.kernel - 1) + 1
        n = output_size(n, layer.kernel, layer.stride, layer.padding, layer.dilation)
        size, start, jump = (
            size + (span - 1) * jump,
            start + ((span - 1) / 2 - before) * jump,
            jump * layer.stride,
        )
        fields.append(ReceptiveField(layer.name, size, jump, start, n))
    return fields


def spatial_layers(
    model: Any, input_shape: tuple[int, int, int] = FASHION_MNIST.image_shape
) -> list[SpatialLayer]:
    """The conv and pooling layers of a Flax model, in call order, up to its first non-spatial layer."""
    import flax.linen as nn

    found: list[SpatialLayer] = []
    ended = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        fresh = module.name not in {layer.name for layer in found}  # Conv2D's super().__call__ runs too
        if len(module.scope.path) == 1 and context.method_name == "__call__" and fresh and not ended:
            if callable(getattr(module, "window", None)):  # cnn.models.layers' spatial pooling
                window, strides = module.window()
                found.append(
                    SpatialLayer(module.name, window[0], strides[0], module.padding.lower(), pool=True)
                )
            elif isinstance(module, nn.Conv) or hasattr(
                module, "kernel_size"
            ):  # Flax's or cnn.models.layers'
                dilation = getattr(module, "kernel_dilation", None) or getattr(module, "dilation_rate", 1)
                found.append(
                    SpatialLayer(
                        module.name,
                        pair(module.kernel_size, "kernel")[0],
                        pair(module.strides or 1, "stride")[0],
                        _flax_padding(module.padding),
                        pair(dilation or 1, "dilation")[0],
                    )
                )
            elif args and getattr(args[0], "ndim", 4) != 4:
                ended.append(module.name)
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    return found


def _flax_padding(padding: Any) -> Padding:
    if isinstance(padding, str):
        return padding.lower()
    if isinstance(padding, int):
        return padding
    return tuple(tuple(p) for p in padding)


def empirical_receptive_field(
    layers: Sequence[SpatialLayer], input_size: int = 28, unit: int | None = None
) -> tuple[int, int]:
    """Measures the receptive field of output `unit` (default: the middle one) by differentiation.

    The stack is rebuilt with all-ones kernels, no activation and average instead of max pooling, so every
    input pixel the unit can see has a positive gradient; returns (first, last) input pixel that does.
    """

    def stack(x):
        for layer in layers:
            if layer.pool:
                x = pool2d(x, (layer.kernel, 1), (layer.stride, 1), _axis_padding(layer.padding), mode="avg")
            else:
                kernel = jnp.ones((layer.kernel, 1, 1, 1))
                x = conv2d(
                    x,
                    kernel,
                    stride=(layer.stride, 1),
                    padding=_axis_padding(layer.padding),
                    dilation=(layer.dilation, 1),
                )
        return x

    x = jnp.ones((1, input_size, 1, 1))
    out_len = jax.eval_shape(stack, x).shape[1]
    unit = out_len // 2 if unit is None else unit
    # one compiled program for the whole gradient, not one per operation of the stack
    grad = jax.jit(jax.grad(lambda x: stack(x)[0, unit, 0, 0]))(x)[0, :, 0, 0]
    seen = np.flatnonzero(np.asarray(grad) > 0)
    return int(seen[0]), int(seen[-1])


def _axis_padding(padding: Padding) -> Padding:
    """A one-axis padding spec for an (n, 1) image: the column axis gets none."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return ((padding, padding), (0, 0))
    return (tuple(padding[0]), (0, 0))
