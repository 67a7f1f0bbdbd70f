"""The seed CNN: shapes, parameter count from the layer formulas, summary, dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import build_model, format_summary, layer_rows
from cnn.layers import MaxPool
from cnn.models import check_model_name


def conv_params(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def dense_params(n_in, n_out):
    return n_in * n_out + n_out


@pytest.fixture(scope="module")
def seed_cnn():
    model = build_model("seed_cnn")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    return model, variables


@pytest.mark.parametrize("batch", [1, 64])
def test_output_shape(seed_cnn, batch):
    model, variables = seed_cnn
    assert model.apply(variables, jnp.zeros((batch, 28, 28, 1))).shape == (batch, 10)


def test_parameter_count_matches_the_layer_formulas(seed_cnn):
    _, variables = seed_cnn
    expected = (
        conv_params(3, 1, 32) + conv_params(3, 32, 64) + dense_params(7 * 7 * 64, 100) + dense_params(100, 10)
    )
    assert sum(p.size for p in jax.tree.leaves(variables["params"])) == expected == 333_526


def test_summary_shapes_equal_the_real_intermediate_shapes(seed_cnn):
    model, variables = seed_cnn
    x = jnp.ones((3, 28, 28, 1))
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    real = {
        name: out["__call__"][0].shape[1:]
        for name, out in state["intermediates"].items()
        if name != "__call__"
    }
    rows = layer_rows(model)
    assert [r.name for r in rows] == list(real)
    for row in rows:
        assert row.output_shape[1:] == real[row.name]
    text = format_summary(rows, "seed_cnn")
    assert "Total params: 333,526" in text and "conv1 (Conv2D)" in text and "(None, 7, 7, 64)" in text


def test_dropout_only_in_training(seed_cnn):
    model, variables = seed_cnn
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1))
    eval_a, eval_b = model.apply(variables, x), model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    train_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
    assert not np.allclose(train_a, eval_a) and not np.allclose(train_a, train_b)


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
