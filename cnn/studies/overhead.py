"""Where a small run's wall time goes (`python -m cnn bench --overhead`): `python -m cnn train` run in fresh
processes for 1 and 3 epochs, the first with an empty compilation cache, each split into start-up, data,
compiling, training, evaluation, checkpoints and plots from the phases the command reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cnn.engine import costs
from cnn.errors import PeerError
from cnn.runs.folder import run_metadata
from cnn.studies.bench import SCHEMA_VERSION

# ------------------------------------------------------------------------------------------- overhead
OVERHEAD_PHASES = (
    "startup",
    "data",
    "compile",
    "train",
    "evaluate",
    "checkpoint",
    "results",
    "other",
    "exit",
)


def run_and_split(args: list[str], cache: Path, workdir: Path) -> dict[str, float]:
    """Runs `python -m cnn train ARGS --workdir WORKDIR` in a fresh process with the compilation cache in
    `cache`, and returns its wall time split into phases (see `cnn.engine.costs.report`; `startup`: from
    starting the process to the command's start, interpreter and imports)."""
    report_file = workdir.parent / f"{workdir.name}-costs.json"
    env = {**os.environ, costs.REPORT_VAR: str(report_file), "CNN_COMPILE_CACHE": str(cache)}
    command = [sys.executable, "-m", "cnn", "train", *args, "--workdir", str(workdir)]
    t = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.time() - t
    if done.returncode != 0:
        raise PeerError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    split = json.loads(report_file.read_text())
    results = json.loads((workdir / "results.json").read_text())
    startup = split.pop("entered") - t
    return {
        "wall": wall,
        "startup": startup,
        **{k: v for k, v in split.items() if k != "wall"},
        "exit": wall - startup - split["wall"],  # after the command: the interpreter shutting down
        "train_seconds": results["train_seconds"],
        "epochs": results["epochs_run"],
    }


def overhead(args: list[str], folder: Path) -> dict[str, Any]:
    """Where the main job's wall time goes: `python -m cnn train ARGS` for 1 epoch with an empty compilation
    cache, then again for 1 and for 3 epochs with the cache the first filled (each in a new folder). The
    fixed cost of a run, seen from outside: wall(1 epoch) - (wall(3 epochs) - wall(1 epoch)) / 2, warm."""
    cache = folder / "jax-cache"
    runs = {}
    for name, epochs in (("1 epoch, empty cache", 1), ("1 epoch", 1), ("3 epochs", 3)):
        print(f"overhead: {name} ...", file=sys.stderr, flush=True)
        runs[name] = run_and_split([*args, "--epochs", str(epochs), "--patience", "10"], cache, folder / name)
    one, three = runs["1 epoch"]["wall"], runs["3 epochs"]["wall"]
    return {
        "schema_version": SCHEMA_VERSION,
        "command": " ".join(sys.argv),
        "train_args": args,
        **run_metadata(),
        "runs": runs,
        "fixed_seconds": one - (three - one) / 2,
        "epoch_seconds": (three - one) / 2,
    }


def format_overhead(report: dict[str, Any]) -> str:
    """The overhead report as a Markdown table: a row per run, a column per phase."""
    lines = [
        "| run | wall s | " + " | ".join(OVERHEAD_PHASES) + " | compilations |",
        "|---|---|" + "---|" * (len(OVERHEAD_PHASES) + 1),
    ]
    for name, r in report["runs"].items():
        cells = " | ".join(f"{r.get(p, 0.0):.2f}" for p in OVERHEAD_PHASES)
        lines.append(f"| {name} | {r['wall']:.2f} | {cells} | {r['compilations']} |")
    lines.append(
        f"\nFixed cost of a run: {report['fixed_seconds']:.2f} s (wall(1 epoch) - (wall(3) - wall(1)) / 2); "
        f"each later epoch {report['epoch_seconds']:.2f} s."
    )
    return "\n".join(lines)
