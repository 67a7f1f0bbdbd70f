"""A data set prepared with tensorflow-datasets (no TensorFlow: Tensor features, array_record), read back as
whole arrays. tfds' data source decodes records one by one (seconds for Fashion-MNIST's 70,000), so the first
read also writes the arrays, uncompressed, beside the prepared records (`arrays.npz`,
with the source data's fingerprint in `arrays.json`); every later read is one `np.load`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cnn.errors import DataError, DiskFull, PreparationInterrupted, out_of_space

ARRAYS, ARRAYS_INFO = "arrays.npz", "arrays.json"


class _QuietTfds(logging.Filter):
    """Drops tfds' own info and warning lines ('Variant folder ... has no dataset_info.json' while a set is
    being prepared, ...): `cnn` says what it prepares and reads; tfds' errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "tensorflow_datasets" not in record.pathname


logging.getLogger("absl").addFilter(_QuietTfds())


class LocalDatasetInfo(tfds.core.DatasetInfo):
    """The `DatasetInfo` of a set built from local files. tfds' own looks for precomputed metadata in its
    cloud bucket whenever a set is not prepared yet, through an empty temporary folder it never removes
    (one left in the system's temporary folder per preparation); these sets have no such metadata."""

    def initialize_from_bucket(self) -> None:
        return None


@contextlib.contextmanager
def stopped_by_signals(where: str) -> Iterator[None]:
    """SIGINT and SIGTERM raise PreparationInterrupted at once (the first one; the next ones are ignored so
    that tfds' clean-up of its temporary folder runs to its end). Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def stop(signum: int, frame: Any) -> None:
        if not raised:
            raised.append(signum)
            raise PreparationInterrupted(signum, where)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except BaseException:
        if raised:  # tfds re-raises it with the example being encoded pasted into its message
            raise PreparationInterrupted(raised[0], where) from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def download_and_prepare(builder: tfds.core.DatasetBuilder) -> None:
    """tfds' preparation, with a full disk (or a quota, or a file-size limit) reported in one line and the
    half-written temporary folder removed: nothing half-prepared is left to be taken for good. SIGINT or
    SIGTERM stops it at once (PreparationInterrupted)."""
    tfds.disable_progress_bar()
    try:
        with (
            stopped_by_signals(str(Path(builder.data_dir).parent)),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            builder.download_and_prepare()  # tfds prints sizes and paths; cnn says its own
    except (OSError, RuntimeError, ValueError) as e:
        if not out_of_space(e):
            raise
        for partial in Path(builder.data_dir).parent.glob("incomplete.*"):
            shutil.rmtree(partial, ignore_errors=True)
        raise DiskFull(
            f"no space to prepare the data set {builder.name} in {Path(builder.data_dir).parent} ({e}): free "
            "some space, or give another --data-dir, and run again"
        ) from None
    if not builder.is_prepared():  # tfds leaves a folder it finds half there as it is
        raise DataError(
            f"the prepared data set in {builder.data_dir} is incomplete (no dataset_info.json); delete "
            f"{builder.data_dir} and run again to prepare it afresh"
        )


def read_records(builder: tfds.core.DatasetBuilder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A prepared tfds split's `image` and `label` arrays, in the original order (the `index` feature),
    decoded record by record."""
    fix = f"delete {builder.data_dir} and run again to prepare it afresh"
    try:
        source = builder.as_data_source(split=split)
        records = source.__getitems__(list(range(len(source))))
    except KeyError:
        raise DataError(
            f"the prepared data set in {builder.data_dir} is incomplete (no {split} split); {fix}"
        ) from None
    except (RuntimeError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(f"the prepared data set in {builder.data_dir} is damaged ({first}); {fix}") from None
    order = np.argsort([r["index"] for r in records])
    images = np.stack([records[i]["image"] for i in order])
    labels = np.array([records[i]["label"] for i in order], np.int32)
    return images, labels


def fingerprint(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """A short hash of every split's images and labels (names, shapes and bytes)."""
    digest = hashlib.sha256()
    for split in sorted(arrays):
        for a in arrays[split]:
            digest.update(f"{split}|{a.dtype}|{a.shape}|".encode())
            digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def read_arrays(
    builder: tfds.core.DatasetBuilder, splits: Sequence[str]
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """The prepared `splits` as (images, labels) arrays, and the data's fingerprint: from `arrays.npz` when
    it is there and whole, else decoded from the records and written there for the next read (skipped,
    silently, where the folder is read-only or full)."""
    cached = _load(Path(builder.data_dir), splits)
    if cached is not None:
        return cached
    arrays = {s: read_records(builder, s) for s in splits}
    return arrays, keep_arrays(builder, arrays)


def keep_arrays(builder: tfds.core.DatasetBuilder, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Writes `arrays` (per split: uint8 images, labels) beside the prepared records for `read_arrays` (not
    where the folder is read-only or full: reads then decode the records); returns their fingerprint."""
    arrays = {s: (x, y.astype(np.int32)) for s, (x, y) in arrays.items()}
    stamp = fingerprint(arrays)
    with contextlib.suppress(OSError):
        _save(Path(builder.data_dir), arrays, stamp)
    return stamp


def _load(folder: Path, splits: Sequence[str]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str] | None:
    try:
        info = json.loads((folder / ARRAYS_INFO).read_text())
        if (folder / ARRAYS).stat().st_size != info["bytes"] or set(splits) - set(info["sizes"]):
            return None
        with np.load(folder / ARRAYS) as z:
            arrays = {s: (z[f"{s}/image"], z[f"{s}/label"]) for s in splits}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(len(y) != info["sizes"][s] or len(x) != len(y) for s, (x, y) in arrays.items()):
        return None
    return arrays, info["fingerprint"]


def _save(folder: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]], stamp: str) -> None:
    """Writes `arrays.npz`, then `arrays.json` naming its size: a file cut short is never taken as whole."""
    tmp = folder / f".{ARRAYS}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                **{
                    f"{s}/{k}": a
                    for s, pair in arrays.items()
                    for k, a in zip(("image", "label"), pair, strict=True)
                },
            )
        os.replace(tmp, folder / ARRAYS)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    info = {
        "fingerprint": stamp,
        "bytes": (folder / ARRAYS).stat().st_size,
        "sizes": {s: len(y) for s, (_, y) in arrays.items()},
    }
    tmp_info = folder / f".{ARRAYS_INFO}.{os.getpid()}.tmp"
    tmp_info.write_text(json.dumps(info))
    os.replace(tmp_info, folder / ARRAYS_INFO)
