"""`python -m cnn summary | viz | predict | evaluate | export`: looking at a network, and using a finished
run (see `cnn.analysis`, `cnn.inference`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cnn.cli.flags import data_location_flags, make_parent
from cnn.config import TrainConfig, json_object


def add(sub: Any) -> None:
    add_summary(sub)
    add_viz(sub)
    add_predict(sub)
    add_evaluate(sub)
    add_export(sub)


def models_help() -> str:
    from cnn.models.registry import MODELS

    return f"one of {', '.join(MODELS)} (default: {TrainConfig.model})"


def add_summary(sub: Any) -> None:
    summary = sub.add_parser("summary", help="print a model's layers, output shapes and parameter counts")
    summary.add_argument("--model", default=TrainConfig.model)
    summary.late_help["model"] = models_help
    summary.add_argument("--model-args", type=json_object, default={}, metavar="JSON")
    summary.add_argument(
        "--input-shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("H", "W", "C"),
        help="image shape (default: Fashion-MNIST's 28 28 1, or a famous network's smallest)",
    )
    summary.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="also draw the diagram")
    summary.add_argument("--force", action="store_true", help="replace the --plot file if it exists")
    summary.set_defaults(run=run_summary)


def run_summary(args: argparse.Namespace) -> None:
    from cnn.analysis.plots import plot_architecture
    from cnn.models.registry import build_model, check_model_name, default_input_shape
    from cnn.models.summary import format_summary, layer_rows
    from cnn.runs.outputs import atomic_path, check_output

    check_model_name(args.model)
    if args.plot:  # before any work: a run's own file, or a file there without --force, is refused
        check_output(args.plot, args.force, "--plot")
    shape = tuple(args.input_shape) if args.input_shape else default_input_shape(args.model)
    rows = layer_rows(build_model(args.model, input_shape=shape, **args.model_args), shape)
    if args.plot:  # before the table: a path that cannot be written fails first
        make_parent(args.plot)
    print(format_summary(rows, title=args.model))
    if args.plot:
        with atomic_path(args.plot) as temporary:
            plot_architecture(rows, temporary, title=args.model)
        print(f"Diagram written to {args.plot}")


def add_viz(sub: Any) -> None:
    viz = sub.add_parser(
        "viz", help="every picture of a trained run (its own data set), from its best checkpoint"
    )
    viz.add_argument("--workdir", type=Path, required=True)
    viz.add_argument("--out", type=Path, default=None, help="default: WORKDIR/viz")
    viz.add_argument("--force", action="store_true", help="write into an --out folder that holds files")
    viz.add_argument(
        "--cam",
        default=None,
        metavar="LAYER",
        help="also explain test images: Grad-CAM of LAYER (a layer with feature maps, e.g. conv2) and "
        "SmoothGrad, into OUT/cam_LAYER.png",
    )
    data_location_flags(viz)
    viz.set_defaults(run=run_viz)


def run_viz(args: argparse.Namespace) -> None:
    from cnn.analysis.viz import write_all
    from cnn.data.load import load_dataset
    from cnn.runs.outputs import check_output
    from cnn.runs.results import restore_run

    if args.out is not None:  # the run folder, or its checkpoints/, is no place for pictures
        check_output(args.out, folder=True)
        check_empty_folder(args.out, args.force)
    config, _, _ = restore_run(args.workdir)  # a missing run fails here, before the data is loaded
    splits = load_dataset(config, data_dir=args.data_dir, source_dir=args.source_dir)
    for path in write_all(args.workdir, splits, args.out, cam=args.cam):
        print(path)


def check_empty_folder(out: Path, force: bool) -> None:
    """A chosen --out folder that already holds files is refused without --force (its files could be
    someone's own with the names the pictures take); the default folder in the run is the command's own."""
    if not force and out.is_dir() and any(out.iterdir()):
        raise ValueError(
            f"--out: {out} already holds files, which this command may write over; pass --force to write "
            "there anyway, or choose a new or empty folder"
        )


def add_predict(sub: Any) -> None:
    predict = sub.add_parser("predict", help="classify image files or folders with a finished run")
    predict.add_argument("--workdir", type=Path, required=True)
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--top", type=int, default=3, metavar="K", help="classes per image (default 3)")
    form = predict.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print JSON instead of a table")
    form.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    predict.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> None:
    from cnn.inference.predict import classify_files, format_csv, format_table

    result = classify_files(args.workdir, args.inputs, args.top)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_csv(result) if args.csv else format_table(result), end="" if args.csv else "\n")


def add_evaluate(sub: Any) -> None:
    evaluate = sub.add_parser(
        "evaluate", help="a finished run's report: per-class F1, top-k, calibration, into WORKDIR/eval"
    )
    evaluate.add_argument("--workdir", type=Path, required=True)
    evaluate.add_argument("--split", default="test", choices=("test", "val", "train"))
    evaluate.add_argument(
        "--dataset", default=None, help="another data set with the run's classes (default: the run's own)"
    )
    evaluate.add_argument("--flip", action="store_true", help="test-time augmentation: average with mirrors")
    evaluate.add_argument("--out", type=Path, default=None, help="default: WORKDIR/eval")
    evaluate.add_argument("--force", action="store_true", help="write into an --out folder that holds files")
    data_location_flags(evaluate)
    evaluate.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> None:
    from cnn.analysis.report import evaluate_run
    from cnn.runs.outputs import check_output

    if args.out is not None:  # the run folder, or its checkpoints/, is no place for the report
        check_output(args.out, folder=True)
        check_empty_folder(args.out, args.force)
    report, paths = evaluate_run(
        args.workdir, args.split, args.dataset, args.flip, args.out, args.data_dir, args.source_dir
    )
    top = ", ".join(f"top-{k} {v:.4f}" for k, v in report["top_k_accuracy"].items())
    print(
        f"{report['split']}: {report['examples']:,} examples, accuracy {report['accuracy']:.4f} ({top}), "
        f"macro F1 {report['macro']['f1']:.4f}, ECE {report['ece']:.4f}"
    )
    for path in paths:
        print(path)


def add_export(sub: Any) -> None:
    export = sub.add_parser("export", help="a finished run's network as a jax.export (StableHLO) file")
    export.add_argument("--workdir", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="e.g. model.jaxexport")
    export.add_argument(
        "--onnx", action="store_true", help="also FILE with the suffix .onnx (needs the onnx extra: jax2onnx)"
    )
    export.add_argument("--force", action="store_true", help="replace FILE (and its .json) if they exist")
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from cnn.inference.export import export_run

    for path in export_run(args.workdir, args.out, onnx=args.onnx, force=args.force):
        print(path)
