"""`python -m cnn evaluate`: a finished run's best epoch on a split of its data set (or of another data set
with the same classes), its report (`cnn.analysis.scores`) written to `WORKDIR/eval/` as JSON, Markdown and
pictures (reliability diagram, confusion matrix, most confident mistakes)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from cnn.analysis.scores import classification_report, flip_averaged, plot_reliability, report_markdown
from cnn.analysis.viz import plot_confusion, plot_mistakes
from cnn.data.load import load_dataset
from cnn.engine.evaluation import check_batch, predict
from cnn.errors import DataError
from cnn.runs.folder import write_json
from cnn.runs.results import finished_run

SPLITS = ("test", "val", "train")


def evaluate_run(
    workdir: str | Path,
    split: str = "test",
    dataset: str | None = None,
    flip: bool = False,
    out: str | Path | None = None,
    data_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
    batch_size: int = 1000,
) -> tuple[dict[str, Any], list[Path]]:
    """The report of the finished run in `workdir` on `split` of its data set (or of `dataset`, loaded at
    the run's image shape, which must have the run's classes), with test-time flip averaging when `flip`;
    written to `out` (default `WORKDIR/eval`) as SPLIT.json, SPLIT.md and SPLIT_*.png (SPLIT_flip_* with
    `flip`). Returns the report and the files written."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    batch_size = check_batch(batch_size)
    workdir = Path(workdir)
    config, spec, state, meta = finished_run(workdir)  # before any data is read
    if dataset is not None:
        h, w, c = spec.image_shape
        config = dataclasses.replace(config, dataset=dataset, image_size=(h, w), channels=c)
    splits = load_dataset(config, data_dir=data_dir, source_dir=source_dir)
    if splits.class_names != spec.class_names:
        raise DataError(
            f"dataset: {config.dataset} has the classes {list(splits.class_names)}, the run in {workdir} "
            f"tells apart {list(spec.class_names)}; evaluate it on data with the same classes"
        )
    if dataset is None and (changed := spec.differences(splits.spec)):
        print(f"Warning: the run's data set changed since it trained ({'; '.join(changed)})")
    data = getattr(splits, split)
    probabilities = (flip_averaged if flip else predict)(state, data.images, batch_size)
    report = {
        "run": str(workdir),
        "epoch": meta.get("epoch"),
        "dataset": config.dataset,
        "split": split,
        "flip_averaged": flip,
        **classification_report(data.labels, probabilities, spec.class_names),
    }
    return report, write_report(report, data, probabilities, Path(out or workdir / "eval"), spec.class_names)


def write_report(report: dict[str, Any], data: Any, probabilities: Any, out: Path, names: Any) -> list[Path]:
    """The report's files in `out` (created): JSON, Markdown, reliability diagram, confusion matrix and the
    most confident mistakes."""
    out.mkdir(parents=True, exist_ok=True)
    stem = report["split"] + ("_flip" if report["flip_averaged"] else "")
    title = f"{report['run']}, {report['split']} split of {report['dataset']}" + (
        " (flip-averaged)" if report["flip_averaged"] else ""
    )
    paths = [out / f"{stem}{suffix}" for suffix in (".json", ".md", "_reliability.png")]
    paths += [out / f"{stem}_confusion.png", out / f"{stem}_mistakes.png"]
    write_json(paths[0], report)
    paths[1].write_text(report_markdown(report, title))
    plot_reliability(report, paths[2], title=report["split"])
    plot_confusion(data.labels, probabilities.argmax(1), paths[3], class_names=names)
    plot_mistakes(data.images, data.labels, probabilities, path=paths[4], class_names=names)
    return paths
