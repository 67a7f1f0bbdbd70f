"""Convolution from first principles: the loop, the vectorised version, lax and flax must all agree."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnn.analysis import receptive_field
from cnn.models import conv
from cnn.models.registry import build_model

PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rel_close(a, b, tol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.abs(b).max(), 1e-6)
    assert np.abs(a - b).max() / scale < tol


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["valid", "same", "int", "explicit"]))
    if padding == "int":
        padding = draw(st.integers(0, 3))
    elif padding == "explicit":
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h, w = draw(st.integers(span_h, span_h + 8)), draw(st.integers(span_w, span_w + 8))
    c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    return dict(
        shape=(h, w, c_in),
        kernel=(kh, kw, c_in, c_out),
        stride=stride,
        padding=padding,
        dilation=(dh, dw),
        seed=seed,
    )


def _lax_padding(padding):
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return padding


# The vectorised convolution and pooling, and flax's, each compiled as one program per drawn case rather than
# run operation by operation (each operation of a new shape compiles on its own; test_conv2d_is_jittable
# checks that the compiled and the operation-by-operation convolution agree).
conv2d = jax.jit(conv.conv2d, static_argnames=("stride", "padding", "dilation"))
pool2d = jax.jit(conv.pool2d, static_argnums=(1, 2, 3, 4))
flax_pools = {
    "max": jax.jit(nn.max_pool, static_argnums=(1, 2, 3)),
    "avg": jax.jit(nn.avg_pool, static_argnums=(1, 2, 3), static_argnames=("count_include_pad",)),
}


@PROPERTY
@given(conv_cases())
def test_reference_equals_vectorised_equals_lax_equals_flax(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"]).astype(np.float32)
    kernel = rng.standard_normal(case["kernel"]).astype(np.float32)
    bias = rng.standard_normal(case["kernel"][3]).astype(np.float32)
    args = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"])

    reference = conv.conv2d_reference(x, kernel, bias, **args)
    vectorised = conv2d(jnp.asarray(x[None]), jnp.asarray(kernel), jnp.asarray(bias), **args)[0]
    lax = (
        jax.jit(
            jax.lax.conv_general_dilated,
            static_argnums=(2, 3),
            static_argnames=("rhs_dilation", "dimension_numbers", "precision"),
        )(
            x[None],
            kernel,
            case["stride"],
            _lax_padding(case["padding"]),
            rhs_dilation=case["dilation"],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )[0]
        + bias
    )
    layer = nn.Conv(
        case["kernel"][3],
        case["kernel"][:2],
        strides=case["stride"],
        padding=_lax_padding(case["padding"]),
        kernel_dilation=case["dilation"],
        precision=jax.lax.Precision.HIGHEST,
    )
    flax_out = jax.jit(layer.apply)({"params": {"kernel": kernel, "bias": bias}}, x[None])[0]

    _rel_close(vectorised, reference)
    _rel_close(lax, reference)
    _rel_close(flax_out, reference)
    expected_shape = tuple(
        conv.output_size(n, k, s, p, d)
        for n, k, s, p, d in zip(
            case["shape"][:2],
            case["kernel"][:2],
            case["stride"],
            _per_axis(case["padding"]),
            case["dilation"],
            strict=True,
        )
    )
    assert reference.shape == (*expected_shape, case["kernel"][3])


def _per_axis(padding):
    if isinstance(padding, str | int):
        return padding, padding
    return (padding[0], (0, 0)), (padding[1], (0, 0))


@PROPERTY
@given(
    size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    padding=st.sampled_from(["valid", "same"]),
    hw=st.tuples(st.integers(4, 12), st.integers(4, 12)),
    channels=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_pooling_reference_equals_vectorised_equals_flax(size, stride, padding, hw, channels, seed):
    x = np.random.default_rng(seed).standard_normal((*hw, channels)).astype(np.float32)
    strides = stride or size
    for mode, flax_pool in flax_pools.items():
        reference = conv.pool2d_reference(x, size, stride, padding, mode)
        vectorised = pool2d(jnp.asarray(x[None]), size, stride, padding, mode)[0]
        kwargs = {"count_include_pad": False} if mode == "avg" else {}
        flax_out = flax_pool(x[None], size, strides, padding.upper(), **kwargs)[0]
        _rel_close(vectorised, reference)
        _rel_close(flax_out, reference)
        assert reference.shape[:2] == tuple(
            conv.output_size(n, k, s, padding) for n, k, s in zip(hw, size, strides, strict=True)
        )


def test_two_dimensional_image_and_kernel():
    x = np.arange(16.0).reshape(4, 4)
    out = conv.conv2d_reference(x, np.array([[1.0, 0], [0, -1]]))
    assert out.shape == (3, 3)
    assert np.all(out == -5.0)  # x[i, j] - x[i + 1, j + 1] = -5 everywhere


def test_flipped_kernel_gives_the_mathematical_convolution():
    from scipy.signal import convolve2d

    rng = np.random.default_rng(0)
    x, k = rng.standard_normal((6, 7)), rng.standard_normal((3, 2))
    _rel_close(conv.conv2d_reference(x, k[::-1, ::-1]), convolve2d(x, k, mode="valid"))


@pytest.mark.parametrize(
    ("n", "k", "s", "padding", "expected"),
    [
        (28, 3, 1, "valid", 26),
        (28, 3, 1, "same", 28),
        (28, 2, 2, "valid", 14),
        (28, 3, 3, "valid", 9),
        (28, 3, 2, "same", 14),
        (7, 2, 2, "same", 4),
        (28, 5, 1, 2, 28),
        (10, 3, 1, "valid", 8),
    ],
)
def test_output_size_examples(n, k, s, padding, expected):
    assert conv.output_size(n, k, s, padding) == expected


def test_same_padding_puts_the_extra_zero_at_the_end():
    assert conv.same_padding(28, 2) == (0, 1)
    assert conv.same_padding(7, 2, stride=2) == (0, 1)
    assert conv.same_padding(28, 3) == (1, 1)
    assert conv.same_padding(28, 4, stride=3) == (1, 2)


# ------------------------------------------------------------------------------------------------ filters
def test_box_filter_preserves_a_constant_image():
    image = np.full((10, 10), 0.37)
    out = conv.conv2d_reference(image, conv.box(3))
    np.testing.assert_allclose(out, 0.37)
    np.testing.assert_allclose(conv.gaussian(5, 1.0).sum(), 1.0)


def test_laplacian_is_zero_on_a_ramp_and_not_on_an_edge():
    ramp = np.add.outer(np.arange(9.0), 2 * np.arange(9.0)) / 30
    for kind in (4, 8):
        np.testing.assert_allclose(conv.conv2d_reference(ramp, conv.laplacian(kind)), 0.0, atol=1e-12)
    edge = np.zeros((9, 9))
    edge[:, 5:] = 1.0
    response = np.abs(conv.conv2d_reference(edge, conv.laplacian()))
    assert response[:, 3:5].min() > 0.5 and response[:, :2].max() == 0 and response[:, 6:].max() == 0


def test_sobel_x_responds_to_vertical_edges_only():
    vertical = np.zeros((9, 9))
    vertical[:, 5:] = 1.0
    assert np.abs(conv.conv2d_reference(vertical, conv.sobel("x"))).max() == 4.0
    np.testing.assert_array_equal(conv.conv2d_reference(vertical, conv.sobel("y")), 0.0)
    np.testing.assert_array_equal(conv.conv2d_reference(vertical.T, conv.sobel("x")), 0.0)
    assert np.abs(conv.conv2d_reference(vertical.T, conv.sobel("y"))).max() == 4.0


def test_sharpen_keeps_flat_regions_and_random_filter_is_seeded():
    flat = np.full((6, 6), 0.5)
    np.testing.assert_allclose(conv.conv2d_reference(flat, conv.sharpen()), 0.5)
    np.testing.assert_array_equal(conv.random_filter(3, 1), conv.random_filter(3, 1))
    assert not np.array_equal(conv.random_filter(3, 1), conv.random_filter(3, 2))


def test_filters_on_a_real_photo_per_channel():
    rgb = conv.sample_photo()
    gray = conv.sample_photo(grayscale=True)
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and gray.shape == rgb.shape[:2]
    assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0.1
    blurred = conv.apply_filter(rgb, conv.box(5))
    assert blurred.shape == (rgb.shape[0] - 4, rgb.shape[1] - 4, 3)
    crop = rgb[100:120, 200:230]
    for c in range(3):  # each channel filtered on its own, exactly as the loop does it
        _rel_close(
            conv.apply_filter(crop, conv.sobel("x"))[:, :, c],
            conv.conv2d_reference(crop[:, :, c], conv.sobel("x")),
        )
    assert conv.apply_filter(gray, conv.laplacian(), padding="same").shape == gray.shape


# --------------------------------------------------------------------------------------- receptive field
def test_seed_cnn_receptive_field_analytic_and_empirical():
    layers = receptive_field.spatial_layers(build_model("seed_cnn"))
    assert [layer.name for layer in layers] == ["conv1", "pool1", "conv2", "pool2"]
    fields = receptive_field.receptive_field(build_model("seed_cnn"))
    assert [(f.size, f.jump, f.output) for f in fields] == [(3, 1, 28), (4, 2, 14), (8, 2, 14), (10, 4, 7)]
    for depth, field in enumerate(fields, start=1):
        unit = field.output // 2
        first, last = receptive_field.empirical_receptive_field(layers[:depth], 28, unit)
        assert last - first + 1 == field.size
        assert (first + last) / 2 == field.start + unit * field.jump


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 5), st.integers(1, 3), st.sampled_from(["valid", "same", 1]), st.integers(1, 2)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_receptive_field_analytic_equals_empirical_for_random_stacks(stack):
    size = 96
    try:
        fields = receptive_field.receptive_field(stack, input_size=size)
    except ValueError:
        assume(False)  # the stack shrinks the input to nothing: nothing to measure
    field = fields[-1]
    unit = field.output // 2
    centre = field.start + unit * field.jump
    first, last = centre - (field.size - 1) / 2, centre + (field.size - 1) / 2
    assume(first >= 0 and last <= size - 1)  # zero padding hides any part outside the image
    layers = [receptive_field.SpatialLayer(f"layer{i}", *spec) for i, spec in enumerate(stack)]
    assert receptive_field.empirical_receptive_field(layers, size, unit) == (first, last)


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: conv.conv2d_reference(np.ones((3, 3)), np.ones((5, 5))), "kernel"),
        (lambda: conv.conv2d_reference(np.ones((5, 5)), np.ones((3, 3)), stride=0), "stride"),
        (lambda: conv.conv2d_reference(np.ones((5, 5)), np.ones((3, 3)), dilation=-1), "dilation"),
        (lambda: conv.conv2d_reference(np.ones((5, 5, 3)), np.ones((3, 3, 2, 4))), "kernel"),
        (lambda: conv.conv2d_reference(np.ones((5, 5, 3)), np.ones((3, 3))), "kernel"),
        (lambda: conv.conv2d_reference(np.ones((5, 5)), np.ones((3, 3)), padding="full"), "padding"),
        (lambda: conv.conv2d_reference(np.ones((5, 5)), np.ones((3, 3)), padding=-1), "padding"),
        (lambda: conv.conv2d_reference(np.ones(5), np.ones((3, 3))), "x"),
        (lambda: conv.conv2d_reference(np.ones((2, 5, 5, 1)), np.ones((3, 3))), "x"),
        (lambda: conv.conv2d(jnp.ones((5, 5, 1)), jnp.ones((3, 3, 1, 1))), "x"),
        (lambda: conv.conv2d(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 1, 1))), "kernel"),
        (lambda: conv.pool2d_reference(np.ones((4, 4)), 0), "size"),
        (lambda: conv.pool2d_reference(np.ones((4, 4)), 2, stride=0), "stride"),
        (lambda: conv.pool2d_reference(np.ones((4, 4)), 5), "kernel"),
        (lambda: conv.pool2d_reference(np.ones((4, 4)), 2, mode="median"), "mode"),
        (lambda: conv.pool2d(jnp.ones((4, 4, 1)), 2), "x"),
        (lambda: conv.gaussian(5, 0.0), "sigma"),
        (lambda: conv.laplacian(6), "kind"),
        (lambda: conv.sobel("z"), "direction"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        call()


def test_conv2d_is_jittable():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 3))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
    jitted = jax.jit(conv.conv2d, static_argnames=("stride", "padding", "dilation"))
    _rel_close(jitted(x, k, stride=2, padding="same"), conv.conv2d(x, k, stride=2, padding="same"))
