"""What runs on the device, written for one run: the loss, `train_step` (one optimizer step), `train_chunk`
(several steps gathered from device-resident data in one compiled call), `train_batches` (batches streamed
from the host) and `eval_sums` (a whole split evaluated in one compiled call). Several runs trained together
run these same functions under `jax.vmap` (see `cnn.engine.vmap`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from cnn.data.spec import to_float
from cnn.engine.augment import augment
from cnn.engine.state import TrainState, apply_model, evaluated, micro_batch_size
from cnn.models.computation import plain_gradients

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


# ------------------------------------------------------------------------------------------ loss, metrics
def losses_and_correct(
    logits: jax.Array, labels: jax.Array, targets: jax.Array | None = None, smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Per-example loss and correctness. Several outputs: softmax cross-entropy and the arg-max; one output
    (a binary task): sigmoid binary cross-entropy and the 0.5 threshold (logit > 0). The loss is taken
    against soft `targets` `(N, classes)` when given (mixup, cutmix), and with label `smoothing` e: the
    targets become (1 - e) targets + e / classes (for one sigmoid output, of the two classes). Correctness
    always counts against `labels`."""
    binary = logits.shape[-1] == 1
    if targets is None and not smoothing:
        if binary:
            logit = logits[:, 0]
            losses = optax.sigmoid_binary_cross_entropy(logit, labels.astype(logit.dtype))
            return losses, (logit > 0) == (labels == 1)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return losses, logits.argmax(-1) == labels
    classes = 2 if binary else logits.shape[-1]
    if targets is None:
        targets = jax.nn.one_hot(labels, classes, dtype=jnp.float32)
    targets = targets * (1 - smoothing) + smoothing / classes
    if binary:
        logit = logits[:, 0]
        return optax.sigmoid_binary_cross_entropy(logit, targets[:, 1]), (logit > 0) == (labels == 1)
    return optax.softmax_cross_entropy(logits, targets), logits.argmax(-1) == labels


def recipe_inputs(state: TrainState, images: jax.Array, labels: jax.Array, key: jax.Array) -> tuple[Any, Any]:
    """The batch as the model trains on it: augmented by the state's policy (as floats in [0, 1]), with the
    soft targets of mixup / cutmix (else None); unchanged without a policy."""
    if state.augmentation is None:
        return images, None
    classes = max(output_units(state), 2)
    return augment(state.augmentation, key, to_float(images), labels, classes)


def output_units(state: TrainState) -> int:
    """The width of the model's output (from shapes alone)."""
    x = jax.ShapeDtypeStruct((1, *state.input_shape), jnp.float32)
    return int(jax.eval_shape(lambda x: apply_model(state, x, train=False), x).shape[-1])


def class_probabilities(logits: jax.Array) -> jax.Array:
    """`(N, classes)` probabilities: the softmax, or `[1 - p, p]` with p the sigmoid of a single output."""
    if logits.shape[-1] == 1:
        p = jax.nn.sigmoid(logits)
        return jnp.concatenate([1 - p, p], axis=-1)
    return jax.nn.softmax(logits)


def add_metrics(totals: Metrics | None, metrics: Metrics) -> Metrics:
    """Running metric sums, except `first_nonfinite` (the first diverged step), which is a minimum."""
    if totals is None:
        return metrics
    return {
        k: jnp.minimum(v, metrics[k]) if k == "first_nonfinite" else v + metrics[k] for k, v in totals.items()
    }


# ------------------------------------------------------------------------------------------- train steps
def _train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    dropout_rng = jax.random.fold_in(rng, state.step)
    rngs = {"dropout": dropout_rng, "augment": jax.random.fold_in(dropout_rng, 1)}
    has_batch_stats = state.batch_stats is not None
    images = batch["image"]
    micro = micro_batch_size(state, images.shape[0])
    if micro < images.shape[0]:
        return _micro_batched_step(state, batch, rngs, micro)
    images, targets = recipe_inputs(state, images, batch["label"], jax.random.fold_in(dropout_rng, 2))

    def loss_fn(params):
        if has_batch_stats:
            logits, updates = apply_model(
                state, images, params, train=True, rngs=rngs, mutable=["batch_stats"]
            )
        else:
            logits, updates = apply_model(state, images, params, train=True, rngs=rngs), {}
        losses, correct = losses_and_correct(logits, batch["label"], targets, state.label_smoothing)
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
) -> tuple[TrainState, Metrics]:
    """The optimizer update with `grads` (and the new batch statistics), and the step's summed metrics."""
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    step = state.step
    if state.loss_to_optimizer:  # reduce-on-plateau follows the loss
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value=loss)
        params = optax.apply_updates(state.params, updates)
        state = state.replace(step=step + 1, params=params, opt_state=opt_state)
    else:
        state = state.apply_gradients(grads=grads)
    if batch_stats is not None:
        state = state.replace(batch_stats=batch_stats)
    if state.ema_decay:
        state = _moving_average(state, step)
    return state, {
        "loss": losses.sum(),
        "correct": correct.sum(),
        "count": jnp.float32(len(losses)),
        # the guard against divergence: the first step (0-based, over the run) with a NaN/Inf loss or gradient
        "first_nonfinite": jnp.where(finite, jnp.inf, step.astype(jnp.float32)),
    }


def _moving_average(state: TrainState, step: jax.Array) -> TrainState:
    """The weights' (and batch-norm statistics') moving average after `step`, with TensorFlow's warm-up of
    the decay, min(decay, (1 + step) / (10 + step)), so early averages are not dominated by the start."""
    decay = jnp.minimum(state.ema_decay, (1.0 + step) / (10.0 + step))

    def average(old, new):
        return jax.tree.map(lambda a, b: (decay * a + (1 - decay) * b).astype(a.dtype), old, new)

    ema_stats = None if state.batch_stats is None else average(state.ema_batch_stats, state.batch_stats)
    return state.replace(ema_params=average(state.ema_params, state.params), ema_batch_stats=ema_stats)


def _micro_batched_step(
    state: TrainState, batch: Batch, rngs: dict[str, jax.Array], micro: int
) -> tuple[TrainState, Metrics]:
    """One optimizer step whose gradient is summed over micro-batches of `micro` examples (unrolled), the
    same mean-loss gradient as in one piece up to float rounding; dropout and augmentation draw their
    randomness per micro-batch. Only for models without batch norm (see `micro_batch_size`)."""
    n = batch["image"].shape[0]
    grads, losses, correct = None, [], []
    for i in range(n // micro):
        part = {k: v[i * micro : (i + 1) * micro] for k, v in batch.items()}
        keys = {name: jax.random.fold_in(key, i) for name, key in rngs.items()}
        x, targets = recipe_inputs(
            state, part["image"], part["label"], jax.random.fold_in(keys["augment"], 2)
        )

        def loss_fn(params, part=part, keys=keys, x=x, targets=targets):
            logits = apply_model(state, x, params, train=True, rngs=keys)
            part_losses, part_correct = losses_and_correct(
                logits, part["label"], targets, state.label_smoothing
            )
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


def train_chunk(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    start: jax.Array,
    rng: jax.Array,
    active: jax.Array | None,
    *,
    batch_size: int,
    steps: int,
    sharding: jax.sharding.Sharding | None = None,
    unroll: bool = True,
) -> tuple[TrainState, Metrics]:
    """`steps` consecutive train steps, each batch gathered on the device from
    `order[start + i * batch_size:][:batch_size]`; only the first `active` of them count (the others leave
    the state as it is: an epoch's last, shorter chunk runs in the same program; None: all).

    Unrolled: the CPU's fastest. With `unroll=False`, a rolled loop that compiles one step: a whole epoch in
    one call, the accelerators' way (on the CPU its convolutions' gradients are written out in the layout
    XLA:CPU computes fast inside a loop, `cnn.models.computation.conv_with_plain_gradients`). Returns the
    state and each step's metrics (a leading axis of `steps`; those of steps left out are to be ignored). With
    `sharding` (see `cnn.engine.devices`), each batch is split over the devices of a mesh."""
    if steps == 1:  # the plain step, op for op (a one-step loop fuses differently)
        return _train_step(state, gather(images, labels, order, start, batch_size, sharding), rng)

    def body(state, i):
        new, metrics = _train_step(
            state, gather(images, labels, order, start + i * batch_size, batch_size, sharding), rng
        )
        if active is None:
            return new, metrics
        return jax.tree.map(lambda n, o: jnp.where(i < active, n, o), new, state), metrics

    if unroll:
        return jax.lax.scan(body, state, jnp.arange(steps), unroll=True)
    with plain_gradients(
        jax.default_backend() == "cpu"
    ):  # see `cnn.models.computation.conv_with_plain_gradients`
        return jax.lax.scan(body, state, jnp.arange(steps), unroll=1)


def train_batches(
    state: TrainState, images: jax.Array, labels: jax.Array, rng: jax.Array
) -> tuple[TrainState, Metrics]:
    """Train steps on batches handed in from the host, `images` `(K, B, H, W, C)` and `labels` `(K, B)`: K
    steps in one compiled call (unrolled), for data streamed from the host (see
    `cnn.engine.placement.HostData`); returns the state and each step's metrics (a leading axis of K)."""
    if len(labels) == 1:
        return _train_step(state, {"image": images[0], "label": labels[0]}, rng)

    def body(state, batch):
        return _train_step(state, {"image": batch[0], "label": batch[1]}, rng)

    return jax.lax.scan(body, state, (images, labels), unroll=True)


# ----------------------------------------------------------------------------------------------- evaluate
def eval_sums(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
    """Summed loss, correct count and count of a whole split in one compiled call: `images` `(K, B, ...)`,
    `labels` and `mask` `(K, B)` (the padding of the last batch masked out), a rolled loop over the K
    batches adding their sums in order."""

    state = evaluated(state)

    def batch_sums(batch):
        x, y, m = batch
        losses, correct = losses_and_correct(apply_model(state, x, exact_pixels=True, train=False), y)
        return {"loss": (losses * m).sum(), "correct": (correct * m).sum(), "count": m.sum()}

    first = batch_sums((images[0], labels[0], mask[0]))
    rest = (images[1:], labels[1:], mask[1:])
    totals, _ = jax.lax.scan(lambda t, b: (add_metrics(t, batch_sums(b)), None), first, rest)
    return totals


def probabilities(state: TrainState, images: jax.Array) -> jax.Array:
    """Class probabilities of a batch (see `class_probabilities`)."""
    return class_probabilities(apply_model(evaluated(state), images, exact_pixels=True, train=False))
