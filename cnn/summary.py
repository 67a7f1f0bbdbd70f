"""A Keras-style model summary: each layer's name, type, output shape and parameter count."""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn.data import IMAGE_SHAPE


@dataclass(frozen=True)
class LayerRow:
    """One layer of a summary."""

    name: str
    kind: str
    output_shape: tuple[int | None, ...]
    params: int


def _param_count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def layer_rows(model: nn.Module, input_shape: tuple[int, ...] = IMAGE_SHAPE) -> list[LayerRow]:
    """The model's top-level layers in call order, from shapes alone (`jax.eval_shape`, no computation)."""
    calls: dict[str, tuple[str, tuple[int, ...]]] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if len(module.scope.path) == 1 and context.method_name == "__call__" and module.name not in calls:
            calls[module.name] = (type(module).__name__, out.shape)
        return out

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    params = variables.get("params", {})
    return [
        LayerRow(name, kind, (None, *shape[1:]), _param_count(params.get(name, {})))
        for name, (kind, shape) in calls.items()
    ]


def format_summary(rows: list[LayerRow], title: str = "") -> str:
    """The rows as a Keras-like text table with the total parameter count."""
    headers = ("Layer (type)", "Output Shape", "Param #")
    cells = [(f"{r.name} ({r.kind})", str(r.output_shape), f"{r.params:,}") for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "-" * (sum(widths) + 6)

    def fmt(cols):
        return f"{cols[0]:<{widths[0]}}   {cols[1]:<{widths[1]}}   {cols[2]:>{widths[2]}}"

    total = sum(r.params for r in rows)
    out = [f'Model: "{title}"'] if title else []
    out += [
        line,
        fmt(headers),
        "=" * len(line),
        *(fmt(c) for c in cells),
        "=" * len(line),
        f"Total params: {total:,}",
        f"Trainable params: {total:,}",
        "Non-trainable params: 0",
        line,
    ]
    return "\n".join(out)
