"""What every experiment script of `experiments/` shares (its flags, the runner, per-seed curves), and the
scripts run in one process (`python -m cnn experiments [NAMES]`), so that
they share what costs more than their training: the data set is read once, and every network they have in
common compiles once (the padding, stride and pooling baselines are one network). Each script still runs
alone (`python experiments/padding.py`); both write the same tables."""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from cnn.config import DATA_FIELDS, add_config_flags
from cnn.data.spec import Splits
from cnn.engine import costs
from cnn.errors import ExperimentError, RunsFailed, SweepError
from cnn.runs.outputs import check_output
from cnn.studies.ahead import SETTINGS
from cnn.studies.grid import Variant, resolve
from cnn.studies.queue import connect
from cnn.studies.sweep import TOGETHER, check_finished, data_fields, run_sweep, sweep_data
from cnn.studies.tables import markdown_table

FOLDER = Path(__file__).resolve().parents[2] / "experiments"
# The comparisons of padding, stride and pooling with their baselines: what `make experiments` runs.
DEFAULT = ("padding", "stride", "pooling", "mlp_vs_cnn", "shift_robustness")


def available() -> list[str]:
    """The experiment scripts of the checkout's `experiments/` folder."""
    return sorted(p.stem for p in FOLDER.glob("*.py")) if FOLDER.is_dir() else []


def script(name: str) -> ModuleType:
    """The experiment script `experiments/NAME.py`, imported (its `main(argv)` runs it)."""
    if name not in available():
        where = f"in {FOLDER}" if FOLDER.is_dir() else f"({FOLDER} is not there: run from a checkout)"
        raise ExperimentError(f"experiment: no script {name!r} {where}; choose from {available()}")
    spec = importlib.util.spec_from_file_location(f"experiments.{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise ExperimentError(f"experiment: {FOLDER / name}.py has no main(argv)")
    return module


# The experiments whose runs failed in this process (name -> what failed), from `run_experiment`.
FAILED: dict[str, str] = {}


def run_experiments(names: Sequence[str], argv: Sequence[str] = (), out: Path | None = None) -> dict:
    """Runs the experiments `names` one after another in this process, each with the flags `argv` (and
    `--out OUT/NAME` when `out` is given); returns each one's wall seconds and compilations."""
    modules = {name: script(name) for name in names}  # every name checked before any work
    report = {}
    FAILED.clear()
    for name, module in modules.items():
        print(f"=== {name} ===", flush=True)
        start, t = costs.snapshot(), time.perf_counter()
        module.main([*argv, *(["--out", str(Path(out) / name)] if out else [])])
        compiled = costs.since(start)
        report[name] = {
            "seconds": time.perf_counter() - t,
            "compilations": compiled.compilations,
            "compile_seconds": compiled.seconds,
        }
    for name, r in report.items():
        print(
            f"{name}: {r['seconds']:.1f} s, {r['compilations']} compilations ({r['compile_seconds']:.1f} s)",
            flush=True,
        )
    if FAILED:
        raise RunsFailed(f"runs failed in {', '.join(FAILED)}: " + "; ".join(FAILED.values()))
    return report


# ------------------------------------------------------------------------------------ what scripts share
def experiment_parser(
    description: str, epochs: int = 10, seeds: int = 3, limit_train: int | None = None
) -> argparse.ArgumentParser:
    """The flags every experiment script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--epochs", type=int, default=epochs, help="most epochs (early stopping may end sooner)"
    )
    parser.add_argument("--seeds", type=int, default=seeds, help="seeds 0..N-1")
    parser.add_argument(
        "--limit-train",
        type=int,
        default=limit_train,
        metavar="N",
        help="use only N training images (default: all 48,000)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: experiments/results/NAME")
    add_config_flags(parser.add_argument_group("the data set"), only=DATA_FIELDS)
    parser.add_argument("--data-dir", default=None, help="tfds data dir")
    parser.add_argument("--source-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument(
        "--together",
        default="auto",
        choices=TOGETHER,
        help="seeds in one vmapped program (its convolutions grouped, or as batched matmuls), or one after "
        "another (auto: the fastest measured)",
    )
    parser.add_argument(
        "--compile-ahead",
        default="auto",
        choices=SETTINGS,
        help="compile the next run's programs while one trains (auto: where a core or accelerator is spare)",
    )
    parser.add_argument("--storage", default=None, metavar="URL", help="a database: the runs as one queue")
    parser.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS", help="with --storage")
    return parser


def run_experiment(
    name: str, variants: Sequence[Variant], args: argparse.Namespace, base: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], Splits, Path]:
    """Runs an experiment's variants with its flags; returns the table rows, the data and the output dir."""
    if args.seeds < 1:
        raise SweepError(f"seeds: expected at least 1, got {args.seeds}")
    base = {**data_fields(args), "epochs": args.epochs, "limit_train": args.limit_train, **(base or {})}
    resolve(base, variants)  # fail on a bad definition before loading any data
    out = args.out or Path(__file__).resolve().parents[2] / "experiments" / "results" / name
    check_output(out, flag="--out", folder=True)  # before the data is read: a run's folder is no sweep's
    storage = getattr(args, "storage", None)
    if storage:
        connect(storage).dispose()  # an unreachable database refused before any data is read
    splits = sweep_data(base, args.data_dir, args.source_dir)
    rows = run_sweep(
        base, variants, list(range(args.seeds)), splits, out, together=args.together, storage=storage,
        heartbeat=getattr(args, "heartbeat", 10.0), compile_ahead=getattr(args, "compile_ahead", "auto"),
    )  # fmt: skip
    print(markdown_table(rows))
    try:
        check_finished(rows, variants)
    except RunsFailed as e:  # the script goes on to its figures; `run_experiments` reports it at the end
        FAILED[name] = str(e)
        print(f"{name}: {e}", flush=True)
    return rows, splits, out


def seed_curves(
    out: Path, variants: Sequence[Variant], seeds: int, measure: Callable[[Path], list[float]]
) -> dict[str, np.ndarray]:
    """`measure(run_dir)` for every finished seed of every variant: variant name -> `(seeds, points)`."""
    return {
        v.name: np.array(
            [
                measure(out / v.name / f"seed{s}")
                for s in range(seeds)
                if (out / v.name / f"seed{s}" / "results.json").is_file()
            ]
        )
        for v in variants
    }


def mean_and_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation over seeds (axis 0); a single seed has a std of 0."""
    return values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1:])


def block(filters: int, **fields: Any) -> dict[str, Any]:
    """A ConvNet block as a JSON-able dict (for `model_args`)."""
    return {"filters": filters, **fields}
