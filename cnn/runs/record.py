"""A run's bookkeeping, behind the few calls the training loop makes: `Run.open` (the run resumed from its
folder), `Run.record_epoch` (early stopping, history, an asynchronous checkpoint, TensorBoard, the epoch's
line) and `Run.finish` (the best epoch's results)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnn.config import TrainConfig
from cnn.data.spec import Splits
from cnn.engine import costs
from cnn.engine.devices import is_primary
from cnn.engine.state import TrainState, learning_rate, steps_per_epoch
from cnn.runs.checkpoints import Checkpoints, check_writable
from cnn.runs.events import EventLog
from cnn.runs.folder import write_history
from cnn.runs.results import run_results, write_results
from cnn.runs.resume import RunState, monitored, resume


@dataclass
class Run:
    """One run of the loop: its config, folder, checkpoints, run state (epoch, history, early stopping)
    and TensorBoard log (None: `--no-tensorboard`, or not process 0). `together`: how many runs train
    in its program; `label`: how its lines name it then (its seed, and its learning rate and weight decay
    where those differ between the runs)."""

    config: TrainConfig
    workdir: Path
    checkpoints: Checkpoints
    record: RunState
    events: EventLog | None = None
    together: int = 1
    label: str = ""

    @classmethod
    def open(
        cls, config: TrainConfig, workdir: Path, state: TrainState, together: int = 1, label: str = ""
    ) -> tuple[TrainState, Run]:
        """The run in `workdir` resumed from its latest good checkpoint (or `state`, fresh)."""
        check_writable(workdir / "checkpoints")
        state, record, checkpoints = resume(Checkpoints(workdir / "checkpoints"), state, config, workdir)
        if record.history:  # a run killed between its checkpoint and its history file
            write_history(workdir, record.history)
        return state, cls(
            config, workdir, checkpoints, record, open_events(config, workdir, record), together, label
        )

    @property
    def training(self) -> bool:
        return self.record.epoch < self.config.epochs and not self.record.stopping.stopped

    @property
    def name(self) -> str:
        """How the run's lines name it when it trains beside others: its label, else its seed."""
        return self.label or f"seed {self.config.seed}"

    def record_epoch(
        self, state: TrainState, epoch: int, metrics: dict[str, float], timing: dict[str, float]
    ) -> None:
        """One finished epoch: early stopping, history, checkpoint, history file, TensorBoard, the line."""
        config, record = self.config, self.record
        score = monitored(metrics, config.monitor)
        record.stopping.update(epoch, score)
        record.epoch = epoch
        record.history.append({"epoch": epoch, **metrics})
        group = {"group_images": timing["images"] * self.together} if self.together > 1 else {}
        record.timing.append({"epoch": epoch, **timing, **group})
        with costs.phase("checkpoint"):
            self.checkpoints.save(epoch, state, json.loads(json.dumps(record.to_dict())), score)
            write_history(self.workdir, record.history)
            if self.events is not None:
                self.events.epoch(record.history[-1] | scalars_of(config, timing, int(state.step)))
        who = self.name if self.together > 1 else ""
        print(epoch_line(config, epoch, metrics, timing, who), flush=True)
        if record.stopping.stopped:
            print(
                f"Early stopping: no better {config.monitor} for {config.patience} epochs; restoring "
                f"epoch {record.stopping.best_epoch}{f' ({who})' if who else ''}"
            )

    def finish(self, state: TrainState, splits: Splits, extra: dict[str, Any]) -> dict[str, Any]:
        """The run's results from its best epoch's checkpoint (`state`: the template to restore it into;
        see `cnn.runs.results`), also written to its TensorBoard log as hparams."""
        with costs.phase("evaluate"):
            best, _ = self.checkpoints.restore(self.record.stopping.best_epoch, state)
            results = run_results(self.config, best, self.record, splits, extra)
        with costs.phase("results"):
            write_results(self.workdir, results, self.record)
            if self.events is not None:
                self.events.hparams(self.config.to_dict(), results)
        return results

    def close(self) -> None:
        self.checkpoints.close()
        if self.events is not None:
            self.events.close()


def open_events(config: TrainConfig, workdir: Path, record: RunState) -> EventLog | None:
    """The run's TensorBoard log; a resumed run's is rewritten from its history up to where it resumes
    (purging whatever a killed process wrote after its last checkpoint: no duplicate or missing epoch)."""
    if not (config.tensorboard and is_primary()):
        return None
    events = EventLog(workdir, purge=bool(record.history))
    for epoch, timing in zip(record.history, record.timing, strict=False):
        steps = steps_per_epoch(timing["images"], config.batch_size)
        events.epoch(epoch | scalars_of(config, timing, epoch["epoch"] * steps))
    return events


def scalars_of(config: TrainConfig, timing: dict[str, float], step: int) -> dict[str, float]:
    """The learning rate after `step` steps and the training images/s of an epoch, for TensorBoard."""
    steps = steps_per_epoch(timing["images"], config.batch_size)
    return {"lr": learning_rate(config, step, steps), "images_per_second": images_per_second(timing)}


def images_per_second(timing: dict[str, float]) -> float:
    """An epoch's training images/s, its compiling left out."""
    return timing["images"] / max(timing["seconds"], 1e-9)


def epoch_line(
    config: TrainConfig, epoch: int, metrics: dict[str, float], timing: dict[str, float], who: str = ""
) -> str:
    """The line printed after each epoch, as Keras' `fit` prints it (the compiling said apart)."""
    steps = steps_per_epoch(timing["images"], config.batch_size)
    compiled = f" + {timing['compile_seconds']:.1f}s compiling" if timing["compile_seconds"] >= 0.05 else ""
    who = f"{who} - " if who else ""
    return (
        f"Epoch {epoch}/{config.epochs} - {who}{steps} steps - {timing['seconds']:.1f}s"
        f"{compiled} ({images_per_second(timing):.0f} img/s) - "
        f"loss: {metrics['loss']:.4f} - accuracy: {metrics['accuracy']:.4f} - "
        f"val_loss: {metrics['val_loss']:.4f} - val_accuracy: {metrics['val_accuracy']:.4f}"
    )
