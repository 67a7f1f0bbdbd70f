"""`python -m cnn bench`: throughput at steady state beside peer commands, or where a small run's wall time
goes (`--overhead`); see `cnn.studies.bench`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cnn.cli.flags import no_compile_cache_flag


def add(sub: Any) -> None:
    bench = sub.add_parser("bench", help="training/evaluation throughput, optionally beside a peer command")
    bench.add_argument("--models", nargs="+", default=["seed_cnn"])
    bench.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128, 256])
    bench.add_argument("--steps", type=int, default=300, help="steps per timed window")
    bench.add_argument("--windows", type=int, default=5, help="timed windows; the median is reported")
    bench.add_argument("--steps-per-call", nargs="+", type=int, default=[1])
    bench.add_argument(
        "--peer",
        action="append",
        default=None,
        metavar="NAME=CMD",
        help="a command printing a JSON line with images_per_second, run beside each measurement; "
        "{batch_size} and {steps} are filled in; repeat for several peers, e.g. "
        "'eager=.venv-peer/bin/python ../shared/peers/torch_seed_cnn.py --json --batch-size {batch_size} "
        "--steps {steps}' and 'compile=... --compile'",
    )
    bench.add_argument(
        "--seeds",
        type=int,
        default=0,
        metavar="N",
        help="also time N seeds trained together (vmap) against N runs one after another",
    )
    bench.add_argument("--out", type=Path, default=None, metavar="FILE.json")
    bench.add_argument(
        "--overhead",
        nargs="?",
        const="--limit-train 6400",
        default=None,
        metavar="TRAIN_ARGS",
        help="instead: where the main job's wall time goes (start-up, data, compile, training, evaluation, "
        "checkpoints, plots), from `python -m cnn train TRAIN_ARGS` runs for 1 and 3 epochs, the first with "
        "an empty compilation cache (default TRAIN_ARGS: '--limit-train 6400')",
    )
    no_compile_cache_flag(bench)
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from cnn.models.registry import check_model_name
    from cnn.runs.folder import write_json
    from cnn.studies.bench import benchmark, format_table, parse_peers

    if args.overhead is not None:
        import shlex
        import tempfile

        from cnn.studies.overhead import format_overhead, overhead

        with tempfile.TemporaryDirectory() as folder:
            report = overhead(shlex.split(args.overhead), Path(folder))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_json(args.out, report)
        print(format_overhead(report))
        return
    for model in args.models:
        check_model_name(model)
    if min(args.batch_sizes + args.steps_per_call + [args.steps, args.windows]) < 1:
        raise ValueError("bench: --batch-sizes, --steps-per-call, --steps and --windows must be >= 1")
    report = benchmark(
        args.models,
        args.batch_sizes,
        args.steps,
        args.windows,
        args.steps_per_call,
        parse_peers(args.peer),
        seeds=args.seeds,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, report)
    print(format_table(report))
