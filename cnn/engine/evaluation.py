"""Evaluation and prediction: a whole split evaluated in one compiled call (its padded batches kept on the
device for every later epoch), `evaluate` and `predict` for users, and the checks of what users hand them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from cnn.data.spec import Split
from cnn.engine.placement import fits_on_device, once_per_split
from cnn.engine.state import TrainState
from cnn.engine.steps import add_metrics, eval_sums, output_units, probabilities
from cnn.engine.vmap import Members
from cnn.errors import InputError


def padded(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[np.ndarray, ...]:
    """`images`, `labels` and a `mask` as K batches of B = min(batch_size, N) examples `(K, B, ...)`, the
    last batch padded with masked-out zeros (one compiled shape; nothing dropped)."""
    n = len(labels)
    b = min(batch_size, n)
    k = -(-n // b)
    pad = k * b - n
    mask = np.pad(np.ones(n, np.float32), (0, pad))
    x = np.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
    y = np.pad(labels, (0, pad))
    return x.reshape(k, b, *images.shape[1:]), y.reshape(k, b), mask.reshape(k, b)


def eval_batches(split: Split, batch_size: int) -> tuple[jax.Array, ...] | None:
    """The split's padded batches on the device (placed once per split and batch size, then reused by
    every epoch and run of the process); None when they do not fit there."""
    if not fits_on_device(split.images):
        return None

    def place() -> tuple[jax.Array, ...]:
        return tuple(jax.device_put(a) for a in padded(split.images, split.labels, batch_size))

    return once_per_split(split, ("eval", batch_size), place)


ONE_RUN = Members(1)


def metric_sums(state: TrainState, split: Split, batch_size: int, members: Members = ONE_RUN) -> Any:
    """Summed loss, correct count and count of `state` (of every run of `members`) over `split`, on the
    device: one compiled call over the split, or, where it does not fit on the device, one per batch."""
    program = members.program(eval_sums, donate=False)
    batches = eval_batches(split, batch_size)
    if batches is not None:
        return program(state, *batches)
    totals = None
    for x, y, m in zip(*padded(split.images, split.labels, batch_size), strict=True):
        totals = add_metrics(totals, program(state, x[None], y[None], m[None]))
    return totals


def compile_metric_sums(state: TrainState, split: Split, batch_size: int, members: Members = ONE_RUN) -> None:
    """Compiles the program `metric_sums` calls for `state` and `split` without running it (where the split
    fits on the device; see `cnn.studies.ahead`)."""
    batches = eval_batches(split, batch_size)
    if batches is not None:
        members.program(eval_sums, donate=False).lower(state, *batches).compile()


def mean_metrics(totals: dict[str, Any]) -> dict[str, float]:
    """Mean loss and accuracy from summed metrics of one run (on the host)."""
    return {
        "loss": float(totals["loss"] / totals["count"]),
        "accuracy": float(totals["correct"] / totals["count"]),
    }


def check_images(images: Any, shape: Sequence[int], what: str = "images") -> np.ndarray:
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
        looks_like_pixels = 2 <= high <= 255 and low >= 0
        hint = " (they look like 0..255 pixels: divide by 255)" if looks_like_pixels else ""
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
    return max(output_units(state), 2)


def check_batch(batch_size: Any) -> int:
    """`batch_size` of `evaluate`/`predict`: an integer >= 1; else InputError."""
    if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def evaluate(state: TrainState, split: Split, batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and accuracy of `state` on `split`; the last batch is padded and masked, never dropped.
    Raises InputError for images or labels the model cannot take (see `check_images`, `check_labels`)."""
    batch_size = check_batch(batch_size)
    if not isinstance(split, Split):
        raise TypeError(f"split: expected a cnn.data.spec.Split (images, labels), got {type(split).__name__}")
    images = check_images(split.images, state.input_shape, "split.images")
    labels = check_labels(split.labels, len(images), output_classes(state), "split.labels")
    return mean_metrics(jax.device_get(metric_sums(state, Split(images, labels), batch_size)))


_probabilities = jax.jit(probabilities)


def predict(state: TrainState, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Class probabilities `(N, classes)` of `images` `(N, H, W, C)` (float in [0, 1] or uint8: the same
    pixels give the same probabilities); a model with one sigmoid output gives `[1 - p, p]`. Raises
    InputError naming the problem for anything else (see `check_images`)."""
    batch_size = check_batch(batch_size)
    images = check_images(images, state.input_shape)
    x, _, mask = padded(images, np.zeros(len(images), np.int32), batch_size)
    out = [np.asarray(_probabilities(state, batch)) for batch in x]
    return np.concatenate(out)[: len(images)]
