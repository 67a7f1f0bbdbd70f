"""How the process's C allocator (glibc's malloc) hands memory to XLA on the CPU.

XLA:CPU allocates every buffer of a compiled call (activations, gradients) with malloc and frees it when the
call ends. With glibc's defaults, blocks above its mmap threshold are mapped afresh on every call and freed
memory is returned to the system, so each training step page-faults much of its working set anew.
`keep_freed_memory` asks glibc to serve allocations from its heaps (`M_MMAP_MAX` 0) and to keep up to
`TRIM_THRESHOLD` bytes of freed memory (`M_TRIM_THRESHOLD`): the in-process form of
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824`. The cost: the process keeps its peak memory
instead of returning it between calls.

A block larger than a thread's heap (64 MiB; XLA's worker threads allocate in heaps of their own) is still
mapped by itself, as in a batch-norm model's unsplit step at batch 256. One arena for all threads
(`M_ARENA_MAX` 1) would cover that case but slows small batches, so it is not set (the figures behind both
choices: README, "Measurements behind the code").

`import cnn` applies it once, on Linux with glibc (elsewhere nothing changes). `CNN_MALLOC=default` in the
environment leaves glibc's settings alone."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys

ENV_VAR = "CNN_MALLOC"
TRIM_THRESHOLD = 1 << 30  # bytes of freed memory at the top of a heap that glibc keeps instead of returning
M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_MAX = -4


def setting_error() -> str | None:
    """What is wrong with `$CNN_MALLOC` (None: unset, 'keep' or 'default'). The CLI refuses to start on it
    (exit 2); `import cnn` elsewhere warns and leaves glibc's settings alone."""
    value = os.environ.get(ENV_VAR, "")
    if value in ("", "keep", "default"):
        return None
    return f"${ENV_VAR}={value!r}: use 'keep' (the default) or 'default' (glibc's own settings), or unset it"


@functools.cache
def keep_freed_memory() -> bool:
    """Sets glibc's malloc to keep freed memory for the next call (see the module's text). Returns whether
    the settings are in force: False where the C library is not glibc or `CNN_MALLOC=default` is set.
    Applied once: later calls return the first answer."""
    value = os.environ.get(ENV_VAR, "")
    if value == "default" or setting_error():  # an unknown value leaves glibc alone (and is reported)
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
