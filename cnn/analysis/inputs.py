"""Pictures of a run's inputs: a batch before and after each augmentation of its recipe
(`augmentations.png`), and the parts of test images its answers rest on (`plot_explanations`: Grad-CAM and
SmoothGrad, `cam_LAYER.png`); both written by `python -m cnn viz`."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from cnn.analysis.explain import grad_cam, smoothgrad
from cnn.analysis.plots import finish_figure, show_image
from cnn.data.spec import FASHION_MNIST_CLASSES, to_float
from cnn.engine.augment import Augmentation, augment
from cnn.engine.evaluation import predict
from cnn.engine.state import TrainState


def plot_augmentations(
    images: np.ndarray,
    policy: Augmentation | None = None,
    seed: int = 0,
    path: str | Path | None = None,
) -> plt.Figure:
    """A batch before (top row) and after each augmentation of `policy` alone (a row each: RandAugment,
    crop after padding, flip, erasing, mixup, cutmix), then after all of them together, as the train step
    draws them (a key from `seed`). Without `policy`, every augmentation at a typical setting."""
    policy = policy or Augmentation(
        crop_padding=4, flip=True, erasing=0.5, mixup=0.4, cutmix=1.0, randaugment=2
    )
    alone = {
        f"RandAugment {policy.randaugment}×{policy.magnitude:g}": Augmentation(
            randaugment=policy.randaugment, magnitude=policy.magnitude, ops=policy.ops
        ),
        f"crop (padding {policy.crop_padding})": Augmentation(crop_padding=policy.crop_padding),
        "flip": Augmentation(flip=policy.flip),
        f"erasing (p {policy.erasing:g})": Augmentation(erasing=policy.erasing),
        f"mixup (alpha {policy.mixup})": Augmentation(mixup=policy.mixup),
        f"cutmix (alpha {policy.cutmix})": Augmentation(cutmix=policy.cutmix),
    }
    rows = {
        "before": None,
        **{k: v for k, v in alone.items() if v.per_image or v.mixes},
        "all together": policy,
    }
    x = to_float(jnp.asarray(images))
    labels = jnp.zeros(len(images), jnp.int32)
    fig, axes = plt.subplots(
        len(rows), len(images), figsize=(1.3 * len(images), 1.4 * len(rows)), squeeze=False
    )
    for (title, p), row in zip(rows.items(), axes, strict=True):
        shown = x if p is None else augment(p, jax.random.PRNGKey(seed), x, labels, 2)[0]
        for ax, image in zip(row, np.asarray(shown), strict=True):
            show_image(ax, image)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(title, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return finish_figure(fig, path)


def plot_explanations(
    state: TrainState,
    images: np.ndarray,
    layer: str,
    labels: np.ndarray | None = None,
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES,
    samples: int = 25,
    path: str | Path | None = None,
) -> plt.Figure:
    """Why the network answered as it did, per image (a column each): the image titled with the predicted
    class (red when wrong), the Grad-CAM of `layer` for that class over it, and the SmoothGrad saliency
    (`samples` noisy copies) of the same class."""
    probabilities = predict(state, images)
    cams = grad_cam(state, images, layer)
    saliency = smoothgrad(state, images, samples=samples)
    fig, axes = plt.subplots(3, len(images), figsize=(1.8 * len(images), 6), squeeze=False)
    for i, column in enumerate(axes.T):
        for ax in column:
            ax.axis("off")
        guess = int(probabilities[i].argmax())
        wrong = labels is not None and guess != labels[i]
        show_image(column[0], images[i])
        column[0].set_title(
            f"{class_names[guess]} {probabilities[i][guess]:.0%}",
            fontsize=8,
            color="red" if wrong else "black",
        )
        show_image(column[1], images[i])
        column[1].imshow(cams[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        column[2].imshow(saliency[i], cmap="hot", vmin=0, vmax=1)
    axes[1, 0].set_title(f"Grad-CAM {layer}", fontsize=8, loc="left")
    axes[2, 0].set_title("SmoothGrad", fontsize=8, loc="left")
    fig.tight_layout()
    return finish_figure(fig, path)
