"""The strong recipe, knob by knob: the recipe `strong` (`cnn/recipes/strong.json`) against itself minus
one knob at a time (the optimizer back to Adam, no warm-up, no weight decay, no clipping, no label
smoothing, no moving average, no crop, no flip, no erasing, no cutmix), and the plain recipe it started
from, each over several seeds (mean ± std of the test accuracy)."""

from cnn.cli.main import run_script
from cnn.config import recipe
from cnn.studies.grid import Variant
from cnn.studies.scripts import experiment_parser, run_experiment

STRONG = recipe("strong")
ABLATIONS = {  # name: the fields that take one knob away
    "minus-sgd": {"optimizer": "adam", "lr": 1e-3, "nesterov": False},
    "minus-warmup": {"schedule": "cosine", "warmup_epochs": 0},
    "minus-weight-decay": {"weight_decay": 0.0},
    "minus-clipping": {"grad_clip": 0.0},
    "minus-smoothing": {"label_smoothing": 0.0},
    "minus-ema": {"ema_decay": 0.0},
    "minus-crop": {"crop_padding": 0},
    "minus-flip": {"flip": False},
    "minus-erasing": {"erasing": 0.0},
    "minus-cutmix": {"cutmix": None},
}
PLAIN = {  # the vgg_bn recipe before these knobs (cnn/recipes/vgg_bn.json), the model's shifts and flips on
    "model_args": {"augment": True}, "optimizer": "adam", "lr": 1e-3, "nesterov": False, "schedule": "cosine",
    "warmup_epochs": 0, "weight_decay": 1e-4, "grad_clip": 0.0, "label_smoothing": 0.0, "ema_decay": 0.0,
    "crop_padding": 0, "flip": False, "erasing": 0.0, "cutmix": None,
}  # fmt: skip


def variants() -> list[Variant]:
    return [Variant("strong", {}), *(Variant(n, f) for n, f in ABLATIONS.items()), Variant("plain", PLAIN)]


def base_for(epochs: int) -> dict:
    """The strong recipe for a run of `epochs`: a shorter run warms up for the same share of its epochs
    (5 of 60), at least one and fewer than all."""
    base = {k: v for k, v in STRONG.items() if k not in ("epochs", "limit_train")}
    share = round(STRONG["warmup_epochs"] * epochs / STRONG["epochs"])
    return {**base, "warmup_epochs": min(max(share, 1), epochs - 1)}


def main(argv: list[str] | None = None) -> None:
    parser = experiment_parser(__doc__, epochs=STRONG["epochs"], seeds=3)
    names = [v.name for v in variants()]
    parser.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        choices=names,
        help=f"only these variants (default: all; one of {', '.join(names)}); a later run into the same "
        "--out adds the others to its tables and skips the runs already finished",
    )
    args = parser.parse_args(argv)
    chosen = [v for v in variants() if args.variants is None or v.name in args.variants]
    run_experiment("recipe", chosen, args, base=base_for(args.epochs))


if __name__ == "__main__":
    run_script(main)
