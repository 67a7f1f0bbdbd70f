"""Orbax checkpoints of a run: the latest epoch (for resuming) and the best one (lowest score: the
validation loss, or the negated validation accuracy, see `cnn.runs.resume.monitored`). Saves are asynchronous:
the arrays are copied to host memory, then written while the next epoch trains (orbax writes a temporary
folder and renames it when complete, so a killed process leaves no half-written epoch behind)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from cnn.errors import DiskFull, WorkdirError, out_of_space
from cnn.runs.disk import check_room


class _QuietOrbax(logging.Filter):
    """Drops orbax's warning that an item has no metadata file (`state/_CHECKPOINT_METADATA`, which the
    handlers used here never write): printed on every restore, it says nothing about the checkpoint."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        # a failed save: the error reaches the caller (`Checkpoints.wait`), said there in one line
        failed = record.levelno >= logging.ERROR and record.exc_info is not None
        return not (failed or str(record.msg).startswith("Metadata file does not exist"))


logging.getLogger("absl").addFilter(_QuietOrbax())

TIE_BREAK = 1e-12  # far below the gap between two distinct float32 scores
HEADROOM = 1.25  # the bytes of a checkpoint's arrays, times this: room for orbax's index and metadata
RESUME_HINT = "run the same command again to resume; the earlier checkpoints are kept"


def _score(metrics: dict[str, float]) -> float:
    # Checkpoints written before the score was configurable saved it as "val_loss".
    return metrics["score"] if "score" in metrics else metrics["val_loss"]


class Checkpoints:
    """Keeps two epochs of a run in `directory`: the latest and the one with the lowest score.

    Orbax's `best_step()` answers the latest step under this combined policy, so the best epoch is
    recorded by the caller (in the saved metadata), not asked of the manager.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory).absolute()
        policy = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=1),
                policies.BestN(get_metric_fn=_score, reverse=True, n=1),
            ]
        )
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=options, item_names=("state", "meta")
        )

    def latest_epoch(self) -> int | None:
        self.wait()
        return self.manager.latest_step()

    def epochs(self) -> list[int]:
        """The saved epochs (once the last save is written)."""
        self.wait()
        return list(self.manager.all_steps())

    def save(self, epoch: int, state: Any, meta: dict[str, Any], score: float) -> None:
        """Saves `state` and JSON `meta` as `epoch`, ranked by `score` (lower is better), in the background:
        the arrays are copied first (the training step reuses the state's buffers)."""
        several = jax.process_count() > 1  # global arrays go to orbax as they are, and the save is awaited
        host = (
            state
            if several
            else jax.tree.map(lambda x: np.array(x) if isinstance(x, jax.Array) else x, state)
        )
        args = ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
        needed = int(HEADROOM * sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))) + 2**16
        check_room(self.directory.parent, needed, "the checkpoint", RESUME_HINT)
        # Ties (common for accuracy) go to the earlier epoch, as in early stopping: without this, orbax
        # could keep a later epoch of the same score and delete the one early stopping calls the best.
        with _no_space_as_diskfull(self.directory):
            self.manager.save(epoch, args=args, metrics={"score": float(score) + epoch * TIE_BREAK})
            if several:
                self.manager.wait_until_finished()

    def wait(self) -> None:
        """Returns once the last save is written."""
        with _no_space_as_diskfull(self.directory):
            self.manager.wait_until_finished()

    def restore(self, epoch: int, template: Any) -> tuple[Any, dict[str, Any]]:
        """The state (shaped like `template`) and metadata saved as `epoch`."""
        self.wait()
        args = ocp.args.Composite(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
        restored = self.manager.restore(epoch, args=args)
        return restored["state"], restored["meta"]

    def restore_meta(self, epoch: int) -> dict[str, Any]:
        """Only the JSON metadata saved as `epoch` (no arrays are read)."""
        return self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_variables(self, epoch: int) -> tuple[Any, Any, dict[str, Any]]:
        """The parameters, batch statistics (or None) and metadata saved as `epoch`, without a template, so
        that a state trained with any optimizer restores."""
        # A target on this process's first device, from the saved shapes: a run saved by several devices or
        # processes (another topology) restores here too.
        saved = ocp.StandardCheckpointer().metadata(self.directory / str(epoch) / "state").item_metadata
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device) if hasattr(m, "shape") else m,
            saved,
            is_leaf=lambda m: hasattr(m, "shape"),
        )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        restored = self.manager.restore(epoch, args=args)
        state = restored["state"]
        if state.get("ema_params"):  # a run that keeps a moving average is used with it
            stats = state.get("ema_batch_stats") or state.get("batch_stats")
            return state["ema_params"], stats, restored["meta"]
        return state["params"], state.get("batch_stats"), restored["meta"]

    def close(self) -> None:
        try:
            self.wait()
        except BaseException:
            abandon_waiting_saves()  # else the process never ends: they would wait for the failed save
            raise
        finally:
            self.manager.close()


def check_writable(directory: Path) -> None:
    """Refuses (WorkdirError, before any training) a checkpoints folder this process cannot write in (a
    read-only folder or file system, another user's folder): found now, not by a background save."""
    probe = Path(directory) / f".cnn-write-test-{os.getpid()}"
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise WorkdirError(
            f"checkpoints: cannot write in {directory} ({e.strerror or e}); make it writable (e.g. chmod -R "
            "u+w) and run the same command again to resume, or use another --workdir; nothing is lost"
        ) from None


def abandon_waiting_saves() -> int:
    """Orbax's save threads still waiting for a step of a save that failed, cancelled and released (the
    signal they wait for set), so that the process can end; returns how many. Reaches into orbax's
    futures: where they differ (another version), nothing is done."""
    try:
        from orbax.checkpoint._src.futures import future, signaling_client

        waiting = [
            t for t in threading.enumerate() if isinstance(t, future._SignalingThread) and t.is_alive()
        ]
        client = signaling_client.get_signaling_client()
        for thread in waiting:
            thread._cancelled = True
            for signal in thread._receive_signals:
                key = future.AwaitableSignalsContract.get_unique_awaitable_singal_key(
                    signal, thread._operation_id
                )
                client.key_value_set(key, "abandoned", allow_overwrite=True)
    except (ImportError, AttributeError, TypeError):
        return 0
    return len(waiting)


@contextlib.contextmanager
def _no_space_as_diskfull(directory: Path) -> Iterator[None]:
    """A full disk met while saving (now, or in the background by an earlier save) as `DiskFull`; a folder
    that refuses the write (permission, read-only) as WorkdirError naming it."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as e:
        if out_of_space(e):
            raise DiskFull(f"no space to save the checkpoint in {directory}: {RESUME_HINT}") from None
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise WorkdirError(
                f"checkpoints: cannot write {e.filename or directory} ({e.strerror}); make {directory} "
                f"writable and {RESUME_HINT}"
            ) from None
        raise
