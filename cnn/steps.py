"""What runs on the device: the train state, the optimizer, the jit-compiled train and eval steps (for one
run and for seeds stacked along a leading axis), metric sums, and `evaluate`/`predict` with their input
checks."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from cnn.config import TrainConfig
from cnn.data import Split, to_float
from cnn.models import build_model
from cnn.parallel import is_parallel, replicate
from cnn.summary import count_params  # noqa: F401  (re-exported)

Batch = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the batch-norm statistics (None for models without batch norm) and the
    (H, W, C) shape of the images the model takes (static: not an array, never checkpointed)."""

    batch_stats: Any = None
    input_shape: tuple[int, ...] = struct.field(pytree_node=False, default=(28, 28, 1))
    compute_dtype: str = struct.field(pytree_node=False, default="float32")  # see `apply_model`
    micro_batch: int = struct.field(pytree_node=False, default=0)  # see `micro_batch_size`


# Measured on a 2-core AMD EPYC (seed CNN, one step per call, glibc set by `cnn.host_memory`): batch 128
# took 24 ms in one piece, 18 ms as two micro-batches of 64, 16 ms as four of 32 (but 19 ms against 16 with
# ten steps per call); batch 256 78-81 ms whole, 42-44 ms as 128s, 33-35 ms as 64s. XLA:CPU's per-image cost
# grows with the batch, so on a one-device CPU large batches are split.
AUTO_MICRO_BATCH = 64


def micro_batch_size(state: TrainState, batch_size: int) -> int:
    """The micro-batch a training batch of `batch_size` is split into inside the compiled step (the batch
    size itself: not split). `state.micro_batch` > 0 asks for that size; 0 (auto) splits into
    `AUTO_MICRO_BATCH` on a one-device CPU. Models with batch norm (whose statistics need the whole batch)
    and sizes that do not divide the batch leave it whole."""
    if state.batch_stats is not None:
        return batch_size
    size = state.micro_batch
    if not size:
        one_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
        size = AUTO_MICRO_BATCH if one_cpu else batch_size
    return size if size < batch_size and batch_size % size == 0 else batch_size


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Batches in one pass over `examples`: the last, partial one counts (it is never dropped)."""
    return -(-examples // batch_size)


def make_optimizer(
    config: TrainConfig, steps: int = 1, injectable: bool = False
) -> optax.GradientTransformation:
    """Adam with Keras' defaults (eps 1e-7 instead of optax's 1e-8), AdamW when `weight_decay` > 0, or
    RMSprop as Keras has it (rho 0.9, eps 1e-7 added outside the square root, decoupled weight decay when
    asked); the learning rate constant or cosine-decayed to zero over `epochs` of `steps` steps.

    `injectable`: the same updates with the learning rate and weight decay kept in the optimizer's state
    (`optax.inject_hyperparams`), so runs that differ in them can be stacked and trained as one program."""
    if injectable:
        return _injectable_optimizer(config, steps)
    lr: float | optax.Schedule = config.lr
    if config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.lr, config.epochs * steps)
    if config.optimizer == "rmsprop":
        rmsprop = optax.rmsprop(lr, decay=0.9, eps=1e-7, eps_in_sqrt=False)
        if config.weight_decay:
            return optax.chain(optax.add_decayed_weights(config.weight_decay), rmsprop)
        return rmsprop
    if config.weight_decay:
        return optax.adamw(lr, eps=1e-7, weight_decay=config.weight_decay)
    return optax.adam(lr, eps=1e-7)


def _injectable_optimizer(config: TrainConfig, steps: int) -> optax.GradientTransformation:
    decay = optax.inject_hyperparams(optax.add_decayed_weights)(weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        parts = [decay, optax.scale_by_rms(decay=0.9, eps=1e-7, eps_in_sqrt=False)]
    else:
        parts = [optax.scale_by_adam(eps=1e-7), decay]
    if config.schedule == "cosine":
        parts.append(optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, config.epochs * steps)))
    return optax.chain(*parts, optax.inject_hyperparams(optax.scale)(step_size=-config.lr))


def learning_rate(config: TrainConfig, step: int, steps: int = 1) -> float:
    """The learning rate `make_optimizer(config, steps)` applies after `step` steps."""
    if config.schedule == "cosine":
        return float(optax.cosine_decay_schedule(config.lr, config.epochs * steps)(step))
    return float(config.lr)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    input_shape: Sequence[int] = (28, 28, 1),
    precision: str = "float32",
    micro_batch: int = 0,
) -> TrainState:
    """Initialises the model's variables on a dummy batch of `input_shape` images and pairs them with `tx`;
    `precision` 'bfloat16' computes in bfloat16 (the parameters and optimizer state stay float32);
    `micro_batch` as in `micro_batch_size`."""
    variables = model.init(rng, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats"),
        input_shape=tuple(input_shape),
        compute_dtype=precision,
        micro_batch=micro_batch,
    )


def run_keys(config: TrainConfig) -> dict[str, jax.Array]:
    """The run's random keys, all derived from `config.seed`: initialisation, dropout and shuffling."""
    keys = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    return dict(zip(("init", "dropout", "shuffle"), keys, strict=True))


def config_model(config: TrainConfig) -> nn.Module:
    """The network `config` trains, for its input shape and number of classes."""
    return build_model(config.model, input_shape=config.image_shape, **config.model_kwargs())


def initial_state(config: TrainConfig, steps: int = 1) -> TrainState:
    """The freshly initialised train state of `config` (also the template to restore a checkpoint into);
    `steps` per epoch sets the length of a cosine schedule."""
    return create_train_state(
        config_model(config),
        make_optimizer(config, steps),
        run_keys(config)["init"],
        config.image_shape,
        config.precision,
        config.micro_batch,
    )


def model_variables(state: TrainState, params: Any = None) -> dict[str, Any]:
    """The variables to apply the model with: parameters, plus batch statistics when the model has them."""
    variables = {"params": state.params if params is None else params}
    if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
    return variables


def apply_model(state: TrainState, images: jax.Array, params: Any = None, **kwargs: Any) -> Any:
    """The model on `images` (uint8, or floats in [0, 1]) in the state's precision. With 'bfloat16' (mixed
    precision, as in Flax's ImageNet example) the parameters and images are cast to bfloat16 for the
    computation and the logits come back in float32, so the loss and the float32 parameters' gradients
    and updates stay float32; batch norm keeps float32 statistics. `kwargs` go to `apply_fn`."""
    variables, x = model_variables(state, params), to_float(images)
    if state.compute_dtype == "float32":
        return state.apply_fn(variables, x, **kwargs)
    half = jnp.dtype(state.compute_dtype)
    cast = {**variables, "params": jax.tree.map(lambda p: p.astype(half), variables["params"])}
    out = state.apply_fn(cast, x.astype(half), **kwargs)
    if isinstance(out, tuple):  # (logits, mutated collections)
        return (out[0].astype(jnp.float32), *out[1:])
    return out.astype(jnp.float32)


# ------------------------------------------------------------------------------------------ loss, metrics
def losses_and_correct(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example loss and correctness. Several outputs: softmax cross-entropy and the arg-max; one output
    (a binary task): sigmoid binary cross-entropy and the 0.5 threshold (logit > 0)."""
    if logits.shape[-1] == 1:
        logit = logits[:, 0]
        losses = optax.sigmoid_binary_cross_entropy(logit, labels.astype(logit.dtype))
        return losses, (logit > 0) == (labels == 1)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses, logits.argmax(-1) == labels


def class_probabilities(logits: jax.Array) -> jax.Array:
    """`(N, classes)` probabilities: the softmax, or `[1 - p, p]` with p the sigmoid of a single output."""
    if logits.shape[-1] == 1:
        p = jax.nn.sigmoid(logits)
        return jnp.concatenate([1 - p, p], axis=-1)
    return jax.nn.softmax(logits)


def add_metrics(totals: dict[str, jax.Array] | None, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Running metric sums, except `first_nonfinite` (the first diverged step), which is a minimum."""
    if totals is None:
        return metrics
    return {
        k: jnp.minimum(v, metrics[k]) if k == "first_nonfinite" else v + metrics[k] for k, v in totals.items()
    }


def mean_metrics(totals: dict[str, Any]) -> dict[str, float]:
    """Mean loss and accuracy from summed metrics of one run (one device-to-host transfer)."""
    totals = jax.device_get(totals)
    return {
        "loss": float(totals["loss"] / totals["count"]),
        "accuracy": float(totals["correct"] / totals["count"]),
    }


def member_metrics(totals: dict[str, Any]) -> list[dict[str, float]]:
    """`mean_metrics` of every member of stacked sums (seeds trained together)."""
    totals = jax.device_get(totals)
    return [mean_metrics(jax.tree.map(lambda x, i=i: x[i], totals)) for i in range(len(totals["count"]))]


# ------------------------------------------------------------------------------------------- train steps
def _train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    dropout_rng = jax.random.fold_in(rng, state.step)
    rngs = {"dropout": dropout_rng, "augment": jax.random.fold_in(dropout_rng, 1)}
    has_batch_stats = state.batch_stats is not None
    images = batch["image"]
    micro = micro_batch_size(state, images.shape[0])
    if micro < images.shape[0]:
        return _micro_batched_step(state, batch, rngs, micro)

    def loss_fn(params):
        if has_batch_stats:
            logits, updates = apply_model(
                state, images, params, train=True, rngs=rngs, mutable=["batch_stats"]
            )
        else:
            logits, updates = apply_model(state, images, params, train=True, rngs=rngs), {}
        losses, correct = losses_and_correct(logits, batch["label"])
        return losses.mean(), (losses, correct, updates)

    (loss, (losses, correct, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _update(state, grads, loss, losses, correct, updates.get("batch_stats"))


def _update(
    state: TrainState,
    grads: Any,
    loss: jax.Array,
    losses: jax.Array,
    correct: jax.Array,
    batch_stats: Any = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The optimizer update with `grads` (and the new batch statistics), and the step's summed metrics."""
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    step = state.step
    state = state.apply_gradients(grads=grads)
    if batch_stats is not None:
        state = state.replace(batch_stats=batch_stats)
    return state, {
        "loss": losses.sum(),
        "correct": correct.sum(),
        "count": jnp.float32(len(losses)),
        # the guard against divergence: the first step (0-based, over the run) with a NaN/Inf loss or gradient
        "first_nonfinite": jnp.where(finite, jnp.inf, step.astype(jnp.float32)),
    }


def _micro_batched_step(
    state: TrainState, batch: Batch, rngs: dict[str, jax.Array], micro: int
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step whose gradient is summed over micro-batches of `micro` examples (unrolled), the
    same mean-loss gradient as in one piece up to float rounding; dropout and augmentation draw their
    randomness per micro-batch. Only for models without batch norm (see `micro_batch_size`)."""
    n = batch["image"].shape[0]
    grads, losses, correct = None, [], []
    for i in range(n // micro):
        part = {k: v[i * micro : (i + 1) * micro] for k, v in batch.items()}
        keys = {name: jax.random.fold_in(key, i) for name, key in rngs.items()}

        def loss_fn(params, part=part, keys=keys):
            logits = apply_model(state, part["image"], params, train=True, rngs=keys)
            part_losses, part_correct = losses_and_correct(logits, part["label"])
            return part_losses.sum(), (part_losses, part_correct)

        (_, (part_losses, part_correct)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        losses.append(part_losses)
        correct.append(part_correct)
    losses, correct = jnp.concatenate(losses), jnp.concatenate(correct)
    return _update(state, jax.tree.map(lambda g: g / n, grads), losses.mean(), losses, correct)


train_step = jax.jit(_train_step, donate_argnums=0)
train_step.__doc__ = """One optimizer step on `batch` (jit-compiled, state donated).

Returns the new state and the batch's summed loss, correct count and size (and `first_nonfinite`: the step
number if its loss or gradient is NaN or Inf, else inf), on the device. The dropout and
augmentation randomness is `fold_in(rng, state.step)`, so a resumed run draws the same numbers."""


def gather(
    images: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    start: jax.Array,
    size: int,
    sharding: jax.sharding.Sharding | None = None,
) -> Batch:
    """The `size` examples at positions `order[start:start + size]`, optionally split over a mesh."""
    idx = jax.lax.dynamic_slice_in_dim(order, start, size)
    batch = {"image": images[idx], "label": labels[idx]}
    return batch if sharding is None else jax.lax.with_sharding_constraint(batch, sharding)


take_batch = jax.jit(gather, static_argnames=("size", "sharding"))
take_batch.__doc__ = "`gather`, jit-compiled: one batch gathered on the device."


def _chunk(state, images, labels, order, start, rng, batch_size, steps, sharding, unroll=True):
    if steps == 1:  # the plain step, op for op (a one-step scan fuses differently)
        return _train_step(state, gather(images, labels, order, start, batch_size, sharding), rng)

    def body(state, i):
        return _train_step(
            state, gather(images, labels, order, start + i * batch_size, batch_size, sharding), rng
        )

    # Unrolled: XLA:CPU runs a convolution inside a loop body about 15x slower than in straight-line code
    # (measured: 223 vs 3,540 images/s at batch 32); unrolled, the chunk beats one call per step. Rolled
    # (`unroll=False`), a whole epoch compiles once into one call: the accelerators' way (epoch_loop=scan).
    state, metrics = jax.lax.scan(body, state, jnp.arange(steps), unroll=True if unroll else 1)
    return state, {k: m.min(0) if k == "first_nonfinite" else m.sum(0) for k, m in metrics.items()}


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("batch_size", "steps", "sharding", "unroll"))
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
    unroll: bool = True,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """`steps` consecutive train steps as one compiled program (an unrolled `lax.scan`, whose compile time
    grows with `steps`; or, with `unroll=False`, a rolled loop that compiles one step), each batch gathered
    on the device from `order[start + i * batch_size:][:batch_size]`; returns the state and the summed
    metrics. With `sharding` (see `cnn.parallel`), each batch is split over the devices of a mesh."""
    return _chunk(state, images, labels, order, start, rng, batch_size, steps, sharding, unroll)


@functools.partial(jax.jit, donate_argnums=0)
def train_batches(
    state: TrainState, images: jax.Array, labels: jax.Array, rng: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Train steps on batches handed in from the host, `images` `(K, B, H, W, C)` and `labels` `(K, B)`: K
    steps in one compiled call (unrolled), for data streamed from the host (see `HostData`)."""
    if len(labels) == 1:
        return _train_step(state, {"image": images[0], "label": labels[0]}, rng)

    def body(state, batch):
        return _train_step(state, {"image": batch[0], "label": batch[1]}, rng)

    state, metrics = jax.lax.scan(body, state, (images, labels), unroll=True)
    return state, {k: m.min(0) if k == "first_nonfinite" else m.sum(0) for k, m in metrics.items()}


@dataclasses.dataclass(frozen=True)
class HostData:
    """Training images kept in host memory and sent to the device batch by batch (for a data set larger
    than the device's memory); the same batches, in the same order, as data on the device."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, order: np.ndarray, start: int, batch_size: int, steps: int
    ) -> tuple[np.ndarray, np.ndarray]:
        idx = order[start : start + batch_size * steps]
        shape = (steps, len(idx) // steps)
        return self.images[idx].reshape(*shape, *self.images.shape[1:]), self.labels[idx].reshape(shape)


def data_fits(images: np.ndarray, fraction: float = 0.5) -> bool:
    """Whether `images` take at most `fraction` of the first device's free memory (always, where the
    device does not report its memory, as the CPU does not: there the host is the device)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        return True
    return images.nbytes <= fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))


def training_data(
    split: Split, placement: str = "auto", mesh: Any = None
) -> tuple[jax.Array, jax.Array] | HostData:
    """The training data where it trains from: on the device (`device_data`) or, for `placement` 'host'
    (or 'auto' when it does not fit, see `data_fits`), streamed from the host."""
    images, labels = compact_images(split)
    if placement == "host" or (placement == "auto" and not data_fits(images)):
        if is_parallel(mesh):
            raise ValueError("data_placement: streaming from the host runs on one device; use --devices 1")
        return HostData(images, labels)
    return device_data(split, mesh)


# ---------------------------------------------------------------------------- seeds stacked (one program)
def stack_trees(trees: Sequence[Any]) -> Any:
    """Trees of the same structure stacked leaf by leaf along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack_tree(tree: Any, i: int) -> Any:
    """Member `i` of a stacked tree."""
    return jax.tree.map(lambda x: x[i], tree)


def select_members(mask: jax.Array, new: Any, old: Any) -> Any:
    """Stacked trees: the members of `new` where `mask` holds, those of `old` elsewhere."""
    return jax.tree.map(lambda n, o: jnp.where(mask.reshape(-1, *[1] * (n.ndim - 1)), n, o), new, old)


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("batch_size", "steps", "sharding", "unroll"))
def stacked_train_steps(
    states: TrainState,
    images: jax.Array,
    labels: jax.Array,
    orders: jax.Array,
    start: jax.Array,
    rngs: jax.Array,
    active: jax.Array,
    *,
    batch_size: int,
    steps: int,
    sharding: jax.sharding.Sharding | None = None,
    unroll: bool = True,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """`train_steps` for seeds stacked along a leading axis (`jax.vmap`), each with its own shuffling
    `orders[i]` and key `rngs[i]`; members whose `active` is False keep their state."""

    def one(state, order, rng):
        return _chunk(state, images, labels, order, start, rng, batch_size, steps, sharding, unroll)

    new, metrics = jax.vmap(one)(states, orders, rngs)
    return select_members(active, new, states), metrics


# ----------------------------------------------------------------------------------------------- evaluate
@jax.jit
def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    """Summed loss and correct count over the examples of `batch` whose `mask` is 1."""
    logits = apply_model(state, batch["image"], train=False)
    losses, correct = losses_and_correct(logits, batch["label"])
    mask = batch["mask"]
    return {"loss": (losses * mask).sum(), "correct": (correct * mask).sum(), "count": mask.sum()}


stacked_eval_step = jax.jit(jax.vmap(eval_step, in_axes=(0, None)))
stacked_eval_step.__doc__ = "`eval_step` of every member of a stacked state on the same batch."


def padded_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `batch_size` with a `mask`; the last one is padded (one compiled shape), never dropped."""
    n = len(images)
    for start in range(0, n, batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        pad = batch_size - len(x) if n > batch_size else 0
        yield {
            "image": np.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)),
            "label": np.pad(y, (0, pad)),
            "mask": np.pad(np.ones(len(x), np.float32), (0, pad)),
        }


def metric_sums(state: TrainState, split: Split, batch_size: int, stacked: bool = False) -> dict[str, Any]:
    """Summed eval metrics of `state` (or of every member of a stacked state) over `split`."""
    step = stacked_eval_step if stacked else eval_step
    totals = None
    for batch in padded_batches(split.images, split.labels, batch_size):
        totals = add_metrics(totals, step(state, batch))
    return totals


class InputError(ValueError):
    """Images or labels handed to `predict`/`evaluate` that the model cannot take (names the fix)."""


def check_images(images: Any, shape: Sequence[int] = (28, 28, 1), what: str = "images") -> np.ndarray:
    """`images` as an array `(N, *shape)`, uint8 or float in [0, 1] without NaN; else InputError."""
    shape = tuple(shape)
    want = f"(N, {', '.join(map(str, shape))})"
    if not isinstance(images, np.ndarray | jax.Array):
        raise InputError(
            f"{what}: expected a NumPy or JAX array of shape {want}, got {type(images).__name__}"
        )
    images = np.asarray(images)
    if images.ndim != 4:
        hint = "; add the channel axis with images[..., None]" if images.shape[-2:] == shape[:2] else ""
        raise InputError(f"{what}: expected 4 dimensions {want} (NHWC), got shape {images.shape}{hint}")
    if images.shape[1:3] != shape[:2]:
        raise InputError(f"{what}: expected {shape[0]}×{shape[1]} images {want}, got {images.shape}")
    if images.shape[3] != shape[2]:
        kind = "grayscale" if shape[2] == 1 else "colour" if shape[2] == 3 else f"{shape[2]}-channel"
        raise InputError(
            f"{what}: expected {shape[2]} channel(s) ({kind}) {want}, got {images.shape[3]} in {images.shape}"
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


def check_labels(labels: Any, n: int, classes: int = 10, what: str = "labels") -> np.ndarray:
    """`labels` as an integer array of shape (n,) with values in [0, classes); else InputError."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise InputError(f"{what}: expected shape ({n},), one label per image, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{what}: expected integer class numbers 0..{classes - 1}, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise InputError(
            f"{what}: class numbers must lie in [0, {classes}), got {int(labels.min())}..{int(labels.max())}"
        )
    return labels


def output_classes(state: TrainState) -> int:
    """The number of classes the state's model tells apart (a single sigmoid output: 2), from shapes alone."""
    x = jax.ShapeDtypeStruct((1, *state.input_shape), jnp.float32)
    logits = jax.eval_shape(lambda x: state.apply_fn(model_variables(state), x, train=False), x)
    return max(int(logits.shape[-1]), 2)


def evaluate(state: TrainState, split: Split, batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and accuracy of `state` on `split`; the last batch is padded and masked, never dropped.
    Raises InputError for images or labels the model cannot take (see `check_images`, `check_labels`)."""
    images = check_images(split.images, state.input_shape, "split.images")
    labels = check_labels(split.labels, len(images), output_classes(state), "split.labels")
    return mean_metrics(metric_sums(state, Split(images, labels), batch_size))


@jax.jit
def _probabilities(state: TrainState, images: jax.Array) -> jax.Array:
    return class_probabilities(apply_model(state, images, train=False))


def predict(state: TrainState, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Class probabilities `(N, classes)` of `images` `(N, H, W, C)` (float in [0, 1] or uint8: the same
    pixels give the same probabilities); a model with one sigmoid output gives `[1 - p, p]`. Raises
    InputError naming the problem for anything else (see `check_images`)."""
    images = check_images(images, state.input_shape)
    out = [
        np.asarray(_probabilities(state, b["image"]))[: int(b["mask"].sum())]
        for b in padded_batches(images, np.zeros(len(images), np.int32), batch_size)
    ]
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------ device data
def compact_images(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The split's images as uint8 (a quarter of the float32 bytes) when that is exact, as it is for pixels
    that came from uint8 files, and its labels."""
    if split.images.dtype == np.uint8 or not np.isfinite(split.images).all():
        return split.images, split.labels
    as_uint8 = np.rint(split.images * 255.0).astype(np.uint8)
    exact = np.array_equal(to_float(as_uint8), split.images)
    return (as_uint8 if exact else split.images), split.labels


def device_data(split: Split, mesh: Any = None) -> tuple[jax.Array, jax.Array]:
    """The split's images (uint8 where exact, see `compact_images`) and labels on the device, or replicated
    on every device of `mesh` (see `cnn.parallel`)."""
    images, labels = compact_images(split)
    if is_parallel(mesh):
        return replicate((images, labels), mesh)
    return jax.device_put(images), jax.device_put(labels)
