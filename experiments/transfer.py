"""Few-shot transfer: a backbone pretrained on five classes learns unseen classes from 30 or 50 images.

Compared on the same few images and the same test images: frozen backbone + new head, fine-tuned (head and
the backbone's top block at a tenth of the learning rate), and the same network trained from scratch.
"""

import json

import matplotlib.pyplot as plt
import numpy as np

from cnn import TrainConfig, fit
from cnn.cli.main import run_script
from cnn.data.fashion_mnist import load_fashion_mnist
from cnn.studies.scripts import experiment_parser
from cnn.studies.transfer import METHODS, class_subset, few_shot, load_backbone, train_few_shot

# The backbones: the recipe each is pretrained with, and the layer it is cut at by default.
BACKBONES = {
    "seed_cnn": ({}, "pool2"),
    "vgg_bn": (
        {"batch_size": 128, "schedule": "cosine", "weight_decay": 1e-4, "monitor": "val_accuracy"},
        "global_avg",
    ),
}
PRETRAIN_CLASSES = [0, 2, 5, 8, 9]  # T-shirt/top, Pullover, Sandal, Bag, Ankle boot
TASKS = {  # name: (unseen classes, training images per class)
    "coat-vs-shirt (15+15)": ([4, 6], 15),
    "5-way unseen classes (10 each)": ([1, 3, 4, 6, 7], 10),  # Trouser, Dress, Coat, Shirt, Sneaker
    "5-way unseen classes (3 each)": ([1, 3, 4, 6, 7], 3),
}


def slug(task: str) -> str:
    """A folder name for a task, distinct for every task."""
    return "".join(c if c.isalnum() else "-" for c in task).strip("-")


def main(argv: list[str] | None = None) -> None:
    parser = experiment_parser(__doc__, epochs=50, seeds=5)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument(
        "--backbone", default="seed_cnn", choices=sorted(BACKBONES), help="the pretrained model"
    )
    parser.add_argument(
        "--cut", default=None, help="the layer the backbone ends at (default: pool2 | global_avg)"
    )
    args = parser.parse_args(argv)
    recipe, default_cut = BACKBONES[args.backbone]
    args.cut = args.cut or default_cut
    patience = {"patience": args.pretrain_epochs} if "schedule" in recipe else {}
    out = args.out or __import__("pathlib").Path(__file__).resolve().parent / "results" / "transfer"
    splits = load_fashion_mnist(data_dir=args.data_dir, source_dir=args.source_dir)
    source = class_subset(splits.train, PRETRAIN_CLASSES)
    if args.limit_train:
        source = type(source)(source.images[: args.limit_train], source.labels[: args.limit_train])
    pretrain = type(splits)(
        source, class_subset(splits.val, PRETRAIN_CLASSES), class_subset(splits.test, PRETRAIN_CLASSES)
    )
    config = TrainConfig(model=args.backbone, epochs=args.pretrain_epochs, **recipe, **patience)
    results = fit(config, pretrain, out / "pretrain")
    print(f"backbone pretrained on classes {PRETRAIN_CLASSES}: test accuracy {results['test_accuracy']:.4f}")
    backbone = load_backbone(out / "pretrain")
    table = {}
    for task, (classes, per_class) in TASKS.items():
        test = class_subset(splits.test, classes)
        for method in METHODS:
            accuracies = []
            for seed in range(args.seeds):
                train = few_shot(splits.train, classes, per_class, seed)
                workdir = out / slug(task) / method / f"seed{seed}"
                r = train_few_shot(
                    backbone,
                    train,
                    test,
                    method,
                    workdir,
                    base=args.backbone,
                    cut=args.cut,
                    epochs=args.epochs,
                    seed=seed,
                )
                accuracies.append(r["test_accuracy"])
            table[(task, method)] = (accuracies, r["trainable"], r["non_trainable"])
    write(table, out, args)


def write(table, out, args) -> None:
    lines = [
        "| task | method | test accuracy (mean ± std) | trainable params | non-trainable params |",
        "|---|---|---|---|---|",
    ]
    for (task, method), (acc, trainable, frozen) in table.items():
        lines.append(
            f"| {task} | {method} | {np.mean(acc):.4f} ± {np.std(acc, ddof=1):.4f} | {trainable:,} | "
            f"{frozen:,} |"
        )
    (out / "results.md").write_text(
        "\n".join(lines) + f"\n\nBackbone: `{args.backbone}` up to `{args.cut}`, pretrained for "
        f"{args.pretrain_epochs} epochs; {args.seeds} seeds, {args.epochs} epochs.\n"
    )
    (out / "results.json").write_text(
        json.dumps(
            [
                {"task": t, "method": m, "accuracies": a, "trainable": tr, "non_trainable": fr}
                for (t, m), (a, tr, fr) in table.items()
            ],
            indent=2,
        )
    )
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    tasks = list(TASKS)
    for k, method in enumerate(METHODS):
        acc = [table[(t, method)][0] for t in tasks]
        ax.bar(
            np.arange(len(tasks)) + 0.27 * (k - 1),
            [np.mean(a) for a in acc],
            0.27,
            yerr=[np.std(a, ddof=1) for a in acc],
            capsize=3,
            label=method,
        )
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set(ylabel="test accuracy (mean ± std over seeds)", ylim=(0, 1), title="Few-shot transfer")
    ax.legend()
    fig.savefig(out / "transfer.png", dpi=100)
    print("\n".join(lines))


if __name__ == "__main__":
    run_script(main)
