"""Transfer learning: a trained network cut at a named layer, frozen, with a new head; then fine-tuning.

The sources cut a pretrained ImageNet InceptionV3 at an intermediate block, freeze it, and train a small
new head. No ImageNet weights can be downloaded here, so the same mechanism runs on backbones this project
trains itself, or on any Flax/orbax checkpoint of a matching architecture that a user has.

    backbone = load_backbone("runs/pretrain")                  # a run's best checkpoint
    config = transfer_config("seed_cnn", cut="pool2", outputs=2)
    state, labels = transfer_state(config, splits.spec, backbone, freeze="backbone")  # head-only training
    fit(config, splits, "runs/head", init_state=state)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from cnn.config import TrainConfig
from cnn.data.spec import FASHION_MNIST, DataSpec, Split, Splits, describe_arrays
from cnn.engine.state import TrainState, create_train_state, make_optimizer, model_for
from cnn.models.applications import networks as applications
from cnn.models.cutting import TransferNet
from cnn.models.summary import layer_rows
from cnn.runs.results import restore_run
from cnn.train import check_run_config, fit

FREEZE = ("none", "backbone", "backbone_except_top")


def transfer_config(
    base: str,
    cut: str,
    outputs: int,
    head_units: Sequence[int] = (64,),
    base_args: dict[str, Any] | None = None,
    **fields: Any,
) -> TrainConfig:
    """The TrainConfig of a transfer model (model 'transfer'): the dense layers `head_units` before the
    `outputs` units on the backbone cut at `cut`; other fields as given (`head` is softmax or sigmoid)."""
    model_args = {"base": base, "cut": cut, "head": list(head_units), "outputs": outputs}
    if base_args:
        model_args["base_args"] = base_args
    config = TrainConfig(model="transfer", model_args=model_args, **fields)
    check_run_config(config)  # an unknown base or cut, before any work
    return config


def load_backbone(
    source: str | Path, application: str | None = None, input_shape: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """The variables (`params`, and `batch_stats` if any) of a trained run's best checkpoint, of a plain
    orbax checkpoint of a Flax variables tree (`{"params": ..., "batch_stats": ...}` or the params alone),
    as `orbax.checkpoint.StandardCheckpointer().save(path, variables)` writes it, or, with `application`
    (a `cnn.models.applications.networks` name) and `input_shape`, of a Keras weight file of that network
    ('imagenet': the one Keras publishes)."""
    if application is not None:
        _, variables = applications.build(
            application, input_shape=input_shape or (224, 224, 3), include_top=False, weights=source
        )
        return variables
    source = Path(source)
    if not (source / "config.json").is_file() and (source / "_CHECKPOINT_METADATA").is_file():
        import orbax.checkpoint as ocp

        tree = ocp.StandardCheckpointer().restore(source.absolute())
        return tree if "params" in tree else {"params": tree}
    _, state, _ = restore_run(source)
    variables = {"params": state.params}
    if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
    return variables


def _paths(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    return {k: tuple(np.shape(v)) for k, v in flatten_dict(tree).items()} if tree else {}


def _graft(target: Any, source: Any, what: str) -> Any:
    """`target` with the backbone's leaves taken from `source` (a full model's tree); the error lists every
    missing or mis-shaped parameter path."""
    wanted = _paths(target)
    given = _paths(source)
    missing = [("/".join(k), shape) for k, shape in wanted.items() if k not in given]
    wrong = [
        ("/".join(k), given[k], shape) for k, shape in wanted.items() if k in given and given[k] != shape
    ]
    if missing or wrong:
        lines = [f"  missing {path} {shape}" for path, shape in missing]
        lines += [f"  {path}: checkpoint has {got}, the model needs {need}" for path, got, need in wrong]
        raise ValueError(f"checkpoint: its {what} do not match the backbone:\n" + "\n".join(lines))
    flat = flatten_dict(source)
    return unflatten_dict({k: jnp.array(flat[k], copy=True) for k in wanted})  # the train step donates it


def parameter_labels(params: Any, freeze: str, top: set[str] | None = None) -> Any:
    """'trainable', 'finetune' or 'frozen' for every parameter: the head is trainable; the backbone is
    frozen (`backbone`), or frozen but for its `top` layers, fine-tuned (`backbone_except_top`), or
    trainable (`none`)."""
    if freeze not in FREEZE:
        raise ValueError(f"freeze: expected one of {FREEZE}, got {freeze!r}")

    def label(path: tuple[str, ...]) -> str:
        if path[0] != "base" or freeze == "none":
            return "trainable"
        if freeze == "backbone_except_top" and top and path[1] in top:
            return "finetune"
        return "frozen"

    return unflatten_dict({path: label(path) for path in flatten_dict(params)})


def top_block(
    model: TransferNet, params: Any, input_shape: tuple[int, ...] = FASHION_MNIST.image_shape
) -> set[str]:
    """The backbone's last layer with parameters before the cut, in call order, with the rest of its block
    (`blockN_*` layers of a ConvNet): what fine-tuning unfreezes."""
    names = [row.name for row in layer_rows(model.base, input_shape)]
    before_cut = [n for n in names[: names.index(model.cut) + 1] if n in params["base"]]
    if not before_cut:
        raise ValueError(f"freeze: the backbone up to {model.cut!r} has no parameters to fine-tune")
    top = before_cut[-1]
    prefix = top.split("_")[0] + "_" if top.startswith("block") else None
    return {n for n in before_cut if n == top or (prefix and n.startswith(prefix))}


def transfer_state(
    config: TrainConfig,
    spec: DataSpec,
    backbone: dict[str, Any] | None,
    freeze: str = "backbone",
    finetune_lr_scale: float = 0.1,
) -> tuple[TrainState, Any]:
    """A train state of `config`'s transfer model for data described by `spec` (its image shape and
    classes), with the backbone's weights from `backbone` (None: random, i.e. training from scratch), and
    an optimizer that leaves frozen parameters untouched (`optax.set_to_zero`) and trains the top backbone
    layer at `finetune_lr_scale` × lr when asked. Returns the state and the label ('trainable', 'finetune'
    or 'frozen') of every parameter."""
    outputs = config.model_args.get("outputs")
    if outputs is not None and outputs != spec.outputs(config.head):
        raise ValueError(
            f"outputs: the transfer head has {outputs} outputs, but the data ({spec.name}, "
            f"{spec.num_classes} classes, head {config.head}) needs {spec.outputs(config.head)}"
        )
    model = model_for(config, spec)
    if freeze == "backbone":
        model = model.clone(frozen=True)
    shape = spec.image_shape
    fresh = create_train_state(model, optax.identity(), jax.random.PRNGKey(config.seed), shape)
    params, batch_stats = fresh.params, fresh.batch_stats
    if backbone is not None:
        params = {**params, "base": _graft(params["base"], backbone["params"], "parameters")}
        if batch_stats is not None:
            grafted = _graft(batch_stats["base"], backbone.get("batch_stats", {}), "batch statistics")
            batch_stats = {**batch_stats, "base": grafted}
    labels = parameter_labels(
        params,
        freeze,
        top_block(model, params, shape) if freeze == "backbone_except_top" else None,
    )
    base_tx = make_optimizer(config)
    finetune = make_optimizer(TrainConfig(**{**config.to_dict(), "lr": config.lr * finetune_lr_scale}))
    leaves, tree = jax.tree.flatten(labels)
    tx = _transfer_optimizer(base_tx, finetune, tuple(leaves), tree)
    state = TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=tx,
        batch_stats=batch_stats,
        input_shape=shape,
        compute_dtype=config.precision,
    )
    return state, labels


@functools.cache
def _transfer_optimizer(
    base_tx: optax.GradientTransformation, finetune: optax.GradientTransformation, labels: tuple, tree: Any
) -> optax.GradientTransformation:
    """The optimizer of `transfer_state` (labels flattened, to be a key): equal requests return the same
    object, so that runs alike (seeds, methods with the same labels) share their compiled programs."""
    return optax.multi_transform(
        {"trainable": base_tx, "finetune": finetune, "frozen": optax.set_to_zero()}, tree.unflatten(labels)
    )


def parameter_counts(params: Any, labels: Any, batch_stats: Any = None) -> dict[str, int]:
    """Trainable and non-trainable parameter counts as the sources' Keras summaries show them: frozen
    parameters and batch statistics are non-trainable. `labels` from `parameter_labels`."""
    flat_labels = flatten_dict(labels)
    counts = {"trainable": 0, "non_trainable": 0}
    for path, leaf in flatten_dict(params).items():
        counts["non_trainable" if flat_labels[path] == "frozen" else "trainable"] += int(np.size(leaf))
    counts["non_trainable"] += sum(int(np.size(v)) for v in jax.tree.leaves(batch_stats))
    return counts


def format_counts(counts: dict[str, int]) -> str:
    """'Total params: … / Trainable params: … / Non-trainable params: …' as Keras prints them."""
    total = counts["trainable"] + counts["non_trainable"]
    return (
        f"Total params: {total:,}\nTrainable params: {counts['trainable']:,}\n"
        f"Non-trainable params: {counts['non_trainable']:,}"
    )


# --------------------------------------------------------------------------------------- few-shot tasks
METHODS = {"frozen": "backbone", "finetune": "backbone_except_top", "scratch": "none"}


def class_subset(split: Split, classes: Sequence[int]) -> Split:
    """The examples of `classes`, relabelled 0..len(classes)-1 in that order."""
    keep = np.isin(split.labels, classes)
    relabel = {c: i for i, c in enumerate(classes)}
    return Split(split.images[keep], np.array([relabel[c] for c in split.labels[keep]], np.int32))


def few_shot(split: Split, classes: Sequence[int], per_class: int, seed: int) -> Split:
    """`per_class` random examples of each class (drawn with `seed`), relabelled as in `class_subset`."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in classes:
        candidates = np.flatnonzero(split.labels == c)
        if len(candidates) < per_class:
            raise ValueError(f"per_class: class {c} has only {len(candidates)} examples, {per_class} asked")
        picks.append(rng.choice(candidates, per_class, replace=False))
    idx = np.concatenate(picks)
    return class_subset(Split(split.images[idx], split.labels[idx]), classes)


def train_few_shot(
    backbone: dict[str, Any] | None,
    train: Split,
    test: Split,
    method: str,
    workdir: Path,
    base: str = "seed_cnn",
    cut: str = "pool2",
    epochs: int = 50,
    seed: int = 0,
    lr: float = 1e-3,
    **fields: Any,
) -> dict[str, Any]:
    """Learns a task from the few `train` examples with `method` ('frozen', 'finetune' or 'scratch').

    No labelled data beyond those examples is used: they also serve as the validation set, every epoch
    runs (no early stopping), and the weights kept are those with the lowest loss on them (usually the
    last epoch's). `fields` go to the config (`head`, `optimizer`, `base_args`, `head_units`, the input
    shape). Returns `fit`'s results with the trainable and non-trainable parameter counts."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    splits = Splits(
        train=train, val=train, test=test, spec=describe_arrays(train, train, test, name="few-shot")
    )
    head_units, base_args = fields.pop("head_units", (64,)), fields.pop("base_args", None)
    config = transfer_config(
        base,
        cut,
        splits.spec.outputs(fields.get("head", "softmax")),
        head_units=head_units,
        base_args=base_args,
        epochs=epochs,
        batch_size=min(10, len(train)),
        lr=lr,
        patience=epochs,
        seed=seed,
        steps_per_call=1,  # a few steps per epoch: one compiled step is all it needs
        **fields,
    )
    state, labels = transfer_state(
        config, splits.spec, None if method == "scratch" else backbone, METHODS[method]
    )
    results = fit(config, splits, workdir, init_state=state)
    return {**results, **parameter_counts(state.params, labels, state.batch_stats)}


# ------------------------------------------------------------------- the sources' ImageNet workflow
SOURCES_NETWORK = {"base": "inception_v3", "cut": "mixed7", "base_args": {"include_top": False}}
# What the sources' transfer model is built for: Fashion-MNIST resized to 75×75 colour.
SOURCES_DATA = DataSpec("fashion_mnist", (75, 75, 3), FASHION_MNIST.class_names, FASHION_MNIST.source)


def sources_config(**fields: Any) -> TrainConfig:
    """The sources' transfer model: InceptionV3 at 75×75×3 cut at `mixed7`, Flatten → Dense 64 ReLU →
    Dense 10, RMSprop at 5e-4, on Fashion-MNIST resized to colour (`SOURCES_DATA`; `fields` override any of
    it)."""
    defaults = {
        "dataset": "fashion_mnist",
        "image_size": (75, 75),
        "channels": 3,
        "optimizer": "rmsprop",
        "lr": 5e-4,
    }
    model_args = {**SOURCES_NETWORK, "head": [64], "outputs": 10}
    return TrainConfig(model="transfer", model_args=model_args, **{**defaults, **fields})


def imagenet_backbone(
    name: str, input_shape: tuple[int, int, int], weights: str | Path | None = "imagenet"
) -> dict[str, Any] | None:
    """The network's ImageNet variables (or those of the Keras weight file `weights`), or None, said loudly,
    when the file is not there: the backbone then keeps its random initialisation."""
    if weights is None:
        print(f"Backbone {name}: randomly initialised (no weights asked for)")
        return None
    try:
        return load_backbone(weights, application=name, input_shape=input_shape)
    except applications.WeightsError as e:
        banner = "!" * 100
        print(
            f"{banner}\nNO IMAGENET WEIGHTS: the {name} backbone is RANDOMLY INITIALISED, so the results "
            f"below are not the sources' transfer learning.\n{e}\n{banner}",
            flush=True,
        )
        return None
