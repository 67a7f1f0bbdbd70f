"""Training and evaluation throughput at steady state, optionally beside a peer command run in the same
invocation (so a comparison never mixes two moments of a noisy machine)."""

from __future__ import annotations

import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnn.config import TrainConfig
from cnn.data.spec import FASHION_MNIST
from cnn.engine.state import initial_state, model_for
from cnn.engine.steps import eval_sums, train_chunk
from cnn.engine.vmap import Members
from cnn.errors import PeerError
from cnn.models.summary import layer_rows, totals
from cnn.runs.folder import run_metadata
from cnn.studies.grouping import MODES, images_per_second

SCHEMA_VERSION = 3  # 2: several named peers (`peers`, `ratios`), the matmul peak; 3: seeds as matmul


@dataclass
class BenchResult:
    """One (model, batch size, steps per call) measurement."""

    model: str
    batch_size: int
    steps_per_call: int
    train_images_per_second: float
    train_windows: list[float]
    eval_images_per_second: float
    compile_seconds: float
    train_gflops_per_second: float
    peak_memory_mb: float
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)


def _synthetic(n: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """Random uint8 images and labels on the device (throughput does not depend on the pixel values)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *FASHION_MNIST.image_shape), dtype=np.uint8)
    return jax.device_put(images), jax.device_put(rng.integers(0, 10, size=n).astype(np.int32))


def _peak_memory_mb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # host RSS, KiB on Linux


def measure(
    model: str = "seed_cnn",
    batch_size: int = 32,
    steps: int = 300,
    windows: int = 5,
    steps_per_call: int = 1,
    warmup: int = 20,
    data_size: int = 48_000,
) -> BenchResult:
    """Median training images/s over `windows` windows of `steps` steps, after compilation and warm-up.

    The data lives on the device as uint8 and batches are gathered there, as in `fit`.
    """
    config = TrainConfig(model=model, batch_size=batch_size, steps_per_call=steps_per_call)
    images, labels = _synthetic(data_size)
    state = initial_state(config, FASHION_MNIST)
    order = jax.random.permutation(jax.random.PRNGKey(1), data_size)
    rng = jax.random.PRNGKey(2)
    per_epoch = data_size // batch_size
    chunk = max(1, steps_per_call)
    steps = max(chunk, steps // chunk * chunk)
    program = _chunk_program(Members(1))

    def run(state, count, offset):
        metrics = None
        for i in range(0, count, chunk):
            start = ((offset + i) % (per_epoch - chunk + 1)) * batch_size
            state, metrics = program(
                state, images, labels, order, start, rng, chunk, batch_size=batch_size, steps=chunk
            )
        jax.block_until_ready(metrics)
        return state

    t = time.perf_counter()
    state = run(state, chunk, 0)
    compile_seconds = time.perf_counter() - t
    state = run(state, max(warmup, chunk), chunk)
    rates = []
    for w in range(windows):
        t = time.perf_counter()
        state = run(state, steps, w * steps)
        rates.append(steps * batch_size / (time.perf_counter() - t))
    train_rate = statistics.median(rates)
    macs = totals(layer_rows(model_for(config, FASHION_MNIST))).macs
    return BenchResult(
        model=model,
        batch_size=batch_size,
        steps_per_call=chunk,
        train_images_per_second=train_rate,
        train_windows=rates,
        eval_images_per_second=_eval_rate(state, images, labels),
        compile_seconds=compile_seconds,
        train_gflops_per_second=train_rate * 6 * macs / 1e9,  # forward 2·MACs, backward about twice that
        peak_memory_mb=_peak_memory_mb(),
    )


def _chunk_program(members: Members) -> Any:
    """The training program `fit` runs (see `cnn.train.run_call`), for these runs."""
    return members.program(train_chunk, member_args=(0, 3, 5), static_argnames=("batch_size", "steps"))


def _eval_rate(state, images, labels, batch_size: int = 1000, batches: int = 10) -> float:
    """Evaluation images/s of the program `fit` evaluates with: `batches` batches in one call."""
    batch_size = min(batch_size, len(labels) // batches)
    n = batch_size * batches
    x = images[:n].reshape(batches, batch_size, *images.shape[1:])
    y, mask = labels[:n].reshape(batches, batch_size), jnp.ones((batches, batch_size))
    program = Members(1).program(eval_sums, donate=False)
    jax.block_until_ready(program(state, x, y, mask))
    t = time.perf_counter()
    jax.block_until_ready(program(state, x, y, mask))
    return n / (time.perf_counter() - t)


def seconds_per_call(fn: Any, *args: Any, repeats: int = 20, windows: int = 5) -> float:
    """Median seconds of one call of `jax.jit(fn)(*args)`: compiled and warmed up first, then `windows`
    windows of `repeats` calls each, timed up to `block_until_ready`."""
    compiled = jax.jit(fn)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(repeats):
            out = compiled(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / repeats)
    return statistics.median(times)


def matmul_peak(n: int = 1024) -> float:
    """GFLOP/s of one float32 `n`×`n` matrix product on the default device, timed as the training is
    (`seconds_per_call`): the machine's practical peak, against which the training's GFLOP/s are read."""
    a, b = jax.random.normal(jax.random.PRNGKey(0), (2, n, n), jnp.float32)
    return 2 * n**3 / seconds_per_call(jnp.matmul, a, b) / 1e9


def parse_peers(specs: list[str] | None) -> dict[str, str]:
    """`NAME=COMMAND` (or a bare COMMAND, named 'peer') for each --peer, in order."""
    peers: dict[str, str] = {}
    for spec in specs or []:
        name, sep, command = spec.partition("=")
        if not sep or " " in name or not name:
            name, command = "peer", spec
        if name in peers:
            raise ValueError(f"--peer: the name {name!r} is given twice; name each peer, e.g. eager=CMD")
        peers[name] = command
    return peers


def run_peer(command: str, batch_size: int, steps: int) -> dict[str, Any]:
    """Runs a peer command (placeholders `{batch_size}`, `{steps}`); reads the JSON object it prints last."""
    argv = shlex.split(command.format(batch_size=batch_size, steps=steps))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PeerError(f"peer command {argv} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    for line in reversed(done.stdout.strip().splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            if "images_per_second" not in result:
                raise PeerError(f"peer output has no images_per_second: {line}")
            return result
    raise PeerError(f"peer command {argv} printed no JSON line: {done.stdout[-500:]}")


def benchmark(
    models: list[str],
    batch_sizes: list[int],
    steps: int = 300,
    windows: int = 5,
    steps_per_call: list[int] | None = None,
    peers: dict[str, str] | None = None,
    data_size: int = 48_000,
    seeds: int = 0,
) -> dict[str, Any]:
    """Every (model, batch size, steps per call) measurement, each with the named peer commands run beside
    it (their images/s and our ratio to each); with `seeds` > 1, also `seeds` runs trained together (vmap)
    against the same runs one after another. The report starts with the float32 matmul peak."""
    peak = matmul_peak()
    print(f"float32 matmul peak (1024², jit): {peak:.1f} GFLOP/s", file=sys.stderr, flush=True)
    rows = []
    for model in models:
        for batch_size in batch_sizes:
            for chunk in steps_per_call or [1]:
                result = measure(model, batch_size, steps, windows, chunk, data_size=data_size)
                for name, command in (peers or {}).items():
                    result.peers[name] = run_peer(command, batch_size, steps)
                    result.ratios[name] = (
                        result.train_images_per_second / result.peers[name]["images_per_second"]
                    )
                rows.append(result)
                print(format_row(result), file=sys.stderr, flush=True)
    together = []
    for model in models if seeds > 1 else []:
        for batch_size in batch_sizes:
            together.append(measure_seeds(model, batch_size, seeds, max(1, steps // seeds), 3, data_size))
            print(format_seeds_row(together[-1]), file=sys.stderr, flush=True)
    return {
        "schema_version": SCHEMA_VERSION,
        "command": " ".join(sys.argv),
        **run_metadata(),
        "matmul_gflops_per_second": peak,
        "results": [asdict(r) for r in rows],
        "seeds": together,
    }


def _peers_of(r: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """A row's peers and ratios; reports of schema 1 had one unnamed `peer`."""
    if "peers" in r:
        return r["peers"], r["ratios"]
    return ({"peer": r["peer"]}, {"peer": r["ratio_to_peer"]}) if r.get("peer") else ({}, {})


def header(peer_names: list[str], peak: float | None = None) -> str:
    cells = ["model", "batch", "steps/call", "train img/s", "eval img/s", "GFLOP/s"]
    cells += ["% of matmul peak"] if peak else []
    cells += ["compile s", "peak MB"]
    for name in peer_names or ["peer"]:
        cells += [f"{name} img/s", f"ratio to {name}"]
    return "| " + " | ".join(cells) + " |\n|" + "---|" * len(cells)


def format_row(
    r: BenchResult | dict[str, Any], peer_names: list[str] | None = None, peak: float | None = None
) -> str:
    r = asdict(r) if isinstance(r, BenchResult) else r
    peers, ratios = _peers_of(r)
    cells = [
        f"`{r['model']}`",
        str(r["batch_size"]),
        str(r["steps_per_call"]),
        f"{r['train_images_per_second']:,.0f}",
        f"{r['eval_images_per_second']:,.0f}",
        f"{r['train_gflops_per_second']:.1f}",
    ]
    cells += [f"{100 * r['train_gflops_per_second'] / peak:.0f} %"] if peak else []
    cells += [f"{r['compile_seconds']:.1f}", f"{r['peak_memory_mb']:,.0f}"]
    for name in peer_names or list(peers) or ["peer"]:
        cells += (
            [f"{peers[name]['images_per_second']:,.0f}", f"{ratios[name]:.2f}"]
            if name in peers
            else ["–", "–"]
        )
    return "| " + " | ".join(cells) + " |"


SEEDS_HEADER = (
    "| model | batch | seeds | sequential img/s | vmapped img/s | speed-up | vmapped, convolutions as matmul "
    "img/s | speed-up |\n|---|---|---|---|---|---|---|---|"
)


def format_seeds_row(r: dict[str, Any]) -> str:
    matmul = r.get("vmapped_matmul_images_per_second")  # reports before schema 3 have none
    return (
        f"| `{r['model']}` | {r['batch_size']} | {r['seeds']} | {r['sequential_images_per_second']:,.0f} | "
        f"{r['vmapped_images_per_second']:,.0f} | {r['speedup']:.2f} | "
        + (f"{matmul:,.0f} | {r['matmul_speedup']:.2f} |" if matmul else "– | – |")
    )


def format_table(report: dict[str, Any]) -> str:
    names = list(dict.fromkeys(n for r in report["results"] for n in _peers_of(r)[0]))
    peak = report.get("matmul_gflops_per_second")
    table = "\n".join([header(names, peak), *(format_row(r, names, peak) for r in report["results"])])
    if peak:
        table += f"\n\nfloat32 matmul peak (1024×1024, compiled, same timing): {peak:.1f} GFLOP/s."
    if report.get("seeds"):
        table += "\n\n" + "\n".join([SEEDS_HEADER, *(format_seeds_row(r) for r in report["seeds"])])
    return table


def measure_seeds(
    model: str = "seed_cnn",
    batch_size: int = 32,
    seeds: int = 3,
    steps: int = 100,
    windows: int = 3,
    data_size: int = 48_000,
) -> dict[str, Any]:
    """Training images/s of `seeds` runs trained together (vmapped, the convolutions grouped or as batched
    matrix products) and one after another (see `cnn.studies.grouping`), after compilation; medians of
    `windows` windows of `steps` steps (`data_size` is not used: the steps cycle over `steps` batches)."""
    config = TrainConfig(model=model, batch_size=batch_size)
    rates = {
        mode: [images_per_second(config, FASHION_MNIST, seeds, mode, steps) for _ in range(windows)]
        for mode in MODES
    }
    seq, vm, mm = (statistics.median(rates[m]) for m in ("sequential", "vmap", "vmap_matmul"))
    return {
        "model": model,
        "batch_size": batch_size,
        "seeds": seeds,
        "sequential_images_per_second": seq,
        "vmapped_images_per_second": vm,
        "vmapped_matmul_images_per_second": mm,
        "speedup": vm / seq,
        "matmul_speedup": mm / seq,
        "windows": rates,
    }
