"""The one training engine: seeds trained together (vmapped) get the NaN guard, `steps_per_call`, signals
and checkpoints of the single-run loop; the CLI tells a failure while running from a bad setting."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn.cli.main
import cnn.config
import cnn.train
from cnn import TrainConfig, fit, restore_run
from cnn.cli.main import main
from cnn.errors import EXIT_BAD_INPUT, EXIT_RUNTIME, TrainingDiverged
from cnn.runs.checkpoints import Checkpoints
from cnn.studies.grid import Variant
from cnn.studies.sweep import run_sweep
from cnn.train import fit_seeds
from tests.processes import ROOT, subprocess_env

TIMING = (
    "train_seconds",
    "compile_seconds",
    "compilations",
    "compile_cache_hits",
    "images_per_second",
    "group_images_per_second",
)


def test_a_diverging_vmapped_variant_is_stopped_named_and_recorded(tiny_splits, tmp_path, capsys):
    variants = [Variant("exploding", {"lr": 1e30}), Variant("fine", {"lr": 1e-3})]
    base = {"epochs": 2, "limit_train": 128, "steps_per_call": 2}
    rows = run_sweep(base, variants, [0, 1], tiny_splits, tmp_path, together="vmap")
    error = json.loads((tmp_path / "exploding" / "error.json").read_text())["error"]
    assert error.startswith("TrainingDiverged") and "seed 0" in error and "epoch 1, step 2 of 4" in error
    for seed in (0, 1):  # nothing of the diverged epoch was saved
        assert Checkpoints(tmp_path / "exploding" / f"seed{seed}" / "checkpoints").epochs() == []
        assert not (tmp_path / "exploding" / f"seed{seed}" / "history.json").exists()
    by_name = {r["variant"]: r for r in rows}
    assert by_name["fine"]["seeds_finished"] == 2 and by_name["exploding"]["seeds_finished"] == 0
    assert not (tmp_path / "fine" / "error.json").exists()
    out = capsys.readouterr().out  # the two learning rates trained as one program until one diverged
    assert "[exploding, fine] FAILED together (TrainingDiverged); each variant on its own" in out
    json.loads((tmp_path / "results.json").read_text())  # strictly valid JSON (no NaN) even then


def test_fit_seeds_raises_naming_the_seed(tiny_splits, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"seed 3: a NaN or Inf .* epoch 1, step 2 of 4"):
        fit_seeds(TrainConfig(epochs=1, limit_train=128, lr=1e30), [3, 4], tiny_splits, tmp_path)


def test_runs_trained_together_are_named_by_what_differs():
    from cnn.engine.vmap import run_labels

    assert run_labels([TrainConfig(seed=3), TrainConfig(seed=4)]) == ["seed 3", "seed 4"]
    mixed = [TrainConfig(lr=1e30, seed=0), TrainConfig(lr=1e-3, seed=0), TrainConfig(lr=1e-3, seed=1)]
    assert run_labels(mixed) == ["lr 1e+30, seed 0", "lr 0.001, seed 0", "lr 0.001, seed 1"]


def test_vmapped_seeds_honour_steps_per_call_and_time_compilation(tiny_splits, tmp_path):
    jax.clear_caches()  # the programs compile here, not found in memory from another module's tests
    config = TrainConfig(epochs=2, limit_train=128, patience=5)
    chunked = fit_seeds(
        TrainConfig(**{**config.to_dict(), "steps_per_call": 4}), [0, 1], tiny_splits, tmp_path / "c"
    )
    plain = fit_seeds(
        TrainConfig(**{**config.to_dict(), "steps_per_call": 1}), [0, 1], tiny_splits, tmp_path / "p"
    )
    for c, p in zip(chunked, plain, strict=True):
        assert c["compile_seconds"] > 0 and c["steps"] == p["steps"] == 8
        assert c["test_loss"] == pytest.approx(p["test_loss"], rel=1e-4)
    calls = []
    original = cnn.train.run_call

    def counting(state, data, order, rng, live, call, members, mesh):
        calls.append((call.steps, members.count))
        return original(state, data, order, rng, live, call, members, mesh)

    cnn.train.run_call = counting
    try:
        fit_seeds(
            TrainConfig(**{**config.to_dict(), "steps_per_call": 4}), [0, 1], tiny_splits, tmp_path / "n"
        )
    finally:
        cnn.train.run_call = original
    assert calls == [(4, 2), (4, 2)]  # 4 steps an epoch in one call for both seeds, two epochs


SWEEP = ["--grid", "lr=[0.001]", "--seeds", "2", "--together", "vmap", "--base"]
BASE = '{"epochs": 3, "patience": 10, "limit_train": 320}'


def _sweep(idx_dir, data_dir, out, prelude=""):
    args = [
        "sweep",
        *SWEEP,
        BASE,
        "--out",
        str(out),
        "--source-dir",
        str(idx_dir),
        "--data-dir",
        str(data_dir),
    ]
    code = f"{prelude}\nfrom cnn.cli.main import end_process, main\nend_process(main({args!r}))"
    return [sys.executable, "-c", code]


def _outcome(out: Path) -> list:
    runs = sorted((out / "lr=0.001").glob("seed*"))
    return [
        (
            json.loads((r / "history.json").read_text()),
            {k: v for k, v in json.loads((r / "results.json").read_text()).items() if k not in TIMING},
        )
        for r in runs
    ]


@pytest.mark.slow
def test_sigterm_during_a_vmapped_sweep_saves_exits_143_and_resumes_to_the_same_histories(
    idx_dir, prepared, tmp_path
):
    done = subprocess.run(
        _sweep(idx_dir, prepared, tmp_path / "ref"),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    slow = (
        "import time, cnn.train\n_e = cnn.train.train_epoch\n"
        "cnn.train.train_epoch = lambda *a, **k: (time.sleep(0.7), _e(*a, **k))[1]"
    )
    out = tmp_path / "killed"
    process = subprocess.Popen(
        _sweep(idx_dir, prepared, out, slow),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
    )
    history = out / "lr=0.001" / "seed1" / "history.json"
    deadline = time.monotonic() + 180
    while not history.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 143, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert len(json.loads(history.read_text())) < 3
    resumed = subprocess.run(
        _sweep(idx_dir, prepared, out),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
        timeout=300,
    )
    assert resumed.returncode == 0 and "Resuming" in resumed.stdout, resumed.stderr
    assert _outcome(out) == _outcome(tmp_path / "ref")


def test_an_xla_failure_mid_run_is_reported_with_its_epoch_and_its_own_exit_code(
    idx_dir, tmp_path, capsys, monkeypatch
):
    original = cnn.train.train_epoch

    def out_of_memory_in_epoch_2(state, data, config, plan, epochs, *args):
        if max(epochs) == 2:
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.9GiB"
            )
        return original(state, data, config, plan, epochs, *args)

    monkeypatch.setattr(cnn.train, "train_epoch", out_of_memory_in_epoch_2)
    argv = ["train", "--epochs", "3", "--limit-train", "64", "--source-dir", str(idx_dir)]
    argv += ["--data-dir", str(tmp_path / "tfds"), "--workdir", str(tmp_path / "run")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_RUNTIME != EXIT_BAD_INPUT
    assert "out of memory in epoch 2" in err and "lower --batch-size" in err and "Traceback" not in err
    assert Checkpoints(tmp_path / "run" / "checkpoints").epochs() == [1]  # epoch 1 kept


def test_train_help_lists_every_config_field(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        if not f.metadata.get("derived"):
            assert f"--{f.name.replace('_', '-')}" in text, f.name
    assert "4  XLA failed while running" in text


def test_fields_only_the_config_knew_are_settable_from_the_command_line():
    args = cnn.cli.main.parser().parse_args(
        [
            "train",
            "--val-fraction",
            "0.25",
            "--split-seed",
            "7",
            "--eval-batch-size",
            "500",
            "--image-size",
            "32",
            "32",
        ]
    )
    config = cnn.config.config_from_args(args)
    assert (config.val_fraction, config.split_seed, config.eval_batch_size) == (0.25, 7, 500)
    assert config.image_size == (32, 32)


def test_streaming_from_the_host_gives_the_device_paths_history(tiny_splits, tmp_path, capsys):
    histories = {}
    for placement in ("device", "host"):
        config = TrainConfig(epochs=2, limit_train=168, steps_per_call=2, data_placement=placement)
        fit(config, tiny_splits, tmp_path / placement)  # 168 = 5 full batches and one of 8: every path
        histories[placement] = json.loads((tmp_path / placement / "history.json").read_text())
    assert "Streaming the training images from the host" in capsys.readouterr().out
    for d, h in zip(histories["device"], histories["host"], strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert h[key] == pytest.approx(d[key], rel=1e-6), key


def test_seeds_together_refuse_host_streaming(tiny_splits, tmp_path):
    with pytest.raises(ValueError, match="together sequential"):
        fit_seeds(TrainConfig(epochs=1, limit_train=64, data_placement="host"), [0, 1], tiny_splits, tmp_path)


def test_an_epoch_as_one_rolled_call_gives_the_chunked_history(tiny_splits, tmp_path):
    """epoch_loop=scan (the accelerators' default: every full batch of an epoch in one compiled call, a
    rolled loop) trains the same steps as the CPU's unrolled chunks, alone and with seeds together."""
    from cnn.engine.epochs import rolled_epoch

    histories = {}
    for loop in ("chunks", "scan"):  # 168 = 5 full batches of 32 and one of 8
        config = TrainConfig(epochs=1, limit_train=168, steps_per_call=2, epoch_loop=loop)
        fit(config, tiny_splits, tmp_path / loop)
        fit_seeds(config, [1, 2], tiny_splits, tmp_path / f"{loop}-seeds")
        histories[loop] = [
            json.loads((tmp_path / name / "history.json").read_text())
            for name in (loop, f"{loop}-seeds/seed1", f"{loop}-seeds/seed2")
        ]
    for chunked, rolled in zip(histories["chunks"], histories["scan"], strict=True):
        for c, r in zip(chunked, rolled, strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert r[key] == pytest.approx(c[key], rel=1e-4), key  # float rounding of fusion
    assert rolled_epoch(TrainConfig(epoch_loop="scan"), None)
    assert not rolled_epoch(TrainConfig(), None)  # auto on the CPU: chunks


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters(tiny_splits, tmp_path):
    from cnn.data.spec import FASHION_MNIST
    from cnn.engine.state import apply_model, initial_state

    config = TrainConfig(epochs=2, limit_train=128, precision="bfloat16", model="vgg_bn")
    state = initial_state(config, FASHION_MNIST)
    images = tiny_splits.test.images[:16]
    jaxpr = str(jax.make_jaxpr(lambda s: apply_model(s, images, train=False))(state))
    convolutions = [line for line in jaxpr.splitlines() if "conv_general_dilated" in line]
    assert convolutions and all("bf16" in line for line in convolutions)  # the compute is bfloat16
    full = apply_model(state.replace(compute_dtype="float32"), images, train=False)
    half = apply_model(state, images, train=False)
    assert half.dtype == jnp.float32 and np.allclose(half, full, rtol=0.05, atol=0.05)
    config = TrainConfig(epochs=2, limit_train=128, precision="bfloat16")  # trained: the seed CNN (fast)
    results = fit(config, tiny_splits, tmp_path / "bf16")
    _, restored, _ = restore_run(tmp_path / "bf16")
    assert restored.compute_dtype == "bfloat16" and np.isfinite(results["test_loss"])
    leaves = jax.tree.leaves((restored.params, restored.opt_state, restored.batch_stats))
    assert all(leaf.dtype in (jnp.float32, jnp.int32) for leaf in leaves if hasattr(leaf, "dtype"))


def test_runs_differing_in_learning_rate_and_weight_decay_train_as_one_program(tiny_splits, tmp_path):
    """Many models in one program: the learning rate and weight decay traced in the optimizer state, each
    run equal to the same run alone within 1e-5, with its own early stopping."""
    from cnn import fit_together

    base = TrainConfig(epochs=3, limit_train=128, schedule="cosine", patience=1)
    configs = [
        dataclasses.replace(base, lr=1e-3, seed=0),
        dataclasses.replace(base, lr=3e-3, seed=0),
        dataclasses.replace(base, lr=1e-3, weight_decay=1e-2, seed=1),
    ]
    together = fit_together(configs, tiny_splits, [tmp_path / "together" / f"m{i}" for i in range(3)])
    for i, c in enumerate(configs):
        alone = fit(c, tiny_splits, tmp_path / "alone" / f"m{i}")
        h_alone = json.loads((tmp_path / "alone" / f"m{i}" / "history.json").read_text())
        h_together = json.loads((tmp_path / "together" / f"m{i}" / "history.json").read_text())
        assert len(h_alone) == len(h_together)  # the same epochs, early stopping included
        for a, t in zip(h_alone, h_together, strict=True):
            for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
                assert t[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (i, key)
        assert together[i]["test_accuracy"] == pytest.approx(alone["test_accuracy"], abs=1e-6)
    with pytest.raises(ValueError, match="these differ: batch_size"):
        other = dataclasses.replace(base, batch_size=16)
        fit_together([base, other], tiny_splits, [tmp_path / "a", tmp_path / "b"])
