"""Augmentation on the device, for every model and data set, inside the compiled train step: RandAugment (N
ops of magnitude M, for grayscale and colour alike), a random crop of the zero-padded image, a horizontal
flip, random erasing, and mixup / cutmix with their soft labels. Images are floats in [0, 1], `(N, H, W, C)`;
each image draws from its own key, split from the step's key (the run's key folded with the step number), so
a run draws the same numbers on every rerun and after a resume, and runs trained together (vmapped) each
draw their own.

    policy = Augmentation(crop_padding=4, flip=True, erasing=0.25, mixup=0.2)
    images, targets = augment(policy, key, images, labels, classes)  # targets: soft labels or None
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp

from cnn.config import RANDAUGMENT_OPS, TrainConfig, randaugment_ops


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What a train step does to its batch (see `TrainConfig`'s augment fields); hashable (a static part of
    the train state: one compiled program per policy)."""

    crop_padding: int = 0
    flip: bool = False
    erasing: float = 0.0
    mixup: float | None = None
    cutmix: float | None = None
    randaugment: int = 0
    magnitude: float = 9.0
    ops: tuple[str, ...] = RANDAUGMENT_OPS

    @classmethod
    def of(cls, config: TrainConfig) -> Augmentation | None:
        """The policy of `config`, or None when it asks for no augmentation."""
        policy = cls(
            config.crop_padding, config.flip, config.erasing, config.mixup, config.cutmix,
            config.randaugment, config.randaugment_magnitude, randaugment_ops(config),
        )  # fmt: skip
        return policy if policy.per_image or policy.mixes else None

    @property
    def per_image(self) -> bool:
        return bool(self.randaugment or self.crop_padding or self.flip or self.erasing)

    @property
    def mixes(self) -> bool:
        return self.mixup is not None or self.cutmix is not None


# --------------------------------------------------------------------------------------- RandAugment ops
def _affine(image: jax.Array, matrix: jax.Array) -> jax.Array:
    """`image` resampled (bilinear, zeros outside) through the 2×2 `matrix` (output to input coordinates)
    about its centre; the channels untouched."""
    full = jnp.eye(3).at[:2, :2].set(matrix)
    centre = (jnp.asarray(image.shape, jnp.float32) - 1) / 2
    return pix.affine_transform(
        image, full, offset=centre - full @ centre, order=1, mode="constant", cval=0.0
    )


def _shift(image: jax.Array, dy: Any, dx: Any) -> jax.Array:
    """`image` moved `dy` pixels down and `dx` right (bilinear, zeros where nothing comes in)."""
    offset = jnp.stack([-jnp.float32(dy), -jnp.float32(dx), jnp.float32(0)])
    return pix.affine_transform(image, jnp.eye(3), offset=offset, order=1, mode="constant", cval=0.0)


def _op(name: str, image: jax.Array, v: jax.Array, sign: jax.Array) -> jax.Array:
    """One RandAugment op at strength `v` in [0, 1] (the magnitude / 10), signed ops in direction `sign`."""
    h, w = image.shape[:2]
    if name == "rotate":  # up to 30 degrees
        angle = sign * v * math.pi / 6
        c, s = jnp.cos(angle), jnp.sin(angle)
        return _affine(image, jnp.array([[c, -s], [s, c]]))
    if name in ("shear_x", "shear_y"):  # up to 0.3
        shear = sign * v * 0.3
        matrix = (
            jnp.array([[1.0, 0.0], [shear, 1.0]])
            if name == "shear_x"
            else jnp.array([[1.0, shear], [0.0, 1.0]])
        )
        return _affine(image, matrix)
    if name == "translate_x":  # up to 30 % of the width
        return _shift(image, 0.0, sign * v * 0.3 * w)
    if name == "translate_y":
        return _shift(image, sign * v * 0.3 * h, 0.0)
    if name == "brightness":  # blended with black, a factor 0.1..1.9
        return jnp.clip(image * (1 + sign * v * 0.9), 0, 1)
    if name == "contrast":  # blended with the mean grey
        mean = image.mean()
        return jnp.clip(mean + (image - mean) * (1 + sign * v * 0.9), 0, 1)
    if name == "solarize":  # pixels above the threshold inverted
        return jnp.where(image >= 1 - v, 1 - image, image)
    if name == "posterize":  # 8 down to 4 bits
        step = 2.0 ** jnp.round(4 * v)
        return jnp.floor(image * 255 / step) * step / 255
    if name == "autocontrast":
        low, high = image.min(), image.max()
        return jnp.where(high > low, (image - low) / jnp.maximum(high - low, 1e-6), image)
    return image  # identity


def _randaugment(policy: Augmentation, draws: jax.Array, image: jax.Array) -> jax.Array:
    """`policy.randaugment` ops in turn, each picked and signed by a row of `draws` (uniforms `(N, 2)`)."""
    branches = [lambda x, v, s, name=name: _op(name, x, v, s) for name in policy.ops]
    v = jnp.float32(policy.magnitude / 10)

    def one_op(image, draw):  # a rolled loop: one copy of the ops however many are drawn
        index = jnp.minimum((draw[0] * len(branches)).astype(jnp.int32), len(branches) - 1)
        sign = jnp.where(draw[1] < 0.5, 1.0, -1.0)
        return jax.lax.switch(index, branches, image, v, sign), None

    return jax.lax.scan(one_op, image, draws)[0]


# ------------------------------------------------------------------------------------ crop, flip, erasing
# Each image's random numbers: one row of uniforms, drawn for the whole batch at once (a few random-number
# programs instead of one per image and knob: XLA compiles them slowly on the CPU).
CROP_Y, CROP_X, FLIP, ERASE, AREA, ASPECT, TOP, LEFT = range(8)


def _crop(draw: jax.Array, image: jax.Array, padding: int) -> jax.Array:
    """A random crop of the image's size from the image zero-padded by `padding` on every side."""
    h, w, c = image.shape
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    dy, dx = jnp.minimum(draw[CROP_Y : CROP_X + 1] * (2 * padding + 1), 2 * padding).astype(jnp.int32)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))


def _erase(draw: jax.Array, noise: jax.Array, image: jax.Array, probability: float) -> jax.Array:
    """Random erasing (Zhong et al. 2017): with `probability`, a rectangle of 2-33 % of the area and aspect
    ratio 0.3-3.3 filled with uniform noise."""
    h, w, _ = image.shape
    size = (0.02 + draw[AREA] * (1 / 3 - 0.02)) * h * w
    ratio = jnp.exp(math.log(0.3) + draw[ASPECT] * 2 * math.log(1 / 0.3))
    eh = jnp.clip(jnp.round(jnp.sqrt(size * ratio)), 1, h)
    ew = jnp.clip(jnp.round(jnp.sqrt(size / ratio)), 1, w)
    top = jnp.floor(draw[TOP] * (h - eh + 1))
    left = jnp.floor(draw[LEFT] * (w - ew + 1))
    rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
    inside = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    return jnp.where(inside & (draw[ERASE] < probability), noise, image)


def _one_image(policy: Augmentation, draw: jax.Array, ops: Any, noise: Any, image: jax.Array) -> jax.Array:
    if policy.randaugment:
        image = _randaugment(policy, ops, image)
    if policy.crop_padding:
        image = _crop(draw, image, policy.crop_padding)
    if policy.flip:
        image = jnp.where(draw[FLIP] < 0.5, image[:, ::-1], image)
    if policy.erasing:
        image = _erase(draw, noise, image, policy.erasing)
    return image


# --------------------------------------------------------------------------------------- mixup, cutmix
def _mixed(policy: Augmentation, key: jax.Array, images: jax.Array, targets: jax.Array) -> tuple[Any, Any]:
    """Mixup (Zhang et al. 2018: the images and targets blended with the batch reversed, weight
    ~ Beta(alpha, alpha)) or cutmix (Yun et al. 2019: a box of area 1 - weight pasted from the reversed
    batch, the targets weighted by the areas); with both, one of them per batch, each half the time."""
    gamma_key, box_key = jax.random.split(key)
    alphas = jnp.array([policy.mixup or 1.0] * 2 + [policy.cutmix or 1.0] * 2, jnp.float32)
    g = jax.random.gamma(gamma_key, alphas)  # Beta(a, a) = G1 / (G1 + G2): one draw for both
    mix_weight, cut_weight = g[0] / (g[0] + g[1]), g[2] / (g[2] + g[3])
    choose, cy, cx = jax.random.uniform(box_key, (3,))
    other_images, other_targets = images[::-1], targets[::-1]
    results = []
    if policy.mixup is not None:
        lam = mix_weight
        results.append((lam * images + (1 - lam) * other_images, lam * targets + (1 - lam) * other_targets))
    if policy.cutmix is not None:
        _, h, w, _ = images.shape
        cut_h, cut_w = jnp.round(h * jnp.sqrt(1 - cut_weight)), jnp.round(w * jnp.sqrt(1 - cut_weight))
        cy, cx = jnp.floor(cy * h), jnp.floor(cx * w)  # whole pixels
        top, bottom = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
        left, right = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
        rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
        box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
        kept = 1 - (bottom - top) * (right - left) / (h * w)  # the weight of the box actually cut
        results.append((jnp.where(box, other_images, images), kept * targets + (1 - kept) * other_targets))
    if len(results) == 1:
        return results[0]
    return jax.tree.map(lambda a, b: jnp.where(choose < 0.5, a, b), results[0], results[1])


def augment(
    policy: Augmentation, key: jax.Array, images: jax.Array, labels: jax.Array, classes: int
) -> tuple[jax.Array, jax.Array | None]:
    """The batch `images` (floats in [0, 1]) augmented by `policy`, and the soft targets `(N, classes)`
    when it mixes images (else None: the labels stand)."""
    n = images.shape[0]
    draws_key, ops_key, noise_key, mixing = jax.random.split(key, 4)
    if policy.per_image:
        draws = jax.random.uniform(draws_key, (n, 8))
        ops = jax.random.uniform(ops_key, (n, policy.randaugment, 2)) if policy.randaugment else draws
        noise = jax.random.uniform(noise_key, images.shape) if policy.erasing else images
        images = jax.vmap(lambda d, o, z, x: _one_image(policy, d, o, z, x))(draws, ops, noise, images)
    if not policy.mixes:
        return images, None
    return _mixed(policy, mixing, images, jax.nn.one_hot(labels, classes, dtype=images.dtype))
