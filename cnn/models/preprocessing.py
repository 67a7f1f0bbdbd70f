"""Keras-style random preprocessing layers, active in training only: a random shift and horizontal flip
(`RandomShiftFlip`, the strong model's augmentation) and a random rotation (`RandomRotation`, Keras'
layer, with `rotate` exact for quarter turns)."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp


class RandomShiftFlip(nn.Module):
    """Training-time augmentation on the device: a random shift of up to `max_shift` pixels (zero fill)
    and a random horizontal flip per image. The identity when not training.
    """

    max_shift: int = 2
    flip: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train:
            return x
        shift_key, flip_key = jax.random.split(self.make_rng("augment"))
        n, h, w, c = x.shape
        s = self.max_shift
        padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
        offsets = jax.random.randint(shift_key, (n, 2), 0, 2 * s + 1)
        x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
        if self.flip:
            x = jnp.where(jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1)), x[:, :, ::-1, :], x)
        return x


def rotate(images: jax.Array, degrees: jax.Array) -> jax.Array:
    """NHWC images turned `degrees` (one angle per image) counter-clockwise about their centres, bilinear,
    zeros where the turned image does not reach."""
    n, h, w, c = images.shape
    rows, cols = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    cy, cx = (h - 1) / 2, (w - 1) / 2

    def one(image: jax.Array, angle: jax.Array) -> jax.Array:
        t = jnp.deg2rad(angle)
        # Where each output pixel comes from: the inverse rotation of its coordinates.
        src_r = cy + (rows - cy) * jnp.cos(t) + (cols - cx) * jnp.sin(t)
        src_c = cx - (rows - cy) * jnp.sin(t) + (cols - cx) * jnp.cos(t)
        sample = partial(jax.scipy.ndimage.map_coordinates, coordinates=[src_r, src_c], order=1, cval=0.0)
        return jnp.stack([sample(image[:, :, k]) for k in range(c)], axis=-1)

    return jax.vmap(one)(images, jnp.broadcast_to(jnp.asarray(degrees, jnp.float32), (n,)))


class RandomRotation(nn.Module):
    """Training-time augmentation on the device: each image turned by a random angle in
    [-`max_degrees`, `max_degrees`] (Keras' `RandomRotation` takes the range as a fraction of a full turn:
    `factor = max_degrees / 360`). The identity when not training."""

    max_degrees: float = 180.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train or not self.max_degrees:
            return x
        angles = jax.random.uniform(self.make_rng("augment"), (x.shape[0],), minval=-1.0, maxval=1.0)
        return rotate(x, angles * self.max_degrees)
