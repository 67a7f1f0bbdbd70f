"""Cutting a network at a named layer: `Cut` runs a model up to that layer (the layers after it are never
built, so they have no parameters), and `TransferNet` puts a new dense head on such a cut."""

from __future__ import annotations

import flax.linen as nn
import jax

from cnn.models.layers import Dense, Flatten


class _Reached(Exception):
    """Raised inside the backbone once the cut layer has run: the layers after it are never built."""


class Cut(nn.Module):
    """A model run up to (and including) its top-level layer `cut`; it takes `train=` as every model does
    (evaluation mode by default) and hands it to the model."""

    base: nn.Module
    cut: str

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        found: dict[str, jax.Array] = {}
        depth = [0]  # a layer calling its parent class's __call__ runs twice: keep the outermost output

        def stop_after_cut(next_fun, args, kwargs, context):
            module = context.module
            is_cut = (
                context.method_name == "__call__"
                and module.name == self.cut
                and module.parent is not None
                and module.parent.name == "base"
            )
            depth[0] += is_cut
            out = next_fun(*args, **kwargs)
            depth[0] -= is_cut
            if is_cut and depth[0] == 0:
                found["out"] = out
                raise _Reached
            return out

        try:
            with nn.intercept_methods(stop_after_cut):
                self.base(x, train=train)
        except _Reached:
            pass
        if "out" not in found:
            raise ValueError(f"cut: the model has no layer {self.cut!r}")
        return found["out"]


class TransferNet(nn.Module):
    """`base` cut at `cut` (the backbone, run in evaluation mode so its batch statistics never change),
    then flatten and a new head: dense layers of `head` units with ReLU and `outputs` logits. The backbone's
    variables live under `base`, the head's under `head1`, ..., `head_logits`."""

    base: nn.Module
    cut: str
    head: tuple[int, ...] = (64,)
    outputs: int = 10
    frozen: bool = False  # no gradient flows into the backbone: its backward pass is never computed

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Cut(self.base, self.cut, name="backbone")(x, train=False)
        if self.frozen:
            x = jax.lax.stop_gradient(x)
        x = Flatten(name="flatten")(x)
        for i, units in enumerate(self.head, start=1):
            x = Dense(units, activation="relu", name=f"head{i}")(x)
        return Dense(self.outputs, name="head_logits")(x)
