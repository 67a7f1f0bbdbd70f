"""A trained run on a user's own image files (`python -m cnn predict`): each file decoded, converted and
resized as the run's data set was (from the data description stored with the run), its top-k classes with
probabilities, as a table, JSON or CSV.

    result = classify_files("runs/faces", ["photos/"], top=2)
    print(format_table(result))

A folder is walked (its image files, sorted); a file that cannot be read as an image is named on stderr and
skipped, and the result lists it under `skipped`; no readable image at all is an error.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnn.data.image_folder import EXTENSIONS, decode, walk_files
from cnn.data.spec import DataSpec
from cnn.data.transforms import resize, to_channels
from cnn.engine.evaluation import check_batch, predict
from cnn.errors import DataError
from cnn.runs.results import finished_run


def image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """The files to classify: each file given, and the image files (`EXTENSIONS`) under each folder given,
    sorted; DataError naming a path that does not exist or a folder without images."""
    if not inputs:
        raise DataError("predict: give one or more image files or folders")
    paths = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = [p for p in walk_files(given) if p.suffix.lower() in EXTENSIONS]
            if not found:
                raise DataError(f"predict: folder {given} holds no image files ({', '.join(EXTENSIONS)})")
            paths += found
        elif given.is_file():
            paths.append(given)
        else:
            raise DataError(f"predict: {given} does not exist; give image files or folders")
    return paths


def read_images(paths: Sequence[Path], spec: DataSpec) -> tuple[np.ndarray, list[Path], list[dict[str, str]]]:
    """The images of `paths` as the run's data set made its images: decoded to uint8 (every bit depth
    scaled), resized to the run's image size with the same filter and converted to its channels. Returns
    the images `(N, H, W, C)`, the files they came from, and the skipped files with the reason."""
    (h, w, c), images, kept, skipped = spec.image_shape, [], [], []
    for path in paths:
        try:
            image = decode(path)
        except DataError as e:
            reason = str(e).removeprefix(f"dataset: {path} ").split("; fix or delete it")[0]
            skipped.append({"file": str(path), "reason": reason})
            continue
        images.append(to_channels(resize(image[None], (h, w)), c)[0])
        kept.append(path)
    if not images:
        first = skipped[0]
        raise DataError(
            f"predict: none of the {len(paths)} file(s) is a readable image "
            f"({first['file']} {first['reason']})"
        )
    for skip in skipped:
        print(f"Skipping {skip['file']}: {skip['reason']}", file=sys.stderr)
    return np.stack(images), kept, skipped


def top_classes(
    probabilities: np.ndarray, class_names: Sequence[str], top: int
) -> list[list[dict[str, Any]]]:
    """The `top` most probable classes of each row, most probable first, as {class, index, probability}."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
    return [
        [{"class": class_names[i], "index": int(i), "probability": float(p[i])} for i in row]
        for p, row in zip(probabilities, order, strict=True)
    ]


def classify_files(
    workdir: str | Path, inputs: Sequence[str | Path], top: int = 3, batch_size: int = 256
) -> dict[str, Any]:
    """The top-`top` classes of every image file in `inputs` (files or folders) by the finished run in
    `workdir` (its best epoch). Returns {run, epoch, image_shape, predictions: [{file, top: [...]}],
    skipped: [{file, reason}]}."""
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top: expected an integer >= 1, got {top!r}")
    batch_size = check_batch(batch_size)
    paths = image_paths(inputs)  # before the run is restored: a wrong path costs nothing
    _, spec, state, meta = finished_run(workdir)
    images, kept, skipped = read_images(paths, spec)
    probabilities = predict(state, images, batch_size)
    ranked = top_classes(probabilities, spec.class_names, min(top, probabilities.shape[1]))
    return {
        "run": str(workdir),
        "epoch": meta.get("epoch"),
        "image_shape": list(spec.image_shape),
        "predictions": [{"file": str(p), "top": t} for p, t in zip(kept, ranked, strict=True)],
        "skipped": skipped,
    }


def format_table(result: dict[str, Any]) -> str:
    """The predictions as an aligned text table: a file per line, its classes with probabilities."""
    rows = [
        (p["file"], "   ".join(f"{t['class']} {t['probability']:.1%}" for t in p["top"]))
        for p in result["predictions"]
    ]
    width = max(len("file"), *(len(f) for f, _ in rows))
    k = len(result["predictions"][0]["top"])
    lines = [f"{'file':<{width}}  top {k}", *(f"{f:<{width}}  {classes}" for f, classes in rows)]
    return "\n".join(lines)


def format_csv(result: dict[str, Any]) -> str:
    """The predictions as CSV: file, then rank-numbered class and probability columns."""
    k = len(result["predictions"][0]["top"])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", *(f"{kind}_{i}" for i in range(1, k + 1) for kind in ("class", "probability"))])
    for p in result["predictions"]:
        writer.writerow([p["file"], *(v for t in p["top"] for v in (t["class"], f"{t['probability']:.6f}"))])
    return out.getvalue()
