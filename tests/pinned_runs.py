"""Trains the pinned runs of `test_histories.py` with whichever `cnn` comes first on the path (this checkout,
or an earlier commit's code unpacked beside it) and writes their histories and results as JSON. It speaks
both the current API and that of commit 87cde3a, before the training path was restructured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import cnn
from cnn import TrainConfig, fit, fit_seeds

try:
    from cnn.data.fashion_mnist import SPLIT_FILES, load_fashion_mnist
except ImportError:  # the code of 87cde3a
    from cnn.data import SPLIT_FILES, load_fashion_mnist

# Steps per call pinned (the histories are equal for a given K; 10 was the earlier code's default).
RUNS = {
    "seed_cnn": dict(epochs=2, patience=10, steps_per_call=10),
    "seed_cnn_partial_batch": dict(epochs=2, patience=10, limit_train=200, steps_per_call=10),
    "lenet5": dict(model="lenet5", epochs=2, patience=10, steps_per_call=10),
    "vgg_bn": dict(model="vgg_bn", epochs=2, patience=5, limit_train=256, batch_size=64, steps_per_call=2,
                   schedule="cosine", weight_decay=1e-4),
}  # fmt: skip
SEEDS = dict(epochs=2, limit_train=320, patience=10, steps_per_call=10)
KEYS = ("test_loss", "test_accuracy", "val_loss", "val_accuracy", "best_epoch")


def write_idx(path: Path, array: np.ndarray) -> None:
    import gzip

    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def tiny_data(folder: Path) -> None:
    """The tests' tiny data set (`tests/conftest.py`): a bright square whose position is the label."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, n in (("train", 600), ("test", 200)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 4)
            r, c = 1 + 9 * row + rng.integers(0, 2), 1 + 6 * col + rng.integers(0, 2)
            images[i, r : r + 7, c : c + 7] = rng.integers(180, 256, size=(7, 7))
        write_idx(folder / SPLIT_FILES[split][0], images)
        write_idx(folder / SPLIT_FILES[split][1], labels)


def main(out: str) -> None:
    tmp = Path(out).with_suffix(".work")  # beside the output, in the test's own folder
    tmp.mkdir()
    tiny_data(tmp / "idx")
    splits = load_fashion_mnist(data_dir=tmp / "tfds", source_dir=tmp / "idx")
    runs: dict = {"cnn": cnn.__file__}
    for name, fields in RUNS.items():
        results = fit(TrainConfig(**fields), splits, tmp / name)
        history = json.loads((tmp / name / "history.json").read_text())
        runs[name] = {"history": history, **{k: results[k] for k in KEYS}}
    together = fit_seeds(TrainConfig(**SEEDS), [0, 1, 2], splits, tmp / "seeds")
    runs["vmapped_seeds"] = [
        {
            "history": json.loads((tmp / "seeds" / f"seed{s}" / "history.json").read_text()),
            **{k: r[k] for k in KEYS},
        }
        for s, r in zip([0, 1, 2], together, strict=True)
    ]
    Path(out).write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
