"""Running out of space (a full disk, a quota, a file-size limit) found before writing where it can be (where
it cannot, `cnn.errors.out_of_space` recognises it in the errors of the libraries that write), and JSON files
read back with their problem named."""

from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path
from typing import Any

from cnn.errors import DiskFull


def check_room(directory: Path, needed: int, what: str, then: str) -> None:
    """Raises DiskFull before writing `needed` bytes (`what`) under `directory` when its disk has less free
    space, or when the process's file-size limit (`ulimit -f`) is lower; `then` says what is kept."""
    free = shutil.disk_usage(directory).free
    about = f"about {needed / 2**20:,.1f} MiB needed"
    if free < needed:
        raise DiskFull(
            f"no space to save {what} in {directory} ({free / 2**20:,.1f} MiB free on its disk, {about}): "
            f"free some space and {then}"
        )
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < needed:
        raise DiskFull(
            f"no space to save {what} in {directory} (files are limited to {limit / 2**20:,.1f} MiB by "
            f"ulimit -f, {about}): raise the limit and {then}"
        )


def read_json(path: Path, fix: str) -> Any:
    """The JSON in `path`; a truncated or garbled file is a ValueError naming it and `fix`."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); {fix}") from None
