"""Does max pooling make a network robust to small shifts? Test accuracy on images moved 0..4 pixels."""

import json

import matplotlib.pyplot as plt
import numpy as np

from cnn.cli.main import run_script
from cnn.data.transforms import shift
from cnn.engine.evaluation import predict
from cnn.runs.results import restore_run
from cnn.studies.grid import Variant
from cnn.studies.scripts import block, experiment_parser, mean_and_std, run_experiment, seed_curves

SHIFTS = range(5)
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))  # down, up, right, left


def variants() -> list[Variant]:
    def net(downsample: str) -> Variant:
        blocks = [block(32, downsample=downsample), block(64, downsample=downsample)]
        return Variant(downsample, {"model": "convnet", "model_args": {"blocks": blocks}})

    return [net(d) for d in ("max", "avg", "strided_conv", "none")]


def shifted_accuracy(workdir, test) -> list[float]:
    """Test accuracy at each shift, averaged over the four directions (shift 0 is one image set, evaluated
    once)."""
    _, state, _ = restore_run(workdir)

    def accuracy(dy: int, dx: int) -> float:
        return float((predict(state, shift(test.images, dy, dx)).argmax(1) == test.labels).mean())

    return [
        accuracy(0, 0) if k == 0 else float(np.mean([accuracy(k * dy, k * dx) for dy, dx in DIRECTIONS]))
        for k in SHIFTS
    ]


def main(argv: list[str] | None = None) -> None:
    args = experiment_parser(__doc__).parse_args(argv)
    chosen = variants()
    rows, splits, out = run_experiment("shift_robustness", chosen, args)
    curves = seed_curves(out, chosen, args.seeds, lambda run: shifted_accuracy(run, splits.test))
    lines = [
        "| pooling | " + " | ".join(f"shift {k}" for k in SHIFTS) + " | drop 0→4 |",
        "|---|" + "---|" * (len(SHIFTS) + 1),
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for name, acc in curves.items():
        if not len(acc):
            continue
        mean, std = mean_and_std(acc)
        ax.errorbar(list(SHIFTS), mean, yerr=std, fmt="o-", capsize=3, label=name)
        cells = " | ".join(f"{m:.4f} ± {s:.4f}" for m, s in zip(mean, std, strict=True))
        lines.append(f"| {name} | {cells} | {mean[0] - mean[-1]:.4f} |")
    ax.set(
        xlabel="shift (pixels, mean of 4 directions)",
        ylabel="test accuracy (mean ± std over seeds)",
        title="Accuracy on shifted test images",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out / "shift_accuracy.png", dpi=100)
    (out / "shift_accuracy.md").write_text("\n".join(lines) + "\n")
    (out / "shift_accuracy.json").write_text(json.dumps({k: v.tolist() for k, v in curves.items()}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    run_script(main)
