"""JAX's persistent compilation cache, on by default in a per-user folder, so a second identical command
reads its programs back instead of compiling them. Several processes may share the folder: with a size
limit set, JAX takes a file lock around every read and write of an entry (and evicts the least recently
used entries beyond the limit), so no process reads an entry another is still writing.

`CNN_COMPILE_CACHE=off` (or the CLI's `--no-compile-cache`) turns it off; `CNN_COMPILE_CACHE=DIR` moves it;
a cache folder set for JAX itself (`JAX_COMPILATION_CACHE_DIR`, `jax.config`) is left as it is."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ENV_VAR = "CNN_COMPILE_CACHE"
MAX_BYTES = 2 << 30  # the folder's size limit: least recently used programs are evicted beyond it


def default_folder() -> Path:
    """`$XDG_CACHE_HOME/cnn/jax`, else `~/.cache/cnn/jax`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnn" / "jax"


def set_jax_option(name: str, value: bool | int | float | str) -> None:
    """A JAX option set without importing JAX: through `jax.config` once JAX is imported, else as the
    environment variable JAX reads when it is (`JAX_COMPILATION_CACHE_DIR`, ...), which the processes this
    one starts inherit too."""
    if "jax" in sys.modules:
        sys.modules["jax"].config.update(name, value)
    else:
        os.environ[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)


def jax_cache_folder_set() -> bool:
    """Whether a cache folder is set for JAX itself (its environment variable, or `jax.config`)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return True
    return "jax" in sys.modules and bool(sys.modules["jax"].config.jax_compilation_cache_dir)


def use_compile_cache(setting: str | None = None) -> Path | None:
    """Turns the persistent compilation cache on (in `setting`, else `$CNN_COMPILE_CACHE`, else
    `default_folder()`) or off (`'off'`); returns its folder (None: off, or left to a folder set for JAX).
    Must run before the first compilation to take effect for it."""
    value = setting if setting is not None else os.environ.get(ENV_VAR, "")
    if value == "off":
        set_jax_option("jax_enable_compilation_cache", False)
        return None
    if not value and jax_cache_folder_set():  # the user's own JAX setting
        return None
    folder = Path(value).expanduser() if value else default_folder()
    set_jax_option("jax_enable_compilation_cache", True)
    set_jax_option("jax_compilation_cache_dir", str(folder))
    set_jax_option("jax_persistent_cache_min_compile_time_secs", 0)  # small programs too
    set_jax_option("jax_persistent_cache_min_entry_size_bytes", 0)
    set_jax_option("jax_compilation_cache_max_size", MAX_BYTES)  # also what turns the file lock on
    return folder


# ------------------------------------------------------------- measurements remembered beside the cache
def measurements_file(name: str) -> Path | None:
    """`jax-NAME.json` beside the compilation cache's folder: timings measured on this machine (they belong
    to it as its programs do). None when no cache folder is set."""
    import jax

    folder = jax.config.jax_compilation_cache_dir
    return Path(folder).with_name(f"{Path(folder).name}-{name}.json") if folder else None


def this_device() -> str:
    """The first part of a remembered measurement's key: the device and JAX's version it was measured with."""
    import jax

    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind}|jax {jax.__version__}"


def remembered(name: str) -> dict:
    """The measurements of `measurements_file(name)` by key ({} when there are none or the file is unreadable:
    they are measured again)."""
    path = measurements_file(name)
    try:
        found = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def remember(name: str, key: str, value: object) -> None:
    """Adds (or replaces) one entry of `measurements_file(name)`, written whole to a temporary file and
    renamed into place (a reader never sees half a file); a read-only folder just forgets it."""
    path = measurements_file(name)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**remembered(name), key: value}, indent=1))
        tmp.replace(path)
    except OSError:
        pass
