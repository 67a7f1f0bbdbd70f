"""The sources' worked examples, with the numbers they print (notebooks/00_from_the_textbook.ipynb shows
each one; `test_notebooks.py` runs it and checks that it prints them)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cnn.models import conv
from cnn.models.layers import AveragePooling2D, Conv2D, Dense, MaxPooling2D


def _run(layer, x):
    return np.asarray(layer.apply(layer.init(jax.random.PRNGKey(0), x), x))


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (10, 26, 26, 10)),
        ({"strides": 2}, (10, 13, 13, 10)),
        ({"strides": 2, "padding": "same"}, (10, 14, 14, 10)),
        ({"padding": "same"}, (10, 28, 28, 10)),
    ],
)
def test_conv2d_output_shapes(kwargs, shape):
    assert _run(Conv2D(10, (3, 3), **kwargs), np.ones((10, 28, 28, 1), np.float32)).shape == shape


def test_a_filters_depth_is_the_inputs_channels():
    x = np.ones((1, 4, 4, 5), np.float32)
    layer = Conv2D(10, (3, 3))
    assert layer.init(jax.random.PRNGKey(0), x)["params"]["kernel"].shape == (3, 3, 5, 10)
    assert _run(layer, x)[0].shape == (2, 2, 10)


@pytest.mark.parametrize(("size", "shape"), [(2, (10, 14, 14, 1)), (3, (10, 9, 9, 1))])
def test_pooling_output_shapes(size, shape):
    x = np.random.default_rng(0).random((10, 28, 28, 1), dtype=np.float32)
    assert _run(MaxPooling2D(size), x).shape == shape
    assert _run(AveragePooling2D(size), x).shape == shape


def test_dense_with_weights_set_by_hand():
    weights = {"params": {"kernel": np.array([[1, 2, 3], [4, 5, 6]], np.float32), "bias": np.zeros(3)}}
    out = Dense(3).apply(weights, np.array([[5.0, 7.0]], np.float32))
    np.testing.assert_array_equal(np.asarray(out), [[33.0, 45.0, 57.0]])


@pytest.mark.parametrize("name", ["box", "laplacian", "random"])
def test_hand_written_loop_keeps_the_valid_region(name):
    photo = conv.sample_photo(grayscale=True)[::8, ::8]
    kernel = {"box": conv.box(3), "laplacian": conv.laplacian(), "random": conv.random_filter(3, key=0)}[name]
    out = conv.conv2d_reference(photo, kernel)
    assert out.shape == (photo.shape[0] - 2, photo.shape[1] - 2)
    weights = {"params": {"kernel": kernel[:, :, None, None].astype(np.float32)}}
    layer = Conv2D(1, (3, 3), use_bias=False).apply(weights, photo[None, :, :, None].astype(np.float32))
    np.testing.assert_allclose(np.asarray(layer)[0, :, :, 0], out, atol=1e-5)
    # One output pixel by hand: the window at (5, 7) times the kernel, summed.
    assert out[5, 7] == pytest.approx(float(np.sum(photo[5:8, 7:10] * kernel)))


def test_conv_pool_conv_shapes_and_parameters():
    x = np.zeros((1, 64, 64, 3), np.float32)
    rows = []
    for layer in (Conv2D(32, (3, 3)), MaxPooling2D((2, 2), strides=2), Conv2D(64, (3, 3), padding="same")):
        variables = layer.init(jax.random.PRNGKey(0), x)
        x = np.asarray(layer.apply(variables, x))
        rows.append((x.shape, sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables))))
    assert rows == [((1, 62, 62, 32), 896), ((1, 31, 31, 32), 0), ((1, 31, 31, 64), 18_496)]


def test_translation_equivariance_is_exact_away_from_the_border():
    image = conv.sample_photo(grayscale=True)[:40, :40, None][None].astype(np.float32)
    layer = Conv2D(4, (3, 3), padding="same", activation="relu")
    variables = layer.init(jax.random.PRNGKey(1), image)
    maps = np.asarray(layer.apply(variables, image))
    for k in (1, 2, 5):
        moved = np.asarray(layer.apply(variables, np.roll(image, k, axis=1)))
        np.testing.assert_array_equal(moved[:, k + 1 : -1, 1:-1], maps[:, 1 : -1 - k, 1:-1])
