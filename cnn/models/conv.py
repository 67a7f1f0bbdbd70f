"""Convolution and pooling from first principles, with the arithmetic of sizes (receptive fields are in
`cnn.analysis.receptive_field`), the classic image filters and a real photo to apply them to.

Deep-learning "convolution" is cross-correlation: the kernel slides over the input *unflipped*, and each
output pixel is the sum of the element-wise product of the kernel with the patch it covers, plus a bias:

    out[i, j, f] = bias[f] + sum_{u, v, c} x[i*s + u*d, j*s + v*d, c] * kernel[u, v, c, f]

(s the stride, d the dilation, x already padded). The mathematical convolution flips the kernel first,
out[i, j] = sum x[i - u, j - v] k[u, v]; to get it from these functions pass `kernel[::-1, ::-1]`.
For a symmetric kernel (box, Gaussian, Laplacian) the two are the same.

Each function comes twice: `*_reference` is a plain NumPy loop, one output pixel at a time, written to be
read; the other is the same computation vectorised in JAX (batched NHWC, jit-able), which the tests check
against the loop, against `jax.lax.conv_general_dilated` and against `flax.linen.Conv`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Padding = str | int | tuple[tuple[int, int], tuple[int, int]]
PADDING_HELP = "'valid', 'same', an int, or ((top, bottom), (left, right))"


# ---------------------------------------------------------------------------------------------- arguments
def pair(value: int | Sequence[int], name: str = "value") -> tuple[int, int]:
    """`value` as (rows, columns), each an integer >= 1."""
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v >= 1 for v in pair):
        raise ValueError(f"{name}: expected a positive integer or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def same_padding(n: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow/Keras 'same' padding of one axis: output ceil(n / stride), any odd extra at the end."""
    span = dilation * (kernel - 1) + 1
    out = -(-n // stride)
    total = max((out - 1) * stride + span - n, 0)
    return total // 2, total - total // 2


def resolve_padding(
    padding: Padding,
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Any accepted padding as explicit ((top, bottom), (left, right)) zero-padding amounts."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode == "same":
            return tuple(same_padding(*args) for args in zip(size, kernel, stride, dilation, strict=True))
        raise ValueError(f"padding: unknown padding {padding!r}; use {PADDING_HELP}")
    if isinstance(padding, int | np.integer):
        if padding < 0:
            raise ValueError(f"padding: must be >= 0, got {padding}")
        return (int(padding), int(padding)), (int(padding), int(padding))
    try:
        (top, bottom), (left, right) = padding
    except (TypeError, ValueError):
        raise ValueError(f"padding: expected {PADDING_HELP}, got {padding!r}") from None
    pads = ((top, bottom), (left, right))
    if not all(isinstance(p, int | np.integer) and p >= 0 for pair in pads for p in pair):
        raise ValueError(f"padding: amounts must be integers >= 0, got {padding!r}")
    return tuple((int(a), int(b)) for a, b in pads)


def output_size(n: int, kernel: int, stride: int = 1, padding: Padding = "valid", dilation: int = 1) -> int:
    """Length of one output axis: floor((n + p_total - d·(k - 1) - 1) / s) + 1.

    n is the input length, k the kernel (or pool window) length, s the stride, d the dilation and p_total
    the zeros added at both ends ('valid': 0; 'same': whatever makes the output ceil(n / s) long).
    Example: n = 28, k = 3, 'valid' gives 26; 'same' gives 28; pool k = s = 2 gives 14; k = s = 3 gives 9.
    """
    (p_before, p_after), _ = resolve_padding(padding, (n, 1), (kernel, 1), (stride, 1), (dilation, 1))
    out = (n + p_before + p_after - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(
            f"kernel: a kernel spanning {dilation * (kernel - 1) + 1} pixels does not fit in an input of "
            f"{n} pixels padded to {n + p_before + p_after}"
        )
    return out


def _as_hwc(x: np.ndarray, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2:
        return x[:, :, None]
    if x.ndim == 3:
        return x
    raise ValueError(f"{name}: expected an (H, W) or (H, W, C) image, got shape {x.shape}")


def _as_kernel(kernel: np.ndarray, channels: int) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim == 2:
        kernel = kernel[:, :, None, None]
    if kernel.ndim != 4:
        raise ValueError(f"kernel: expected (kh, kw) or (kh, kw, C_in, C_out), got shape {kernel.shape}")
    if kernel.shape[2] != channels:
        raise ValueError(
            f"kernel: its depth {kernel.shape[2]} must equal the input's {channels} channels "
            f"(kernel shape {kernel.shape})"
        )
    return kernel


# ------------------------------------------------------------------------------------------- convolution
def conv2d_reference(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | Sequence[int] = 1,
    padding: Padding = "valid",
    dilation: int | Sequence[int] = 1,
) -> np.ndarray:
    """Cross-correlation of one image with a filter bank, one output pixel at a time (the teaching version).

    Args:
      x: `(H, W)` or `(H, W, C_in)`.
      kernel: `(kh, kw)` (one filter, applied to a one-channel image) or `(kh, kw, C_in, C_out)`.
      bias: `(C_out,)` or None.
      stride: an int or a (rows, columns) pair.
      dilation: an int or a (rows, columns) pair.
      padding: 'valid', 'same' (TensorFlow/Keras rules), an int, or ((top, bottom), (left, right)).
    Returns:
      `(H_out, W_out)` for a 2-D kernel, else `(H_out, W_out, C_out)`, float64.
    """
    image = _as_hwc(x).astype(np.float64)
    flat_kernel = np.asarray(kernel).ndim == 2
    if flat_kernel and image.shape[2] != 1:
        raise ValueError(
            f"kernel: a 2-D kernel needs a one-channel image, got {image.shape[2]} channels; "
            "apply it per channel or give a (kh, kw, C_in, C_out) kernel"
        )
    w = _as_kernel(kernel, image.shape[2]).astype(np.float64)
    kh, kw, _, c_out = w.shape
    (sh, sw), (dh, dw) = pair(stride, "stride"), pair(dilation, "dilation")
    (top, bottom), (left, right) = resolve_padding(padding, image.shape[:2], (kh, kw), (sh, sw), (dh, dw))
    out_h = output_size(image.shape[0], kh, sh, ((top, bottom), (0, 0)), dh)
    out_w = output_size(image.shape[1], kw, sw, ((left, right), (0, 0)), dw)
    padded = np.pad(image, ((top, bottom), (left, right), (0, 0)))
    out = np.zeros((out_h, out_w, c_out))
    for i in range(out_h):
        for j in range(out_w):
            # The patch under the kernel: every d-th pixel from the window's top-left corner.
            patch = padded[
                i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw, :
            ]
            for f in range(c_out):
                out[i, j, f] = np.sum(patch * w[:, :, :, f])
    if bias is not None:
        out += np.asarray(bias, np.float64)
    return out[:, :, 0] if flat_kernel else out


def _patches(
    x: jax.Array,
    window: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
) -> jax.Array:
    """`(N, H_out, W_out, kh, kw, C)`: for every output position, the (dilated) window it reads."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = window, stride, dilation, out_hw
    rows = []
    for u in range(kh):
        cols = [
            x[:, u * dh : u * dh + sh * (oh - 1) + 1 : sh, v * dw : v * dw + sw * (ow - 1) + 1 : sw, :]
            for v in range(kw)
        ]
        rows.append(jnp.stack(cols, axis=3))
    return jnp.stack(rows, axis=3)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    stride: int | Sequence[int] = 1,
    padding: Padding = "valid",
    dilation: int | Sequence[int] = 1,
) -> jax.Array:
    """The same cross-correlation as `conv2d_reference`, vectorised: every window at once, one einsum.

    Args:
      x: `(N, H, W, C_in)`.
      kernel: `(kh, kw, C_in, C_out)`.
      bias: as in `conv2d_reference`.
      stride: as in `conv2d_reference`.
      padding: as in `conv2d_reference`.
      dilation: as in `conv2d_reference`.
    Returns:
      `(N, H_out, W_out, C_out)`. Jit-able (the arguments other than arrays are static).
    """
    if x.ndim != 4:
        raise ValueError(f"x: expected a batch (N, H, W, C), got shape {x.shape}")
    if kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(
            f"kernel: expected (kh, kw, {x.shape[3]}, C_out) for input {x.shape}, got {kernel.shape}"
        )
    kh, kw = kernel.shape[:2]
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    pads = resolve_padding(padding, x.shape[1:3], (kh, kw), stride, dilation)
    out_hw = tuple(
        output_size(n, k, s, (p, (0, 0)), d)
        for n, k, s, p, d in zip(x.shape[1:3], (kh, kw), stride, pads, dilation, strict=True)
    )
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out = jnp.einsum(
        "nhwuvc,uvcf->nhwf",
        _patches(padded, (kh, kw), stride, dilation, out_hw),
        kernel,
        precision=jax.lax.Precision.HIGHEST,
    )
    return out if bias is None else out + bias


# ----------------------------------------------------------------------------------------------- pooling
def _check_mode(mode: str) -> None:
    if mode not in ("max", "avg"):
        raise ValueError(f"mode: expected 'max' or 'avg', got {mode!r}")


def pool2d_reference(
    x: np.ndarray,
    size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Padding = "valid",
    mode: str = "max",
) -> np.ndarray:
    """Max or average pooling of one image, window by window (no weights: only a max or a mean).

    The stride defaults to the window size (windows do not overlap) and padding to 'valid', as in Keras.
    Padded pixels never win a max and are not counted in a mean.
    """
    _check_mode(mode)
    image = _as_hwc(x).astype(np.float64)
    (ph, pw) = pair(size, "size")
    (sh, sw) = pair(stride if stride is not None else size, "stride")
    (top, bottom), (left, right) = resolve_padding(padding, image.shape[:2], (ph, pw), (sh, sw))
    out_h = output_size(image.shape[0], ph, sh, ((top, bottom), (0, 0)))
    out_w = output_size(image.shape[1], pw, sw, ((left, right), (0, 0)))
    padded = np.pad(image, ((top, bottom), (left, right), (0, 0)), constant_values=np.nan)
    out = np.zeros((out_h, out_w, image.shape[2]))
    for i in range(out_h):
        for j in range(out_w):
            window = padded[i * sh : i * sh + ph, j * sw : j * sw + pw, :]
            out[i, j] = np.nanmax(window, axis=(0, 1)) if mode == "max" else np.nanmean(window, axis=(0, 1))
    return out[:, :, 0] if np.ndim(x) == 2 else out


def pool2d(
    x: jax.Array,
    size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Padding = "valid",
    mode: str = "max",
) -> jax.Array:
    """`pool2d_reference` vectorised over a batch `(N, H, W, C)`; jit-able."""
    _check_mode(mode)
    if x.ndim != 4:
        raise ValueError(f"x: expected a batch (N, H, W, C), got shape {x.shape}")
    window = pair(size, "size")
    strides = pair(stride if stride is not None else size, "stride")
    pads = resolve_padding(padding, x.shape[1:3], window, strides)
    out_hw = tuple(
        output_size(n, k, s, (p, (0, 0)))
        for n, k, s, p in zip(x.shape[1:3], window, strides, pads, strict=True)
    )
    spec = ((0, 0), *pads, (0, 0))
    if mode == "max":
        patches = _patches(jnp.pad(x, spec, constant_values=-jnp.inf), window, strides, (1, 1), out_hw)
        return patches.max(axis=(3, 4))
    total = _patches(jnp.pad(x, spec), window, strides, (1, 1), out_hw).sum(axis=(3, 4))
    count = _patches(jnp.pad(jnp.ones_like(x[:1, ..., :1]), spec), window, strides, (1, 1), out_hw).sum(
        axis=(3, 4)
    )
    return total / count


# ------------------------------------------------------------------------------------------------ filters
def box(n: int = 3) -> np.ndarray:
    """Mean filter: every weight 1/n², so it averages its n×n neighbourhood (blur)."""
    pair(n, "n")
    return np.full((n, n), 1.0 / (n * n))


def gaussian(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    """Weights of a 2-D normal centred on the middle pixel, normalised to sum to 1 (a smoother blur)."""
    pair(size, "size")
    if sigma <= 0:
        raise ValueError(f"sigma: must be > 0, got {sigma}")
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def laplacian(kind: int = 4) -> np.ndarray:
    """Discrete second derivative: I[i+1,j] + I[i-1,j] + I[i,j+1] + I[i,j-1] − 4·I[i,j] (kind=4),
    or all eight neighbours (kind=8). Zero on constant and linear regions, strong on edges."""
    if kind == 4:
        return np.array([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
    if kind == 8:
        return np.array([[1.0, 1, 1], [1, -8, 1], [1, 1, 1]])
    raise ValueError(f"kind: expected 4 or 8, got {kind!r}")


def sobel(direction: str = "x") -> np.ndarray:
    """Sobel gradient: 'x' responds to intensity changes along x (vertical edges), 'y' to horizontal ones."""
    gx = np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    if direction == "x":
        return gx
    if direction == "y":
        return gx.T.copy()
    raise ValueError(f"direction: expected 'x' or 'y', got {direction!r}")


def sharpen() -> np.ndarray:
    """The image plus its negative Laplacian: edges stand out more."""
    return np.array([[0.0, -1, 0], [-1, 5, -1], [0, -1, 0]])


def random_filter(size: int = 3, key: jax.Array | int = 0) -> np.ndarray:
    """A filter of standard-normal weights, like a convolution layer before training."""
    pair(size, "size")
    key = jax.random.PRNGKey(key) if isinstance(key, int) else key
    return np.asarray(jax.random.normal(key, (size, size)), np.float64)


CLASSIC_FILTERS: dict[str, Callable[[], np.ndarray]] = {
    "box": box,
    "gaussian": gaussian,
    "laplacian": laplacian,
    "sobel x": lambda: sobel("x"),
    "sobel y": lambda: sobel("y"),
    "sharpen": sharpen,
    "random": random_filter,
}


def apply_filter(image: np.ndarray, kernel: np.ndarray, padding: Padding = "valid") -> np.ndarray:
    """Filters a grayscale `(H, W)` image, or each channel of an `(H, W, C)` one separately (vectorised)."""
    hwc = _as_hwc(image, "image").astype(np.float32)
    k = jnp.asarray(kernel, jnp.float32)[:, :, None, None]
    channels = jnp.moveaxis(jnp.asarray(hwc), 2, 0)[..., None]  # each channel its own one-channel image
    out = np.asarray(conv2d(channels, k, padding=padding))[..., 0]
    out = np.moveaxis(out, 0, 2)
    return out[:, :, 0] if np.ndim(image) == 2 else out


# -------------------------------------------------------------------------------------------- real photos
def sample_photo(grayscale: bool = False) -> np.ndarray:
    """A real photograph shipped with matplotlib (Grace Hopper, 600×512), float in [0, 1].

    `grayscale=True` gives the luminance 0.299 R + 0.587 G + 0.114 B as an `(H, W)` array; otherwise
    `(H, W, 3)` RGB. Nothing is downloaded.
    """
    import matplotlib.cbook
    import matplotlib.pyplot as plt

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        rgb = plt.imread(f, format="jpg").astype(np.float64) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114]) if grayscale else rgb
