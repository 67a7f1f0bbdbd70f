"""`import cnn` sets glibc's malloc to serve large blocks from its heaps and keep freed memory (XLA:CPU's
buffers are then reused between calls instead of page-faulted afresh); `CNN_MALLOC=default` opts out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
        reason="glibc's malloc only",
    ),
    pytest.mark.slow,  # every test starts a process: the setting acts when a process starts
]

# After `import cnn`: allocates and frees a 64 MiB block through the C library; prints whether the settings
# are in force, whether glibc mapped the block on its own (mmap: counted in mallinfo2's hblks while alive)
# rather than carving it from a heap, and whether the freed memory stayed in the heap.
PROBE = """
import ctypes
import cnn, cnn.engine.host_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblks > before
libc.free(block)
kept = libc.mallinfo2().fordblks >= 64 << 20
print(cnn.engine.host_memory.keep_freed_memory(), mapped, kept)
"""


def _probe(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_keeps_large_blocks_in_the_heap_and_freed_memory_for_reuse():
    done = _probe(CNN_MALLOC="")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "True"]


def test_cnn_malloc_default_leaves_glibc_alone():
    done = _probe(CNN_MALLOC="default")
    assert done.returncode == 0, done.stderr
    # glibc's own settings: a 64 MiB block is mapped by itself and unmapped when freed
    assert done.stdout.split() == ["False", "True", "False"]


def test_unknown_cnn_malloc_value_is_named_with_the_fix():
    done = _probe(CNN_MALLOC="fast")  # a notebook: a warning, and glibc left alone
    assert done.returncode == 0 and done.stdout.split() == ["False", "True", "False"]
    assert "$CNN_MALLOC='fast'" in done.stderr and "use 'keep'" in done.stderr
    for command in (["--help"], ["train", "--epochs", "1"]):  # the CLI: one line, exit 2, before any work
        cli = subprocess.run(
            [sys.executable, "-m", "cnn", *command],
            env={**os.environ, "JAX_PLATFORMS": "cpu", "CNN_MALLOC": "garbage"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 2 and cli.stdout == "", cli.stderr
        assert (
            cli.stderr == "error: $CNN_MALLOC='garbage': use 'keep' (the default) or 'default' (glibc's "
            "own settings), or unset it\n"
        )
