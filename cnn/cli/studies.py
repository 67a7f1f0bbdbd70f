"""`python -m cnn sweep | tune | experiments`: many runs at once (see `cnn.studies`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cnn.cli.flags import compile_ahead_flag, data_location_flags, no_compile_cache_flag, together_flag
from cnn.config import DATA_FIELDS, TrainConfig, add_config_flags, json_object


def add(sub: Any) -> None:
    add_sweep(sub)
    add_tune(sub)
    add_experiments(sub)


# ------------------------------------------------------------------------------------------------ sweep
def storage_flags(parser: Any, what: str, **given: Any) -> None:
    """--storage URL and --heartbeat SECONDS (docs/how-to/many-machines.md)."""
    parser.add_argument(
        "--storage",
        metavar="URL",
        help=f"a database ({what}): postgresql://USER:PASSWORD@HOST:5432/DB, mysql://..., sqlite:///FILE",
        **given,
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        metavar="SECONDS",
        help="with --storage: how often a worker says it is alive; one silent for 3 beats is taken for dead "
        "and its run resumed by another (default 10)",
        **given,
    )


def check_storage(args: argparse.Namespace) -> None:
    """Refuses an unreachable --storage (one line naming host and port) or a bad --heartbeat, before any
    data is read."""
    from cnn.errors import StorageError
    from cnn.studies.queue import connect

    if getattr(args, "heartbeat", None) is not None and not args.heartbeat > 0:
        raise StorageError(f"--heartbeat: expected seconds > 0, got {args.heartbeat}")
    if getattr(args, "storage", None):
        connect(args.storage).dispose()


def add_sweep(sub: Any) -> None:
    sweep = sub.add_parser("sweep", help="train a grid of configs, several seeds each")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=JSON_LIST",
        help="e.g. lr=[0.001,0.01] or model_args.dropout_rate=[0.2,0.5]; repeat for more fields",
    )
    sweep.add_argument(
        "--zip", action="store_true", help="pair the lists element-wise instead of every combination"
    )
    sweep.add_argument(
        "--base", type=json_object, default={}, metavar="JSON", help="fields shared by every run"
    )
    sweep.add_argument("--seeds", type=int, default=3)
    together_flag(sweep, default="auto")
    compile_ahead_flag(sweep, default="auto")
    sweep.add_argument("--out", type=Path, required=True)
    storage_flags(sweep, "the sweep's runs as a queue that workers on several machines share")
    sweep.add_argument(
        "--collect", action="store_true", help="train nothing: write the tables and plots of the runs there"
    )
    add_config_flags(sweep.add_argument_group("the data set of every run"), only=DATA_FIELDS)
    data_location_flags(sweep)
    no_compile_cache_flag(sweep)
    sweep.set_defaults(run=run_sweep)


def run_sweep(args: argparse.Namespace) -> None:
    from cnn.errors import SweepError
    from cnn.studies import grid, sweep, tables
    from cnn.studies.ahead import check_compile_ahead

    sweep.check_together(args.together)
    check_compile_ahead(args.compile_ahead)
    lists = {}
    for item in args.grid:
        field, sep, values = item.partition("=")
        if not sep:
            raise SweepError(f"--grid {item!r}: expected FIELD=JSON_LIST, e.g. lr=[0.001,0.01]")
        try:
            lists[field] = json.loads(values)
        except json.JSONDecodeError as e:
            raise SweepError(f"{field}: {values!r} is not a JSON list ({e})") from None
    if not lists:
        raise SweepError("--grid: give at least one FIELD=JSON_LIST")
    if args.seeds < 1:
        raise SweepError(f"seeds: expected at least 1, got {args.seeds}")
    variants = grid.grid_variants(lists, "zip" if args.zip else "product")
    base = {**sweep.data_fields(args), **args.base}
    grid.resolve(base, variants)  # every error before the data is loaded
    check_storage(args)
    splits = sweep.sweep_data(base, args.data_dir, args.source_dir)
    rows = sweep.run_sweep(
        base, variants, list(range(args.seeds)), splits, args.out, together=args.together,
        storage=args.storage, heartbeat=args.heartbeat or 10.0, collect_only=args.collect,
        compile_ahead=args.compile_ahead,
    )  # fmt: skip
    print(tables.markdown_table(rows))
    sweep.check_finished(rows, variants)


# ------------------------------------------------------------------------------------------------- tune
def add_tune(sub: Any) -> None:
    tune = sub.add_parser(
        "tune",
        help="adaptive hyper-parameter search (Optuna: TPE, median pruning, one journal for all workers)",
    )
    tune.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="FIELD=KIND(ARGS)",
        help="lr=loguniform(1e-4,1e-2), batch_size=choice(32,64,128), "
        "model_args.dropout_rate=uniform(0,0.6), epochs=int(2,8) (kinds: uniform, loguniform, int, logint, "
        "choice); repeat for more fields",
    )
    tune.add_argument("--space-file", type=Path, default=None, help='JSON {"lr": "loguniform(1e-4,1e-2)"}')
    tune.add_argument("--base", type=json_object, default={}, metavar="JSON", help="fields of every trial")
    tune.add_argument("--trials", type=int, default=20, help="trials in the study, all workers together")
    tune.add_argument("--timeout", type=float, default=None, help="seconds after which no trial starts")
    tune.add_argument("--sampler", default="tpe", choices=["tpe", "random"])
    tune.add_argument("--pruner", default="median", choices=["median", "none"])
    tune.add_argument("--seed", type=int, default=None, help="of the sampler (default: random)")
    tune.add_argument("--study", default="cnn", help="the study's name in the journal (or the database)")
    tune.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local processes working on the study (this one waits for them, passes SIGTERM or SIGINT on "
        "and reports)",
    )
    tune.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # set for those it starts
    tune.add_argument("--out", type=Path, required=True, help="the journal, trials and plots")
    storage_flags(tune, "the study in Optuna's RDB storage instead of the journal in --out")
    add_config_flags(tune.add_argument_group("the data set of every trial"), only=DATA_FIELDS)
    data_location_flags(tune)
    no_compile_cache_flag(tune)
    tune.set_defaults(run=run_tune)


def run_tune(args: argparse.Namespace) -> None:
    from cnn.errors import StudyInterrupted, TuneError
    from cnn.runs.outputs import check_output
    from cnn.studies import space, storage, tune
    from cnn.studies.sweep import data_fields, sweep_data

    check_output(args.out, flag="--out", folder=True)  # a run's folder is no study's
    dims = space.read_space(args.space, args.space_file)
    if args.trials < 1 or args.workers < 1:
        raise TuneError(f"--trials and --workers: expected at least 1, got {args.trials} and {args.workers}")
    base = {**data_fields(args), **args.base}
    space.check_search(base, dims)  # every error before the data is loaded
    if args.storage is None:
        storage.check_journal(args.out / storage.JOURNAL, args.study)
    check_storage(args)
    splits = sweep_data(base, args.data_dir, args.source_dir)  # prepared once, before any worker starts
    heartbeat = args.heartbeat or 10.0
    direction = "minimize" if TrainConfig(**base).monitor == "val_loss" else "maximize"
    study = tune.open_study(
        args.out, args.study, direction, args.sampler, args.pruner, args.seed, args.worker, args.storage,
        heartbeat,
    )  # fmt: skip
    if args.storage:  # a worker of a study of another search refused (a journal's rerun may change it)
        searched = {d.path: f"{d.kind}{list(d.args)}" for d in dims}
        storage.check_study(study, direction, searched, base)
    if args.workers > 1:  # this process starts them, passes a signal on, waits and reports
        tune.run_workers(tune.without_workers(args.argv), args.workers, args.out)
    else:
        try:
            wait = heartbeat if args.storage else None  # then waits for the others' trials (or retries them)
            tune.search(study, base, dims, splits, args.out, args.trials, args.timeout, wait)
        except StudyInterrupted as e:
            if args.worker:  # the process that started it says so, once
                sys.exit(e.exit_code)
            raise
    if not args.worker:  # the first process reports
        report_study(args, base, direction)


def report_study(args: argparse.Namespace, base: dict[str, Any], direction: str) -> None:
    from cnn.errors import RunsFailed
    from cnn.studies import tune

    study = tune.open_study(
        args.out,
        args.study,
        direction,
        args.sampler,
        args.pruner,
        None,
        0,
        args.storage,
        args.heartbeat or 10,
    )
    for path in tune.write_report(study, args.out):
        print(path)
    if not [t for t in study.trials if t.state.name == "COMPLETE"]:
        raise RunsFailed(f"every trial of the study failed ({len(study.trials)}); see {args.out}/trials")
    best = study.best_trial
    print(f"Best trial {best.number}: {TrainConfig(**base).monitor} {best.value:.4f}, {best.params}")


# ------------------------------------------------------------------------------------------ experiments
EXPERIMENT_FLAGS = ("epochs", "seeds", "limit_train", "together", "data_dir", "source_dir", *DATA_FIELDS)
EXPERIMENT_FLAGS += ("storage", "heartbeat", "compile_ahead")


def default_experiments() -> str:
    from cnn.studies.scripts import DEFAULT

    return f"experiment scripts (default: {' '.join(DEFAULT)})"


def add_experiments(sub: Any) -> None:
    experiments = sub.add_parser(
        "experiments",
        help="run experiment scripts of experiments/ in one process (sharing the data and compiled programs)",
    )
    experiments.add_argument("names", nargs="*", default=None)
    experiments.late_help["names"] = default_experiments
    experiments.add_argument(
        "--out", type=Path, default=None, help="write OUT/NAME (default: experiments/results/NAME)"
    )
    given = {"default": argparse.SUPPRESS}
    experiments.add_argument("--epochs", type=int, help="each script's --epochs", **given)
    experiments.add_argument("--seeds", type=int, help="each script's --seeds", **given)
    experiments.add_argument(
        "--limit-train", type=int, metavar="N", help="each script's --limit-train", **given
    )
    together_flag(experiments, **given)
    compile_ahead_flag(experiments, **given)
    experiments.add_argument("--data-dir", help="tfds data dir", **given)
    experiments.add_argument("--source-dir", help="folder with the Fashion-MNIST IDX files", **given)
    storage_flags(experiments, "each experiment's runs as a queue shared by workers", **given)
    add_config_flags(experiments.add_argument_group("the data set"), only=DATA_FIELDS)
    no_compile_cache_flag(experiments)
    experiments.set_defaults(run=run_experiments)


def run_experiments(args: argparse.Namespace) -> None:
    from cnn.studies.ahead import check_compile_ahead
    from cnn.studies.scripts import DEFAULT, run_experiments
    from cnn.studies.sweep import check_together

    if hasattr(args, "together"):
        check_together(args.together)
    if hasattr(args, "compile_ahead"):
        check_compile_ahead(args.compile_ahead)
    check_storage(args)
    forwarded = []
    for name in EXPERIMENT_FLAGS:
        if hasattr(args, name):
            value = getattr(args, name)
            flag = f"--{name.replace('_', '-')}"
            if isinstance(value, bool):
                forwarded.append(flag if value else f"--no-{name.replace('_', '-')}")
            elif isinstance(value, list | tuple):
                forwarded += [flag, *map(str, value)]
            else:
                forwarded += [flag, str(value)]
    run_experiments(args.names or list(DEFAULT), forwarded, args.out)
