"""An image folder as a data set: `PATH/CLASS/*.png|jpg|jpeg|bmp|gif` (the layout of Keras'
`image_dataset_from_directory` and tfds' ImageFolder), optionally under `train/`, `val/`, `test/`. Every
file is decoded and checked with Pillow before tfds writes anything, then prepared once per (folder
contents, size, channels) and reused."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from cnn.data.prepared import LocalDatasetInfo, download_and_prepare, keep_arrays, read_arrays
from cnn.data.transforms import resize, to_channels
from cnn.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLITS = ("train", "val", "test")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def layout(root: Path) -> dict[str, Path]:
    """The split folders of `root`: `train/` (with `val/`, `test/` where present), else `root` as the one
    folder of class sub-folders (split later by fractions)."""
    if not root.is_dir():
        raise DataError(f"dataset: {root} is not a folder")
    if (root / "train").is_dir():
        return {s: root / s for s in SPLITS if (root / s).is_dir()}
    return {"train": root}


def class_names(folder: Path) -> tuple[str, ...]:
    """The class sub-folders of `folder`, sorted; DataError for fewer than two, or for a link back to
    `folder` or above it (a loop: that "class" would hold every image)."""
    folders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for p in folders:
        if p.is_symlink() and folder.resolve().is_relative_to(p.resolve()):
            raise DataError(
                f"dataset: {p} is a link to {p.resolve()}, which holds {folder} (a loop, not a class "
                "folder); remove the link"
            )
    names = tuple(sorted(p.name for p in folders))
    if not names:
        raise DataError(
            f"dataset: {folder} holds no class folders; put each class's images in {folder}/CLASS/"
        )
    if len(names) < 2:
        raise DataError(
            f"dataset: {folder} holds a single class ({names[0]}); a classifier needs two or more"
        )
    return names


def image_files(folder: Path, names: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(file, class index) of every image under `folder/CLASS/`; DataError for a class without images.
    Links to images are followed, links to folders inside a class are not (as Keras' default
    `follow_links=False`), so a link loop there is never walked."""
    files = []
    for label, name in enumerate(names):
        found = sorted(
            p for p in (folder / name).rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
        )
        if not found:
            raise DataError(
                f"dataset: class folder {folder / name} holds no images ({', '.join(EXTENSIONS)})"
            )
        files += [(p, label) for p in found]
    return files


def decode(path: Path) -> np.ndarray:
    """One image file as uint8 HWC (1 channel for grayscale modes, 3 for colour; alpha dropped);
    DataError naming the file when it cannot be read in full."""
    try:
        with Image.open(path) as image:
            image.load()
            array = to_uint8(image, path)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(
            f"dataset: {path} is not a readable image ({e}); fix or delete it, or pass --skip-bad-images"
        ) from None
    return array[..., None] if array.ndim == 2 else array


def to_uint8(image: Image.Image, path: Path) -> np.ndarray:
    """The image's pixels as uint8, scaled from its bit depth rather than clipped (Pillow's `convert("L")`
    clips 16-bit values at 255): 16-bit grey / 32-bit integers within 0..65535 by 257, floats in [0, 1] by
    255; palette images through RGBA (their transparency dropped, as every alpha channel is). Other
    ranges are refused naming the mode and the range."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image)
        low, high = float(values.min()), float(values.max())
        if mode == "F" and low >= 0 and high <= 1:
            return np.rint(values * 255).astype(np.uint8)
        if mode != "F" and low >= 0 and high <= 65535:
            return np.rint(values.astype(np.float64) / 257).astype(np.uint8)
        span = "[0, 1]" if mode == "F" else "0..65535"
        raise DataError(
            f"dataset: {path} is a mode-{mode} image with values {low:g}..{high:g}, outside {span}: convert "
            "it to 8-bit (or scale it into that range) first, or pass --skip-bad-images"
        )
    if mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette with transparency, as Pillow asks
        return np.asarray(image.convert("RGB"))
    return np.asarray(image.convert("L" if mode in GRAY_MODES else "RGB"))


def read_split(
    folder: Path, names: tuple[str, ...], size: tuple[int, int] | None, channels: int | None, skip_bad: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Decoded, checked, resized images of one split folder with labels, and the number of skipped files."""
    images, labels, skipped, first = [], [], 0, {}
    for path, label in image_files(folder, names):
        try:
            image = decode(path)
        except DataError as e:
            if not skip_bad:
                raise
            skipped += 1
            print(f"Skipping {path}: {str(e).split('(', 1)[-1].split(')')[0]}")
            continue
        first.setdefault(image.shape[-1], path)
        first.setdefault(image.shape[:2], path)
        images.append(image)
        labels.append(label)
    if not images:
        raise DataError(f"dataset: no readable image in {folder}")
    emptied = [names[i] for i in range(len(names)) if i not in set(labels)]
    if emptied:  # every file of a class skipped: a class without examples is no class to learn
        raise DataError(
            f"dataset: class folder {folder / emptied[0]} has no readable image left after "
            "--skip-bad-images (every file of it was skipped); replace its images or remove the class folder"
        )
    if channels is None and 1 in first and 3 in first:
        raise DataError(
            f"dataset: {folder} mixes grayscale ({first[1]}) and colour ({first[3]}) images; "
            "pass --channels 1 or --channels 3 to convert them all"
        )
    sizes = [k for k in first if isinstance(k, tuple)]
    if size is None and len(sizes) > 1:
        raise DataError(
            f"dataset: images of different sizes ({first[sizes[0]]} is {sizes[0][0]}×{sizes[0][1]}, "
            f"{first[sizes[1]]} is {sizes[1][0]}×{sizes[1][1]}); pass --image-size H W to resize them all"
        )
    want = channels or images[0].shape[-1]
    out = np.stack([to_channels(resize(im[None], size), want)[0] for im in images])
    return out, np.array(labels, np.int64), skipped


def walk_files(root: Path) -> list[Path]:
    """Every file under `root`, sorted, following links to folders (a class folder may be a link to
    another disk) but never into a folder already walked or one above it (no loops)."""
    seen, found = {root.resolve()}, []
    for here, folders, files in os.walk(root, followlinks=True):
        here_real = Path(here).resolve()
        keep = []
        for name in sorted(folders):
            real = (Path(here) / name).resolve()
            if real not in seen and not here_real.is_relative_to(real):
                seen.add(real)
                keep.append(name)
        folders[:] = keep
        found += [Path(here) / f for f in files if (Path(here) / f).is_file()]
    return sorted(found)


def fingerprint(root: Path, size: Any, channels: Any, skip_bad: bool) -> str:
    """A short hash of every file's path, size and modification time (behind links to folders too, see
    `walk_files`) and of the transforms: any change prepares the data set anew instead of reusing a stale
    one. A link that leads nowhere (or to itself) is no file."""
    digest = hashlib.sha256(f"{root.resolve()}|{size}|{channels}|{skip_bad}".encode())
    for p in walk_files(root):
        st = p.stat()
        digest.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class ImageFolderSet(tfds.core.GeneratorBasedBuilder):
    """tfds builder over an image folder (Tensor features, array_record, no TensorFlow); one config per
    folder contents and transforms (see `fingerprint`)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Images decoded with Pillow, resized to a common size.",
        "1.1.0": "16-bit, 32-bit integer and float images scaled to 8 bits instead of clipped.",
    }

    def __init__(
        self,
        *,
        arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        shape=None,
        names=(),
        **kwargs,
    ):
        self._arrays, self._shape, self._names = arrays, shape, tuple(names)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return LocalDatasetInfo(
            builder=self,
            description="An image folder: " + ", ".join(self._names),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=tuple(self._shape or (1, 1, 1)), dtype=np.uint8),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "index": tfds.features.Tensor(shape=(), dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(
                class_names=list(self._names), shape=list(self._shape or (1, 1, 1))
            ),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(*arrays) for split, arrays in self._arrays.items()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i]), "index": i}


def load(
    root: Path,
    size: tuple[int, int] | None,
    channels: int | None,
    skip_bad: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...], str]:
    """The folder's splits as uint8 NHWC arrays with labels, its class names (folder names, sorted) and the
    fingerprint of the arrays.
    Prepared with tfds on first use: every file is read and checked first, so bad input fails before
    anything is written, and tfds writes to a temporary folder that it renames only when complete."""
    root = Path(root).expanduser()
    folders = layout(root)
    names = class_names(folders["train"])
    for folder in folders.values():
        if class_names(folder) != names:
            raise DataError(
                f"dataset: {folder} has classes {class_names(folder)}, but {folders['train']} has {names}"
            )
    config = tfds.core.BuilderConfig(name=fingerprint(root, size, channels, skip_bad))
    builder = ImageFolderSet(config=config, data_dir=data_dir)
    if builder.is_prepared():  # the shape and names the features need, from the prepared set's metadata
        meta = json.loads((Path(builder.data_dir) / "metadata.json").read_text())
        builder = ImageFolderSet(config=config, data_dir=data_dir, shape=tuple(meta["shape"]), names=names)
    else:
        arrays, skipped = {}, 0
        for split, folder in folders.items():
            images, labels, bad = read_split(folder, names, size, channels, skip_bad)
            arrays[split], skipped = (images, labels), skipped + bad
        shapes = {a[0].shape[1:] for a in arrays.values()}
        if len(shapes) > 1:
            raise DataError(
                f"dataset: the split folders of {root} hold images of shapes {sorted(shapes)}; "
                "pass --image-size H W"
            )
        if skipped:
            print(f"Skipped {skipped} unreadable image(s) (--skip-bad-images)")
        builder = ImageFolderSet(
            config=config, data_dir=data_dir, arrays=arrays, shape=shapes.pop(), names=names
        )
        print(f"Preparing {root} into {builder.data_dir} (once; later runs reuse it)", flush=True)
        download_and_prepare(builder)
        stamp = keep_arrays(builder, arrays)
        return {s: (x, y.astype(np.int32)) for s, (x, y) in arrays.items()}, names, stamp
    arrays, stamp = read_arrays(builder, list(folders))
    return arrays, names, stamp
