"""Run folders written by the code of the commit before the packages moved (`BEFORE`: a finished run, a run
stopped after its first epoch, a sweep and a tune study) open, resume, evaluate and continue with this
code. The earlier code runs in its own process, from this checkout's git history, on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnn.cli.main import main
from cnn.runs.results import restore_run
from tests.processes import subprocess_env
from tests.test_histories import unpack

BEFORE = "def9b17"  # the last commit with cnn/ as 41 modules side by side
TINY = ["--limit-train", "128", "--batch-size", "32", "--steps-per-call", "1"]
SWEEP = ["sweep", "--grid", "lr=[0.001,0.003]", "--seeds", "1", "--together", "sequential"]
TUNE = ["tune", "--space", "lr=loguniform(1e-4,3e-3)", "--seed", "0", "--pruner", "none"]


def data_args(idx_dir: Path, data_dir: Path) -> list[str]:
    return ["--source-dir", str(idx_dir), "--data-dir", str(data_dir)]


def old_commands(idx_dir: Path, data_dir: Path, out: Path) -> list[list[str]]:
    data = data_args(idx_dir, data_dir)
    base = json.dumps({"epochs": 1, "limit_train": 128, "steps_per_call": 1})
    return [
        ["train", *data, *TINY, "--epochs", "1", "--workdir", str(out / "finished")],
        ["train", *data, *TINY, "--epochs", "1", "--workdir", str(out / "unfinished")],
        [*SWEEP, "--base", base, "--out", str(out / "sweep"), *data],
        [*TUNE, "--trials", "2", "--base", base, "--out", str(out / "study"), *data],
    ]


@pytest.fixture(scope="module")
def old_runs(idx_dir, tmp_path_factory) -> Path:
    """The four folders, written by the code of `BEFORE` in one process."""
    root = tmp_path_factory.mktemp("old-runs")
    code = unpack(BEFORE, root / "code")
    commands = old_commands(idx_dir, root / "tfds", root / "runs")
    script = f"from cnn.cli import main\nfor argv in {commands!r}:\n    assert main(argv) == 0, argv\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=root,
        env=subprocess_env(PYTHONPATH=str(code)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.slow
def test_runs_of_the_earlier_layout_open_resume_evaluate_and_continue(old_runs, idx_dir, capsys):
    runs, data = old_runs / "runs", data_args(idx_dir, old_runs / "tfds")
    config, state, _ = restore_run(runs / "finished")  # a finished run opens
    assert config.epochs == 1 and state.params
    assert main(["evaluate", "--workdir", str(runs / "finished"), *data]) == 0
    assert "accuracy" in capsys.readouterr().out
    # a run stopped after its first epoch resumes where it stopped
    assert main(["train", *data, *TINY, "--epochs", "2", "--workdir", str(runs / "unfinished")]) == 0
    assert "Resuming" in capsys.readouterr().out
    history = json.loads((runs / "unfinished" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    # the sweep's finished runs are reused, not trained again; its tables are written anew
    base = json.dumps({"epochs": 1, "limit_train": 128, "steps_per_call": 1})
    assert main([*SWEEP, "--base", base, "--out", str(runs / "sweep"), *data]) == 0
    assert capsys.readouterr().out.count("finished before: skipped") == 2
    rows = json.loads((runs / "sweep" / "results.json").read_text())
    assert [r["seeds_finished"] for r in rows] == [1, 1]
    # the study continues: its two trials count, a third is added
    assert main([*TUNE, "--trials", "3", "--base", base, "--out", str(runs / "study"), *data]) == 0
    assert len(list((runs / "study").glob("trial-*"))) == 3
    table = (runs / "study" / "trials.md").read_text().strip().splitlines()[2:]
    assert len(table) == 3 and all("| complete |" in row for row in table)
