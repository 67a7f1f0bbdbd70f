"""Command line: `python -m cnn train | summary | bench | viz | sweep | tune | experiments | predict |
evaluate | export`. Parsing only; the logic is in the library."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from cnn.cli import bench, studies, train, use
from cnn.cli.flags import OneLineParser
from cnn.errors import (
    EXIT_BAD_INPUT,
    DiskFull,
    Interrupted,
    PreparationInterrupted,
    exit_code_of,
    out_of_space,
    xla_runtime_error,
)


def parser() -> argparse.ArgumentParser:
    """The whole command line. Building it imports no library (JAX included): `--help` starts at once."""
    top = OneLineParser(prog="python -m cnn", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    train.add(sub)
    use.add_summary(sub)
    bench.add(sub)
    use.add_viz(sub)
    studies.add(sub)
    use.add_predict(sub)
    use.add_evaluate(sub)
    use.add_export(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    """Runs the command and returns its exit status (`cnn.errors.EXIT_CODES`): a bad setting or input exits
    with status 2 and a one-line message, no traceback; a failure while running with its own status."""
    entered = time.time()
    try:
        return run_command(argv)
    finally:
        if "cnn.engine.costs" in sys.modules:  # where the command's time went (`bench --overhead`)
            sys.modules["cnn.engine.costs"].write_report(entered)


def leave(code: int) -> NoReturn:
    """Ends the process with status `code`. A compile still running ahead (a sweep stopped or failed before
    the run it was for, `cnn.studies.ahead`) is not waited for: XLA cannot stop a compile, and Python would
    wait for its thread (or abort it as it returns into a finished interpreter); the output is flushed and
    the process ends at once."""
    ahead = sys.modules.get("cnn.studies.ahead")
    if ahead is not None and ahead.compiling():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def end_process(code: int) -> NoReturn:
    """Ends `python -m cnn` with status `code` as the interpreter would, less its last step: the threads'
    exit functions run and the other threads are waited for, then the exit handlers (logging, temporary
    folders), the output is flushed, and the process ends without tearing down every module it imported
    (most of the interpreter's exit time after a run: docs/explanations/performance.md). Where
    Python lacks `threading._shutdown` or `atexit._run_exitfuncs` (CPython's own), or a compile runs ahead:
    as `leave`."""
    ahead = sys.modules.get("cnn.studies.ahead")
    shutdown = getattr(threading, "_shutdown", None)
    exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or exit_functions is None or (ahead is not None and ahead.compiling()):
        leave(code)
    shutdown()
    exit_functions()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_command(argv: list[str] | None) -> int:
    from cnn.engine.host_memory import setting_error

    if setting_error():  # before anything else, --help included: the environment is wrong for every command
        print(f"error: {setting_error()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line usage error (2), already printed
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT

    def command() -> None:
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if getattr(args, "no_compile_cache", False):
            from cnn.engine.compile_cache import use_compile_cache

            use_compile_cache("off")
        args.run(args)

    return exit_code(command)


def run_script(main: Callable[[], Any]) -> None:
    """Runs an experiment script's `main` as the CLI runs a command: a known failure (bad input, a signal,
    a full disk, ...) is one line on stderr and the CLI's exit code, not a traceback; success returns."""
    code = exit_code(main)
    if code:
        leave(code)


def exit_code(command: Callable[[], Any]) -> int:
    """Runs `command`; its known failures (`cnn.errors.exit_code_of`) printed in one line on stderr and
    turned into exit codes. An unknown error is a bug: its traceback is printed. SIGTERM and SIGINT are
    obeyed at every moment of it (`cnn.runs.signals.command_signals`)."""
    from cnn.runs.signals import command_signals

    try:
        with command_signals():
            command()
    except Exception as e:
        code = exit_code_of(e)
        if code is None:
            raise
        print(one_line(e), file=sys.stderr)
        return code
    return 0


def one_line(error: Exception) -> str:
    """How the command line states a known failure: a signal's own message, else `error: ...` (the path of
    a file that could not be written, or the first line of XLA's message)."""
    if isinstance(error, Interrupted | PreparationInterrupted):
        return str(error)
    if isinstance(error, DiskFull):
        return f"error: {error.strerror}"
    if xla_runtime_error(error):
        return f"error: XLA runtime error: {str(error).strip().splitlines()[0][:300]}"
    if isinstance(error, OSError) and not isinstance(error, ValueError):
        if out_of_space(error):
            return f"error: no space left writing {error.filename or 'a file'}: {error.strerror}"
        return f"error: {error.filename}: {error.strerror or error}; give another path"
    return f"error: {error}"
