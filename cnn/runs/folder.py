"""A run's folder: what a run writes there and nothing else (`--overwrite` deletes only that), the lock that
keeps one run per folder, the checks that the run asked for is the run found there (its config and its data),
`config.json` with the data description and the machine's metadata, and atomic, strictly valid JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jax

from cnn.config import TrainConfig
from cnn.data.spec import FASHION_MNIST, DataSpec
from cnn.engine.devices import is_primary
from cnn.engine.host_memory import keep_freed_memory
from cnn.errors import ConfigError, RunNotFoundError, WorkdirError
from cnn.runs.events import HPARAMS
from cnn.runs.lock import LOCK_FILE, make_workdir

RUN_ENTRIES = {
    "config.json", "history.json", "results.json", "curves.png", "checkpoints", "damaged", "events",
    LOCK_FILE, f"{LOCK_FILE}.pid",  # removed when a run ends; left in folders by older versions
}  # fmt: skip
RUN_SUFFIXES = (".json.tmp",)


# ------------------------------------------------------------------------------------------- files
def write_json(path: Path, payload: Any) -> None:
    """Writes JSON atomically (temporary file, then rename), so a reader never sees half a file. NaN and
    Inf are refused (ValueError): they are not JSON, and strict parsers reject them."""
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    tmp = Path(path).with_suffix(Path(path).suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_history(workdir: Path, history: list[dict[str, Any]]) -> None:
    """The run's `history.json` (by process 0): every epoch's metrics so far."""
    if is_primary():
        write_json(Path(workdir) / "history.json", history)


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def cpu_model() -> str:
    """The CPU's vendor and model name (e.g. 'AMD EPYC', 'Intel(R) Xeon(R) Platinum 8488C')."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_metadata() -> dict[str, Any]:
    """Library versions, commit, device and CPU, for `config.json`."""
    import flax
    import optax
    import orbax.checkpoint

    device = jax.devices()[0]
    return {
        "git_commit": git_commit(),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "orbax_checkpoint": orbax.checkpoint.__version__,
        },
        "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
        "host": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "system": platform.platform(),
            "malloc_keeps_freed_memory": keep_freed_memory(),
        },
    }


# --------------------------------------------------------------------------------- the workdir's run
def check_workdir(workdir: str | Path, config: TrainConfig, overwrite: bool = False) -> dict[str, Any] | None:
    """The saved config.json of the run in `workdir` (None if there is none); raises WorkdirError when that
    run's config differs from `config` and `overwrite` is not set. Reads only."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} is a file, not a folder; use another --workdir")
    if overwrite and workdir.is_dir():
        check_overwrite(workdir)
    config_file = workdir / "config.json"
    if overwrite or not config_file.exists():
        return None
    why = not_a_run(config_file, strict=False)
    if why and "not readable" not in why:
        raise WorkdirError(f"workdir {workdir} is not a cnn run ({why}); use another --workdir")
    try:
        saved = json.loads(config_file.read_text())
        differences = config_differences(saved["config"], config)
    except (ValueError, KeyError, TypeError) as e:  # not JSON, not UTF-8 (UnicodeDecodeError), no config
        raise WorkdirError(
            f"{config_file} is unreadable ({type(e).__name__}: {str(e)[:120]}); restore it from a backup "
            "(the checkpoints beside it are kept), or use another --workdir"
        ) from None
    if differences:
        raise WorkdirError(
            f"workdir {workdir} holds a run with a different config ({'; '.join(differences)}). "
            "Use another --workdir, or pass --overwrite to delete that run and start fresh."
        )
    trained = _epochs_trained(workdir)
    if trained > config.epochs:
        raise WorkdirError(
            f"epochs: the run in {workdir} has already trained {trained} epochs; give --epochs {trained} or "
            "more to resume it (its results stay those of the epochs it ran), or use another --workdir"
        )
    return saved


def _epochs_trained(workdir: Path) -> int:
    """The last epoch in the run's history.json (0 when there is none or it is unreadable)."""
    try:
        history = json.loads((workdir / "history.json").read_text())
        return max((int(h["epoch"]) for h in history), default=0)
    except (OSError, ValueError, KeyError, TypeError):
        return 0


# What a run writes inside its subfolders: orbax's epoch folders (and their temporary names while saving),
# tensorboardX's event files (and the hparams subfolder), checkpoints moved aside as damaged.
RUN_SUBFOLDERS = {
    "checkpoints": lambda name: name.isdigit() or ".orbax-checkpoint-tmp" in name,
    "events": lambda name: name.startswith("events.out.tfevents.") or name == HPARAMS,
    "damaged": lambda name: name.startswith("epoch-"),
}


def foreign_entries(workdir: Path) -> list[str]:
    """What `workdir` holds that a run did not write (sorted paths relative to it), looking inside the
    subfolders a run writes too: a `checkpoints/model_final.pt` is not a run's."""
    found = []
    for p in workdir.iterdir():
        if p.name not in RUN_ENTRIES and not p.name.endswith(RUN_SUFFIXES):
            found.append(p.name)
        elif p.name in RUN_SUBFOLDERS:
            if not p.is_dir() or p.is_symlink():
                found.append(p.name)
                continue
            ours = RUN_SUBFOLDERS[p.name]
            found += [f"{p.name}/{q.name}" for q in p.iterdir() if not ours(q.name)]
            if p.name == "events" and (p / HPARAMS).is_dir():
                found += [f"events/{HPARAMS}/{q.name}" for q in (p / HPARAMS).iterdir() if not ours(q.name)]
    return sorted(found)


def not_a_run(config_file: Path, strict: bool = True) -> str | None:
    """Why `config_file` is not a config.json this project wrote (None: it is one): a JSON object with the
    run's settings (`config`: known fields, a model) and, `strict` (before deleting anything), the
    machine's metadata (`versions`)."""
    try:
        saved = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"its config.json is not readable JSON ({type(e).__name__}: {str(e)[:80]})"
    fields = {f.name for f in dataclasses.fields(TrainConfig)} | set(REMOVED_FIELDS)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        return "its config.json has no run config (no 'config' object)"
    unknown = sorted(set(saved["config"]) - fields)
    versions = isinstance(saved.get("versions"), dict) or not strict
    if unknown or "model" not in saved["config"] or not versions:
        what = f"unknown fields {', '.join(unknown[:3])}" if unknown else "no model or no versions"
        return f"its config.json is not one cnn writes ({what})"
    return None


def check_overwrite(workdir: Path) -> None:
    """Refuses `--overwrite` of a folder that is not a run this project wrote (decided by its config.json's
    content, not by file names) or that holds anything a run did not write, naming what was found."""
    entries = [p.name for p in workdir.iterdir() if not p.name.startswith(LOCK_FILE)]
    config_file = workdir / "config.json"
    why = not_a_run(config_file) if config_file.is_file() else "it has no config.json" if entries else None
    if why:
        raise WorkdirError(
            f"--overwrite: {workdir} is not a cnn run ({why}; it holds {_listed(entries)}); nothing was "
            "deleted. Use another --workdir."
        )
    foreign = foreign_entries(workdir)
    if foreign:
        raise WorkdirError(
            f"--overwrite: {workdir} is not only a cnn run: it also holds {_listed(foreign)}; nothing was "
            "deleted. Use another --workdir, or move those out first."
        )


def _listed(names: list[str]) -> str:
    """The first five of `names` (sorted), and how many more."""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(sorted(names)[:5]) + more


def clear_run(workdir: Path) -> None:
    """Deletes what a run wrote in `workdir` (`--overwrite`), refusing, with nothing deleted, when the
    folder holds anything else (a thesis, a checkout): only files `cnn` recognises as its own go."""
    check_overwrite(workdir)
    for p in workdir.iterdir():
        if p.name.startswith(LOCK_FILE):  # held by this process
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def prepare_workdir(workdir: Path, config: TrainConfig, spec: DataSpec, overwrite: bool = False) -> None:
    """Creates `workdir`, or checks that the run already in it has the same config and data (before any
    work). config.json records the config, the data description `spec` and the machine's metadata. With
    `overwrite`, what an earlier run wrote there is deleted (and only that; see `clear_run`)."""
    config_file = workdir / "config.json"
    make_workdir(workdir)
    if not is_primary():  # process 0 of a multi-process run checks and writes; the others only train
        return
    saved = check_workdir(workdir, config, overwrite)
    if saved is not None:
        check_data(workdir, saved, spec)
    if overwrite:
        clear_run(workdir)
    if saved is not None:
        # The metadata stays that of the run's start; only a resumable field (epochs) may change.
        write_json(config_file, {**saved, "config": config.to_dict(), "data": spec.to_dict()})
        return
    write_json(config_file, {"config": config.to_dict(), "data": spec.to_dict(), **run_metadata()})


def check_data(workdir: Path, saved: dict[str, Any], spec: DataSpec) -> None:
    """Refuses to resume the run in `workdir` on data that differs from the data it trained on (its size,
    classes, shape or fingerprint), naming what changed."""
    differences = saved_spec(saved).differences(spec)
    if differences:
        raise WorkdirError(
            f"workdir {workdir} holds a run trained on other data ({'; '.join(differences)}). Use another "
            "--workdir, or pass --overwrite to delete that run and start fresh."
        )


def saved_spec(saved: dict[str, Any]) -> DataSpec:
    """The data description in a config.json: its `data`, or for runs saved before it was recorded, the
    image shape and classes their config held (else Fashion-MNIST's)."""
    config = saved.get("config", {})
    if "data" in saved and "image_shape" in saved["data"]:
        return DataSpec.from_dict(saved["data"])
    if config.get("input_shape"):
        classes = config.get("num_classes") or 10
        return DataSpec(config.get("dataset", "?"), config["input_shape"], [str(i) for i in range(classes)])
    return FASHION_MNIST


def read_run(workdir: str | Path) -> tuple[TrainConfig, DataSpec, dict[str, Any]]:
    """The config of the run in `workdir`, its data description and its whole config.json;
    RunNotFoundError naming the file when there is none or it cannot be read."""
    config_file = Path(workdir) / "config.json"
    if not config_file.is_file():
        raise RunNotFoundError(
            f"workdir {workdir} holds no run (no config.json); train one first: "
            f"python -m cnn train --workdir {workdir}"
        )
    try:
        saved = json.loads(config_file.read_text())
        return TrainConfig(**without_removed(saved["config"])), saved_spec(saved), saved
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, ConfigError) as e:
        raise RunNotFoundError(
            f"{config_file} is unreadable ({type(e).__name__}: {e}); the checkpoints beside it are kept. "
            "Restore the file from a backup, or train again in another --workdir."
        ) from None


# Fields added after runs were saved, with the value those runs used: an older config.json still matches.
ADDED_FIELDS = {
    "monitor": "val_loss",
    "optimizer": "adam",
    "dataset": "fashion_mnist",
    "image_size": None,
    "channels": None,
    "test_fraction": 0.2,
    "skip_bad_images": False,
    "head": "softmax",
    "data_placement": "auto",
    "epoch_loop": "auto",
    "precision": "float32",
    "tensorboard": True,
    "momentum": 0.9,
    "nesterov": False,
    "warmup_epochs": 0,
    "decay_epochs": 10,
    "decay_rate": 0.1,
    "plateau_patience": 2,
    "grad_clip": 0.0,
    "label_smoothing": 0.0,
    "ema_decay": 0.0,
    "crop_padding": 0,
    "flip": False,
    "erasing": 0.0,
    "mixup": None,
    "cutmix": None,
    "randaugment": 0,
    "randaugment_magnitude": 9.0,
    "randaugment_ops": "all",
}


# Fields older runs saved that are no longer settings: the image shape and classes are the data's, recorded
# in config.json's `data` (see `cnn.data.spec.DataSpec`).
REMOVED_FIELDS = ("input_shape", "num_classes")


# Fields that may change when a run resumes in the same workdir: training longer is still the same run;
# `steps_per_call`, `epoch_loop` and `data_placement` only change how the same steps are run, and
# `tensorboard` only what is logged.
RESUMABLE_FIELDS = frozenset({"epochs", "steps_per_call", "epoch_loop", "data_placement", "tensorboard"})


def config_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """Fields (other than the resumable ones) whose saved value differs from `config`, as 'field: a -> b'."""
    current = json.loads(json.dumps(config.to_dict()))  # tuples as JSON lists, as saved
    saved = {**ADDED_FIELDS, **without_removed(saved)}
    # A learning-rate schedule spans `epochs`, so only a constant one lets a resumed run train longer.
    resumable = RESUMABLE_FIELDS - ({"epochs"} if config.schedule != "constant" else set())
    return [
        f"{key}: {saved.get(key)!r} -> {current[key]!r}"
        for key in current
        if key not in resumable and saved.get(key) != current[key]
    ]


def without_removed(fields: dict[str, Any]) -> dict[str, Any]:
    """Saved config fields less those that are no longer settings (`REMOVED_FIELDS`)."""
    return {k: v for k, v in fields.items() if k not in REMOVED_FIELDS}
