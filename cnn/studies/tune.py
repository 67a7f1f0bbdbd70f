"""Adaptive hyper-parameter search with Optuna: a search space of config fields, TPE (or random) sampling,
pruning on the monitored validation metric after every epoch, every trial a normal run folder, and the study
in a journal file in the output folder, so the same command started in several processes (or on several
machines sharing the folder) works on one study without a database server; or, with `--storage URL`, in
Optuna's RDB storage (PostgreSQL, MySQL, SQLite), whose heartbeats fail the trial of a worker that died and
try it again, resumed from its folder's last saved epoch.

    python -m cnn tune --space 'lr=loguniform(1e-4,1e-2)' --space 'batch_size=choice(32,64,128)' \\
        --space 'model_args.dropout_rate=uniform(0,0.6)' --trials 20 --workers 2 --out runs/tune
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from cnn.data.spec import Splits
from cnn.errors import (
    Interrupted,
    StudyInterrupted,
    TrainingDiverged,
    TrainingFailed,
    TuneError,
)
from cnn.runs.signals import pending
from cnn.studies.space import Dimension, trial_config
from cnn.studies.storage import JOURNAL, check_journal, other_study, rdb_storage
from cnn.train import fit

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def open_study(
    out: Path,
    name: str,
    direction: str,
    sampler: str,
    pruner: str,
    seed: int | None,
    worker: int = 0,
    url: str | None = None,
    heartbeat: float = 10.0,
) -> Any:
    """The study in `out/study.journal`, or in the database at `url` (`rdb_storage`), created or joined when
    another process made it; in the journal, its trials left running by a killed worker of this host are
    marked failed and queued again (`recover`; the database's heartbeats do that for any host). The
    sampler's seed is drawn from `seed`, the `worker` number and the trials already there, so that workers
    and reruns do not draw the points drawn before."""
    import numpy as np
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the trials are reported here, not in its log lines
    out.mkdir(parents=True, exist_ok=True)
    if url is not None:
        storage = rdb_storage(url, heartbeat)
    else:
        check_journal(out / JOURNAL, name)
        storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    pruners = {
        # Optuna's default start (5 finished trials first), and never on one epoch's evidence alone
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
        "none": optuna.pruners.NopPruner,
    }
    study = optuna.create_study(
        study_name=name, storage=storage, load_if_exists=True, direction=direction, pruner=pruners[pruner]()
    )
    first = storage.get_all_studies()[0].study_name
    if url is None and first != name:  # another name made in the same moment: the first keeps the folder
        storage.delete_study(study._study_id)
        raise TuneError(other_study(out, first, name))
    if url is None:
        recover(study, storage)
    if seed is not None:
        seed = int(np.random.SeedSequence([seed, worker, len(study.trials)]).generate_state(1)[0])
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    study.sampler = samplers[sampler](seed=seed)
    return study


def recover(study: Any, storage: Any) -> list[int]:
    """Trials still 'running' whose worker (a process of this host) is gone: marked failed, never counted
    (`counted_trials`), and their parameters queued for the next trial. Returns their numbers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from cnn.runs.lock import process_alive

    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker") or {}
        if owner.get("host") == socket.gethostname() and not process_alive(int(owner.get("pid", 0))):
            try:
                storage.set_trial_user_attr(trial._trial_id, "stopped", "worker gone")
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:  # another process starting at the same time recovered it
                continue
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            print(
                f"Trial {trial.number}: its worker (PID {owner['pid']}) is gone; marked failed, queued again"
            )
            lost.append(trial.number)
    return lost


class TrialSignals:
    """SIGTERM and SIGINT in a tuning process. Between trials (while Optuna samples and records) the first is
    noted (`signum`) and the study stops before its next trial; a second stops at once. While a trial
    trains (`training()`) they are the run's own, as in `train` (cnn.runs.signals.stop_on_signals)."""

    def __init__(self) -> None:
        self.noted: int | None = None
        self.previous: dict[int, Any] = {}

    @property
    def signum(self) -> int | None:
        """The signal noted between trials, or the request a trial's last epoch left standing (the trial
        finished, and no further one starts)."""
        return self.noted if self.noted is not None else pending()

    def __enter__(self) -> TrialSignals:
        if threading.current_thread() is threading.main_thread():  # signals go to the main thread only
            self.previous = {sig: signal.signal(sig, self.request) for sig in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def request(self, signum: int, frame: Any) -> None:
        if self.noted is not None:
            signal.signal(signum, self.previous[signum])
            signal.raise_signal(signum)
            return
        self.noted = signum
        print(f"{signal.Signals(signum).name}: stopping the study before its next trial", flush=True)

    @contextlib.contextmanager
    def training(self):
        """The handlers from before the study while a trial trains: `fit` handles a signal as in `train`."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig in self.previous:
                signal.signal(sig, self.request)


def objective(
    base: dict[str, Any],
    dims: list[Dimension],
    splits: Splits,
    out: Path,
    signals: TrialSignals | None = None,
    resume: bool = False,
):
    """Optuna's objective: one trial is one run in `out/trial-NNNN`, its monitored validation metric
    reported after every epoch (the pruner may stop it there: its folder stays a resumable run). A trial
    stopped by a signal (after its epoch in progress) is marked failed and its point queued again; with
    `resume` (a database's study), the trial that tries a point again resumes the first one's folder (its
    `folder` attribute, which Optuna's retry of a silent worker's trial copies too)."""
    import optuna

    def run(trial: optuna.Trial) -> float:
        folder = (resume and trial.user_attrs.get("folder")) or f"trial-{trial.number:04d}"
        trial.set_user_attr("folder", folder)
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        config = trial_config(base, {d.path: d.suggest(trial) for d in dims})

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[config.monitor], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            if signals is not None and signals.signum is not None:  # came while this trial was sampled
                raise StudyInterrupted(signals.signum, out)
            with signals.training() if signals is not None else contextlib.nullcontext():
                results = fit(config, splits, out / folder, on_epoch_end=report)
        except (TrainingDiverged, TrainingFailed) as e:  # recorded as failed; the study goes on
            print(f"Trial {trial.number} failed: {e}", flush=True)
            raise
        except (Interrupted, KeyboardInterrupt) as e:  # its epochs are saved; the point is tried again
            stopped = signal.Signals(getattr(e, "signum", signal.SIGINT)).name
            trial.set_user_attr("stopped", stopped)
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "folder": folder})
            raise
        trial.set_user_attr("test_accuracy", results["test_accuracy"])
        return results[config.monitor]  # minimised (val_loss) or maximised (val_accuracy)

    return run


def run_workers(argv: list[str], workers: int, out: Path) -> None:
    """`workers` processes running the same command (`argv` without --workers; `--worker K` each) on one
    study, waited for. SIGTERM or SIGINT is passed on to each (it stops its trial as `train` stops, the
    trial failed and queued again), then StudyInterrupted."""
    received: list[int] = []
    started: list[subprocess.Popen] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)  # a second one too: the workers then stop at once
        for process in started:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in SIGNALS}
    try:
        for k in range(1, workers + 1):
            if received:
                break
            # a process group of its own: a Ctrl-C in the terminal reaches it once, through this process
            command = [sys.executable, "-m", "cnn", *argv, "--worker", str(k)]
            started.append(subprocess.Popen(command, process_group=0))
        for process in started:
            process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise StudyInterrupted(received[0], out)


def trials_table(study: Any) -> str:
    """Every trial: number, state, the objective, the test accuracy, epochs reported and the parameters."""
    names = sorted({k for t in study.trials for k in t.params})
    lines = [
        "| trial | state | value | test accuracy | epochs | " + " | ".join(names) + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    silent = {t.system_attrs.get("failed_trial") for t in study.trials}  # failed by the heartbeat, retried
    for t in study.trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        test = t.user_attrs.get("test_accuracy")
        params = " | ".join(_short(t.params.get(n, "")) for n in names)
        epochs = max(t.intermediate_values, default=0)
        test_text = "" if test is None else f"{test:.4f}"
        state = (
            t.state.name.lower()
            + (f" ({t.user_attrs['stopped']}, queued again)" if "stopped" in t.user_attrs else "")
            + (" (its worker fell silent, queued again)" if t.number in silent else "")
        )
        lines.append(f"| {t.number} | {state} | {value} | {test_text} | {epochs} | {params} |")
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

    # written whole, then renamed: several processes of one study may write the report at once
    unique = f".{os.getpid()}.tmp"
    (out / f"trials.md{unique}").write_text(trials_table(study) + "\n")
    (out / f"trials.md{unique}").replace(out / "trials.md")
    written = [out / "trials.md"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"optimization_history.png": views.plot_optimization_history}
    if len(complete) >= 2 and len(complete[0].params) >= 1:
        plots["param_importances.png"] = views.plot_param_importances
    for name, plot in plots.items():
        if not complete:
            break
        axes = plot(study)
        axes.figure.savefig(out / f"{name}{unique}", format="png", dpi=100, bbox_inches="tight")
        plt.close(axes.figure)
        (out / f"{name}{unique}").replace(out / name)
        written.append(out / name)
    return written


def without_workers(argv: list[str]) -> list[str]:
    """`argv` less its `--workers N` (what the worker processes run; each draws its own sampler seed from
    `--seed` and its number)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--workers":
            skip = True
        elif not token.startswith("--workers="):
            out.append(token)
    return out


def counted_trials(study: Any) -> list[Any]:
    """The study's trials that count towards `--trials`: those started, less those stopped and queued
    again (a lost worker's, an interrupted one's), whose point a waiting trial tries again."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    retried |= {t.system_attrs.get("failed_trial") for t in trials}  # failed by the storage's heartbeat
    return [t for t in trials if t.number not in retried and t.state.name != "WAITING"]


def run_study(
    study: Any,
    run: Any,
    trials: int,
    timeout: float | None,
    signals: TrialSignals | None = None,
    wait: float | None = None,
) -> None:
    """Trials until the study holds `trials` of them (counting every process's, `counted_trials`),
    `timeout` seconds pass or a signal came between trials (`signals`); a diverged or failed trial is
    recorded as failed and the search goes on. `wait` (a storage with heartbeats): while other workers'
    trials run, look every `wait` seconds for one whose worker fell silent, and try it again here."""
    import time

    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    def stopped() -> bool:
        return signals is not None and signals.signum is not None

    def enough(study: Any, trial: Any) -> None:
        if len(counted_trials(study)) >= trials or stopped():
            study.stop()

    while True:
        if len(counted_trials(study)) < trials and not stopped():
            study.optimize(run, timeout=timeout, callbacks=[enough], catch=(TrainingDiverged, TrainingFailed))
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if wait is None or timeout is not None or stopped() or not running:
            return
        time.sleep(wait)
        fail_stale_trials(study)  # a silent worker's trial failed, and queued again to be resumed here


def search(
    study: Any,
    base: dict[str, Any],
    dims: list[Dimension],
    splits: Splits,
    out: Path,
    trials: int,
    timeout: float | None,
    wait: float | None = None,
) -> None:
    """The trials of this process (`run_study` of `objective`); SIGTERM or SIGINT stops them after the
    epoch in progress, that trial failed and queued again (StudyInterrupted)."""
    with TrialSignals() as signals:
        try:
            run = objective(base, dims, splits, out, signals, resume=wait is not None)  # on a database
            run_study(study, run, trials, timeout, signals, wait)
        except Interrupted as e:
            raise StudyInterrupted(e.signum, out) from None
        except KeyboardInterrupt:  # SIGINT while a trial was starting or ending, outside its epochs
            raise StudyInterrupted(signal.SIGINT, out) from None
    if signals.signum is not None:
        raise StudyInterrupted(signals.signum, out)
