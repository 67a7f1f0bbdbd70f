"""A run's training curves (`curves.png`): loss and accuracy per epoch, train against validation, the best
epoch marked. matplotlib is imported when a picture is drawn, not with the module."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(
    history: list[dict[str, float]], path: str | Path | None = None, best_epoch: int | None = None
) -> Any:
    """Two panels (loss, accuracy) of train vs validation per epoch (a matplotlib figure); saved as PNG when
    `path` is given."""
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    # Fixed margins rather than a layout engine: every run draws this figure, and a layout engine about
    # doubled the time it takes (docs/explanations/performance.md).
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.12, top=0.93, wspace=0.2)
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
