"""Scale and reliability: a device mesh (8 simulated CPU devices), crash-safe resume after SIGKILL at
several moments, SIGTERM/SIGINT, damaged checkpoints, the NaN guard, and validated inputs and flags."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnn import TrainConfig, fit
from cnn.checkpoints import Checkpoints
from cnn.cli import main
from cnn.data import Split, Splits, load_fashion_mnist
from cnn.models import ArchitectureError, ConvBlock, ConvNet, convnet, convnet_shapes
from cnn.parallel import ParallelError, distributed_settings
from cnn.train import (
    InputError,
    TrainingDiverged,
    check_images,
    check_labels,
    evaluate,
    initial_state,
    predict,
    run_keys,
)

ROOT = Path(__file__).resolve().parent.parent
# Timing fields differ between any two runs; every other number of results.json must be identical.
TIMING = {"train_seconds", "compile_seconds", "images_per_second"}
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


@pytest.fixture(scope="module")
def prepared(idx_dir, tmp_path_factory) -> Path:
    """A tfds data dir with the tiny dataset already prepared (subprocesses only read it)."""
    data_dir = tmp_path_factory.mktemp("tfds")
    load_fashion_mnist(data_dir=data_dir, source_dir=idx_dir)
    return data_dir


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FASHION_MNIST_DIR", "XLA_FLAGS")}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def _train_command(idx_dir: Path, data_dir: Path, workdir: Path, *flags: str, prelude: str = "") -> list[str]:
    """`python -m cnn train` on the tiny data; `prelude` is Python run first (a fault to inject)."""
    args = ["train", "--source-dir", str(idx_dir), "--data-dir", str(data_dir), "--workdir", str(workdir)]
    code = f"{prelude}\nimport sys\nfrom cnn.cli import main\nsys.exit(main({args + list(flags)!r}))"
    return [sys.executable, "-c", code]


def _run(command: list[str], timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=ROOT)


def _outcome(workdir: Path) -> tuple[list, dict]:
    results = json.loads((workdir / "results.json").read_text())
    return json.loads((workdir / "history.json").read_text()), {
        k: v for k, v in results.items() if k not in TIMING
    }


@pytest.fixture(scope="module")
def reference(idx_dir, prepared, tmp_path_factory) -> tuple[list, dict]:
    """An uninterrupted run of the small configuration, through the CLI in its own process."""
    workdir = tmp_path_factory.mktemp("reference")
    done = _run(_train_command(idx_dir, prepared, workdir, *SMALL))
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
import cnn.train
_write = cnn.train.write_json
def write_json(path, value):
    if path.name == "history.json" and len(value) == {epoch}:  # checkpoint saved, history not yet written
        os.kill(os.getpid(), signal.SIGKILL)
    return _write(path, value)
cnn.train.write_json = write_json
"""


@pytest.mark.parametrize(
    "prelude",
    [KILL_DURING_SAVE.format(epoch=2), KILL_BEFORE_HISTORY.format(epoch=3), KILL_DURING_SAVE.format(epoch=1)],
    ids=["during-save-of-epoch-2", "after-last-checkpoint-before-history", "during-first-save"],
)
def test_sigkill_at_a_fixed_point_then_resume_gives_identical_results(
    idx_dir, prepared, reference, tmp_path, prelude
):
    killed = _run(_train_command(idx_dir, prepared, tmp_path, *SMALL, prelude=prelude))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "results.json").exists()
    resumed = _run(_train_command(idx_dir, prepared, tmp_path, *SMALL))
    assert resumed.returncode == 0, resumed.stderr
    assert _outcome(tmp_path) == reference


def test_sigkill_at_random_moments_then_resume_gives_identical_results(
    idx_dir, prepared, reference, tmp_path
):
    rng = np.random.default_rng(0)
    command = _train_command(idx_dir, prepared, tmp_path, *SMALL)
    kills = 0
    for _ in range(3):  # a kill after a random delay once the first epoch is done; then once more
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=ROOT
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
    finished = _run(command)
    assert finished.returncode == 0, finished.stderr
    assert kills >= 1 and _outcome(tmp_path) == reference


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_save_then_exit_with_the_documented_code(
    idx_dir, prepared, reference, tmp_path, sig, code
):
    # Slow each epoch down so the signal surely lands before the last one.
    slow = (
        "import time, cnn.train\n_e = cnn.train.train_epoch\n"
        "cnn.train.train_epoch = lambda *a, **k: (time.sleep(0.7), _e(*a, **k))[1]"
    )
    process = subprocess.Popen(
        _train_command(idx_dir, prepared, tmp_path, *SMALL, prelude=slow),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
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
    resumed = _run(_train_command(idx_dir, prepared, tmp_path, *SMALL))
    assert resumed.returncode == 0 and "Resuming" in resumed.stdout
    assert _outcome(tmp_path) == reference


def _misleading(splits: Splits) -> Splits:
    """Validation labels shifted by one: the validation loss rises, so the best epoch is an early one."""
    train = Split(splits.train.images[:320], splits.train.labels[:320])
    return Splits(train, Split(train.images, (train.labels + 1) % 10), splits.test)


def _damage_truncate(latest: Path) -> None:
    files = [p for p in (latest / "state").rglob("*") if p.is_file() and p.stat().st_size > 0]
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_missing_item(latest: Path) -> None:
    shutil.rmtree(latest / "meta")


@pytest.mark.parametrize(
    "damage", [_damage_truncate, _damage_missing_item], ids=["truncated", "missing-item"]
)
def test_a_damaged_latest_checkpoint_falls_back_and_keeps_the_best(tiny_splits, tmp_path, capsys, damage):
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
    damage(workdir / "checkpoints" / "3")
    capsys.readouterr()

    resumed = fit(config, splits, workdir)
    out = capsys.readouterr().out
    assert "checkpoint of epoch 3" in out and "damaged" in out and f"Falling back to epoch {best}" in out
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
    poisoned = clean.train.images.copy()
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
    import cnn.cli

    def diverge(args):
        raise TrainingDiverged("training diverged: a NaN or Inf loss or gradient at epoch 3, step 7 of 10.")

    monkeypatch.setattr(cnn.cli, "_train", diverge)
    assert main(["train"]) == 3 and "epoch 3, step 7" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ data parallel
EIGHT_DEVICES = """
import json, sys
import jax, numpy as np
from cnn import TrainConfig, fit
from cnn.data import Split, Splits
from cnn.parallel import ParallelError, check_batch_size, data_mesh
from cnn.train import restore_run

rng = np.random.default_rng(0)
labels = rng.integers(0, 10, 600).astype(np.int32)
images = rng.random((600, 28, 28, 1)).astype(np.float32) * 0.3
for i, label in enumerate(labels):
    r, c = divmod(int(label), 4)
    images[i, 1 + 9 * r : 8 + 9 * r, 1 + 6 * c : 8 + 6 * c] = 0.9
splits = Splits(Split(images[:320], labels[:320]), Split(images[320:440], labels[320:440]),
                Split(images[440:], labels[440:]))
config = TrainConfig(model=sys.argv[2], batch_size=32, epochs=2, patience=10)
out = {"devices": jax.device_count()}
for name, mesh in (("one", data_mesh(1)), ("eight", data_mesh(8))):
    out[name] = fit(config, splits, f"{sys.argv[1]}/{name}", mesh=mesh)
    out[name + "_history"] = json.load(open(f"{sys.argv[1]}/{name}/history.json"))
    _, state, _ = restore_run(f"{sys.argv[1]}/{name}", epoch=2)
    out[name + "_params"] = [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)]
try:
    check_batch_size(36, data_mesh(8))
except ParallelError as e:
    out["error"] = str(e)
print("RESULT " + json.dumps(out))
"""


def test_eight_simulated_devices_match_one_device(tmp_path):
    done = _run(
        [sys.executable, "-c", EIGHT_DEVICES, str(tmp_path), "seed_cnn"],
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert out["devices"] == 8
    for one, eight in zip(out["one_history"], out["eight_history"], strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert eight[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
    for a, b in zip(out["one_params"], out["eight_params"], strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-5)
    assert out["eight"]["test_accuracy"] == pytest.approx(out["one"]["test_accuracy"], abs=1e-6)
    assert "36 does not split over 8 devices" in out["error"] and "e.g. 32 or 40" in out["error"]


EIGHT_DEVICES_BATCH_NORM = """
import json
import jax
jax.config.update("jax_enable_x64", True)  # only for the float64 reference; the model runs in float32
import jax.numpy as jnp, numpy as np, optax
from cnn import TrainConfig
from cnn.parallel import batch_sharding, data_mesh, replicate
from cnn.train import initial_state, model_variables

state = initial_state(TrainConfig(model="vgg_bn", model_args={"augment": False, "dropout_rate": 0.0}))
rng = np.random.default_rng(0)
batch = {"image": rng.random((32, 28, 28, 1)).astype(np.float32), "label": rng.integers(0, 10, 32)}

@jax.jit
def step(state, batch):
    def loss(params):
        logits, updates = state.apply_fn(model_variables(state, params), batch["image"], train=True,
                                         mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), updates
    return jax.grad(loss, has_aux=True)(state.params)

def rel(a, b):
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

one = step(state, batch)
mesh = data_mesh(8)
eight = step(replicate(state, mesh), jax.device_put(batch, batch_sharding(mesh)))
f64 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float64), tree)
exact = step(state.replace(params=f64(state.params), batch_stats=f64(state.batch_stats)),
             {"image": batch["image"].astype(np.float64), "label": batch["label"]})
print("RESULT " + json.dumps({
    "stats_eight_vs_one": rel(eight[1], one[1]),
    "grads_one_vs_exact": rel(one[0], exact[0]),
    "grads_eight_vs_exact": rel(eight[0], exact[0]),
    "grads_eight_vs_one": rel(eight[0], one[0]),
}))
"""


def test_eight_simulated_devices_batch_norm_step_matches_one_device():
    # Batch norm over 8 devices uses the statistics of the global batch, not of each device's shard: the
    # running statistics match one device's, and the gradients are as close to the float64 gradient as
    # one device's are. (At initialisation on noise images the float32 gradients of the batch-normed
    # layers are themselves far from float64, so they are compared with that yardstick, not a fixed one.)
    done = _run(
        [sys.executable, "-c", EIGHT_DEVICES_BATCH_NORM], XLA_FLAGS="--xla_force_host_platform_device_count=8"
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert out["stats_eight_vs_one"] < 1e-5
    assert out["grads_eight_vs_exact"] <= 1.5 * out["grads_one_vs_exact"] + 1e-5, out


def test_two_processes_end_with_the_parameters_of_one(idx_dir, prepared, tmp_path):
    flags = ["--epochs", "2", "--limit-train", "320", "--batch-size", "32", "--devices", "1"]
    single = _run(_train_command(idx_dir, prepared, tmp_path / "single", *flags))
    assert single.returncode == 0, single.stderr
    port = 20000 + os.getpid() % 20000
    group = [
        subprocess.Popen(
            _train_command(
                idx_dir,
                prepared,
                tmp_path / "group",
                *flags,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=ROOT,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in group]
    for p, (_, err) in zip(group, outputs, strict=True):
        assert p.returncode == 0, err
    assert "Data parallel over 2 devices (2 process(es))" in outputs[0][0]
    from cnn.train import restore_run

    _, one, _ = restore_run(tmp_path / "single", epoch=2)
    _, two, _ = restore_run(tmp_path / "group", epoch=2)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "group" / "history.json").read_text())[-1]["loss"] == pytest.approx(
        json.loads((tmp_path / "single" / "history.json").read_text())[-1]["loss"], rel=1e-4
    )


def test_device_and_process_settings_are_checked(capsys, tmp_path):
    assert main(["train", "--devices", "2", "--workdir", str(tmp_path / "x")]) == 2
    assert "asked for 2, but this process sees 1 cpu device(s)" in capsys.readouterr().err
    assert main(["train", "--devices", "0", "--workdir", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(ParallelError, match="--num-processes"):
        distributed_settings(coordinator="127.0.0.1:1234", process_id=0)
    with pytest.raises(ParallelError, match="process_id: expected 0..1"):
        distributed_settings("127.0.0.1:1234", 2, 2)
    with pytest.raises(ParallelError, match="HOST:PORT"):
        distributed_settings("localhost", 2, 0)
    assert distributed_settings() is None


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


def test_a_workdir_with_another_run_is_refused_before_loading_data(tmp_path, capsys, monkeypatch):
    import cnn.data

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"config": TrainConfig(lr=0.01).to_dict()}))
    before = sorted(p.name for p in workdir.iterdir())
    monkeypatch.setattr(cnn.data, "load_fashion_mnist", lambda **k: pytest.fail("data loaded"))
    assert main(["train", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "lr: 0.01 -> 0.001" in err and "--overwrite" in err
    assert sorted(p.name for p in workdir.iterdir()) == before


# ----------------------------------------------------------------------------- predict and evaluate
@pytest.fixture(scope="module")
def state():
    return initial_state(TrainConfig())


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
        assert check_images(images) is not None
    else:
        with pytest.raises(InputError):
            check_images(images)


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
    downsample=st.sampled_from(["max", "avg", "none", "strided_conv", "depthwise_max"]),
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
            convnet(blocks=blocks, head=head, dense=(4,))
        return
    model: ConvNet = convnet(blocks=blocks, head=head, dense=(4,))
    x = np.zeros((2, 28, 28, 1), np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    assert model.apply(variables, x).shape == (2, 10)
    inter = state["intermediates"]
    for i, (b, shape) in enumerate(zip(blocks, shapes, strict=True), start=1):
        if b.downsample in ("max", "avg", "depthwise_max"):
            last = f"block{i}_pool"
        else:
            last = f"block{i}_conv{b.convs}" if b.convs > 1 else f"block{i}_conv"
        assert tuple(inter[last]["__call__"][-1].shape[1:]) == shape, last
