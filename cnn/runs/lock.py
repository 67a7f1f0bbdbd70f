"""One run per folder: an exclusive lock on the run's folder (an fcntl lock on `.cnn-run.lock`, which records
the holder's host, PID and start time; a lock file created atomically where fcntl locks are not supported),
released when the run ends and taken over when its holder is gone."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnn.engine.devices import is_primary
from cnn.errors import WorkdirBusy, WorkdirError

# What a run writes in its folder: `--overwrite` deletes these and nothing else.
LOCK_FILE = ".cnn-run.lock"


@contextlib.contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[None]:
    """Holds an exclusive lock on `workdir` (an fcntl lock on `.cnn-run.lock`, which records the holder's
    host, PID and start time) while a run writes there, and removes the lock file when the run ends. A second
    process gets `WorkdirBusy` naming the holder; a lock left by a killed process is released by the
    operating system and taken over."""
    workdir = Path(workdir)
    make_workdir(workdir)
    if not is_primary():
        yield
        return
    path = workdir / LOCK_FILE
    fd, fallback = open_locked(path, workdir)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_me()).encode())
        yield
    finally:
        release_lock(fd, path, fallback)


def wait_while_busy(workdir: str | Path, poll: float = 2.0) -> bool:
    """Waits while another live process holds the lock of `workdir` (saying so once; a lock left by a dead
    one is no wait); returns whether it waited. A lock held by this very process is `WorkdirBusy`."""
    workdir, waited = Path(workdir), False
    while (workdir / LOCK_FILE).exists():
        try:
            with workdir_lock(workdir):
                break
        except WorkdirBusy as e:
            if _holder_pid(workdir / LOCK_FILE) == os.getpid():
                raise
            if not waited:
                print(f"{e}: waiting for it", flush=True)
            waited = True
            time.sleep(poll)
    return waited


def _holder_pid(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


LOCK_TRIES = 20


def open_locked(path: Path, workdir: Path) -> tuple[int, Path | None]:
    """`path` opened (created where missing) and locked: its descriptor, and the fall-back lock file where
    fcntl locks are not supported (else None). A holder removes the file when it releases it, so a file
    opened before that is no longer the lock once locked: then it is opened again."""
    for _ in range(LOCK_TRIES):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fallback = take_lock(fd, path, workdir)
        except WorkdirBusy:
            removed = not names_file(path, fd)  # a removed file, briefly held by another opener: retry
            os.close(fd)
            if removed:
                continue
            raise
        except BaseException:
            os.close(fd)
            raise
        if names_file(path, fd):
            return fd, fallback
        os.close(fd)  # a released (removed) file: the lock is whatever `path` names now
        if fallback is not None:
            fallback.unlink(missing_ok=True)
    raise WorkdirBusy(
        f"workdir {workdir}: its lock file {path} keeps being replaced by other runs; wait for them to "
        "finish, or use another --workdir"
    )


def names_file(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd` (not removed, not replaced by a new one)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def release_lock(fd: int, path: Path, fallback: Path | None) -> None:
    """Removes the lock file while still holding it (a process that opened it meanwhile sees, once it has
    locked it, that it was removed, and opens the new one), then releases the lock."""
    if names_file(path, fd):
        path.unlink(missing_ok=True)
    os.close(fd)  # releases the fcntl lock
    if fallback is not None:
        fallback.unlink(missing_ok=True)


def take_lock(fd: int, path: Path, workdir: Path) -> Path | None:
    """Locks `fd`; returns the fall-back lock file where fcntl locks are not supported (else None)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        raise WorkdirBusy(
            f"workdir {workdir} is in use by another run ({_holder(path)}); wait for it to finish, or use "
            "another --workdir"
        ) from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        fallback = Path(f"{path}.pid")
        exclusive_file_lock(fallback, workdir)
        return fallback


def _holder(path: Path, tries: int = 10) -> str:
    """Who holds the lock at `path`, as the holder wrote it. The holder writes it just after locking, so an
    empty or half-written file is read again a few times (50 ms apart) before saying "holder unknown"."""
    for attempt in range(tries):
        try:
            h = json.loads(path.read_text())
            return f"PID {h['pid']} on {h['host']}, since {h['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            if attempt + 1 < tries:
                time.sleep(0.05)
    return "holder unknown"


def exclusive_file_lock(path: Path, workdir: Path) -> None:
    """Where the file system has no fcntl locks: a lock file created atomically; one whose process (on
    this host) is gone is stale and taken over, saying so."""
    holder = _me()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        old = json.loads(path.read_text() or "{}")
        if old.get("host") != holder["host"] or process_alive(int(old.get("pid", 0))):
            raise WorkdirBusy(
                f"workdir {workdir} is in use by another run (PID {old.get('pid')} on {old.get('host')}, "
                f"since {old.get('started')}; if that run is gone, delete {path})"
            ) from None
        print(f"Taking over the stale lock of PID {old.get('pid')} (no longer running): {path}")
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, json.dumps(holder).encode())
    os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host is running."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def make_workdir(workdir: Path) -> None:
    """Creates `workdir` (and its parents), or says in one line why it cannot."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} is a file, not a folder; use another --workdir")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise WorkdirError(f"workdir {workdir}: a parent of it is a file; use another --workdir") from None
    except PermissionError:
        raise WorkdirError(f"workdir {workdir}: no permission to create it; use another --workdir") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f"workdir {workdir} is not writable (read-only?); use another --workdir")
