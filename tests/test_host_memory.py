"""`import cnn` sets glibc's malloc to one arena, large blocks served from its heap and freed memory kept
(XLA:CPU's buffers are then reused between calls instead of page-faulted afresh); `CNN_MALLOC=default` opts
out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

# After `import cnn`: runs a convolution on XLA's CPU threads, then allocates and frees a 64 MiB block through
# the C library; prints whether the settings are in force, whether glibc mapped the block on its own (mmap:
# counted in mallinfo2's hblks while alive) rather than carving it from a heap, whether the freed memory
# stayed in the heap, and how many arenas glibc's malloc_info lists.
PROBE = """
import ctypes, os, tempfile
import cnn, cnn.host_memory
import jax, jax.numpy as jnp

nhwc = ("NHWC", "HWIO", "NHWC")
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=nhwc))
conv(jnp.ones((256, 28, 28, 32)), jnp.ones((3, 3, 32, 64))).block_until_ready()

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
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
stream = ctypes.c_void_p(libc.fopen(path.encode(), b"w"))
libc.malloc_info(0, stream)
libc.fclose(stream)
arenas = open(path).read().count("<heap nr=")
os.unlink(path)
print(cnn.host_memory.keep_freed_memory(), mapped, kept, "one_arena" if arenas == 1 else "arenas")
"""


def _probe(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_keeps_large_blocks_in_one_heap_and_freed_memory_for_reuse():
    done = _probe(CNN_MALLOC="")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "True", "one_arena"]


def test_cnn_malloc_default_leaves_glibc_alone():
    done = _probe(CNN_MALLOC="default")
    assert done.returncode == 0, done.stderr
    # glibc's own settings: a 64 MiB block is mapped by itself and unmapped when freed; XLA's threads each
    # get an arena
    assert done.stdout.split() == ["False", "True", "False", "arenas"]


def test_unknown_cnn_malloc_value_is_named_with_the_fix():
    done = _probe(CNN_MALLOC="fast")
    assert done.returncode != 0
    assert "$CNN_MALLOC='fast'" in done.stderr and "use 'keep'" in done.stderr
