"""Compile ahead: a sweep's next training compiles in the background, is used as it is (the run compiles
nothing itself), changes no number, survives its own failure, skips what the sweep skips, and a stopped
command does not wait for it."""

from __future__ import annotations

import json
import re
import signal
import threading

import jax
import pytest

from cnn import train as train_module
from cnn.cli import main as cli_main
from cnn.cli.main import leave, main
from cnn.errors import Stopped, SweepError
from cnn.studies import ahead as ahead_module
from cnn.studies import sweep as sweep_module
from cnn.studies.ahead import THREAD_NAME, Ahead
from cnn.studies.grid import Variant
from cnn.studies.sweep import run_sweep

BASE = {"model": "mlp", "epochs": 1, "limit_train": 64, "steps_per_call": 1, "tensorboard": False}
VARIANTS = [Variant("bs16", {"batch_size": 16}), Variant("bs32", {"batch_size": 32})]
COMPILED = "/jax/core/compile/backend_compile_duration"  # a program compiled, or read from the disk cache
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def history(folder) -> list[dict]:
    return [{k: h[k] for k in ("epoch", *METRICS)} for h in json.loads((folder / "history.json").read_text())]


def test_the_next_training_compiles_ahead_and_its_run_compiles_nothing(
    tiny_splits, tmp_path, monkeypatch, capsys
):
    run_sweep(BASE, VARIANTS, [0], tiny_splits, tmp_path / "off", together="sequential", compile_ahead="off")
    jax.clear_caches()  # the second sweep compiles (or reads from the disk cache) every program again
    events, starts = [], []

    def record(event: str, duration: float, **_) -> None:
        if event == COMPILED:
            events.append(threading.current_thread().name)

    def fit(config, *args, **kwargs):
        starts.append(len(events))
        return real_fit(config, *args, **kwargs)

    real_fit = sweep_module.fit
    monkeypatch.setattr(sweep_module, "fit", fit)
    jax.monitoring.register_event_duration_secs_listener(record)
    try:
        run_sweep(
            BASE, VARIANTS, [0], tiny_splits, tmp_path / "on", together="sequential", compile_ahead="on"
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(record)
    assert re.search(r"^\[bs32\] \d+ program\(s\) compiled ahead in ", capsys.readouterr().out, re.M)
    assert THREAD_NAME in events[: starts[1]]  # while bs16 trained
    assert "MainThread" not in events[starts[1] :]  # bs32 trained on what was compiled ahead
    results = json.loads((tmp_path / "on" / "bs32" / "seed0" / "results.json").read_text())
    assert results["compilations"] == 0 and results["compile_cache_hits"] == 0
    for name in ("bs16", "bs32"):  # the same numbers, to the last bit
        assert history(tmp_path / "on" / name / "seed0") == history(tmp_path / "off" / name / "seed0")


def test_a_failed_compile_ahead_leaves_the_sweep_as_it_was(tiny_splits, tmp_path, monkeypatch, capsys):
    def fails(*args):
        raise RuntimeError("no memory left for a second program")

    monkeypatch.setattr(ahead_module, "compile_training", fails)
    rows = run_sweep(BASE, VARIANTS, [0], tiny_splits, tmp_path, together="sequential", compile_ahead="on")
    out = capsys.readouterr().out
    assert (
        "[bs32] compiling ahead failed (RuntimeError: no memory left for a second program); compiling it now"
        in out
    )
    assert all(r["seeds_finished"] == 1 and not r["error"] for r in rows)
    assert not list(tmp_path.glob("*/error.json"))


def test_nothing_is_compiled_ahead_for_a_run_the_sweep_skips(tiny_splits, tmp_path, monkeypatch):
    run_sweep(BASE, VARIANTS[1:], [0], tiny_splits, tmp_path, together="sequential", compile_ahead="off")
    compiled = []
    monkeypatch.setattr(ahead_module, "compile_training", lambda configs, *_: compiled.append(configs))
    variants = [VARIANTS[0], VARIANTS[1], Variant("bs8", {"batch_size": 8})]  # bs32 finished before
    run_sweep(BASE, variants, [0], tiny_splits, tmp_path, together="sequential", compile_ahead="on")
    assert [[c.batch_size for c in configs] for configs in compiled] == [[8]]


def test_auto_compiles_ahead_only_with_a_spare_core_and_a_next_training(tiny_splits, monkeypatch):
    from cnn.config import TrainConfig

    two = [[TrainConfig(batch_size=16)], [TrainConfig(batch_size=32)]]
    monkeypatch.setattr(ahead_module.os, "sched_getaffinity", lambda pid: {0, 1})
    assert Ahead(two, tiny_splits, "sequential", "auto").on
    assert not Ahead(two[:1], tiny_splits, "sequential", "auto").on  # a single run: nothing is next
    assert not Ahead(two, tiny_splits, "sequential", "off").on
    monkeypatch.setattr(ahead_module.os, "sched_getaffinity", lambda pid: {0})
    assert not Ahead(two, tiny_splits, "sequential", "auto").on  # one core, and no accelerator
    assert Ahead(two, tiny_splits, "sequential", "on").on


def test_a_bad_setting_is_refused_in_one_line(tiny_splits, tmp_path, capsys):
    with pytest.raises(SweepError, match=r"^--compile-ahead: expected one of auto, on, off, got 'yes'$"):
        run_sweep(BASE, VARIANTS, [0], tiny_splits, tmp_path, compile_ahead="yes")
    assert main(["sweep", "--grid", "lr=[0.1]", "--out", str(tmp_path), "--compile-ahead", "yes"]) == 2
    assert capsys.readouterr().err == "error: --compile-ahead: expected one of auto, on, off, got 'yes'\n"
    assert main(["experiments", "padding", "--compile-ahead", "maybe"]) == 2
    assert capsys.readouterr().err == "error: --compile-ahead: expected one of auto, on, off, got 'maybe'\n"


def test_a_signal_stops_the_sweep_without_waiting_for_the_compile_ahead(tiny_splits, tmp_path, monkeypatch):
    release, run_call, sent = threading.Event(), train_module.run_call, []

    def signalled(*args):  # SIGTERM in the last epoch of the first run, while the second one compiles
        if not sent:
            sent.append(signal.raise_signal(signal.SIGTERM))
        return run_call(*args)

    monkeypatch.setattr(ahead_module, "compile_training", lambda *args: release.wait(60))
    monkeypatch.setattr(train_module, "run_call", signalled)
    try:
        with pytest.raises(Stopped, match="^SIGTERM: stopped before training "):
            run_sweep(BASE, VARIANTS, [0], tiny_splits, tmp_path, together="sequential", compile_ahead="on")
        assert ahead_module.compiling()  # left behind, not waited for
    finally:
        release.set()
    assert (tmp_path / "bs16" / "seed0" / "results.json").is_file() and not (tmp_path / "bs32").exists()


def test_a_stopped_command_does_not_wait_for_a_compile_in_flight(monkeypatch):
    exits = []
    monkeypatch.setattr(cli_main.os, "_exit", exits.append)
    release = threading.Event()
    compiling = threading.Thread(target=release.wait, name=THREAD_NAME)
    compiling.start()
    try:
        with pytest.raises(SystemExit):  # (the real os._exit never returns)
            leave(143)  # the compile is left behind: the process ends at once
    finally:
        release.set()
        compiling.join()
    assert exits == [143]
    with pytest.raises(SystemExit) as e:  # nothing in flight: the interpreter ends as usual
        leave(143)
    assert e.value.code == 143 and exits == [143]
