"""Training, top to bottom: `fit` trains one run; `fit_together` trains several runs that differ only in
their seed, learning rate or weight decay as one compiled program (`fit_seeds`: seeds). Both are the same
loop: the step functions of `cnn.engine.steps` are written for one run, and `cnn.engine.vmap.Members` runs
them plain for one run and under `jax.vmap` for several.

One epoch: a fresh shuffle per run, the training steps in compiled calls of `steps_per_call` (or the whole
epoch in one call on accelerators), one host transfer of the epoch's metrics and the validation sums, the
NaN/Inf guard, then per run the bookkeeping: early stopping, history, an asynchronous checkpoint, the
TensorBoard log and the epoch's line. A signal stops the loop after the epoch in progress is saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from cnn.config import TrainConfig
from cnn.data.spec import Split, Splits
from cnn.engine import costs
from cnn.engine.chunking import choose_steps_per_call
from cnn.engine.devices import batch_sharding, check_batch_size, is_parallel, replicate
from cnn.engine.epochs import Call, EpochPlan, rolled_epoch, sum_on_host
from cnn.engine.evaluation import mean_metrics, metric_sums
from cnn.engine.placement import HostData, training_data
from cnn.engine.state import TrainState, initial_state, make_optimizer, model_for, run_keys, steps_per_epoch
from cnn.engine.steps import train_batches, train_chunk
from cnn.engine.vmap import Members, check_together, run_labels
from cnn.errors import Interrupted, TrainingDiverged, TrainingFailed
from cnn.models.registry import check_model_args
from cnn.runs.folder import check_workdir, prepare_workdir
from cnn.runs.lock import workdir_lock
from cnn.runs.record import Run
from cnn.runs.signals import marked_if_stopping, raise_if_stopping, stop_on_signals


# ---------------------------------------------------------------------------------------------- the API
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
      splits: train / validation / test data and their description (see `cnn.data.load.load_dataset`).
      workdir: folder for config.json, history.json, results.json, curves.png and checkpoints/.
      overwrite: delete a run with a different config found in `workdir` instead of refusing.
      on_epoch_end: called after each epoch (and its checkpoint) with the epoch and its metrics.
      init_state: start from this state (e.g. pretrained, with a freezing optimizer; see
        `cnn.studies.transfer`) instead of a fresh one.
      mesh: a `jax.sharding.Mesh` with a `data` axis (see `cnn.engine.devices.data_mesh`): batches split
        over its devices, parameters replicated. None (or a one-device mesh): the plain one-device path.
    Returns:
      The results dictionary also written to `workdir/results.json` (metrics of the best epoch's weights).
    Raises:
      Interrupted: after SIGTERM or SIGINT, once the epoch in progress is finished and checkpointed.
      TrainingDiverged: on a NaN or Inf loss or gradient (the earlier checkpoints are kept).
      TrainingFailed: on an XLA runtime error or out-of-memory (the earlier checkpoints are kept).
    """
    states = None if init_state is None else [init_state]
    return train_runs([config], splits, [workdir], overwrite, on_epoch_end, states, mesh)[0]


def fit_seeds(
    config: TrainConfig,
    seeds: Sequence[int],
    splits: Splits,
    workdir: str | Path,
    mesh: Any = None,
    conv: str = "conv",
) -> list[dict[str, Any]]:
    """Trains `config` once per seed, all seeds as one program, each with its own shuffling, dropout, early
    stopping and run folder `workdir/seed{S}` (a normal run: `restore_run`, `viz` and `fit` itself can
    open it). `conv`: how their convolutions compute together (see `cnn.engine.vmap.Members`). Raises
    `TrainingDiverged` naming the seed that diverged."""
    configs = [dataclasses.replace(config, seed=s) for s in seeds]
    return fit_together(configs, splits, [Path(workdir) / f"seed{s}" for s in seeds], mesh, conv)


def fit_together(
    configs: Sequence[TrainConfig],
    splits: Splits,
    workdirs: Sequence[str | Path],
    mesh: Any = None,
    conv: str = "conv",
) -> list[dict[str, Any]]:
    """Several runs as one vmapped program: configs that differ only in their seed, learning rate and
    weight decay (the optimizer keeps those two in its state, `optax.inject_hyperparams`), e.g. 4 learning
    rates × 8 seeds on one GPU. Each run has its own folder, shuffling, dropout and early stopping, and
    ends as it would alone, within float tolerance (a test checks 1e-4 on the CPU)."""
    check_together(configs, [Path(w) for w in workdirs])
    return train_runs(configs, splits, workdirs, mesh=mesh, members=Members(len(configs), conv))


def check_run_config(config: TrainConfig) -> None:
    """What can be checked of a run before any data is read: the model's name and arguments (built for the
    image size, when `image_size` fixes it) and that augmentation is not applied twice."""
    shape = None if config.image_size is None else (*config.image_size, config.channels or 1)
    check_augmented_once(config, check_model_args(config.model, config.model_args, config.head, shape))


def check_augmented_once(config: TrainConfig, model: Any) -> None:
    """Refuses the recipe's crop or flip (`cnn.engine.augment`) on a model that shifts and flips its images
    itself (`vgg_bn`, or `convnet` with `augment`): every image would be shifted and flipped twice, and an
    ablation taking the recipe's crop away would still see the model's shifts. Checked where training
    starts, not where a model is built (a run saved before this check still opens)."""
    knobs = [f"--{k.replace('_', '-')}" for k in ("crop_padding", "flip") if getattr(config, k)]
    if knobs and getattr(model, "augment", False) is True:
        raise ValueError(
            f"model_args: {config.model} shifts and flips its training images itself (augment=true), and "
            f"{' and '.join(knobs)} would do it a second time: pass --model-args '{{\"augment\": false}}' "
            f"(as --recipe strong does) or leave {' and '.join(knobs)} off"
        )


def training_split(config: TrainConfig, splits: Splits) -> Split:
    """The training examples a run uses (the first `limit_train`), checked against the batch size."""
    train = splits.train
    if config.limit_train is not None:
        train = Split(train.images[: config.limit_train], train.labels[: config.limit_train])
    if config.batch_size > len(train):
        raise ValueError(f"batch_size: {config.batch_size} is larger than the {len(train)} training examples")
    return train


# ------------------------------------------------------------------------------------------- the runs
def train_runs(
    configs: Sequence[TrainConfig],
    splits: Splits,
    workdirs: Sequence[str | Path],
    overwrite: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    init_states: Sequence[TrainState] | None = None,
    mesh: Any = None,
    members: Members | None = None,
) -> list[dict[str, Any]]:
    """The runs of `configs` (one, or several sharing one program: `members`) trained on `splits`, each in
    its folder (locked, checked and prepared before any work), resumed where they stopped; returns their
    results."""
    check_arguments(configs, splits)
    raise_if_stopping(f"before training {workdirs[0]}, the run before it finished and saved")
    for c in configs:
        check_augmented_once(c, model_for(c, splits.spec))
    config, workdirs = configs[0], [Path(w) for w in workdirs]
    members = members or Members(len(configs))
    train = training_split(config, splits)
    check_batch_size(config.batch_size, mesh)
    start = costs.snapshot()
    with contextlib.ExitStack() as stack:
        for c, w in zip(configs, workdirs, strict=True):
            check_workdir(w, c, overwrite)  # a run refused leaves its folder as it was (no lock file either)
            stack.enter_context(workdir_lock(w))  # one run per workdir; a second process is refused
            prepare_workdir(w, c, splits.spec, overwrite)  # checked again under the lock: no race
        fresh = init_states or start_states(configs, splits, len(train))
        labels = run_labels(configs)
        opened = [
            Run.open(c, w, s, members.count, label)
            for c, w, s, label in zip(configs, workdirs, fresh, labels, strict=True)
        ]
        runs = [run for _, run in opened]
        for run in runs:
            stack.callback(run.close)
        state, keys = members.stack([s for s, _ in opened]), members.stack([run_keys(c) for c in configs])
        if is_parallel(mesh):
            state, keys = replicate(state, mesh), replicate(keys, mesh)
        data = training_data(train, config.data_placement, mesh)
        plan = epoch_plan(config, splits, data, len(train))
        state = epoch_loop(state, runs, data, plan, splits.val, keys, members, mesh, on_epoch_end)
        compiled = costs.since(start)  # setting up and training, every run of the program together
        extra = {
            "steps_per_call": max(c.steps for c in plan.calls),
            "compilations": compiled.compilations,
            "compile_seconds": compiled.seconds,
            "compile_cache_hits": compiled.cache_hits,
            **(
                {"trained_with_seeds": [c.seed for c in configs], "conv": members.conv}
                if members.count > 1
                else {}
            ),
        }
        return [run.finish(members.member(state, i), splits, extra) for i, run in enumerate(runs)]


def start_states(configs: Sequence[TrainConfig], splits: Splits, examples: int) -> list[TrainState]:
    """Each run's fresh state: one model and one optimizer shared by all (static parts of the program);
    where the runs' learning rates or weight decays differ, each run's own values live in its optimizer
    state (`optax.inject_hyperparams`)."""
    steps = steps_per_epoch(examples, configs[0].batch_size)
    varying = len({(c.lr, c.weight_decay) for c in configs}) > 1
    shared = make_optimizer(configs[0], steps, injectable=varying)
    return [initial_state(c, splits.spec, steps, injectable=varying).replace(tx=shared) for c in configs]


def epoch_plan(config: TrainConfig, splits: Splits, data: Any, examples: int, say: bool = True) -> EpochPlan:
    """The epoch's compiled calls, `steps_per_call` chosen for this run (`cnn.engine.chunking`) and said
    (`say`) unless it was given."""
    rolled = rolled_epoch(config, data)
    choice = choose_steps_per_call(config, splits.spec, examples // config.batch_size, rolled)
    if say and choice.reason != "given" and not rolled:
        print(f"Steps per call: {choice.steps_per_call} ({choice.reason})", flush=True)
    chosen = dataclasses.replace(config, steps_per_call=choice.steps_per_call)
    return EpochPlan.of(examples, chosen, rolled, isinstance(data, HostData))


# ------------------------------------------------------------------------------------------- the loop
def epoch_loop(state, runs, data, plan, val, keys, members, mesh, on_epoch_end):
    """Epochs until every run has finished or stopped early; returns the last state."""
    config = runs[0].config
    if isinstance(data, HostData):
        if members.count > 1:
            raise ValueError(
                "data_placement: runs trained together keep the data on the device; "
                "train them one after another (--together sequential)"
            )
        print(f"Streaming the training images from the host ({data.images.nbytes / 2**20:,.0f} MiB)")
    with stop_on_signals() as stop, marked_if_stopping(stop):
        while any(run.training for run in runs):
            epochs, active = [r.record.epoch + 1 for r in runs], [r.training for r in runs]
            try:
                state, calls, timing = train_epoch(
                    state, data, config, plan, epochs, keys, members, mesh, active
                )
                with costs.phase("evaluate"):
                    start = costs.snapshot()
                    train_sums, val_sums = jax.device_get(
                        (calls, metric_sums(state, val, config.eval_batch_size, members))
                    )
            except jax.errors.JaxRuntimeError as e:
                raise TrainingFailed(xla_message(e, max(epochs))) from e
            timing["compile_seconds"] += costs.since(start).seconds
            train_metrics = members.per_run(sum_on_host(train_sums, plan))
            check_finite(train_metrics, runs, epochs, active, plan.steps)
            for i, run in enumerate(runs):
                if active[i]:
                    metrics = mean_metrics(train_metrics[i]) | validation(members.per_run(val_sums)[i])
                    run.record_epoch(members.member(state, i), epochs[i], metrics, timing)
                    if on_epoch_end is not None:
                        on_epoch_end(epochs[i], metrics)
            if members.count > 1:
                rate = timing["images"] * sum(active) / max(timing["seconds"], 1e-9)
                print(f"  {sum(active)} runs together: {rate:.0f} img/s", flush=True)
            if stop["signum"] is not None and any(run.training for run in runs):
                where = runs[0].workdir.parent if members.count > 1 else runs[0].workdir
                raise Interrupted(stop["signum"], max(epochs), where)
    return state


def validation(sums: dict[str, Any]) -> dict[str, float]:
    means = mean_metrics(sums)
    return {"val_loss": means["loss"], "val_accuracy": means["accuracy"]}


def check_arguments(configs: Sequence[Any], splits: Any) -> None:
    """TypeErrors for arguments of the wrong kind from Python callers (a dict for a config, no splits)."""
    for config in configs:
        if not isinstance(config, TrainConfig):
            raise TypeError(
                f"config: expected a cnn.TrainConfig (TrainConfig(**fields)), got {type(config).__name__}"
            )
    if not isinstance(splits, Splits):
        raise TypeError(
            "splits: expected cnn.data.spec.Splits (e.g. cnn.load_dataset(config)), got "
            f"{type(splits).__name__}"
        )


def check_finite(
    metrics: list[dict[str, Any]], runs: list[Run], epochs: list[int], active: list[bool], per_epoch: int
) -> None:
    """Raises TrainingDiverged for the first run whose loss or gradient was NaN or Inf this epoch."""
    for i, run in enumerate(runs):
        first = float(metrics[i]["first_nonfinite"])
        if active[i] and np.isfinite(first):
            step = int(first) - (epochs[i] - 1) * per_epoch + 1
            who = f"{run.name}: " if len(runs) > 1 else ""
            raise TrainingDiverged(
                f"training diverged: {who}a NaN or Inf loss or gradient at epoch {epochs[i]}, step {step} "
                f"of {per_epoch}. The checkpoints of the earlier epochs are kept and nothing of this epoch "
                "was saved; lower --lr (or check the data) and train again, in a new --workdir or with "
                "--overwrite."
            )


def xla_message(error: Exception, epoch: int) -> str:
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    if "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower():
        return (
            f"out of memory in epoch {epoch} ({first}). The checkpoints of the earlier epochs are kept; "
            "lower --batch-size (or the model's size) and run the same command again to resume"
        )
    return f"XLA runtime error in epoch {epoch}: {first}. The checkpoints of the earlier epochs are kept"


@jax.jit
def _shuffle(key: jax.Array, epoch: jax.Array, order: jax.Array) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), order)


def epoch_orders(
    keys: dict[str, jax.Array], epochs: list[int], n: int, members: Members, data: Any, mesh: Any
):
    """Each run's permutation of the training data for its epoch (one compiled program), where the batches
    are gathered: on the host for `HostData`, else on the device (replicated over a mesh)."""
    shuffle = members.program(_shuffle, member_args=(0, 1), donate=False)
    epoch = np.asarray(epochs if members.count > 1 else epochs[0], np.uint32)
    order = shuffle(keys["shuffle"], epoch, np.arange(n, dtype=np.int32))
    if isinstance(data, HostData):
        return np.asarray(order)
    return replicate(order, mesh) if is_parallel(mesh) else order


def train_epoch(
    state, data, config: TrainConfig, plan: EpochPlan, epochs, keys, members: Members, mesh, active
):
    """One pass over the training data in a fresh permutation per run: the plan's compiled calls, each
    run's metrics left on the device (one list per epoch, fetched once by the caller). Returns the state,
    the calls' metrics and the timing: training seconds without compiling, compile seconds and programs."""
    n = len(data) if isinstance(data, HostData) else len(data[1])
    start, t0 = costs.snapshot(), time.perf_counter()
    with costs.phase("train"):
        order = epoch_orders(keys, epochs, n, members, data, mesh)
        live = np.asarray(active) if members.count > 1 else None
        bar = tqdm(
            total=plan.steps,
            desc=f"Epoch {max(epochs)}/{config.epochs}",
            unit="step",
            leave=False,
            disable=None,
        )
        calls = []
        for k, call in enumerate(plan.calls):
            state, metrics = run_call(state, data, order, keys["dropout"], live, call, members, mesh)
            calls.append(metrics)
            if not bar.disable and k > 0:  # the call before, with this one queued behind it (no idle device)
                show_finished(bar, calls[-2], plan.calls[k - 1], plan, n, t0, start)
        jax.block_until_ready(calls)
        if not bar.disable:
            show_finished(bar, calls[-1], plan.calls[-1], plan, n, t0, start)
        bar.close()
    compiled = costs.since(start)
    seconds = time.perf_counter() - t0 - compiled.seconds
    timing = {
        "seconds": seconds,
        "compile_seconds": compiled.seconds,
        "compilations": compiled.compilations,
        "images": n,
    }
    return state, calls, timing


def show_finished(bar: Any, metrics: Any, call: Call, plan: EpochPlan, n: int, t0: float, start: Any) -> None:
    """The progress bar up to the end of `call` once it has finished on the device (JAX dispatches
    asynchronously: a bar moved at dispatch would run ahead of the work), its images/s those of the
    finished steps without compiling, as the epoch's line counts them."""
    jax.block_until_ready(metrics)
    done = call.start // plan.batch_size + call.active
    seconds = time.perf_counter() - t0 - costs.since(start).seconds
    bar.set_postfix(img_s=f"{min(n, done * plan.batch_size) / max(seconds, 1e-9):.0f}")
    bar.update(done - bar.n)


def run_call(state, data, order, rng, live, call: Call, members: Members, mesh):
    """One compiled call: `call.steps` train steps from example `call.start` of the order (see `Call`)."""
    program, args, static = call_program(state, data, order, rng, live, call, members, mesh)
    return program(*args, **static)


def call_program(state, data, order, rng, live, call: Call, members: Members, mesh):
    """The program of `run_call`, its arguments and keyword arguments (also what `cnn.studies.ahead`
    compiles ahead, so that both are the same program)."""
    if isinstance(data, HostData):
        batches = data.batches(order, call.start, call.batch, call.active)  # K = active
        return members.program(train_batches), (state, *batches, rng), {}
    images, labels = data
    sharding = batch_sharding(mesh) if is_parallel(mesh) and call.batch % mesh.size == 0 else None
    program = members.program(
        train_chunk, member_args=(0, 3, 5), static_argnames=("batch_size", "steps", "sharding", "unroll")
    )
    # One program for every chunk of a run: the last, shorter chunk masks the steps it leaves out. Runs
    # trained together mask only that chunk: under vmap XLA:CPU rounds a masked chunk's steps differently
    # (measured), and their histories are pinned to those of the unmasked program.
    masked = not call.rolled and (members.count == 1 or call.active < call.steps)
    active = call.active if masked else None
    static = {"batch_size": call.batch, "steps": call.steps, "sharding": sharding, "unroll": not call.rolled}
    return program, (state, images, labels, order, call.start, rng, active), {"live": live, **static}
