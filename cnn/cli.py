"""Command line: `python -m cnn train | summary | bench | viz | sweep | tune | experiments | predict |
evaluate | export`. Parsing only;
the logic is in the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnn.config import DATA_FIELDS, TrainConfig, add_config_flags, config_from_args, json_object, recipes

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_RUNTIME, EXIT_NO_SPACE, EXIT_RUNS_FAILED = 2, 3, 4, 5, 6
EXIT_CODES = {  # shown by `python -m cnn train --help`
    0: "done",
    EXIT_BAD_INPUT: "a bad setting or input: a one-line message, nothing trained, written or lost",
    EXIT_DIVERGED: "training diverged (a NaN or Inf loss or gradient): the earlier checkpoints are kept",
    EXIT_RUNTIME: "XLA failed while running (out of memory, a runtime error), the epoch named: "
    "the earlier checkpoints are kept",
    EXIT_NO_SPACE: "no space left (a full disk, a quota or a file-size limit), the path named: the earlier "
    "checkpoints and files are kept; free space and run the command again to resume",
    EXIT_RUNS_FAILED: "a sweep, experiment or tune study ran to its end but some of its runs failed (every "
    "trial, for tune): the failures are named, the other runs kept and reported",
    130: "stopped by SIGINT (Ctrl-C) after saving the epoch in progress: run the command again to resume",
    143: "stopped by SIGTERM after saving the epoch in progress: run the command again to resume",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, its errors one line (`error: ...`, exit 2) like every other refusal of `cnn`."""

    def error(self, message: str):
        self.exit(
            EXIT_BAD_INPUT, f"error: {self.prog.removeprefix('python -m cnn ')}: {message} (see --help)\n"
        )


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m cnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

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
    _data_location_flags(train)
    train.add_argument("--overwrite", action="store_true", help="delete a different run found in --workdir")
    _parallel_flags(train)
    _bench_parser(sub)
    _sweep_parser(sub)
    _tune_parser(sub)
    _experiments_parser(sub)
    _viz_and_summary_parsers(sub)
    _use_parsers(sub)
    for name, command in sub.choices.items():
        if name in ("train", "sweep", "tune", "experiments", "bench"):
            command.add_argument(
                "--no-compile-cache",
                action="store_true",
                help="compile every program afresh instead of reading JAX's persistent compilation cache "
                "(also CNN_COMPILE_CACHE=off; CNN_COMPILE_CACHE=DIR moves it; see cnn.compile_cache)",
            )
    return parser


def _parallel_flags(train: argparse.ArgumentParser) -> None:
    parallel = train.add_argument_group("devices and processes (data parallel; see cnn.parallel)")
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


def _bench_parser(sub: Any) -> None:
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


def _sweep_parser(sub: Any) -> None:
    from cnn.sweep import TOGETHER

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
    sweep.add_argument(
        "--together",
        default="auto",
        choices=TOGETHER,
        help="the seeds of a variant (and variants differing only in lr or weight decay) as one vmapped "
        "program (its convolutions grouped, or as batched matmuls), or one after another (auto: the "
        "fastest measured)",
    )
    sweep.add_argument("--out", type=Path, required=True)
    add_config_flags(sweep.add_argument_group("the data set of every run"), only=DATA_FIELDS)
    _data_location_flags(sweep)


EXPERIMENT_FLAGS = ("epochs", "seeds", "limit_train", "together", "data_dir", "source_dir", *DATA_FIELDS)


def _experiments_parser(sub: Any) -> None:
    from cnn.experiments import DEFAULT
    from cnn.sweep import TOGETHER

    experiments = sub.add_parser(
        "experiments",
        help="run experiment scripts of experiments/ in one process (sharing the data and compiled programs)",
    )
    experiments.add_argument(
        "names", nargs="*", default=list(DEFAULT), help=f"experiment scripts (default: {' '.join(DEFAULT)})"
    )
    experiments.add_argument(
        "--out", type=Path, default=None, help="write OUT/NAME (default: experiments/results/NAME)"
    )
    given = {"default": argparse.SUPPRESS}
    experiments.add_argument("--epochs", type=int, help="each script's --epochs", **given)
    experiments.add_argument("--seeds", type=int, help="each script's --seeds", **given)
    experiments.add_argument(
        "--limit-train", type=int, metavar="N", help="each script's --limit-train", **given
    )
    experiments.add_argument("--together", choices=TOGETHER, **given)
    experiments.add_argument("--data-dir", help="tfds data dir", **given)
    experiments.add_argument("--source-dir", help="folder with the Fashion-MNIST IDX files", **given)
    add_config_flags(experiments.add_argument_group("the data set"), only=DATA_FIELDS)


def _tune_parser(sub: Any) -> None:
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
    tune.add_argument("--study", default="cnn", help="the study's name in the journal")
    tune.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local processes working on the study (this one waits for them, passes SIGTERM or SIGINT on "
        "and reports)",
    )
    tune.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # set for those it starts
    tune.add_argument("--out", type=Path, required=True, help="the journal, trials and plots")
    add_config_flags(tune.add_argument_group("the data set of every trial"), only=DATA_FIELDS)
    _data_location_flags(tune)


def _viz_and_summary_parsers(sub: Any) -> None:
    viz = sub.add_parser(
        "viz", help="every picture of a trained run (its own data set), from its best checkpoint"
    )
    viz.add_argument("--workdir", type=Path, required=True)
    viz.add_argument("--out", type=Path, default=None, help="default: WORKDIR/viz")
    viz.add_argument(
        "--cam",
        default=None,
        metavar="LAYER",
        help="also explain test images: Grad-CAM of LAYER (a layer with feature maps, e.g. conv2) and "
        "SmoothGrad, into OUT/cam_LAYER.png",
    )
    _data_location_flags(viz)

    summary = sub.add_parser("summary", help="print a model's layers, output shapes and parameter counts")
    from cnn.models import MODELS

    summary.add_argument(
        "--model", default=TrainConfig.model, help=f"one of {', '.join(MODELS)} (default: %(default)s)"
    )
    summary.add_argument("--model-args", type=json_object, default={}, metavar="JSON")
    summary.add_argument(
        "--input-shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("H", "W", "C"),
        help="image shape (default: Fashion-MNIST's 28 28 1, or a famous network's smallest)",
    )
    summary.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="also draw the diagram")


def _use_parsers(sub: Any) -> None:
    predict = sub.add_parser("predict", help="classify image files or folders with a finished run")
    predict.add_argument("--workdir", type=Path, required=True)
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--top", type=int, default=3, metavar="K", help="classes per image (default 3)")
    form = predict.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print JSON instead of a table")
    form.add_argument("--csv", action="store_true", help="print CSV instead of a table")

    evaluate = sub.add_parser(
        "evaluate", help="a finished run's report: per-class F1, top-k, calibration, into WORKDIR/eval"
    )
    evaluate.add_argument("--workdir", type=Path, required=True)
    evaluate.add_argument("--split", default="test", choices=("test", "val", "train"))
    evaluate.add_argument(
        "--dataset", default=None, help="another data set with the run's classes (default: the run's own)"
    )
    evaluate.add_argument("--flip", action="store_true", help="test-time augmentation: average with mirrors")
    evaluate.add_argument("--out", type=Path, default=None, help="default: WORKDIR/eval")
    _data_location_flags(evaluate)

    export = sub.add_parser("export", help="a finished run's network as a jax.export (StableHLO) file")
    export.add_argument("--workdir", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="e.g. model.jaxexport")
    export.add_argument(
        "--onnx", action="store_true", help="also FILE with the suffix .onnx (needs the onnx extra: jax2onnx)"
    )


def _data_location_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="tfds data dir (default ~/tensorflow_datasets)")
    parser.add_argument("--source-dir", default=None, help="folder with the four Fashion-MNIST IDX .gz files")


def _train(args: argparse.Namespace) -> None:
    from cnn import parallel

    # Before anything touches a device: join the process group, if any, then build the mesh.
    parallel.initialize(parallel.distributed_settings(args.coordinator, args.num_processes, args.process_id))
    import jax

    from cnn import costs
    from cnn.datasets import load_dataset
    from cnn.models import check_model_args, model_for
    from cnn.train import fit

    config = config_from_args(args)
    check_model_args(config)  # the model's name and arguments, before any data is read
    workdir = args.workdir or Path("runs") / f"{config.model}-seed{config.seed}"
    mesh = parallel.data_mesh(args.devices)
    if parallel.is_parallel(mesh):
        print(f"Data parallel over {mesh.size} devices ({jax.process_count()} process(es)): {mesh.devices}")
    with costs.phase("data"):
        splits = load_dataset(config, data_dir=args.data_dir, source_dir=args.source_dir)
    model_for(config, splits.spec)  # the network's own checks against the data's shape
    spec = splits.spec
    used = min(len(splits.train), config.limit_train or len(splits.train))
    more = used < (config.limit_train or 0)  # --limit-train beyond the set: say that all are used
    print(
        f"Data: {spec.name} {'×'.join(map(str, spec.image_shape))}, {spec.num_classes} classes; {used} train"
        + (f" (of {len(splits.train)})" if used < len(splits.train) else "")
        + (f" (all: --limit-train {config.limit_train} asks for more)" if more else "")
        + f", {len(splits.val)} validation, {len(splits.test)} test images"
    )
    fit(config, splits, workdir, overwrite=args.overwrite, mesh=mesh)


def _summary(args: argparse.Namespace) -> None:
    from cnn.models import build_model, check_model_name, default_input_shape
    from cnn.plots import plot_architecture
    from cnn.summary import format_summary, layer_rows

    check_model_name(args.model)
    shape = tuple(args.input_shape) if args.input_shape else default_input_shape(args.model)
    rows = layer_rows(build_model(args.model, input_shape=shape, **args.model_args), shape)
    if args.plot:  # before the table: a path that cannot be written fails first
        _make_parent(args.plot)
    print(format_summary(rows, title=args.model))
    if args.plot:
        plot_architecture(rows, args.plot, title=args.model)
        print(f"Diagram written to {args.plot}")


def _make_parent(path: Path) -> None:
    """The folder of `path`, created; a parent that is a file is named as the path's error."""
    import errno
    import os

    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)


def _bench(args: argparse.Namespace) -> None:
    from cnn.bench import benchmark, format_table, parse_peers
    from cnn.models import check_model_name
    from cnn.run_folder import write_json

    if args.overhead is not None:
        import shlex
        import tempfile

        from cnn.bench import format_overhead, overhead

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


def _sweep(args: argparse.Namespace) -> None:
    from cnn.sweep import (
        SweepError,
        check_finished,
        data_fields,
        grid_variants,
        markdown_table,
        resolve,
        run_sweep,
        sweep_data,
    )

    grid = {}
    for item in args.grid:
        field, sep, values = item.partition("=")
        if not sep:
            raise SweepError(f"--grid {item!r}: expected FIELD=JSON_LIST, e.g. lr=[0.001,0.01]")
        try:
            grid[field] = json.loads(values)
        except json.JSONDecodeError as e:
            raise SweepError(f"{field}: {values!r} is not a JSON list ({e})") from None
    if not grid:
        raise SweepError("--grid: give at least one FIELD=JSON_LIST")
    if args.seeds < 1:
        raise SweepError(f"seeds: expected at least 1, got {args.seeds}")
    variants = grid_variants(grid, "zip" if args.zip else "product")
    base = {**data_fields(args), **args.base}
    resolve(base, variants)  # every error before the data is loaded
    splits = sweep_data(base, args.data_dir, args.source_dir)
    rows = run_sweep(base, variants, list(range(args.seeds)), splits, args.out, together=args.together)
    print(markdown_table(rows))
    check_finished(rows, variants)


def _tune(args: argparse.Namespace) -> None:
    from cnn.sweep import RunsFailed, data_fields, sweep_data
    from cnn.tune import (
        JOURNAL,
        StudyInterrupted,
        TuneError,
        check_journal,
        check_search,
        open_study,
        read_space,
        run_workers,
        search,
        without_workers,
        write_report,
    )

    dims = read_space(args.space, args.space_file)
    if args.trials < 1 or args.workers < 1:
        raise TuneError(f"--trials and --workers: expected at least 1, got {args.trials} and {args.workers}")
    base = {**data_fields(args), **args.base}
    check_search(base, dims)  # every error before the data is loaded
    check_journal(args.out / JOURNAL, args.study)
    splits = sweep_data(base, args.data_dir, args.source_dir)  # prepared once, before any worker starts
    direction = "minimize" if TrainConfig(**base).monitor == "val_loss" else "maximize"
    study = open_study(args.out, args.study, direction, args.sampler, args.pruner, args.seed, args.worker)
    if args.workers > 1:  # this process starts them, passes a signal on, waits and reports
        run_workers(without_workers(args.argv), args.workers, args.out)
    else:
        try:
            search(study, base, dims, splits, args.out, args.trials, args.timeout)
        except StudyInterrupted as e:
            if args.worker:  # the process that started it says so, once
                sys.exit(e.exit_code)
            raise
    if args.worker:  # the first process reports
        return
    study = open_study(args.out, args.study, direction, args.sampler, args.pruner, None)
    for path in write_report(study, args.out):
        print(path)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise RunsFailed(f"every trial of the study failed ({len(study.trials)}); see {args.out}/trials")
    best = study.best_trial
    print(f"Best trial {best.number}: {TrainConfig(**base).monitor} {best.value:.4f}, {best.params}")


def _experiments(args: argparse.Namespace) -> None:
    from cnn.experiments import run_experiments

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
    run_experiments(args.names, forwarded, args.out)


def _viz(args: argparse.Namespace) -> None:
    from cnn.datasets import load_dataset
    from cnn.results import restore_run
    from cnn.viz import write_all

    config, _, _ = restore_run(args.workdir)  # a missing run fails here, before the data is loaded
    splits = load_dataset(config, data_dir=args.data_dir, source_dir=args.source_dir)
    for path in write_all(args.workdir, splits, args.out, cam=args.cam):
        print(path)


def _predict(args: argparse.Namespace) -> None:
    from cnn.classify import classify_files, format_csv, format_table

    result = classify_files(args.workdir, args.inputs, args.top)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_csv(result) if args.csv else format_table(result), end="" if args.csv else "\n")


def _evaluate(args: argparse.Namespace) -> None:
    from cnn.run_report import evaluate_run

    report, paths = evaluate_run(
        args.workdir, args.split, args.dataset, args.flip, args.out, args.data_dir, args.source_dir
    )
    top = ", ".join(f"top-{k} {v:.4f}" for k, v in report["top_k_accuracy"].items())
    print(
        f"{report['split']}: {report['examples']:,} examples, accuracy {report['accuracy']:.4f} ({top}), "
        f"macro F1 {report['macro']['f1']:.4f}, ECE {report['ece']:.4f}"
    )
    for path in paths:
        print(path)


def _export(args: argparse.Namespace) -> None:
    from cnn.export import export_run

    for path in export_run(args.workdir, args.out, onnx=args.onnx):
        print(path)


def main(argv: list[str] | None = None) -> int:
    """Runs the command and returns its exit status (see EXIT_CODES): a bad setting or input exits with
    status 2 and a one-line message, no traceback; a failure while running with status 4."""
    import time

    entered = time.time()
    try:
        return _main(argv)
    finally:
        from cnn import costs

        costs.write_report(entered)


def _main(argv: list[str] | None) -> int:
    from cnn.host_memory import setting_error

    if setting_error():  # before anything else, --help included: the environment is wrong for every command
        print(f"error: {setting_error()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line usage error (2), already printed
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT

    def command() -> None:
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if getattr(args, "no_compile_cache", False):
            from cnn.compile_cache import use_compile_cache

            use_compile_cache("off")
        commands = {"train": _train, "summary": _summary, "bench": _bench, "viz": _viz, "sweep": _sweep}
        commands.update(
            tune=_tune, experiments=_experiments, predict=_predict, evaluate=_evaluate, export=_export
        )
        commands[args.command](args)

    return exit_code(command)


def run_script(main: Callable[[], Any]) -> None:
    """Runs an experiment script's `main` as the CLI runs a command: a known failure (bad input, a signal,
    a full disk, ...) is one line on stderr and the CLI's exit code, not a traceback; success returns."""
    code = exit_code(main)
    if code:
        sys.exit(code)


def exit_code(command: Callable[[], Any]) -> int:
    """Runs `command`; its known failures printed in one line on stderr and turned into exit codes."""
    import jax

    from cnn.data import DataError
    from cnn.datasets.prepared import PreparationInterrupted
    from cnn.disk import DiskFull, out_of_space
    from cnn.run_folder import WorkdirError
    from cnn.sweep import RunsFailed
    from cnn.train import Interrupted, TrainingDiverged, TrainingFailed

    try:
        command()
    except (Interrupted, PreparationInterrupted) as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    except RunsFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_RUNS_FAILED
    except jax.errors.JaxRuntimeError as e:
        print(f"error: XLA runtime error: {str(e).strip().splitlines()[0][:300]}", file=sys.stderr)
        return EXIT_RUNTIME
    except (ValueError, DataError, WorkdirError) as e:  # ExperimentError, SweepError, ... are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DiskFull as e:
        print(f"error: {e.strerror}", file=sys.stderr)
        return EXIT_NO_SPACE
    except OSError as e:
        if out_of_space(e):
            print(f"error: no space left writing {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
            return EXIT_NO_SPACE
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror or e}; give another path", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
