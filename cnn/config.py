"""The typed training configuration and the run metadata written beside every result."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration field holds a value outside what it allows."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run; the defaults reproduce the sources' recipe for the seed CNN."""

    model: str = "seed_cnn"
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 2
    seed: int = 0
    limit_train: int | None = None
    val_fraction: float = 0.2
    split_seed: int = 42
    eval_batch_size: int = 1000
    schedule: str = "constant"
    weight_decay: float = 0.0
    steps_per_call: int = 10
    monitor: str = "val_loss"

    def __post_init__(self):
        from cnn.models import build_model  # the registry imports flax; keep config import light

        _check(self, "model_args", isinstance(self.model_args, dict), "a dict of the model's fields")
        try:
            build_model(self.model, **self.model_args)  # names, arguments and shapes, before any work
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check(self, "epochs", self.epochs >= 1, "an integer >= 1")
        _check(self, "batch_size", self.batch_size >= 1, "an integer >= 1")
        _check(self, "lr", self.lr > 0, "a number > 0")
        _check(self, "patience", self.patience >= 0, "an integer >= 0")
        _check(
            self, "limit_train", self.limit_train is None or self.limit_train >= 1, "None or an integer >= 1"
        )
        _check(self, "val_fraction", 0 < self.val_fraction < 1, "a number in (0, 1)")
        _check(self, "eval_batch_size", self.eval_batch_size >= 1, "an integer >= 1")
        _check(self, "schedule", self.schedule in SCHEDULES, f"one of {SCHEDULES}")
        _check(self, "weight_decay", self.weight_decay >= 0, "a number >= 0")
        _check(self, "steps_per_call", self.steps_per_call >= 1, "an integer >= 1")
        _check(self, "monitor", self.monitor in MONITORS, f"one of {MONITORS}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SCHEDULES = ("constant", "cosine")
# What early stopping and the best checkpoint follow: the lowest validation loss (Keras' default) or the
# highest validation accuracy (better for a long cosine schedule, where the loss rises while accuracy climbs).
MONITORS = ("val_loss", "val_accuracy")
# Fields added after runs were saved, with the value those runs used: an older config.json still matches.
ADDED_FIELDS = {"monitor": "val_loss"}
# Fields that may change when a run resumes in the same workdir: training longer is still the same run, and
# `steps_per_call` only changes how many steps one compiled call runs.
RESUMABLE_FIELDS = frozenset({"epochs", "steps_per_call"})


def _check(config: TrainConfig, field: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: got {getattr(config, field)!r}, expected {allowed}")


def config_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """Fields (other than the resumable ones) whose saved value differs from `config`, as 'field: a -> b'."""
    current, saved = config.to_dict(), {**ADDED_FIELDS, **saved}
    # A learning-rate schedule spans `epochs`, so only a constant one lets a resumed run train longer.
    resumable = RESUMABLE_FIELDS - ({"epochs"} if config.schedule != "constant" else set())
    return [
        f"{key}: {saved.get(key)!r} -> {current[key]!r}"
        for key in current
        if key not in resumable and saved.get(key) != current[key]
    ]


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


def run_metadata() -> dict[str, Any]:
    """Library versions, commit and device, for `config.json`."""
    import flax
    import jax
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
        "host": {"cpu": _cpu_model(), "cores": os.cpu_count(), "system": platform.platform()},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path: Path, payload: Any) -> None:
    """Writes JSON atomically (temporary file, then rename), so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
