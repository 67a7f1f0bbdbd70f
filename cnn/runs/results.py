"""A run's results: the best epoch's weights evaluated on validation and test, `results.json` (with the
training time, its compile time kept apart) and `curves.png`; and `restore_run`, which opens a finished run
from its folder alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnn.config import TrainConfig
from cnn.data.spec import DataSpec, Splits
from cnn.engine.devices import is_primary
from cnn.engine.evaluation import mean_metrics, metric_sums
from cnn.engine.state import AveragedTrainState, TrainState, initial_state, steps_per_epoch
from cnn.errors import CheckpointDamaged, ConfigMismatch, RunNotFoundError
from cnn.models.summary import count_params, nonfinite
from cnn.runs.checkpoints import Checkpoints
from cnn.runs.curves import plot_curves
from cnn.runs.folder import read_run, write_json
from cnn.runs.resume import RunState


def run_results(
    config: TrainConfig,
    best_state: TrainState,
    run: RunState,
    splits: Splits,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results of a run: the best epoch's weights on test (and on validation, as that epoch measured
    them: the same weights and program), when it stopped, its size,
    and its training time (`train_seconds`, without compiling), the compiling (`compilations`,
    `compile_seconds`) and the training images/s."""
    test = mean_metrics(jax.device_get(metric_sums(best_state, splits.test, config.eval_batch_size)))
    best = next(h for h in run.history if h["epoch"] == run.stopping.best_epoch)
    val = {"loss": best["val_loss"], "accuracy": best["val_accuracy"]}  # evaluated with these weights
    train_seconds = sum(t["seconds"] for t in run.timing)
    results = {
        "model": config.model,
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "best_epoch": run.stopping.best_epoch,
        "epochs_run": run.epoch,
        "stopped_early": run.stopping.stopped,
        "params": count_params(best_state.params),
        "non_trainable_params": count_params(best_state.batch_stats),
        "steps": sum(steps_per_epoch(t["images"], config.batch_size) for t in run.timing),
        "train_seconds": train_seconds,
        "compile_seconds": sum(t["compile_seconds"] for t in run.timing),
        "compilations": sum(t.get("compilations", 0) for t in run.timing),
        "images_per_second": sum(t["images"] for t in run.timing) / max(train_seconds, 1e-9),
        **(extra or {}),
    }
    if all("group_images" in t for t in run.timing):  # trained together with other runs
        results["group_images_per_second"] = sum(t["group_images"] for t in run.timing) / max(
            train_seconds, 1e-9
        )
    return results


def write_results(workdir: Path, results: dict[str, Any], run: RunState) -> None:
    """results.json and curves.png in `workdir` (by process 0), and the line that says where they are."""
    if is_primary():
        write_json(workdir / "results.json", results)
        plot_curves(run.history, workdir / "curves.png", best_epoch=run.stopping.best_epoch)
    print(
        f"Best epoch {results['best_epoch']}: "
        f"val_loss {results['val_loss']:.4f}, val_accuracy {results['val_accuracy']:.4f}; "
        f"test_loss {results['test_loss']:.4f}, test_accuracy {results['test_accuracy']:.4f}. "
        f"Results in {workdir}"
    )


def shape_mismatch(model: Any, saved: Any) -> str | None:
    """The first parameter whose shape (or presence) differs between the model's `model` and the saved
    `saved` parameters, as 'Conv_0/kernel: (3, 3, 1, 32) in the checkpoint, (5, 5, 1, 32) for the model'."""

    def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
        return {
            "/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }

    ours, theirs = shapes(model), shapes(saved)
    for name in sorted(set(ours) | set(theirs)):
        a, b = theirs.get(name), ours.get(name)
        if a != b:
            saved_as = "absent" if a is None else f"{a}"
            model_as = "absent" if b is None else f"{b}"
            return f"{name}: {saved_as} in the checkpoint, {model_as} for the model config.json describes"
    return None


def restore_run(
    workdir: str | Path, epoch: int | None = None
) -> tuple[TrainConfig, TrainState, dict[str, Any]]:
    """The config, the train state of the best epoch (or of `epoch`) and the metadata of a run's workdir.
    The model is rebuilt from config.json alone (its data description: image shape and classes)."""
    workdir = Path(workdir)
    config, spec, _ = read_run(workdir)
    state, meta = restore_state(workdir, config, spec, epoch)
    return config, state, meta


def restore_state(
    workdir: Path, config: TrainConfig, spec: DataSpec, epoch: int | None = None
) -> tuple[TrainState, dict[str, Any]]:
    """The train state of the run's best epoch (or of `epoch`), and the metadata saved with it."""
    checkpoints = Checkpoints(workdir / "checkpoints")
    try:
        latest = checkpoints.latest_epoch()
        if latest is None:
            raise RunNotFoundError(
                f"workdir {workdir} has no checkpoint yet; train one first: "
                f"python -m cnn train --workdir {workdir}"
            )
        chosen = epoch or checkpoints.restore_meta(latest)["stopping"]["best_epoch"]
        if chosen not in checkpoints.epochs():
            raise RunNotFoundError(f"epoch {chosen} is not saved in {workdir}; saved: {checkpoints.epochs()}")
        params, batch_stats, meta = checkpoints.restore_variables(chosen)
        damaged = nonfinite({"params": params, "batch_stats": batch_stats})
        if damaged:
            raise CheckpointDamaged(
                f"the checkpoint of epoch {chosen} in {workdir} holds NaN or Inf values "
                f"({', '.join(damaged[:3])}): it is damaged; restore it from a backup, or train the run "
                "again (--overwrite)"
            )
        # The variables into a fresh state of the run's model: any optimizer it was trained with (a frozen
        # backbone's, say) restores, and the optimizer state, needed only to resume, starts anew.
        fresh = initial_state(config, spec)
        misfit = shape_mismatch(fresh.params, params)
        if misfit:
            raise ConfigMismatch(
                f"the run in {workdir}: its config.json does not fit the weights of its checkpoint (epoch "
                f"{chosen}): {misfit}. Was config.json edited by hand? Restore it, or train the run again"
            )
        state = fresh.replace(  # the moving average, for a run that keeps one, is restored as the weights
            params=jax.tree.map(jnp.asarray, params),
            batch_stats=None if batch_stats is None else jax.tree.map(jnp.asarray, batch_stats),
        )
        if isinstance(state, AveragedTrainState):
            state = state.replace(ema_params=None, ema_batch_stats=None)
    finally:
        checkpoints.close()
    return state, meta


def finished_run(workdir: str | Path) -> tuple[TrainConfig, DataSpec, TrainState, dict[str, Any]]:
    """The config, data description, best-epoch state and checkpoint metadata of the finished run in
    `workdir` (what `predict`, `evaluate` and `export` use); RunNotFoundError for a folder without a run or
    a run that has not finished (it names the command that finishes it)."""
    workdir = Path(workdir)
    config, spec, _ = read_run(workdir)
    if not (workdir / "results.json").is_file():
        raise RunNotFoundError(
            f"the run in {workdir} has not finished (no results.json); finish it first: "
            f"python -m cnn train --workdir {workdir} with the same settings"
        )
    state, meta = restore_state(workdir, config, spec)
    return config, spec, state, meta
