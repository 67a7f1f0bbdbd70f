"""Translation equivariance, measured, and rotation invariance learned with depth-wise pooling.

Part 1 (the trained `plain` network, seed 0): shift a test image by k pixels and its first layer's feature
maps shift by k, exactly, away from the border; after 2×2 max pooling only even shifts carry over. Scaling
and rotating the input do not commute with the convolution in the same way.

Part 2: the sources' suggested use of depth-wise pooling. Networks trained on rotated copies of the
training images (a random angle per image and epoch), with and without a depth-wise pooling layer that
keeps the strongest (or the mean) of groups of four feature maps, against the plain network trained on
upright images; test accuracy on the test set rotated by 0..180 degrees, mean ± std over seeds.
"""

import json

import jax
import matplotlib.pyplot as plt
import numpy as np

from cnn.cli.main import run_script
from cnn.data.transforms import shift
from cnn.engine.evaluation import predict
from cnn.engine.state import model_variables
from cnn.models.preprocessing import rotate
from cnn.runs.results import restore_run
from cnn.studies.grid import Variant
from cnn.studies.scripts import block, experiment_parser, mean_and_std, run_experiment, seed_curves

ANGLES = (0, 15, 30, 45, 90, 135, 180)
SHIFTS = (1, 2, 3, 4)


def variants() -> list[Variant]:
    def net(name: str, blocks: list, rotated: bool) -> Variant:
        return Variant(
            name, {"model": "convnet", "model_args": {"blocks": blocks, "rotate": 180.0 * rotated}}
        )

    plain = [block(32), block(64)]
    return [
        net("plain", plain, rotated=False),
        net("plain_rotated", plain, rotated=True),
        net("extra_conv_rotated", [block(32), block(32, downsample="none"), block(64)], rotated=True),
        net(
            "depthwise_max_rotated",
            [block(32), block(128, downsample="depthwise_max", pool=4), block(64)],
            True,
        ),
        net(
            "depthwise_avg_rotated",
            [block(32), block(128, downsample="depthwise_avg", pool=4), block(64)],
            True,
        ),
    ]


def feature_maps(state, images: np.ndarray, layer: str) -> np.ndarray:
    """The `(N, H, W, C)` output of top-level `layer` for a batch of images."""
    _, captured = state.apply_fn(
        model_variables(state), images, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    return np.asarray(captured["intermediates"][layer]["__call__"][-1])


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: 0 when the maps agree exactly."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def equivariance(workdir, images: np.ndarray) -> dict[str, dict[str, float]]:
    """How far F(T(x)) is from T(F(x)) for the first convolution (shifts, a 1.25× zoom, rotations) and for
    the max pooling after it (shifts; the pooled map moves by k / 2, so odd k has no whole-pixel answer and
    is compared with the nearest, k // 2)."""
    _, state, _ = restore_run(workdir)
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images
    inner = slice(6, -6)  # away from the border that shifts, zooms and 'same' padding touch
    conv = feature_maps(state, x, "block1_conv")
    rows = {}
    for k in SHIFTS:
        rows[f"shift {k}"] = relative_error(
            feature_maps(state, shift(x, k, k), "block1_conv")[:, inner, inner],
            shift(conv, k, k)[:, inner, inner],
        )

    def zoom(a: np.ndarray) -> np.ndarray:  # 1.25× about the centre, cropped back to 28×28
        return np.asarray(jax.image.resize(a, (len(a), 35, 35, a.shape[-1]), "linear"))[:, 3:31, 3:31]

    rows["zoom 1.25"] = relative_error(
        feature_maps(state, zoom(x), "block1_conv")[:, inner, inner], zoom(conv)[:, inner, inner]
    )
    for angle in (90, 30):
        turned = feature_maps(state, np.asarray(rotate(x, angle)), "block1_conv")
        rows[f"rotate {angle}°"] = relative_error(
            turned[:, inner, inner], np.asarray(rotate(conv, angle))[:, inner, inner]
        )
    pooled = feature_maps(state, x, "block1_pool")
    half = slice(3, -3)
    pool_rows = {
        f"shift {k}": relative_error(
            feature_maps(state, shift(x, k, k), "block1_pool")[:, half, half],
            shift(pooled, k // 2, k // 2)[:, half, half],
        )
        for k in SHIFTS
    }
    return {"block1_conv": rows, "block1_pool": pool_rows}


def rotated_accuracy(workdir, test) -> list[float]:
    _, state, _ = restore_run(workdir)
    x = test.images.astype(np.float32) / 255.0 if test.images.dtype == np.uint8 else test.images
    return [float((predict(state, np.asarray(rotate(x, a))).argmax(1) == test.labels).mean()) for a in ANGLES]


def main(argv: list[str] | None = None) -> None:
    args = experiment_parser(__doc__, epochs=10, seeds=3, limit_train=12000).parse_args(argv)
    chosen = variants()
    _, splits, out = run_experiment("equivariance", chosen, args)

    probe = equivariance(out / "plain" / "seed0", splits.test.images[:256])
    lines = [
        "| layer | " + " | ".join(probe["block1_conv"]) + " |",
        "|---|" + "---|" * len(probe["block1_conv"]),
    ]
    lines += [
        f"| {layer} | "
        + " | ".join(f"{rows[c]:.2e}" if c in rows else "—" for c in probe["block1_conv"])
        + " |"
        for layer, rows in probe.items()
    ]
    (out / "equivariance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    curves = seed_curves(out, chosen, args.seeds, lambda run: rotated_accuracy(run, splits.test))
    table = [
        "| network | " + " | ".join(f"{a}°" for a in ANGLES) + " | mean |",
        "|---|" + "---|" * (len(ANGLES) + 1),
    ]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for name, acc in curves.items():
        if not len(acc):
            continue
        mean, std = mean_and_std(acc)
        ax.errorbar(ANGLES, mean, yerr=std, fmt="o-", capsize=3, label=name)
        cells = " | ".join(f"{m:.4f} ± {s:.4f}" for m, s in zip(mean, std, strict=True))
        overall, overall_std = mean_and_std(acc.mean(1))
        table.append(f"| {name} | {cells} | {overall:.4f} ± {overall_std:.4f} |")
    ax.set(xlabel="rotation of the test images (degrees)", ylabel="test accuracy (mean ± std over seeds)")
    ax.set_title("Accuracy on rotated test images")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out / "rotated_accuracy.png", dpi=100)
    (out / "rotated_accuracy.md").write_text("\n".join(table) + "\n")
    (out / "equivariance.json").write_text(
        json.dumps(
            {"equivariance": probe, "rotated_accuracy": {k: v.tolist() for k, v in curves.items()}}, indent=2
        )
    )
    print("\n".join(table))


if __name__ == "__main__":
    run_script(main)
