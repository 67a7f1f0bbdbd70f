"""A search space of config fields (`lr=loguniform(1e-4,1e-2)`, `batch_size=choice(32,64,128)`, ...), parsed
and checked at its corners before any work, and the TrainConfig of one trial."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnn.config import TrainConfig
from cnn.errors import TuneError
from cnn.studies.grid import check_field, resolve, set_field
from cnn.train import check_run_config

KINDS = ("uniform", "loguniform", "int", "logint", "choice")


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
        check_run_config(config)
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
