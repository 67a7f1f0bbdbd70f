"""A sweep's points: variants (a name and the config fields they override) from a grid of values (their
product or their zip), each resolved into a checked TrainConfig before any work."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cnn.config import TrainConfig
from cnn.errors import SweepError
from cnn.train import check_run_config

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


@dataclass(frozen=True)
class Variant:
    """One point of a sweep: a name and the TrainConfig fields it overrides (`model_args` as a dict)."""

    name: str
    overrides: dict[str, Any]


def set_field(fields: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`fields` with `path` ('lr' or 'model_args.dropout_rate') set to `value`."""
    if path.startswith("model_args."):
        return {**fields, "model_args": {**fields.get("model_args", {}), path.split(".", 1)[1]: value}}
    return {**fields, path: value}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def check_field(path: str, value: Any) -> None:
    name = path.split(".", 1)[0]
    if name not in FIELDS:
        raise SweepError(
            f"{path}: unknown field; TrainConfig fields are {sorted(FIELDS)} "
            "(model fields as model_args.NAME)"
        )
    if path.startswith("model_args."):
        return  # checked when the model is built
    default = FIELDS[name].default
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(type(default))
    if default == "auto":  # steps_per_call: an integer, or auto (the value is checked by TrainConfig)
        expected = (int, str)
    if expected and (
        not isinstance(value, expected) or (isinstance(value, bool) and type(default) is not bool)
    ):
        got, expected = type(value).__name__, type(default).__name__
        raise SweepError(f"{path}: {value!r} is {_article(got)} {got}, expected {expected}")


def grid_variants(grid: dict[str, Sequence[Any]], mode: str = "product") -> list[Variant]:
    """Variants from lists of values per field: their product (every combination) or their zip."""
    if mode not in ("product", "zip"):
        raise SweepError(f"mode: expected 'product' or 'zip', got {mode!r}")
    for path, values in grid.items():
        if not isinstance(values, list | tuple) or not values:
            raise SweepError(f"{path}: expected a non-empty list of values, got {values!r}")
        for value in values:
            check_field(path, value)
    if mode == "zip" and len({len(v) for v in grid.values()}) > 1:
        raise SweepError(
            f"zip: every list must have the same length, got { {k: len(v) for k, v in grid.items()} }"
        )
    combos = itertools.product(*grid.values()) if mode == "product" else zip(*grid.values(), strict=True)
    variants = []
    for combo in combos:
        overrides: dict[str, Any] = {}
        for path, value in zip(grid, combo, strict=True):
            overrides = set_field(overrides, path, value)
        name = ",".join(
            f"{path}={json.dumps(value, separators=(',', ':'))}"
            for path, value in zip(grid, combo, strict=True)
        )
        variants.append(Variant(_safe(name), overrides))
    return variants


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in name)[:120]


def resolve(base: dict[str, Any], variants: Sequence[Variant]) -> list[TrainConfig]:
    """Every variant's TrainConfig, built and validated before any training; errors name the variant."""
    for path, value in base.items():
        check_field(path, value)
    if len({v.name for v in variants}) != len(variants):
        raise SweepError("variants: two variants share a name")
    configs = []
    for variant in variants:
        fields = dict(base)
        for path, value in variant.overrides.items():
            if path != "model_args":
                check_field(path, value)
            fields = (
                set_field(fields, path, value)
                if path != "model_args"
                else {**fields, "model_args": {**fields.get("model_args", {}), **value}}
            )
        try:
            config = TrainConfig(**fields)
            check_run_config(config)
        except (ValueError, TypeError) as e:
            raise SweepError(f"variant {variant.name}: {e}") from None
        configs.append(config)
    return configs
