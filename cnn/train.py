"""The training loops: `fit` for one run and `fit_seeds` for several seeds trained together in one
compiled program (`jax.vmap`). Both run the same epoch loop, with one NaN/Inf guard, one signal handler,
one kind of checkpoint (`cnn.checkpoints.Checkpoints`, one folder per run) and `steps_per_call` honoured.

The device side lives in `cnn.steps`, a run's folder (resume, results, `restore_run`) in `cnn.rundir`; their
public names are re-exported here, where notebooks have always found them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from cnn.checkpoints import Checkpoints
from cnn.config import TrainConfig
from cnn.data import Split, Splits
from cnn.events import EventLog
from cnn.parallel import batch_sharding, check_batch_size, is_parallel, is_primary, replicate
from cnn.rundir import (  # noqa: F401  (re-exported)
    EarlyStopping,
    RunNotFoundError,
    RunState,
    WorkdirBusy,
    WorkdirError,
    check_workdir,
    finish_run,
    monitored,
    prepare_workdir,
    restore_run,
    resume,
    workdir_lock,
    write_json,
)
from cnn.steps import (  # noqa: F401  (re-exported)
    HostData,
    InputError,
    TrainState,
    add_metrics,
    config_model,
    count_params,
    create_train_state,
    device_data,
    eval_step,
    evaluate,
    initial_state,
    learning_rate,
    make_optimizer,
    mean_metrics,
    member_metrics,
    metric_sums,
    model_variables,
    predict,
    run_keys,
    stack_trees,
    stacked_train_steps,
    steps_per_epoch,
    take_batch,
    train_batches,
    train_step,
    train_steps,
    training_data,
    unstack_tree,
)


class TrainingDiverged(RuntimeError):
    """A NaN or Inf loss or gradient; the message names the seed (when several train together), the epoch
    and the step."""


class TrainingFailed(RuntimeError):
    """XLA failed in the middle of a run (out of memory, a runtime error); the message names the epoch and
    what XLA said. The checkpoints of the earlier epochs are kept."""


class Interrupted(Exception):
    """Training stopped on SIGTERM or SIGINT after saving the epoch in progress; `exit_code` is
    128 + the signal number (143 for SIGTERM, 130 for SIGINT), as shells report a signal."""

    def __init__(self, signum: int, epoch: int, workdir: Path):
        self.signum, self.epoch, self.exit_code = signum, epoch, 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after epoch {epoch}, saved in {workdir}; run the same command again to resume"
        )


def training_split(config: TrainConfig, splits: Splits) -> Split:
    """The training examples a run uses (the first `limit_train`), checked against the batch size."""
    train = splits.train
    if config.limit_train is not None:
        train = Split(train.images[: config.limit_train], train.labels[: config.limit_train])
    if config.batch_size > len(train):
        raise ValueError(f"batch_size: {config.batch_size} is larger than the {len(train)} training examples")
    return train


@dataclass
class Member:
    """One run of the loop: its config, folder, checkpoints and run state (one of several seeds when they
    train together)."""

    config: TrainConfig
    workdir: Path
    checkpoints: Checkpoints
    run: RunState
    events: EventLog | None = None  # TensorBoard (None: --no-tensorboard, or not process 0)

    def close(self) -> None:
        self.checkpoints.close()
        if self.events is not None:
            self.events.close()

    @property
    def training(self) -> bool:
        return self.run.epoch < self.config.epochs and not self.run.stopping.stopped


# ------------------------------------------------------------------------------------------ the loops
def fit(
    config: TrainConfig,
    splits: Splits,
    workdir: str | Path,
    overwrite: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    init_state: TrainState | None = None,
    mesh: Any = None,
) -> dict[str, Any]:
    """Trains `config.model` on `splits`, checkpointing in `workdir`; resumes a run already there.

    Args:
      config: the run's configuration.
      splits: train / validation / test data (see `cnn.data.load_dataset`).
      workdir: folder for config.json, history.json, results.json, curves.png and checkpoints/.
      overwrite: delete a run with a different config found in `workdir` instead of refusing.
      on_epoch_end: called after each epoch (and its checkpoint) with the epoch and its metrics.
      init_state: start from this state (e.g. pretrained, with a freezing optimizer; see `cnn.transfer`)
        instead of a fresh one.
      mesh: a `jax.sharding.Mesh` with a `data` axis (see `cnn.parallel.data_mesh`): batches split over its
        devices, parameters replicated. None (or a one-device mesh): the plain one-device path.
    Returns:
      The results dictionary also written to `workdir/results.json` (metrics of the best epoch's weights).
    Raises:
      Interrupted: after SIGTERM or SIGINT, once the epoch in progress is finished and checkpointed.
      TrainingDiverged: on a NaN or Inf loss or gradient (the earlier checkpoints are kept).
      TrainingFailed: on an XLA runtime error or out-of-memory (the earlier checkpoints are kept).
    """
    workdir = Path(workdir)
    train = training_split(config, splits)
    check_batch_size(config.batch_size, mesh)
    with workdir_lock(workdir):  # one run per workdir; a second process is refused, writing nothing
        prepare_workdir(workdir, config, overwrite, data=getattr(splits, "info", None))
        keys = run_keys(config)
        fresh = init_state is None
        state = initial_state(config, steps_per_epoch(len(train), config.batch_size)) if fresh else init_state
        if is_parallel(mesh):
            state, keys = replicate(state, mesh), replicate(keys, mesh)
        state, member = _open(config, workdir, state)
        try:
            state = _train_members(
                state, [member], train, splits.val, keys, mesh, on_epoch_end, stacked=False
            )
            best, _ = member.checkpoints.restore(member.run.stopping.best_epoch, state)
            return _finish(member, best, splits)
        finally:
            member.close()


def fit_seeds(
    config: TrainConfig, seeds: Sequence[int], splits: Splits, workdir: str | Path, mesh: Any = None
) -> list[dict[str, Any]]:
    """Trains `config` once per seed, all seeds stacked in one vmapped program, each with its own
    shuffling, dropout, early stopping and run folder `workdir/seed{S}` (a normal run: `restore_run`, `viz`
    and `fit` itself can open it). The same results as `fit` per seed, within float tolerance; resumes
    every seed from its own checkpoints. Raises `TrainingDiverged` naming the seed that diverged."""
    configs = [dataclasses.replace(config, seed=s) for s in seeds]
    return fit_together(configs, splits, [Path(workdir) / f"seed{s}" for s in seeds], mesh)


# What runs trained together may differ in: the rest of their configs (model, data, batch size, ...) is
# the one program they share.
TOGETHER_FIELDS = ("seed", "lr", "weight_decay")


def fit_together(
    configs: Sequence[TrainConfig], splits: Splits, workdirs: Sequence[str | Path], mesh: Any = None
) -> list[dict[str, Any]]:
    """Several runs as one vmapped program: configs that differ only in their seed, learning rate and
    weight decay (the optimizer keeps those two in its state, `optax.inject_hyperparams`), e.g. 4 learning
    rates × 8 seeds on one GPU. Each run has its own folder, shuffling, dropout and early stopping, and
    ends as it would alone, within float tolerance (a test checks 1e-5 on the CPU)."""
    configs, workdirs = list(configs), [Path(w) for w in workdirs]
    check_together(configs, workdirs)
    train = training_split(configs[0], splits)
    check_batch_size(configs[0].batch_size, mesh)
    with contextlib.ExitStack() as locks:
        for c, w in zip(configs, workdirs, strict=True):
            locks.enter_context(workdir_lock(w))
            prepare_workdir(w, c, data=getattr(splits, "info", None))
        return _fit_stacked(configs, train, splits, workdirs, mesh)


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


def _fit_stacked(configs, train, splits, workdirs, mesh) -> list[dict[str, Any]]:
    """The runs of `fit_together` trained as one program, their folders already locked and prepared."""
    config = configs[0]
    # One model and one optimizer for every run: static parts of the state, shared by the vmap. Where the
    # runs' learning rates or weight decays differ, each run's own values live in its optimizer state.
    model, steps = config_model(config), steps_per_epoch(len(train), config.batch_size)
    varying = len({(c.lr, c.weight_decay) for c in configs}) > 1
    tx = make_optimizer(config, steps, injectable=varying)

    def start(c: TrainConfig) -> TrainState:
        own = make_optimizer(c, steps, injectable=True) if varying else tx
        state = create_train_state(model, own, run_keys(c)["init"], c.image_shape, c.precision, c.micro_batch)
        return state.replace(tx=tx)

    opened = [_open(c, w, start(c)) for c, w in zip(configs, workdirs, strict=True)]
    state, members = stack_trees([s for s, _ in opened]), [m for _, m in opened]
    keys = stack_trees([run_keys(c) for c in configs])
    if is_parallel(mesh):
        state, keys = replicate(state, mesh), replicate(keys, mesh)
    try:
        state = _train_members(state, members, train, splits.val, keys, mesh, None, stacked=True)
        best = [
            m.checkpoints.restore(m.run.stopping.best_epoch, unstack_tree(state, i))[0]
            for i, m in enumerate(members)
        ]
        return [
            _finish(m, b, splits, extra={"trained_with_seeds": [c.seed for c in configs]})
            for m, b in zip(members, best, strict=True)
        ]
    finally:
        for m in members:
            m.close()


def _finish(member: Member, best: TrainState, splits: Splits, extra: dict[str, Any] | None = None):
    """The run's results (see `finish_run`), also written to its TensorBoard log as hparams."""
    results = finish_run(member.config, best, member.run, splits, member.workdir, extra=extra)
    if member.events is not None:
        member.events.hparams(member.config.to_dict(), results)
    return results


def _open(config: TrainConfig, workdir: Path, state: TrainState) -> tuple[TrainState, Member]:
    """The run in `workdir` resumed from its latest good checkpoint (or `state`, fresh)."""
    state, run, checkpoints = resume(Checkpoints(workdir / "checkpoints"), state, config, workdir)
    if run.history and is_primary():  # a run killed between its checkpoint and its history file
        write_json(workdir / "history.json", run.history)
    return state, Member(config, workdir, checkpoints, run, _events(config, workdir, run))


def _events(config: TrainConfig, workdir: Path, run: RunState) -> EventLog | None:
    """The run's TensorBoard log; a resumed run's is rewritten from its history up to where it resumes
    (purging whatever a killed process wrote after its last checkpoint: no duplicate or missing epoch)."""
    if not (config.tensorboard and is_primary()):
        return None
    events = EventLog(workdir, purge=bool(run.history))
    for record, timing in zip(run.history, run.timing, strict=False):
        steps = steps_per_epoch(timing["images"], config.batch_size)
        events.epoch(record | _extras(config, timing, record["epoch"] * steps))
    return events


def _extras(config: TrainConfig, timing: dict[str, float], step: int) -> dict[str, float]:
    """The learning rate after `step` steps and the images/s of an epoch, for TensorBoard."""
    steps = steps_per_epoch(timing["images"], config.batch_size)
    rate = timing["images"] / max(timing["seconds"] - timing["compile_seconds"], 1e-9)
    return {"lr": learning_rate(config, step, steps), "images_per_second": rate}


def _train_members(state, members, train, val, keys, mesh, on_epoch_end, stacked):
    """The epoch loop of one run or of seeds stacked together; returns the last state."""
    config = members[0].config
    data = training_data(train, config.data_placement, mesh)
    if isinstance(data, HostData):
        if stacked:
            raise ValueError(
                "data_placement: seeds trained together keep the data on the device; "
                "train them one after another (--together sequential)"
            )
        print(f"Streaming the training images from the host ({data.images.nbytes / 2**20:,.0f} MiB)")
    with _stop_on_signals() as stop:
        announce = True
        while any(m.training for m in members):
            epochs = [m.run.epoch + 1 for m in members]
            active = [m.training for m in members]
            try:
                state, totals, timing = train_epoch(
                    state, data, config, epochs, keys, mesh, active=active, stacked=stacked, announce=announce
                )
            except jax.errors.JaxRuntimeError as e:
                raise TrainingFailed(_xla_message(e, max(epochs))) from e
            announce = False
            _check_finite(totals, members, epochs, active, len(train), stacked)
            sums = metric_sums(state, val, config.eval_batch_size, stacked=stacked)
            val_metrics = member_metrics(sums) if stacked else [mean_metrics(sums)]
            train_metrics = member_metrics(totals) if stacked else [mean_metrics(totals)]
            for i, m in enumerate(members):
                if active[i]:
                    metrics = train_metrics[i] | {
                        "val_loss": val_metrics[i]["loss"],
                        "val_accuracy": val_metrics[i]["accuracy"],
                    }
                    member_state = unstack_tree(state, i) if stacked else state
                    _record(
                        m,
                        member_state,
                        epochs[i],
                        metrics,
                        timing | {"group_images": timing["images"] * sum(active)} if stacked else timing,
                    )
                    if on_epoch_end is not None:
                        on_epoch_end(epochs[i], metrics)
            if stacked:
                _group_line(members, active, timing)
            if stop["signum"] is not None and any(m.training for m in members):
                raise Interrupted(
                    stop["signum"], max(epochs), members[0].workdir.parent if stacked else members[0].workdir
                )
    return state


def _record(
    member: Member, state: TrainState, epoch: int, metrics: dict[str, float], timing: dict[str, float]
) -> None:
    """One finished epoch of one run: early stopping, history, checkpoint, history file, the epoch line."""
    config, run = member.config, member.run
    score = monitored(metrics, config.monitor)
    run.stopping.update(epoch, score)
    run.epoch = epoch
    run.history.append({"epoch": epoch, **metrics})
    run.timing.append({"epoch": epoch, **timing})
    member.checkpoints.save(epoch, state, run.to_dict(), score)
    if is_primary():
        write_json(member.workdir / "history.json", run.history)
    if member.events is not None:
        member.events.epoch(run.history[-1] | _extras(config, timing, int(state.step)))
    print(_epoch_line(config, epoch, metrics, timing), flush=True)
    if run.stopping.stopped:
        print(
            f"Early stopping{_who(member)}: no better {config.monitor} for {config.patience} epochs; "
            f"restoring epoch {run.stopping.best_epoch}"
        )


def _who(member: Member) -> str:
    return f" (seed {member.config.seed})" if member.workdir.name.startswith("seed") else ""


def _check_finite(totals, members, epochs, active, examples, stacked) -> None:
    """Raises TrainingDiverged for the first run whose loss or gradient was NaN or Inf this epoch."""
    first = np.atleast_1d(np.asarray(jax.device_get(totals["first_nonfinite"])))
    per_epoch = steps_per_epoch(examples, members[0].config.batch_size)
    for i, m in enumerate(members):
        if active[i] and np.isfinite(first[i]):
            step = int(first[i]) - (epochs[i] - 1) * per_epoch + 1
            seed = f"seed {m.config.seed}: " if stacked else ""
            raise TrainingDiverged(
                f"training diverged: {seed}a NaN or Inf loss or gradient at epoch {epochs[i]}, step {step} "
                f"of {per_epoch}. The checkpoints of the earlier epochs are kept and nothing of this epoch "
                "was saved; lower --lr (or check the data) and train again, in a new --workdir or with "
                "--overwrite."
            )


def _xla_message(error: Exception, epoch: int) -> str:
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    if "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower():
        return (
            f"out of memory in epoch {epoch} ({first}). The checkpoints of the earlier epochs are kept; "
            "lower --batch-size (or the model's size) and run the same command again to resume"
        )
    return f"XLA runtime error in epoch {epoch}: {first}. The checkpoints of the earlier epochs are kept"


# ----------------------------------------------------------------------------------------- one epoch
def _orders(keys, epochs: list[int], n: int, stacked: bool, data: Any, mesh: Any) -> Any:
    """Each run's permutation of the training data for its epoch, where the batches are gathered: on the
    host for `HostData`, else on the device (replicated over a mesh)."""
    if stacked:
        permute = jax.vmap(lambda k, e: jax.random.permutation(jax.random.fold_in(k, e), n))
        order = permute(keys["shuffle"], jnp.asarray(epochs))
    else:
        order = jax.random.permutation(jax.random.fold_in(keys["shuffle"], epochs[0]), n)
    if isinstance(data, HostData):
        return np.asarray(order)
    return replicate(order, mesh) if is_parallel(mesh) else order


def train_epoch(
    state: TrainState,
    data: tuple[jax.Array, jax.Array] | HostData,
    config: TrainConfig,
    epoch: int | list[int],
    keys: dict[str, jax.Array],
    mesh: Any = None,
    *,
    active: list[bool] | None = None,
    stacked: bool = False,
    announce: bool = False,
) -> tuple[TrainState, dict[str, jax.Array], dict[str, float]]:
    """One pass over the training data in a fresh permutation per run, `steps_per_call` steps per compiled
    call; returns the state, the summed metrics (on the device; per run when `stacked`) and the timing.
    With a `mesh` (see `cnn.parallel`), every batch is split over its devices; `data` on the host
    (`HostData`) is streamed batch by batch. `announce`: say that the first call compiles, and time it
    apart (`compile_seconds`)."""
    n, bs, chunk = (
        len(data) if isinstance(data, HostData) else len(data[1]),
        config.batch_size,
        config.steps_per_call,
    )
    epochs = epoch if isinstance(epoch, list) else [epoch]
    order = _orders(keys, epochs, n, stacked, data, mesh)
    live = jnp.asarray(active if active is not None else [True] * len(epochs))
    total, full = steps_per_epoch(n, bs), n // bs
    bar = tqdm(
        total=total, desc=f"Epoch {max(epochs)}/{config.epochs}", unit="step", leave=False, disable=None
    )
    totals, compile_seconds, t0, i = None, 0.0, time.perf_counter(), 0
    rolled = rolled_epoch(config, data)
    while i < total:
        if announce and i == 0:
            tqdm.write("Compiling the train step (first call only)...")
        t = time.perf_counter()
        steps, size = _steps_at(i, full, chunk, rolled), min(bs, n - i * bs)
        state, metrics = _call(
            state, data, order, keys["dropout"], live, i * bs, size, (steps, rolled), mesh, stacked
        )
        i += steps
        if announce and i == steps:
            jax.block_until_ready(metrics)
            compile_seconds = time.perf_counter() - t
            tqdm.write(f"Compiled and ran the first call in {compile_seconds:.1f} s")
        totals = add_metrics(totals, metrics)
        if bar.disable is False and (i % 50 < max(chunk, 1) or i == total):
            bar.set_postfix(img_s=f"{min(n, i * bs) / (time.perf_counter() - t0):.0f}")
            bar.update(i - bar.n)
    jax.block_until_ready(totals)
    bar.close()
    return (
        state,
        totals,
        {"seconds": time.perf_counter() - t0, "compile_seconds": compile_seconds, "images": n},
    )


def _steps_at(i: int, full: int, chunk: int, rolled: bool) -> int:
    """How many steps the call starting at step `i` runs: with `rolled`, every full batch in one call (a
    last partial batch after it); else chunks of `chunk`, the remainder one by one."""
    if rolled:
        return full if i == 0 and full > 1 else 1
    return chunk if chunk > 1 and full - i >= chunk else 1


def rolled_epoch(config: TrainConfig, data: Any) -> bool:
    """Whether an epoch runs as one compiled call with a rolled loop (`epoch_loop`; auto: on GPU and TPU,
    where launches cost more than loops; XLA:CPU runs convolutions in loop bodies far slower). Data
    streamed from the host comes in chunks."""
    if isinstance(data, HostData) or config.epoch_loop == "chunks":
        return False
    return config.epoch_loop == "scan" or jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")


def _call(state, data, order, rng, live, start, size, loop, mesh, stacked):
    """One compiled call of `steps` train steps from position `start` (batches of `size`); `loop` is
    (steps, rolled)."""
    steps, rolled = loop
    if isinstance(data, HostData):
        return train_batches(state, *data.batches(order, start, size, steps), rng)
    images, labels = data
    sharding = batch_sharding(mesh) if is_parallel(mesh) and size % mesh.size == 0 else None
    shape = {"batch_size": size, "steps": steps, "sharding": sharding, "unroll": not rolled}
    if stacked:
        return stacked_train_steps(state, images, labels, order, start, rng, live, **shape)
    if steps > 1:
        return train_steps(state, images, labels, order, start, rng, **shape)
    return train_step(state, take_batch(images, labels, order, start, size, sharding), rng)


def _epoch_line(config: TrainConfig, epoch: int, metrics: dict[str, float], timing: dict[str, float]) -> str:
    steps = steps_per_epoch(timing["images"], config.batch_size)
    rate = timing["images"] / max(timing["seconds"] - timing["compile_seconds"], 1e-9)
    seed = f"seed {config.seed} - " if "group_images" in timing else ""
    return (
        f"Epoch {epoch}/{config.epochs} - {seed}{steps} steps - {timing['seconds']:.1f}s "
        f"({rate:.0f} img/s) - "
        f"loss: {metrics['loss']:.4f} - accuracy: {metrics['accuracy']:.4f} - "
        f"val_loss: {metrics['val_loss']:.4f} - val_accuracy: {metrics['val_accuracy']:.4f}"
    )


def _group_line(members: list[Member], active: list[bool], timing: dict[str, float]) -> None:
    seconds = max(timing["seconds"] - timing["compile_seconds"], 1e-9)
    print(f"  {sum(active)} seeds together: {timing['images'] * sum(active) / seconds:.0f} img/s", flush=True)


@contextlib.contextmanager
def _stop_on_signals():
    """Turns the first SIGTERM or SIGINT into a request to stop at the end of the epoch in progress (a
    second one stops at once, losing only that epoch). Only in the main thread (signals go there)."""
    stop: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        if stop["signum"] is not None:  # the second signal: the default behaviour
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
            return
        stop["signum"] = signum
        tqdm.write(f"{signal.Signals(signum).name}: finishing and saving this epoch, then stopping")

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
