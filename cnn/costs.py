"""Where a command's time goes: every XLA compilation of the process counted and timed from JAX's own
monitoring events (tracing, lowering, compiling; a program read back from the persistent cache counts as a
cache hit, not a compilation), and the wall time of a command's phases (data, training, evaluation,
checkpoints, plots) with the compiling done inside them set apart."""

from __future__ import annotations

import contextlib
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
PHASES: defaultdict[str, float] = defaultdict(float)


def _on_duration(event: str, duration: float, **_: object) -> None:
    if event in COMPILE_EVENTS:
        TOTALS.seconds += duration
    if event == BACKEND_EVENT:
        TOTALS.backend += 1


def _on_event(event: str, **_: object) -> None:
    if event == CACHE_HIT_EVENT:
        TOTALS.cache_hits += 1


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
