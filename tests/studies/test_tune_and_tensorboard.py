"""Researchers' tooling: TensorBoard event files for every run (tensorboardX, read back without
TensorBoard), continued without duplicates on resume, hparams for the HParams view, off with
--no-tensorboard."""

from __future__ import annotations

import json
import sys

import pytest

from cnn import TrainConfig, fit
from cnn.cli.main import main
from cnn.runs.events import EventLog, read_events

TAGS = {"loss/train": "loss", "loss/validation": "val_loss", "accuracy/train": "accuracy"}


def history_of(workdir):
    return json.loads((workdir / "history.json").read_text())


def test_every_epoch_and_the_results_are_in_the_event_files(tiny_splits, tmp_path):
    config = TrainConfig(epochs=2, limit_train=128, schedule="cosine")
    results = fit(config, tiny_splits, tmp_path / "run")
    scalars, history = read_events(tmp_path / "run" / "events"), history_of(tmp_path / "run")
    for tag, key in TAGS.items():
        assert [step for step, _ in scalars[tag]] == [1, 2]
        assert [v for _, v in scalars[tag]] == pytest.approx([h[key] for h in history], rel=1e-6)
    lr = dict(scalars["learning_rate"])
    assert lr[2] == pytest.approx(0.0, abs=1e-9) and 0 < lr[1] < config.lr  # cosine: half-way, then zero
    assert all(v > 0 for _, v in scalars["images_per_second"])
    hparams = read_events(tmp_path / "run" / "events" / "hparams")
    assert hparams["hparam/test_accuracy"][0][1] == pytest.approx(results["test_accuracy"], rel=1e-6)
    raw = b"".join(p.read_bytes() for p in (tmp_path / "run" / "events" / "hparams").iterdir())
    assert b"batch_size" in raw and b"model_args" in raw  # the config, as hparams


def test_a_resumed_run_continues_its_log_without_duplicates(tiny_splits, tmp_path):
    run = tmp_path / "run"
    fit(TrainConfig(epochs=2, limit_train=128), tiny_splits, run)
    stale = EventLog(run)  # what a process killed after logging epoch 3 but before its checkpoint leaves
    stale.epoch({"epoch": 3, "loss": 99.0, "val_loss": 99.0, "accuracy": 0.0})
    stale.close()
    fit(TrainConfig(epochs=3, limit_train=128), tiny_splits, run)
    scalars = read_events(run / "events")
    assert [step for step, _ in scalars["loss/train"]] == [1, 2, 3]
    assert [v for _, v in scalars["loss/train"]] == pytest.approx([h["loss"] for h in history_of(run)])


def test_no_tensorboard_writes_no_events(idx_dir, tmp_path):
    args = ["train", "--source-dir", str(idx_dir), "--data-dir", str(tmp_path / "tfds"), "--epochs", "1"]
    args += ["--limit-train", "64", "--no-tensorboard", "--workdir", str(tmp_path / "run")]
    assert main(args) == 0
    assert (tmp_path / "run" / "results.json").is_file() and not (tmp_path / "run" / "events").exists()


def test_seeds_trained_together_each_have_their_own_log(tiny_splits, tmp_path):
    from cnn.train import fit_seeds

    fit_seeds(TrainConfig(epochs=1, limit_train=64), [0, 1], tiny_splits, tmp_path)
    for seed in (0, 1):
        scalars = read_events(tmp_path / f"seed{seed}" / "events")
        assert scalars["loss/train"][0][1] == pytest.approx(history_of(tmp_path / f"seed{seed}")[0]["loss"])


# ------------------------------------------------------------------------------------------------ tune
def tune_args(idx_dir, tmp_path, *flags):
    data = ["--source-dir", str(idx_dir), "--data-dir", str(tmp_path / "tfds")]
    base = ["--base", '{"epochs": 3, "limit_train": 96}']
    return ["tune", *data, *base, "--out", str(tmp_path / "study"), *flags]


def test_a_study_of_trials_each_a_run_with_pruning_a_table_and_plots(idx_dir, tmp_path, capsys):
    space = ["--space", "lr=loguniform(1e-4,3e-3)", "--space", "batch_size=choice(16,32)"]
    assert main(tune_args(idx_dir, tmp_path, *space, "--trials", "4", "--seed", "0")) == 0
    out = tmp_path / "study"
    rows = (out / "trials.md").read_text().strip().splitlines()[2:]
    assert len(rows) == 4 and all(("| complete |" in r) or ("| pruned |" in r) for r in rows)
    assert (out / "optimization_history.png").stat().st_size > 5000 and (out / "study.journal").is_file()
    for trial in sorted(out.glob("trial-*")):  # normal run folders, each with its event log
        assert (trial / "config.json").is_file() and (trial / "events").is_dir()
    assert "Best trial" in capsys.readouterr().out
    # the same command again joins the study: it already holds its 4 trials, so nothing more runs
    assert main(tune_args(idx_dir, tmp_path, *space, "--trials", "4")) == 0
    assert len(list(out.glob("trial-*"))) == 4


def test_a_study_whose_every_trial_failed_exits_non_zero(idx_dir, tmp_path, capsys):
    from cnn.errors import EXIT_RUNS_FAILED

    space = ["--space", "lr=loguniform(1e29,1e30)", "--trials", "2", "--pruner", "none"]
    assert main(tune_args(idx_dir, tmp_path, *space)) == EXIT_RUNS_FAILED
    captured = capsys.readouterr()
    assert "every trial of the study failed (2)" in captured.err and captured.err.count("\n") == 1
    assert "Trial 1 failed: training diverged" in captured.out and "[I " not in captured.out + captured.err
    assert (tmp_path / "study" / "trials.md").is_file()  # the report is still written


def test_a_damaged_journal_is_named_and_left_as_it_was(idx_dir, tmp_path, capsys):
    journal = tmp_path / "study" / "study.journal"
    journal.parent.mkdir()
    journal.write_text('{"op_code": 0, "worker_id": "a"}\nnot json at all\n')
    before = journal.read_bytes()
    args = tune_args(idx_dir, tmp_path, "--space", "lr=loguniform(1e-4,3e-3)", "--trials", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {journal}: line 2 is not an Optuna journal record (the file is damaged, or not a journal); "
        "nothing was written to it: move it away or give another --out\n"
    )
    assert journal.read_bytes() == before and not (tmp_path / "tfds").exists()  # before the data is read


@pytest.mark.slow
def test_several_workers_share_one_study_through_its_journal(idx_dir, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    args = tune_args(idx_dir, tmp_path, "--space", "lr=loguniform(1e-4,3e-3)", "--trials", "4")
    assert main([*args, "--workers", "2", "--seed", "1", "--pruner", "none"]) == 0
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study" / "study.journal")))
    trials = optuna.load_study(study_name="cnn", storage=storage).trials
    assert 4 <= len(trials) <= 5  # two workers may each start one while the 4th is running
    assert len({t.params["lr"] for t in trials}) == len(trials)  # each worker samples its own points
    assert all(t.state.name == "COMPLETE" for t in trials)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("lr", "expected FIELD=KIND(ARGS)"),
        ("lr=gauss(0,1)", "unknown kind 'gauss'"),
        ("lr=loguniform(0,1)", "needs LOW > 0"),
        ("lr=uniform(1,0)", "two finite numbers LOW < HIGH"),
        ("batch_size=choice()", "at least one value"),
        ("batch_size=choice(32.5)", "batch_size: 32.5 is a float, expected int"),
        ("learning_rate=uniform(0,1)", "learning_rate: unknown field"),
        ("model_args.dropout_rate=uniform(0.5,1.5)", "dropout_rate must be a number in [0, 1)"),
    ],
)
def test_bad_search_spaces_are_refused_before_any_work(idx_dir, tmp_path, capsys, space, message):
    assert main(tune_args(idx_dir, tmp_path, "--space", space)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "study").exists()


@pytest.mark.slow
def test_a_first_run_prints_only_progress_and_never_imports_tensorflow(idx_dir, tmp_path):
    """On a fresh data dir: no tfds/absl warning, no tfds size line; every line progress or results."""
    from tests.processes import run_process

    args = ["train", "--source-dir", str(idx_dir), "--data-dir", str(tmp_path / "tfds"), "--epochs", "1"]
    args += ["--limit-train", "64", "--workdir", str(tmp_path / "run")]
    code = (
        f"import sys\nfrom cnn.cli.main import main\ncode = main({args!r})\n"
        "print('tensorflow imported:', 'tensorflow' in sys.modules)\nsys.exit(code)"
    )
    done = run_process([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    assert "tensorflow imported: False" in text
    for noise in ("WARNING", "dataset_info.json", "Downloading and preparing", "Traceback"):
        assert noise not in text, text
    assert "Preparing Fashion-MNIST" in text and "Best epoch 1" in text


@pytest.mark.slow
def test_a_killed_workers_trial_is_marked_failed_and_tried_again(idx_dir, tmp_path):
    import signal
    import subprocess
    import time

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tests.processes import ROOT, subprocess_env

    slow = tune_args(idx_dir, tmp_path, "--space", "lr=loguniform(1e-4,3e-3)", "--trials", "2")
    slow[slow.index("--base") + 1] = '{"epochs": 200, "limit_train": 96}'  # still running when killed
    worker = subprocess.Popen(
        [sys.executable, "-m", "cnn", *slow, "--pruner", "none"], env=subprocess_env(), cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    journal = tmp_path / "study" / "study.journal"
    deadline = time.time() + 120
    while not list((tmp_path / "study").glob("trial-0000/history.json")) and time.time() < deadline:
        time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert main(tune_args(idx_dir, tmp_path, "--space", "lr=loguniform(1e-4,3e-3)", "--trials", "2")) == 0
    study = optuna.load_study(study_name="cnn", storage=JournalStorage(JournalFileBackend(str(journal))))
    states = {t.number: t.state.name for t in study.trials}
    assert states[0] == "FAIL" and list(states.values()).count("COMPLETE") == 2  # the lost one not counted
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert retry and retry[0].params == study.trials[0].params  # the lost point is tried again


def test_a_pruned_trial_stops_after_the_epoch_it_was_pruned_at(tiny_splits, tmp_path):
    import optuna

    from cnn.studies.space import parse_dimension
    from cnn.studies.tune import objective

    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))  # prunes every trial
    base = {"epochs": 4, "limit_train": 96}
    study.optimize(objective(base, [parse_dimension("lr=loguniform(1e-4,1e-3)")], tiny_splits, tmp_path), 1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    history = json.loads((tmp_path / "trial-0000" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]  # stopped there; the folder stays a resumable run


def finished_study(out, name="cnn"):
    """A journal in `out` holding study `name` with one finished trial, written without training."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    study = optuna.create_study(study_name=name, storage=storage)
    trial = optuna.trial.create_trial(
        params={"lr": 1e-3},
        distributions={"lr": FloatDistribution(1e-4, 3e-3, log=True)},
        value=0.5,
        user_attrs={"test_accuracy": 0.8},
    )
    study.add_trial(trial)
    return out / "study.journal"


def test_a_rerun_of_a_finished_study_prints_none_of_optunas_log_lines(idx_dir, tmp_path, capfd):
    import optuna

    finished_study(tmp_path / "study")
    optuna.logging.set_verbosity(optuna.logging.INFO)  # as in a fresh process: the command must quiet it
    capfd.readouterr()
    assert main(tune_args(idx_dir, tmp_path, "--space", "lr=loguniform(1e-4,3e-3)", "--trials", "1")) == 0
    out, err = capfd.readouterr()  # file descriptors: Optuna's log handler holds the original stderr
    assert "Best trial 0: val_loss 0.5000" in out
    assert "Using an existing study" not in out + err and "[I " not in out + err and "[W " not in out + err


def test_a_second_study_into_the_folder_of_another_is_refused_before_any_work(idx_dir, tmp_path, capsys):
    journal = finished_study(tmp_path / "study", name="first")
    before = journal.read_bytes()
    args = tune_args(idx_dir, tmp_path, "--space", "lr=loguniform(1e-4,3e-3)", "--study", "second")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --out {tmp_path / 'study'} holds the study 'first' (its journal, trial folders and "
        "trials.md); study 'second' needs a folder of its own: give another --out, or --study first to "
        "continue that one\n"
    )
    assert journal.read_bytes() == before and not (tmp_path / "tfds").exists()  # before the data is read
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == ["study.journal"]


def slowed(tmp_path, seconds: float) -> dict[str, str]:
    """The environment of a test process in which every process of a study (its workers too) sleeps
    `seconds` before each epoch, so that a trial is surely still running when the test acts."""
    import os

    from tests.processes import ROOT, subprocess_env

    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(
        f"import time, cnn.train\n_e = cnn.train.train_epoch\n"
        f"cnn.train.train_epoch = lambda *a, **k: (time.sleep({seconds}), _e(*a, **k))[1]\n"
    )
    return subprocess_env(PYTHONPATH=f"{tmp_path / 'slow'}{os.pathsep}{ROOT}")


def same_program_study(idx_dir, prepared, tmp_path, epochs: int) -> list[str]:
    """`tune` over seeds only (every trial compiles the same program: the cache serves all but the first)
    of 2 trials on the prepared tiny data."""
    args = tune_args(idx_dir, tmp_path, "--space", "seed=int(0,1000000)", "--trials", "2", "--pruner", "none")
    args[args.index("--data-dir") + 1] = str(prepared)
    args[args.index("--base") + 1] = json.dumps({"epochs": epochs, "limit_train": 96})
    return args


@pytest.mark.slow
def test_two_tune_commands_on_one_study_share_it_without_clashes(idx_dir, prepared, tmp_path):
    """Two separate commands (not --workers) at once: one trial each, numbered and foldered apart."""
    import subprocess
    import time

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tests.processes import ROOT

    args = same_program_study(idx_dir, prepared, tmp_path, epochs=3)
    first = subprocess.Popen(
        [sys.executable, "-m", "cnn", *args], env=slowed(tmp_path, 1.5), cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "study" / "trial-0000").exists():  # the second joins while the first trains
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.1)
    assert main(args) == 0
    out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study" / "study.journal")))
    trials = optuna.load_study(study_name="cnn", storage=storage).trials
    assert [t.number for t in trials] == [0, 1] and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2  # one trial by each command
    assert trials[1].datetime_start < trials[0].datetime_complete  # at the same time
    for t in trials:  # each folder holds the run of its own trial
        saved = json.loads((tmp_path / "study" / f"trial-{t.number:04d}" / "config.json").read_text())
        assert saved["config"]["seed"] == t.params["seed"]
    assert "| 0 | complete |" in (tmp_path / "study" / "trials.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_to_tune_with_workers_stops_them_and_a_rerun_continues(
    idx_dir, prepared, tmp_path, monkeypatch, sig, code
):
    """SIGTERM to the parent, or Ctrl-C in a terminal (SIGINT to its process group): each worker stops after
    its epoch in progress, its trial failed and queued again; one line, the signal's code; the same command
    again finishes the study."""
    import os
    import signal
    import subprocess
    import time

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tests.processes import CACHE, ROOT

    args = same_program_study(idx_dir, prepared, tmp_path, epochs=10)
    command = [sys.executable, "-m", "cnn", *args, "--workers", "2"]
    parent = subprocess.Popen(
        command, env=slowed(tmp_path, 0.7), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip
    study = tmp_path / "study"
    deadline = time.monotonic() + 180
    while len(list(study.glob("trial-*/history.json"))) < 2:  # both workers in the middle of a trial
        assert time.monotonic() < deadline and parent.poll() is None, parent.communicate()
        time.sleep(0.1)
    if sig == "SIGTERM":
        parent.send_signal(signal.SIGTERM)
    else:
        os.killpg(parent.pid, signal.SIGINT)
    out, err = parent.communicate(timeout=120)
    assert parent.returncode == code, err
    assert err == (
        f"{sig}: stopped the study in {study} (a trial in progress is marked failed, its point queued "
        "again); run the same command again to continue it\n"
    )
    storage = JournalStorage(JournalFileBackend(str(study / "study.journal")))
    trials = optuna.load_study(study_name="cnn", storage=storage).trials
    assert sorted(t.state.name for t in trials) == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert all(t.user_attrs.get("stopped") == sig for t in trials if t.state.name == "FAIL")
    for trial in study.glob("trial-*"):  # stopped after the epoch in progress, that epoch saved
        assert 1 <= len(json.loads((trial / "history.json").read_text())) < 10
    if sig == "SIGINT":  # the rerun is the same after either signal: once is enough
        return
    monkeypatch.setenv("CNN_COMPILE_CACHE", str(CACHE))  # its workers reuse what the first ones compiled
    assert main(command[3:]) == 0  # the same command again
    trials = optuna.load_study(study_name="cnn", storage=storage).trials
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(trials) == 4 and sorted(t.user_attrs["retry_of"] for t in done) == [0, 1]
    assert f"| 0 | fail ({sig}, queued again) |" in (study / "trials.md").read_text()
