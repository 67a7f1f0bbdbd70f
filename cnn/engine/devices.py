"""Data parallelism with JAX's own tools: a `jax.sharding.Mesh` with one `data` axis over the devices of
this host, or of every process of a `jax.distributed` job. Batches are sharded over the axis, parameters
and the data set are replicated, and XLA inserts the gradient all-reduce.

    mesh = data_mesh()                    # every local device (of every process)
    fit(config, splits, workdir, mesh=mesh)

Several processes (one per host, or one per GPU): start each with the same coordinator address and
process count and its own id, e.g. `python -m cnn train --coordinator 10.0.0.1:1234 --num-processes 2
--process-id 0` (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID). Every process
holds the data set and gathers, on its own devices, only its shard of every global batch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnn.errors import ParallelError

DATA_AXIS = "data"
ENV = {
    "coordinator": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


def distributed_settings(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> dict[str, Any] | None:
    """The `jax.distributed.initialize` arguments from the flags, else from the environment variables in
    `ENV`; None for a single-process run. Raises ParallelError when they are incomplete or inconsistent."""
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for key, var in ENV.items():
        if given[key] is None and os.environ.get(var):
            value = os.environ[var]
            try:
                given[key] = value if key == "coordinator" else int(value)
            except ValueError:
                raise ParallelError(f"{var}: expected an integer, got {value!r}") from None
    if all(v is None for v in given.values()):
        return None
    missing = [f"--{k.replace('_', '-')} (or {ENV[k]})" for k, v in given.items() if v is None]
    if missing:
        raise ParallelError(f"multi-process training needs {', '.join(missing)} as well")
    if given["num_processes"] < 1:
        raise ParallelError(f"num_processes: expected >= 1, got {given['num_processes']}")
    if not 0 <= given["process_id"] < given["num_processes"]:
        raise ParallelError(
            f"process_id: expected 0..{given['num_processes'] - 1} for {given['num_processes']} processes, "
            f"got {given['process_id']}"
        )
    if ":" not in given["coordinator"]:
        raise ParallelError(f"coordinator: expected HOST:PORT, got {given['coordinator']!r}")
    return given


def initialize(settings: dict[str, Any] | None) -> None:
    """Joins the `jax.distributed` job described by `settings` (from `distributed_settings`); nothing for
    None. Must run before anything touches a device."""
    if settings is None or settings["num_processes"] == 1:
        return
    jax.distributed.initialize(
        coordinator_address=settings["coordinator"],
        num_processes=settings["num_processes"],
        process_id=settings["process_id"],
    )


def data_mesh(devices: int | None = None) -> Mesh:
    """A mesh with one `data` axis over the first `devices` local devices of every process (default: all).
    Raises ParallelError naming the numbers when a process has fewer devices than asked."""
    local = jax.local_devices()
    n = len(local) if devices is None else devices
    if n < 1 or n > len(local):
        raise ParallelError(
            f"devices: asked for {n}, but this process sees {len(local)} {local[0].platform} device(s); "
            f"use --devices 1..{len(local)}"
        )
    by_process: dict[int, list[jax.Device]] = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d)
    chosen = [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:n]]
    return Mesh(np.array(chosen), (DATA_AXIS,))


def is_parallel(mesh: Mesh | None) -> bool:
    """Whether `mesh` spreads the work over more than one device (else the plain one-device path runs)."""
    return mesh is not None and mesh.size > 1


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh | None, what: str = "batch_size") -> None:
    """The global batch must split evenly over the mesh's devices."""
    if is_parallel(mesh) and batch_size % mesh.size:
        lower = batch_size - batch_size % mesh.size
        raise ParallelError(
            f"{what}: the global batch of {batch_size} does not split over {mesh.size} devices; use a "
            f"multiple of {mesh.size} (e.g. {max(lower, mesh.size)} or {lower + mesh.size}) "
            "or fewer --devices"
        )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of `tree` as a global array holding the same value on every device of `mesh` (works
    across processes: each process supplies its own copy, which must be the same everywhere)."""
    sharding = replicated(mesh)

    def put(x):
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, tree)


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; every process in a one-process run)."""
    return jax.process_index() == 0
