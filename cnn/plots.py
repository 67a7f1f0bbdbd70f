"""Plots of runs: training curves (best epoch marked), the architecture diagram, a sweep's accuracy
against size and cost, and its validation curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt


def plot_curves(
    history: list[dict[str, float]], path: str | Path | None = None, best_epoch: int | None = None
) -> plt.Figure:
    """Two panels (loss, accuracy) of train vs validation per epoch; saved as PNG when `path` is given."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [h[metric] for h in history], "o-", label=f"train {metric}")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], "s-", label=f"validation {metric}")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch ({best_epoch})")
        ax.set(xlabel="epoch", ylabel=metric, title=metric.capitalize())
        ax.grid(alpha=0.3)
        ax.legend()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def plot_architecture(rows, path: str | Path | None = None, title: str = "") -> plt.Figure:
    """The layers as a vertical diagram of boxes with input and output shapes, like Keras'
    `plot_model(show_shapes=True)`, drawn with matplotlib (no graphviz). `rows`: `cnn.summary.layer_rows`."""
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
