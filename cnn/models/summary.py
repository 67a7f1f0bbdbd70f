"""A Keras-style model summary, and more: each layer's type, output shape, parameters and MACs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn.data.spec import FASHION_MNIST
from cnn.models.conv import pair
from cnn.models.layers import Conv2D, Dense, DepthwiseConv2D


@dataclass(frozen=True)
class LayerRow:
    """One layer of a summary; `macs` counts the multiply-accumulates of one image's forward pass."""

    name: str
    kind: str
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    params: int
    non_trainable: int
    macs: int


def count_params(tree) -> int:
    """The number of scalars in a tree of arrays (0 for None or an empty tree)."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(tree)))


def _macs(module: nn.Module, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    if isinstance(module, nn.Conv | Conv2D):
        groups = module.groups if isinstance(module, Conv2D) else module.feature_group_count
        kernel = np.prod(pair(module.kernel_size)) * x_shape[-1] // groups
        return int(np.prod(out_shape[1:]) * kernel)
    if isinstance(module, DepthwiseConv2D):
        return int(np.prod(out_shape[1:]) * np.prod(pair(module.kernel_size)))
    if isinstance(module, nn.Dense | Dense):
        return int(x_shape[-1] * np.prod(out_shape[1:]))
    return 0


def layer_rows(model: nn.Module, input_shape: tuple[int, ...] = FASHION_MNIST.image_shape) -> list[LayerRow]:
    """The model's top-level layers in call order, from shapes alone (`jax.eval_shape`, no computation).
    Traced once per model and shape (a famous network's trace takes seconds), then remembered."""
    return list(remembered(_layer_rows, model, tuple(input_shape)))


def remembered(fn: Callable[..., Any], model: nn.Module, *args: Any) -> Any:
    """`fn(model, *args)`, computed once per equal model (Flax modules compare by their fields) and
    arguments; computed afresh for a model whose fields cannot be hashed."""
    try:
        hash((model, args))
    except TypeError:
        return fn(model, *args)
    return _remembered(fn, model, *args)


@functools.lru_cache(maxsize=256)
def _remembered(fn: Callable[..., Any], model: nn.Module, *args: Any) -> Any:
    return fn(model, *args)


def _layer_rows(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[LayerRow, ...]:
    calls: dict[str, tuple[nn.Module, tuple[int, ...], tuple[int, ...]]] = {}
    macs: dict[tuple[str, ...], int] = {}  # of every layer at any depth, counted under its top-level layer

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module, path = context.module, tuple(context.module.scope.path)
        if context.method_name != "__call__" or not path:
            return out
        first = args[0] if hasattr(args[0], "shape") else args[0][0]  # Add, Concatenate take a list
        macs.setdefault(path, _macs(module, first.shape, out.shape))  # a layer calling its parent's: once
        if len(path) == 1 and module.name not in calls:
            calls[module.name] = (module, first.shape, out.shape)
        return out

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    params, stats = variables.get("params", {}), variables.get("batch_stats", {})

    def owner(name: str, module: nn.Module) -> str:
        # A layer wrapping a model field (cnn.studies.transfer.Cut) holds that model's variables under its
        # name.
        wrapped = getattr(module, "base", None)
        return wrapped.name if isinstance(wrapped, nn.Module) and wrapped.name else name

    return tuple(
        LayerRow(
            name,
            type(module).__name__,
            (None, *x_shape[1:]),
            (None, *out_shape[1:]),
            count_params(params.get(owner(name, module), {})),
            count_params(stats.get(owner(name, module), {})),
            sum(n for path, n in macs.items() if path[0] in (name, owner(name, module))),
        )
        for name, (module, x_shape, out_shape) in calls.items()
    )


@dataclass(frozen=True)
class Totals:
    """Whole-model figures of a summary (per image where it says so)."""

    trainable: int
    non_trainable: int
    macs: int
    activation_bytes: int


def totals(rows: list[LayerRow], dtype_bytes: int = 4) -> Totals:
    """Parameter counts, MACs per image, and the bytes of every layer's output for one image (float32)."""
    activations = sum(int(np.prod(r.output_shape[1:])) for r in rows) * dtype_bytes
    return Totals(
        sum(r.params for r in rows),
        sum(r.non_trainable for r in rows),
        sum(r.macs for r in rows),
        activations,
    )


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


def format_summary(rows: list[LayerRow], title: str = "") -> str:
    """The rows as a Keras-like text table, with MACs per layer and the totals Keras shows and more."""
    headers = ("Layer (type)", "Output Shape", "Param #", "MACs")
    cells = [
        (
            f"{r.name} ({r.kind})",
            str(r.output_shape),
            f"{r.params + r.non_trainable:,}",
            _human(r.macs) if r.macs else "0",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    width = sum(widths) + 9

    def fmt(cols):
        name, shape, params, macs = cols
        w = widths
        return f"{name:<{w[0]}}   {shape:<{w[1]}}   {params:>{w[2]}}   {macs:>{w[3]}}"

    t = totals(rows)
    out = [f'Model: "{title}"'] if title else []
    out += [
        "-" * width,
        fmt(headers),
        "=" * width,
        *(fmt(c) for c in cells),
        "=" * width,
        f"Total params: {t.trainable + t.non_trainable:,}",
        f"Trainable params: {t.trainable:,}",
        f"Non-trainable params: {t.non_trainable:,}",
        f"MACs per image (forward): {t.macs:,} ({_human(t.macs)})",
        f"Activation memory per image (float32 layer outputs): {t.activation_bytes / 1024:,.1f} KiB",
        "-" * width,
    ]
    return "\n".join(out)


def nonfinite(tree: Any) -> list[str]:
    """The paths (`conv1/kernel`) of the float arrays in `tree` that hold a NaN or an Inf: a run never saves
    such values (its NaN guard stops it first), so in a checkpoint or a weight file they mean damage."""
    found = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            found.append("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path))
    return found
