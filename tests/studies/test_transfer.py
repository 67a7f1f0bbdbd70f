"""Transfer learning: frozen means bit-for-bit unchanged, counts are right, bad checkpoints are named."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax.traverse_util import flatten_dict

from cnn import TrainConfig, build_model, fit
from cnn.data.spec import DataSpec
from cnn.errors import RunNotFoundError
from cnn.runs.results import restore_run
from cnn.studies.transfer import (
    format_counts,
    load_backbone,
    parameter_counts,
    transfer_config,
    transfer_state,
)

BN_ARGS = {"blocks": [{"filters": 8, "batch_norm": True}, {"filters": 8, "batch_norm": True}], "dense": [16]}


@pytest.fixture(scope="module")
def pretrained(tiny_splits, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pretrained")
    fit(TrainConfig(model="convnet", model_args=BN_ARGS, epochs=1, batch_size=32), tiny_splits, workdir)
    return workdir


def _spec(classes: int) -> DataSpec:
    return DataSpec("task", (28, 28, 1), [f"c{i}" for i in range(classes)])


def _leaves(tree):
    return {k: np.asarray(v) for k, v in flatten_dict(jax.device_get(tree)).items()}


def test_head_only_training_leaves_the_backbone_bit_for_bit(pretrained, tiny_splits, tmp_path):
    backbone = load_backbone(pretrained)
    config = transfer_config("convnet", "block2_pool", 10, base_args=BN_ARGS, epochs=2, batch_size=32)
    state, _ = transfer_state(config, tiny_splits.spec, backbone, freeze="backbone")
    head_before = _leaves({k: v for k, v in state.params.items() if k != "base"})
    fit(config, tiny_splits, tmp_path, init_state=state)
    _, trained, _ = restore_run(tmp_path)
    for path, value in _leaves(trained.params["base"]).items():
        np.testing.assert_array_equal(value, _leaves(backbone["params"])[path])
    for path, value in _leaves(trained.batch_stats["base"]).items():
        np.testing.assert_array_equal(value, _leaves(backbone["batch_stats"])[path])
    head_after = _leaves({k: v for k, v in trained.params.items() if k != "base"})
    assert all(not np.array_equal(head_after[p], head_before[p]) for p in head_before)


def test_fine_tuning_trains_the_top_block_only(pretrained, tiny_splits, tmp_path):
    backbone = load_backbone(pretrained)
    config = transfer_config("convnet", "block2_pool", 10, base_args=BN_ARGS, epochs=1, batch_size=32)
    state, labels = transfer_state(config, tiny_splits.spec, backbone, freeze="backbone_except_top")
    assert {k: v["kernel"] for k, v in labels["base"].items() if "conv" in k} == {
        "block1_conv": "frozen",
        "block2_conv": "finetune",
    }
    fit(config, tiny_splits, tmp_path, init_state=state)
    _, trained, _ = restore_run(tmp_path)
    before, after = _leaves(backbone["params"]), _leaves(trained.params["base"])
    assert np.array_equal(after[("block1_conv", "kernel")], before[("block1_conv", "kernel")])
    assert not np.array_equal(after[("block2_conv", "kernel")], before[("block2_conv", "kernel")])


def test_parameter_counts_for_a_known_cut():
    config = transfer_config("seed_cnn", "pool2", 2, head_units=(64,))
    state, labels = transfer_state(config, _spec(2), None, freeze="backbone")
    backbone = (3 * 3 * 1 * 32 + 32) + (3 * 3 * 32 * 64 + 64)
    head = (7 * 7 * 64 * 64 + 64) + (64 * 2 + 2)
    counts = parameter_counts(state.params, labels, state.batch_stats)
    assert counts == {"trainable": head, "non_trainable": backbone}
    assert format_counts(counts).splitlines() == [
        f"Total params: {head + backbone:,}",
        f"Trainable params: {head:,}",
        f"Non-trainable params: {backbone:,}",
    ]
    _, scratch = transfer_state(config, _spec(2), None, freeze="none")
    assert parameter_counts(state.params, scratch)["non_trainable"] == 0


def test_user_supplied_orbax_checkpoint(tmp_path):
    variables = build_model("seed_cnn").init(jax.random.PRNGKey(5), np.zeros((1, 28, 28, 1), np.float32))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((tmp_path / "flax-weights").absolute(), variables)
    checkpointer.wait_until_finished()
    backbone = load_backbone(tmp_path / "flax-weights")
    state, _ = transfer_state(transfer_config("seed_cnn", "conv2", 3), _spec(3), backbone)
    np.testing.assert_array_equal(
        state.params["base"]["conv2"]["kernel"], variables["params"]["conv2"]["kernel"]
    )


def test_wrong_architecture_lists_the_mismatched_paths(tmp_path):
    variables = build_model("lecture_cnn").init(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((tmp_path / "other").absolute(), variables)
    checkpointer.wait_until_finished()
    with pytest.raises(ValueError) as e:
        transfer_state(transfer_config("seed_cnn", "pool2", 2), _spec(2), load_backbone(tmp_path / "other"))
    message = str(e.value)
    assert "do not match the backbone" in message
    assert "conv1/kernel: checkpoint has (3, 3, 1, 64), the model needs (3, 3, 1, 32)" in message
    assert "conv2/kernel: checkpoint has (3, 3, 64, 32), the model needs (3, 3, 32, 64)" in message


def test_missing_checkpoint_and_unknown_cut(tmp_path):
    with pytest.raises(RunNotFoundError, match="holds no run"):
        load_backbone(tmp_path / "nothing-here")
    with pytest.raises(
        ValueError, match=r"cut: seed_cnn has no layer 'block9'; its layers are \['conv1', 'pool1'"
    ):
        transfer_config("seed_cnn", "block9", 2)
    with pytest.raises(ValueError, match="freeze: expected one of"):
        transfer_state(transfer_config("seed_cnn", "pool2", 2), _spec(2), None, freeze="half")


def test_tiny_few_shot_experiment(idx_dir, tmp_path, monkeypatch):
    out = tmp_path / "transfer"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "transfer.py",
            "--epochs",
            "2",
            "--seeds",
            "2",
            "--pretrain-epochs",
            "1",
            "--out",
            str(out),
            "--source-dir",
            str(idx_dir),
            "--data-dir",
            str(tmp_path / "tfds"),
        ],
    )
    runpy.run_path(
        str(Path(__file__).resolve().parents[2] / "experiments" / "transfer.py"), run_name="__main__"
    )
    table = (out / "results.md").read_text()
    for method in ("frozen", "finetune", "scratch"):
        assert table.count(f"| {method} |") == 3
    assert (out / "transfer.png").stat().st_size > 5000
    task_dirs = [p for p in out.iterdir() if p.is_dir() and p.name != "pretrain"]
    assert len(task_dirs) == 3  # every task trains in its own folder, never reusing another's runs


def test_a_cut_backbone_counts_the_macs_of_the_layers_it_runs():
    from cnn.models.registry import model_summary
    from cnn.models.summary import layer_rows

    seed = {r.name: r.macs for r in layer_rows(build_model("seed_cnn"))}
    backbone = layer_rows(build_model("transfer"))[0]  # the seed CNN cut at pool2
    assert backbone.macs == seed["conv1"] + seed["conv2"] > 0  # no dense layer of the base: they never run
    assert "MACs per image (forward): 4,039,808" in model_summary("transfer")


def test_the_heads_outputs_must_fit_the_data():
    with pytest.raises(ValueError, match="the transfer head has 2 outputs, but the data .* needs 3"):
        transfer_state(transfer_config("seed_cnn", "pool2", 2), _spec(3), None)


def test_a_cut_network_takes_train_as_every_model_does():
    from cnn.models.applications.networks import build

    model, variables = build("mobilenet_v2", input_shape=(32, 32, 3), cut="block_2_add")
    x = np.zeros((2, 32, 32, 3), np.float32)
    assert model.apply(variables, x, train=False).shape == model.apply(variables, x).shape
    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])  # batch norm trains
    assert out.shape[0] == 2 and "batch_stats" in updates


def test_runs_alike_share_one_optimizer_and_so_their_compiled_programs(tiny_splits):
    """Seeds and methods with the same labels get the same optimizer object: the train step's static part,
    so a few-shot study's later runs reuse the first one's traced and compiled programs."""
    spec = tiny_splits.spec
    configs = [transfer_config("seed_cnn", "pool2", 10, head_units=(64,), seed=s) for s in (0, 1)]
    (first, labels), (second, _) = (transfer_state(c, spec, None, freeze="backbone") for c in configs)
    assert first.tx is second.tx
    other, other_labels = transfer_state(configs[0], spec, None, freeze="none")
    assert other.tx is not first.tx and other_labels != labels
    faster, _ = transfer_state(transfer_config("seed_cnn", "pool2", 10, head_units=(64,), lr=0.1), spec, None)
    assert faster.tx is not first.tx
