"""Sweeps: vmapped seeds equal sequential runs, skipping and resuming, failures recorded, grids validated."""

from __future__ import annotations

import csv
import json

import jax
import numpy as np
import pytest

from cnn import TrainConfig, fit
from cnn import train as train_module
from cnn.data.spec import FASHION_MNIST, Split, Splits
from cnn.errors import SweepError
from cnn.runs.results import restore_run
from cnn.studies import sweep as sweep_module  # noqa: F401
from cnn.studies.grid import Variant, grid_variants, resolve
from cnn.studies.sweep import run_sweep
from cnn.train import fit_seeds


def _small(splits: Splits, misleading: bool = False) -> Splits:
    train = Split(splits.train.images[:256], splits.train.labels[:256])
    labels = (splits.val.labels + 1) % 10 if misleading else splits.val.labels
    return Splits(train=train, val=Split(splits.val.images, labels), test=splits.test)


@pytest.mark.parametrize("misleading", [False, True], ids=["plain", "early-stopping"])
def test_vmapped_seeds_equal_sequential_runs(tiny_splits, tmp_path, misleading):
    splits = _small(tiny_splits, misleading)
    config = TrainConfig(epochs=4 if misleading else 2, batch_size=32, patience=1)
    fit_seeds(config, [0, 1, 2], splits, tmp_path / "vmapped")
    for seed in (0, 1, 2):
        sequential = fit(TrainConfig(**{**config.to_dict(), "seed": seed}), splits, tmp_path / f"seq{seed}")
        together = json.loads((tmp_path / "vmapped" / f"seed{seed}" / "results.json").read_text())
        assert together["epochs_run"] == sequential["epochs_run"]
        assert together["best_epoch"] == sequential["best_epoch"]
        h_vmap = json.loads((tmp_path / "vmapped" / f"seed{seed}" / "history.json").read_text())
        h_seq = json.loads((tmp_path / f"seq{seed}" / "history.json").read_text())
        for a, b in zip(h_vmap, h_seq, strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                # 1e-3: vmapped convolutions are grouped convolutions, rounded otherwise, and Adam's first
                # steps amplify the difference: on AMD EPYC seed 1's epoch-2 val_loss is 0.29402 vs 0.29413
                # (the same at 87cde3a); a run with another seed's shuffling or dropout is off by far more
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-6), (seed, a["epoch"], key)
        _, state_v, _ = restore_run(tmp_path / "vmapped" / f"seed{seed}")
        _, state_s, _ = restore_run(tmp_path / f"seq{seed}")
        for a, b in zip(jax.tree.leaves(state_v.params), jax.tree.leaves(state_s.params), strict=True):
            # as a whole: one weight of 32 whose Adam step went the other way differs by 5 % (AMD EPYC)
            assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b)
    if misleading:  # early stopping acted per seed inside the vmapped group
        assert all(
            json.loads((tmp_path / "vmapped" / f"seed{s}" / "results.json").read_text())["stopped_early"]
            for s in (0, 1, 2)
        )


VARIANTS = [Variant("bs16", {"batch_size": 16}), Variant("bs32", {"batch_size": 32})]
BASE = {"epochs": 2, "patience": 5, "limit_train": 128, "steps_per_call": 10}  # an epoch: one call


@pytest.mark.parametrize("together", ["vmap", "sequential"])
def test_sweep_tables_plots_and_run_directories(tiny_splits, tmp_path, together):
    rows = run_sweep(BASE, VARIANTS, [0, 1], tiny_splits, tmp_path, together=together)
    assert [r["variant"] for r in rows] == ["bs16", "bs32"]
    for r in rows:
        assert r["seeds_finished"] == 2 and r["params"] == 333_526 and r["feature_map"] == "7×7×64"
        assert (
            0 < r["test_accuracy_mean"] <= 1 and np.isfinite(r["test_accuracy_std"]) and r["epochs_mean"] == 2
        )
        assert r["macs"] > 0 and r["images_per_second"] > 0 and len(r["val_curve"]) == 2
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["variant"] for t in table] == ["bs16", "bs32"] and "test_accuracy_std" in table[0]
    assert "± " in (tmp_path / "results.md").read_text()
    for name in ("accuracy_vs_params.png", "accuracy_vs_macs.png", "val_curves.png"):
        assert (tmp_path / name).stat().st_size > 5000
    config = json.loads((tmp_path / "bs16" / "seed1" / "config.json").read_text())["config"]
    assert config["batch_size"] == 16 and config["seed"] == 1


def test_interrupted_sweep_resumes_without_redoing_finished_runs(tiny_splits, tmp_path, monkeypatch, capsys):
    original, calls = train_module.run_call, {"n": 0}

    def dies_in_the_second_variant(state, data, order, rng, live, call, *args):
        calls["n"] += call.batch == 32
        if calls["n"] > 1:  # the second variant (batch 32: 4 steps, one call an epoch) dies in epoch 2
            raise KeyboardInterrupt
        return original(state, data, order, rng, live, call, *args)

    monkeypatch.setattr(train_module, "run_call", dies_in_the_second_variant)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(BASE, VARIANTS, [0, 1], tiny_splits, tmp_path, together="vmap")
    finished = (tmp_path / "bs16" / "seed0" / "results.json").stat().st_mtime_ns
    monkeypatch.setattr(train_module, "run_call", original)
    capsys.readouterr()
    rows = run_sweep(BASE, VARIANTS, [0, 1], tiny_splits, tmp_path, together="vmap")
    out = capsys.readouterr().out
    assert "[bs16] finished before: skipped" in out and "Resuming" in out and "after epoch 1" in out
    assert (tmp_path / "bs16" / "seed0" / "results.json").stat().st_mtime_ns == finished
    assert all(r["seeds_finished"] == 2 for r in rows)
    history = json.loads((tmp_path / "bs32" / "seed1" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_a_run_failing_after_a_signal_stops_the_sweep_instead_of_going_on(tiny_splits, tmp_path, monkeypatch):
    import signal

    from cnn.errors import Interrupted

    def signalled_then_fails(*args):
        signal.raise_signal(signal.SIGTERM)  # asked to stop, then the run fails before its epoch ends
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(train_module, "run_call", signalled_then_fails)
    with pytest.raises(Interrupted, match=r"^SIGTERM: stopped \(bs16 failed meanwhile\), saved in ") as e:
        run_sweep(BASE, VARIANTS, [0, 1], tiny_splits, tmp_path, together="sequential")
    assert e.value.exit_code == 143
    assert "the disk went away" in json.loads((tmp_path / "bs16" / "error.json").read_text())["error"]
    assert not (tmp_path / "bs16" / "seed1").exists() and not (tmp_path / "bs32").exists()  # nothing after


def test_a_failing_variant_is_recorded_and_the_sweep_goes_on(tiny_splits, tmp_path):
    variants = [Variant("too-big", {"batch_size": 4096}), Variant("fine", {"batch_size": 32})]
    rows = run_sweep(BASE, variants, [0], tiny_splits, tmp_path)
    error = json.loads((tmp_path / "too-big" / "error.json").read_text())
    assert "batch_size: 4096 is larger than the 128 training examples" in error["error"]
    assert rows[0]["seeds_finished"] == 0 and rows[0]["error"] and rows[1]["seeds_finished"] == 1
    assert "(failed)" in (tmp_path / "results.md").read_text()


def test_grids():
    product = grid_variants({"lr": [1e-3, 1e-2], "batch_size": [32, 128]})
    assert [v.overrides for v in product] == [
        {"lr": 1e-3, "batch_size": 32},
        {"lr": 1e-3, "batch_size": 128},
        {"lr": 1e-2, "batch_size": 32},
        {"lr": 1e-2, "batch_size": 128},
    ]
    zipped = grid_variants({"lr": [1e-3, 1e-2], "model_args.dropout_rate": [0.2, 0.5]}, mode="zip")
    assert [v.overrides for v in zipped] == [
        {"lr": 1e-3, "model_args": {"dropout_rate": 0.2}},
        {"lr": 1e-2, "model_args": {"dropout_rate": 0.5}},
    ]
    assert zipped[0].name == "lr=0.001,model_args.dropout_rate=0.2"


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"learning_rate": [0.1]}, "learning_rate: unknown field"),
        ({"lr": []}, "lr: expected a non-empty list"),
        ({"batch_size": [32, "64"]}, "batch_size: '64' is a str, expected int"),
        ({"epochs": [2.5]}, "epochs: 2.5 is a float, expected int"),
        ({"model_args.dropout_rate": [1.5]}, "dropout_rate"),
        ({"model_args.hiden": [[10]]}, "does not take"),
    ],
)
def test_invalid_grids_fail_before_any_training(grid, message, tiny_splits, tmp_path):
    with pytest.raises(SweepError, match=message):
        variants = grid_variants(grid)
        base = {"model": "mlp"} if "hiden" in str(grid) else {"model": "convnet"}
        run_sweep(base, variants, [0], tiny_splits, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_base_config_is_validated_too():
    with pytest.raises(SweepError, match="lr: 'fast' is a str"):
        resolve({"lr": "fast"}, [Variant("a", {})])
    with pytest.raises(SweepError, match="two variants share a name"):
        resolve({}, [Variant("a", {}), Variant("a", {"lr": 0.1})])


def test_together_mode_is_measured_and_said(monkeypatch, capsys):
    config, spec = TrainConfig(), FASHION_MNIST
    assert sweep_module.seeds_mode("auto", config, spec, 1) == "sequential"  # one run: nothing to share
    assert sweep_module.seeds_mode("vmap_matmul", config, spec, 3) == "vmap_matmul"  # as asked
    measured = {"vmap": 900.0, "vmap_matmul": 1500.0, "sequential": 1000.0}
    monkeypatch.setattr(sweep_module, "choose", lambda c, s, n: (max(measured, key=measured.get), measured))
    assert sweep_module.seeds_mode("auto", config, spec, 3) == "vmap_matmul"
    assert (
        "3 runs of seed_cnn at batch 32: vmap_matmul (measured img/s: vmap_matmul 1,500"
        in capsys.readouterr().out
    )
    with pytest.raises(SweepError, match="together: expected one of"):
        sweep_module.seeds_mode("parallel", config, spec, 3)


def test_the_measurement_is_made_once_per_machine_and_network(monkeypatch, tmp_path):
    from cnn.engine import compile_cache
    from cnn.studies import grouping as together

    calls = []
    monkeypatch.setattr(compile_cache, "measurements_file", lambda name: tmp_path / f"{name}.json")

    def measure(config, spec, runs, mode, steps=8):
        calls.append(mode)
        return {"vmap": 3.0, "vmap_matmul": 2.0, "sequential": 1.0}[mode]

    monkeypatch.setattr(together, "images_per_second", measure)
    config = TrainConfig(model="lenet5", batch_size=48)
    assert together.choose(config, FASHION_MNIST, 5)[0] == "vmap" and sorted(calls) == sorted(together.MODES)
    assert together.choose(config, FASHION_MNIST, 5)[0] == "vmap" and len(calls) == 3  # remembered
    together.choose(config, FASHION_MNIST, 6)
    assert len(calls) == 6  # another number of runs: measured again
    together.choose(TrainConfig(model="seed_cnn", batch_size=48), FASHION_MNIST, 6)
    assert len(calls) == 6  # another network of the same input and batch: the answer is shared


def test_the_three_ways_of_training_runs_together_are_measured(tiny_splits):
    from cnn.studies import grouping as together

    for mode in together.MODES:
        assert together.images_per_second(TrainConfig(batch_size=8), tiny_splits.spec, 2, mode, steps=2) > 0


def test_learning_rate_variants_train_as_one_program_with_their_seeds(tiny_splits, tmp_path, capsys):
    variants = [
        Variant("slow", {"lr": 1e-3}),
        Variant("fast", {"lr": 3e-3}),
        Variant("bs16", {"batch_size": 16}),
    ]
    rows = run_sweep(
        {"epochs": 1, "limit_train": 64}, variants, [0, 1], tiny_splits, tmp_path, together="vmap"
    )
    out = capsys.readouterr().out
    assert "[slow, fast] training 4 run(s) (vmap)" in out and "[bs16] training 2 run(s) (vmap)" in out
    assert all(r["seeds_finished"] == 2 for r in rows)
    assert json.loads((tmp_path / "fast" / "seed1" / "config.json").read_text())["config"]["lr"] == 3e-3


def test_a_second_sweep_into_the_same_folder_keeps_the_first_ones_rows(tiny_splits, tmp_path):
    base = {"epochs": 1, "limit_train": 64}
    run_sweep(base, [Variant("bs16", {"batch_size": 16})], [0], tiny_splits, tmp_path, together="sequential")
    rows = run_sweep(
        base, [Variant("bs32", {"batch_size": 32})], [0], tiny_splits, tmp_path, together="sequential"
    )
    assert [r["variant"] for r in rows] == ["bs32", "bs16"]  # this sweep's, then the earlier ones
    table = (tmp_path / "results.md").read_text()
    assert "| bs16 |" in table and "| bs32 |" in table
    assert [r["variant"] for r in json.loads((tmp_path / "results.json").read_text())] == ["bs32", "bs16"]
    # the same variant name under another base: its finished run is not this sweep's, refused before training
    before = (tmp_path / "results.md").read_text()
    refused = r"bs32/seed0 holds a run of another config or data \(lr: 0.001 -> 0.01"
    with pytest.raises(SweepError, match=refused):
        run_sweep({**base, "lr": 0.01}, [Variant("bs32", {"batch_size": 32})], [0], tiny_splits, tmp_path)
    assert (tmp_path / "results.md").read_text() == before


def test_a_sweep_with_a_failed_variant_exits_non_zero_keeping_the_others(idx_dir, tmp_path, capsys):
    from cnn.cli.main import main
    from cnn.errors import EXIT_RUNS_FAILED

    data = ["--source-dir", str(idx_dir), "--data-dir", str(tmp_path / "tfds")]
    args = ["--grid", "batch_size=[4096,32]", "--seeds", "1", "--base", '{"epochs": 1, "limit_train": 128}']
    assert main(["sweep", *args, *data, "--out", str(tmp_path / "s")]) == EXIT_RUNS_FAILED
    err = capsys.readouterr().err
    assert err.startswith("error: 1 of 2 variant(s) failed: batch_size=4096 (ValueError: batch_size: 4096")
    assert err.count("\n") == 1
    assert (tmp_path / "s" / "batch_size=32" / "seed0" / "results.json").is_file()
    assert "| batch_size=32 |" in (tmp_path / "s" / "results.md").read_text()
