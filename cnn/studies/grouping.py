"""How several runs of one program (the seeds of a sweep's variant) train fastest on this machine: together
as one vmapped program, their convolutions as XLA's grouped convolution (`vmap`) or as the input's patches
times each run's kernel (`vmap_matmul`), or one after another (`sequential`). Measured, not assumed: a few
steps of each after compiling, once per device, input shape, batch size and number of runs (with the
network that first asks: measuring costs three compilations, so the networks of one sweep share the answer),
and remembered beside the compilation cache (`~/.cache/cnn/jax-together.json`)."""

from __future__ import annotations

import time

import jax
import numpy as np

from cnn.config import TrainConfig
from cnn.data.spec import DataSpec
from cnn.engine.compile_cache import remember, remembered, this_device
from cnn.engine.state import initial_state
from cnn.engine.steps import train_chunk
from cnn.engine.vmap import Members

MODES = ("vmap", "vmap_matmul", "sequential")
CONV = {"vmap": "conv", "vmap_matmul": "matmul"}  # the `Members.conv` of each way of training together


def choose(config: TrainConfig, spec: DataSpec, runs: int, steps: int = 8) -> tuple[str, dict[str, float]]:
    """The fastest way (one of `MODES`) to train `runs` runs of `config` on data described by `spec`, and the
    training images/s measured for each (or remembered from an earlier measurement on this machine)."""
    rates = remembered_rates(config, spec, runs)
    if rates is None:
        rates = {mode: images_per_second(config, spec, runs, mode, steps) for mode in MODES}
        remember("together", _key(config, spec, runs), rates)
    return max(rates, key=rates.get), rates


def remembered_rates(config: TrainConfig, spec: DataSpec, runs: int) -> dict[str, float] | None:
    """The images/s of each of `MODES` measured earlier on this machine for `runs` runs of `config`, or None
    (`choose` measures them)."""
    rates = remembered("together").get(_key(config, spec, runs))
    return rates if isinstance(rates, dict) and set(rates) == set(MODES) else None


def images_per_second(config: TrainConfig, spec: DataSpec, runs: int, mode: str, steps: int = 8) -> float:
    """Training images/s of `runs` runs trained as `mode`, one step per call on random uint8 images, after
    a call that compiles (not timed)."""
    bs = config.batch_size
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (bs * steps, *spec.image_shape), dtype=np.uint8))
    labels = jax.device_put(rng.integers(0, spec.num_classes, bs * steps).astype(np.int32))
    order = np.arange(bs * steps, dtype=np.int32)
    members = Members(1 if mode == "sequential" else runs, CONV.get(mode, "conv"))
    program = members.program(train_chunk, member_args=(0, 3, 5), static_argnames=("batch_size", "steps"))
    groups = [[initial_state(config, spec, steps)] for _ in range(runs)] if mode == "sequential" else [
        [initial_state(config, spec, steps) for _ in range(runs)]
    ]  # fmt: skip
    states = [members.stack(g) for g in groups]
    keys = [members.stack([jax.random.PRNGKey(i) for i in range(len(g))]) for g in groups]
    orders = [members.stack([order] * len(g)) for g in groups]
    live = np.ones(runs, bool) if members.count > 1 else None

    def run(first: int, count: int) -> None:
        out = None
        for i in range(first, first + count):
            for g in range(len(groups)):
                states[g], out = program(
                    states[g], images, labels, orders[g], (i % steps) * bs, keys[g], 1, live=live,
                    batch_size=bs, steps=1,
                )  # fmt: skip
        jax.block_until_ready(out)

    run(0, 1)  # compiles
    t = time.perf_counter()
    run(1, steps)
    return runs * steps * bs / (time.perf_counter() - t)


def _key(config: TrainConfig, spec: DataSpec, runs: int) -> str:
    shape = "x".join(map(str, spec.image_shape))
    return f"{this_device()}|{shape}|{config.precision}|bs {config.batch_size}|{runs} runs"
