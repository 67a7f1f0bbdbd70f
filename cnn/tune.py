"""Adaptive hyper-parameter search with Optuna: a search space of config fields, TPE (or random) sampling,
pruning on the monitored validation metric after every epoch, every trial a normal run folder, and the study
in a journal file in the output folder, so the same command started in several processes (or on several
machines sharing the folder) works on one study without a database server.

    python -m cnn tune --space 'lr=loguniform(1e-4,1e-2)' --space 'batch_size=choice(32,64,128)' \\
        --space 'model_args.dropout_rate=uniform(0,0.6)' --trials 20 --workers 2 --out runs/tune
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnn.config import TrainConfig
from cnn.data import Splits
from cnn.models import check_model_args
from cnn.sweep import check_field, resolve, set_field
from cnn.train import TrainingDiverged, TrainingFailed, fit

JOURNAL = "study.journal"
KINDS = ("uniform", "loguniform", "int", "logint", "choice")


class TuneError(ValueError):
    """A search that cannot run: a malformed space, an unknown field, a bad budget."""


@dataclass(frozen=True)
class Dimension:
    """One searched field: `kind` (uniform, loguniform, int, logint or choice) and its arguments."""

    path: str
    kind: str
    args: tuple[Any, ...]

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.path, list(self.args))
        low, high = self.args
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.path, int(low), int(high), log=self.kind == "logint")
        return trial.suggest_float(self.path, float(low), float(high), log=self.kind == "loguniform")


def parse_dimension(text: str) -> Dimension:
    """'lr=loguniform(1e-4,1e-2)', 'batch_size=choice(32,64,128)', 'epochs=int(2,8)' as a Dimension,
    refusing (TuneError, naming the fix) anything else, before any work."""
    match = re.fullmatch(r"\s*([\w.]+)\s*=\s*(\w+)\((.*)\)\s*", text)
    if not match:
        raise TuneError(f"--space {text!r}: expected FIELD=KIND(ARGS), e.g. lr=loguniform(1e-4,1e-2)")
    path, kind, body = match.groups()
    if kind not in KINDS:
        raise TuneError(f"--space {text!r}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    try:
        args = tuple(json.loads(f"[{body}]"))
    except json.JSONDecodeError:
        raise TuneError(f"--space {text!r}: the arguments must be JSON values, e.g. choice(32,64)") from None
    _check_dimension(text, path, kind, args)
    return Dimension(path, kind, args)


def _check_dimension(text: str, path: str, kind: str, args: tuple[Any, ...]) -> None:
    if kind == "choice":
        if not args:
            raise TuneError(f"--space {text!r}: choice needs at least one value")
        for value in args:
            check_field(path, value)
        return
    numbers = all(isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a) for a in args)
    if len(args) != 2 or not numbers or not args[0] < args[1]:
        raise TuneError(f"--space {text!r}: {kind} needs two finite numbers LOW < HIGH")
    if kind.startswith("log") and args[0] <= 0:
        raise TuneError(f"--space {text!r}: {kind} needs LOW > 0")
    check_field(path, int(args[0]) if kind.endswith("int") else float(args[0]))


def read_space(items: list[str], file: str | Path | None = None) -> list[Dimension]:
    """The search space of `--space` flags and/or a JSON file {"lr": "loguniform(1e-4,1e-2)", ...}."""
    texts = list(items)
    if file is not None:
        try:
            loaded = json.loads(Path(file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise TuneError(f"--space-file {file}: {e}") from None
        if not isinstance(loaded, dict):
            raise TuneError(f"--space-file {file}: expected a JSON object of FIELD: 'KIND(ARGS)'")
        texts += [f"{path}={spec}" for path, spec in loaded.items()]
    if not texts:
        raise TuneError("--space: give at least one FIELD=KIND(ARGS), e.g. lr=loguniform(1e-4,1e-2)")
    dims = [parse_dimension(t) for t in texts]
    if len({d.path for d in dims}) != len(dims):
        raise TuneError("--space: a field is given twice")
    return dims


def trial_config(base: dict[str, Any], values: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of one trial: `base` with the sampled `values` (paths like model_args.NAME)."""
    fields = dict(base)
    for path, value in values.items():
        fields = set_field(fields, path, value)
    try:
        config = TrainConfig(**fields)
        check_model_args(config)
    except (ValueError, TypeError) as e:
        raise TuneError(str(e)) from None
    return config


def check_search(base: dict[str, Any], dims: list[Dimension]) -> None:
    """Builds the configs at the corners of the space (every low, every high, every choice), so that a bad
    base or an impossible combination fails before any work."""
    resolve(base, [])
    for dim in dims:
        for value in dim.args:
            cast = int(value) if dim.kind.endswith("int") else value
            try:
                trial_config(base, {dim.path: cast})
            except TuneError as e:
                raise TuneError(f"--space {dim.path}={dim.kind}{dim.args}: {e}") from None


def open_study(out: Path, name: str, direction: str, sampler: str, pruner: str, seed: int | None) -> Any:
    """The study in `out/study.journal` (created, or joined when another process made it); its trials
    left running by a killed worker of this host are marked failed and queued again (`recover`)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the trials are reported here, not in its log lines
    out.mkdir(parents=True, exist_ok=True)
    check_journal(out / JOURNAL)
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    pruners = {
        # Optuna's default start (5 finished trials first), and never on one epoch's evidence alone
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
        "none": optuna.pruners.NopPruner,
    }
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction=direction,
        sampler=samplers[sampler](seed=seed),
        pruner=pruners[pruner](),
    )
    recover(study, storage)
    return study


def check_journal(path: Path) -> None:
    """Refuses, before Optuna reads or appends anything, a journal whose complete lines are not all JSON
    objects (a damaged file, or not a journal): TuneError naming the file and the line."""
    if not path.exists():
        return
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TuneError(
            f"{path}: not a readable Optuna journal ({e}); move it away or give another --out"
        ) from None
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if not line.endswith("\n") or not line.strip():  # a line still being written by another process
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok:
            raise TuneError(
                f"{path}: line {number} is not an Optuna journal record (the file is damaged, or not a "
                "journal); nothing was written to it: move it away or give another --out"
            )


def recover(study: Any, storage: Any) -> list[int]:
    """Trials still 'running' whose worker (a process of this host) is gone: marked failed, never counted
    as complete, and their parameters queued for the next trial. Returns their numbers."""
    from optuna.trial import TrialState

    from cnn.run_folder import process_alive

    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker") or {}
        if owner.get("host") == socket.gethostname() and not process_alive(int(owner.get("pid", 0))):
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            print(
                f"Trial {trial.number}: its worker (PID {owner['pid']}) is gone; marked failed, queued again"
            )
            lost.append(trial.number)
    return lost


def objective(base: dict[str, Any], dims: list[Dimension], splits: Splits, out: Path):
    """Optuna's objective: one trial is one run in `out/trial-NNNN`, its monitored validation metric
    reported after every epoch (the pruner may stop it there: its folder stays a resumable run)."""
    import optuna

    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        config = trial_config(base, {d.path: d.suggest(trial) for d in dims})

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[config.monitor], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            results = fit(config, splits, out / f"trial-{trial.number:04d}", on_epoch_end=report)
        except (TrainingDiverged, TrainingFailed) as e:  # recorded as failed; the study goes on
            print(f"Trial {trial.number} failed: {e}", flush=True)
            raise
        trial.set_user_attr("test_accuracy", results["test_accuracy"])
        return results[config.monitor]  # minimised (val_loss) or maximised (val_accuracy)

    return run


def start_workers(argv: list[str], workers: int, seed: int | None) -> list[subprocess.Popen]:
    """`workers - 1` more processes running the same command (without --workers, each its own sampler
    seed) on the same study."""
    started = []
    for k in range(1, workers):
        own = ["--seed", str(seed + k)] if seed is not None else []
        started.append(subprocess.Popen([sys.executable, "-m", "cnn", *argv, *own, "--worker", str(k)]))
    return started


def trials_table(study: Any) -> str:
    """Every trial: number, state, the objective, the test accuracy, epochs reported and the parameters."""
    names = sorted({k for t in study.trials for k in t.params})
    lines = [
        "| trial | state | value | test accuracy | epochs | " + " | ".join(names) + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for t in study.trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        test = t.user_attrs.get("test_accuracy")
        params = " | ".join(_short(t.params.get(n, "")) for n in names)
        epochs = max(t.intermediate_values, default=0)
        test_text = "" if test is None else f"{test:.4f}"
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | {test_text} | {epochs} | {params} |")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(study: Any, out: Path) -> list[Path]:
    """The table of trials (trials.md) and, with finished trials, the optimisation history and the
    parameter importances as PNGs."""
    import warnings

    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as views

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    (out / "trials.md").write_text(trials_table(study) + "\n")
    written = [out / "trials.md"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"optimization_history.png": views.plot_optimization_history}
    if len(complete) >= 2 and len(complete[0].params) >= 1:
        plots["param_importances.png"] = views.plot_param_importances
    for name, plot in plots.items():
        if not complete:
            break
        axes = plot(study)
        axes.figure.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(axes.figure)
        written.append(out / name)
    return written


def without_workers(argv: list[str]) -> list[str]:
    """`argv` less its `--workers N` and `--seed S` (what the extra worker processes run)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in ("--workers", "--seed"):
            skip = True
        elif not token.startswith(("--workers=", "--seed=")):
            out.append(token)
    return out


def run_study(study: Any, run: Any, trials: int, timeout: float | None) -> None:
    """Trials until the study holds `trials` of them (counting every process's) or `timeout` seconds pass;
    a diverged or failed trial is recorded as failed and the search goes on."""
    import optuna

    if len(study.trials) >= trials:
        return
    study.optimize(
        run,
        timeout=timeout,
        callbacks=[optuna.study.MaxTrialsCallback(trials, states=None)],
        catch=(TrainingDiverged, TrainingFailed),
    )
