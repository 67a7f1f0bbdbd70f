"""Where a test's time goes in JAX: with `CNN_TEST_PROFILE=FILE` set, each test appends one JSON line to FILE
with its seconds of tracing, lowering to MLIR, compiling (or reading the persistent cache), the number of
programs compiled, its worker and when it began. `python -m tests.compile_profile FILE` sums them by test
file, says how long each worker was busy and when its last test ended (a worker idle at the end is time the
order of the tests lost), and lists the heaviest tests.
Off unless the variable is set (the listeners cost nothing then)."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/compilation_cache/cache_retrieval_time_sec": "cache_read",
}
_current: dict[str, float] = defaultdict(float)


def _listen(event: str, seconds: float, **_: object) -> None:
    name = EVENTS.get(event)
    if name is not None:
        _current[name] += seconds
        if name == "compile":
            _current["programs"] += 1


def start() -> None:
    """Registers the listener once per process (when the variable is set)."""
    if os.environ.get("CNN_TEST_PROFILE"):
        import jax

        jax.monitoring.register_event_duration_secs_listener(_listen)


def begin() -> float:
    _current.clear()
    return time.time()


def end(nodeid: str, started: float) -> None:
    if file := os.environ.get("CNN_TEST_PROFILE"):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        record = {"test": nodeid, "worker": worker, "start": started, "seconds": time.time() - started}
        record.update(_current)
        with open(file, "a") as f:
            f.write(json.dumps(record) + "\n")


def summary(path: Path, top: int) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = ("seconds", "trace", "lower", "compile", "cache_read", "programs")
    by_file: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(keys, 0.0))
    for r in records:
        for group in (r["test"].split("::")[0], "all"):
            for k in keys:
                by_file[group][k] += r.get(k, 0.0)
    lines = ["| file | seconds | trace | lower | compile (or cache read) | of it cache read | programs |"]
    lines.append("|---|---|---|---|---|---|---|")
    for name, t in sorted(by_file.items(), key=lambda kv: -kv[1]["seconds"]):
        figures = " | ".join(f"{t[k]:.1f}" for k in keys[:-1])
        lines.append(f"| {name} | {figures} | {t['programs']:.0f} |")
    lines += ["", "| worker | tests | busy seconds | last test ended (seconds after the first began) |"]
    lines.append("|---|---|---|---|")
    first = min((r["start"] for r in records if "start" in r), default=0.0)
    for worker in sorted({r.get("worker", "main") for r in records}):
        mine = [r for r in records if r.get("worker", "main") == worker]
        busy, ended = sum(r["seconds"] for r in mine), max(r.get("start", first) + r["seconds"] for r in mine)
        lines.append(f"| {worker} | {len(mine)} | {busy:.1f} | {ended - first:.1f} |")
    lines += ["", f"The {top} heaviest tests:", ""]
    for r in sorted(records, key=lambda r: -r["seconds"])[:top]:
        parts = ", ".join(f"{k} {r.get(k, 0.0):.1f}" for k in keys[1:-1])
        lines.append(f"- {r['seconds']:.1f} s {r['test']} ({parts}; {r.get('programs', 0):.0f} programs)")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    print(summary(args.file, args.top))
