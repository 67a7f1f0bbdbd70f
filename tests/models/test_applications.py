"""cnn.models.applications.networks against Keras itself (Keras 3 on the JAX backend, a test extra): the same
outputs at the last layer and at named intermediate layers, from weight files in the published Keras 2 layout
(written with h5py here) and in Keras 3's layouts; the same parameter counts; the sources' InceptionV3
transfer model."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from cnn import TrainConfig
from cnn.data.spec import DataSpec
from cnn.errors import WeightsError
from cnn.models.applications import networks as applications
from cnn.models.applications.networks import build, imagenet_file, preprocess_input
from cnn.models.registry import build_model, model_summary
from cnn.models.summary import layer_rows, totals
from cnn.studies.transfer import (
    SOURCES_DATA,
    format_counts,
    load_backbone,
    parameter_counts,
    transfer_config,
    transfer_state,
)
from tests.keras_files import KERAS_BUILDERS, keras_model, write_keras2_h5

keras = pytest.importorskip("keras")

INTERMEDIATE = {
    "inception_v3": ("mixed2", "mixed7"),
    "vgg16": ("block3_conv3", "block4_pool"),
    "resnet50": ("conv3_block4_out", "conv4_block6_out"),
    "mobilenet_v2": ("block_6_expand_relu", "block_16_project_BN"),
}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """Per network (built once): the Keras model with random weights and statistics, its weight files in
    three layouts, a random batch and Keras' outputs at the last and the intermediate layers."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            folder = tmp_path_factory.mktemp(name)
            model = keras_model(name)
            shape = KERAS_BUILDERS[name][1]
            x = np.random.default_rng(1).uniform(-1, 1, (2, *shape)).astype(np.float32)
            layers = [model.get_layer(n).output for n in INTERMEDIATE[name]]
            outputs = keras.Model(model.input, [model.output, *layers]).predict(x, verbose=0)
            model.save_weights(folder / "random.weights.h5")
            model.save(folder / "random.keras")
            cache[name] = {
                "model": model,
                "shape": shape,
                "x": x,
                "outputs": [np.asarray(o) for o in outputs],
                "keras2": write_keras2_h5(model, folder / f"{name}_keras2.h5"),
                "keras3": folder / "random.weights.h5",
                "keras_zip": folder / "random.keras",
            }
        return cache[name]

    return get


def _relative(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-12))


@pytest.mark.parametrize("name", sorted(KERAS_BUILDERS))
def test_outputs_equal_keras_from_the_published_layout_and_keras_3s(name, oracle, monkeypatch, tmp_path):
    monkeypatch.setenv(
        "HOME", str(tmp_path)
    )  # the orbax cache of converted weights lands in this test's home
    o = oracle(name)
    names = INTERMEDIATE[name]
    for layout in ("keras2", "keras3"):
        model, variables = build(name, input_shape=o["shape"], weights=o[layout])
        apply = jax.jit(
            lambda v, x, model=model: model.apply(
                v, x, capture_intermediates=lambda m, _: m.name in names, mutable=["intermediates"]
            )
        )
        out, captured = apply(variables, o["x"])
        assert _relative(out, o["outputs"][0]) < 1e-4, (layout, "last layer")
        for layer, expected in zip(names, o["outputs"][1:], strict=True):
            got = captured["intermediates"][layer]["__call__"][-1]  # a layer's own (outermost) output
            assert _relative(got, expected) < 1e-4, (layout, layer)
    cut, cut_vars = build(name, input_shape=o["shape"], weights=o["keras2"], cut=names[1])
    assert (
        _relative(jax.jit(cut.apply)(cut_vars, o["x"]), o["outputs"][2]) < 1e-4
    )  # the cut stops at that layer
    assert set(jax.tree.leaves(jax.tree.map(lambda a: a.shape, cut_vars))) and len(
        jax.tree.leaves(cut_vars)
    ) < len(jax.tree.leaves(variables))


def test_the_keras_zip_layout_and_a_written_file_that_keras_reads_back(oracle):
    o = oracle("mobilenet_v2")
    model, variables = build("mobilenet_v2", input_shape=o["shape"], weights=o["keras_zip"])
    assert _relative(model.apply(variables, o["x"]), o["outputs"][0]) < 1e-4
    fresh = keras_model("mobilenet_v2", seed=7)
    fresh.load_weights(o["keras2"])  # Keras' own loader accepts the file the tests write
    assert _relative(fresh.predict(o["x"], verbose=0), o["outputs"][0]) < 1e-6


@pytest.mark.parametrize("name", sorted(KERAS_BUILDERS))
@pytest.mark.parametrize("include_top", [False, True])
def test_parameter_counts_equal_keras(name, include_top):
    builder, shape = KERAS_BUILDERS[name]
    k = getattr(keras.applications, builder)(
        include_top=include_top, weights=None, input_shape=shape, classes=7
    )
    trainable = sum(int(np.prod(w.shape)) for w in k.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in k.non_trainable_weights)
    model = applications.application(name, input_shape=shape, include_top=include_top, classes=7)
    t = totals(layer_rows(model, shape))
    assert (t.trainable, t.non_trainable) == (trainable, non_trainable)
    assert [row.name for row in layer_rows(model, shape)] == [
        layer.name for layer in k.layers[1:]
    ] or name in (
        "inception_v3",
        "resnet50",
    )  # the same layers; Keras lists some in another (topological) order, see keras_order


def test_the_sources_inception_v3_transfer_model_counts():
    config = transfer_config(
        "inception_v3", "mixed7", 10, head_units=[64], base_args={"include_top": False},
        optimizer="rmsprop", lr=5e-4,
    )  # fmt: skip
    state, labels = transfer_state(config, SOURCES_DATA, None, freeze="backbone")
    counts = parameter_counts(state.params, labels, state.batch_stats)
    assert counts == {"trainable": 443_082, "non_trainable": 8_975_264}
    assert "Total params: 9,418,346" in format_counts(counts)
    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3))
    base.trainable = False
    x = keras.layers.Flatten()(base.get_layer("mixed7").output)
    x = keras.layers.Dense(10, activation="softmax")(keras.layers.Dense(64, activation="relu")(x))
    k = keras.Model(base.input, x)
    assert k.count_params() == 9_418_346
    assert sum(int(np.prod(w.shape)) for w in k.trainable_weights) == counts["trainable"]


def test_missing_imagenet_file_names_it_where_and_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    file_name, url = imagenet_file("inception_v3")
    with pytest.raises(WeightsError) as error:
        build("inception_v3", input_shape=(75, 75, 3), weights="imagenet")
    message = str(error.value)
    assert file_name == "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" and file_name in message
    assert str(tmp_path / "keras" / "models") in message and url in message and url.startswith("https://")


def test_imagenet_weights_are_found_where_keras_caches_them_and_cached_after(oracle, tmp_path, monkeypatch):
    o = oracle("vgg16")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / imagenet_file("vgg16")[0]).write_bytes(o["keras2"].read_bytes())
    start = time.perf_counter()
    model, first = build("vgg16", input_shape=o["shape"], weights="imagenet")
    converted = time.perf_counter() - start
    assert list((tmp_path / "home" / ".keras" / "models" / "cnn-orbax").iterdir())
    monkeypatch.setattr(applications, "match_weights", lambda *a: pytest.fail("converted again"))
    start = time.perf_counter()
    _, second = build("vgg16", input_shape=o["shape"], weights="imagenet")
    assert _relative(model.apply(second, o["x"]), o["outputs"][0]) < 1e-4
    assert time.perf_counter() - start < converted + 5
    jax.tree.map(np.testing.assert_array_equal, first, second)


def test_mismatched_files_name_the_layer_and_both_shapes(oracle, tmp_path):
    o = oracle("vgg16")
    with pytest.raises(
        WeightsError, match=r"conv2d: the network has 0 .*the file|the file's layers do not match"
    ):
        build("resnet50", input_shape=(32, 32, 3), weights=o["keras2"])
    top = keras.applications.VGG16(include_top=True, weights=None, input_shape=(32, 32, 3), classes=5)
    path = write_keras2_h5(top, tmp_path / "vgg16_top5.h5")
    with pytest.raises(
        WeightsError,
        match=r"layer predictions .*: the file has shape \((4096, )?5,?\), "
        r"the network needs \((4096, )?7,?\)",
    ):
        build("vgg16", input_shape=(32, 32, 3), include_top=True, classes=7, weights=path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="junk.h5 is not a readable Keras weight file"):
        build("vgg16", input_shape=(32, 32, 3), weights=tmp_path / "junk.h5")
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(o["keras2"].read_bytes())
    with h5py.File(damaged, "r+") as f:  # one NaN in the second convolution's kernel
        kernels = []
        f.visititems(lambda name, item: kernels.append(name) if name.endswith("kernel:0") else None)
        kernel = f[sorted(kernels)[1]]
        values = kernel[...]
        values.flat[7] = np.nan
        kernel[...] = values
    with pytest.raises(WeightsError, match=r"layer \S+ \(.*damaged.h5\) holds NaN or Inf values \(.*kernel"):
        build("vgg16", input_shape=(32, 32, 3), weights=damaged)


@pytest.mark.parametrize("shape", [(75, 75), (75.0, 75, 3), (75, 0, 3), 75, "75x75x3", (75, True, 3)])
def test_a_malformed_input_shape_is_named(shape):
    with pytest.raises(ValueError, match=r"input_shape: expected three positive integers .* got"):
        build("inception_v3", input_shape=shape)


def test_weights_that_are_a_folder_a_misspelt_name_or_missing_are_named_before_any_work(
    tmp_path, monkeypatch
):
    initialised = []
    monkeypatch.setattr(applications, "compiled_init", lambda model: initialised.append(model))
    with pytest.raises(WeightsError, match="is a folder; give a Keras weight file"):
        build("vgg16", input_shape=(32, 32, 3), weights=tmp_path)
    with pytest.raises(WeightsError, match="'ImageNet': the published weights are named 'imagenet'"):
        build("vgg16", input_shape=(32, 32, 3), weights="ImageNet")
    with pytest.raises(WeightsError, match="missing.h5 does not exist"):
        build("inception_v3", input_shape=(75, 75, 3), weights=tmp_path / "missing.h5")
    assert initialised == []  # not even the program that initialises the network was built


def test_weights_from_a_file_are_not_initialised_first(oracle, monkeypatch):
    """Every array comes from the file: the random initialisation is traced for its shapes, never run."""
    o = oracle("vgg16")
    ran = []
    real = applications.compiled_init
    monkeypatch.setattr(applications, "compiled_init", lambda model: _counting(real(model), ran))
    _, variables = build("vgg16", input_shape=o["shape"], weights=o["keras2"])
    _, random = build("vgg16", input_shape=o["shape"])
    assert len(ran) == 1  # the random network's; the one with weights only traced its shapes
    assert jax.tree.structure(variables) == jax.tree.structure(random)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(variables))


def test_a_variable_the_file_does_not_give_keeps_its_initialisation(oracle, monkeypatch):
    o = oracle("vgg16")
    real = applications.cached

    def without_the_first_kernel(path, key, convert):
        loaded = real(path, key, convert)
        first = sorted(loaded["params"])[0]
        kernel = loaded["params"][first]["kernel"]
        layer = {**loaded["params"][first], "kernel": jax.ShapeDtypeStruct(kernel.shape, kernel.dtype)}
        return {**loaded, "params": {**loaded["params"], first: layer}}

    monkeypatch.setattr(applications, "cached", without_the_first_kernel)
    _, variables = build("vgg16", input_shape=o["shape"], weights=o["keras2"], seed=3)
    _, random = build("vgg16", input_shape=o["shape"], seed=3)
    first = sorted(variables["params"])[0]
    np.testing.assert_array_equal(variables["params"][first]["kernel"], random["params"][first]["kernel"])
    second = sorted(variables["params"])[1]
    assert not np.array_equal(variables["params"][second]["kernel"], random["params"][second]["kernel"])


def _counting(init, calls: list):
    def counted(*args):
        if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args)):
            calls.append(args)
        return init(*args)

    return counted


def test_options_checked_as_keras_checks_them():
    with pytest.raises(ValueError, match="at least 75×75"):
        build("inception_v3", input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="pooling"):
        build("vgg16", input_shape=(32, 32, 3), pooling="mean")
    with pytest.raises(ValueError, match="cut: resnet50 has no layer 'mixed7'"):
        build("resnet50", input_shape=(32, 32, 3), cut="mixed7")
    model, variables = build("mobilenet_v2", input_shape=(32, 32, 3), pooling="avg")
    assert model.apply(variables, np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 1280)


def test_preprocessing_follows_each_family():
    image = np.array([[[[255, 0, 10]]]], np.uint8)
    np.testing.assert_allclose(
        preprocess_input("inception_v3", image), [[[[1.0, -1.0, 10 / 127.5 - 1]]]], rtol=1e-6
    )
    np.testing.assert_allclose(
        preprocess_input("resnet50", image), [[[[10 - 103.939, 0 - 116.779, 255 - 123.68]]]], rtol=1e-6
    )
    np.testing.assert_allclose(
        preprocess_input("vgg16", image),
        keras.applications.vgg16.preprocess_input(image.astype(np.float32)),
        rtol=1e-6,
    )


def test_zoo_registry_summary_and_a_backbone_from_a_keras_file(oracle):
    assert "Total params: 2,257,984" in model_summary(
        "mobilenet_v2", input_shape=(32, 32, 3), include_top=False
    )
    model = build_model("resnet50", input_shape=(32, 32, 3), num_classes=7)
    assert totals(layer_rows(model, (32, 32, 3))).trainable == 23_534_592 + 2048 * 7 + 7  # no top + dense
    o = oracle("resnet50")
    backbone = load_backbone(o["keras2"], application="resnet50", input_shape=(32, 32, 3))
    config = TrainConfig(
        model="transfer",
        model_args={
            "base": "resnet50",
            "cut": "conv4_block6_out",
            "head": [],
            "base_args": {"include_top": False},
        },
    )
    colour = DataSpec("three", (32, 32, 3), ("a", "b", "c"))
    state, _ = transfer_state(config, colour, backbone, freeze="backbone")
    assert state.input_shape == (32, 32, 3)  # what evaluate and predict check images against
    kernel = state.params["base"]["conv1_conv"]["kernel"]
    np.testing.assert_allclose(kernel, o["model"].get_layer("conv1_conv").kernel.numpy(), rtol=1e-6)
    assert Path(o["keras2"]).is_file()
