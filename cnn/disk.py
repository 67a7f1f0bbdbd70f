"""Running out of space (a full disk, a quota, a file-size limit) found before writing where it can be, and
recognised in the errors of the libraries that write (orbax, tensorstore, array_record) where it cannot."""

from __future__ import annotations

import errno
import json
import re
import resource
import shutil
from pathlib import Path
from typing import Any

NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
TEXTS = ("No space left on device", "File too large", "Disk quota exceeded")


class DiskFull(OSError):
    """There is no room for what is about to be written; the message names where and what to do."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)


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


def out_of_space(error: BaseException) -> bool:
    """Whether `error` (an OSError, or a library's error that carries the OS error in its text) means that
    the disk, a quota or a file-size limit ran out."""
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        return True
    text = str(error)
    codes = re.findall(r"os_error_code='?(\d+)", text)
    return any(int(c) in NO_SPACE for c in codes) or any(t in text for t in TEXTS)


def read_json(path: Path, fix: str) -> Any:
    """The JSON in `path`; a truncated or garbled file is a ValueError naming it and `fix`."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); {fix}") from None
