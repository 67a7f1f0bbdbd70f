"""Tiny versions of every experiment (200 images, 1 epoch, 2 seeds) produce their tables; `cnn sweep` too."""

from __future__ import annotations

import csv
import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn.cli.main import main
from cnn.data.transforms import shift

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
EXPECTED_ROWS = {
    "padding": ["same", "valid", "deep-same", "deep-valid"],
    "stride": ["stride1+maxpool2", "stride2-conv", "stride3-conv"],
    "pooling": ["max", "avg", "none", "strided_conv", "depthwise_max", "max+global_avg_head"],
    "mlp_vs_cnn": ["seed_cnn", "mlp-420", "mlp-300-100", "lenet5"],
    "shift_robustness": ["max", "avg", "strided_conv", "none"],
    "equivariance": [
        "plain",
        "plain_rotated",
        "extra_conv_rotated",
        "depthwise_max_rotated",
        "depthwise_avg_rotated",
    ],
}
SEEDS = {"equivariance": 1}  # its five networks train one seed each here, to keep the suite short
FEATURE_MAPS = {
    ("padding", "valid"): "5×5×64",
    ("padding", "deep-valid"): "4×4×64",
    ("stride", "stride3-conv"): "4×4×64",
    ("pooling", "none"): "28×28×64",
    ("pooling", "depthwise_max"): "28×28×32",
    ("equivariance", "depthwise_avg_rotated"): "7×7×64",
    ("mlp_vs_cnn", "mlp-420"): "none",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_tiny_experiment_produces_its_table(name, idx_dir, tmp_path, monkeypatch):
    out = tmp_path / name
    argv = [
        f"{name}.py",
        "--epochs",
        "1",
        "--seeds",
        str(SEEDS.get(name, 2)),
        "--limit-train",
        "200",
        "--out",
        str(out),
        "--source-dir",
        str(idx_dir),
        "--data-dir",
        str(tmp_path / "tfds"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXPERIMENTS / f"{name}.py"), run_name="__main__")
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == EXPECTED_ROWS[name]
    assert set(rows[0]) >= {
        "params",
        "macs",
        "feature_map",
        "test_accuracy_mean",
        "test_accuracy_std",
        "val_accuracy_mean",
        "epochs_mean",
        "train_seconds",
        "images_per_second",
    }
    for r in rows:
        assert r["error"] == "" and r["seeds_finished"] == str(SEEDS.get(name, 2))
        for key in ("test_accuracy_mean", "test_accuracy_std", "val_accuracy_mean", "train_seconds"):
            assert math.isfinite(float(r[key])), (r["variant"], key)
        assert 0 <= float(r["test_accuracy_mean"]) <= 1
        if (name, r["variant"]) in FEATURE_MAPS:
            assert r["feature_map"] == FEATURE_MAPS[(name, r["variant"])]
    assert (out / "accuracy_vs_params.png").is_file() and (out / "results.md").is_file()
    if name == "shift_robustness":
        curves = json.loads((out / "shift_accuracy.json").read_text())
        assert set(curves) == set(EXPECTED_ROWS[name])
        assert all(np.array(c).shape == (2, 5) for c in curves.values())
        assert (out / "shift_accuracy.png").is_file() and "shift 4" in (out / "shift_accuracy.md").read_text()
    if name == "equivariance":
        found = json.loads((out / "equivariance.json").read_text())
        conv, pool = found["equivariance"]["block1_conv"], found["equivariance"]["block1_pool"]
        assert all(conv[f"shift {k}"] == 0.0 for k in (1, 2, 3, 4))  # exact, away from the border
        assert pool["shift 2"] == pool["shift 4"] == 0.0 and pool["shift 1"] > 0.0
        assert conv["rotate 30°"] > 0.01 and conv["zoom 1.25"] > 0.01
        assert all(np.array(c).shape == (1, 7) for c in found["rotated_accuracy"].values())
        assert (out / "rotated_accuracy.png").is_file() and "180°" in (
            out / "rotated_accuracy.md"
        ).read_text()


def test_sweep_command_on_a_user_grid(idx_dir, tmp_path, capsys):
    code = main(
        [
            "sweep",
            "--grid",
            "lr=[0.001,0.003]",
            "--grid",
            "model_args.dropout_rate=[0.2,0.5]",
            "--zip",
            "--base",
            '{"epochs": 1, "limit_train": 128}',
            "--seeds",
            "2",
            "--out",
            str(tmp_path / "s"),
            "--source-dir",
            str(idx_dir),
            "--data-dir",
            str(tmp_path / "tfds"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "s" / "results.json").read_text())
    assert [r["variant"] for r in rows] == [
        "lr=0.001,model_args.dropout_rate=0.2",
        "lr=0.003,model_args.dropout_rate=0.5",
    ]
    assert all(r["seeds_finished"] == 2 for r in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "lr"], "expected FIELD=JSON_LIST"),
        (["--grid", "lr=[0.1,"], "is not a JSON list"),
        (["--grid", "optimiser=[1]"], "optimiser: unknown field"),
        (["--grid", "optimizer=[1]"], "optimizer: 1 is an int, expected str"),
        (["--grid", "lr=[]"], "lr: expected a non-empty list"),
        (["--grid", "batch_size=[32.5]"], "batch_size: 32.5 is a float, expected int"),
        ([], "give at least one"),
    ],
)
def test_sweep_command_rejects_bad_grids_before_training(args, message, tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "s"), *args]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_shift_moves_and_zero_fills():
    images = np.arange(2 * 4 * 4).reshape(2, 4, 4, 1).astype(np.float32) + 1
    down = shift(images, 1, 0)
    np.testing.assert_array_equal(down[:, 1:], images[:, :-1])
    assert (down[:, 0] == 0).all()
    left = shift(images, 0, -2)
    np.testing.assert_array_equal(left[:, :, :2], images[:, :, 2:])
    assert (left[:, :, 2:] == 0).all()
    np.testing.assert_array_equal(shift(images, 0, 0), images)


def test_the_experiments_command_runs_scripts_in_one_process_and_exits_6_when_runs_failed(
    idx_dir, tmp_path, monkeypatch, capsys
):
    import types

    from cnn.errors import EXIT_RUNS_FAILED
    from cnn.studies import scripts as experiments
    from cnn.studies.grid import Variant

    def fake(name: str, batch_size: int) -> types.ModuleType:
        def run(argv):
            args = experiments.experiment_parser(name).parse_args(argv)
            experiments.run_experiment(name, [Variant(f"bs{batch_size}", {"batch_size": batch_size})], args)

        return types.SimpleNamespace(main=run)

    scripts = {"fine": fake("fine", 32), "too_big": fake("too_big", 4096)}
    monkeypatch.setattr(experiments, "script", scripts.__getitem__)
    data = ["--source-dir", str(idx_dir), "--data-dir", str(tmp_path / "tfds")]
    flags = ["--epochs", "1", "--seeds", "1", "--limit-train", "64", "--together", "sequential"]
    code = main(["experiments", "too_big", "fine", *flags, *data, "--out", str(tmp_path / "e")])
    captured = capsys.readouterr()
    assert code == EXIT_RUNS_FAILED  # the failure is named, and the next experiment still ran
    assert captured.err.startswith("error: runs failed in too_big: 1 of 1 variant(s) failed: bs4096")
    assert (tmp_path / "e" / "fine" / "bs32" / "seed0" / "results.json").is_file()
    assert "fine: " in captured.out and "compilations" in captured.out


@pytest.mark.slow
def test_a_script_given_bad_input_says_so_in_one_line_and_exits_2():
    from tests.processes import run_process

    done = run_process([sys.executable, str(EXPERIMENTS / "padding.py"), "--seeds", "0"], timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: seeds: expected at least 1, got 0"


def test_a_script_stopped_by_a_signal_says_where_its_epochs_are_and_exits_143(tmp_path, capsys):
    import signal

    from cnn.cli.main import run_script
    from cnn.errors import Interrupted

    def stopped() -> None:
        raise Interrupted(signal.SIGTERM, 3, tmp_path / "strong" / "seed0")

    with pytest.raises(SystemExit) as e:
        run_script(stopped)
    assert e.value.code == 143
    where = tmp_path / "strong" / "seed0"
    expected = f"SIGTERM: stopped after epoch 3, saved in {where}; run the same command again to resume"
    assert capsys.readouterr().err.strip() == expected
