"""`python -m cnn train`: one run, its config from a recipe and flags (every `TrainConfig` field), on one
device or split over several devices and processes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cnn.cli.flags import data_location_flags, no_compile_cache_flag
from cnn.config import add_config_flags, config_from_args, recipes
from cnn.errors import EXIT_CODES


def add(sub: Any) -> None:
    train = sub.add_parser(
        "train",
        help="train a model on a data set (resumes a run found in --workdir)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()),
    )
    train.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="start from a named recipe (the flags given override its fields): "
        + "; ".join(f"{name}: {text}" for name, text in recipes().items())
        + "; or a .json file of the same form",
    )
    add_config_flags(train.add_argument_group("the run's config (every TrainConfig field)"))
    train.add_argument("--workdir", type=Path, default=None, help="default: runs/MODEL-seedSEED")
    data_location_flags(train)
    train.add_argument("--overwrite", action="store_true", help="delete a different run found in --workdir")
    parallel = train.add_argument_group("devices and processes (data parallel; see cnn.engine.devices)")
    parallel.add_argument(
        "--devices",
        type=int,
        default=None,
        metavar="N",
        help="local devices per process to split every batch over (default: all)",
    )
    parallel.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address")
    parallel.add_argument("--num-processes", type=int, default=None, metavar="N")
    parallel.add_argument("--process-id", type=int, default=None, metavar="I")
    no_compile_cache_flag(train)
    train.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from cnn.engine import devices

    # Before anything touches a device: join the process group, if any, then build the mesh.
    devices.initialize(devices.distributed_settings(args.coordinator, args.num_processes, args.process_id))
    import jax

    from cnn.data.load import load_dataset
    from cnn.engine import costs
    from cnn.engine.state import model_for
    from cnn.train import check_run_config, fit

    config = config_from_args(args)
    check_run_config(config)  # the model's name and arguments, before any data is read
    workdir = args.workdir or Path("runs") / f"{config.model}-seed{config.seed}"
    mesh = devices.data_mesh(args.devices)
    if devices.is_parallel(mesh):
        print(f"Data parallel over {mesh.size} devices ({jax.process_count()} process(es)): {mesh.devices}")
    with costs.phase("data"):
        splits = load_dataset(config, data_dir=args.data_dir, source_dir=args.source_dir)
    model_for(config, splits.spec)  # the network's own checks against the data's shape
    print(data_line(config, splits))
    fit(config, splits, workdir, overwrite=args.overwrite, mesh=mesh)


def data_line(config: Any, splits: Any) -> str:
    """What the run trains on, e.g. `Data: fashion_mnist 28×28×1, 10 classes; 480 train, ...`."""
    spec = splits.spec
    used = min(len(splits.train), config.limit_train or len(splits.train))
    more = used < (config.limit_train or 0)  # --limit-train beyond the set: say that all are used
    return (
        f"Data: {spec.name} {'×'.join(map(str, spec.image_shape))}, {spec.num_classes} classes; {used} train"
        + (f" (of {len(splits.train)})" if used < len(splits.train) else "")
        + (f" (all: --limit-train {config.limit_train} asks for more)" if more else "")
        + f", {len(splits.val)} validation, {len(splits.test)} test images"
    )
