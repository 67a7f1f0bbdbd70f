"""The train and eval steps and the fit loop: early stopping, best/latest checkpoints, resuming."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm import tqdm

from cnn.checkpoints import Checkpoints
from cnn.config import TrainConfig, config_differences, run_metadata, write_json
from cnn.data import IMAGE_SHAPE, NUM_CLASSES, Split, Splits
from cnn.models import build_model
from cnn.parallel import batch_sharding, check_batch_size, is_parallel, is_primary, replicate

Batch = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the batch-norm statistics (None for models without batch norm)."""

    batch_stats: Any = None


class WorkdirError(ValueError):
    """The workdir holds a run that the requested one cannot continue."""


def make_optimizer(config: TrainConfig, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """Adam with Keras' defaults (eps 1e-7 instead of optax's 1e-8); AdamW when `weight_decay` > 0; the
    learning rate constant or cosine-decayed to zero over `epochs`."""
    lr: float | optax.Schedule = config.lr
    if config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.lr, config.epochs * steps_per_epoch)
    if config.weight_decay:
        return optax.adamw(lr, eps=1e-7, weight_decay=config.weight_decay)
    return optax.adam(lr, eps=1e-7)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """Initialises the model's variables on a dummy batch and pairs them with the optimizer `tx`."""
    variables = model.init(rng, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats")
    )


def model_variables(state: TrainState, params: Any = None) -> dict[str, Any]:
    """The variables to apply the model with: parameters, plus batch statistics when the model has them."""
    variables = {"params": state.params if params is None else params}
    if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
    return variables


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def as_float_images(images: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1] inside the compiled step (data stays compact on the device);
    float images pass through unchanged."""
    return images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images


def _train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    dropout_rng = jax.random.fold_in(rng, state.step)
    rngs = {"dropout": dropout_rng, "augment": jax.random.fold_in(dropout_rng, 1)}
    has_batch_stats = state.batch_stats is not None
    images = as_float_images(batch["image"])

    def loss_fn(params):
        variables = model_variables(state, params)
        if has_batch_stats:
            logits, updates = state.apply_fn(
                variables, images, train=True, rngs=rngs, mutable=["batch_stats"]
            )
        else:
            logits, updates = state.apply_fn(variables, images, train=True, rngs=rngs), {}
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return losses.mean(), (losses, logits, updates)

    (loss, (losses, logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    step = state.step
    state = state.apply_gradients(grads=grads)
    if has_batch_stats:
        state = state.replace(batch_stats=updates["batch_stats"])
    correct = (logits.argmax(-1) == batch["label"]).sum()
    return state, {
        "loss": losses.sum(),
        "correct": correct,
        "count": jnp.float32(len(losses)),
        # the guard against divergence: the first step (0-based, over the run) with a NaN/Inf loss or gradient
        "first_nonfinite": jnp.where(finite, jnp.inf, step.astype(jnp.float32)),
    }


train_step = jax.jit(_train_step, donate_argnums=0)
train_step.__doc__ = """One optimizer step on `batch` (jit-compiled, state donated).

Returns the new state and the batch's summed loss, correct count and size (and `first_nonfinite`: the step
number if its loss or gradient is NaN or Inf, else inf), on the device. The dropout and
augmentation randomness is `fold_in(rng, state.step)`, so a resumed run draws the same numbers."""


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("batch_size", "steps", "sharding"))
def train_steps(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    start: jax.Array,
    rng: jax.Array,
    *,
    batch_size: int,
    steps: int,
    sharding: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """`steps` consecutive train steps as one compiled program (an unrolled `lax.scan`; compile time grows
    with `steps`), each batch gathered on the device from `order[start + i * batch_size:][:batch_size]`;
    returns the state and the summed metrics. With `sharding` (see `cnn.parallel`), each batch is split over
    the devices of a mesh."""

    def body(state, i):
        batch = _gather(images, labels, order, start + i * batch_size, batch_size, sharding)
        return _train_step(state, batch, rng)

    # Unrolled: XLA:CPU runs a convolution inside a loop body about 15x slower than in straight-line code
    # (measured: 223 vs 3,540 images/s at batch 32); unrolled, the chunk beats one call per step.
    state, metrics = jax.lax.scan(body, state, jnp.arange(steps), unroll=True)
    return state, {k: m.min(0) if k == "first_nonfinite" else m.sum(0) for k, m in metrics.items()}


@jax.jit
def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    """Summed loss and correct count over the examples of `batch` whose `mask` is 1."""
    logits = state.apply_fn(model_variables(state), as_float_images(batch["image"]), train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    mask = batch["mask"]
    correct = (logits.argmax(-1) == batch["label"]) * mask
    return {"loss": (losses * mask).sum(), "correct": correct.sum(), "count": mask.sum()}


def _gather(
    images: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    start: jax.Array,
    size: int,
    sharding: jax.sharding.Sharding | None = None,
) -> Batch:
    idx = jax.lax.dynamic_slice_in_dim(order, start, size)
    batch = {"image": images[idx], "label": labels[idx]}
    return batch if sharding is None else jax.lax.with_sharding_constraint(batch, sharding)


def accumulate(totals: dict[str, jax.Array] | None, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Running train metrics: sums, except the first non-finite step, which is a minimum."""
    if totals is None:
        return metrics
    return {
        k: jnp.minimum(v, metrics[k]) if k == "first_nonfinite" else v + metrics[k] for k, v in totals.items()
    }


take_batch = jax.jit(_gather, static_argnames=("size", "sharding"))
take_batch.__doc__ = "The `size` examples at positions `order[start:start + size]`, gathered on the device."


def compact_images(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The split's images as uint8 (a quarter of the float32 bytes) when that is exact, as it is for pixels
    that came from uint8 files, and its labels."""
    if not np.isfinite(split.images).all():
        return split.images, split.labels
    as_uint8 = np.rint(split.images * 255.0).astype(np.uint8)
    exact = np.array_equal(as_uint8.astype(np.float32) / 255.0, split.images)
    return (as_uint8 if exact else split.images), split.labels


def device_data(split: Split, mesh: Any = None) -> tuple[jax.Array, jax.Array]:
    """The split's images (uint8 where exact, see `compact_images`) and labels on the device, or replicated
    on every device of `mesh` (see `cnn.parallel`)."""
    images, labels = compact_images(split)
    if is_parallel(mesh):
        return replicate((images, labels), mesh)
    return jax.device_put(images), jax.device_put(labels)


def summarize(totals: dict[str, jax.Array]) -> dict[str, float]:
    """Mean loss and accuracy from summed metrics (one device-to-host transfer)."""
    totals = jax.device_get(totals)
    return {
        "loss": float(totals["loss"] / totals["count"]),
        "accuracy": float(totals["correct"] / totals["count"]),
    }


def padded_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Batches of `batch_size` with a `mask`; the last one is padded (one compiled shape), never dropped."""
    n = len(images)
    for start in range(0, n, batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        pad = batch_size - len(x) if n > batch_size else 0
        yield {
            "image": np.pad(x, ((0, pad), (0, 0), (0, 0), (0, 0))),
            "label": np.pad(y, (0, pad)),
            "mask": np.pad(np.ones(len(x), np.float32), (0, pad)),
        }


class InputError(ValueError):
    """Images or labels handed to `predict`/`evaluate` that the models cannot take (names the fix)."""


def check_images(images: Any, what: str = "images") -> np.ndarray:
    """`images` as an array of shape (N, 28, 28, 1), uint8 or float in [0, 1] without NaN; else InputError."""
    if not isinstance(images, (np.ndarray, jax.Array)):
        raise InputError(
            f"{what}: expected a NumPy or JAX array of shape (N, 28, 28, 1), got {type(images).__name__}"
        )
    images = np.asarray(images)
    want = f"(N, {', '.join(map(str, IMAGE_SHAPE))})"
    if images.ndim != 4:
        hint = "; add the channel axis with images[..., None]" if images.shape[-2:] == IMAGE_SHAPE[:2] else ""
        raise InputError(f"{what}: expected 4 dimensions {want} (NHWC), got shape {images.shape}{hint}")
    if images.shape[1:3] != IMAGE_SHAPE[:2]:
        raise InputError(
            f"{what}: expected {IMAGE_SHAPE[0]}×{IMAGE_SHAPE[1]} images {want}, got {images.shape}"
        )
    if images.shape[3] != IMAGE_SHAPE[2]:
        raise InputError(
            f"{what}: expected {IMAGE_SHAPE[2]} channel (grayscale) {want}, "
            f"got {images.shape[3]} in {images.shape}"
        )
    if len(images) == 0:
        raise InputError(f"{what}: no images (shape {images.shape})")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(
            f"{what}: expected uint8 pixels (0..255) or floats in [0, 1], got dtype {images.dtype}; "
            "convert with images.astype(np.uint8) or images.astype(np.float32) / 255"
        )
    if np.isnan(images).any():
        raise InputError(f"{what}: {int(np.isnan(images).sum())} NaN value(s); clean the input first")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        hint = " (they look like 0..255 pixels: divide by 255)" if high <= 255 and low >= 0 else ""
        raise InputError(f"{what}: float values must lie in [0, 1], got [{low:g}, {high:g}]{hint}")
    return images


def check_labels(labels: Any, n: int, what: str = "labels") -> np.ndarray:
    """`labels` as an integer array of shape (n,) with values in [0, 10); else InputError."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise InputError(f"{what}: expected shape ({n},), one label per image, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"{what}: expected integer class numbers 0..{NUM_CLASSES - 1}, got dtype {labels.dtype}"
        )
    if n and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise InputError(
            f"{what}: class numbers must lie in [0, {NUM_CLASSES}), "
            f"got {int(labels.min())}..{int(labels.max())}"
        )
    return labels


def evaluate(state: TrainState, split: Split, batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and accuracy of `state` on `split`; the last batch is padded and masked, never dropped.
    Raises InputError for images or labels the model cannot take (see `check_images`, `check_labels`)."""
    images = check_images(split.images, "split.images")
    split = Split(images, check_labels(split.labels, len(images), "split.labels"))
    totals = None
    for batch in padded_batches(split.images, split.labels, batch_size):
        metrics = eval_step(state, batch)
        totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
    return summarize(totals)


@jax.jit
def _probabilities(state: TrainState, images: jax.Array) -> jax.Array:
    return jax.nn.softmax(state.apply_fn(model_variables(state), as_float_images(images), train=False))


def predict(state: TrainState, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Class probabilities `(N, 10)` of `images` `(N, 28, 28, 1)` (float in [0, 1] or uint8); raises
    InputError naming the problem for anything else (see `check_images`)."""
    images = check_images(images)
    out = [
        np.asarray(_probabilities(state, b["image"]))[: int(b["mask"].sum())]
        for b in padded_batches(images, np.zeros(len(images), np.int32), batch_size)
    ]
    return np.concatenate(out)


def monitored(metrics: dict[str, float], monitor: str = "val_loss") -> float:
    """The score early stopping and the best checkpoint minimise: the validation loss, or the negated
    validation accuracy."""
    return metrics[monitor] if monitor == "val_loss" else -metrics[monitor]


@dataclass
class EarlyStopping:
    """Keras' EarlyStopping: stop after `patience` epochs without a new minimum of the score (see
    `monitored`)."""

    patience: int
    best: float = float("inf")
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False

    def update(self, epoch: int, score: float) -> bool:
        """Records one epoch's score (lower is better); returns True when this epoch is the best so far."""
        if score < self.best:
            self.best, self.best_epoch, self.wait = score, epoch, 0
            return True
        self.wait += 1
        self.stopped = self.wait >= self.patience
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "stopped": self.stopped}


@dataclass
class RunState:
    """Everything the fit loop carries from epoch to epoch besides the train state (saved with it)."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    timing: list[dict[str, float]] = field(default_factory=list)
    stopping: EarlyStopping = field(default_factory=lambda: EarlyStopping(patience=0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "history": self.history,
            "timing": self.timing,
            "stopping": self.stopping.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], patience: int) -> RunState:
        stopping = EarlyStopping(patience=patience, **{k: v for k, v in d["stopping"].items()})
        return cls(epoch=d["epoch"], history=d["history"], timing=d["timing"], stopping=stopping)


def check_workdir(workdir: str | Path, config: TrainConfig, overwrite: bool = False) -> dict[str, Any] | None:
    """The saved config.json of the run in `workdir` (None if there is none); raises WorkdirError when that
    run's config differs from `config` and `overwrite` is not set. Reads only."""
    config_file = Path(workdir) / "config.json"
    if overwrite or not config_file.exists():
        return None
    try:
        saved = json.loads(config_file.read_text())
        differences = config_differences(saved["config"], config)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise WorkdirError(
            f"workdir {workdir}: its config.json is unreadable ({e}); use another --workdir, or --overwrite"
        ) from None
    if differences:
        raise WorkdirError(
            f"workdir {workdir} holds a run with a different config ({'; '.join(differences)}). "
            "Use another --workdir, or pass --overwrite to delete that run and start fresh."
        )
    return saved


def prepare_workdir(workdir: Path, config: TrainConfig, overwrite: bool = False) -> None:
    """Creates `workdir`, or checks that the run already in it has the same config (before any work)."""
    config_file = workdir / "config.json"
    if not is_primary():  # process 0 of a multi-process run checks and writes; the others only train
        workdir.mkdir(parents=True, exist_ok=True)
        return
    saved = check_workdir(workdir, config, overwrite)
    if overwrite and workdir.exists():
        shutil.rmtree(workdir)
    if saved is not None:
        # The metadata stays that of the run's start; only a resumable field (epochs) may change.
        write_json(config_file, {**saved, "config": config.to_dict()})
        return
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(config_file, {"config": config.to_dict(), **run_metadata()})


def train_epoch(
    state: TrainState,
    data: tuple[jax.Array, jax.Array],
    config: TrainConfig,
    epoch: int,
    keys: dict[str, jax.Array],
    mesh: Any = None,
) -> tuple[TrainState, dict[str, float], dict[str, float]]:
    """One pass over the training data in a fresh permutation; returns state, metrics and timing. With a
    `mesh` (see `cnn.parallel`), every batch is split over its devices. Raises `TrainingDiverged` naming
    the epoch and step if a loss or gradient was NaN or Inf."""
    images, labels = data
    n = len(labels)
    order = jax.random.permutation(jax.random.fold_in(keys["shuffle"], epoch), n)
    sharding = None
    if is_parallel(mesh):
        order, sharding = replicate(order, mesh), batch_sharding(mesh)
    starts = range(0, n, config.batch_size)
    bar = tqdm(
        total=len(starts),
        desc=f"Epoch {epoch}/{config.epochs}",
        unit="step",
        leave=False,
        disable=None,
        dynamic_ncols=True,
    )
    bs, chunk, full_batches = config.batch_size, config.steps_per_call, n // config.batch_size
    totals, compile_seconds, t0, i = None, 0.0, time.perf_counter(), 0
    while i < len(starts):
        first = state.step == 0
        if first:
            tqdm.write("Compiling the train step (first call only)...")
            t = time.perf_counter()
        if chunk > 1 and full_batches - i >= chunk:
            state, metrics = train_steps(
                state,
                images,
                labels,
                order,
                i * bs,
                keys["dropout"],
                batch_size=bs,
                steps=chunk,
                sharding=sharding,
            )
            i += chunk
        else:
            size = min(bs, n - i * bs)
            batch = take_batch(
                images, labels, order, i * bs, size, None if size % _devices(mesh) else sharding
            )
            state, metrics = train_step(state, batch, keys["dropout"])
            i += 1
        if first:
            jax.block_until_ready(metrics)
            compile_seconds = time.perf_counter() - t
            tqdm.write(f"Compiled and ran the first call in {compile_seconds:.1f} s")
        totals = accumulate(totals, metrics)
        if bar.disable is False and (i % 50 < max(chunk, 1) or i == len(starts)):
            seen = min(n, i * bs)
            bar.set_postfix(
                loss=f"{summarize(totals)['loss']:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}"
            )
            bar.update(i - bar.n)
    first_nonfinite = float(jax.device_get(totals.pop("first_nonfinite")))
    metrics = summarize(totals)
    seconds = time.perf_counter() - t0
    bar.close()
    if np.isfinite(first_nonfinite):
        step = int(first_nonfinite) - (epoch - 1) * len(starts) + 1
        raise TrainingDiverged(
            f"training diverged: a NaN or Inf loss or gradient at epoch {epoch}, step {step} of "
            f"{len(starts)}. The checkpoints of the earlier epochs are kept and nothing of this epoch was "
            "saved; lower --lr (or check the data) and train again, in a new --workdir or with --overwrite."
        )
    return state, metrics, {"seconds": seconds, "compile_seconds": compile_seconds, "images": n}


def _devices(mesh: Any) -> int:
    return mesh.size if is_parallel(mesh) else 1


class TrainingDiverged(RuntimeError):
    """A NaN or Inf loss or gradient; the message names the epoch and step."""


def run_keys(config: TrainConfig) -> dict[str, jax.Array]:
    """The run's random keys, all derived from `config.seed`: initialisation, dropout and shuffling."""
    keys = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    return dict(zip(("init", "dropout", "shuffle"), keys, strict=True))


def initial_state(config: TrainConfig, steps_per_epoch: int = 1) -> TrainState:
    """The freshly initialised train state of `config` (also the template to restore a checkpoint into)."""
    model = build_model(config.model, **config.model_args)
    return create_train_state(model, make_optimizer(config, steps_per_epoch), run_keys(config)["init"])


class RunNotFoundError(ValueError):
    """A workdir without the files of a trained run."""


def restore_run(
    workdir: str | Path, epoch: int | None = None
) -> tuple[TrainConfig, TrainState, dict[str, Any]]:
    """The config, the train state of the best epoch (or of `epoch`) and the metadata of a run's workdir."""
    workdir = Path(workdir)
    config_file = workdir / "config.json"
    hint = f"train one first: python -m cnn train --workdir {workdir}"
    if not config_file.is_file():
        raise RunNotFoundError(f"workdir {workdir} holds no run (no config.json); {hint}")
    config = TrainConfig(**json.loads(config_file.read_text())["config"])
    checkpoints = Checkpoints(workdir / "checkpoints")
    try:
        latest = checkpoints.latest_epoch()
        if latest is None:
            raise RunNotFoundError(f"workdir {workdir} has no checkpoint yet; {hint}")
        chosen = epoch or checkpoints.restore_meta(latest)["stopping"]["best_epoch"]
        if chosen not in checkpoints.epochs():
            raise RunNotFoundError(f"epoch {chosen} is not saved in {workdir}; saved: {checkpoints.epochs()}")
        params, batch_stats, meta = checkpoints.restore_variables(chosen)
        # The variables into a fresh state of the run's model: any optimizer it was trained with (a frozen
        # backbone's, say) restores, and the optimizer state, needed only to resume, starts anew.
        template = initial_state(config)
        state = template.replace(
            params=jax.tree.map(jnp.asarray, params),
            batch_stats=None if batch_stats is None else jax.tree.map(jnp.asarray, batch_stats),
        )
    finally:
        checkpoints.close()
    return config, state, meta


def training_split(config: TrainConfig, splits: Splits) -> Split:
    """The training examples a run uses (the first `limit_train`), checked against the batch size."""
    train = splits.train
    if config.limit_train is not None:
        train = Split(train.images[: config.limit_train], train.labels[: config.limit_train])
    if config.batch_size > len(train):
        raise ValueError(f"batch_size: {config.batch_size} is larger than the {len(train)} training examples")
    return train


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
      splits: train / validation / test data (see `cnn.data.load_fashion_mnist`).
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
    """
    workdir = Path(workdir)
    train = training_split(config, splits)
    check_batch_size(config.batch_size, mesh)
    prepare_workdir(workdir, config, overwrite)

    keys = run_keys(config)
    steps_per_epoch = -(-len(train) // config.batch_size)
    state = init_state if init_state is not None else initial_state(config, steps_per_epoch)
    if is_parallel(mesh):
        state, keys = replicate(state, mesh), replicate(keys, mesh)
    checkpoints = Checkpoints(workdir / "checkpoints")
    try:
        state, run, checkpoints = _resume(checkpoints, state, config, workdir)
        with _stop_on_signals() as stop:
            state, run = _fit_epochs(
                config, state, run, train, splits.val, keys, checkpoints, workdir, on_epoch_end, mesh, stop
            )
        best_state, _ = checkpoints.restore(run.stopping.best_epoch, state)
    finally:
        checkpoints.close()
    return _finish(config, best_state, run, splits, workdir)


class Interrupted(Exception):
    """Training stopped on SIGTERM or SIGINT after saving the epoch in progress; `exit_code` is
    128 + the signal number (143 for SIGTERM, 130 for SIGINT), as shells report a signal."""

    def __init__(self, signum: int, epoch: int, workdir: Path):
        self.signum, self.epoch, self.exit_code = signum, epoch, 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after epoch {epoch}, saved in {workdir}/checkpoints; "
            "run the same command again to resume"
        )


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


def _resume(
    checkpoints: Checkpoints, state: TrainState, config: TrainConfig, workdir: Path
) -> tuple[TrainState, RunState, Checkpoints]:
    """The state and run of the latest checkpoint that restores, newest first. A damaged one (a truncated
    file, a missing item) is moved to `workdir/damaged/` with a warning, never deleted; with none left the
    run starts afresh. Unfinished temporary directories of an interrupted save are ignored by orbax."""
    for unfinished in sorted(checkpoints.directory.glob("*.orbax-checkpoint-tmp*")):
        print(f"Warning: ignoring {unfinished}, an unfinished checkpoint save (the run was interrupted)")
    for epoch in sorted(checkpoints.epochs(), reverse=True):
        try:
            restored, meta = checkpoints.restore(epoch, state)
            run = RunState.from_dict(meta, config.patience)
        except Exception as error:  # orbax, tensorstore and json raise many kinds
            aside = workdir / "damaged" / f"epoch-{epoch}-{int(time.time())}"
            checkpoints.close()
            aside.parent.mkdir(exist_ok=True)
            shutil.move(str(checkpoints.directory / str(epoch)), aside)
            checkpoints = Checkpoints(checkpoints.directory)
            left = checkpoints.epochs()
            print(
                f"Warning: the checkpoint of epoch {epoch} in {workdir} is damaged "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
                f"moved to {aside}. "
                + (
                    f"Falling back to epoch {max(left)}." if left else "No other checkpoint: starting afresh."
                ),
                flush=True,
            )
            continue
        print(f"Resuming {workdir} after epoch {run.epoch} (best so far: epoch {run.stopping.best_epoch})")
        return restored, run, checkpoints
    return state, RunState(stopping=EarlyStopping(config.patience)), checkpoints


def _fit_epochs(config, state, run, train, val, keys, checkpoints, workdir, on_epoch_end, mesh, stop):
    if run.history and is_primary():  # a run killed between its checkpoint and its history file
        write_json(workdir / "history.json", run.history)
    data = device_data(train, mesh)
    while run.epoch < config.epochs and not run.stopping.stopped:
        epoch = run.epoch + 1
        state, metrics, timing = train_epoch(state, data, config, epoch, keys, mesh)
        val_metrics = evaluate(state, val, config.eval_batch_size)
        metrics |= {"val_loss": val_metrics["loss"], "val_accuracy": val_metrics["accuracy"]}
        score = monitored(metrics, config.monitor)
        run.stopping.update(epoch, score)
        run.epoch = epoch
        run.history.append({"epoch": epoch, **metrics})
        run.timing.append({"epoch": epoch, **timing})
        checkpoints.save(epoch, state, run.to_dict(), score)
        if is_primary():
            write_json(workdir / "history.json", run.history)
        print(_epoch_line(config, epoch, metrics, timing), flush=True)
        if run.stopping.stopped:
            print(
                f"Early stopping: no better {config.monitor} for {config.patience} epochs; "
                f"restoring epoch {run.stopping.best_epoch}"
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if stop["signum"] is not None and run.epoch < config.epochs and not run.stopping.stopped:
            raise Interrupted(stop["signum"], epoch, workdir)
    return state, run


def _epoch_line(config: TrainConfig, epoch: int, metrics: dict[str, float], timing: dict[str, float]) -> str:
    steps = -(-timing["images"] // config.batch_size)
    rate = timing["images"] / timing["seconds"]
    return (
        f"Epoch {epoch}/{config.epochs} - {steps} steps - {timing['seconds']:.1f}s ({rate:.0f} img/s) - "
        f"loss: {metrics['loss']:.4f} - accuracy: {metrics['accuracy']:.4f} - "
        f"val_loss: {metrics['val_loss']:.4f} - val_accuracy: {metrics['val_accuracy']:.4f}"
    )


def _finish(
    config: TrainConfig,
    best_state: TrainState,
    run: RunState,
    splits: Splits,
    workdir: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from cnn.plots import plot_curves

    val = evaluate(best_state, splits.val, config.eval_batch_size)
    test = evaluate(best_state, splits.test, config.eval_batch_size)
    train_seconds = sum(t["seconds"] for t in run.timing)
    compile_seconds = sum(t["compile_seconds"] for t in run.timing)
    images = sum(t["images"] for t in run.timing)
    results = {
        "model": config.model,
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "best_epoch": run.stopping.best_epoch,
        "epochs_run": run.epoch,
        "stopped_early": run.stopping.stopped,
        "params": count_params(best_state.params),
        "non_trainable_params": count_params(best_state.batch_stats),
        "steps": sum(-(-t["images"] // config.batch_size) for t in run.timing),
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "images_per_second": images / max(train_seconds - compile_seconds, 1e-9),
        **(extra or {}),
    }
    if all("group_images" in t for t in run.timing):  # trained together with other seeds (cnn.sweep)
        results["group_images_per_second"] = sum(t["group_images"] for t in run.timing) / max(
            train_seconds, 1e-9
        )
    if is_primary():
        write_json(workdir / "results.json", results)
        plot_curves(run.history, workdir / "curves.png", best_epoch=run.stopping.best_epoch)
    print(
        f"Best epoch {results['best_epoch']}: "
        f"val_loss {val['loss']:.4f}, val_accuracy {val['accuracy']:.4f}; "
        f"test_loss {test['loss']:.4f}, test_accuracy {test['accuracy']:.4f}. Results in {workdir}"
    )
    return results
