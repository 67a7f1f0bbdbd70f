"""A sweep's results as tables: one row per variant (its size, cost and mean ± std of the results over the
seeds that finished), written as CSV, JSON and Markdown; rows of earlier sweeps into the same folder kept."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnn.config import TrainConfig
from cnn.data.spec import DataSpec
from cnn.engine.state import model_for
from cnn.models.summary import layer_rows, totals
from cnn.runs.disk import read_json
from cnn.runs.folder import write_json
from cnn.runs.outputs import write_atomic
from cnn.studies.grid import Variant

# How to go on from a run's results.json or history.json that cannot be read.
RETRAIN = "move that run's folder away (or restore the file from a backup) and run the same command again"


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
            read_json(p, RETRAIN)
            for s in seeds
            if (p := out / variant.name / f"seed{s}" / "results.json").is_file()
        ]
        histories = [
            read_json(p, RETRAIN)
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
                "error": recorded_error(error),
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


def recorded_error(path: Path) -> str:
    """The failure a variant's `error.json` records ('' without one; a garbled one still counts)."""
    if not path.is_file():
        return ""
    try:
        return str(json.loads(path.read_text())["error"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path} is unreadable ({type(e).__name__})"


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
    """results.csv, results.json and results.md in `out`, each written whole and renamed into place (a
    signal or a full disk meanwhile leaves the earlier tables, never half of one)."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "results.csv", table.getvalue())
    # JSON has no NaN: a variant without finished seeds gets null there (the CSV and Markdown say nan)
    write_json(out / "results.json", [{k: _null_nan(v) for k, v in r.items()} for r in rows])
    write_atomic(out / "results.md", markdown_table(rows) + "\n")
