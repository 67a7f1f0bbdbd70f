"""Resuming a run and knowing when to stop: Keras' early stopping, the run's state saved with every
checkpoint (epoch, history, timing, early stopping), and `resume`, which restores the latest checkpoint that
reads back (a damaged one is moved aside, never deleted, and the one before it is taken)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnn.config import TrainConfig
from cnn.engine.state import TrainState
from cnn.models.summary import nonfinite
from cnn.runs.checkpoints import Checkpoints


def monitored(metrics: dict[str, float], monitor: str = "val_loss") -> float:
    """The score early stopping and the best checkpoint minimise: the validation loss, or the negated
    validation accuracy."""
    return metrics[monitor] if monitor == "val_loss" else -metrics[monitor]


@dataclass
class EarlyStopping:
    """Keras' EarlyStopping: stop after `patience` epochs without a new minimum of the score (see
    `monitored`)."""

    patience: int
    best: float = float("inf")
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False

    def update(self, epoch: int, score: float) -> bool:
        """Records one epoch's score (lower is better); returns True when this epoch is the best so far."""
        if score < self.best:
            self.best, self.best_epoch, self.wait = score, epoch, 0
            return True
        self.wait += 1
        self.stopped = self.wait >= self.patience
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "stopped": self.stopped}


@dataclass
class RunState:
    """Everything the fit loop carries from epoch to epoch besides the train state (saved with it)."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    timing: list[dict[str, float]] = field(default_factory=list)
    stopping: EarlyStopping = field(default_factory=lambda: EarlyStopping(patience=0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "history": self.history,
            "timing": self.timing,
            "stopping": self.stopping.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], patience: int) -> RunState:
        stopping = EarlyStopping(patience=patience, **{k: v for k, v in d["stopping"].items()})
        return cls(epoch=d["epoch"], history=d["history"], timing=d["timing"], stopping=stopping)


def resume(
    checkpoints: Checkpoints, state: TrainState, config: TrainConfig, workdir: Path
) -> tuple[TrainState, RunState, Checkpoints]:
    """The state and run of the latest checkpoint that restores, newest first. A damaged one (a truncated
    file, a missing item) is moved to `workdir/damaged/` with a warning, never deleted; with none left the
    run starts afresh. Unfinished temporary directories of an interrupted save are ignored by orbax."""
    for unfinished in sorted(checkpoints.directory.glob("*.orbax-checkpoint-tmp*")):
        print(f"Warning: ignoring {unfinished}, an unfinished checkpoint save (the run was interrupted)")
    saved = sorted(checkpoints.epochs(), reverse=True)
    for epoch in saved:
        try:
            restored, meta = checkpoints.restore(epoch, state)
            run = RunState.from_dict(meta, config.patience)
            damaged = nonfinite({"params": restored.params, "batch_stats": restored.batch_stats})
            if damaged:
                raise ValueError(f"NaN or Inf values in {', '.join(damaged[:3])}")
        except Exception as error:  # orbax, tensorstore and json raise many kinds
            checkpoints = _set_aside(checkpoints, epoch, workdir, error)
            continue
        if run.stopping.stopped or run.epoch >= config.epochs:
            print(
                f"{workdir} has finished ({run.epoch} epoch(s), best: epoch {run.stopping.best_epoch}): "
                "nothing to train; evaluating its best epoch again"
            )
        else:
            print(
                f"Resuming {workdir} after epoch {run.epoch} (best so far: epoch {run.stopping.best_epoch})"
            )
        return restored, run, checkpoints
    trained = _history_epochs(workdir)
    if trained and not saved:  # a history without checkpoints (damaged ones were named above)
        print(
            f"Warning: {workdir} records {trained} trained epoch(s) in history.json but holds no complete "
            "checkpoint to resume from (deleted, or the process was killed before its first save completed); "
            "training from the start, and history.json will be rewritten",
            flush=True,
        )
    return state, RunState(stopping=EarlyStopping(config.patience)), checkpoints


def _history_epochs(workdir: Path) -> int:
    try:
        return len(json.loads((workdir / "history.json").read_text()))
    except (OSError, ValueError, TypeError):
        return 0


def _set_aside(checkpoints: Checkpoints, epoch: int, workdir: Path, error: Exception) -> Checkpoints:
    aside = workdir / "damaged" / f"epoch-{epoch}-{int(time.time())}"
    checkpoints.close()
    aside.parent.mkdir(exist_ok=True)
    shutil.move(str(checkpoints.directory / str(epoch)), aside)
    checkpoints = Checkpoints(checkpoints.directory)
    left = checkpoints.epochs()
    reason = str(error).splitlines()[0].split(" See full TensorStore details")[0][:200] if str(error) else ""
    fallback = f"Falling back to epoch {max(left)}." if left else "No other checkpoint: starting afresh."
    print(
        f"Warning: the checkpoint of epoch {epoch} in {workdir} is damaged ({type(error).__name__}: "
        f"{reason}); moved to {aside}. {fallback}",
        flush=True,
    )
    return checkpoints
