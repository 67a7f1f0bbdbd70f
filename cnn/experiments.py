"""The experiment scripts of `experiments/` run in one process (`python -m cnn experiments [NAMES]`), so that
they share what costs more than their training: the data set is read once, and every network they have in
common compiles once (the padding, stride and pooling baselines are one network). Each script still runs
alone (`python experiments/padding.py`); both write the same tables."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from cnn import costs

FOLDER = Path(__file__).resolve().parent.parent / "experiments"
# The comparisons of padding, stride and pooling with their baselines: what `make experiments` runs.
DEFAULT = ("padding", "stride", "pooling", "mlp_vs_cnn", "shift_robustness")


class ExperimentError(ValueError):
    """An experiment that is not there (names the ones that are)."""


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


def run_experiments(names: Sequence[str], argv: Sequence[str] = (), out: Path | None = None) -> dict:
    """Runs the experiments `names` one after another in this process, each with the flags `argv` (and
    `--out OUT/NAME` when `out` is given); returns each one's wall seconds and compilations."""
    modules = {name: script(name) for name in names}  # every name checked before any work
    report = {}
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
    return report
