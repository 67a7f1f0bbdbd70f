"""Researchers' tooling: TensorBoard event files for every run (tensorboardX, read back without
TensorBoard), continued without duplicates on resume, hparams for the HParams view, off with
--no-tensorboard."""

from __future__ import annotations

import json
import sys

import pytest

from cnn import TrainConfig, fit
from cnn.cli import main
from cnn.events import EventLog, read_events

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
    from cnn.cli import EXIT_RUNS_FAILED

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


def test_a_first_run_prints_only_progress_and_never_imports_tensorflow(idx_dir, tmp_path):
    """On a fresh data dir: no tfds/absl warning, no tfds size line; every line progress or results."""
    from tests.processes import run_process

    args = ["train", "--source-dir", str(idx_dir), "--data-dir", str(tmp_path / "tfds"), "--epochs", "1"]
    args += ["--limit-train", "64", "--workdir", str(tmp_path / "run")]
    code = (
        f"import sys\nfrom cnn.cli import main\ncode = main({args!r})\n"
        "print('tensorflow imported:', 'tensorflow' in sys.modules)\nsys.exit(code)"
    )
    done = run_process([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    assert "tensorflow imported: False" in text
    for noise in ("WARNING", "dataset_info.json", "Downloading and preparing", "Traceback"):
        assert noise not in text, text
    assert "Preparing Fashion-MNIST" in text and "Best epoch 1" in text


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
    assert main(tune_args(idx_dir, tmp_path, "--space", "lr=loguniform(1e-4,3e-3)", "--trials", "3")) == 0
    study = optuna.load_study(study_name="cnn", storage=JournalStorage(JournalFileBackend(str(journal))))
    states = {t.number: t.state.name for t in study.trials}
    assert states[0] == "FAIL" and list(states.values()).count("COMPLETE") == 2
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert retry and retry[0].params == study.trials[0].params  # the lost point is tried again


def test_a_pruned_trial_stops_after_the_epoch_it_was_pruned_at(tiny_splits, tmp_path):
    import optuna

    from cnn.tune import objective, parse_dimension

    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))  # prunes every trial
    base = {"epochs": 4, "limit_train": 96}
    study.optimize(objective(base, [parse_dimension("lr=loguniform(1e-4,1e-3)")], tiny_splits, tmp_path), 1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    history = json.loads((tmp_path / "trial-0000" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]  # stopped there; the folder stays a resumable run
