"""The fit loop on the tiny dataset: learning, outputs, early stopping, resuming, determinism, errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from cnn import TrainConfig, fit
from cnn.cli.main import main
from cnn.config import recipe, recipes
from cnn.data.spec import Split, Splits
from cnn.errors import ConfigError, WorkdirError
from cnn.runs.resume import EarlyStopping
from cnn.train import check_run_config

FAST = dict(batch_size=32, epochs=4, patience=10)


class Interrupt(Exception):
    """Stands in for a run killed between epochs."""


@pytest.fixture(scope="module")
def trained(tiny_splits, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    results = fit(TrainConfig(**FAST), tiny_splits, workdir)
    return workdir, results


def test_loss_falls_and_accuracy_rises_well_above_chance(trained):
    workdir, results = trained
    history = json.loads((workdir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["accuracy"] > 0.8 and results["test_accuracy"] > 0.8  # chance is 0.1


def test_results_and_run_files(trained):
    workdir, results = trained
    saved = json.loads((workdir / "results.json").read_text())
    assert saved == results
    for key in (
        "test_loss",
        "test_accuracy",
        "val_loss",
        "val_accuracy",
        "train_seconds",
        "images_per_second",
    ):
        assert math.isfinite(saved[key]) and saved[key] >= 0, key
    assert 0 <= saved["test_accuracy"] <= 1 and 0 <= saved["val_accuracy"] <= 1
    assert saved["params"] == 333_526 and saved["epochs_run"] == 4 and 1 <= saved["best_epoch"] <= 4
    history = json.loads((workdir / "history.json").read_text())
    best = min(history, key=lambda h: h["val_loss"])
    assert saved["best_epoch"] == best["epoch"]
    assert saved["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    config = json.loads((workdir / "config.json").read_text())
    assert config["config"]["batch_size"] == 32 and {"jax", "flax", "optax", "orbax_checkpoint"} <= set(
        config["versions"]
    )
    assert config["device"]["platform"] == "cpu" and "git_commit" in config
    assert (workdir / "curves.png").stat().st_size > 10_000
    assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoints_keep_latest_and_best_only(tiny_splits, tmp_path):
    # A validation set with shifted labels: val loss rises as the model learns, so the best epoch is early.
    splits = _misleading_validation(tiny_splits)
    results = fit(TrainConfig(batch_size=32, epochs=5, patience=10), splits, tmp_path)
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == sorted({results["best_epoch"], 5}) and results["best_epoch"] < 5


def _misleading_validation(splits: Splits) -> Splits:
    train = Split(splits.train.images[:320], splits.train.labels[:320])
    val = Split(splits.train.images[:320], (splits.train.labels[:320] + 1) % 10)
    return Splits(train=train, val=val, test=splits.test)


def test_early_stopping_rule():
    stopping = EarlyStopping(patience=2)
    flags = [stopping.update(epoch, loss) for epoch, loss in enumerate([1.0, 0.8, 0.9, 0.8], start=1)]
    assert flags == [True, True, False, False] and stopping.stopped
    assert stopping.best_epoch == 2 and stopping.best == 0.8
    assert not EarlyStopping(patience=2).update(1, float("nan"))


def test_early_stopping_stops_and_restores_the_best_weights(tiny_splits, tmp_path, capsys):
    splits = _misleading_validation(tiny_splits)
    results = fit(TrainConfig(batch_size=32, epochs=12, patience=2), splits, tmp_path)
    said = [line for line in capsys.readouterr().out.splitlines() if "Early stopping" in line]
    best_epoch = results["best_epoch"]
    assert said == [f"Early stopping: no better val_loss for 2 epochs; restoring epoch {best_epoch}"]
    history = json.loads((tmp_path / "history.json").read_text())
    assert results["stopped_early"] and results["epochs_run"] == results["best_epoch"] + 2 < 12
    assert len(history) == results["epochs_run"]
    best = history[results["best_epoch"] - 1]
    assert best["val_loss"] == min(h["val_loss"] for h in history)
    # The final weights are worse on validation; the results come from the restored best ones.
    assert history[-1]["val_loss"] > best["val_loss"]
    assert results["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_same_seed_same_history_and_resume_matches_an_uninterrupted_run(
    trained, tiny_splits, tmp_path, capsys
):
    workdir, results = trained
    reference = json.loads((workdir / "history.json").read_text())

    def interrupt_after_two(epoch, metrics):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(TrainConfig(**FAST), tiny_splits, tmp_path, on_epoch_end=interrupt_after_two)
    epochs_second_run = []
    resumed = fit(
        TrainConfig(**FAST), tiny_splits, tmp_path, on_epoch_end=lambda e, m: epochs_second_run.append(e)
    )
    assert "Resuming" in capsys.readouterr().out and epochs_second_run == [3, 4]
    assert json.loads((tmp_path / "history.json").read_text()) == reference
    assert resumed["test_accuracy"] == results["test_accuracy"]


def test_a_finished_run_is_not_trained_again(trained, tiny_splits, tmp_path, capsys):
    workdir, results = tmp_path / "run", trained[1]
    shutil.copytree(trained[0], workdir)  # results.json is written again: the shared run stays as it was
    epochs = []
    capsys.readouterr()
    again = fit(TrainConfig(**FAST), tiny_splits, workdir, on_epoch_end=lambda e, m: epochs.append(e))
    assert epochs == [] and again["test_accuracy"] == results["test_accuracy"]
    out = capsys.readouterr().out
    assert "has finished (4 epoch(s)" in out and "nothing to train" in out and "Resuming" not in out
    assert not (workdir / ".cnn-run.lock").exists()  # the lock goes with the run


def test_a_run_whose_checkpoints_were_deleted_says_so_and_trains_again(
    trained, tiny_splits, tmp_path, capsys
):
    workdir = tmp_path / "copy"
    shutil.copytree(trained[0], workdir)
    shutil.rmtree(workdir / "checkpoints")
    capsys.readouterr()
    epochs = []
    fit(TrainConfig(**FAST), tiny_splits, workdir, on_epoch_end=lambda e, m: epochs.append(e))
    out = capsys.readouterr().out
    assert "records 4 trained epoch(s) in history.json but holds no complete checkpoint" in out
    assert epochs == [1, 2, 3, 4]


def test_last_partial_batch_is_used(tiny_splits, tmp_path):
    results = fit(TrainConfig(batch_size=32, epochs=1, limit_train=100), tiny_splits, tmp_path)
    assert results["steps"] == 4  # 32 + 32 + 32 + 4


def test_workdir_with_another_config_is_refused_then_overwritten(trained, tiny_splits, tmp_path):
    workdir, _ = trained
    before = sorted(p.name for p in workdir.rglob("*"))
    with pytest.raises(WorkdirError, match=r"lr: 0.001 -> 0.01.*--overwrite"):
        fit(TrainConfig(**{**FAST, "lr": 1e-2}), tiny_splits, workdir)
    assert sorted(p.name for p in workdir.rglob("*")) == before  # nothing lost
    other = tmp_path / "other"
    fit(TrainConfig(batch_size=32, epochs=1), tiny_splits, other)
    results = fit(TrainConfig(batch_size=64, epochs=1), tiny_splits, other, overwrite=True)
    assert json.loads((other / "config.json").read_text())["config"]["batch_size"] == 64
    assert results["epochs_run"] == 1


def test_batch_larger_than_training_set_fails_before_writing(tiny_splits, tmp_path):
    with pytest.raises(ValueError, match="batch_size: 1000 is larger than the 480 training examples"):
        fit(TrainConfig(batch_size=1000), tiny_splits, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", -1.0),
        ("patience", -1),
        ("limit_train", 0),
        ("val_fraction", 1.5),
        ("monitor", "accuracy"),
        ("seed", -3),
        ("seed", 2**70),
        ("epochs", 2**40),
        ("image_size", (2**31, 28)),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_an_unknown_model_is_refused_before_any_data_is_read(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        check_run_config(TrainConfig(model="resnet9000"))
    with pytest.raises(ValueError, match="dropout_rate must be a number in"):
        check_run_config(TrainConfig(model_args={"dropout_rate": 2}))
    code = main(
        [
            "train",
            "--model",
            "resnet9000",
            "--data-dir",
            str(tmp_path / "tfds"),
            "--workdir",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2 and "unknown model" in capsys.readouterr().err
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "r").exists()


def test_cli_trains_end_to_end_on_given_files(idx_dir, tmp_path, capsys):
    code = main(
        [
            "train",
            "--source-dir",
            str(idx_dir),
            "--data-dir",
            str(tmp_path / "tfds"),
            "--epochs",
            "2",
            "--limit-train",
            "200",
            "--workdir",
            str(tmp_path / "run"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "Epoch 2/2" in out and "test_accuracy" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["epochs_run"] == 2 and np.isfinite(results["test_loss"])


def test_cli_summary_and_errors(capsys, tmp_path):
    assert main(["summary", "--model", "seed_cnn"]) == 0
    assert "Total params: 333,526" in capsys.readouterr().out
    assert main(["summary", "--model", "seedcnn"]) == 2
    assert "Did you mean seed_cnn" in capsys.readouterr().err
    assert main(["train", "--lr", "-1", "--workdir", str(tmp_path / "x")]) == 2
    assert "lr: got -1.0" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_monitor_val_accuracy_keeps_the_most_accurate_epoch(tiny_splits, tmp_path):
    config = TrainConfig(batch_size=32, epochs=5, patience=10, monitor="val_accuracy", limit_train=320)
    results = fit(config, tiny_splits, tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())
    top = max(h["val_accuracy"] for h in history)
    first_top = next(h for h in history if h["val_accuracy"] == top)  # ties go to the earlier epoch
    assert results["best_epoch"] == first_top["epoch"]
    assert results["val_accuracy"] == pytest.approx(top, abs=1e-6)


def test_checkpoint_ties_keep_the_earlier_epoch(tmp_path):
    # Accuracy ties are common; the kept best checkpoint must be the epoch early stopping calls the best.
    import jax.numpy as jnp

    from cnn.runs.checkpoints import Checkpoints

    checkpoints, stopping = Checkpoints(tmp_path / "checkpoints"), EarlyStopping(patience=10)
    for epoch, score in enumerate([-0.5, -0.9, -0.9, -0.9, -0.8], start=1):
        stopping.update(epoch, score)
        checkpoints.save(epoch, {"w": jnp.full(3, epoch, jnp.float32)}, {"epoch": epoch}, score)
    assert checkpoints.epochs() == [stopping.best_epoch, 5] == [2, 5]
    state, meta = checkpoints.restore(2, {"w": jnp.zeros(3, jnp.float32)})
    assert meta == {"epoch": 2} and float(state["w"][0]) == 2.0
    checkpoints.close()


def test_a_run_saved_before_monitor_existed_still_resumes():
    from cnn.runs.folder import config_differences

    saved = TrainConfig(**FAST).to_dict()
    del saved["monitor"]
    assert config_differences(saved, TrainConfig(**FAST)) == []
    assert config_differences(saved, TrainConfig(**FAST, monitor="val_accuracy")) == [
        "monitor: 'val_loss' -> 'val_accuracy'"
    ]


def test_recipes_are_files_the_cli_loads_and_flags_override(tmp_path):
    from cnn.cli.main import parser
    from cnn.config import config_from_args

    assert {"main", "lecture", "vgg_bn", "vgg_bn_wide"} <= set(recipes())
    assert TrainConfig(**recipe("main")) == TrainConfig()  # the main job is the default config
    wide = config_from_args(parser().parse_args(["train", "--recipe", "vgg_bn_wide", "--epochs", "3"]))
    assert wide.model == "vgg_bn" and wide.model_args == {"widths": [64, 128, 256]} and wide.epochs == 3
    assert wide.schedule == "cosine" and wide.monitor == "val_accuracy" and wide.batch_size == 128
    lecture = config_from_args(parser().parse_args(["train", "--recipe", "lecture"]))
    assert (lecture.model, lecture.val_split, lecture.val_fraction, lecture.patience) == (
        "lecture_cnn",
        "last",
        0.25,
        20,
    )
    with pytest.raises(ConfigError, match="no recipe 'mian'"):
        recipe("mian")
    bad = tmp_path / "mine.json"
    bad.write_text(json.dumps({"description": "x", "config": {"epochs": 3, "learning_rate": 0.1}}))
    with pytest.raises(ConfigError, match="learning_rate: not a TrainConfig field"):
        recipe(str(bad))
    assert main(["train", "--recipe", str(bad), "--workdir", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_the_progress_bar_moves_on_a_terminal(idx_dir, tmp_path):
    """tqdm leaves `disable=None` on a terminal: the bar must still be drawn and advanced there."""
    import fcntl
    import os
    import pty
    import re
    import struct
    import subprocess
    import termios

    from tests.processes import ROOT, subprocess_env, train_command

    command = train_command(
        idx_dir, tmp_path / "tfds", tmp_path / "run", "--epochs", "1", "--steps-per-call", "2"
    )
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 wide
    process = subprocess.Popen(command, stdout=child, stderr=child, env=subprocess_env(), cwd=ROOT)
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=300) == 0, output.decode(errors="replace")[-2000:]
    text = output.decode(errors="replace")
    shown = [int(k) for k in re.findall(r"\| *(\d+)/15 ", text)]
    assert max(shown, default=0) >= 2 and "img_s=" in text, text[-2000:]  # the bar moves, with the rate


def test_resuming_on_data_that_changed_is_refused_naming_the_change(tmp_path, capsys):
    from tests.data.test_image_folders_and_lfw import _write_folder

    root = _write_folder(tmp_path / "photos", per_class=10)
    run = tmp_path / "run"
    args = ["train", "--dataset", str(root), "--data-dir", str(tmp_path / "tfds"), "--workdir", str(run)]
    assert main([*args, "--epochs", "1", "--batch-size", "8"]) == 0
    saved = (run / "config.json").read_text()
    _write_folder(root, per_class=14)  # 12 images more
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "holds a run trained on other data" in err and "sizes" in err and "fingerprint" in err
    (root / "emu").rename(root / "ostrich")
    assert main([*args, "--epochs", "2", "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "class_names: ['cat', 'dog', 'emu'] -> ['cat', 'dog', 'ostrich']" in err
    assert (run / "config.json").read_text() == saved and json.loads((run / "history.json").read_text())
