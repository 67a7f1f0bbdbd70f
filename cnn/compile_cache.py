"""JAX's persistent compilation cache, on by default in a per-user folder, so a second identical command
reads its programs back instead of compiling them. Several processes may share the folder: with a size
limit set, JAX takes a file lock around every read and write of an entry (and evicts the least recently
used entries beyond the limit), so no process reads an entry another is still writing.

`CNN_COMPILE_CACHE=off` (or the CLI's `--no-compile-cache`) turns it off; `CNN_COMPILE_CACHE=DIR` moves it;
a cache folder set for JAX itself (`JAX_COMPILATION_CACHE_DIR`, `jax.config`) is left as it is."""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV_VAR = "CNN_COMPILE_CACHE"
MAX_BYTES = 2 << 30  # the folder's size limit: least recently used programs are evicted beyond it


def default_folder() -> Path:
    """`$XDG_CACHE_HOME/cnn/jax`, else `~/.cache/cnn/jax`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnn" / "jax"


def use_compile_cache(setting: str | None = None) -> Path | None:
    """Turns the persistent compilation cache on (in `setting`, else `$CNN_COMPILE_CACHE`, else
    `default_folder()`) or off (`'off'`); returns its folder (None: off, or left to a folder set for JAX).
    Must run before the first compilation to take effect for it."""
    value = setting if setting is not None else os.environ.get(ENV_VAR, "")
    if value == "off":
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if not value and jax.config.jax_compilation_cache_dir:  # the user's own JAX setting
        return None
    folder = Path(value).expanduser() if value else default_folder()
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # small programs too: every one counts
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # also what turns the file lock on
    return folder
