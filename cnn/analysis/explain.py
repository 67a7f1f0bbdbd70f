"""Why a network answered as it did: class activation maps (Grad-CAM, for any layer with feature maps, by
name) and input gradients (plain, and SmoothGrad's average over noisy copies), for a trained run's
`TrainState` or any Flax module with its variables (the zoo, `cnn.models.applications.networks` networks, cut
or whole).

    cams = grad_cam(state, images, "conv2")                # (N, H, W) in [0, 1], at the input's size
    maps = smoothgrad(state, images, samples=25, noise=0.15)

The network is tapped while it runs (`flax.linen.intercept_methods`): the named layer's output gets a zero
added to it, and the gradient of the class score with respect to that zero is the gradient with respect to
the layer's output. No second model, no change to the network's code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn.data.spec import to_float
from cnn.engine.evaluation import check_batch, check_images
from cnn.engine.state import TrainState, evaluated, model_variables

Network = TrainState | tuple[nn.Module, Any]


def _parts(network: Network) -> tuple[Callable, Any, bool]:
    """(apply function, variables, whether images are pixels to turn into [0, 1]) of a train state (images
    uint8 or in [0, 1]) or of a `(module, variables)` pair (images as the module takes them, e.g. after
    `cnn.models.applications.networks.preprocess_input`)."""
    if isinstance(network, TrainState):
        return network.apply_fn, model_variables(evaluated(network)), True
    if isinstance(network, tuple) and len(network) == 2 and isinstance(network[0], nn.Module):
        return network[0].apply, network[1], False
    raise TypeError(
        f"network: expected a TrainState or a (flax module, variables) pair, got {type(network).__name__}"
    )


def _outputs(apply: Callable, variables: Any, pixels: bool, x: jax.Array) -> jax.Array:
    if pixels:
        return apply(variables, to_float(x, exact=True), train=False)
    return apply(variables, x)


_run = jax.jit(_outputs, static_argnums=(0, 2))


def _forward(network: Network) -> Callable[[jax.Array], jax.Array]:
    """`x -> outputs` of the network (see `_parts`)."""
    return functools.partial(_outputs, *_parts(network))


def _layer_name(module: nn.Module) -> str:
    return "/".join(str(p) for p in module.path)


def _tapped(forward: Callable, layer: str | None, delta: Any, found: dict[str, Any]) -> Callable:
    """`forward` that records in `found` the output of every module call (`layer` None) or adds `delta`
    to the first output of the module `layer` (its full path, or its own name) and records that output."""

    def interceptor(call, args, kwargs, context):
        name = _layer_name(context.module)
        if context.method_name != "__call__" or not name or name in found.setdefault("_busy", set()):
            return call(*args, **kwargs)  # a layer calling its parent's __call__ counts once
        found["_busy"].add(name)
        try:
            out = call(*args, **kwargs)
        finally:
            found["_busy"].discard(name)
        if layer is None:
            found.setdefault(name, jax.ShapeDtypeStruct(np.shape(out), out.dtype))
        elif layer in (name, name.rsplit("/", 1)[-1]) and "output" not in found:
            out = out if delta is None else out + delta.astype(out.dtype)
            found["output"] = out
        return out

    def run(x):
        with nn.intercept_methods(interceptor):
            return forward(x)

    return run


def spatial_layers(network: Network, image_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Every layer whose output has feature maps `(N, h, w, C)`, by its path, with that shape (for one
    image of `image_shape`), in call order: the layers `grad_cam` can explain."""
    found: dict[str, Any] = {}
    jax.eval_shape(_tapped(_forward(network), None, None, found), jnp.zeros((1, *image_shape), jnp.float32))
    return {k: tuple(v.shape) for k, v in found.items() if k != "_busy" and len(v.shape) == 4}


def find_layer(network: Network, layer: str, image_shape: Sequence[int]) -> tuple[str, tuple[int, ...]]:
    """The path and output shape of the one layer with feature maps named `layer` (its path or its own
    name); ValueError listing the layers there are."""
    layers = spatial_layers(network, image_shape)
    matches = [k for k in layers if layer in (k, k.rsplit("/", 1)[-1])]
    if len(matches) != 1:
        why = "names several layers" if matches else "is no layer with feature maps"
        short = [k.rsplit("/", 1)[-1] for k in layers]
        raise ValueError(f"layer: {layer!r} {why}; the layers with feature maps are {short}")
    return matches[0], layers[matches[0]]


def class_scores(outputs: jax.Array, classes: jax.Array) -> jax.Array:
    """The score explained for each example: the class's logit (before the softmax, as Grad-CAM takes it;
    for one sigmoid output, the logit for class 1 and its negative for class 0); for a network that ends
    in feature maps (a cut backbone), the mean activation of channel `classes`."""
    if outputs.ndim == 4:
        outputs = outputs.mean(axis=(1, 2))
    if outputs.shape[-1] == 1:
        return jnp.where(classes == 1, outputs[:, 0], -outputs[:, 0])
    return jnp.take_along_axis(outputs, classes[:, None], axis=1)[:, 0]


def _input_shape(network: Network, images: Any) -> tuple[int, ...]:
    if isinstance(network, TrainState):
        return tuple(network.input_shape)
    shape = np.shape(images)
    if len(shape) != 4:
        raise ValueError(f"images: expected NHWC images (N, H, W, C), got shape {shape}")
    return tuple(shape[1:])


def _checked(network: Network, images: Any) -> np.ndarray:
    if isinstance(network, TrainState):
        return check_images(images, network.input_shape)
    _input_shape(network, images)
    return np.asarray(images, np.float32)


def _targets(network: Network, images: np.ndarray, classes: Any, batch_size: int) -> np.ndarray:
    """`classes` as one integer per image; None: each image's predicted class (the arg-max output)."""
    if classes is None:
        apply, variables, pixels = _parts(network)
        outs = [
            np.asarray(_run(apply, variables, pixels, images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        out = np.concatenate(outs)
        out = out.mean(axis=(1, 2)) if out.ndim == 4 else out
        return (out[:, 0] > 0).astype(np.int32) if out.shape[-1] == 1 else out.argmax(-1).astype(np.int32)
    classes = np.broadcast_to(np.asarray(classes), (len(images),))
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes: expected integer class numbers, got dtype {classes.dtype}")
    return classes.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("apply", "pixels", "layer", "shape"))
def _grad_cam(apply, variables, pixels, layer, shape, x, classes):
    found: dict[str, Any] = {}
    forward = functools.partial(_outputs, apply, variables, pixels)

    def score(delta):
        outputs = _tapped(forward, layer, delta, found)(x)
        return class_scores(outputs, classes).sum(), found["output"]

    grads, maps = jax.grad(score, has_aux=True)(jnp.zeros((len(x), *shape[1:]), jnp.float32))
    weights = grads.mean(axis=(1, 2))  # (N, C): how much each feature map raises the score
    return jax.nn.relu(jnp.einsum("nhwc,nc->nhw", maps.astype(jnp.float32), weights))


def grad_cam(
    network: Network,
    images: Any,
    layer: str,
    classes: Any = None,
    upsample: bool = True,
    batch_size: int = 64,
) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of `layer` for each image: the layer's feature maps weighted by the
    spatial mean of the class score's gradient, summed, the negative part cut off.

    Args:
      network: a `TrainState` (images uint8 or floats in [0, 1]) or `(module, variables)`.
      images: `(N, H, W, C)`.
      layer: a layer with feature maps, by its name (`conv2`, `block5_conv3`) or path (`spatial_layers`).
      classes: the class explained, one per image or one for all; None: each image's predicted class.
      upsample: resize the maps to the images' size (bilinear), as they are drawn over them.
    Returns:
      `(N, H, W)` maps (`(N, h, w)` at the layer's size without `upsample`), each scaled to [0, 1] by its
      maximum (a map that is zero everywhere stays zero).
    """
    batch_size = check_batch(batch_size)
    images = _checked(network, images)
    path, shape = find_layer(network, layer, images.shape[1:])
    targets = _targets(network, images, classes, batch_size)
    apply, variables, pixels = _parts(network)
    cams = []
    for i in range(0, len(images), batch_size):
        x, c = images[i : i + batch_size], targets[i : i + batch_size]
        cams.append(np.asarray(_grad_cam(apply, variables, pixels, path, shape, x, c)))
    cam = np.concatenate(cams)
    if upsample:
        cam = np.asarray(jax.image.resize(cam, (len(cam), *images.shape[1:3]), "bilinear"))
    return _scaled(cam)


def _scaled(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum (a map that is zero everywhere stays zero)."""
    top = maps.max(axis=tuple(range(1, maps.ndim)), keepdims=True)
    return np.where(top > 0, maps / np.where(top > 0, top, 1), 0).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("apply", "pixels", "samples"))
def _input_gradients(apply, variables, pixels, x, classes, key, noise, samples):
    x = to_float(x, exact=True) if pixels else x.astype(jnp.float32)
    span = x.max(axis=(1, 2, 3), keepdims=True) - x.min(axis=(1, 2, 3), keepdims=True)

    def gradient(total, key):
        noisy = x + noise * span * jax.random.normal(key, x.shape, x.dtype)
        grads = jax.grad(lambda v: class_scores(_outputs(apply, variables, pixels, v), classes).sum())(noisy)
        return total + grads, None

    total, _ = jax.lax.scan(gradient, jnp.zeros_like(x), jax.random.split(key, samples))
    return total / samples


def input_gradients(
    network: Network,
    images: Any,
    classes: Any = None,
    samples: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """The gradient of the class score with respect to the input pixels (floats in [0, 1] for a train
    state), `(N, H, W, C)`; with `samples` > 1 and `noise` > 0, SmoothGrad's mean over `samples` copies
    with Gaussian noise of standard deviation `noise` × (the image's max - min) added (Smilkov et al. 2017).
    `classes` as in `grad_cam`."""
    batch_size = check_batch(batch_size)
    if not isinstance(samples, int | np.integer) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples: expected an integer >= 1, got {samples!r}")
    if not (isinstance(noise, int | float) and 0 <= noise < float("inf")):
        raise ValueError(f"noise: expected a number >= 0 (a fraction of the pixel range), got {noise!r}")
    images = _checked(network, images)
    targets = _targets(network, images, classes, batch_size)
    apply, variables, pixels = _parts(network)
    key = jax.random.PRNGKey(seed)
    out = [
        np.asarray(
            _input_gradients(
                apply,
                variables,
                pixels,
                images[i : i + batch_size],
                targets[i : i + batch_size],
                jax.random.fold_in(key, i),
                float(noise),
                int(samples),
            )
        )  # fmt: skip
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def saliency(gradients: np.ndarray) -> np.ndarray:
    """`(N, H, W)` saliency maps from input gradients `(N, H, W, C)`: the largest absolute gradient over
    the channels, each map scaled to [0, 1]."""
    return _scaled(np.abs(np.asarray(gradients)).max(axis=-1))


def smoothgrad(
    network: Network, images: Any, classes: Any = None, samples: int = 25, noise: float = 0.15, seed: int = 0
) -> np.ndarray:
    """SmoothGrad saliency maps `(N, H, W)` in [0, 1] (see `input_gradients`; 25 samples at 15 % noise, the
    paper's suggestion)."""
    return saliency(input_gradients(network, images, classes, samples, noise, seed))
