"""Looking inside a trained network: filters, feature maps, curves, predictions, confusion matrix, mistakes.

Every plotting function returns its matplotlib figure and, given `path`, also saves it as a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from cnn.analysis.explain import find_layer
from cnn.analysis.inputs import plot_augmentations, plot_explanations
from cnn.analysis.plots import finish_figure, grid_shape, show_image
from cnn.data.spec import FASHION_MNIST, FASHION_MNIST_CLASSES, Splits, to_float
from cnn.engine.augment import Augmentation
from cnn.engine.evaluation import predict
from cnn.engine.state import TrainState, model_variables
from cnn.models import conv
from cnn.runs.curves import plot_curves
from cnn.runs.disk import read_json
from cnn.runs.results import restore_run


def conv_kernels(params: Any, layer: str) -> np.ndarray:
    """The `(kh, kw, C_in, C_out)` kernel of the convolution `layer`; the error lists the valid names."""
    names = [name for name, p in params.items() if isinstance(p, dict) and np.ndim(p.get("kernel", 0)) == 4]
    if layer not in names:
        raise ValueError(f"layer: no convolution called {layer!r}; the model's convolutions are {names}")
    return np.asarray(params[layer]["kernel"])


def plot_filters(
    params: Any,
    layer: str = "conv1",
    in_channel: int = 0,
    ncols: int | None = None,
    path: str | Path | None = None,
) -> plt.Figure:
    """Every filter of a convolution for one input channel, on one symmetric colour scale (signs comparable).

    32 filters make a 4×8 grid; red is positive, blue negative, white zero.
    """
    kernels = conv_kernels(params, layer)
    if not 0 <= in_channel < kernels.shape[2]:
        raise ValueError(f"in_channel: {layer} has {kernels.shape[2]} input channels, got {in_channel}")
    filters = kernels[:, :, in_channel, :]
    limit = float(np.abs(filters).max()) or 1.0
    rows, cols = grid_shape(filters.shape[-1], ncols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < filters.shape[-1]:
            image = ax.imshow(filters[:, :, i], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(str(i), fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(
        f"{layer}: {filters.shape[-1]} filters {filters.shape[0]}×{filters.shape[1]}, input channel "
        f"{in_channel}"
    )
    return finish_figure(fig, path)


def _as_batch(image: np.ndarray, shape: tuple[int, ...] = FASHION_MNIST.image_shape) -> jax.Array:
    image = np.asarray(image)
    if image.shape == shape[:2] and shape[2] == 1:
        image = image[..., None]
    if image.shape == shape:
        image = image[None]
    if image.shape != (1, *shape):
        h, w, c = shape
        accepted = ([f"({h}, {w})"] if c == 1 else []) + [f"({h}, {w}, {c})", f"(1, {h}, {w}, {c})"]
        raise ValueError(f"image: expected one image of shape {' or '.join(accepted)}, got {image.shape}")
    return to_float(jnp.asarray(image))


def layer_outputs(state: TrainState, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every top-level layer's output for one image (captured while the model runs, no second model)."""
    _, captured = state.apply_fn(
        model_variables(state),
        _as_batch(image, tuple(state.input_shape)),
        train=False,
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    # A layer that calls a parent class's __call__ records twice: its own output is the last.
    return {
        name: np.asarray(out["__call__"][-1][0])
        for name, out in captured["intermediates"].items()
        if name != "__call__"
    }


def feature_maps(state: TrainState, image: np.ndarray, layer: str) -> np.ndarray:
    """The `(H, W, C)` feature maps of `layer` for one image; the error lists the layers that have maps."""
    outputs = layer_outputs(state, image)
    spatial = [name for name, out in outputs.items() if out.ndim == 3]
    if layer not in spatial:
        raise ValueError(f"layer: {layer!r} has no feature maps; layers with feature maps: {spatial}")
    return outputs[layer]


def plot_feature_maps(
    state: TrainState,
    image: np.ndarray,
    layer: str,
    max_maps: int = 32,
    ncols: int | None = None,
    path: str | Path | None = None,
) -> plt.Figure:
    """One panel per feature map of `layer` (up to `max_maps`), each at the layer's real spatial size."""
    maps = feature_maps(state, image, layer)
    count = min(max_maps, maps.shape[-1])
    rows, cols = grid_shape(count, ncols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.4 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < count:
            ax.imshow(maps[:, :, i], cmap="viridis")
            ax.set_title(str(i), fontsize=8)
    fig.suptitle(
        f"{layer}: {maps.shape[-1]} feature maps {maps.shape[0]}×{maps.shape[1]}"
        + (f" (first {count})" if count < maps.shape[-1] else "")
    )
    return finish_figure(fig, path)


def plot_history(history: list[dict[str, float]] | str | Path, path: str | Path | None = None) -> plt.Figure:
    """Loss and accuracy curves from a history list, a `history.json` or a workdir, best epoch marked (the
    run's own, from its results.json, when there is one; else the lowest validation loss)."""
    best = None
    if not isinstance(history, list):
        source = Path(history)
        source = source / "history.json" if source.is_dir() else source
        if not source.is_file():
            raise FileNotFoundError(f"history: {source} does not exist; it is written by python -m cnn train")
        fix = "the checkpoints beside it are kept: `python -m cnn train` with the same --workdir rewrites it"
        history = read_json(source, fix)
        if (results := source.parent / "results.json").is_file():
            best = read_json(results, fix).get("best_epoch")
    best = best or min(history, key=lambda h: h["val_loss"])["epoch"]
    return plot_curves(history, path, best_epoch=best)


def plot_predictions(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray | None = None,
    n: int = 25,
    path: str | Path | None = None,
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES,
) -> plt.Figure:
    """A grid of images (colour ones in colour) titled with their class names; with `probabilities`, the
    predicted name and its confidence, wrong predictions in red."""
    n = min(n, len(images))
    if n == 0:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing to show (no images)", ha="center", va="center")
        return finish_figure(fig, path)
    rows, cols = grid_shape(n, int(math.ceil(math.sqrt(n))))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        show_image(ax, images[i])
        if probabilities is None:
            ax.set_title(class_names[labels[i]], fontsize=9)
        else:
            guess = int(np.argmax(probabilities[i]))
            ax.set_title(
                f"{class_names[guess]} {probabilities[i][guess]:.0%}\n(true: {class_names[labels[i]]})",
                fontsize=8,
                color="black" if guess == labels[i] else "red",
            )
    fig.tight_layout()
    return finish_figure(fig, path)


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, classes: int = len(FASHION_MNIST_CLASSES)
) -> np.ndarray:
    """Counts `[true, predicted]`."""
    return np.bincount(classes * np.asarray(labels) + np.asarray(predictions), minlength=classes**2).reshape(
        classes, classes
    )


def plot_confusion(
    labels: np.ndarray,
    predictions: np.ndarray,
    path: str | Path | None = None,
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES,
) -> plt.Figure:
    """The confusion matrix twice: counts, and normalised by the true class (each row sums to 1)."""
    counts = confusion_matrix(labels, predictions, len(class_names))
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(17, 7.5), constrained_layout=True)
    for ax, matrix, title, fmt in (
        (axes[0], counts, "counts", "d"),
        (axes[1], normalised, "normalised", ".2f"),
    ):
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                format(value, fmt),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({title})")
    return finish_figure(fig, path)


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, k: int = 16) -> np.ndarray:
    """Indices of the `k` wrong predictions made with the highest confidence, most confident first."""
    guesses = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(guesses != labels)
    return wrong[np.argsort(-probabilities[wrong, guesses[wrong]], kind="stable")][:k]


def plot_mistakes(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    k: int = 16,
    path: str | Path | None = None,
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES,
) -> plt.Figure:
    """The most confident mistakes, titled with the predicted and the true class."""
    idx = most_confident_mistakes(labels, probabilities, k)
    return plot_predictions(images[idx], labels[idx], probabilities[idx], len(idx), path, class_names)


def plot_learned_vs_classic(
    params: Any,
    photo: np.ndarray | None = None,
    layer: str = "conv1",
    count: int = 8,
    path: str | Path | None = None,
) -> plt.Figure:
    """A trained network's first filters applied to a real grayscale photo, beside the classic filters."""
    photo = conv.sample_photo(grayscale=True)[::2, ::2] if photo is None else photo
    learned = conv_kernels(params, layer)[:, :, 0, :count]
    classic = {name: make() for name, make in conv.CLASSIC_FILTERS.items() if name != "random"}
    fig, axes = plt.subplots(
        2, max(count, len(classic)), figsize=(2.2 * max(count, len(classic)), 5), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(learned.shape[-1]):
        axes[0, i].imshow(np.abs(conv.apply_filter(photo, learned[:, :, i], padding="same")), cmap="gray")
        axes[0, i].set_title(f"{layer} filter {i}", fontsize=8)
    for ax, (name, kernel) in zip(axes[1], classic.items(), strict=False):
        ax.imshow(np.abs(conv.apply_filter(photo, kernel, padding="same")), cmap="gray")
        ax.set_title(name, fontsize=8)
    fig.suptitle("Learned filters (top) and classic filters (bottom) on a real photo")
    fig.tight_layout()
    return finish_figure(fig, path)


def first_conv(params: Any) -> str:
    """The name of the model's first convolution (its parameters appear in call order)."""
    for name, p in params.items():
        if isinstance(p, dict) and np.ndim(p.get("kernel", 0)) == 4:
            return name
    raise ValueError("layer: the model has no convolution")


def write_all(
    workdir: str | Path, splits: Splits, out: str | Path | None = None, cam: str | None = None
) -> list[Path]:
    """Every picture of a run, from its best checkpoint, into `out` (default `workdir/viz`), with the data
    set's own class names and colours. A model without convolutions gets every picture but the filters
    and feature maps. With `cam` (a layer name), also `cam_LAYER.png`: `plot_explanations` of the first
    8 test images."""
    config, state, _ = restore_run(workdir)
    if cam is not None:
        find_layer(state, cam, state.input_shape)  # a wrong name fails before any picture is drawn
    names = splits.class_names
    out = Path(out or Path(workdir) / "viz")
    out.mkdir(parents=True, exist_ok=True)
    test = splits.test
    probabilities = predict(state, test.images)
    written = {
        "curves.png": lambda p: plot_history(workdir, path=p),
        "samples.png": lambda p: plot_predictions(test.images, test.labels, path=p, class_names=names),
        "predictions.png": lambda p: plot_predictions(
            test.images, test.labels, probabilities, path=p, class_names=names
        ),
        "confusion.png": lambda p: plot_confusion(
            test.labels, probabilities.argmax(1), path=p, class_names=names
        ),
        "mistakes.png": lambda p: plot_mistakes(
            test.images, test.labels, probabilities, path=p, class_names=names
        ),
        **_convolution_pictures(state, test.images[0]),
    }
    if (policy := Augmentation.of(config)) is not None:
        written["augmentations.png"] = lambda p: plot_augmentations(test.images[:8], policy, path=p)
    if cam is not None:
        written[f"cam_{cam.replace('/', '_')}.png"] = lambda p: plot_explanations(
            state, test.images[:8], cam, test.labels[:8], names, path=p
        )
    paths = []
    for filename, draw in written.items():
        draw(out / filename)
        paths.append(out / filename)
    return paths


def _convolution_pictures(state: TrainState, image: np.ndarray) -> dict[str, Any]:
    """The filter and feature-map pictures of a model with convolutions (none without)."""
    try:
        conv_name = first_conv(state.params)
    except ValueError:
        return {}
    spatial = [name for name, o in layer_outputs(state, image).items() if o.ndim == 3]
    pictures = {
        "filters.png": lambda p: plot_filters(state.params, conv_name, path=p),
        "learned_vs_classic.png": lambda p: plot_learned_vs_classic(state.params, layer=conv_name, path=p),
    }
    for name in spatial:
        pictures[f"feature_maps_{name}.png"] = lambda p, name=name: plot_feature_maps(
            state, image, name, path=p
        )
    return pictures
