"""Every failure the command line tells apart, in one place, with the exit code it ends with (`EXIT_CODES`,
shown by `python -m cnn train --help`; `exit_code_of`). The library raises these; `cnn.cli.main` prints
one line for each and exits with its code. Imports nothing of `cnn`."""

from __future__ import annotations

import errno
import re
import signal
import sys
from pathlib import Path

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_RUNTIME, EXIT_NO_SPACE, EXIT_RUNS_FAILED = 2, 3, 4, 5, 6
EXIT_CODES = {
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


# ------------------------------------------------------------------------ bad input: EXIT_BAD_INPUT (2)
class ConfigError(ValueError):
    """A configuration field holds a value outside what it allows."""


class DataError(ValueError):
    """A data set that cannot be read or used: missing, truncated or corrupt files, empty splits, images
    that cannot be decoded (the message names the file or folder and the fix)."""


class InputError(ValueError):
    """Images or labels handed to `predict`/`evaluate` that the model cannot take (names the fix)."""


class ParallelError(ValueError):
    """A device or process setting that cannot work (names the numbers and the fix)."""


class ArchitectureError(ValueError):
    """Layers that do not fit together: a map shrinking to nothing, a kernel larger than its input."""


class WeightsError(ValueError):
    """A weight file that is missing or does not fit the network (names the file, layer and shapes)."""


class WorkdirError(ValueError):
    """The workdir holds a run that the requested one cannot continue."""


class WorkdirBusy(WorkdirError):
    """Another process is running in the workdir."""


class RunNotFoundError(ValueError):
    """A workdir without the files of a trained run."""


class CheckpointDamaged(ValueError):
    """A saved checkpoint whose weights hold NaN or Inf values (the message names them)."""


class ConfigMismatch(ValueError):
    """A run's config.json describes another network than the weights its checkpoint holds."""


class SweepError(ValueError):
    """A sweep definition that cannot run: an unknown field, an empty list, a value of the wrong type."""


class TuneError(ValueError):
    """A search that cannot run: a malformed space, an unknown field, a bad budget."""


class StorageError(ValueError):
    """A `--storage` database that cannot serve a sweep or study: unreachable (the message names host and
    port), its driver missing, made by another Optuna version, or holding this sweep or study with another
    definition (the message names what differs)."""


class ExperimentError(ValueError):
    """An experiment that is not there (names the ones that are)."""


class PeerError(ValueError):
    """The peer command failed or printed no JSON line with `images_per_second`."""


# ----------------------------------------------------------------------------- failures while running
class TrainingDiverged(RuntimeError):
    """A NaN or Inf loss or gradient; the message names the seed (when several train together), the epoch
    and the step."""


class TrainingFailed(RuntimeError):
    """XLA failed in the middle of a run (out of memory, a runtime error); the message names the epoch and
    what XLA said. The checkpoints of the earlier epochs are kept."""


class RunsFailed(RuntimeError):
    """A sweep, experiment or tune study ran to its end, but some of its runs failed (each recorded in its
    `error.json`); the others are kept and reported. The CLI exits with `EXIT_RUNS_FAILED`."""


class DiskFull(OSError):
    """There is no room for what is about to be written; the message names where and what to do."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)


NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
NO_SPACE_TEXTS = ("No space left on device", "File too large", "Disk quota exceeded")


def out_of_space(error: BaseException) -> bool:
    """Whether `error` (an OSError, or a library's error that carries the OS error in its text) means that
    the disk, a quota or a file-size limit ran out."""
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        return True
    text = str(error)
    codes = re.findall(r"os_error_code='?(\d+)", text)
    return any(int(c) in NO_SPACE for c in codes) or any(t in text for t in NO_SPACE_TEXTS)


# --------------------------------------------------------------------- signals: 128 + the signal number
class Interrupted(Exception):
    """Training stopped on SIGTERM or SIGINT after saving the epoch in progress; `exit_code` is
    128 + the signal number (143 for SIGTERM, 130 for SIGINT), as shells report a signal."""

    def __init__(self, signum: int, epoch: int, workdir: Path, failed: str | None = None):
        self.signum, self.epoch, self.exit_code = signum, epoch, 128 + signum
        name = signal.Signals(signum).name
        done = f"stopped after epoch {epoch}" if failed is None else f"stopped ({failed} failed meanwhile)"
        super().__init__(f"{name}: {done}, saved in {workdir}; run the same command again to resume")


class Stopped(Interrupted):
    """SIGTERM or SIGINT outside an epoch (starting up, preparing data, between runs, writing tables), or
    asked during the last epoch of a run that then finished: nothing was in progress to save, no further
    run starts. `exit_code` is 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int, when: str):
        self.signum, self.epoch, self.exit_code = signum, 0, 128 + signum
        Exception.__init__(
            self,
            f"{signal.Signals(signum).name}: stopped {when}; every epoch finished before is saved: run the "
            "same command again to go on",
        )


class StudyInterrupted(Interrupted):
    """The study stopped on SIGTERM or SIGINT (`exit_code` 143 or 130): the trials in progress stopped after
    their epoch in progress, each marked failed and its point queued again for the next run."""

    def __init__(self, signum: int, out: Path):
        self.signum, self.exit_code = signum, 128 + signum
        Exception.__init__(
            self,
            f"{signal.Signals(signum).name}: stopped the study in {out} (a trial in progress is marked "
            "failed, its point queued again); run the same command again to continue it",
        )


class PreparationInterrupted(Exception):
    """SIGINT or SIGTERM while a data set was being prepared: tfds removed its temporary folder, nothing
    half-prepared is kept. `exit_code` is 128 + the signal number (130, 143), as shells report a signal."""

    def __init__(self, signum: int, where: str):
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped while preparing the data set in {where}; nothing half-prepared was kept. Run "
            "the command again to prepare it."
        )
        self.exit_code = 128 + signum


def xla_runtime_error(error: BaseException) -> bool:
    """Whether `error` is XLA's runtime error (asked without importing JAX: a process that never imported
    it cannot have one)."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(error, jax.errors.JaxRuntimeError)


def exit_code_of(error: BaseException) -> int | None:
    """The exit code the command line ends with for `error`, or None for an error it does not know (a bug:
    its traceback is printed)."""
    if isinstance(error, Interrupted | PreparationInterrupted):
        return error.exit_code
    if isinstance(error, TrainingDiverged):
        return EXIT_DIVERGED
    if isinstance(error, TrainingFailed) or xla_runtime_error(error):
        return EXIT_RUNTIME
    if isinstance(error, RunsFailed):
        return EXIT_RUNS_FAILED
    if isinstance(error, ValueError):  # every refusal above is one; so are the checks of the libraries used
        return EXIT_BAD_INPUT
    if isinstance(error, OSError) and out_of_space(error):
        return EXIT_NO_SPACE
    if isinstance(error, OSError) and error.filename is not None:
        return EXIT_BAD_INPUT
    return None
