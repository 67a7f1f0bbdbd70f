"""Where a command's time goes: every XLA compilation of the process counted and timed from JAX's own
monitoring events (tracing, lowering, compiling; a program read back from the persistent cache counts as a
cache hit, not a compilation), and the wall time of a command's phases (data, training, evaluation,
checkpoints, plots) with the compiling done inside them set apart. Compiling done ahead in a background
thread (`cnn.studies.ahead`) is counted apart (`AHEAD`): it is no part of the time of the run that trains
meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from jax import monitoring

COMPILE_EVENTS = (  # what turning a Python function into an executable costs, phase by phase
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
BACKEND_EVENT = COMPILE_EVENTS[-1]
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclass
class Compiles:
    """The process's compilation totals so far: programs compiled, programs read from the persistent
    cache, and seconds spent (tracing, lowering and compiling or reading back)."""

    backend: int = 0
    cache_hits: int = 0
    seconds: float = 0.0

    @property
    def compilations(self) -> int:
        return self.backend - self.cache_hits


TOTALS = Compiles()
AHEAD = Compiles()  # compiled in a background thread inside `counted_apart`, for a run still to come
PHASES: defaultdict[str, float] = defaultdict(float)
_THREAD = threading.local()  # `totals`: where this thread's compilations count (TOTALS unless set apart)


def _on_duration(event: str, duration: float, **_: object) -> None:
    totals = getattr(_THREAD, "totals", TOTALS)  # JAX reports an event in the thread that compiles
    if event in COMPILE_EVENTS:
        totals.seconds += duration
    if event == BACKEND_EVENT:
        totals.backend += 1


def _on_event(event: str, **_: object) -> None:
    if event == CACHE_HIT_EVENT:
        getattr(_THREAD, "totals", TOTALS).cache_hits += 1


monitoring.register_event_duration_secs_listener(_on_duration)
monitoring.register_event_listener(_on_event)


def snapshot() -> Compiles:
    """A copy of the totals now (subtract two snapshots for what happened between them)."""
    return Compiles(TOTALS.backend, TOTALS.cache_hits, TOTALS.seconds)


def since(start: Compiles) -> Compiles:
    """The compilations since the `start` snapshot."""
    return Compiles(
        TOTALS.backend - start.backend, TOTALS.cache_hits - start.cache_hits, TOTALS.seconds - start.seconds
    )


@contextlib.contextmanager
def counted_apart() -> Iterator[None]:
    """This thread's compilations inside the block count in `AHEAD`, not in the process's `TOTALS` (which
    the run training meanwhile in another thread subtracts from its training time)."""
    _THREAD.totals = AHEAD
    try:
        yield
    finally:
        del _THREAD.totals


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Adds the wall time of the block to `PHASES[name]`, less the compiling done inside it, which goes to
    `PHASES['compile']`. Phases do not nest."""
    start, t = snapshot(), time.perf_counter()
    try:
        yield
    finally:
        compiled = since(start).seconds
        PHASES[name] += time.perf_counter() - t - compiled
        PHASES["compile"] += compiled


REPORT_VAR = "CNN_COSTS_FILE"  # set (by `python -m cnn bench --overhead`) to have a command write `report`


def report(entered: float) -> dict[str, float]:
    """The command's wall time since `entered` (`time.time()` when it began, after start-up) split into
    its phases, all compiling in `compile` and the rest in `other`; `entered` itself, so that the caller can
    tell the start-up (interpreter and imports) from the time it started the process."""
    wall = time.time() - entered
    phases = {k: v for k, v in PHASES.items() if k != "compile"}
    return {
        "entered": entered,
        "wall": wall,
        **phases,
        "compile": TOTALS.seconds,
        "compilations": TOTALS.compilations,
        "compile_cache_hits": TOTALS.cache_hits,
        "compile_ahead": AHEAD.seconds,  # in a background thread, beside the phases: not in `other`
        "compilations_ahead": AHEAD.compilations,
        "other": wall - sum(phases.values()) - TOTALS.seconds,
    }


def write_report(entered: float) -> None:
    """`report` as JSON into the file `$CNN_COSTS_FILE` names, if it is set."""
    path = os.environ.get(REPORT_VAR)
    if path:
        with open(path, "w") as f:
            json.dump(report(entered), f)
