"""What a run costs besides its training: the data read once and shared, programs compiled once per shape
(and not at all by a second identical command), the compiling counted apart from the training, the
overhead report. Speeds themselves are measured by `python -m cnn bench --overhead`, never here."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cnn import TrainConfig, fit, load_dataset
from cnn.runs.checkpoints import Checkpoints
from cnn.runs.record import epoch_line
from cnn.studies.overhead import format_overhead
from tests.processes import ROOT, subprocess_env, train_command


def test_a_data_set_is_read_once_per_process_and_shared(idx_dir, tmp_path):
    config = TrainConfig(dataset="fashion_mnist")
    first = load_dataset(config, data_dir=tmp_path / "tfds", source_dir=idx_dir)
    again = load_dataset(TrainConfig(seed=5, lr=0.1), data_dir=tmp_path / "tfds", source_dir=idx_dir)
    assert again is first  # other settings, the same data: the same arrays
    other = load_dataset(TrainConfig(split_seed=7), data_dir=tmp_path / "tfds", source_dir=idx_dir)
    assert other is not first and not np.array_equal(other.val.labels, first.val.labels)
    with pytest.raises(ValueError, match="read-only"):
        first.train.images[0, 0, 0, 0] = 1  # shared by every run of the process: nobody writes to it


def test_equal_runs_of_a_process_share_their_programs(tiny_splits, tmp_path):
    fit(TrainConfig(epochs=1, limit_train=200, steps_per_call=4, seed=0), tiny_splits, tmp_path / "a")
    second = fit(
        TrainConfig(epochs=1, limit_train=200, steps_per_call=4, seed=1), tiny_splits, tmp_path / "b"
    )
    assert second["compilations"] == 0 and second["compile_cache_hits"] == 0  # all from memory


def test_an_epochs_last_chunk_runs_in_the_chunks_program(tiny_splits, tmp_path):
    """200 examples of 32: 6 full batches as chunks of 4 (the second has 2 steps) and a batch of 8. The
    second epoch compiles nothing; the first compiles the chunks' program once, not one for 2 steps."""
    fit(TrainConfig(epochs=2, limit_train=200, steps_per_call=4, patience=5, seed=3), tiny_splits, tmp_path)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    timing = checkpoints.restore_meta(2)["timing"]
    checkpoints.close()
    assert timing[1]["compilations"] == 0 and timing[1]["compile_seconds"] < 0.05
    assert [t["images"] for t in timing] == [200, 200]


def test_the_epoch_line_leaves_compiling_out_of_the_rate():
    config = TrainConfig(epochs=3)
    metrics = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4}
    line = epoch_line(config, 1, metrics, {"seconds": 2.0, "compile_seconds": 3.0, "images": 1000})
    assert "Epoch 1/3 - 32 steps - 2.0s + 3.0s compiling (500 img/s)" in line
    line = epoch_line(config, 2, metrics, {"seconds": 2.0, "compile_seconds": 0.0, "images": 1000}, "seed 4")
    assert "Epoch 2/3 - seed 4 - 32 steps - 2.0s (500 img/s)" in line


def _results(workdir) -> dict:
    return json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
def test_processes_share_the_compilation_cache_and_a_second_identical_command_compiles_nothing(
    idx_dir, prepared, tmp_path
):
    """Two commands started together fill one cache folder (JAX's file lock keeps a reader from a half
    written entry), and train the same; a third, identical command reads every program back."""
    cache = str(tmp_path / "cache")
    flags = ("--epochs", "1", "--limit-train", "160", "--steps-per-call", "2")
    processes = [
        subprocess.Popen(
            train_command(idx_dir, prepared, tmp_path / name, *flags),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(CNN_COMPILE_CACHE=cache),
            cwd=ROOT,
        )
        for name in ("one", "two")
    ]
    for p in processes:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    one, two = _results(tmp_path / "one"), _results(tmp_path / "two")
    assert one["test_loss"] == two["test_loss"] and one["compilations"] + two["compilations"] > 0
    done = subprocess.run(
        train_command(idx_dir, prepared, tmp_path / "three", *flags),
        capture_output=True,
        text=True,
        env=subprocess_env(CNN_COMPILE_CACHE=cache),
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    three = _results(tmp_path / "three")
    assert three["compilations"] == 0 and three["compile_cache_hits"] > 0
    assert three["test_loss"] == one["test_loss"]


@pytest.mark.slow
def test_no_compile_cache_flag_compiles_afresh(idx_dir, prepared, tmp_path):
    cache = tmp_path / "cache"
    first = train_command(idx_dir, prepared, tmp_path / "run", "--epochs", "1", "--limit-train", "64")
    done = subprocess.run(
        first, capture_output=True, text=True, env=subprocess_env(CNN_COMPILE_CACHE=str(cache)), cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(cache.iterdir())  # on: the programs were written
    command = train_command(
        idx_dir, prepared, tmp_path / "off", "--epochs", "1", "--limit-train", "64", "--no-compile-cache"
    )
    done = subprocess.run(
        command, capture_output=True, text=True, env=subprocess_env(CNN_COMPILE_CACHE=str(cache)), cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    off = _results(tmp_path / "off")
    assert off["compile_cache_hits"] == 0 and off["compilations"] > 0


@pytest.mark.slow
def test_the_overhead_report_splits_a_commands_wall_time(idx_dir, prepared, tmp_path):
    out = tmp_path / "overhead.json"
    args = f"--source-dir {idx_dir} --data-dir {prepared} --limit-train 160 --steps-per-call 2"
    done = subprocess.run(
        [sys.executable, "-m", "cnn", "bench", "--overhead", args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert list(report["runs"]) == ["1 epoch, empty cache", "1 epoch", "3 epochs"]
    cold, warm, three = report["runs"].values()
    assert cold["compilations"] > 0 and warm["compilations"] == 0 and three["epochs"] == 3
    for run in report["runs"].values():  # no phase counted twice: what is left over is not negative
        phases = ("startup", "data", "compile", "train", "evaluate", "checkpoint", "results", "other", "exit")
        assert all(run[p] >= -0.05 for p in phases), run
        assert run["startup"] > 0 and run["data"] > 0 and run["train"] > 0
        assert sum(run[p] for p in phases) == pytest.approx(run["wall"], rel=1e-6)
    assert cold["compile"] > warm["compile"]
    assert (
        report["fixed_seconds"] == pytest.approx(warm["wall"] - (three["wall"] - warm["wall"]) / 2)
        and report["host"]["cpu"]
    )
    assert "| 1 epoch, empty cache |" in format_overhead(report) and "Fixed cost of a run" in done.stdout
