"""An epoch as compiled calls: `EpochPlan` (the full batches in chunks of `steps_per_call` steps, or all in
one rolled call, then the last, partial batch), whether an epoch runs rolled (`rolled_epoch`), and the epoch's
metric sums added on the host in the order the pinned histories depend on (`sum_on_host`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from cnn.config import TrainConfig
from cnn.engine.placement import HostData
from cnn.engine.state import steps_per_epoch


def sum_on_host(calls: list[dict[str, np.ndarray]], plan: EpochPlan) -> dict[str, np.ndarray]:
    """The epoch's metric sums from each call's per-step metrics (the last axis; `first_nonfinite`: the
    first), added on the host in float32: a call whose every step counts as its own sum, then the rest
    step by step. (That is the order in which the earlier code added them; the pinned histories of
    `tests/test_histories.py` depend on it to the last bit.)"""
    totals = None
    for call, metrics in zip(plan.calls, calls, strict=True):
        if call.steps == 1:
            parts = [metrics]
        elif call.active == call.steps:
            parts = [{k: _fold(v, call.active, k) for k, v in metrics.items()}]
        else:
            parts = [{k: v[..., i] for k, v in metrics.items()} for i in range(call.active)]
        for part in parts:
            totals = part if totals is None else add_on_host(totals, part)
    return totals


def _fold(values: np.ndarray, count: int, key: str) -> np.ndarray:
    """The first `count` values of the last axis, folded left to right (as XLA reduces a short axis)."""
    total = values[..., 0]
    for i in range(1, count):
        total = np.minimum(total, values[..., i]) if key == "first_nonfinite" else total + values[..., i]
    return total


def add_on_host(totals: dict[str, np.ndarray], metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        k: np.minimum(v, metrics[k]) if k == "first_nonfinite" else v + metrics[k] for k, v in totals.items()
    }


# ----------------------------------------------------------------------------------------- one epoch
@dataclass(frozen=True)
class Call:
    """One compiled call of an epoch: `steps` steps of `batch` examples from example `start` of the
    epoch's order, of which the first `active` count (an epoch's last, shorter chunk runs in the chunks'
    program); `rolled`: a rolled loop (the whole epoch's full batches at once)."""

    start: int
    steps: int
    active: int
    batch: int
    rolled: bool = False


@dataclass(frozen=True)
class EpochPlan:
    """An epoch of `examples` as compiled calls: the full batches in chunks of `steps_per_call` (or all in
    one rolled call), then the last, partial batch on its own (never dropped)."""

    examples: int
    batch_size: int
    calls: tuple[Call, ...]

    @property
    def steps(self) -> int:
        return steps_per_epoch(self.examples, self.batch_size)

    @classmethod
    def of(cls, examples: int, config: TrainConfig, rolled: bool, host: bool = False) -> EpochPlan:
        """`host`: batches sent from the host, each call as many as it trains (no step left out)."""
        bs = config.batch_size
        full, rest = divmod(examples, bs)
        if rolled and full > 1:
            calls = [Call(0, full, full, bs, rolled=True)]
        else:
            chunk = max(1, min(config.steps_per_call, full))
            calls = [Call(i * bs, chunk, min(chunk, full - i), bs) for i in range(0, full, chunk)]
            if host:
                calls = [Call(c.start, c.active, c.active, bs) for c in calls]
        if rest:
            calls.append(Call(full * bs, 1, 1, rest))
        return cls(examples, bs, tuple(calls))


def rolled_epoch(config: TrainConfig, data: Any) -> bool:
    """Whether an epoch runs as one compiled call with a rolled loop (`epoch_loop`; auto: on GPU and TPU,
    where launches cost more than loops; XLA:CPU runs convolutions in loop bodies far slower). Data
    streamed from the host comes in chunks."""
    if isinstance(data, HostData) or config.epoch_loop == "chunks":
        return False
    return config.epoch_loop == "scan" or jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")
