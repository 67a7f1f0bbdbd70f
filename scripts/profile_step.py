"""Where the seed CNN's training step spends its time on this machine: each layer's forward pass, its input
gradient and its weight gradient timed alone (compiled, steady state), beside the whole step and a float32
matmul, at several batch sizes; also the convolutions' weight gradient written as one matmul over patches.

    python scripts/profile_step.py --batch-sizes 32 128 256 [--out benchmarks/profile-cpu.json]

Each figure is the median of 5 windows; GFLOP/s count 2 × multiply-accumulates. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnn.runs.folder import run_metadata
from cnn.studies.bench import matmul_peak, measure, seconds_per_call

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def patches(x, k: int = 3):
    """(B, H, W, C) -> (B·H·W, k·k·C): the 'same'-padded windows, one row per output position."""
    b, h, w, c = x.shape
    p = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    cols = [p[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)]
    return jnp.concatenate(cols, axis=-1).reshape(b * h * w, k * k * c)


def input_gradient(x, w, dy):
    return jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]


def weight_gradient(x, w, dy):
    return jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]


def weight_gradient_patches(x, w, dy):
    """The same weight gradient as one (k·k·C_in × B·H·W) · (B·H·W × C_out) matmul."""
    return (patches(x).T @ dy.reshape(-1, dy.shape[-1])).reshape(w.shape)


def layer_rows(batch: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name, (h, cin, cout) in {"conv1": (28, 1, 32), "conv2": (14, 32, 64)}.items():
        x = jnp.asarray(rng.normal(size=(batch, h, h, cin)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
        dy = jnp.asarray(rng.normal(size=(batch, h, h, cout)), jnp.float32)
        flops = 2 * batch * h * h * 9 * cin * cout
        parts = {
            "forward": seconds_per_call(lambda x, w, dy: conv(x, w), x, w, dy),
            "input gradient": seconds_per_call(input_gradient, x, w, dy),
            "weight gradient": seconds_per_call(weight_gradient, x, w, dy),
            "weight gradient as patches·dY": seconds_per_call(weight_gradient_patches, x, w, dy),
        }
        for part, seconds in parts.items():
            rows.append(
                {
                    "batch": batch,
                    "layer": name,
                    "part": part,
                    "ms": 1e3 * seconds,
                    "gflops": flops / seconds / 1e9,
                }
            )
    x = jnp.asarray(rng.normal(size=(batch, 3136)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3136, 100)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(batch, 100)), jnp.float32)
    flops = 2 * batch * 3136 * 100
    for part, fn, args in (
        ("forward", jnp.matmul, (x, w)),
        ("input gradient", lambda dy, w: dy @ w.T, (dy, w)),
        ("weight gradient", lambda x, dy: x.T @ dy, (x, dy)),
    ):
        seconds = seconds_per_call(fn, *args)
        rows.append(
            {
                "batch": batch,
                "layer": "dense1",
                "part": part,
                "ms": 1e3 * seconds,
                "gflops": flops / seconds / 1e9,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128, 256])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    peak = matmul_peak()
    report = {
        "command": " ".join(sys.argv),
        **run_metadata(),
        "matmul_gflops_per_second": peak,
        "batches": [],
    }
    print(
        f"float32 matmul peak: {peak:.1f} GFLOP/s ({report['host']['cpu']}, {report['host']['cores']} cores)"
    )
    print("| batch | layer | part | ms | GFLOP/s | % of peak |\n|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        rows = layer_rows(batch)
        step = measure("seed_cnn", batch, steps=60, windows=3, steps_per_call=1)
        chunked = measure("seed_cnn", batch, steps=60, windows=3, steps_per_call=10)
        for r in rows:
            print(
                f"| {batch} | {r['layer']} | {r['part']} | {r['ms']:.2f} | {r['gflops']:.1f} | "
                f"{100 * r['gflops'] / peak:.0f} % |"
            )
        for name, result in (("1 step/call", step), ("10 steps/call", chunked)):
            ms = 1e3 * batch / result.train_images_per_second
            print(
                f"| {batch} | whole step | {name} | {ms:.2f} | {result.train_gflops_per_second:.1f} | "
                f"{100 * result.train_gflops_per_second / peak:.0f} % |"
            )
        report["batches"].append(
            {
                "batch": batch,
                "layers": rows,
                "step_ms": {
                    "1": 1e3 * batch / step.train_images_per_second,
                    "10": 1e3 * batch / chunked.train_images_per_second,
                },
            }
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
