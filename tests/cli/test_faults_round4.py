"""Faults of round 4: a signal obeyed at every moment of a sweep, a study and a run; a progress bar that
counts finished work; no output written over a run's own files or an existing file; a read-only checkpoints
folder ends the process; two sweeps on one folder; a class left without images."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from cnn import train as train_module
from cnn.cli.main import main
from cnn.runs import signals as signals_module
from cnn.studies import sweep as sweep_module

SWEEP = ["sweep", "--grid", "lr=[0.001,0.002]", "--seeds", "1", "--together", "sequential"]
BASE = ["--base", '{"epochs": 1, "limit_train": 128, "batch_size": 32}']


def _data(idx_dir: Path, prepared: Path) -> list[str]:
    return ["--source-dir", str(idx_dir), "--data-dir", str(prepared)]


def _signal_once(sig: int, then=None):
    """A function that raises `sig` in this process the first time it is called, then calls `then`."""
    sent = []

    def hook(*args, **kwargs):
        if not sent:
            sent.append(sig)
            signal.raise_signal(sig)
        return then(*args, **kwargs) if then is not None else None

    return hook


def _stopped(capsys, code: int, rc: int, words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert err.count("\n") == 0 and words in err and "run the same command again" in err, err
    return err


# ------------------------------------------------------------------------------------------- 1 signals
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_in_the_last_epoch_of_a_sweeps_run_starts_no_further_run(
    idx_dir, prepared, tmp_path, monkeypatch, capsys, sig, code
):
    monkeypatch.setattr(train_module, "run_call", _signal_once(sig, train_module.run_call))
    out = tmp_path / "s"
    rc = main([*SWEEP, *BASE, *_data(idx_dir, prepared), "--out", str(out)])
    _stopped(capsys, code, rc, "the run before it finished and saved")
    assert (out / "lr=0.001" / "seed0" / "results.json").is_file()  # the run it came in finished
    assert not (out / "lr=0.002").exists()  # and no further run started
    assert signals_module.STOP["command"] is False and signal.getsignal(sig) is not signals_module._request


@pytest.mark.parametrize(
    "moment",
    ["preparing the data", "between runs", "writing the tables"],
)
def test_a_signal_at_any_other_moment_of_a_sweep_stops_it_at_once(
    idx_dir, prepared, tmp_path, monkeypatch, capsys, moment
):
    if moment == "preparing the data":
        hook = _signal_once(signal.SIGINT, sweep_module.load_dataset)
        monkeypatch.setattr(sweep_module, "load_dataset", hook)
    elif moment == "between runs":
        fit, calls = sweep_module.fit, []

        def second_run(*args, **kwargs):
            calls.append(args)
            if len(calls) == 2:
                signal.raise_signal(signal.SIGINT)
            return fit(*args, **kwargs)

        monkeypatch.setattr(sweep_module, "fit", second_run)
    else:
        hook = _signal_once(signal.SIGINT, sweep_module.write_tables)
        monkeypatch.setattr(sweep_module, "write_tables", hook)
    out = tmp_path / "s"
    rc = main([*SWEEP, *BASE, *_data(idx_dir, prepared), "--out", str(out)])
    _stopped(capsys, 130, rc, "SIGINT: stopped at once (no epoch was training)")
    trained = sorted(p.parent.parent.name for p in out.glob("*/seed0/results.json"))
    assert trained == {"preparing the data": [], "between runs": ["lr=0.001"]}.get(
        moment, ["lr=0.001", "lr=0.002"]
    )
    assert not (out / "results.md").exists() and not list(out.glob("*.tmp*"))  # no table, no half of one
    assert not list(out.glob("*/error.json"))  # a signal is no failure of a run


def test_a_signal_in_the_last_epoch_of_a_single_run_ends_with_its_code_after_saving(
    idx_dir, prepared, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(train_module, "run_call", _signal_once(signal.SIGTERM, train_module.run_call))
    workdir = tmp_path / "run"
    args = ["train", *_data(idx_dir, prepared), "--workdir", str(workdir), "--epochs", "1"]
    args += ["--limit-train", "64"]
    rc = main(args)
    _stopped(capsys, 143, rc, "after the work in progress finished and was saved")
    assert (workdir / "results.json").is_file()
    assert main(args) == 0  # the same command again: nothing left to do, and no request left standing


def test_a_signal_in_a_trials_last_epoch_starts_no_further_trial(
    idx_dir, prepared, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(train_module, "run_call", _signal_once(signal.SIGTERM, train_module.run_call))
    out = tmp_path / "study"
    args = ["tune", *_data(idx_dir, prepared), "--out", str(out)]
    args += ["--base", '{"epochs": 1, "limit_train": 64}']
    rc = main([*args, "--space", "lr=loguniform(1e-4,1e-2)", "--trials", "3", "--pruner", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 143 and err.startswith("SIGTERM: stopped the study in") and err.count("\n") == 0, err
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-0000"]
    assert (out / "trial-0000" / "results.json").is_file()


# ------------------------------------------------------------------------------------- 6 data sets
def test_a_class_left_without_images_by_skip_bad_images_is_refused_naming_it(tmp_path):
    import numpy as np
    from PIL import Image

    from cnn import TrainConfig, load_dataset
    from cnn.errors import DataError

    root = tmp_path / "photos"
    for name in ("cat", "dog", "emu"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / name / f"{i}.png")
    for path in (root / "emu").iterdir():
        path.write_bytes(b"not an image")
    config = TrainConfig(dataset=str(root), skip_bad_images=True)
    with pytest.raises(DataError, match=r"class folder .*emu has no readable image left after --skip-bad"):
        load_dataset(config, data_dir=tmp_path / "tfds")
    assert not any((tmp_path / "tfds").rglob("*.array_record*"))


# ------------------------------------------------------------------------- 4 a read-only checkpoints folder
@pytest.fixture
def read_only(tmp_path):
    """Makes a folder read-only for this process (chattr +i as root, chmod 555 otherwise); undone after."""
    import os
    import subprocess

    made = []

    def make(folder: Path) -> None:
        if os.geteuid() == 0:
            try:
                subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
            except (OSError, subprocess.CalledProcessError):
                pytest.skip("root, and no chattr +i on this file system: nothing is read-only to root")
        else:
            folder.chmod(0o555)
        made.append(folder)

    yield make
    for folder in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)
        folder.chmod(0o755)


def test_a_save_refused_by_the_folder_ends_in_one_error_and_leaves_no_thread_waiting(tmp_path, read_only):
    import contextlib
    import threading

    import numpy as np

    from cnn.errors import WorkdirError
    from cnn.runs.checkpoints import Checkpoints

    checkpoints = Checkpoints(tmp_path / "checkpoints")
    state = {"w": np.zeros(4, np.float32)}
    checkpoints.save(1, state, {"epoch": 1}, 0.5)
    checkpoints.wait()
    read_only(tmp_path / "checkpoints")
    with pytest.raises(WorkdirError, match=r"checkpoints: cannot write .*make .*checkpoints writable"):
        checkpoints.save(2, state, {"epoch": 2}, 0.4)
        checkpoints.close()
    waiting = [t for t in threading.enumerate() if type(t).__name__ == "_SignalingThread"]
    for thread in waiting:
        with contextlib.suppress(Exception):  # orbax's join raises what the thread raised (cancelled, ...)
            thread.join(timeout=10)
    assert not [t for t in waiting if t.is_alive()]  # else the process would never end


def test_resuming_into_a_read_only_checkpoints_folder_is_refused_before_training(
    idx_dir, prepared, tmp_path, read_only, capsys
):
    workdir = tmp_path / "run"
    args = ["train", *_data(idx_dir, prepared), "--workdir", str(workdir), "--limit-train", "64"]
    assert main([*args, "--epochs", "1"]) == 0
    read_only(workdir / "checkpoints")
    capsys.readouterr()
    assert main([*args, "--epochs", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: checkpoints: cannot write in {workdir / 'checkpoints'}")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.out + captured.err
    assert "Epoch 2/2" not in captured.out  # refused before training


# ------------------------------------------------------------------------------------- 2 the progress bar
@pytest.mark.slow
def test_on_a_terminal_the_bar_and_the_epoch_line_tell_the_same_rate(idx_dir, prepared, tmp_path):
    """`python -m cnn train` under a pseudo-terminal (where tqdm draws its bar): no rate the bar shows is
    more than 3x the epoch line's (a bar counting dispatched calls showed 85x), its last is within 3x of it,
    and its step count only grows."""
    import fcntl
    import os
    import pty
    import re
    import struct
    import subprocess
    import termios

    from tests.processes import ROOT, subprocess_env, train_command

    command = train_command(idx_dir, prepared, tmp_path / "run", "--epochs", "2", "--batch-size", "4",
                            "--steps-per-call", "1", "--no-tensorboard")  # fmt: skip
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a width to draw in
    process = subprocess.Popen(
        command, stdin=follower, stdout=follower, stderr=follower, env=subprocess_env(), cwd=ROOT
    )
    os.close(follower)
    chunks = []
    try:
        while data := os.read(leader, 65536):
            chunks.append(data)
    except OSError:  # the terminal closed with the process
        pass
    finally:
        os.close(leader)
        assert process.wait(timeout=240) == 0, b"".join(chunks)[-2000:]
    out = b"".join(chunks).decode(errors="replace")
    lines = [re.search(r"\((\d+) img/s\)", line) for line in out.splitlines() if line.startswith("Epoch ")]
    epoch_rates = [int(m.group(1)) for m in lines if m]
    for epoch, rate in zip((1, 2), epoch_rates, strict=True):
        draws = re.findall(rf"Epoch {epoch}/2:[^\r\n]*?(\d+)/120 [^\r\n]*?img_s=(\d+)", out)
        assert draws, f"no bar drawn in epoch {epoch}: {out[-1500:]!r}"
        steps = [int(done) for done, _ in draws]
        assert steps == sorted(steps)
        assert all(int(bar) <= 3 * rate for _, bar in draws), (rate, draws)  # never ahead of the work
        assert int(draws[-1][1]) >= rate / 3, (rate, draws)  # and at the end, the epoch line's rate


def test_the_bar_counts_finished_calls_with_the_next_one_queued(tiny_splits, tmp_path, monkeypatch):
    import jax

    from cnn import TrainConfig, fit

    events: list[tuple] = []

    class Bar:
        disable, n = False, 0

        def __init__(self, total, **kwargs):
            self.total = total

        def set_postfix(self, **values):
            self.rate = float(values["img_s"])

        def update(self, steps):
            self.n += steps
            events.append(("bar", self.n, self.rate))

        def close(self):
            pass

    dispatch, wait = train_module.run_call, jax.block_until_ready

    def run_call(*args):
        out = dispatch(*args)
        events.append(("dispatched", id(out[1])))
        return out

    def block_until_ready(tree):
        events.append(("waited", id(tree)))
        return wait(tree)

    monkeypatch.setattr(train_module, "tqdm", Bar)
    monkeypatch.setattr(train_module, "run_call", run_call)
    monkeypatch.setattr(jax, "block_until_ready", block_until_ready)
    config = TrainConfig(epochs=1, limit_train=128, batch_size=32, steps_per_call=1, tensorboard=False)
    results = fit(config, tiny_splits, tmp_path / "run")
    calls = [e[1] for e in events if e[0] == "dispatched"]
    bars = [e for e in events if e[0] == "bar"]
    assert len(calls) == 4 and [b[1] for b in bars] == [1, 2, 3, 4]
    for k, bar in enumerate(bars[:-1]):
        at = events.index(bar)
        assert events.index(("dispatched", calls[k + 1])) < events.index(("waited", calls[k])) < at
    rate, line = bars[-1][2], results["images_per_second"]
    assert 0.5 < rate / line < 2, (rate, line)  # the bar's rate is the epoch line's, not the dispatch rate


# ------------------------------------------------------------------------ 5 two sweeps on one folder
def test_a_run_another_process_trains_is_waited_for_and_taken_as_finished(
    tiny_splits, tmp_path, monkeypatch, capsys
):
    import threading

    from cnn import TrainConfig, fit
    from cnn.runs import lock
    from cnn.studies import sweep as sweep_module
    from cnn.studies.grid import Variant
    from cnn.studies.sweep import run_sweep

    base = {"epochs": 1, "limit_train": 128, "batch_size": 32, "tensorboard": False}
    variants = [Variant("a", {"lr": 0.001}), Variant("b", {"lr": 0.002})]
    holder = {**lock._me(), "pid": 1}  # the lock reads as another live process's (PID 1)
    monkeypatch.setattr(lock, "_me", lambda: holder)
    workdir = tmp_path / "a" / "seed0"
    # The other run holds its lock until the sweep has found it busy (its epoch end waits a second after
    # the sweep starts waiting), however fast its one epoch trains.
    found_busy, real_wait = threading.Event(), sweep_module.wait_while_busy

    def waits(folder, *args, **kwargs):
        threading.Timer(1.0, found_busy.set).start()
        return real_wait(folder, 0.2)

    monkeypatch.setattr(sweep_module, "wait_while_busy", waits)
    config = TrainConfig(**base, lr=0.001, seed=0)
    other = threading.Thread(
        target=fit, args=(config, tiny_splits, workdir, False, lambda *_: found_busy.wait(60))
    )
    other.start()
    while not (workdir / lock.LOCK_FILE).exists():  # the other process holds the run first
        pass
    rows = run_sweep(base, variants, [0], tiny_splits, tmp_path, together="sequential")
    other.join()
    out = capsys.readouterr().out
    assert "is in use by another run (PID 1 on" in out and "waiting for it" in out
    assert "[a] seed 0: finished by another process; taken as it is" in out
    assert [r["seeds_finished"] for r in rows] == [1, 1] and not any(r["error"] for r in rows)
    assert not list(tmp_path.glob("*/error.json"))


def test_a_rerun_clears_the_error_of_a_variant_whose_runs_all_finished(tiny_splits, tmp_path, capsys):
    from cnn.studies.grid import Variant
    from cnn.studies.sweep import check_finished, run_sweep

    base = {"epochs": 1, "limit_train": 128, "batch_size": 32, "tensorboard": False}
    variants = [Variant("a", {"lr": 0.001})]
    run_sweep(base, variants, [0], tiny_splits, tmp_path)
    stale = {"error": "WorkdirBusy: workdir is in use by another run (PID 99999 on here)", "traceback": ""}
    (tmp_path / "a" / "error.json").write_text(json.dumps(stale))
    rows = run_sweep(base, variants, [0], tiny_splits, tmp_path)
    assert not (tmp_path / "a" / "error.json").exists() and rows[0]["error"] == ""
    check_finished(rows, variants)  # no RunsFailed
    assert "(failed)" not in (tmp_path / "results.md").read_text()


# --------------------------------------------------------------- 3 nothing written over what must be kept
@pytest.fixture(scope="module")
def finished_run(idx_dir, prepared, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("finished") / "run"
    args = ["train", *_data(idx_dir, prepared), "--workdir", str(workdir), "--epochs", "1"]
    assert main([*args, "--limit-train", "64", "--no-tensorboard"]) == 0
    return workdir


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (["export", "--workdir", "{run}", "--out", "{run}/config.json"], "is config.json of the run in"),
        (
            ["export", "--workdir", "{run}", "--out", "{run}/checkpoints/m.jaxexport"],
            "is checkpoints/m.jaxexport",
        ),
        (["export", "--workdir", "{run}", "--out", "{run}"], "is the run folder"),
        (["summary", "--plot", "{run}/curves.png"], "is curves.png of the run in"),
        (["viz", "--workdir", "{run}", "--out", "{run}"], "is the run folder"),
        (["evaluate", "--workdir", "{run}", "--out", "{run}/checkpoints"], "is checkpoints of the run in"),
        (["sweep", "--grid", "lr=[0.01]", "--out", "{run}"], "is the run folder"),
        (["tune", "--space", "lr=loguniform(1e-4,1e-2)", "--out", "{run}/events"], "is events of the run in"),
    ],
)
def test_no_command_writes_over_a_runs_own_files(finished_run, capsys, command, words):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    rc = main([c.replace("{run}", str(finished_run)) for c in command])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and words in err and "outside the run's own files" in err, err
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before


def test_export_and_a_plot_replace_an_existing_file_only_with_force(finished_run, tmp_path, capsys):
    out = tmp_path / "model.jaxexport"
    out.write_bytes(b"mine")
    export = ["export", "--workdir", str(finished_run), "--out", str(out)]
    assert main(export) == 2 and out.read_bytes() == b"mine"
    assert "model.jaxexport exists; pass --force to replace it" in capsys.readouterr().err
    assert main([*export, "--force"]) == 0 and out.read_bytes() != b"mine"
    assert json.loads((tmp_path / "model.jaxexport.json").read_text())["model"] == "seed_cnn"
    plot = tmp_path / "net.png"
    plot.write_bytes(b"mine")
    assert main(["summary", "--plot", str(plot)]) == 2 and plot.read_bytes() == b"mine"
    assert main(["summary", "--plot", str(plot), "--force"]) == 0 and plot.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.jaxexport",
        "model.jaxexport.json",
        "net.png",
    ]


def test_viz_and_evaluate_write_into_a_folder_holding_files_only_with_force(
    finished_run, idx_dir, prepared, tmp_path, capsys
):
    out = tmp_path / "pictures"
    out.mkdir()
    (out / "confusion.png").write_bytes(b"mine")
    data = _data(idx_dir, prepared)
    for command in ("viz", "evaluate"):
        assert main([command, "--workdir", str(finished_run), "--out", str(out), *data]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "already holds files" in err and "--force" in err, err
        assert sorted(p.name for p in out.iterdir()) == ["confusion.png"]  # nothing written
    assert main(["evaluate", "--workdir", str(finished_run), "--out", str(out), "--force", *data]) == 0
    assert len(list(out.iterdir())) > 1
    assert main(["evaluate", "--workdir", str(finished_run), *data]) == 0  # the run's own eval/: no flag
    assert main(["evaluate", "--workdir", str(finished_run), *data]) == 0


def test_a_config_json_that_is_not_utf8_is_named_with_the_fix(
    finished_run, idx_dir, prepared, tmp_path, capsys
):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    (workdir / "config.json").write_bytes(b"\xe4\x00binary program")
    args = [
        "train",
        *_data(idx_dir, prepared),
        "--workdir",
        str(workdir),
        "--epochs",
        "1",
        "--limit-train",
        "64",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {workdir / 'config.json'} is unreadable (UnicodeDecodeError: ")
        and err.count("\n") == 1
    )
    assert "restore it from a backup" in err
    assert main(["predict", "--workdir", str(workdir), str(tmp_path)]) == 2
    assert f"{workdir / 'config.json'} is unreadable" in capsys.readouterr().err
