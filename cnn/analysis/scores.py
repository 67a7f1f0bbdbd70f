"""How good a trained run is, beyond loss and accuracy (`python -m cnn evaluate`): top-k accuracy, per-class
precision / recall / F1 with their macro and weighted means, the confusion matrix, calibration (expected
calibration error and a reliability diagram) and the most confident mistakes, optionally with test-time
flip averaging; written to `WORKDIR/eval/` as JSON, Markdown and PNG.

    report = classification_report(labels, probabilities, class_names)
    report["per_class"][0]["f1"], report["macro"]["f1"], report["ece"]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from cnn.engine.evaluation import predict
from cnn.engine.state import TrainState

CALIBRATION_BINS = 15  # the usual choice since Guo et al. 2017


def flip_averaged(state: TrainState, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Test-time augmentation: the mean of the class probabilities of the images and of their mirror
    images (flipped left to right)."""
    return (predict(state, images, batch_size) + predict(state, images[:, :, ::-1], batch_size)) / 2


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of every class from a confusion matrix `[true, predicted]` (a
    class never predicted has precision 0; never present, recall 0; as scikit-learn's zero_division=0)."""
    tp = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def calibration(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> tuple[float, list[dict[str, float]]]:
    """The expected calibration error (the gap between confidence and accuracy, averaged over equal-width
    confidence bins weighted by their share of examples) and the bins: {low, high, count, confidence,
    accuracy} (empty bins have count 0 and no means)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (low, high]
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(inside.sum())}
        if inside.any():
            row |= {"confidence": float(confidence[inside].mean()), "accuracy": float(correct[inside].mean())}
            ece += inside.mean() * abs(row["confidence"] - row["accuracy"])
        table.append(row)
    return float(ece), table


def classification_report(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], top_k: Sequence[int] = (1, 3)
) -> dict[str, Any]:
    """Accuracy, top-k accuracy, per-class precision / recall / F1 / support, their macro and weighted
    means, the confusion matrix `[true][predicted]`, the log loss, the expected calibration error and the
    reliability bins of `probabilities` `(N, classes)` against integer `labels`."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, np.float64)
    classes = len(class_names)
    guesses = probabilities.argmax(axis=1)
    confusion = np.bincount(classes * labels + guesses, minlength=classes**2).reshape(classes, classes)
    scores = per_class_scores(confusion)
    ranked = np.argsort(-probabilities, axis=1, kind="stable")
    weights = scores["support"] / max(scores["support"].sum(), 1)
    ece, bins = calibration(labels, probabilities)
    picked = probabilities[np.arange(len(labels)), labels]
    return {
        "examples": int(len(labels)),
        "accuracy": float((guesses == labels).mean()),
        "top_k_accuracy": {
            str(k): float((ranked[:, :k] == labels[:, None]).any(axis=1).mean())
            for k in top_k
            if k <= classes
        },
        "log_loss": float(-np.log(np.clip(picked, 1e-15, 1)).mean()),
        "per_class": [
            {"class": name, **{k: float(v[i]) for k, v in scores.items() if k != "support"}}
            | {"support": int(scores["support"][i])}
            for i, name in enumerate(class_names)
        ],
        "macro": {k: float(scores[k].mean()) for k in ("precision", "recall", "f1")},
        "weighted": {k: float((scores[k] * weights).sum()) for k in ("precision", "recall", "f1")},
        "confusion": confusion.tolist(),
        "ece": ece,
        "calibration_bins": bins,
    }


def plot_reliability(report: dict[str, Any], path: str | Path | None = None, title: str = "") -> plt.Figure:
    """The reliability diagram: accuracy against confidence per bin (a calibrated model follows the
    diagonal), the gap shaded, the share of examples per bin below."""
    bins = [b for b in report["calibration_bins"] if b["count"]]
    width = report["calibration_bins"][0]["high"] - report["calibration_bins"][0]["low"]
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    mids = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(mids, [b["accuracy"] for b in bins], width=width, edgecolor="black", label="accuracy")
    ax.bar(
        mids,
        [b["confidence"] - b["accuracy"] for b in bins],
        bottom=[b["accuracy"] for b in bins],
        width=width,
        color="red",
        alpha=0.3,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", label="calibrated")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title} ECE {report['ece']:.4f}".strip())
    ax.legend(loc="upper left")
    counts.bar(mids, [b["count"] / report["examples"] for b in bins], width=width, edgecolor="black")
    counts.set(xlabel="confidence", ylabel="share")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def report_markdown(report: dict[str, Any], title: str) -> str:
    """The report as Markdown: the headline numbers, the per-class table and the confusion matrix."""
    top = ", ".join(f"top-{k} {v:.4f}" for k, v in report["top_k_accuracy"].items())
    lines = [
        f"# {title}",
        "",
        f"{report['examples']:,} examples: accuracy {report['accuracy']:.4f} ({top}), log loss "
        f"{report['log_loss']:.4f}, expected calibration error {report['ece']:.4f} "
        f"({len(report['calibration_bins'])} bins).",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *(
            f"| {c['class']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
            for c in report["per_class"]
        ),
        *(
            f"| **{avg}** | {report[avg]['precision']:.4f} | {report[avg]['recall']:.4f} | "
            f"{report[avg]['f1']:.4f} | {report['examples']} |"
            for avg in ("macro", "weighted")
        ),
        "",
        "Confusion matrix (rows: true class, columns: predicted):",
        "",
        "| | " + " | ".join(str(i) for i in range(len(report["per_class"]))) + " |",
        "|---" * (len(report["per_class"]) + 1) + "|",
        *(
            f"| {i} {c['class']} | " + " | ".join(map(str, row)) + " |"
            for i, (c, row) in enumerate(zip(report["per_class"], report["confusion"], strict=True))
        ),
    ]
    return "\n".join(lines) + "\n"
