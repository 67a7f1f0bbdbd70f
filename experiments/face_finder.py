"""The sources' face finder on real photos: is there a face? 15 face and 15 non-face photos of `lfw_faces`
(resized to 75×75×3) train a small head ending in one sigmoid unit (threshold 0.5) on

- `inception`: the frozen InceptionV3 cut at `mixed7` (ImageNet weights where the file is present, else a
  randomly initialised backbone, said loudly),
- `own`: the seed CNN pretrained by `cnn` on Fashion-MNIST (resized the same way), frozen, cut at `pool2`,
- `scratch`: the seed CNN with the same head, trained from scratch on the 30 photos,

each over several seeds (a new draw of the 30 photos each), tested on the 40 photos of the test split.
"""

import json
from pathlib import Path

import numpy as np

from cnn import Split, TrainConfig, fit, load_dataset, predict, restore_run
from cnn.analysis.viz import plot_predictions
from cnn.cli.main import run_script
from cnn.studies.scripts import experiment_parser
from cnn.studies.tables import markdown_mean_std
from cnn.studies.transfer import few_shot, imagenet_backbone, load_backbone, train_few_shot

SHAPE = (75, 75, 3)
HEAD = {"head": "sigmoid", "head_units": [64]}
METHODS = {  # name: (base, cut, base_args, method)
    "inception": ("inception_v3", "mixed7", {"include_top": False}, "frozen"),
    "own": ("seed_cnn", "pool2", None, "frozen"),
    "scratch": ("seed_cnn", "pool2", None, "scratch"),
}


def main(argv: list[str] | None = None) -> None:
    parser = experiment_parser(__doc__, epochs=30, seeds=5)
    parser.add_argument("--weights", default="imagenet", help="imagenet, a Keras weight file, or none")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).resolve().parent / "results" / "face_finder"
    faces = load_dataset(TrainConfig(dataset="lfw_faces", image_size=SHAPE[:2], channels=3), args.data_dir)
    pool = Split(
        *(
            np.concatenate([a, b])
            for a, b in zip(
                (faces.train.images, faces.train.labels), (faces.val.images, faces.val.labels), strict=True
            )
        )
    )
    pretrain = TrainConfig(
        image_size=SHAPE[:2],
        channels=3,
        epochs=args.pretrain_epochs,
        limit_train=args.limit_train or 12_000,
    )
    fit(pretrain, load_dataset(pretrain, args.data_dir, args.source_dir), out / "pretrain-seed_cnn")
    backbones = {
        "inception": imagenet_backbone(
            "inception_v3", SHAPE, None if args.weights == "none" else args.weights
        ),
        "own": load_backbone(out / "pretrain-seed_cnn"),
        "scratch": None,
    }
    rows = {}
    for name, (base, cut, base_args, method) in METHODS.items():
        results = []
        for seed in range(args.seeds):
            train = few_shot(pool, [0, 1], 15, seed)
            workdir = out / name / f"seed{seed}"
            results.append(
                train_few_shot(
                    backbones[name],
                    train,
                    faces.test,
                    method,
                    workdir,
                    base,
                    cut,
                    args.epochs,
                    seed,
                    lr=5e-4,
                    optimizer="rmsprop",
                    base_args=base_args,
                    **HEAD,
                )
            )
        rows[name] = [r["test_accuracy"] for r in results]
        _, state, _ = restore_run(out / name / "seed0")
        probabilities = predict(state, faces.test.images)[:, 1]
        print(f"{name}, seed 0: P(not_face) per test photo:", " ".join(f"{p:.2f}" for p in probabilities))
        plot_predictions(
            faces.test.images,
            faces.test.labels,
            predict(state, faces.test.images),
            n=40,
            path=out / f"{name}_test_photos.png",
            class_names=faces.class_names,
        )
    table = markdown_mean_std(rows, "test accuracy (40 photos)")
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {"backbone_weights": "imagenet" if backbones["inception"] is not None else "random", **rows},
            indent=2,
        )
        + "\n"
    )
    print(table)


if __name__ == "__main__":
    run_script(main)
