"""Several runs trained as one program: their states stacked along a leading member axis, and the step
functions of `cnn.engine.steps` (written for one run) under `jax.vmap`. One run is the same code without the
axis: its programs are the plain compiled functions. Everything a loop needs to treat one run and many alike
is here, so no other module asks how many runs there are."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnn.config import TrainConfig
from cnn.models.computation import conv_formulation

FORMULATIONS = ("conv", "matmul")  # how the convolutions of runs trained together compute, see `Members`


@dataclass(frozen=True)
class Members:
    """`count` runs sharing one compiled program (1: a plain run, no member axis). `conv`: how the
    convolutions of several runs compute under `jax.vmap`: 'conv', XLA's grouped convolution (what vmap
    makes of a convolution whose kernel differs per run), or 'matmul', the input's patches times each
    run's kernel as a batched matrix product (see `cnn.models.computation.conv_as_matmul`)."""

    count: int
    conv: str = "conv"

    def __post_init__(self):
        if self.conv not in FORMULATIONS:
            raise ValueError(f"conv: expected one of {FORMULATIONS}, got {self.conv!r}")

    def program(
        self,
        fn: Callable[..., Any],
        member_args: Sequence[int] = (0,),
        static_argnames: Sequence[str] = (),
        donate: bool = True,
    ) -> Callable[..., Any]:
        """`fn` compiled for these runs, called as `program(*args, live=..., **static)`. The positional
        arguments at `member_args` carry one value per run (a leading member axis), the others are shared;
        with several runs, those whose `live` is False keep their state (argument 0) unchanged.
        `donate`: the state's buffers are reused for the result. Equal requests return the same program."""
        conv = self.conv if self.count > 1 else "conv"
        return _program(fn, self.count > 1, tuple(member_args), tuple(static_argnames), donate, conv)

    def stack(self, trees: Sequence[Any]) -> Any:
        """One tree per run as the program's argument (stacked leaf by leaf; one run: its own tree)."""
        if self.count == 1:
            return trees[0]
        return _stack(list(trees))

    def member(self, tree: Any, i: int) -> Any:
        """Run `i`'s part of a tree the program returned."""
        if self.count == 1:
            return tree
        return _member(tree, i)

    def per_run(self, tree: Any) -> list[Any]:
        """A tree of results on the host (numbers, NumPy arrays) as one tree per run."""
        if self.count == 1:
            return [tree]
        return [jax.tree.map(lambda x, i=i: np.asarray(x)[i], tree) for i in range(self.count)]


@functools.cache
def _program(
    fn: Callable[..., Any],
    vmapped: bool,
    member_args: tuple[int, ...],
    static_argnames: tuple[str, ...],
    donate: bool,
    conv: str,
) -> Callable[..., Any]:
    def run(*args: Any, live: Any = None, **static: Any) -> Any:
        one = functools.partial(fn, **static)
        if not vmapped:
            return one(*args)
        axes = tuple(0 if i in member_args else None for i in range(len(args)))
        with conv_formulation(conv):  # read while the program is traced
            out = jax.vmap(one, in_axes=axes)(*args)
        if live is None:
            return out
        new, metrics = out
        return select_members(live, new, args[0]), metrics

    return jax.jit(run, donate_argnums=(0,) if donate else (), static_argnames=static_argnames)


def select_members(mask: jax.Array, new: Any, old: Any) -> Any:
    """Stacked trees: the members of `new` where `mask` holds, those of `old` elsewhere."""
    return jax.tree.map(lambda n, o: jnp.where(mask.reshape(-1, *[1] * (n.ndim - 1)), n, o), new, old)


@jax.jit
def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def _member(tree: Any, i: jax.Array) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


# What runs trained together may differ in: the rest of their configs (model, data, batch size, ...) is
# the one program they share.
TOGETHER_FIELDS = ("seed", "lr", "weight_decay")


def check_together(configs: Sequence[TrainConfig], workdirs: Sequence[Path]) -> None:
    """Refuses runs that cannot share one program (naming the field), or share a folder."""
    if not configs or len(configs) != len(workdirs) or len(set(workdirs)) != len(workdirs):
        raise ValueError("fit_together: give one distinct workdir per config (and at least one config)")
    first = {k: v for k, v in configs[0].to_dict().items() if k not in TOGETHER_FIELDS}
    for c in configs[1:]:
        other = {k: v for k, v in c.to_dict().items() if k not in TOGETHER_FIELDS}
        differ = sorted(k for k in first if first[k] != other[k])
        if differ:
            raise ValueError(
                f"fit_together: runs trained together may differ only in {', '.join(TOGETHER_FIELDS)}; "
                f"these differ: {', '.join(differ)}"
            )


def run_labels(configs: Sequence[TrainConfig]) -> list[str]:
    """How each of several runs trained together is named in its lines: the `TOGETHER_FIELDS` that differ
    between them, e.g. `lr 0.001, seed 0` (`seed 0` alone when only the seeds differ)."""
    differ = [k for k in TOGETHER_FIELDS if len({getattr(c, k) for c in configs}) > 1] or ["seed"]
    order = [k for k in ("lr", "weight_decay", "seed") if k in differ]
    return [", ".join(f"{k} {getattr(c, k):g}" for k in order) for c in configs]
