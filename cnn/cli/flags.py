"""What the command line's parsers share: argparse with one-line errors, help filled in only when it is
shown (so that building the parser imports no library), and the flags several commands take."""

from __future__ import annotations

import argparse
import errno
import os
from collections.abc import Callable
from pathlib import Path

from cnn.errors import EXIT_BAD_INPUT


class OneLineParser(argparse.ArgumentParser):
    """argparse, its errors one line (`error: ...`, exit 2) like every other refusal of `cnn`. Help that
    needs the library (the registered models, the experiment scripts) is filled in by `late_help` when a
    command's help is shown, not when the parser is built."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.late_help: dict[str, Callable[[], str]] = {}

    def error(self, message: str):
        self.exit(
            EXIT_BAD_INPUT, f"error: {self.prog.removeprefix('python -m cnn ')}: {message} (see --help)\n"
        )

    def format_help(self) -> str:
        for action in self._actions:
            if action.dest in self.late_help:
                action.help = self.late_help[action.dest]()
        return super().format_help()


def data_location_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="tfds data dir (default ~/tensorflow_datasets)")
    parser.add_argument("--source-dir", default=None, help="folder with the four Fashion-MNIST IDX .gz files")


def no_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="compile every program afresh instead of reading JAX's persistent compilation cache "
        "(also CNN_COMPILE_CACHE=off; CNN_COMPILE_CACHE=DIR moves it; see cnn.engine.compile_cache)",
    )


def together_help() -> str:
    from cnn.studies.sweep import TOGETHER

    return (
        f"one of {', '.join(TOGETHER)}: the seeds of a variant (and variants differing only in lr or weight "
        "decay) as one vmapped program (its convolutions grouped, or as batched matmuls), or one after "
        "another (auto: the fastest measured)"
    )


def together_flag(parser: OneLineParser, **kwargs) -> None:
    """`--together MODE` (checked by the command: `cnn.studies.sweep.check_together`)."""
    parser.add_argument("--together", metavar="MODE", **kwargs)
    parser.late_help["together"] = together_help


def compile_ahead_help() -> str:
    from cnn.studies.ahead import SETTINGS

    return (
        f"one of {', '.join(SETTINGS)}: while a run trains, compile the next one's programs in a background "
        "thread (auto: where a second core or an accelerator is there to do it)"
    )


def compile_ahead_flag(parser: OneLineParser, **kwargs) -> None:
    """`--compile-ahead MODE` (checked by the command: `cnn.studies.ahead.check_compile_ahead`)."""
    parser.add_argument("--compile-ahead", metavar="MODE", **kwargs)
    parser.late_help["compile_ahead"] = compile_ahead_help


def make_parent(path: Path) -> None:
    """The folder of `path`, created; a parent that is a file is named as the path's error."""
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
