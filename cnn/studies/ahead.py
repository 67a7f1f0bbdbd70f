"""Compile ahead: while a sweep trains, the programs of its next training compile in a background thread.

A training is a group of runs trained as one program, or one run of a group trained one after another. The
next one's initialisation, shuffle, training calls and evaluations are the very programs
`cnn.train.train_runs` will call (same steps per call, members, shapes and placement), so JAX's in-memory
caches serve them when it starts. XLA compiles without holding the GIL: a CPU with a spare core, or a host
with an accelerator, hides the compiling behind the training.

One compile at a time, never for a run the sweep skips, nor where choosing the next training's program
would measure something (`--together auto` or `steps_per_call` auto not yet measured here). A training
waits for its programs still compiling (so that compiling is not counted as its training); a failed compile
is said in one line and the run compiles as it would have. A stopped command does not wait for a compile in
flight (`cnn.cli.main.leave`)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence

import jax
import numpy as np

from cnn.config import TrainConfig
from cnn.data.spec import DataSpec, Splits
from cnn.engine import costs
from cnn.engine.chunking import measures
from cnn.engine.epochs import rolled_epoch
from cnn.engine.evaluation import compile_metric_sums
from cnn.engine.placement import training_data
from cnn.engine.state import run_keys
from cnn.engine.vmap import Members
from cnn.errors import SweepError
from cnn.runs.signals import pending
from cnn.studies.grouping import CONV, remembered_rates
from cnn.train import call_program, epoch_orders, epoch_plan, start_states, training_split

SETTINGS = ("auto", "on", "off")  # auto: on where a core (or an accelerator) is spare
THREAD_NAME = "cnn-compile-ahead"


def check_compile_ahead(setting: str) -> None:
    """Refuses a `--compile-ahead` that is not one of `SETTINGS` (SweepError naming them)."""
    if setting not in SETTINGS:
        raise SweepError(f"--compile-ahead: expected one of {', '.join(SETTINGS)}, got {setting!r}")


def spare_core() -> bool:
    """Whether a compile can run beside the training: more than one CPU core for this process, or an
    accelerator (which trains while the host's cores compile)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores > 1 or jax.default_backend() != "cpu"


def compiling() -> bool:
    """Whether a compile ahead is still running in this process."""
    return any(t.name == THREAD_NAME and t.is_alive() for t in threading.enumerate())


# ----------------------------------------------------------------------------------- what is compiled
def compile_training(configs: Sequence[TrainConfig], members: Members, splits: Splits) -> None:
    """Compiles, without training, the programs `cnn.train.train_runs` calls to train `configs` as `members`
    from their first epoch: the states' initialisation, the shuffle, each distinct training call of an
    epoch, and the evaluation on validation (every run) and test (one run's best state)."""
    config = configs[0]
    train = training_split(config, splits)
    data = training_data(train, config.data_placement)
    if measures(config, splits.spec, len(train) // config.batch_size, rolled_epoch(config, data)):
        return  # the run measures its steps per call first: no program is known yet
    fresh = start_states(configs, splits, len(train))
    state, keys = members.stack(fresh), members.stack([run_keys(c) for c in configs])
    plan = epoch_plan(config, splits, data, len(train), say=False)
    order = epoch_orders(keys, [1] * members.count, len(train), members, data, None)
    live = np.ones(members.count, bool) if members.count > 1 else None
    distinct = {(c.batch, c.steps, c.rolled, c.active == c.steps): c for c in plan.calls}
    for call in distinct.values():
        program, args, static = call_program(state, data, order, keys["dropout"], live, call, members, None)
        program.lower(*args, **static).compile()
    compile_metric_sums(state, splits.val, config.eval_batch_size, members)
    if members.count > 1:
        members.member(state, 0)  # each run's part of the state (run, not only compiled: it is cheap)
    # the best state as its checkpoint restores it: on the device, committed there, no weak types
    device = jax.local_devices()[0]
    best = jax.tree.map(lambda x: jax.device_put(np.asarray(x), device), fresh[0])
    compile_metric_sums(best, splits.test, config.eval_batch_size)


def training_key(configs: Sequence[TrainConfig], members: Members) -> str:
    """What a training's programs depend on: its configs but for their seeds, and how its runs compute
    together."""
    fields = [{k: v for k, v in c.to_dict().items() if k != "seed"} for c in configs]
    return json.dumps([fields, members.count, members.conv], sort_keys=True, default=str)


def known_mode(together: str, config: TrainConfig, spec: DataSpec, runs: int) -> str | None:
    """How `runs` runs of `config` will train (`cnn.studies.sweep.seeds_mode`), when that is known without
    measuring: given, one run, or measured before on this machine; else None."""
    if together != "auto":
        return together
    if runs == 1:
        return "sequential"
    rates = remembered_rates(config, spec, runs)
    return None if rates is None else max(rates, key=rates.get)


# ---------------------------------------------------------------------------------- the background
class Job:
    """One training's programs compiling in a background thread; its compilations count apart
    (`cnn.engine.costs.AHEAD`), not in the run training meanwhile."""

    def __init__(self, configs: Sequence[TrainConfig], members: Members, splits: Splits):
        self.error: Exception | None = None
        self.programs, self.seconds = 0, 0.0
        # not a daemon: a Python caller's interpreter waits for it rather than abort it as it ends
        self.thread = threading.Thread(target=self.run, args=(configs, members, splits), name=THREAD_NAME)
        self.thread.start()

    def run(self, configs: Sequence[TrainConfig], members: Members, splits: Splits) -> None:
        before, t = costs.AHEAD.backend, time.perf_counter()  # one job at a time (`compiling`) counts there
        try:
            with costs.counted_apart():
                compile_training(configs, members, splits)
        except Exception as e:  # the run compiles its programs itself
            self.error = e
        self.programs, self.seconds = costs.AHEAD.backend - before, time.perf_counter() - t

    def wait(self, name: str) -> None:
        """Waits for the compile to end (a signal still stops the command) and says how it went."""
        waited = time.perf_counter()
        while self.thread.is_alive():
            self.thread.join(0.1)
        waited = time.perf_counter() - waited
        if self.error is not None:
            reason = str(self.error).strip().splitlines()[0][:200] if str(self.error).strip() else ""
            error = f"{type(self.error).__name__}: {reason}"
            print(f"[{name}] compiling ahead failed ({error}); compiling it now", flush=True)
        elif self.programs:
            print(
                f"[{name}] {self.programs} program(s) compiled ahead in {self.seconds:.1f} s "
                f"(waited {waited:.1f} s for them)",
                flush=True,
            )


class Ahead:
    """A sweep's compiling ahead over its `groups` (each the configs of the runs it trains, in order, runs
    it skips left out): `reached` is called as each training starts."""

    def __init__(self, groups: Sequence[Sequence[TrainConfig]], splits: Splits, together: str, setting: str):
        check_compile_ahead(setting)
        self.groups = [list(g) for g in groups if g]
        self.splits, self.together = splits, together
        runs = sum(len(g) for g in self.groups)
        self.on = setting == "on" or (setting == "auto" and runs > 1 and spare_core())
        self.jobs: dict[str, Job] = {}  # started, not yet reached
        self.started: set[str] = set()

    def reached(self, configs: Sequence[TrainConfig], members: Members, name: str) -> None:
        """The training of `configs` as `members` starts: its programs, if they are compiling ahead, waited
        for; then the next training's compiled in the background (unless a compile is still running)."""
        if not self.on or pending() is not None:  # asked to stop: the run refuses to start, at once
            return
        job = self.jobs.pop(training_key(configs, members), None)
        if job is not None:
            job.wait(name)
        following = self.following(configs, members)
        if following is None or compiling():  # one compile at a time in the process
            return
        key = training_key(*following)
        if key not in self.started:
            self.started.add(key)
            self.jobs[key] = Job(*following, self.splits)

    def following(self, configs: Sequence[TrainConfig], members: Members) -> tuple[list, Members] | None:
        """The training after that of `configs`: the next run of its group with other programs (runs
        trained one after another), else the next group's first training, if its mode is known."""
        at = next((i for i, g in enumerate(self.groups) if configs[0] in g), None)
        if at is None:
            return None
        group, this = self.groups[at], training_key(configs, members)
        if members.count == 1:
            later = group[group.index(configs[0]) + 1 :]
            other = [c for c in later if training_key([c], Members(1)) != this]
            if other:
                return [other[0]], Members(1)
        if at + 1 == len(self.groups):
            return None
        runs = self.groups[at + 1]
        mode = known_mode(self.together, runs[0], self.splits.spec, len(runs))
        if mode is None:
            return None
        return ([runs[0]], Members(1)) if mode == "sequential" else (runs, Members(len(runs), CONV[mode]))
