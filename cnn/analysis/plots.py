"""Plots of runs: training curves (best epoch marked), the architecture diagram, a sweep's accuracy
against size and cost, and its validation curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np


def plot_architecture(rows, path: str | Path | None = None, title: str = "") -> plt.Figure:
    """The layers as a vertical diagram of boxes with input and output shapes, like Keras'
    `plot_model(show_shapes=True)`, drawn with matplotlib (no graphviz). `rows`:
    `cnn.models.summary.layer_rows`."""
    n = len(rows) + 1
    fig, ax = plt.subplots(figsize=(7, 0.72 * n + 0.6))
    ax.set(xlim=(0, 10), ylim=(-n + 0.3, 1.0))
    ax.axis("off")
    entries = [("input", "InputLayer", rows[0].input_shape, rows[0].input_shape, 0)] + [
        (r.name, r.kind, r.input_shape, r.output_shape, r.params + r.non_trainable) for r in rows
    ]
    for i, (name, kind, shape_in, shape_out, params) in enumerate(entries):
        y = -i
        ax.add_patch(plt.Rectangle((0.5, y - 0.25), 9, 0.5, facecolor="#e8f0fe", edgecolor="#3367d6"))
        ax.text(0.7, y, f"{name}: {kind}", va="center", fontsize=9, fontweight="bold")
        shapes = f"in {_shape(shape_in)}   out {_shape(shape_out)}" if i else f"out {_shape(shape_out)}"
        ax.text(9.3, y + 0.09, shapes, va="center", ha="right", fontsize=8, family="monospace")
        if params:
            ax.text(9.3, y - 0.13, f"{params:,} params", va="center", ha="right", fontsize=7, color="#555")
        if i:
            ax.annotate("", xy=(5, y + 0.25), xytext=(5, y + 0.75), arrowprops=dict(arrowstyle="->", lw=1))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def _shape(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def plot_sweep(rows: list[dict[str, Any]], out: Path) -> None:
    """accuracy_vs_params.png, accuracy_vs_macs.png and val_curves.png in `out`."""
    done = [r for r in rows if r["seeds_finished"]]
    for key, label, filename in (
        ("params", "parameters", "accuracy_vs_params.png"),
        ("macs", "multiply-accumulates per image", "accuracy_vs_macs.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        for r in done:
            ax.errorbar(r[key], r["test_accuracy_mean"], yerr=r["test_accuracy_std"], fmt="o", capsize=3)
            ax.annotate(
                r["variant"],
                (r[key], r["test_accuracy_mean"]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set(xscale="log", xlabel=label, ylabel="test accuracy (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        fig.savefig(out / filename, dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for r in done:
        ax.plot(range(1, len(r["val_curve"]) + 1), r["val_curve"], "o-", label=r["variant"])
    ax.set(xlabel="epoch", ylabel="validation accuracy (mean over seeds)", title="Validation curves")
    ax.grid(alpha=0.3)
    if done:  # every variant failed: an empty plot, no legend
        ax.legend(fontsize=7)
    fig.savefig(out / "val_curves.png", dpi=100)
    plt.close(fig)


def finish_figure(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    """`fig`, also saved as a PNG at `path` (and closed) when `path` is given."""
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def grid_shape(n: int, ncols: int | None = None) -> tuple[int, int]:
    """Rows and columns of a grid of `n` pictures, at most 8 (or `ncols`) a row."""
    ncols = ncols or min(n, 8)
    return math.ceil(n / ncols), ncols


def show_image(ax: plt.Axes, image: np.ndarray) -> None:
    """One image on `ax`: colour as it is, grayscale dark on light (as the sources draw Fashion-MNIST)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        ax.imshow(image if image.dtype == np.uint8 else np.clip(image, 0, 1))
    else:
        ax.imshow(image.squeeze(), cmap="gray_r")
