"""A run's train state: Flax's `TrainState` with the batch-norm statistics, the optimizer (optax, Keras'
defaults), the random keys, and the model applied in the run's precision. Equal settings give the same
optimizer and model objects, so equal runs of a process share their compiled programs."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from cnn.config import TrainConfig
from cnn.data.spec import FASHION_MNIST, DataSpec, to_float
from cnn.engine.augment import Augmentation
from cnn.models.registry import model_for_data


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the batch-norm statistics (None for models without batch norm) and the
    (H, W, C) shape of the images the model takes (static: not an array, never checkpointed)."""

    batch_stats: Any = None
    input_shape: tuple[int, ...] = struct.field(pytree_node=False, default=FASHION_MNIST.image_shape)
    compute_dtype: str = struct.field(pytree_node=False, default="float32")  # see `apply_model`
    micro_batch: int = struct.field(pytree_node=False, default=0)  # see `micro_batch_size`
    # The training recipe's parts that act inside the train step (see `with_recipe`).
    augmentation: Any = struct.field(pytree_node=False, default=None)  # a cnn.engine.augment.Augmentation
    label_smoothing: float = struct.field(pytree_node=False, default=0.0)
    loss_to_optimizer: bool = struct.field(pytree_node=False, default=False)  # see `needs_loss`
    ema_decay: float = struct.field(pytree_node=False, default=0.0)


class AveragedTrainState(TrainState):
    """The train state of a run that keeps a moving average of its weights (and batch-norm statistics):
    a class of its own, so that every other run's state, and its checkpoints, stay as they were."""

    ema_params: Any = None
    ema_batch_stats: Any = None


# XLA:CPU's cost per image grows with the batch, so on a one-device CPU large batches are split into micro-
# batches of this size (the figures: README, "Measurements behind the code").
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
    """Adam with Keras' defaults (eps 1e-7 instead of optax's 1e-8), AdamW when `weight_decay` > 0,
    RMSprop as Keras has it (rho 0.9, eps 1e-7 added outside the square root, decoupled weight decay when
    asked), or SGD with momentum (Nesterov's when asked; weight decay added to the gradient, as PyTorch's
    SGD does); gradients clipped to `grad_clip` global norm first when > 0; the learning rate constant,
    cosine-decayed to zero over `epochs` of `steps` steps (after `warmup_epochs` of linear warm-up with
    `warmup_cosine`), multiplied by `decay_rate` every `decay_epochs` (`step`), or by `decay_rate` when the
    training loss has not improved for `plateau_patience` epochs (`plateau`: `optax.contrib`, which needs
    the loss: see `needs_loss`).

    `injectable`: the same updates with the learning rate and weight decay kept in the optimizer's state
    (`optax.inject_hyperparams`), so runs that differ in them can be stacked and trained as one program.
    Equal settings return the same object (a new one would be a new program to compile)."""
    c = config
    sgd = c.optimizer == "sgd"
    settings = (
        c.optimizer, c.lr, c.weight_decay, *_schedule_settings(c, steps), c.momentum if sgd else 0.0,
        c.nesterov and sgd, c.grad_clip,
    )  # fmt: skip
    return _optimizer(settings, injectable)


def _schedule_settings(config: TrainConfig, steps: int) -> tuple:
    """(schedule, total steps, warm-up steps, steps between decays, decay rate, plateau patience, steps per
    epoch), each only where `config.schedule` uses it (else zero): runs that differ only in settings their
    schedule ignores (a constant rate's epochs) share one optimizer, and so their compiled programs."""
    c, kind = config, config.schedule
    return (
        kind,
        c.epochs * steps if kind in ("cosine", "warmup_cosine") else 0,
        c.warmup_epochs * steps if kind == "warmup_cosine" else 0,
        c.decay_epochs * steps if kind == "step" else 0,
        c.decay_rate if kind in ("step", "plateau") else 0.0,
        c.plateau_patience if kind == "plateau" else 0,
        steps if kind == "plateau" else 0,
    )


def needs_loss(config: TrainConfig) -> bool:
    """Whether the optimizer's update takes the loss (`value=`): reduce-on-plateau does."""
    return config.schedule == "plateau"


def _rate(
    schedule: str, lr: float, total: int, warmup: int, every: int, rate: float
) -> float | optax.Schedule:
    """The learning rate (or `lr` = 1 for the injectable optimizer's shape of it) at every step."""
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, total)
    if schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=0.0)
    if schedule == "step":
        return optax.exponential_decay(lr, every, rate, staircase=True)
    return lr


@functools.cache
def _optimizer(settings: tuple, injectable: bool) -> optax.GradientTransformation:
    (
        kind,
        lr,
        weight_decay,
        schedule,
        total,
        warmup,
        every,
        rate,
        patience,
        steps,
        momentum,
        nesterov,
        clip,
    ) = settings
    if not injectable:
        tx = _plain_optimizer(
            kind, _rate(schedule, lr, total, warmup, every, rate), weight_decay, momentum, nesterov
        )
    elif kind == "sgd":
        tx = _injectable_sgd(
            lr, weight_decay, _rate(schedule, 1.0, total, warmup, every, rate), momentum, nesterov
        )
    else:
        tx = _injectable_optimizer(kind, lr, weight_decay, _rate(schedule, 1.0, total, warmup, every, rate))
    parts = ([optax.clip_by_global_norm(clip)] if clip else []) + [tx]
    if schedule == "plateau":
        parts.append(optax.contrib.reduce_on_plateau(factor=rate, patience=patience, accumulation_size=steps))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def _plain_optimizer(
    kind: str, rate: Any, weight_decay: float, momentum: float, nesterov: bool
) -> optax.GradientTransformation:
    if kind == "sgd":
        sgd = optax.sgd(rate, momentum=momentum or None, nesterov=nesterov)
        return optax.chain(optax.add_decayed_weights(weight_decay), sgd) if weight_decay else sgd
    if kind == "rmsprop":
        rmsprop = optax.rmsprop(rate, decay=0.9, eps=1e-7, eps_in_sqrt=False)
        if weight_decay:
            return optax.chain(optax.add_decayed_weights(weight_decay), rmsprop)
        return rmsprop
    if weight_decay:
        return optax.adamw(rate, eps=1e-7, weight_decay=weight_decay)
    return optax.adam(rate, eps=1e-7)


def _injectable_optimizer(
    kind: str, lr: float, weight_decay: float, shape: Any
) -> optax.GradientTransformation:
    decay = optax.inject_hyperparams(optax.add_decayed_weights)(weight_decay=weight_decay)
    if kind == "rmsprop":
        parts = [decay, optax.scale_by_rms(decay=0.9, eps=1e-7, eps_in_sqrt=False)]
    else:
        parts = [optax.scale_by_adam(eps=1e-7), decay]
    if callable(shape):
        parts.append(optax.scale_by_schedule(shape))
    return optax.chain(*parts, optax.inject_hyperparams(optax.scale)(step_size=-lr))


def _injectable_sgd(
    lr: float, weight_decay: float, shape: Any, momentum: float, nesterov: bool
) -> optax.GradientTransformation:
    decay = optax.inject_hyperparams(optax.add_decayed_weights)(weight_decay=weight_decay)
    parts = [decay] + ([optax.trace(decay=momentum, nesterov=nesterov)] if momentum else [])
    if callable(shape):
        parts.append(optax.scale_by_schedule(shape))
    return optax.chain(*parts, optax.inject_hyperparams(optax.scale)(step_size=-lr))


def learning_rate(config: TrainConfig, step: int, steps: int = 1) -> float:
    """The learning rate `make_optimizer(config, steps)` applies after `step` steps (before any decay on a
    plateau, which depends on the losses)."""
    kind, total, warmup, every, decay = _schedule_settings(config, steps)[:5]
    rate = _rate(kind, config.lr, total, warmup, every, decay)
    return float(rate(step)) if callable(rate) else float(rate)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    input_shape: Sequence[int] = FASHION_MNIST.image_shape,
    precision: str = "float32",
    micro_batch: int = 0,
) -> TrainState:
    """Initialises the model's variables on a dummy batch of `input_shape` images (one compiled program per
    model and shape) and pairs them with `tx`; `precision` 'bfloat16' computes in bfloat16 (the parameters
    and optimizer state stay float32); `micro_batch` as in `micro_batch_size`."""
    variables, opt_state = _init(model, tx, tuple(input_shape))(rng)
    return TrainState(
        step=0,
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        opt_state=opt_state,
        batch_stats=variables.get("batch_stats"),
        input_shape=tuple(input_shape),
        compute_dtype=precision,
        micro_batch=micro_batch,
    )


@functools.cache
def _init(model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...]) -> Any:
    """The model's variables and the optimizer's state, as one compiled program (per model, optimizer and
    shape; the optimizer's zeros would otherwise be one small program per parameter shape)."""

    def init(rng: jax.Array) -> tuple[dict[str, Any], Any]:
        variables = dict(model.init(rng, jnp.zeros((1, *input_shape), jnp.float32), train=False))
        return variables, tx.init(variables["params"])

    return jax.jit(init)


def run_keys(config: TrainConfig) -> dict[str, jax.Array]:
    """The run's random keys, all derived from `config.seed`: initialisation, dropout and shuffling."""
    keys = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    return dict(zip(("init", "dropout", "shuffle"), keys, strict=True))


def model_for(config: TrainConfig, spec: DataSpec) -> nn.Module:
    """The network `config` trains, for data described by `spec` (`cnn.models.registry.model_for_data` of
    its model, model arguments and head)."""
    return model_for_data(config.model, spec, config.model_args, config.head)


def initial_state(
    config: TrainConfig, spec: DataSpec, steps: int = 1, injectable: bool = False
) -> TrainState:
    """The freshly initialised train state of `config` for data described by `spec` (also the template to
    restore a checkpoint into); `steps` per epoch sets the length of a cosine schedule."""
    state = create_train_state(
        model_for(config, spec),
        make_optimizer(config, steps, injectable),
        run_keys(config)["init"],
        spec.image_shape,
        config.precision,
        config.micro_batch,
    )
    return with_recipe(state, config)


def with_recipe(state: TrainState, config: TrainConfig) -> TrainState:
    """`state` with the parts of `config`'s recipe that the train step applies: the augmentation policy,
    label smoothing, whether the optimizer takes the loss, and the weights' moving average (started at the
    weights). Defaults leave the state (and its program) as it was."""
    if config.ema_decay:
        copy = functools.partial(jax.tree.map, jnp.copy)  # own buffers: the step donates the state
        fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
        state = AveragedTrainState(
            **{**fields, "ema_decay": float(config.ema_decay)},
            ema_params=copy(state.params),
            ema_batch_stats=None if state.batch_stats is None else copy(state.batch_stats),
        )
    return state.replace(
        augmentation=Augmentation.of(config),
        label_smoothing=float(config.label_smoothing),
        loss_to_optimizer=needs_loss(config),
    )


def evaluated(state: TrainState) -> TrainState:
    """The state whose weights are validated, tested and used: the moving average when the run keeps one."""
    if getattr(state, "ema_params", None) is None:
        return state
    stats = state.batch_stats if state.ema_batch_stats is None else state.ema_batch_stats
    return state.replace(params=state.ema_params, batch_stats=stats)


def model_variables(state: TrainState, params: Any = None) -> dict[str, Any]:
    """The variables to apply the model with: parameters, plus batch statistics when the model has them."""
    variables = {"params": state.params if params is None else params}
    if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
    return variables


def apply_model(
    state: TrainState, images: jax.Array, params: Any = None, exact_pixels: bool = False, **kwargs: Any
) -> Any:
    """The model on `images` (uint8, or floats in [0, 1]) in the state's precision. With 'bfloat16' (mixed
    precision, as in Flax's ImageNet example) the parameters and images are cast to bfloat16 for the
    computation and the logits come back in float32, so the loss and the float32 parameters' gradients
    and updates stay float32; batch norm keeps float32 statistics. `exact_pixels`: see
    `cnn.data.spec.to_float`. `kwargs` go to `apply_fn`."""
    variables, x = model_variables(state, params), to_float(images, exact_pixels)
    if state.compute_dtype == "float32":
        return state.apply_fn(variables, x, **kwargs)
    half = jnp.dtype(state.compute_dtype)
    cast = {**variables, "params": jax.tree.map(lambda p: p.astype(half), variables["params"])}
    out = state.apply_fn(cast, x.astype(half), **kwargs)
    if isinstance(out, tuple):  # (logits, mutated collections)
        return (out[0].astype(jnp.float32), *out[1:])
    return out.astype(jnp.float32)
