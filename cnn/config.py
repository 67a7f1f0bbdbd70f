"""The typed training configuration: plain settings, every field validated, with the help text the CLI
shows; named recipes (`cnn/recipes/NAME.json`) as starting points. Nothing here knows a network or a data
set: the model is built from these settings and the data's description (`cnn.models.registry.model_for`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnn.errors import ConfigError


def _field(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with its help text (shown by `python -m cnn train --help`)."""
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class TrainConfig:
    """One training run; the defaults reproduce the sources' recipe for the seed CNN on Fashion-MNIST."""

    model: str = _field("seed_cnn", "the network, a name of the model registry (python -m cnn summary)")
    model_args: dict[str, Any] = _field({}, "the model's fields as JSON, e.g. '{\"hidden\": [512]}' for mlp")
    epochs: int = _field(20, "most epochs (early stopping may end sooner)")
    batch_size: int = _field(32, "training batch size (the global batch over all devices)")
    lr: float = _field(1e-3, "learning rate")
    optimizer: str = _field(
        "adam",
        "Adam (AdamW with --weight-decay) or RMSprop, both with Keras' defaults (the sources' transfer "
        "learning uses rmsprop at 5e-4), or SGD with --momentum (and --nesterov)",
        choices=("adam", "rmsprop", "sgd"),
    )
    momentum: float = _field(0.9, "SGD's momentum (0: plain SGD); only with --optimizer sgd")
    nesterov: bool = _field(False, "SGD with Nesterov momentum; only with --optimizer sgd")
    patience: int = _field(2, "early stopping: epochs without a better --monitor before stopping")
    seed: int = _field(0, "seed of initialisation, shuffling and dropout")
    limit_train: int | None = _field(None, "use only the first N training examples", metavar="N")
    val_fraction: float = _field(0.2, "fraction of the training set held out for validation")
    split_seed: int = _field(42, "seed of the train/validation (and test) split")
    val_split: str = _field(
        "seeded",
        "how validation is held out: a seeded random draw, or the last val_fraction of the training set "
        "unshuffled (Keras' validation_split)",
        choices=("seeded", "last"),
    )
    eval_batch_size: int = _field(1000, "batch size of evaluation")
    schedule: str = _field(
        "constant",
        "learning rate schedule: constant, cosine decay to zero, linear warm-up (--warmup-epochs) then "
        "cosine, step decay (x --decay-rate every --decay-epochs), or reduce on plateau of the training loss "
        "(x --decay-rate after --plateau-patience epochs without improvement; optax.contrib)",
        choices=("constant", "cosine", "warmup_cosine", "step", "plateau"),
    )
    warmup_epochs: int = _field(0, "warmup_cosine: epochs of linear warm-up from 0 (fewer than --epochs)")
    decay_epochs: int = _field(10, "step: epochs between decays of the learning rate")
    decay_rate: float = _field(0.1, "step and plateau: the factor the learning rate is multiplied by")
    plateau_patience: int = _field(2, "plateau: epochs without a lower training loss before a decay")
    grad_clip: float = _field(0.0, "clip gradients to this global norm (0: no clipping)")
    label_smoothing: float = _field(0.0, "label smoothing: targets (1 - e) one-hot + e / classes")
    ema_decay: float = _field(
        0.0,
        "keep an exponential moving average of the weights (and batch-norm statistics) with this decay "
        "(e.g. 0.999) and validate, stop early and test with it (0: off)",
    )
    crop_padding: int = _field(0, "augment: a random crop of the image zero-padded by this many pixels")
    flip: bool = _field(False, "augment: a random horizontal flip")
    erasing: float = _field(0.0, "augment: the probability of random erasing (a random rectangle of noise)")
    mixup: float | None = _field(
        None, "augment: mixup with Beta(alpha, alpha) mixing (e.g. 0.2)", metavar="ALPHA"
    )
    cutmix: float | None = _field(
        None,
        "augment: cutmix with Beta(alpha, alpha) areas (e.g. 1.0); with --mixup, one of them per batch",
        metavar="ALPHA",
    )
    randaugment: int = _field(0, "augment: RandAugment, this many ops per image (0: off)")
    randaugment_magnitude: float = _field(9.0, "RandAugment: the ops' magnitude, 0 to 10")
    randaugment_ops: str = _field(
        "all", "RandAugment: the ops to draw from, comma-separated (python -m cnn train --help lists them)"
    )
    weight_decay: float = _field(0.0, "AdamW's decoupled weight decay when > 0")
    steps_per_call: int | str = _field(
        "auto",
        "train steps compiled into one (unrolled) call; auto: chosen from the run's planned steps and what "
        "compiling and calling cost on this device (cnn.engine.chunking)",
        parse="int_or_auto",
    )
    micro_batch: int = _field(
        0,
        "split each training batch into micro-batches of this size inside the compiled step (gradients "
        "summed, one update; never for models with batch norm); 0: auto, 64 on a one-device CPU",
    )
    tensorboard: bool = _field(True, "write TensorBoard event files in WORKDIR/events (tensorboardX)")
    precision: str = _field(
        "float32",
        "the compute precision: bfloat16 computes the model in bfloat16 (mixed precision; parameters, "
        "optimizer state and loss stay float32)",
        choices=("float32", "bfloat16"),
    )
    epoch_loop: str = _field(
        "auto",
        "how an epoch's steps run: chunks of steps_per_call unrolled steps (the CPU's fastest), or the whole "
        "epoch as one compiled call, a rolled loop (scan; accelerators); auto: scan on GPU/TPU, else chunks",
        choices=("auto", "chunks", "scan"),
    )
    monitor: str = _field(
        "val_loss",
        "what early stopping and the best checkpoint follow: the lowest val_loss or highest val_accuracy",
        choices=("val_loss", "val_accuracy"),
    )
    dataset: str = _field("fashion_mnist", "a data set name (fashion_mnist, lfw_faces) or an image folder")
    image_size: tuple[int, int] | None = _field(None, "resize every image to H W (bilinear, antialiased)")
    channels: int | None = _field(None, "1 (grayscale) or 3 (colour) channels after loading", choices=(1, 3))
    test_fraction: float = _field(0.2, "an image folder without a test/ folder: fraction held out for test")
    skip_bad_images: bool = _field(False, "an image folder: skip (and count) unreadable images, not fail")
    data_placement: str = _field(
        "auto",
        "where the training images live: on the device, or on the host and streamed in batches (for sets "
        "that do not fit); auto: the device when they fit in half its free memory",
        choices=("auto", "device", "host"),
    )
    head: str = _field(
        "softmax",
        "the output: one unit per class (softmax) or, for two classes, one sigmoid unit",
        choices=("softmax", "sigmoid"),
    )

    def __post_init__(self):
        if isinstance(self.image_size, list):  # JSON gives lists
            object.__setattr__(self, "image_size", tuple(self.image_size))
        _check(self, "model_args", isinstance(self.model_args, dict), "a dict of the model's fields")
        _check_numbers(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The largest values integer fields may take: counts (epochs, batch sizes, steps, image sizes) are int32
# on the device, a seed seeds NumPy and JAX (32 bits).
MAX_COUNT, MAX_SEED = 2**31 - 1, 2**32 - 1
INT_FIELDS = (
    "epochs", "batch_size", "patience", "micro_batch", "limit_train", "eval_batch_size", "warmup_epochs",
    "decay_epochs", "plateau_patience",
)  # fmt: skip


def _check_ranges(c: TrainConfig) -> None:
    """Integers too large for their use (a 70-bit seed), named with the largest that works."""
    values = {f: getattr(c, f) for f in (*INT_FIELDS, "steps_per_call", "seed")}
    if isinstance(c.image_size, tuple | list):
        values.update({f"image_size[{i}]": v for i, v in enumerate(c.image_size)})
    for field, v in values.items():
        high = MAX_SEED if field == "seed" else MAX_COUNT
        if _is_int(v) and v > high:
            raise ConfigError(f"{field}: got {v}, which is too large; expected at most {high:,}")


def _check_numbers(c: TrainConfig) -> None:
    _check_ranges(c)
    _check(c, "epochs", _is_int(c.epochs) and c.epochs >= 1, "an integer >= 1")
    _check(c, "batch_size", _is_int(c.batch_size) and c.batch_size >= 1, "an integer >= 1")
    _check(c, "lr", _is_number(c.lr) and 0 < c.lr < math.inf, "a finite number > 0")
    _check(c, "patience", _is_int(c.patience) and c.patience >= 0, "an integer >= 0")
    _check(c, "seed", _is_int(c.seed) and c.seed >= 0, "an integer >= 0")
    _check(c, "micro_batch", _is_int(c.micro_batch) and c.micro_batch >= 0, "an integer >= 0 (0: auto)")
    limit_ok = c.limit_train is None or (_is_int(c.limit_train) and c.limit_train >= 1)
    _check(c, "limit_train", limit_ok, "None or an integer >= 1")
    _check(c, "val_fraction", _is_number(c.val_fraction) and 0 < c.val_fraction < 1, "a number in (0, 1)")
    _check(c, "test_fraction", _is_number(c.test_fraction) and 0 < c.test_fraction < 1, "a number in (0, 1)")
    _check(c, "eval_batch_size", _is_int(c.eval_batch_size) and c.eval_batch_size >= 1, "an integer >= 1")
    _check(c, "schedule", c.schedule in SCHEDULES, f"one of {SCHEDULES}")
    _check(c, "val_split", c.val_split in ("seeded", "last"), "'seeded' or 'last'")
    _check(c, "optimizer", c.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}")
    wd_ok = _is_number(c.weight_decay) and 0 <= c.weight_decay < math.inf
    _check(c, "weight_decay", wd_ok, "a finite number >= 0")
    k_ok = c.steps_per_call == "auto" or (_is_int(c.steps_per_call) and c.steps_per_call >= 1)
    _check(c, "steps_per_call", k_ok, "an integer >= 1 or auto")
    _check(c, "epoch_loop", c.epoch_loop in ("auto", "chunks", "scan"), "auto, chunks or scan")
    _check(c, "precision", c.precision in ("float32", "bfloat16"), "float32 or bfloat16")
    _check(c, "monitor", c.monitor in MONITORS, f"one of {MONITORS}")
    _check(c, "dataset", isinstance(c.dataset, str) and bool(c.dataset), "a data set name or a folder")
    size_ok = c.image_size is None or (
        len(c.image_size) == 2 and all(_is_int(v) and v >= 1 for v in c.image_size)
    )
    _check(c, "image_size", size_ok, "None or two integers >= 1 (H W)")
    _check(c, "channels", c.channels in (None, 1, 3), "None, 1 or 3")
    _check(c, "head", c.head in OUTPUT_HEADS, f"one of {OUTPUT_HEADS}")
    _check(c, "data_placement", c.data_placement in PLACEMENTS, f"one of {PLACEMENTS}")
    _check(c, "model", isinstance(c.model, str) and bool(c.model), "a model name (python -m cnn summary)")
    _check_recipe(c)


def _check_recipe(c: TrainConfig) -> None:
    """The fields of the training recipe: optimizer, schedule, regularisation and augmentation."""
    _check(c, "momentum", _is_number(c.momentum) and 0 <= c.momentum < 1, "a number in [0, 1)")
    _check(c, "nesterov", isinstance(c.nesterov, bool), "true or false")
    warmup_ok = (
        _is_int(c.warmup_epochs)
        and c.warmup_epochs >= 0
        and (c.schedule != "warmup_cosine" or c.warmup_epochs < c.epochs)
    )
    _check(
        c, "warmup_epochs", warmup_ok, f"an integer >= 0, fewer than epochs ({c.epochs}) with warmup_cosine"
    )
    _check(c, "decay_epochs", _is_int(c.decay_epochs) and c.decay_epochs >= 1, "an integer >= 1")
    _check(c, "decay_rate", _is_number(c.decay_rate) and 0 < c.decay_rate < 1, "a number in (0, 1)")
    _check(c, "plateau_patience", _is_int(c.plateau_patience) and c.plateau_patience >= 1, "an integer >= 1")
    clip_ok = _is_number(c.grad_clip) and 0 <= c.grad_clip < math.inf
    _check(c, "grad_clip", clip_ok, "a finite number >= 0 (0: off)")
    smoothing_ok = _is_number(c.label_smoothing) and 0 <= c.label_smoothing < 1
    _check(c, "label_smoothing", smoothing_ok, "a number in [0, 1)")
    _check(c, "ema_decay", _is_number(c.ema_decay) and 0 <= c.ema_decay < 1, "a number in [0, 1) (0: off)")
    _check(c, "crop_padding", _is_int(c.crop_padding) and 0 <= c.crop_padding <= 64, "an integer in 0..64")
    _check(c, "flip", isinstance(c.flip, bool), "true or false")
    _check(c, "erasing", _is_number(c.erasing) and 0 <= c.erasing <= 1, "a probability in [0, 1]")
    for field in ("mixup", "cutmix"):
        value = getattr(c, field)
        ok = value is None or (_is_number(value) and 0 < value < math.inf)
        _check(c, field, ok, "an alpha > 0 (leave it out to switch it off)")
    _check(c, "randaugment", _is_int(c.randaugment) and 0 <= c.randaugment <= 10, "an integer in 0..10")
    magnitude_ok = _is_number(c.randaugment_magnitude) and 0 <= c.randaugment_magnitude <= 10
    _check(c, "randaugment_magnitude", magnitude_ok, "a number in [0, 10]")
    unknown = (
        [op for op in randaugment_ops(c) if op not in RANDAUGMENT_OPS]
        if isinstance(c.randaugment_ops, str)
        else [c.randaugment_ops]
    )
    ops_ok, ops = not unknown and bool(randaugment_ops(c)), ", ".join(RANDAUGMENT_OPS)
    _check(c, "randaugment_ops", ops_ok, f"'all' or ops among {ops} (unknown: {unknown})")


def randaugment_ops(c: TrainConfig) -> tuple[str, ...]:
    """The RandAugment ops `c.randaugment_ops` names ('all': every one)."""
    if c.randaugment_ops == "all":
        return RANDAUGMENT_OPS
    return tuple(op.strip() for op in c.randaugment_ops.split(",") if op.strip())


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "plateau")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
# RandAugment's ops, for grayscale and colour images alike (see cnn.engine.augment).
RANDAUGMENT_OPS = (
    "identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness", "contrast",
    "solarize", "posterize", "autocontrast",
)  # fmt: skip
OUTPUT_HEADS = ("softmax", "sigmoid")  # the classifier's last layer: one unit per class, or one sigmoid unit
PLACEMENTS = ("auto", "device", "host")
# What early stopping and the best checkpoint follow: the lowest validation loss (Keras' default) or the
# highest validation accuracy (better for a long cosine schedule, where the loss rises while accuracy climbs).
MONITORS = ("val_loss", "val_accuracy")


def _check(config: TrainConfig, field: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: got {getattr(config, field)!r}, expected {allowed}")


DATA_FIELDS = (
    "dataset", "image_size", "channels", "val_fraction", "test_fraction", "split_seed", "val_split",
    "skip_bad_images",
)  # fmt: skip


def json_object(text: str) -> dict:
    """An argparse type: a JSON object (`--model-args '{\"hidden\": [512]}'`)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"hidden\": [512]}'")
    return value


def add_config_flags(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """One flag per `TrainConfig` field (or per field of `only`), with its type, choices and help taken from
    the field itself: nothing is typed twice. A flag not given is left out of the parsed arguments (its
    default comes from the recipe, if any, else from `TrainConfig`; see `config_from_args`)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        default = field_default(f.name)
        kwargs: dict[str, Any] = {
            "default": argparse.SUPPRESS,
            "help": f"{f.metadata['help']} (default: {default})",
        }
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == dict[str, Any]:
            kwargs.update(type=json_object, metavar="JSON")
        elif args and typing.get_origin(args[0]) is tuple:
            kwargs.update(
                type=int,
                nargs=len(typing.get_args(args[0])),
                metavar=tuple("HWC"[: len(typing.get_args(args[0]))]),
            )
        elif f.metadata.get("parse") == "int_or_auto":
            kwargs.update(type=int_or_auto, metavar="{K,auto}")
        else:
            kwargs["type"] = args[0] if args else kind
        if "choices" in f.metadata:  # validated by TrainConfig, whose message names the field
            kwargs["metavar"] = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(f"--{f.name.replace('_', '-')}", **kwargs)


def int_or_auto(text: str) -> int | str:
    """A flag's value: `auto`, or an integer (its range is checked by `TrainConfig`)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {text!r}") from None


def field_default(name: str) -> Any:
    """The default of the `TrainConfig` field `name`."""
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def given_fields(args: argparse.Namespace, only: Sequence[str] | None = None) -> dict[str, Any]:
    """The `TrainConfig` fields set by flags (see `add_config_flags`), optionally only those of `only`."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if only is None or f.name in only]
    fields = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if fields.get("image_size") is not None:
        fields["image_size"] = tuple(fields["image_size"])
    return fields


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """The TrainConfig of parsed flags: the fields of `--recipe` (if any), then every flag given, then
    `overrides`."""
    fields = recipe(args.recipe) if getattr(args, "recipe", None) else {}
    return config_from_fields({**fields, **given_fields(args), **overrides})


def config_from_fields(fields: dict[str, Any]) -> TrainConfig:
    """`TrainConfig(**fields)`, an unknown field named in a ConfigError (with the fields there are)."""
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        known = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
        raise ConfigError(f"{', '.join(unknown)}: not a TrainConfig field; the fields are {known}")
    return TrainConfig(**fields)


# ------------------------------------------------------------------------------------------ recipes
RECIPES = Path(__file__).parent / "recipes"


def recipes() -> dict[str, str]:
    """Every named recipe (`cnn/recipes/NAME.json`) and its description."""
    return {p.stem: json.loads(p.read_text())["description"] for p in sorted(RECIPES.glob("*.json"))}


def recipe(name: str) -> dict[str, Any]:
    """The config fields of the recipe `name` (a file of `cnn/recipes/`, or the path of a JSON file of the
    same form: {"description": ..., "config": {FIELD: VALUE}}), checked as a TrainConfig."""
    path = Path(name) if name.endswith(".json") else RECIPES / f"{name}.json"
    if not path.is_file():
        raise ConfigError(
            f"recipe: no recipe {name!r}; choose one of {sorted(recipes())} or give a .json file"
        )
    try:
        fields = json.loads(path.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f'recipe {path}: expected {{"config": {{FIELD: VALUE}}}} ({e})') from None
    try:
        config_from_fields(fields)
    except ConfigError as e:
        raise ConfigError(f"recipe {path}: {e}") from None
    return dict(fields)
