"""The sources' transfer learning, as they wrote it: ImageNet InceptionV3 at 75×75×3, frozen, cut at `mixed7`,
then Flatten → Dense 64 ReLU → Dense 10, trained with RMSprop(5e-4) on Fashion-MNIST resized to colour.

With the published weights file in Keras' cache (see the README) it is the sources' run; without, it says so
loudly and runs the same pipeline on a randomly initialised backbone (`--train-backbone` trains the whole
network from scratch instead, practical on a GPU).
"""

import json
from pathlib import Path

from cnn import fit, load_dataset
from cnn.cli.main import run_script
from cnn.engine.state import model_for
from cnn.models.summary import format_summary, layer_rows
from cnn.studies.scripts import experiment_parser
from cnn.studies.transfer import (
    SOURCES_DATA,
    format_counts,
    imagenet_backbone,
    parameter_counts,
    sources_config,
    transfer_state,
)


def main(argv: list[str] | None = None) -> None:
    parser = experiment_parser(__doc__, epochs=5, seeds=1)
    parser.add_argument("--weights", default="imagenet", help="imagenet, a Keras weight file, or none")
    parser.add_argument("--train-backbone", action="store_true", help="train every layer, from scratch")
    args = parser.parse_args(argv)
    config = sources_config(epochs=args.epochs, limit_train=args.limit_train, patience=args.epochs)
    shape = SOURCES_DATA.image_shape
    print(format_summary(layer_rows(model_for(config, SOURCES_DATA), shape), "the sources' transfer model"))
    backbone = imagenet_backbone("inception_v3", shape, None if args.weights == "none" else args.weights)
    freeze = "none" if args.train_backbone else "backbone"
    state, labels = transfer_state(config, SOURCES_DATA, backbone, freeze=freeze)
    counts = parameter_counts(state.params, labels, state.batch_stats)
    print(format_counts(counts))  # the sources print 9,418,346 / 443,082 / 8,975,264
    out = args.out or Path(__file__).resolve().parent / "results" / "inception_fashion"
    kind = "imagenet" if backbone is not None else ("scratch" if args.train_backbone else "random-frozen")
    splits = load_dataset(config, data_dir=args.data_dir, source_dir=args.source_dir)
    results = fit(config, splits, out / kind, init_state=state)
    summary = {
        "backbone": kind,
        **counts,
        **{
            k: results[k]
            for k in ("test_accuracy", "val_accuracy", "epochs_run", "train_seconds", "images_per_second")
        },
    }
    (out / f"{kind}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    (out / "results.md").write_text(results_table(out) + "\n")


def results_table(out: Path) -> str:
    """Every backbone run so far (one JSON file each), as one table."""
    lines = [
        "| backbone | trainable | non-trainable | test accuracy | val accuracy | epochs | train time "
        "| images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        lines.append(
            f"| {r['backbone']} | {r['trainable']:,} | {r['non_trainable']:,} | {r['test_accuracy']:.4f} | "
            f"{r['val_accuracy']:.4f} | {r['epochs_run']} | {r['train_seconds']:.0f} s | "
            f"{r['images_per_second']:,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
