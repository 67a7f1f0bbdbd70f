"""SIGTERM and SIGINT during training: the first is a request to stop once the epoch in progress is saved
(`stop_on_signals`), a second stops at once; an error raised after a stop was asked for carries the signal
(`marked_if_stopping`), so that a sweep stops instead of going on to its next run."""

from __future__ import annotations

import contextlib
import signal
import threading

from tqdm import tqdm

from cnn.errors import Interrupted


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


@contextlib.contextmanager
def stop_on_signals():
    """Turns the first SIGTERM or SIGINT into a request to stop at the end of the epoch in progress (a
    second one stops at once, losing only that epoch). Only in the main thread (signals go there)."""
    stop: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        if stop["signum"] is not None:  # the second signal: the default behaviour
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
            return
        stop["signum"] = signum
        tqdm.write(f"{signal.Signals(signum).name}: finishing and saving this epoch, then stopping")

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
