"""Number for number: the histories of fixed runs on the tests' tiny data set equal those recorded with the
code of commit 87cde3a (before the training path was restructured). Any change to the step, the loop, the
data path or the optimizer that moves a single float shows here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnn import TrainConfig, fit, fit_seeds

PINNED = json.loads((Path(__file__).parent / "data" / "histories-87cde3a.json").read_text())
KEYS = ("test_loss", "test_accuracy", "val_loss", "val_accuracy", "best_epoch")


@pytest.mark.parametrize("name", [n for n in PINNED if n != "vmapped_seeds"])
def test_a_run_trains_number_for_number_as_before(name, tiny_splits, tmp_path):
    pinned = PINNED[name]
    results = fit(TrainConfig(**pinned["config"]), tiny_splits, tmp_path)
    assert json.loads((tmp_path / "history.json").read_text()) == pinned["history"]
    assert {k: results[k] for k in KEYS} == {k: pinned[k] for k in KEYS}


def test_seeds_trained_together_train_number_for_number_as_before(tiny_splits, tmp_path):
    pinned = PINNED["vmapped_seeds"]
    results = fit_seeds(TrainConfig(**pinned["config"]), pinned["seeds"], tiny_splits, tmp_path)
    for seed, run, want in zip(pinned["seeds"], results, pinned["runs"], strict=True):
        assert json.loads((tmp_path / f"seed{seed}" / "history.json").read_text()) == want["history"]
        assert {k: run[k] for k in KEYS} == {k: want[k] for k in KEYS}
