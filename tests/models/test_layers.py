"""cnn.models.layers against Keras 3 itself (JAX backend, a test extra): the same arguments, the same
defaults, the same weights, outputs within 1e-5 for random shapes, strides, paddings and dilations
(hypothesis)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnn.models import layers, preprocessing
from tests import keras_files  # noqa: F401  (selects Keras' JAX backend before Keras is imported)

keras = pytest.importorskip("keras")

EXAMPLES = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _batch(draw, min_size: int = 1, max_channels: int = 4) -> np.ndarray:
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(min_size, 11)), draw(st.integers(min_size, 11))
    c = draw(st.integers(1, max_channels))
    seed = draw(st.integers(0, 2**31 - 1))
    return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(np.float32)


def _ours(module, x: np.ndarray, **kwargs):
    variables = module.init(jax.random.PRNGKey(0), x, **kwargs)
    return variables, np.asarray(module.apply(variables, x, **kwargs))


def _theirs(layer, x: np.ndarray, weights=None, **kwargs) -> np.ndarray:
    layer.build(x.shape)
    if weights is not None:
        layer.set_weights([np.asarray(w) for w in weights])
    return np.asarray(layer(x, **kwargs))


@st.composite
def conv_cases(draw):
    x = _batch(draw)
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding = draw(st.sampled_from(["valid", "same"]))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (1, 1) if strides != (1, 1) else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    span = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    if padding == "valid" and (span[0] > x.shape[1] or span[1] > x.shape[2]):
        padding = "same"
    groups = draw(st.sampled_from([g for g in (1, 2) if x.shape[-1] % g == 0]))
    args = {
        "filters": groups * draw(st.integers(1, 3)),
        "kernel_size": (kh, kw),
        "strides": strides,
        "padding": padding,
        "dilation_rate": dilation,
        "groups": groups,
        "activation": draw(st.sampled_from([None, "relu", "tanh", "sigmoid"])),
        "use_bias": draw(st.booleans()),
    }
    return x, args


@EXAMPLES
@given(conv_cases())
def test_conv2d_equals_keras(case):
    x, args = case
    module = layers.Conv2D(**args)
    params = dict(module.init(jax.random.PRNGKey(0), x)["params"])
    if args["use_bias"]:  # a bias that is not zero
        params["bias"] = np.linspace(-1, 1, args["filters"], dtype=np.float32)
    ours = np.asarray(module.apply({"params": params}, x))
    theirs = _theirs(keras.layers.Conv2D(**args), x, list(params.values()))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, **TOL)


@EXAMPLES
@given(st.data())
def test_dense_equals_keras(data):
    x = _batch(data.draw)[:, 0, 0, :] if data.draw(st.booleans()) else _batch(data.draw)
    units = data.draw(st.integers(2, 6))
    act = data.draw(st.sampled_from([None, "relu", "softmax", "gelu", "sigmoid"]))
    use_bias = data.draw(st.booleans())
    module = layers.Dense(units, activation=act, use_bias=use_bias)
    variables, _ = _ours(module, x)
    p = dict(variables["params"])
    if use_bias:
        p["bias"] = np.linspace(-1, 1, units, dtype=np.float32)
    ours = np.asarray(module.apply({"params": p}, x))
    theirs = _theirs(
        keras.layers.Dense(units, activation=act, use_bias=use_bias),
        x,
        [p["kernel"], *([p["bias"]] if use_bias else [])],
    )
    np.testing.assert_allclose(ours, theirs, **TOL)


@EXAMPLES
@given(st.data())
def test_pooling_equals_keras(data):
    x = _batch(data.draw, min_size=3)
    size = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    strides = data.draw(st.sampled_from([None, 1, 2, (1, 2), (3, 1)]))
    padding = data.draw(st.sampled_from(["valid", "same"]))
    for ours, theirs in (
        (layers.MaxPooling2D, keras.layers.MaxPooling2D),
        (layers.AveragePooling2D, keras.layers.AveragePooling2D),
    ):
        _, out = _ours(ours(size, strides=strides, padding=padding), x)
        expected = _theirs(theirs(size, strides=strides, padding=padding), x)
        assert out.shape == expected.shape, (ours, size, strides, padding)
        np.testing.assert_allclose(out, expected, **TOL)


@EXAMPLES
@given(st.data())
def test_depthwise_conv_and_zero_padding_equal_keras(data):
    x = _batch(data.draw, min_size=3)
    k = data.draw(st.integers(1, 3))
    strides = data.draw(st.sampled_from([1, 2]))
    padding = data.draw(st.sampled_from(["valid", "same"]))
    use_bias = data.draw(st.booleans())
    module = layers.DepthwiseConv2D(k, strides=strides, padding=padding, use_bias=use_bias)
    variables, ours = _ours(module, x)
    kernel = variables["params"]["depthwise"]["kernel"]  # (k, k, 1, C): Keras stores (k, k, C, 1)
    weights = [np.swapaxes(kernel, 2, 3), *([variables["params"]["depthwise"]["bias"]] if use_bias else [])]
    theirs = _theirs(
        keras.layers.DepthwiseConv2D(k, strides=strides, padding=padding, use_bias=use_bias), x, weights
    )
    np.testing.assert_allclose(ours, theirs, **TOL)

    pad = data.draw(st.sampled_from([1, (2, 0), ((0, 1), (2, 3))]))
    _, ours = _ours(layers.ZeroPadding2D(pad), x)
    np.testing.assert_array_equal(ours, _theirs(keras.layers.ZeroPadding2D(pad), x))


@EXAMPLES
@given(st.data())
def test_batch_normalization_equals_keras(data):
    x = _batch(data.draw)
    c = x.shape[-1]
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    mean, var = rng.normal(size=c), rng.uniform(0.5, 2.0, c)
    scale = data.draw(st.booleans())
    train = data.draw(st.booleans())
    module = layers.BatchNormalization(use_scale=scale)
    params = {"bias": beta, **({"scale": gamma} if scale else {})}
    variables = {"params": params, "batch_stats": {"mean": mean, "var": var}}
    if train:
        ours = module.apply(variables, x, True, mutable=["batch_stats"])[0]
    else:
        ours = module.apply(variables, x)
    keras_layer = keras.layers.BatchNormalization(scale=scale)
    theirs = _theirs(keras_layer, x, [*([gamma] if scale else []), beta, mean, var], training=train)
    np.testing.assert_allclose(np.asarray(ours), theirs, **TOL)


@EXAMPLES
@given(st.data())
def test_parameterless_layers_equal_keras(data):
    x = _batch(data.draw)
    y = np.random.default_rng(0).normal(size=(*x.shape[:3], data.draw(st.integers(1, 3)))).astype(np.float32)
    cases = [
        (layers.Flatten(), keras.layers.Flatten(), x),
        (layers.GlobalAveragePooling2D(), keras.layers.GlobalAveragePooling2D(), x),
        (layers.GlobalMaxPooling2D(), keras.layers.GlobalMaxPooling2D(), x),
        (layers.Activation("relu", max_value=0.5), keras.layers.ReLU(max_value=0.5), x),
        (layers.Activation("tanh"), keras.layers.Activation("tanh"), x),
    ]
    for ours, theirs, inputs in cases:
        np.testing.assert_allclose(_ours(ours, inputs)[1], _theirs(theirs, inputs), **TOL)
    np.testing.assert_allclose(_ours(layers.Add(), [x, x])[1], np.asarray(keras.layers.Add()([x, x])), **TOL)
    np.testing.assert_allclose(
        _ours(layers.Concatenate(), [x, y])[1], np.asarray(keras.layers.Concatenate()([x, y])), **TOL
    )


def test_keras_defaults():
    """The defaults a reader of Keras code expects: no padding, stride 1 (pooling: the pool size)."""
    x = np.zeros((10, 28, 28, 1), np.float32)
    assert _ours(layers.Conv2D(10, (3, 3)), x)[1].shape == (10, 26, 26, 10)
    assert _theirs(keras.layers.Conv2D(10, (3, 3)), x).shape == (10, 26, 26, 10)
    for size, shape in ((2, (10, 14, 14, 1)), (3, (10, 9, 9, 1))):
        assert _theirs(keras.layers.MaxPooling2D(size), x).shape == shape
        assert _ours(layers.MaxPooling2D(size), x)[1].shape == shape
        assert _ours(layers.AveragePooling2D(size), x)[1].shape == shape
    assert layers.Conv2D(1, 1).padding == keras.layers.Conv2D(1, 1).padding == "valid"
    assert layers.MaxPool().padding == keras.layers.MaxPooling2D().padding == "valid"
    assert layers.DepthwiseConv2D().padding == "valid"


def test_layer_argument_errors():
    x = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="padding: expected 'valid' or 'same', got 'full'"):
        _ours(layers.Conv2D(4, 3, padding="full"), x)
    with pytest.raises(ValueError, match="padding: expected 'valid' or 'same'"):
        _ours(layers.MaxPool(2, padding="causal"), x)
    with pytest.raises(ValueError, match="groups: 2 does not divide the input's 3 channels"):
        _ours(layers.Conv2D(4, 3, groups=2), x)
    with pytest.raises(ValueError, match="kernel_size: expected a positive integer"):
        _ours(layers.Conv2D(4, 0), x)
    with pytest.raises(ValueError, match=r"padding: expected p, \(rows, cols\)"):
        _ours(layers.ZeroPadding2D((1, 2, 3)), x)


def test_depthwise_pooling_over_channel_groups():
    """No Keras layer to compare with: the max and the mean of each group of `pool_size` channels."""
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 6)).astype(np.float32)
    groups = x.reshape(2, 3, 3, 3, 2)
    np.testing.assert_allclose(_ours(layers.DepthwiseMaxPool(2), x)[1], groups.max(-1), rtol=1e-6)
    np.testing.assert_allclose(_ours(layers.DepthwiseAvgPool(2), x)[1], groups.mean(-1), rtol=1e-6)
    with pytest.raises(ValueError, match="6 channels do not split into groups of 4"):
        _ours(layers.DepthwiseAvgPool(4), x)


def test_rotation_matches_scipy_and_quarter_turns_are_exact():
    import scipy.ndimage

    x = np.random.default_rng(0).random((2, 9, 11, 2)).astype(np.float32)
    for angle in (30, -45, 90):
        expected = np.stack(
            [
                np.stack(
                    [scipy.ndimage.rotate(im[:, :, k], angle, reshape=False, order=1) for k in range(2)], -1
                )
                for im in x
            ]
        )
        # scipy treats the last half pixel at the border differently: compare the inside
        np.testing.assert_allclose(
            np.asarray(preprocessing.rotate(x, angle))[:, 2:-2, 2:-2], expected[:, 2:-2, 2:-2], atol=1e-5
        )
    square = x[:, :9, :9]
    np.testing.assert_allclose(
        np.asarray(preprocessing.rotate(square, 90)), np.rot90(square, axes=(1, 2)), atol=1e-6
    )
    module = preprocessing.RandomRotation(30.0)
    np.testing.assert_array_equal(np.asarray(module.apply({}, x)), x)  # not training: the identity
    turned = np.asarray(module.apply({}, x, True, rngs={"augment": jax.random.PRNGKey(0)}))
    assert turned.shape == x.shape and not np.allclose(turned, x)


@pytest.mark.parametrize("size", [(2, 2), (3, 3), (2, 3)])
def test_max_pool_gradient_shares_ties_as_jnp_max(size):
    """MaxPool's fast CPU gradient equals differentiating a reshape + `jnp.max` (ties split equally),
    on maps full of ties (few distinct values) and with rows and columns left over; its maxima are the same
    whether it is differentiated (the slices) or not (`reduce_window`, compiled or not)."""
    x = np.random.default_rng(0).integers(0, 3, size=(2, 9, 10, 3)).astype(np.float32)
    g = np.random.default_rng(1).normal(size=(2, 9 // size[0], 10 // size[1], 3)).astype(np.float32)

    def reference(x):
        oh, ow = 9 // size[0], 10 // size[1]
        crop = x[:, : oh * size[0], : ow * size[1], :]
        return crop.reshape(2, oh, size[0], ow, size[1], 3).max(axis=(2, 4))

    ours, vjp = jax.vjp(lambda x: layers.MaxPool(size).apply({}, x), x)
    expected, vjp_ref = jax.vjp(reference, x)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected))
    np.testing.assert_allclose(np.asarray(vjp(g)[0]), np.asarray(vjp_ref(g)[0]), rtol=1e-6, atol=1e-7)
    plain = layers.MaxPool(size).apply
    np.testing.assert_array_equal(np.asarray(plain({}, x)), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(jax.jit(plain)({}, x)), np.asarray(expected))


@pytest.mark.parametrize(
    ("kernel", "strides", "padding", "dilation"),
    [
        (3, 1, "SAME", 1),
        (3, 2, "SAME", 1),
        (5, 1, "VALID", 1),
        (3, 2, "VALID", 1),
        (3, 1, "SAME", 2),
        (2, 3, "SAME", 1),
    ],
)
def test_a_convolution_as_patches_times_the_kernel_equals_xlas(kernel, strides, padding, dilation):
    """The formulation runs trained together may use (`Members(conv="matmul")`): the same numbers, up to
    float rounding, for every padding, stride and dilation."""
    from cnn.models.computation import conv_as_matmul, conv_formulation

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 11, 9, 3)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, 3, 4)).astype(np.float32)
    want = jax.lax.conv_general_dilated(
        x,
        w,
        (strides, strides),
        padding,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    got = conv_as_matmul(jnp.asarray(x), jnp.asarray(w), (strides, strides), padding, (dilation, dilation))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    layer = layers.Conv2D(4, kernel, strides=strides, padding=padding.lower(), dilation_rate=dilation)
    variables = layer.init(jax.random.PRNGKey(0), x)
    with conv_formulation("matmul"):
        as_matmul = layer.apply(variables, x)
    np.testing.assert_allclose(as_matmul, layer.apply(variables, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="conv formulation"), conv_formulation("winograd"):
        pass


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2),
    st.integers(1, 2), st.sampled_from(["SAME", "VALID"]), st.integers(5, 13), st.integers(5, 13),
)  # fmt: skip
def test_a_convolutions_gradient_written_out_equals_jaxs(kh, kw, sh, sw, dh, dw, padding, h, w):
    """`conv_with_plain_gradients` (what a rolled training loop differentiates on the CPU): the input's and
    the kernel's gradients equal JAX's own for every kernel, stride, dilation and padding."""
    from cnn.models.computation import conv_with_plain_gradients

    if padding == "VALID" and ((kh - 1) * dh + 1 > h or (kw - 1) * dw + 1 > w):
        padding = "SAME"
    rng = np.random.default_rng(kh * 1000 + h)
    x = jnp.asarray(rng.normal(size=(2, h, w, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kh, kw, 3, 4)), jnp.float32)
    dimensions = ("NHWC", "HWIO", "NHWC")

    def jaxs(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (sh, sw), padding, rhs_dilation=(dh, dw), dimension_numbers=dimensions
        )

    def written_out(x, k):
        return conv_with_plain_gradients(x, k, (sh, sw), padding, (dh, dw))

    def value_and_pullback(f):  # one compiled program per case, not one per operation
        def both(x, k, g):
            y, pull = jax.vjp(f, x, k)
            return y, pull(g)

        return jax.jit(both)

    g = jnp.asarray(rng.normal(size=jax.eval_shape(jaxs, x, k).shape), jnp.float32)
    y, theirs = value_and_pullback(jaxs)(x, k, g)
    ours_y, ours = value_and_pullback(written_out)(x, k, g)
    np.testing.assert_array_equal(ours_y, y)
    for mine, expected in zip(ours, theirs, strict=True):
        assert mine.shape == expected.shape
        np.testing.assert_allclose(mine, expected, rtol=1e-5, atol=1e-5)


def test_a_rolled_training_loop_on_the_cpu_convolves_in_the_fast_layout_only():
    """Inside a rolled loop XLA:CPU leaves JAX's gradient convolutions in the layouts it computes slowly;
    the rolled train loop's compiled program holds none of them."""
    import functools

    from cnn.config import TrainConfig
    from cnn.data.spec import FASHION_MNIST
    from cnn.engine.state import initial_state
    from cnn.engine.steps import train_chunk

    state = initial_state(TrainConfig(), FASHION_MNIST)
    images, labels = jnp.zeros((64, 28, 28, 1), jnp.uint8), jnp.zeros(64, jnp.int32)
    program = jax.jit(functools.partial(train_chunk, batch_size=32, steps=2, unroll=False))
    args = (state, images, labels, jnp.arange(64, dtype=jnp.int32), 0, jax.random.PRNGKey(0), None)
    text = program.lower(*args).compile().as_text()
    layouts = {
        line.split("dim_labels=")[1].split(",")[0] for line in text.splitlines() if " convolution(" in line
    }
    assert layouts == {"b01f_01io->b01f"}, layouts
