"""Files a command writes from a run or a study (an exported program, a diagram, pictures, a report, a
sweep's tables): never over a run's own files (`check_output`), never over an existing file unless asked
(`--force`), and always whole: written under a temporary name, renamed into place (`atomic_path`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cnn.runs.folder import RUN_ENTRIES


def owning_run(path: Path) -> tuple[Path, Path] | None:
    """The run folder (one holding a config.json or a checkpoints/ folder) that `path` is, or is one of
    the own files of, with `path` relative to it; None when `path` belongs to no run."""
    path = Path(os.path.abspath(path))
    for folder in [path, *path.parents]:
        if not ((folder / "config.json").is_file() or (folder / "checkpoints").is_dir()):
            continue
        relative = path.relative_to(folder)
        if not relative.parts or relative.parts[0] in RUN_ENTRIES:
            return folder, relative
    return None


def check_output(path: str | Path, force: bool = False, flag: str = "--out", folder: bool = False) -> Path:
    """Refuses (ValueError, before any work) an output `path` that is a run's folder or one of its own files
    (config.json, history.json, results.json, curves.png, checkpoints/...), a file where a `folder` is
    written (or the other way round), and an existing file unless `force`. Returns `path`."""
    path = Path(path)
    owner = owning_run(path)
    if owner is not None:
        run, relative = owner
        what = "the run folder" if not relative.parts else f"{relative} of the run in"
        raise ValueError(
            f"{flag}: {path} is {what} {run}; writing there would replace what the run keeps. Give a path "
            f"outside the run's own files, e.g. {run / ('export' if not folder else 'pictures')}"
        )
    if folder:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{flag}: {path} is a file, not a folder; give a folder")
        return path
    if path.is_dir():
        raise ValueError(f"{flag}: {path} is a folder; give a file name, e.g. {path / 'model.jaxexport'}")
    if path.exists() and not force:
        raise ValueError(f"{flag}: {path} exists; pass --force to replace it, or give another path")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` (same suffix: libraries that pick a format by it still do) to write
    to; renamed to `path` when the block ends without error, removed when it fails."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """`data` (text as UTF-8, line ends as given) written whole to `path` (see `atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
