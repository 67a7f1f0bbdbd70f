"""Where the training images live: on the device as uint8 (placed once per process and shared by every run
that trains on them; batches are gathered there), or, for a data set larger than the device's memory, on
the host, sent batch by batch (`HostData`)."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import jax
import numpy as np

from cnn.data.spec import Split
from cnn.engine.devices import is_parallel, replicate


@dataclasses.dataclass(frozen=True)
class HostData:
    """Training images kept in host memory and sent to the device batch by batch (for a data set larger
    than the device's memory); the same batches, in the same order, as data on the device."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, order: np.ndarray, start: int, batch_size: int, steps: int
    ) -> tuple[np.ndarray, np.ndarray]:
        idx = order[start : start + batch_size * steps]
        shape = (steps, len(idx) // steps)
        return self.images[idx].reshape(*shape, *self.images.shape[1:]), self.labels[idx].reshape(shape)


def fits_on_device(images: np.ndarray, fraction: float = 0.5) -> bool:
    """Whether `images` take at most `fraction` of the first device's free memory (always, where the
    device does not report its memory, as the CPU does not: there the host is the device)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        return True
    return images.nbytes <= fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))


def training_data(
    split: Split, placement: str = "auto", mesh: Any = None
) -> tuple[jax.Array, jax.Array] | HostData:
    """The training data where it trains from: on the device (`on_device`) or, for `placement` 'host'
    (or 'auto' when it does not fit, see `fits_on_device`), streamed from the host."""
    if placement == "host" or (placement == "auto" and not fits_on_device(split.images)):
        if is_parallel(mesh):
            raise ValueError("data_placement: streaming from the host runs on one device; use --devices 1")
        return HostData(split.images, split.labels)
    return on_device(split, mesh)


PLACED: dict[tuple, tuple[weakref.ref, weakref.ref, Any]] = {}


def array_key(a: np.ndarray) -> tuple:
    """What identifies the data of a NumPy array while its buffer lives: address, shape, strides, dtype
    (two views of the same memory, e.g. two slices `images[:n]`, have the same key)."""
    return (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)


def once_per_split(split: Split, key: Any, place: Any) -> Any:
    """`place()` for `split`, computed once while the split's memory lives (keyed by its arrays' data and
    `key`), then reused."""
    full_key = (array_key(split.images), array_key(split.labels), key)
    owners = [a if a.base is None else a.base for a in (split.images, split.labels)]
    cached = PLACED.get(full_key)
    if cached is not None and cached[0]() is owners[0] and cached[1]() is owners[1]:
        return cached[2]
    value = place()
    # a copy to iterate: another thread (a compile ahead, `cnn.studies.ahead`) may place a split meanwhile
    for k in [k for k, (a, b, _) in list(PLACED.items()) if a() is None or b() is None]:
        PLACED.pop(k, None)
    PLACED[full_key] = (weakref.ref(owners[0]), weakref.ref(owners[1]), value)
    return value


def on_device(split: Split, mesh: Any = None) -> tuple[jax.Array, jax.Array]:
    """The split's images and labels on the device, or replicated on every device of `mesh` (see
    `cnn.engine.devices`): placed once per split and reused while the split lives."""

    def place() -> tuple[jax.Array, jax.Array]:
        if is_parallel(mesh):
            return replicate((split.images, split.labels), mesh)
        return jax.device_put(split.images), jax.device_put(split.labels)

    return once_per_split(split, mesh if is_parallel(mesh) else None, place)
