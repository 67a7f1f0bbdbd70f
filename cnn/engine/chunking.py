"""How many training steps one compiled call runs when `steps_per_call` is `auto`: K unrolled steps per call
save a call's fixed cost (dispatch, the host's loop) on all but one step in K, and cost compiling K steps
instead of one. For `steps` planned steps the best K minimises

    compile(K) + steps * step(K),   compile(K) = compile(1) + c * (K - 1),   step(K) = t + h / K,

that is K = sqrt(steps * h / c): a run of a few dozen steps compiles one step, a long run the most steps per
call. `c` (compile seconds per unrolled step) and `h` (a call's fixed seconds) are measured once per device
and program (model, input shape, batch, precision) by the first run long enough for K to matter: it compiles
and times K = 1 and K = `MAX_STEPS` on random images, and the figures are remembered beside the compilation
cache (`jax-steps.json`). Shorter runs, and runs before that, use defaults measured on the 2-core CPU."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from cnn.config import TrainConfig
from cnn.data.spec import DataSpec
from cnn.engine import costs
from cnn.engine.compile_cache import remember, remembered, this_device
from cnn.engine.state import initial_state
from cnn.engine.steps import train_chunk
from cnn.engine.vmap import Members

MAX_STEPS = 10  # more steps per call gain nothing measurable on the CPU and cost compiling (README)
# Before anything is measured: c and h of the seed CNN at batch 32 on the 2-core CPU (README, "Steps per
# call"); only their ratio matters, and it makes runs of up to ~300 steps compile one step.
DEFAULT_COMPILE_PER_STEP, DEFAULT_CALL_SECONDS = 0.3, 0.002
MEASURE_ABOVE = 5000  # planned steps from which measuring c and h (two compilations) pays for itself
FILE = "steps"


@dataclass(frozen=True)
class Choice:
    """The steps per call a run trains with, and why (printed, and recorded in results.json)."""

    steps_per_call: int
    reason: str


def choose_steps_per_call(config: TrainConfig, spec: DataSpec, full_batches: int, rolled: bool) -> Choice:
    """The K of `config` for epochs of `full_batches` full batches: the K given, clamped to an epoch (with a
    line saying so), or for `auto` the K of least total time (module docstring)."""
    given = config.steps_per_call
    if rolled:
        return Choice(1 if given == "auto" else given, "the whole epoch is one rolled call")
    if given != "auto":
        if given > max(full_batches, 1):
            clamped = f"{given} given, clamped to the {full_batches} full batches of an epoch"
            return Choice(full_batches, clamped)
        return Choice(given, "given")
    planned = config.epochs * full_batches
    key = program_key(config, spec)
    fit = fitted(remembered_costs(key))
    if fit is None and planned >= MEASURE_ABOVE:
        measure(config, spec, key)
        fit = fitted(remembered_costs(key))
    c, h = fit or (DEFAULT_COMPILE_PER_STEP, DEFAULT_CALL_SECONDS)
    best = min(range(1, MAX_STEPS + 1), key=lambda k: c * (k - 1) + planned * h / k)
    best = max(1, min(best, full_batches))
    where = "measured on this device" if fit else "defaults: nothing measured yet for this program"
    costs_ = f"{c:.2f} s to compile a step, {1e3 * h:.2f} ms a call"
    return Choice(best, f"auto: {planned} steps planned, {costs_} ({where})")


def measures(config: TrainConfig, spec: DataSpec, full_batches: int, rolled: bool) -> bool:
    """Whether `choose_steps_per_call` would measure this program's costs first (compiling and timing it:
    nothing a background thread may do while a run trains)."""
    planned = config.epochs * full_batches
    if rolled or config.steps_per_call != "auto" or planned < MEASURE_ABOVE:
        return False
    return fitted(remembered_costs(program_key(config, spec))) is None


def program_key(config: TrainConfig, spec: DataSpec) -> str:
    """What the compiled training step depends on: device, JAX, model, input shape, batch and precision."""
    shape = "x".join(map(str, spec.image_shape))
    model = f"{config.model}{json.dumps(config.model_args, sort_keys=True) if config.model_args else ''}"
    batch = f"bs {config.batch_size}|{config.precision}"
    return f"{this_device()}|{model}|{shape}|{spec.num_classes} classes|{batch}"


def remembered_costs(key: str) -> dict[int, dict[str, float]]:
    """The costs measured for `key`, by K: `compile` and/or `step` seconds. An entry that is not numbers is
    ignored with a warning (and measured again)."""
    entry = remembered(FILE).get(key, {})
    found = {}
    try:
        for k, values in entry.items():
            found[int(k)] = {name: float(v) for name, v in values.items() if name in ("compile", "step")}
    except (AttributeError, TypeError, ValueError):
        warnings.warn(f"{key}: unreadable remembered step costs, measured again", stacklevel=2)
        return {}
    return found


def fitted(measured: dict[int, dict[str, float]]) -> tuple[float, float] | None:
    """`(c, h)` from costs measured at two or more values of K (least squares on the lines of the module
    docstring), or None."""
    compiles = [(k, v["compile"]) for k, v in measured.items() if "compile" in v]
    steps = [(1 / k, v["step"]) for k, v in measured.items() if "step" in v]
    if len(compiles) < 2 or len(steps) < 2:
        return None
    return max(slope(compiles), 1e-3), max(slope(steps), 0.0)


def slope(points: list[tuple[float, float]]) -> float:
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0


def measure(config: TrainConfig, spec: DataSpec, key: str, calls: int = 3) -> None:
    """Compiles the training call at K = 1 and K = `MAX_STEPS` on random images, times `calls` calls of each
    after the compiling one, and remembers both under `key`."""
    print(f"Steps per call: measuring the costs of compiling and calling {config.model} here (once)")
    measured = {}
    for k in (1, MAX_STEPS):
        compile_seconds, step = time_program(config, spec, k, calls)
        measured[str(k)] = {"compile": compile_seconds, "step": step}
    remember(FILE, key, measured)


def time_program(config: TrainConfig, spec: DataSpec, k: int, calls: int) -> tuple[float, float]:
    """(seconds compiling, seconds a step) of one run's training call of `k` steps."""
    bs, rng = config.batch_size, np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (bs * k, *spec.image_shape), dtype=np.uint8))
    labels = jax.device_put(rng.integers(0, spec.num_classes, bs * k).astype(np.int32))
    order = np.arange(bs * k, dtype=np.int32)
    state, key = initial_state(config, spec, k), jax.random.PRNGKey(0)
    program = Members(1).program(train_chunk, member_args=(0, 3, 5), static_argnames=("batch_size", "steps"))

    def call(state: Any) -> Any:
        state, metrics = program(state, images, labels, order, 0, key, k, batch_size=bs, steps=k)
        return jax.block_until_ready((state, metrics))[0]

    start = costs.snapshot()
    state = call(state)
    compiled = costs.since(start).seconds
    t = time.perf_counter()
    for _ in range(calls):
        state = call(state)
    return compiled, (time.perf_counter() - t) / (calls * k)
