"""The networks, built by name through one registry (every model maps NHWC images to logits and takes
`train=`), for the image shape and classes of a data description (`model_for`): the sources' networks
(`sources.py`), the configurable `ConvNet` of the experiments (`convnet.py`), the wide residual network
(`wide_resnet.py`), a network cut for transfer learning (built with `cnn.models.cutting`), and the famous
ImageNet networks of `cnn.models.applications.networks` trained from scratch."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn

from cnn.data.spec import FASHION_MNIST, DataSpec
from cnn.models.applications.networks import application
from cnn.models.convnet import convnet, vgg_bn
from cnn.models.cutting import TransferNet
from cnn.models.sources import MLP, HomlCNN, LectureCNN, LeNet5, SeedCNN
from cnn.models.summary import format_summary, layer_rows
from cnn.models.wide_resnet import wide_resnet


def transfer_model(
    base: str = "seed_cnn",
    cut: str = "pool2",
    head: Sequence[int] = (64,),
    outputs: int = 10,
    base_args: dict[str, Any] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> TransferNet:
    """A zoo model cut at `cut` with a new head of `outputs` logits (`num_classes`, when given, wins: it is
    what a data set asks for); the error for an unknown cut lists the model's layers (at `input_shape`, or
    the base's default shape)."""
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(base)
    model = build_model(base, input_shape=shape, **(base_args or {}))
    names = [row.name for row in layer_rows(model, shape)]
    if cut not in names:
        raise ValueError(f"cut: {base} has no layer {cut!r}; its layers are {names}")
    return TransferNet(model, cut, tuple(head), outputs if num_classes is None else num_classes)


def _famous(name: str, default_shape: tuple[int, int, int], what: str) -> Callable[..., nn.Module]:
    def factory(
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = default_shape,
        include_top: bool = True,
        pooling: str | None = None,
        classifier_activation: str | None = None,
    ) -> nn.Module:
        return application(
            name, input_shape=input_shape, include_top=include_top, classes=num_classes,
            pooling=pooling, classifier_activation=classifier_activation,
        )  # fmt: skip

    factory.__doc__ = (
        f"{what} (`cnn.models.applications.networks`, Keras' layers and names), trained from scratch here: "
        f"`num_classes` logits; needs at least {default_shape[0]}×{default_shape[1]} inputs."
    )
    factory.default_input_shape = default_shape  # type: ignore[attr-defined]
    return factory


MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed_cnn": SeedCNN,
    "homl_cnn": HomlCNN,
    "lecture_cnn": LectureCNN,
    "lenet5": LeNet5,
    "mlp": MLP,
    "convnet": convnet,
    "vgg_bn": vgg_bn,
    "wide_resnet": wide_resnet,
    "transfer": transfer_model,
    "inception_v3": _famous("inception_v3", (75, 75, 3), "InceptionV3 (Szegedy et al. 2015)"),
    "vgg16": _famous("vgg16", (32, 32, 3), "VGG16 (Simonyan & Zisserman 2014)"),
    "resnet50": _famous("resnet50", (32, 32, 3), "ResNet50 (He et al. 2015)"),
    "mobilenet_v2": _famous("mobilenet_v2", (32, 32, 3), "MobileNetV2 (Sandler et al. 2018)"),
}


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The input shape a zoo model is shown at when none is given: Fashion-MNIST's, or a famous network's
    minimum."""
    return getattr(MODELS[name], "default_input_shape", FASHION_MNIST.image_shape)


def check_model_name(name: str) -> None:
    """Raises a ValueError naming the registered models (and the closest ones) if `name` is unknown."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"model: unknown model {name!r}; choose one of {sorted(MODELS)}.{hint}")


def model_for_data(
    name: str, spec: DataSpec, model_args: dict[str, Any] | None = None, head: str = "softmax"
) -> nn.Module:
    """The network `name` (with `model_args`) for data described by `spec`: its input shape, and one output
    per class (one sigmoid unit for `head="sigmoid"`); the network's own checks (a map shrinking to
    nothing, an input below a famous network's minimum) run here."""
    if head == "sigmoid" and spec.num_classes != 2:
        raise ValueError(
            f"head: one sigmoid output is for two classes; {spec.name} has {spec.num_classes}: use softmax"
        )
    return build_model(
        name, input_shape=spec.image_shape, **{**(model_args or {}), "num_classes": spec.outputs(head)}
    )


def check_model_args(
    name: str,
    model_args: dict[str, Any] | None = None,
    head: str = "softmax",
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """The network `name` built with `model_args` before any data is loaded, so that its name, arguments
    and their kinds are checked (ValueError naming the problem); the checks that need the image shape run
    when the model is built for the data (`model_for_data`), or here already when `input_shape` is known
    (an input too small for the network is refused before any image is decoded or resized)."""
    num_classes = 2 if head == "sigmoid" else 10
    return build_model(name, input_shape=input_shape, **{**(model_args or {}), "num_classes": num_classes})


def build_model(name: str, input_shape: tuple[int, ...] | None = None, **kwargs: Any) -> nn.Module:
    """The model registered as `name`, `kwargs` overriding its fields (e.g. `hidden=(512,)` for `mlp`).
    With `input_shape` (H, W, C), a network whose layers depend on it is checked against it. Equal requests
    return the same module, so the runs of a process share their compiled programs."""
    shape = None if input_shape is None else tuple(input_shape)
    key = (name, shape, json.dumps(kwargs, sort_keys=True, default=repr))
    if key not in BUILT:
        BUILT[key] = _build(name, shape, kwargs)
    return BUILT[key]


BUILT: dict[tuple[str, tuple[int, ...] | None, str], nn.Module] = {}  # see `build_model`


def _build(name: str, input_shape: tuple[int, ...] | None, kwargs: dict[str, Any]) -> nn.Module:
    check_model_name(name)
    factory = MODELS[name]
    kwargs = {k: tuple(v) if isinstance(v, list) and k != "blocks" else v for k, v in kwargs.items()}
    if input_shape is not None and "input_shape" in inspect.signature(factory).parameters:
        kwargs["input_shape"] = tuple(input_shape)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"model_args: {name} does not take these arguments ({e})") from None
    check_fields(name, model)
    checks_itself = "input_shape" in inspect.signature(factory).parameters  # the zoo, convnets, famous ones
    if input_shape is not None and not checks_itself and not fits(model, input_shape):
        raise ValueError(
            f"input: {name} cannot take {input_shape[0]}×{input_shape[1]} images (a layer's output shrinks "
            f"to nothing); the smallest square size it takes is {smallest_size(model, input_shape)}: resize "
            "the images (--image-size H W) or choose another model"
        )
    return model


def fits(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    """Whether every layer of `model` has a non-empty output for one `input_shape` image (from shapes
    alone: `jax.eval_shape`, nothing computed or compiled)."""
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

    def outputs(v: Any, x: Any) -> Any:
        return model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"])

    try:
        variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
        _, inside = jax.eval_shape(outputs, variables, x)
    except (ZeroDivisionError, ValueError, TypeError):  # an initialiser's fan-in of 0, an empty window
        return False
    return all(0 not in leaf.shape for leaf in jax.tree.leaves((variables, inside)))


def smallest_size(model: nn.Module, input_shape: tuple[int, ...], largest: int = 1024) -> str:
    """The smallest S for which `model` takes S×S images of `input_shape`'s channels (bisection)."""
    low, high = max(input_shape[:2]), largest
    if not fits(model, (high, high, *input_shape[2:])):
        return f"above {largest}"
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(model, (mid, mid, *input_shape[2:])) else (mid, high)
    return f"{high}×{high}"


def check_fields(name: str, model: nn.Module) -> None:
    """Refuses, naming the field, a model whose fields do not have their defaults' kinds: a rate outside
    [0, 1), a number that is not finite, a count or a layer width below 1, a flag that is not a bool."""
    for f in dataclasses.fields(model):
        default, value = f.default, getattr(model, f.name)
        problem = _field_problem(f.name, default, value)
        if problem:
            shown = list(value) if isinstance(value, tuple) else value
            raise ValueError(f"model_args: {name}'s {f.name} must be {problem}, got {shown!r}")


def _field_problem(field: str, default: Any, value: Any) -> str | None:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if field.endswith("rate"):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1
        return None if ok else "a number in [0, 1)"
    if is_int(default):
        return None if is_int(value) and value >= 1 else "an integer >= 1"
    if isinstance(default, tuple) and default and all(is_int(v) for v in default):
        ok = isinstance(value, tuple) and all(is_int(v) and v >= 1 for v in value)
        return None if ok else "a list of integers >= 1"
    if isinstance(default, str):
        return None if isinstance(value, str) or value is None else "a string"
    if field == "rotate":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 180
        return None if ok else "an angle in degrees in [0, 180]"
    return None


def model_summary(
    model_or_name: nn.Module | str, input_shape: tuple[int, ...] = FASHION_MNIST.image_shape, **model_args
) -> str:
    """The summary table of a model or of a zoo model by name: `print(model_summary("lenet5"))`."""
    if isinstance(model_or_name, str):
        model = build_model(model_or_name, input_shape=input_shape, **model_args)
        return format_summary(layer_rows(model, input_shape), model_or_name)
    return format_summary(layer_rows(model_or_name, input_shape), type(model_or_name).__name__)
