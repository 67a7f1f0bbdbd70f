"""The fast paths (uint8 data on the device, placed once; chunks of steps in one call) compute what the plain
path does, and the benchmark writes its report. Speed itself is measured by `python -m cnn bench`, never
here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cnn import TrainConfig, build_model, create_train_state, fit
from cnn.cli.main import main
from cnn.data.spec import Split
from cnn.engine.placement import on_device
from cnn.engine.state import make_optimizer
from cnn.engine.steps import gather, train_chunk, train_step
from cnn.studies.bench import SCHEMA_VERSION, benchmark, format_table, parse_peers


def _state(model="seed_cnn"):
    return create_train_state(
        build_model(model), make_optimizer(TrainConfig(model=model)), jax.random.PRNGKey(0)
    )


# XLA's own emitters for fused operations, as users compile: the tests' quicker older emitters
# (tests/processes.py) round a chunk and a single step differently, and Adam's first step, which moves every
# weight by about the learning rate whatever the gradient's size, turns that into losses 1 % apart.
USERS_EMITTERS = {"xla_cpu_use_fusion_emitters": True}


@pytest.mark.parametrize("model", ["seed_cnn", "vgg_bn"])
def test_chunk_of_steps_equals_single_steps(model, tiny_splits):
    images, labels = on_device(tiny_splits.train)
    order = jax.random.permutation(jax.random.PRNGKey(3), len(labels))
    rng, bs, k = jax.random.PRNGKey(4), 16, 5
    step = jax.jit(train_step.__wrapped__, donate_argnums=0, compiler_options=USERS_EMITTERS)
    single, losses = _state(model), []
    for i in range(k):
        single, m = step(single, gather(images, labels, order, i * bs, bs), rng)
        losses.append(float(m["loss"]))
    chunk = jax.jit(train_chunk, static_argnames=("batch_size", "steps"), compiler_options=USERS_EMITTERS)
    chunked, m = chunk(_state(model), images, labels, order, 0, rng, k, batch_size=bs, steps=k)
    assert m["loss"].shape == (k,)  # one value per step, added up on the host
    np.testing.assert_allclose(m["loss"], losses, rtol=1e-5)
    assert int(chunked.step) == int(single.step) == k
    for a, b in zip(jax.tree.leaves(chunked.params), jax.tree.leaves(single.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    # the last, shorter chunk of an epoch: the same program, the steps after `active` leave the state alone
    three, _ = chunk(_state(model), images, labels, order, 0, rng, 3, batch_size=bs, steps=k)
    assert int(three.step) == 3
    alone = _state(model)
    for i in range(3):
        alone, _ = step(alone, gather(images, labels, order, i * bs, bs), rng)
    for a, b in zip(jax.tree.leaves(three.params), jax.tree.leaves(alone.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_training_data_lives_on_the_device_as_uint8_placed_once(tiny_splits):
    images, labels = on_device(tiny_splits.train)
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(images), tiny_splits.train.images)
    again = on_device(Split(tiny_splits.train.images[:], tiny_splits.train.labels[:]))  # the same memory
    assert again[0] is images and again[1] is labels
    fewer = on_device(Split(tiny_splits.train.images[:100], tiny_splits.train.labels[:100]))
    assert fewer[0] is not images and fewer[0].shape[0] == 100
    floats = Split(tiny_splits.train.images / np.float32(255), tiny_splits.train.labels)
    assert on_device(floats)[0].dtype == np.float32  # a user's float images are taken as they are


def test_chunks_of_steps_give_the_one_step_history(tiny_splits, tmp_path):
    config = TrainConfig(epochs=2, batch_size=32, patience=5, steps_per_call=1)
    chunked = fit(
        TrainConfig(epochs=2, batch_size=32, patience=5, steps_per_call=4), tiny_splits, tmp_path / "fast"
    )
    plain = fit(config, tiny_splits, tmp_path / "plain")
    fast_history = json.loads((tmp_path / "fast" / "history.json").read_text())
    plain_history = json.loads((tmp_path / "plain" / "history.json").read_text())
    for f, p in zip(fast_history, plain_history, strict=True):
        for key in ("loss", "val_loss"):
            assert f[key] == pytest.approx(p[key], rel=1e-3)
    assert chunked["test_accuracy"] == pytest.approx(plain["test_accuracy"], abs=0.011)


@pytest.mark.slow
def test_same_accuracy_on_a_short_real_run(real_tfds, tmp_path):
    from cnn.data.fashion_mnist import load_fashion_mnist

    splits = load_fashion_mnist(data_dir=real_tfds)
    fast = fit(TrainConfig(epochs=1, limit_train=4000, steps_per_call=10), splits, tmp_path / "f")
    plain = fit(TrainConfig(epochs=1, limit_train=4000, steps_per_call=1), splits, tmp_path / "p")
    assert plain["test_accuracy"] > 0.7
    assert fast["test_accuracy"] == pytest.approx(plain["test_accuracy"], abs=0.01)


@pytest.mark.slow
def test_benchmark_report_schema_with_two_peers(tmp_path):
    script = tmp_path / "peer.py"
    script.write_text(
        "import json, sys\nprint('warming up')\n"
        "print(json.dumps({'images_per_second': float(sys.argv[2]), 'bs': int(sys.argv[1])}))\n"
    )
    peers = parse_peers(
        [
            f"eager={sys.executable} {script} {{batch_size}} 1000",
            f"compile={sys.executable} {script} {{batch_size}} 500",
        ]
    )
    report = benchmark(
        ["seed_cnn"], [16], steps=4, windows=2, steps_per_call=[1, 2], peers=peers, data_size=512, seeds=2
    )
    assert report["schema_version"] == SCHEMA_VERSION and report["device"]["platform"] == "cpu"
    assert report["host"]["cpu"] and report["host"]["cpu"] != "cpu"  # vendor and model name
    assert report["matmul_gflops_per_second"] > 0
    assert [r["steps_per_call"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert r["train_images_per_second"] > 0 and len(r["train_windows"]) == 2
        assert r["eval_images_per_second"] > 0 and r["compile_seconds"] > 0 and r["peak_memory_mb"] > 0
        assert r["peers"] == {
            "eager": {"images_per_second": 1000.0, "bs": 16},
            "compile": {"images_per_second": 500.0, "bs": 16},
        }
        assert r["ratios"]["eager"] == pytest.approx(r["train_images_per_second"] / 1000.0)
        assert r["ratios"]["compile"] == pytest.approx(r["train_images_per_second"] / 500.0)
    table = format_table(report)
    assert "| eager img/s | ratio to eager | compile img/s | ratio to compile |" in table
    assert "% of matmul peak" in table and "float32 matmul peak" in table
    (together,) = report["seeds"]
    assert together["seeds"] == 2 and together["speedup"] == pytest.approx(
        together["vmapped_images_per_second"] / together["sequential_images_per_second"]
    )


def test_bench_cli_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--batch-sizes", "8", "--steps", "3", "--windows", "1", "--out", str(out)]) == 0
    assert "| `seed_cnn` | 8 | 1 |" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"][0]["batch_size"] == 8


@pytest.mark.slow
def test_bench_errors_are_clear(capsys):
    assert main(["bench", "--batch-sizes", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    assert main(["bench", "--models", "seed", "--steps", "1"]) == 2
    assert "unknown model 'seed'" in capsys.readouterr().err
    assert (
        main(
            [
                "bench",
                "--steps",
                "2",
                "--windows",
                "1",
                "--batch-sizes",
                "8",
                "--peer",
                f"{sys.executable} -c 'print(42)'",
            ]
        )
        == 2
    )
    assert "printed no JSON line" in capsys.readouterr().err
    assert main(["bench", "--peer", "a=x {batch_size}", "--peer", "a=y"]) == 2
    assert "--peer: the name 'a' is given twice" in capsys.readouterr().err


def test_schema_1_reports_still_make_a_table():
    row = {
        "model": "seed_cnn",
        "batch_size": 32,
        "steps_per_call": 1,
        "train_images_per_second": 2000.0,
        "eval_images_per_second": 9000.0,
        "train_gflops_per_second": 50.0,
        "compile_seconds": 1.0,
        "peak_memory_mb": 700.0,
        "peer": {"images_per_second": 1000.0},
        "ratio_to_peer": 2.0,
    }
    table = format_table({"results": [row]})
    assert "| `seed_cnn` | 32 | 1 | 2,000 | 9,000 | 50.0 | 1.0 | 700 | 1,000 | 2.00 |" in table


def test_profile_script_weight_gradient_as_one_matmul_equals_xlas():
    """scripts/profile_step.py times the convolution's weight gradient both ways: they must agree."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "profile_step.py"
    spec = importlib.util.spec_from_file_location("profile_step", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(3, 7, 7, 4)).astype(np.float32), rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    dy = rng.normal(size=(3, 7, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(
        probe.weight_gradient_patches(x, w, dy), probe.weight_gradient(x, w, dy), rtol=1e-4, atol=1e-4
    )


def test_micro_batches_give_the_whole_batch_gradient():
    """A batch of 128 split into micro-batches of 64 (the CPU's automatic choice) or 32 takes the same
    optimizer step as the whole batch, up to float rounding (dropout off: the randomness is drawn per
    micro-batch); models with batch norm and sizes that do not divide the batch are never split."""
    from cnn.engine.state import create_train_state, micro_batch_size

    config = TrainConfig(batch_size=128, model_args={"dropout_rate": 0.0})
    model = build_model("seed_cnn", dropout_rate=0.0)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (128, 28, 28, 1)).astype(np.uint8),
        "label": rng.integers(0, 10, 128).astype(np.int32),
    }
    results = {}
    for micro in (128, 64, 32):
        state = create_train_state(model, make_optimizer(config), jax.random.PRNGKey(0), micro_batch=micro)
        assert micro_batch_size(state, 128) == micro
        state, metrics = train_step(state, batch, jax.random.PRNGKey(1))
        results[micro] = (
            jax.tree.map(np.asarray, state.params),
            float(metrics["loss"]),
            int(metrics["correct"]),
        )
    whole = results[128]
    for micro in (64, 32):
        params, loss, correct = results[micro]
        assert loss == pytest.approx(whole[1], rel=1e-5) and correct == whole[2]
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(whole[0]), strict=True):
            # float rounding of two summation orders; it depends on the CPU's instruction set (measured: up
            # to 2.6e-6 on an AMD EPYC without AVX-512, within 1e-6 with it)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6)
    auto = create_train_state(model, make_optimizer(config), jax.random.PRNGKey(0))
    assert micro_batch_size(auto, 128) == 64 and micro_batch_size(auto, 32) == 32
    assert micro_batch_size(auto, 96) == 96  # 64 does not divide 96: whole
    for asked in (0, 32):  # batch norm needs the whole batch, even when a micro-batch is asked for
        with_bn = create_train_state(
            build_model("vgg_bn"), make_optimizer(config), jax.random.PRNGKey(0), micro_batch=asked
        )
        assert micro_batch_size(with_bn, 256) == 256
    assert main(["train", "--micro-batch", "-1"]) == 2
