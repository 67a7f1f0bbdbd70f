"""Scale and reliability: a device mesh (8 simulated CPU devices), crash-safe resume after SIGKILL at
several moments, SIGTERM/SIGINT, damaged checkpoints, the NaN guard, and validated inputs and flags."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnn import TrainConfig, fit
from cnn.cli.main import main
from cnn.data.spec import FASHION_MNIST, Split, Splits
from cnn.engine.evaluation import check_images, check_labels, evaluate, predict
from cnn.engine.state import initial_state, run_keys
from cnn.errors import ArchitectureError, CheckpointDamaged, ConfigMismatch, InputError, TrainingDiverged
from cnn.models.convnet import ConvBlock, ConvNet, convnet, convnet_shapes
from cnn.runs.checkpoints import Checkpoints
from cnn.runs.results import restore_run
from tests.processes import ROOT, run_process, start_process, subprocess_env, train_command

# Timing fields differ between any two runs; every other number of results.json must be identical.
TIMING = {"train_seconds", "compile_seconds", "compilations", "compile_cache_hits", "images_per_second"}
SMALL = [
    "--epochs",
    "3",
    "--patience",
    "10",
    "--limit-train",
    "320",
    "--batch-size",
    "32",
    "--steps-per-call",
    "1",
]


def _outcome(workdir: Path) -> tuple[list, dict]:
    results = json.loads((workdir / "results.json").read_text())
    return json.loads((workdir / "history.json").read_text()), {
        k: v for k, v in results.items() if k not in TIMING
    }


@pytest.fixture(scope="module")
def reference(idx_dir, prepared, tmp_path_factory) -> tuple[list, dict]:
    """An uninterrupted run of the small configuration, through the CLI in its own process."""
    workdir = tmp_path_factory.mktemp("reference")
    done = run_process(train_command(idx_dir, prepared, workdir, *SMALL))
    assert done.returncode == 0, done.stderr
    return _outcome(workdir)


# ----------------------------------------------------------------------------------------- crash safety
KILL_DURING_SAVE = """
import os, signal
from orbax.checkpoint._src.path import atomicity
_finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self, *args, **kwargs):
    if self._final_path.name == "{epoch}":  # the epoch's checkpoint is written but not yet committed
        os.kill(os.getpid(), signal.SIGKILL)
    return await _finalize(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
"""
KILL_BEFORE_HISTORY = """
import os, signal
import cnn.runs.folder
_write = cnn.runs.folder.write_json
def write_json(path, value):
    if path.name == "history.json" and len(value) == {epoch}:  # checkpoint saved, history not yet written
        os.kill(os.getpid(), signal.SIGKILL)
    return _write(path, value)
cnn.runs.folder.write_json = write_json
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "prelude",
    [KILL_DURING_SAVE.format(epoch=2), KILL_BEFORE_HISTORY.format(epoch=3), KILL_DURING_SAVE.format(epoch=1)],
    ids=["during-save-of-epoch-2", "after-last-checkpoint-before-history", "during-first-save"],
)
def test_sigkill_at_a_fixed_point_then_resume_gives_identical_results(
    idx_dir, prepared, reference, tmp_path, prelude
):
    killed = run_process(train_command(idx_dir, prepared, tmp_path, *SMALL, prelude=prelude))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "results.json").exists()
    resumed = run_process(train_command(idx_dir, prepared, tmp_path, *SMALL))
    assert resumed.returncode == 0, resumed.stderr
    assert _outcome(tmp_path) == reference


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_identical_results(
    idx_dir, prepared, reference, tmp_path
):
    rng = np.random.default_rng(0)
    command = train_command(idx_dir, prepared, tmp_path, *SMALL)
    kills = 0
    for _ in range(3):  # a kill after a random delay once the first epoch is done; then once more
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env(), cwd=ROOT
        )
        deadline = time.monotonic() + 120
        while (
            not (tmp_path / "history.json").exists()
            and process.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=120)
        if (tmp_path / "results.json").exists():
            break
    finished = run_process(command)
    assert finished.returncode == 0, finished.stderr
    assert kills >= 1 and _outcome(tmp_path) == reference


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_save_then_exit_with_the_documented_code(
    idx_dir, prepared, reference, tmp_path, sig, code
):
    # Slow each epoch down so the signal surely lands before the last one.
    slow = (
        "import time, cnn.train\n_e = cnn.train.train_epoch\n"
        "cnn.train.train_epoch = lambda *a, **k: (time.sleep(0.7), _e(*a, **k))[1]"
    )
    process = start_process(train_command(idx_dir, prepared, tmp_path, *SMALL, prelude=slow))
    deadline = time.monotonic() + 120
    while not (tmp_path / "history.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    history = json.loads((tmp_path / "history.json").read_text())
    saved = Checkpoints(tmp_path / "checkpoints")
    assert saved.latest_epoch() == len(history) < 3  # the epoch in progress was finished and saved
    saved.close()
    resumed = run_process(train_command(idx_dir, prepared, tmp_path, *SMALL))
    assert resumed.returncode == 0 and "Resuming" in resumed.stdout
    assert _outcome(tmp_path) == reference


def _misleading(splits: Splits) -> Splits:
    """Validation labels shifted by one: the validation loss rises, so the best epoch is an early one."""
    train = Split(splits.train.images[:320], splits.train.labels[:320])
    return Splits(train, Split(train.images, (train.labels + 1) % 10), splits.test)


def _damage_truncate(latest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [p for p in (latest / "state").rglob("*") if p.is_file() and p.stat().st_size > 0]
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_missing_item(latest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.rmtree(latest / "meta")


def _damage_nan(latest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN in the first weight of epoch `latest`, as a bit flip on disk would leave it (orbax's files
    cannot be edited in place, so its reads are wrapped)."""
    epoch = int(latest.name)

    def poison(params):
        leaves, tree = jax.tree.flatten(params)
        return jax.tree.unflatten(tree, [leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan), *leaves[1:]])

    restore, variables = Checkpoints.restore, Checkpoints.restore_variables

    def restore_poisoned(self, e, template):
        state, meta = restore(self, e, template)
        return (state.replace(params=poison(state.params)) if e == epoch else state), meta

    def variables_poisoned(self, e):
        params, stats, meta = variables(self, e)
        return (poison(jax.tree.map(jnp.asarray, params)) if e == epoch else params), stats, meta

    monkeypatch.setattr(Checkpoints, "restore", restore_poisoned)
    monkeypatch.setattr(Checkpoints, "restore_variables", variables_poisoned)
    with pytest.raises(CheckpointDamaged, match=rf"epoch {epoch} in .* holds NaN or Inf values \(\w+/"):
        restore_run(latest.parent.parent, epoch)


@pytest.mark.parametrize(
    "damage", [_damage_truncate, _damage_missing_item, _damage_nan], ids=["truncated", "missing-item", "nan"]
)
def test_a_damaged_latest_checkpoint_falls_back_and_keeps_the_best(
    tiny_splits, tmp_path, capsys, monkeypatch, damage
):
    splits = _misleading(tiny_splits)
    config = TrainConfig(batch_size=32, epochs=4, patience=10, steps_per_call=1)
    reference = fit(config, splits, tmp_path / "reference")
    reference_history = json.loads((tmp_path / "reference" / "history.json").read_text())

    workdir = tmp_path / "run"
    fit(TrainConfig(**{**config.to_dict(), "epochs": 3}), splits, workdir)
    checkpoints = Checkpoints(workdir / "checkpoints")
    kept = checkpoints.epochs()
    checkpoints.close()
    best = reference["best_epoch"]
    assert best < 3 and kept == [best, 3]
    damage(workdir / "checkpoints" / "3", monkeypatch)
    capsys.readouterr()

    resumed = fit(config, splits, workdir)
    out, err = capsys.readouterr()
    assert "checkpoint of epoch 3" in out and "damaged" in out and f"Falling back to epoch {best}" in out
    assert "Event loop is closed" not in err and "Traceback" not in err and "TensorStore details" not in out
    assert list((workdir / "damaged").iterdir())  # moved aside, not deleted
    assert json.loads((workdir / "history.json").read_text()) == reference_history
    assert {k: v for k, v in resumed.items() if k not in TIMING} == {
        k: v for k, v in reference.items() if k not in TIMING
    }
    checkpoints = Checkpoints(workdir / "checkpoints")
    assert best in checkpoints.epochs()  # the best checkpoint survives
    checkpoints.close()


def test_an_unfinished_temporary_checkpoint_is_ignored(tiny_splits, tmp_path, capsys):
    config = TrainConfig(batch_size=32, epochs=2, patience=10, limit_train=320, steps_per_call=1)
    reference = fit(config, tiny_splits, tmp_path / "reference")
    workdir = tmp_path / "run"
    fit(TrainConfig(**{**config.to_dict(), "epochs": 1}), tiny_splits, workdir)
    # What a save killed before its commit leaves: a temporary directory with part of the files.
    shutil.copytree(
        workdir / "checkpoints" / "1", workdir / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000"
    )
    capsys.readouterr()
    resumed = fit(config, tiny_splits, workdir)
    out = capsys.readouterr().out
    assert "Resuming" in out and "ignoring" in out and "unfinished checkpoint save" in out
    assert resumed["test_accuracy"] == reference["test_accuracy"]
    assert json.loads((workdir / "history.json").read_text()) == json.loads(
        (tmp_path / "reference" / "history.json").read_text()
    )


def test_nan_in_training_stops_naming_epoch_and_step_and_keeps_checkpoints(tiny_splits, tmp_path):
    config = TrainConfig(batch_size=32, epochs=4, patience=10, limit_train=320, steps_per_call=1)
    clean = Splits(
        Split(tiny_splits.train.images[:320], tiny_splits.train.labels[:320]),
        tiny_splits.val,
        tiny_splits.test,
    )
    fit(TrainConfig(**{**config.to_dict(), "epochs": 2}), clean, tmp_path)
    poisoned = clean.train.images.astype(np.float32) / np.float32(255)  # floats, to hold a NaN
    poisoned[17] = np.nan
    # The step of epoch 3 whose batch holds image 17: the same shuffle the fit loop draws.
    order = np.asarray(jax.random.permutation(jax.random.fold_in(run_keys(config)["shuffle"], 3), 320))
    step = int(np.flatnonzero(order == 17)[0]) // 32 + 1
    with pytest.raises(TrainingDiverged, match=f"epoch 3, step {step} of 10"):
        fit(config, Splits(Split(poisoned, clean.train.labels), clean.val, clean.test), tmp_path)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    assert checkpoints.latest_epoch() == 2 and 3 not in checkpoints.epochs()  # nothing of epoch 3 saved
    checkpoints.close()
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2


def test_cli_exit_code_for_divergence(monkeypatch, capsys):
    import cnn.cli.train

    def diverge(args):
        raise TrainingDiverged("training diverged: a NaN or Inf loss or gradient at epoch 3, step 7 of 10.")

    monkeypatch.setattr(cnn.cli.train, "run", diverge)
    assert main(["train"]) == 3 and "epoch 3, step 7" in capsys.readouterr().err


# ------------------------------------------------------------------------------ flags and the workdir
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "seed_cn"], "Did you mean seed_cnn"),
        (["--lr", "0"], "lr: got 0.0"),
        (["--lr", "-0.1"], "lr: got -0.1"),
        (["--batch-size", "0"], "batch_size: got 0"),
        (["--epochs", "0"], "epochs: got 0"),
        (["--patience", "-1"], "patience: got -1"),
        (["--monitor", "loss"], "monitor: got 'loss'"),
        (["--batch-size", "500", "--limit-train", "100"], "batch_size: 500 is larger than the 100 training"),
        (
            [
                "--model",
                "convnet",
                "--model-args",
                '{"blocks": [{"filters": 8, "kernel": 40, "padding": "valid"}]}',
            ],
            "block 1",
        ),
    ],
)
def test_bad_flags_fail_with_one_line_and_write_nothing(idx_dir, prepared, tmp_path, capsys, flags, message):
    workdir = tmp_path / "run"
    code = main(
        [
            "train",
            "--source-dir",
            str(idx_dir),
            "--data-dir",
            str(prepared),
            "--workdir",
            str(workdir),
            *flags,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not workdir.exists()


def test_a_workdir_with_another_run_is_refused_before_training_touching_nothing(
    idx_dir, prepared, tmp_path, capsys, monkeypatch
):
    import cnn.train

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"config": TrainConfig(lr=0.01).to_dict()}))
    before = sorted(p.name for p in workdir.iterdir())
    monkeypatch.setattr(cnn.train, "epoch_loop", lambda *a: pytest.fail("trained"))
    argv = ["train", "--workdir", str(workdir), "--source-dir", str(idx_dir), "--data-dir", str(prepared)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "lr: 0.01 -> 0.001" in err and "--overwrite" in err
    assert sorted(p.name for p in workdir.iterdir()) == before


# ----------------------------------------------------------------------------- predict and evaluate
@pytest.fixture(scope="module")
def state():
    return initial_state(TrainConfig(), FASHION_MNIST)


GOOD = np.full((3, 28, 28, 1), 0.5, np.float32)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (GOOD[..., 0], r"expected 4 dimensions .* add the channel axis"),
        (GOOD[0], "expected 4 dimensions"),
        (np.zeros((3, 32, 32, 1), np.float32), "expected 28×28 images"),
        (np.zeros((3, 28, 28, 3), np.float32), "expected 1 channel"),
        (np.zeros((3, 28, 28, 1), np.int64), "dtype int64"),
        (np.zeros((3, 28, 28, 1), bool), "dtype bool"),
        (GOOD * 255, r"\[0, 1\], got \[127.5, 127.5\] \(they look like 0..255 pixels"),
        (GOOD - 1, r"must lie in \[0, 1\]"),
        (np.where(np.arange(3)[:, None, None, None] == 1, np.nan, GOOD), "784 NaN value"),
        (np.zeros((0, 28, 28, 1), np.float32), "no images"),
        ([[0.5]], "got list"),
    ],
)
def test_predict_rejects_bad_images_naming_the_problem(state, images, message):
    with pytest.raises(InputError, match=message):
        predict(state, images)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, 1, 10]), r"must lie in \[0, 10\), got 0..10"),
        (np.array([-1, 1, 2]), r"got -1..2"),
        (np.array([0, 1]), r"expected shape \(3,\)"),
        (np.array([0.0, 1.0, 2.0]), "dtype float64"),
    ],
)
def test_evaluate_rejects_bad_labels(state, labels, message):
    with pytest.raises(InputError, match=message):
        evaluate(state, Split(GOOD, labels))


def test_predict_accepts_uint8_and_float_alike(state):
    as_uint8 = np.full((3, 28, 28, 1), 128, np.uint8)
    np.testing.assert_allclose(
        predict(state, as_uint8), predict(state, as_uint8 / np.float32(255)), atol=1e-6
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(0, 30), min_size=1, max_size=5),
    dtype=st.sampled_from(["uint8", "float32", "float64", "int32", "bool", "float16"]),
    low=st.floats(-2, 2),
    span=st.floats(0, 300),
    nan=st.booleans(),
)
def test_fuzz_image_checks_accept_exactly_the_valid_inputs(shape, dtype, low, span, nan):
    rng = np.random.default_rng(0)
    values = low + span * rng.random(shape)
    if nan and values.size:
        values.flat[0] = np.nan
    images = (
        np.nan_to_num(values, nan=0).clip(0, 255).astype(dtype)
        if dtype in ("uint8", "int32", "bool")
        else values.astype(dtype)
    )
    valid = (
        len(shape) == 4
        and shape[0] > 0
        and tuple(shape[1:]) == (28, 28, 1)
        and (
            dtype == "uint8"
            or (
                dtype.startswith("float")
                and not np.isnan(images).any()
                and images.min() >= 0
                and images.max() <= 1
            )
        )
    )
    if valid:
        assert check_images(images, (28, 28, 1)) is not None
    else:
        with pytest.raises(InputError):
            check_images(images, (28, 28, 1))


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(-3, 13), min_size=0, max_size=6), n=st.integers(0, 6))
def test_fuzz_label_checks(labels, n):
    labels = np.array(labels, np.int64)
    if len(labels) == n and all(0 <= v < 10 for v in labels):
        assert check_labels(labels, n).shape == (n,)
    else:
        with pytest.raises(InputError):
            check_labels(labels, n)


# ----------------------------------------------------------------------------- architecture fuzzing
block_strategy = st.builds(
    ConvBlock,
    filters=st.integers(1, 8),
    kernel=st.integers(1, 9),
    stride=st.integers(1, 3),
    padding=st.sampled_from(["same", "valid"]),
    downsample=st.sampled_from(["max", "avg", "none", "strided_conv", "depthwise_max", "depthwise_avg"]),
    pool=st.integers(1, 4),
    convs=st.integers(1, 2),
)


@settings(max_examples=20, deadline=None)
@given(
    blocks=st.lists(block_strategy, min_size=1, max_size=4),
    head=st.sampled_from(["flatten_dense", "global_avg"]),
)
def test_fuzz_architecture_validator_agrees_with_the_real_network(blocks, head):
    try:
        shapes = convnet_shapes(blocks)
    except ArchitectureError as e:
        assert str(e).startswith("block ")  # names the block
        with pytest.raises(ValueError, match="block"):
            convnet(blocks=blocks, head=head, dense=(4,), input_shape=(28, 28, 1))
        return
    model: ConvNet = convnet(blocks=blocks, head=head, dense=(4,), input_shape=(28, 28, 1))
    x = np.zeros((2, 28, 28, 1), np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    assert model.apply(variables, x).shape == (2, 10)
    inter = state["intermediates"]
    for i, (b, shape) in enumerate(zip(blocks, shapes, strict=True), start=1):
        if b.downsample in ("max", "avg", "depthwise_max", "depthwise_avg"):
            last = f"block{i}_pool"
        else:
            last = f"block{i}_conv{b.convs}" if b.convs > 1 else f"block{i}_conv"
        assert tuple(inter[last]["__call__"][-1].shape[1:]) == shape, last


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_preparing_the_data_stops_at_once_keeping_nothing_half_prepared(
    idx_dir, tmp_path, sig, code
):
    # Slow the preparation down (each example waits 50 ms: 800 examples, 40 s) so that the signal lands in the
    # middle of it and "at once" stays far from "after preparing" on a loaded machine (a suite run beside
    # other work once took 13 s to stop here with 10 ms an example; the files appear within a second).
    slow = (
        "import time\nfrom cnn.data import fashion_mnist as f\n"
        "_g = f.FashionMnistIdx._generate_examples\n"
        "def slow(self, *a):\n    for x in _g(self, *a):\n        time.sleep(0.05)\n        yield x\n"
        "f.FashionMnistIdx._generate_examples = slow"
    )
    data_dir = tmp_path / "tfds"
    process = start_process(train_command(idx_dir, data_dir, tmp_path / "run", *SMALL, prelude=slow))
    deadline = time.monotonic() + 120
    while not list(data_dir.rglob("*.tmp*")) and not list(data_dir.rglob("incomplete*")):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    started = time.monotonic()
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert time.monotonic() - started < 15  # at once, not after preparing (40 s), let alone training
    assert process.returncode == code, err
    name = signal.Signals(sig).name
    assert (
        err == f"{name}: stopped while preparing the data set in {data_dir / 'fashion_mnist_idx'}; nothing "
        "half-prepared was kept. Run the command again to prepare it.\n"
    )
    assert not list(data_dir.rglob("incomplete*")) and not list(data_dir.rglob("dataset_info.json"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_config_edited_by_hand_is_named_with_both_shapes(tiny_splits, idx_dir, tmp_path, capsys, caplog):
    workdir = tmp_path / "run"
    fit(TrainConfig(epochs=1, limit_train=64, batch_size=32), tiny_splits, workdir)
    restore_run(workdir)
    assert "Metadata file does not exist" not in caplog.text  # orbax's noise on every restore, filtered
    saved = json.loads((workdir / "config.json").read_text())
    saved["data"]["image_shape"] = [32, 32, 1]  # the dense layer's input is now 8×8×64, not 7×7×64
    (workdir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(
        ConfigMismatch, match=r"dense1/kernel: \(3136, 100\) in the checkpoint, \(4096, 100\)"
    ):
        restore_run(workdir)
    capsys.readouterr()
    assert main(["viz", "--workdir", str(workdir), "--source-dir", str(idx_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Was config.json edited by hand?" in err and "Traceback" not in err


def test_python_callers_get_type_and_value_errors_naming_the_argument(tiny_splits, tmp_path):
    with pytest.raises(TypeError, match=r"config: expected a cnn.TrainConfig .*got dict"):
        fit({"epochs": 1}, tiny_splits, tmp_path / "a")
    with pytest.raises(TypeError, match=r"splits: expected cnn.data.spec.Splits .*got NoneType"):
        fit(TrainConfig(epochs=1), None, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    state = initial_state(TrainConfig(), FASHION_MNIST)
    for batch_size in (0, -1, 2.5, True):
        with pytest.raises(InputError, match=rf"batch_size: expected an integer >= 1, got {batch_size!r}"):
            evaluate(state, tiny_splits.test, batch_size)
        with pytest.raises(InputError, match="batch_size: expected an integer >= 1"):
            predict(state, tiny_splits.test.images, batch_size)
    just_above = np.full((2, 28, 28, 1), 1.0001, np.float32)  # not 0..255 pixels: no such hint
    with pytest.raises(InputError, match=r"float values must lie in \[0, 1\], got \[1.0001, 1.0001\]$"):
        predict(state, just_above)
    with pytest.raises(InputError, match="they look like 0..255 pixels"):
        predict(state, just_above * 200)
