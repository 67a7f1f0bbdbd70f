"""Sweeps: a base config, variants (a grid or a zip of overrides, or named ones), several seeds.

The seeds of one variant, and the variants that differ only in learning rate or weight decay, can train
together in one compiled program (`cnn.train.fit_together`: `jax.vmap` over parameters, optimizer state and
random keys), each run with its own shuffling, dropout and early stopping, as sequential runs of `fit`
would do. `--together auto` measures which is fastest on this machine (`cnn.together`: vmapped with XLA's
grouped convolutions, vmapped with the convolutions as batched matrix products, or one after another) and
says which it chose. Every (variant, seed) run gets an ordinary run directory (config.json, history.json,
results.json, curves.png, a checkpoint of its best epoch), so `restore_run` and `python -m cnn viz` work
on it. Re-running a sweep skips finished runs and resumes unfinished ones; a variant that fails is
recorded in its `error.json` and the sweep goes on.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnn.config import DATA_FIELDS, TrainConfig, config_differences, field_default
from cnn.data import DataSpec, Splits
from cnn.datasets import load_dataset
from cnn.members import TOGETHER_FIELDS
from cnn.models import check_model_args, model_for
from cnn.plots import plot_sweep
from cnn.run_folder import saved_spec, write_json
from cnn.summary import layer_rows, totals
from cnn.together import CONV, MODES, choose
from cnn.train import Interrupted, fit, fit_together

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


class SweepError(ValueError):
    """A sweep definition that cannot run: an unknown field, an empty list, a value of the wrong type."""


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
            check_model_args(config)
        except (ValueError, TypeError) as e:
            raise SweepError(f"variant {variant.name}: {e}") from None
        configs.append(config)
    return configs


# ------------------------------------------------------------------------------------------ the sweep
TOGETHER = ("auto", *MODES)


def seeds_mode(together: str, config: TrainConfig, spec: DataSpec, runs: int) -> str:
    """How `runs` runs of `config` train: one of `cnn.together.MODES`; 'auto' measures which is fastest here
    (remembered per machine and network, see `cnn.together.choose`) and says so."""
    if together not in TOGETHER:
        raise SweepError(f"together: expected one of {TOGETHER}, got {together!r}")
    if together != "auto":
        return together
    if runs == 1:
        return "sequential"
    mode, rates = choose(config, spec, runs)
    measured = ", ".join(f"{m} {r:,.0f}" for m, r in sorted(rates.items(), key=lambda kv: -kv[1]))
    print(f"{runs} runs of {config.model} at batch {config.batch_size}: {mode} (measured img/s: {measured})")
    return mode


def together_groups(variants: Sequence[Variant], configs: Sequence[TrainConfig]) -> list[list[int]]:
    """The variants (their indices) that can train as one program: equal but for `TOGETHER_FIELDS`."""
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        rest = {k: v for k, v in config.to_dict().items() if k not in TOGETHER_FIELDS}
        groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(i)
    return list(groups.values())


def run_sweep(
    base: dict[str, Any],
    variants: Sequence[Variant],
    seeds: Sequence[int],
    splits: Splits,
    out: str | Path,
    together: str = "auto",
) -> list[dict[str, Any]]:
    """Runs every variant for every seed (skipping finished runs) and writes the sweep's tables and plots.

    `together`: how runs train, see `seeds_mode`: vmapped, the seeds of a variant and the variants that
    differ only in learning rate or weight decay are one program."""
    out = Path(out)
    configs = resolve(base, variants)  # every error before any training
    if not seeds:
        raise SweepError("seeds: expected at least one seed")
    for variant, config in zip(variants, configs, strict=True):
        try:
            model_for(config, splits.spec)  # the shapes, now that the data is known
        except ValueError as e:
            raise SweepError(f"variant {variant.name}: {e}") from None
    finished = {  # every run folder checked before any training: a sweep reuses only its own runs
        (i, s): reusable(out / v.name / f"seed{s}", dataclasses.replace(c, seed=s), splits.spec)
        for i, (v, c) in enumerate(zip(variants, configs, strict=True))
        for s in seeds
    }
    out.mkdir(parents=True, exist_ok=True)
    for group in together_groups(variants, configs):
        runs = [
            (variants[i], dataclasses.replace(configs[i], seed=s), out / variants[i].name / f"seed{s}")
            for i in group
            for s in seeds
            if not finished[i, s]
        ]
        for i in group:
            if all(finished[i, s] for s in seeds):
                print(f"[{variants[i].name}] finished before: skipped")
        if runs:
            mode = seeds_mode(together, runs[0][1], splits.spec, len(runs))
            _train_group(runs, splits, mode)
    rows = collect(out, variants, configs, seeds, splits.spec)
    rows += earlier_rows(out, {r["variant"] for r in rows})
    write_tables(rows, out)
    plot_sweep(rows, out)
    return rows


class RunsFailed(RuntimeError):
    """A sweep, experiment or tune study ran to its end, but some of its runs failed (each recorded in its
    `error.json`); the others are kept and reported. The CLI exits with `EXIT_RUNS_FAILED`."""


def check_finished(rows: Sequence[dict[str, Any]], variants: Sequence[Variant]) -> None:
    """Raises RunsFailed naming the variants (of `variants`, this sweep's) with a failed or missing run."""
    names = {v.name for v in variants}
    failed = [r for r in rows if r["variant"] in names and (r["error"] or r["seeds_finished"] < r["seeds"])]
    if failed:
        raise RunsFailed(
            f"{len(failed)} of {len(names)} variant(s) failed: "
            + "; ".join(f"{r['variant']} ({r['error'] or 'unfinished'})"[:200] for r in failed)
            + ". The other variants are kept and in the tables; each failure is in its variant's error.json"
        )


def reusable(workdir: Path, config: TrainConfig, spec: DataSpec) -> bool:
    """Whether `workdir` holds a finished run of exactly `config` on the data `spec` describes (the sweep
    skips it); False for an empty folder or a run to resume (fewer epochs). Raises SweepError, naming what
    differs, when the folder holds a run of another config or data: its results would be reported as this
    sweep's."""
    config_file = workdir / "config.json"
    if not config_file.is_file():
        return False
    try:
        saved = json.loads(config_file.read_text())
        differences = config_differences(saved["config"], config) + saved_spec(saved).differences(spec)
        epochs = int(saved["config"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SweepError(f"{workdir}: its config.json is unreadable ({e}); give another --out") from None
    if epochs > config.epochs:
        differences.append(f"epochs: {epochs} -> {config.epochs}")
    if differences:
        raise SweepError(
            f"{workdir} holds a run of another config or data ({'; '.join(differences)}); a sweep reuses a "
            "run only when both equal its own: give another --out (or move that folder away)"
        )
    return epochs == config.epochs and (workdir / "results.json").is_file()


def _train_group(runs: list[tuple[Variant, TrainConfig, Path]], splits: Splits, mode: str) -> None:
    """The runs of one group, as `mode`; a failure is recorded in its variant's `error.json` (a group of
    several variants that fails trains each variant on its own, so that only the failing one is marked; the
    sweep goes on; a signal stops it, every run's epoch saved)."""
    names = list(dict.fromkeys(v.name for v, _, _ in runs))
    folders = {v.name: w.parent for v, _, w in runs}
    for name in names:
        (folders[name] / "error.json").unlink(missing_ok=True)
    print(f"[{', '.join(names)}] training {len(runs)} run(s) ({mode})", flush=True)
    try:
        if mode == "sequential":
            for _, config, workdir in runs:
                fit(config, splits, workdir)
        else:
            fit_together([c for _, c, _ in runs], splits, [w for _, _, w in runs], conv=CONV[mode])
    except Interrupted:
        raise
    except Exception as e:  # one failed variant must not end the sweep (a signal still does)
        signum = getattr(e, "stop_requested", None)
        if len(names) > 1 and signum is None:  # which failed: each alone (a finished epoch is resumed)
            print(f"[{', '.join(names)}] FAILED together ({type(e).__name__}); each variant on its own")
            for name in names:
                _train_group([r for r in runs if r[0].name == name], splits, mode)
            return
        for name in names:
            folders[name].mkdir(parents=True, exist_ok=True)
            write_json(
                folders[name] / "error.json",
                {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()},
            )
        print(f"[{', '.join(names)}] FAILED: {type(e).__name__}: {e} (recorded in their error.json)")
        if signum is not None:  # asked to stop while the run failed: stop, do not start the next one
            out = next(iter(folders.values())).parent
            raise Interrupted(signum, 0, out, failed=", ".join(names)) from e


def earlier_rows(out: Path, current: set[str]) -> list[dict[str, Any]]:
    """The rows of `out/results.json` written by earlier sweeps into the same folder for other variants
    (whose run folders are still there), so that a second sweep adds to the tables instead of replacing
    them. JSON's nulls come back as NaN."""
    try:
        rows = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(rows, list):
        return []
    return [
        {k: math.nan if v is None else v for k, v in r.items()}
        for r in rows
        if isinstance(r, dict) and r.get("variant") not in current and (out / str(r.get("variant"))).is_dir()
    ]


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def markdown_mean_std(rows: dict[str, list[float]], metric: str) -> str:
    """A Markdown table of `metric` as mean ± std over seeds, one row per name."""
    lines = [f"| | {metric}: mean ± std | seeds |", "|---|---|---|"]
    for name, values in rows.items():
        mean, std = _mean_std(values)
        lines.append(f"| {name} | {mean:.3f} ± {std:.3f} | {len(values)} |")
    return "\n".join(lines)


def _train_seconds(results: list[dict[str, Any]]) -> float:
    """A variant's training time: vmapped seeds share one clock; sequential ones add up."""
    if not results:
        return math.nan
    return (
        results[0]["train_seconds"]
        if "trained_with_seeds" in results[0]
        else sum(r["train_seconds"] for r in results)
    )


def final_feature_map(config: TrainConfig, spec: DataSpec) -> str:
    """The last spatial output of the network, e.g. '7×7×64' ('none' for a network without one)."""
    rows = layer_rows(model_for(config, spec), spec.image_shape)
    spatial = [r.output_shape[1:] for r in rows if len(r.output_shape) == 4]
    return "×".join(map(str, spatial[-1])) if spatial else "none"


def collect(
    out: Path,
    variants: Sequence[Variant],
    configs: Sequence[TrainConfig],
    seeds: Sequence[int],
    spec: DataSpec,
) -> list[dict[str, Any]]:
    """One row per variant: size, cost and mean ± std of the results over the seeds that finished."""
    rows = []
    for variant, config in zip(variants, configs, strict=True):
        results = [
            json.loads(p.read_text())
            for s in seeds
            if (p := out / variant.name / f"seed{s}" / "results.json").is_file()
        ]
        histories = [
            json.loads(p.read_text())
            for s in seeds
            if (p := out / variant.name / f"seed{s}" / "history.json").is_file()
        ]
        model_totals = totals(layer_rows(model_for(config, spec), spec.image_shape))
        test, val = (_mean_std([r[k] for r in results]) for k in ("test_accuracy", "val_accuracy"))
        error = out / variant.name / "error.json"
        rows.append(
            {
                "variant": variant.name,
                "model": config.model,
                "params": model_totals.trainable,
                "macs": model_totals.macs,
                "feature_map": final_feature_map(config, spec),
                "test_accuracy_mean": test[0],
                "test_accuracy_std": test[1],
                "val_accuracy_mean": val[0],
                "val_accuracy_std": val[1],
                "epochs_mean": float(np.mean([r["epochs_run"] for r in results])) if results else math.nan,
                "train_seconds": _train_seconds(results),
                "images_per_second": (
                    results[0].get("group_images_per_second", results[0]["images_per_second"])
                    if results
                    else math.nan
                ),
                "seeds_finished": len(results),
                "seeds": len(seeds),
                "error": json.loads(error.read_text())["error"] if error.is_file() else "",
                "val_curve": np.mean(
                    [
                        [h["val_accuracy"] for h in hist]
                        for hist in histories
                        if len(hist) == min(map(len, histories))
                    ],
                    axis=0,
                ).tolist()
                if histories
                else [],
            }
        )
    return rows


COLUMNS = [
    "variant",
    "params",
    "macs",
    "feature_map",
    "test_accuracy_mean",
    "test_accuracy_std",
    "val_accuracy_mean",
    "val_accuracy_std",
    "epochs_mean",
    "train_seconds",
    "images_per_second",
    "seeds_finished",
    "seeds",
    "error",
]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as Markdown: accuracy as mean ± std over seeds."""
    lines = [
        "| variant | params | MACs | final map | test accuracy | val accuracy | epochs | train s (all seeds) "
        "| img/s | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = f"{r['seeds_finished']}/{r['seeds']}" + (" (failed)" if r["error"] else "")
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['macs'] / 1e6:.2f} M | {r['feature_map']} | "
            f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f} | "
            f"{r['val_accuracy_mean']:.4f} ± {r['val_accuracy_std']:.4f} | {r['epochs_mean']:.1f} | "
            f"{r['train_seconds']:.0f} | {r['images_per_second']:,.0f} | {status} |"
        )
    return "\n".join(lines)


def _null_nan(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    """results.csv, results.json and results.md in `out`."""
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    # JSON has no NaN: a variant without finished seeds gets null there (the CSV and Markdown say nan)
    write_json(out / "results.json", [{k: _null_nan(v) for k, v in r.items()} for r in rows])
    (out / "results.md").write_text(markdown_table(rows) + "\n")


def data_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The data-set fields of parsed flags (see `cnn.config.DATA_FIELDS`), as JSON-able config fields."""
    fields = {name: getattr(args, name, field_default(name)) for name in DATA_FIELDS}
    fields["image_size"] = fields["image_size"] and list(fields["image_size"])
    return fields


def sweep_data(base: dict[str, Any], data_dir: Any = None, source_dir: Any = None) -> Splits:
    """The data set of a sweep's `base` fields (loaded once per process: every variant and seed shares
    it), each variant's model checked against its description before any training."""
    return load_dataset(TrainConfig(**base), data_dir=data_dir, source_dir=source_dir)
