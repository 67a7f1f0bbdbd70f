"""How a data set's examples are divided into train / validation / test: a fixed-seed draw, the last
examples in order (Keras' `validation_split`), or a stratified draw per class."""

from __future__ import annotations

import numpy as np


def split_indices(
    n: int, val_fraction: float, seed: int, last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices, validation being `round(n * val_fraction)` long: a fixed-seed draw, or with
    `last` the final examples in order (what Keras' `validation_split` holds out)."""
    order = np.arange(n)[::-1] if last else np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): `round(fraction × n_c)` of every class c held out, at least one where a
    class has two or more examples, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx))))) if len(idx) > 1 else 0
        held.append(idx[:k])
        kept.append(idx[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))
