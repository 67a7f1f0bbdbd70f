"""SIGTERM and SIGINT, obeyed at every moment of a command: while epochs train (`stop_on_signals`) the first
is a request to stop once the epoch in progress is saved, outside them (starting up, preparing data, between
the runs of a sweep, writing tables) it stops the command at once (`Stopped`), and a request that outlives
the run it came in (its last epoch) starts no further run (`raise_if_stopping`). A second signal stops at
once. An error raised after a stop was asked for carries the signal (`marked_if_stopping`), so that a sweep
stops instead of going on to its next run."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

from tqdm import tqdm

from cnn.errors import Interrupted, Stopped

SIGNALS = (signal.SIGTERM, signal.SIGINT)

# The process's one stop request: `signum` once asked; `deferred` > 0 while epochs train (the request waits
# for the epoch's end); `command` while a command's handlers (`command_signals`) are installed.
STOP: dict[str, Any] = {"signum": None, "deferred": 0, "command": False, "previous": {}}


def _request(signum: int, frame: Any) -> None:
    if STOP["signum"] is not None:  # the second signal: the behaviour from before, at once
        signal.signal(signum, STOP["previous"].get(signum, signal.SIG_DFL))
        signal.raise_signal(signum)
        return
    STOP["signum"] = signum
    if STOP["deferred"]:
        tqdm.write(f"{signal.Signals(signum).name}: finishing and saving this epoch, then stopping")
        return
    raise Stopped(signum, "at once (no epoch was training)")


def _install() -> dict[int, Any]:
    previous = {sig: signal.signal(sig, _request) for sig in SIGNALS}
    STOP["previous"] = previous
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def command_signals():
    """For a whole command (`cnn.cli.main`): SIGTERM and SIGINT stop it at every moment, a fresh request;
    on leaving, a request still standing (it came while the last run finished) raises `Stopped`."""
    if not _main_thread() or STOP["command"]:
        yield
        return
    STOP.update(signum=None, command=True)
    previous = _install()
    try:
        yield
        raise_if_stopping("after the work in progress finished and was saved")
    finally:
        _restore(previous)
        STOP["command"] = False


@contextlib.contextmanager
def stop_on_signals():
    """While epochs train: the first SIGTERM or SIGINT is a request to stop at the end of the epoch in
    progress (a second one stops at once, losing only that epoch). Only in the main thread (signals go
    there). Outside a command (a Python caller), the handlers are installed here and a fresh request
    starts."""
    if not _main_thread():
        yield {"signum": None}
        return
    own = not STOP["command"] and STOP["deferred"] == 0
    if own:
        STOP["signum"] = None
        previous = _install()
    STOP["deferred"] += 1
    try:
        yield STOP
    except BaseException:
        if own:  # the request was obeyed (or the run failed): it does not outlive a Python caller's call
            STOP["signum"] = None
        raise
    finally:
        STOP["deferred"] -= 1
        if own:
            _restore(previous)


def pending() -> int | None:
    """The signal of a stop request still standing (None: none)."""
    return STOP["signum"] if _main_thread() else None


def raise_if_stopping(when: str) -> None:
    """Raises `Stopped` (`when`: what it stopped before) if a stop was asked and not yet obeyed; outside
    a command the request is then spent (a Python caller's next run trains)."""
    signum = pending()
    if signum is not None:
        if not STOP["command"]:
            STOP["signum"] = None
        raise Stopped(signum, when)


@contextlib.contextmanager
def marked_if_stopping(stop: dict[str, int | None]):
    """An error raised after a stop was asked for carries the signal (`stop_requested`), so that a sweep
    stops instead of going on to its next run."""
    try:
        yield
    except Exception as e:
        if stop["signum"] is not None and not isinstance(e, Interrupted):
            e.stop_requested = stop["signum"]  # type: ignore[attr-defined]
        raise
