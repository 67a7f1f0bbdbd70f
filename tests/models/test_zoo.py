"""The model zoo: every network's shapes, parameter counts, dropout, summary, and the configurable ConvNet."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import TrainConfig, fit
from cnn.analysis.plots import plot_architecture
from cnn.engine.evaluation import evaluate
from cnn.engine.state import create_train_state, make_optimizer
from cnn.engine.steps import train_step
from cnn.models import conv
from cnn.models.convnet import ConvBlock, convnet, convnet_shapes
from cnn.models.layers import AvgPool, DepthwiseMaxPool, GlobalAvgPool, GlobalMaxPool, MaxPool
from cnn.models.preprocessing import RandomShiftFlip
from cnn.models.registry import MODELS, build_model, check_model_name, default_input_shape
from cnn.models.summary import format_summary, layer_rows, totals
from cnn.runs.checkpoints import Checkpoints
from cnn.train import check_run_config


def conv_p(k, c_in, c_out, bias=True):
    return k * k * c_in * c_out + (c_out if bias else 0)


def dense_p(n_in, n_out):
    return n_in * n_out + n_out


# Trainable parameter counts from the layer formulas, as Keras counts them for the same architectures.
EXPECTED_PARAMS = {
    "seed_cnn": conv_p(3, 1, 32) + conv_p(3, 32, 64) + dense_p(7 * 7 * 64, 100) + dense_p(100, 10),
    "homl_cnn": conv_p(7, 1, 64)
    + conv_p(3, 64, 128)
    + conv_p(3, 128, 128)
    + conv_p(3, 128, 256)
    + conv_p(3, 256, 256)
    + dense_p(3 * 3 * 256, 128)
    + dense_p(128, 64)
    + dense_p(64, 10),
    "lecture_cnn": conv_p(3, 1, 64)
    + conv_p(3, 64, 32)
    + conv_p(3, 32, 16)
    + dense_p(7 * 7 * 16, 256)
    + dense_p(256, 128)
    + dense_p(128, 10),
    "lenet5": conv_p(5, 1, 6)
    + conv_p(5, 6, 16)
    + dense_p(5 * 5 * 16, 120)
    + dense_p(120, 84)
    + dense_p(84, 10),
    "mlp": dense_p(784, 300) + dense_p(300, 100) + dense_p(100, 10),
    "convnet": conv_p(3, 1, 32) + conv_p(3, 32, 64) + dense_p(7 * 7 * 64, 100) + dense_p(100, 10),
    "vgg_bn": sum(
        conv_p(3, a, b, bias=False) + 2 * b
        for a, b in [(1, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
    )
    + dense_p(128, 128)
    + dense_p(128, 10),
    # WRN-10-2 (ZOO_ARGS): a bias-free 3×3 conv, three groups of one pre-activation block (batch norm, conv,
    # twice, plus a 1×1 shortcut conv: each changes the width), then batch norm and the logits
    "wide_resnet": conv_p(3, 1, 16, bias=False)
    + sum(
        2 * a + conv_p(3, a, b, bias=False) + 2 * b + conv_p(3, b, b, bias=False) + a * b
        for a, b in [(16, 32), (32, 64), (64, 128)]
    )
    + 2 * 128
    + dense_p(128, 10),
    # the seed CNN up to pool2 (the backbone), then Flatten -> Dense 64 -> Dense 10
    "transfer": conv_p(3, 1, 32) + conv_p(3, 32, 64) + dense_p(7 * 7 * 64, 64) + dense_p(64, 10),
}
# The zoo's tests build these models smaller than their defaults, to keep the suite short on a CPU (the
# default WRN-16-4 is 300 M MACs an image; test_wide_resnets_have_the_papers_parameter_counts checks sizes).
ZOO_ARGS = {"wide_resnet": {"depth": 10, "width": 2}}
HAS_DROPOUT = {"seed_cnn", "homl_cnn", "convnet", "vgg_bn"}
HAS_BATCH_NORM = {"vgg_bn", "wide_resnet"}


# The famous ImageNet networks (cnn.models.applications.networks) need larger colour inputs;
# tests/models/test_applications.py checks them against Keras, and test_cli_trains_a_famous_network below
# trains one from the CLI.
FASHION_ZOO = sorted(name for name in MODELS if default_input_shape(name) == (28, 28, 1))
FAMOUS = {"inception_v3", "vgg16", "resnet50", "mobilenet_v2"}


def test_every_registered_model_is_covered():
    assert set(FASHION_ZOO) == set(EXPECTED_PARAMS)
    assert set(MODELS) - set(FASHION_ZOO) == FAMOUS


@pytest.fixture(scope="module", params=FASHION_ZOO)
def zoo_model(request):
    model = build_model(request.param, **ZOO_ARGS.get(request.param, {}))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    return request.param, model, variables


@pytest.mark.parametrize("batch", [1, 128])
def test_output_shape(zoo_model, batch):
    _, model, variables = zoo_model
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, 28, 28, 1))
    assert jax.jit(lambda v, x: model.apply(v, x))(variables, x).shape == (batch, 10)


def test_parameter_count(zoo_model):
    name, _, variables = zoo_model
    assert sum(p.size for p in jax.tree.leaves(variables["params"])) == EXPECTED_PARAMS[name]
    batch_stats = sum(p.size for p in jax.tree.leaves(variables.get("batch_stats", {})))
    assert (batch_stats > 0) == (name in HAS_BATCH_NORM)


@pytest.mark.parametrize("depth, width, millions", [(40, 4, 8.9), (16, 8, 11.0), (28, 10, 36.5)])
def test_wide_resnets_have_the_papers_parameter_counts(depth, width, millions):
    # Zagoruyko & Komodakis (2016), the CIFAR table: 32×32 colour images, 10 classes; shapes only
    model = build_model("wide_resnet", input_shape=(32, 32, 3), depth=depth, width=width)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    assert round(sum(p.size for p in jax.tree.leaves(variables["params"])) / 1e6, 1) == millions


@pytest.mark.parametrize(
    "args, message",
    [
        ({"depth": 18}, "depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got 18"),
        ({"width": 0}, "wide_resnet's width must be"),
        ({"dropout_rate": 1.0}, "wide_resnet's dropout_rate must be"),
    ],
)
def test_wide_resnet_refuses_bad_arguments_naming_them(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model("wide_resnet", input_shape=(28, 28, 1), **args)


def test_wide_resnet_blocks_shortcut_and_dropout(tmp_path):
    model = build_model("wide_resnet", depth=10, width=1, dropout_rate=0.3)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(1), x)
    params = variables["params"]
    assert set(params["group1_block1"]) == {"bn1", "conv1", "bn2", "conv2"}  # 16 -> 16: the input itself
    assert params["group2_block1"]["shortcut"]["kernel"].shape == (1, 1, 16, 32)  # wider and halved
    _, inside = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    shapes = {k: v["__call__"][0].shape[1:] for k, v in inside["intermediates"].items() if "group" in k}
    assert shapes == {
        "group1_block1": (28, 28, 16),
        "group2_block1": (14, 14, 32),
        "group3_block1": (7, 7, 64),
    }

    def train_out(seed):
        rngs = {"dropout": jax.random.PRNGKey(seed)}
        return model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])[0]

    assert not np.allclose(train_out(3), train_out(4))  # dropout between a block's convolutions
    np.testing.assert_allclose(train_out(3), train_out(3))


def test_vgg_bn_widths_set_the_filters_of_each_block():
    model = build_model("vgg_bn", widths=[64, 128, 256])
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))
    pairs = [(1, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
    expected = (
        sum(conv_p(3, a, b, bias=False) + 2 * b for a, b in pairs) + dense_p(256, 128) + dense_p(128, 10)
    )
    assert sum(p.size for p in jax.tree.leaves(variables["params"])) == expected == 1_179_338
    with pytest.raises(ValueError, match="takes `widths`, not `blocks`"):
        build_model("vgg_bn", blocks=[{"filters": 8}])


def test_eval_is_deterministic_and_dropout_acts_only_in_training(zoo_model):
    name, model, variables = zoo_model
    x = jax.random.uniform(jax.random.PRNGKey(2), (16, 28, 28, 1))
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x, train=False))

    def train_out(seed):
        rngs = {"dropout": jax.random.PRNGKey(seed), "augment": jax.random.PRNGKey(seed + 100)}
        out = model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
        return out[0]

    if name in HAS_DROPOUT:
        assert not np.allclose(train_out(3), train_out(4))
    elif name not in HAS_BATCH_NORM:
        np.testing.assert_allclose(train_out(3), model.apply(variables, x), rtol=1e-6)


def test_summary_shapes_are_the_real_intermediate_shapes(zoo_model):
    name, model, variables = zoo_model
    x = jnp.ones((2, 28, 28, 1))
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    # A cut-short backbone (cnn.studies.transfer) records its inner layers but no output of its own: skip it.
    real = {
        k: v["__call__"][0].shape[1:]
        for k, v in state["intermediates"].items()
        if k != "__call__" and "__call__" in v
    }
    rows = layer_rows(model)
    assert {r.name: r.output_shape[1:] for r in rows} == real
    t = totals(rows)
    assert t.trainable == EXPECTED_PARAMS[name] and t.macs > 0
    text = format_summary(rows, name)
    assert f"Trainable params: {EXPECTED_PARAMS[name]:,}" in text and "MACs per image" in text


def test_macs_of_the_seed_cnn_from_the_formulas():
    rows = {r.name: r for r in layer_rows(build_model("seed_cnn"))}
    assert rows["conv1"].macs == 28 * 28 * 32 * 3 * 3 * 1
    assert rows["conv2"].macs == 14 * 14 * 64 * 3 * 3 * 32
    assert rows["dense1"].macs == 3136 * 100 and rows["pool1"].macs == 0
    assert totals(list(rows.values())).activation_bytes == 4 * (
        28 * 28 * 32 + 14 * 14 * 32 + 14 * 14 * 64 + 7 * 7 * 64 + 3136 + 100 + 100 + 10
    )


def test_architecture_diagram(tmp_path):
    rows = layer_rows(build_model("lenet5"))
    fig = plot_architecture(rows, tmp_path / "arch.png", title="lenet5")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "conv1: Conv2D" in texts and any("out (N, 5, 5, 16)" in t for t in texts)
    assert (tmp_path / "arch.png").read_bytes()[:4] == b"\x89PNG"


def test_lecture_cnn_conv_activation_is_a_parameter():
    assert build_model("lecture_cnn").conv_activation is None
    relu = build_model("lecture_cnn", conv_activation="relu")
    variables = relu.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    _, state = relu.apply(
        variables, -jnp.ones((1, 28, 28, 1)), capture_intermediates=True, mutable=["intermediates"]
    )
    # Conv2D records its inner convolution and then its activated output: the last is the layer's output.
    assert float(state["intermediates"]["conv1"]["__call__"][-1].min()) >= 0.0


# ---------------------------------------------------------------------------------------------- ConvNet
@pytest.mark.parametrize(
    "downsample", ["max", "avg", "none", "strided_conv", "depthwise_max", "depthwise_avg"]
)
@pytest.mark.parametrize("head", ["flatten_dense", "global_avg"])
def test_convnet_choices_build_train_and_follow_output_size(downsample, head):
    blocks = (
        ConvBlock(8, downsample=downsample),
        ConvBlock(16, kernel=5, padding="valid", downsample=downsample, batch_norm=True),
    )
    model = convnet(blocks, head=head, dense=(32,))
    state = create_train_state(model, make_optimizer(TrainConfig(model="convnet")), jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
    _, captured = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        x,
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    inter = captured["intermediates"]
    # The arithmetic of cnn.models.conv.output_size, block by block, against the real maps.
    h = 28
    for i, block in enumerate(blocks, start=1):
        h = conv.output_size(h, block.kernel, 2 if downsample == "strided_conv" else 1, block.padding)
        assert inter[f"block{i}_conv"]["__call__"][0].shape == (4, h, h, block.filters)
        c = block.filters
        if downsample in ("max", "avg"):
            h = conv.output_size(h, 2, 2)
        elif downsample.startswith("depthwise"):
            c //= 2
        if downsample in ("max", "avg", "depthwise_max", "depthwise_avg"):
            assert inter[f"block{i}_pool"]["__call__"][0].shape == (4, h, h, c)
    assert convnet_shapes(blocks)[-1] == (h, h, c)
    batch = {"image": x, "label": jnp.array([0, 1, 2, 3])}
    params_before = jax.tree.map(np.asarray, state.params)
    new_state, metrics = train_step(state, batch, jax.random.PRNGKey(2))
    assert np.isfinite(float(metrics["loss"]))
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(a, b), params_before, jax.device_get(new_state.params)
    )
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        (
            [ConvBlock(8, kernel=5, padding="valid")] * 3,
            r"block 3, conv 1 \(layer block3_conv\): a 5×5 kernel with 'valid' padding does not fit its "
            r"4×4×8 input",
        ),
        ([ConvBlock(8)] * 5, r"block 5 \(layer block5_pool\): a 2×2 pool does not fit its 1×1×8 input"),
        (
            [ConvBlock(6, downsample="depthwise_max", pool=4)],
            r"block 1 \(layer block1_pool\): depthwise pooling of 4 needs channels divisible by it; "
            r"the input is 28×28×6",
        ),
        ([ConvBlock(8, downsample="median")], r"block 1: downsample 'median'"),
        ([ConvBlock(8, padding="full")], r"block 1: padding 'full'"),
        ([ConvBlock(8), ConvBlock(0)], r"block 2: filters"),
        ([ConvBlock(8, activation="swishy")], r"activation: unknown 'swishy'"),
    ],
)
def test_invalid_convnets_are_rejected_before_compilation(blocks, message):
    with pytest.raises(ValueError, match=message):
        convnet(blocks, input_shape=(28, 28, 1))


def test_convnet_from_json_config_and_bad_keys():
    config = TrainConfig(
        model="convnet", model_args={"blocks": [{"filters": 8, "downsample": "avg"}], "dense": [16]}
    )
    model = build_model(config.model, **config.model_args)
    assert model.blocks[0].downsample == "avg" and model.dense == (16,)
    with pytest.raises(ValueError, match=r"block 1: unknown keys \['filter'\]"):
        check_run_config(TrainConfig(model="convnet", model_args={"blocks": [{"filter": 8}]}))
    with pytest.raises(ValueError, match="head"):
        check_run_config(TrainConfig(model="convnet", model_args={"head": "attention"}))
    with pytest.raises(ValueError, match="model_args: mlp does not take"):
        check_run_config(TrainConfig(model="mlp", model_args={"hiden": [10]}))


# ------------------------------------------------------------------------------------------------ layers
def _numpy_pool(x, size, reduce):
    n, h, w, c = x.shape
    oh, ow = h // size, w // size
    windows = x[:, : oh * size, : ow * size].reshape(n, oh, size, ow, size, c)
    return reduce(windows, axis=(2, 4))


@pytest.mark.parametrize("size", [2, 3])
def test_pooling_layers_against_numpy(size):
    x = np.random.default_rng(0).standard_normal((3, 11, 10, 6)).astype(np.float32)
    np.testing.assert_allclose(MaxPool(size).apply({}, x), _numpy_pool(x, size, np.max), rtol=1e-6)
    # the mean of a window: float rounding that depends on the CPU's instruction set (a window mean near
    # 1e-3 differs by 1.5e-8 on an AMD EPYC without AVX-512), hence the absolute part
    np.testing.assert_allclose(
        AvgPool(size).apply({}, x), _numpy_pool(x, size, np.mean), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(GlobalAvgPool().apply({}, x), x.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(GlobalMaxPool().apply({}, x), x.max(axis=(1, 2)), rtol=1e-6)
    depthwise = DepthwiseMaxPool(size).apply({}, x)
    expected = np.stack([x[..., g * size : (g + 1) * size].max(axis=-1) for g in range(6 // size)], axis=-1)
    np.testing.assert_array_equal(depthwise, expected)
    with pytest.raises(ValueError, match="pool_size: 6 channels do not split into groups of 4"):
        DepthwiseMaxPool(4).apply({}, x)


def test_overlapping_max_pool_matches_the_reference_loop():
    x = np.random.default_rng(1).standard_normal((1, 9, 9, 2)).astype(np.float32)
    out = MaxPool(3, strides=2, padding="SAME").apply({}, x)
    np.testing.assert_allclose(out[0], conv.pool2d_reference(x[0], 3, 2, "same"), rtol=1e-6)


def test_augmentation_is_a_shift_and_flip_in_training_only():
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1))
    layer = RandomShiftFlip(max_shift=2)
    np.testing.assert_array_equal(layer.apply({}, x, train=False), x)
    out = np.asarray(layer.apply({}, x, train=True, rngs={"augment": jax.random.PRNGKey(1)}))
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    found = []
    for i in range(8):
        candidates = [
            (dy, dx, f)
            for dy in range(5)
            for dx in range(5)
            for f in (False, True)
            if np.array_equal(
                out[i], (lambda c: c[:, ::-1] if f else c)(padded[i, dy : dy + 28, dx : dx + 28])
            )
        ]
        assert len(candidates) == 1, f"image {i} is not exactly one shift/flip of its input"
        found.append(candidates[0])
    assert 0 < sum(f for _, _, f in found) < 8  # some flipped, some not
    assert len({(dy, dx) for dy, dx, _ in found}) > 1  # several different shifts


def test_batch_norm_statistics_train_evaluate_and_checkpoint(tiny_splits, tmp_path):
    args = {"blocks": [{"filters": 8, "batch_norm": True}, {"filters": 8, "batch_norm": True}], "dense": [16]}
    config = TrainConfig(model="convnet", model_args=args, epochs=2, batch_size=32, patience=5)
    results = fit(config, tiny_splits, tmp_path)
    assert results["non_trainable_params"] == 2 * (8 + 8) and results["test_accuracy"] > 0.3
    model = build_model("convnet", **args)
    template = create_train_state(model, make_optimizer(config), jax.random.PRNGKey(config.seed))
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    state, meta = checkpoints.restore(meta_best := results["best_epoch"], template)
    checkpoints.close()
    # The running statistics moved away from their initial (0 mean, 1 variance) and were saved.
    mean = np.asarray(state.batch_stats["block1_bn"]["mean"])
    assert np.abs(mean).max() > 1e-3 and meta["stopping"]["best_epoch"] == meta_best
    restored = evaluate(state, tiny_splits.test)
    assert restored["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert json.loads((tmp_path / "results.json").read_text())["non_trainable_params"] == 32


@pytest.mark.parametrize(("size", "pool", "expected"), [(28, 2, 14), (28, 3, 9), (7, 2, 3)])
def test_max_pool_keeps_keras_sizes_and_values(size, pool, expected):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 3))
    out = MaxPool(pool).apply({}, x)
    assert out.shape == (2, expected, expected, 3)
    reference = jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, pool, pool, 1), (1, pool, pool, 1), "VALID"
    )
    np.testing.assert_array_equal(out, reference)


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(ValueError, match="Did you mean seed_cnn"):
        check_model_name("seed_cn")


@pytest.mark.parametrize("name", FASHION_ZOO)
def test_cli_trains_every_model(name, idx_dir, tmp_path, capsys):
    from cnn.cli.main import main

    code = main(
        [
            "train",
            "--model",
            name,
            "--source-dir",
            str(idx_dir),
            "--data-dir",
            str(tmp_path / "tfds"),
            "--epochs",
            "1",
            "--limit-train",
            "64",
            "--workdir",
            str(tmp_path / "run"),
            "--model-args",
            json.dumps(ZOO_ARGS.get(name, {})),
        ]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"] == name and results["params"] == EXPECTED_PARAMS[name]
    assert np.isfinite(results["test_loss"])


def test_cli_trains_a_famous_network_from_scratch(idx_dir, tmp_path, capsys):
    from cnn.cli.main import main

    args = ["train", "--model", "mobilenet_v2", "--source-dir", str(idx_dir)]
    args += ["--data-dir", str(tmp_path / "tfds"), "--epochs", "1", "--limit-train", "32"]
    args += ["--batch-size", "16", "--image-size", "32", "32", "--channels", "3"]
    code = main(args + ["--workdir", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["params"] == 2_223_872 + 1280 * 10 + 10  # trainable: Keras MobileNetV2 no top + 10-way top
    assert np.isfinite(results["test_loss"])


def test_cli_summary_with_plot(tmp_path, capsys):
    from cnn.cli.main import main

    assert main(["summary", "--model", "vgg_bn", "--plot", str(tmp_path / "vgg.png")]) == 0
    out = capsys.readouterr().out
    assert "Non-trainable params: 896" in out and "block3_pool (MaxPool)" in out
    assert (tmp_path / "vgg.png").stat().st_size > 5000


def tabulate_rows(model, shape=(28, 28, 1)):
    """Flax's own `tabulate` (XLA's cost analysis per module): {top-level path: flops}, and its total."""
    import re

    import flax.linen as nn

    text = nn.tabulate(
        model, jax.random.PRNGKey(0), compute_flops=True, console_kwargs={"width": 400, "no_color": True}
    )(jnp.zeros((1, *shape)))
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    flops = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) >= 5 and cells[0] and cells[0] != "path" and cells[4].isdigit():
            flops[cells[0]] = int(cells[4])
    total = int(re.search(r"Total Parameters: ([\d,]+)", text).group(1).replace(",", ""))
    return flops, total


@pytest.mark.parametrize("name", FASHION_ZOO)
def test_summary_counts_agree_with_flax_tabulate(name):
    """The summary's parameters equal flax.linen.tabulate's; its MACs are the multiply-adds behind
    tabulate's (XLA's) flops: 2 per MAC, plus at most a bias and an activation per output, less the taps
    that fall on 'same' padding (which XLA does not count)."""
    from cnn.models.summary import layer_rows, totals

    model = build_model(name)
    rows = layer_rows(model)
    flops, total = tabulate_rows(model)
    ours = totals(rows).trainable + totals(rows).non_trainable
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    assert ours == sum(p.size for p in jax.tree.leaves(variables))  # what the model really holds
    # tabulate lists the transfer model's backbone twice (as `base` and inside the `Cut` that runs it)
    assert ours == total - (rows[0].params if name == "transfer" else 0)
    checked = 0
    for row in rows:
        if row.kind in ("Conv2D", "Dense") and row.name in flops:
            outputs = int(np.prod(row.output_shape[1:]))
            assert 0.75 * 2 * row.macs <= flops[row.name] <= 2 * row.macs + 2 * outputs, row.name
            if row.kind == "Dense":
                assert flops[row.name] >= 2 * row.macs + outputs, row.name  # dense layers: exact
            checked += 1
    assert checked >= 2 or name == "transfer"
