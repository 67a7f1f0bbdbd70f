"""Running `python -m cnn train` in its own process on the tiny test data (for crash and multi-process
tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# One persistent compilation cache for the whole suite: every test worker, every process a test starts and
# every notebook kernel read and write it (with its size limit set, JAX locks each entry while it is read or
# written, so they may share it). Apart from the user's own cache; kept between test runs, so that a second
# run reads back what the first compiled. `CNN_TEST_COMPILE_CACHE=DIR` moves it (an empty DIR: a cold run).
CACHE = Path(
    os.environ.get("CNN_TEST_COMPILE_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnn" / "jax-tests"
)


# XLA:CPU compiles the tests' programs the quick way, in the test workers and in the processes they start:
# its backend optimisation off, and the older emitters for fused operations instead of the fusion emitters
# (both measured from an empty compilation cache: docs/explanations/performance.md, "The test suite"). The
# tests' programs are tiny and most of a test's time went to compiling them. What the tests check does not
# depend on it: comparisons are between programs compiled alike, or against a tolerance; the two whose
# programs the older emitters round apart compile with XLA's own (tests/test_histories.py,
# tests/engine/test_fast_paths.py). Benchmarks and users compile with XLA's defaults.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def with_test_xla_flags(flags: str = "") -> str:
    """`flags` (an XLA_FLAGS value) with the tests' own flags added, those that `flags` does not set."""
    given = flags.split()
    named = {f.split("=")[0] for f in given}
    return " ".join([*given, *(f for f in TEST_XLA_FLAGS if f.split("=")[0] not in named)])


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FASHION_MNIST_DIR", "XLA_FLAGS")}
    extra["XLA_FLAGS"] = with_test_xla_flags(extra.get("XLA_FLAGS", ""))
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "CNN_COMPILE_CACHE": str(CACHE), **extra}


def train_command(idx_dir: Path, data_dir: Path, workdir: Path, *flags: str, prelude: str = "") -> list[str]:
    """`python -m cnn train` on the tiny data; `prelude` is Python run first (a fault to inject)."""
    args = ["train", "--source-dir", str(idx_dir), "--data-dir", str(data_dir), "--workdir", str(workdir)]
    code = f"{prelude}\nfrom cnn.cli.main import end_process, main\nend_process(main({args + list(flags)!r}))"
    return [sys.executable, "-c", code]


def run_process(command: list[str], timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=subprocess_env(**env), cwd=ROOT
    )


def start_process(command: list[str], **env: str) -> subprocess.Popen:
    """`command` started in the background (output captured as text), for tests that signal it."""
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(**env),
        cwd=ROOT,
    )
