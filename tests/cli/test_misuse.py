"""Misuse, as a careful user would try it: --overwrite never deletes what a run did not write, one run per
workdir (a lock, taken over after SIGKILL), and bad inputs refused in one line with nothing saved changed."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnn.cli.main import main
from cnn.config import TrainConfig
from cnn.data.load import LOADED
from cnn.errors import WorkdirBusy, WorkdirError
from cnn.runs import lock as run_lock
from cnn.runs.folder import clear_run
from cnn.runs.lock import LOCK_FILE, exclusive_file_lock, take_lock, workdir_lock
from tests.processes import ROOT, run_process, subprocess_env, train_command

TINY = ["--epochs", "1", "--limit-train", "64", "--batch-size", "32"]


def train(idx_dir: Path, tmp_path: Path, workdir: Path, *flags: str) -> int:
    """`python -m cnn train` on the tiny data, as a new command: the data sets of earlier calls forgotten."""
    LOADED.clear()
    args = ["train", "--source-dir", str(idx_dir), "--data-dir", str(tmp_path / "tfds"), *TINY, *flags]
    return main([*args, "--workdir", str(workdir)])


def tree_hash(folder: Path) -> str:
    """Every file's path and bytes under `folder`: equal hashes mean nothing was changed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(idx_dir, tmp_path, capsys):
    thesis = tmp_path / "mythesis"
    (thesis / "figs").mkdir(parents=True)
    (thesis / "chapter1.tex").write_text("precious")
    before = tree_hash(thesis)
    assert train(idx_dir, tmp_path, thesis, "--overwrite") == 2
    err = one_line_error(capsys)
    assert "chapter1.tex, figs" in err and "nothing was deleted" in err
    assert tree_hash(thesis) == before and (thesis / "chapter1.tex").read_text() == "precious"


def test_overwrite_deletes_exactly_what_a_run_wrote(idx_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(idx_dir, tmp_path, run) == 0
    assert train(idx_dir, tmp_path, run, "--lr", "0.01") == 2  # a different config is refused ...
    assert "--overwrite" in one_line_error(capsys)
    assert train(idx_dir, tmp_path, run, "--lr", "0.01", "--overwrite") == 0  # ... or replaced
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 0.01
    (run / "notes.txt").write_text("mine")
    assert train(idx_dir, tmp_path, run, "--overwrite") == 2
    assert "notes.txt" in one_line_error(capsys) and (run / "results.json").is_file()


def _run_config() -> str:
    return json.dumps({"config": TrainConfig().to_dict(), "data": {}, "versions": {"jax": "0"}})


def test_clear_run_keeps_the_folder_and_removes_only_run_files(tmp_path):
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    (tmp_path / "events" / "hparams").mkdir(parents=True)
    (tmp_path / "events" / "events.out.tfevents.1.host").write_text("")
    (tmp_path / "events" / "hparams" / "events.out.tfevents.2.host").write_text("")
    for name in ("history.json", "results.json", "curves.png", "results.json.tmp"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "config.json").write_text(_run_config())
    for name in (LOCK_FILE, f"{LOCK_FILE}.pid"):  # left by an older version, or held by the clearing run
        (tmp_path / name).write_text("{}")
    clear_run(tmp_path)
    assert tmp_path.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, f"{LOCK_FILE}.pid"]


@pytest.mark.parametrize(
    "config, found",
    [
        ('{"name": "my-project", "version": 2}', "has no run config"),
        ('{"config": {"model": "resnet", "layers": 50}, "versions": {}}', r"writes \(unknown fields layers"),
        ("not json", "is not readable JSON"),
        (None, "it has no config.json"),
    ],
    ids=["another-config", "foreign-fields", "unreadable", "no-config"],
)
def test_overwrite_decides_from_content_not_names(tmp_path, config, found):
    """A folder holding a run's file names (someone else's config.json, results.json, checkpoints/ and
    events/) is not a run: refused, naming why, with nothing deleted."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "model_final.pt").write_text("weights")
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "events.out.tfevents.123").write_text("")
    (tmp_path / "results.json").write_text("{}")
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    before = tree_hash(tmp_path)
    pattern = f"is not a cnn run \\(.*{found}.*nothing was deleted"
    with pytest.raises(WorkdirError, match=pattern):
        clear_run(tmp_path)
    assert tree_hash(tmp_path) == before


def test_overwrite_refuses_a_run_folder_holding_files_the_run_did_not_write(tmp_path):
    (tmp_path / "config.json").write_text(_run_config())
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "model_final.pt").write_text("weights")
    (tmp_path / "events" / "hparams").mkdir(parents=True)
    (tmp_path / "events" / "hparams" / "notes.md").write_text("mine")
    before = tree_hash(tmp_path)
    with pytest.raises(WorkdirError, match=r"also holds checkpoints/model_final.pt, events/hparams/notes.md"):
        clear_run(tmp_path)
    assert tree_hash(tmp_path) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_workdir_that_is_a_file_is_one_line(idx_dir, tmp_path, capsys, overwrite):
    (tmp_path / "afile").write_text("data")
    assert train(idx_dir, tmp_path, tmp_path / "afile", *overwrite) == 2
    assert "is a file, not a folder" in one_line_error(capsys)
    assert train(idx_dir, tmp_path, tmp_path / "afile" / "run", *overwrite) == 2
    assert "a parent of it is a file" in one_line_error(capsys)
    assert (tmp_path / "afile").read_text() == "data"


def as_a_normal_user() -> list[str]:
    """The command prefix that runs a command as user `nobody` where the tests run as root (who writes into
    read-only folders), else none; skips the test where root cannot drop its privileges."""
    if os.geteuid() != 0:
        return []
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root, and there is no user nobody to drop privileges to")
    setpriv = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    probe = [sys.executable, "-c", "import cnn"]  # the interpreter and the package readable by nobody
    for prefix in (setpriv, ["runuser", "-u", "nobody", "--"]):
        if shutil.which(prefix[0]) and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            found = subprocess.run(
                [*prefix, *probe], capture_output=True, text=True, cwd="/", env=subprocess_env()
            )
            if found.returncode == 0:
                return prefix
            pytest.skip(f"running as root, and nobody cannot run this Python and cnn: {found.stderr[-300:]}")
    pytest.skip("running as root, and unable to drop privileges (neither setpriv nor runuser works)")


@pytest.mark.slow
def test_a_read_only_workdir_is_one_line(idx_dir, prepared):
    """As a normal user, in a process of its own: `nobody` where the tests run as root (as in CI), in a
    folder it can reach (pytest's tmp_path is private to root), with a home of its own."""
    prefix = as_a_normal_user()
    shared = Path(tempfile.mkdtemp(prefix="cnn-read-only-"))
    home, data, read_only = shared / "home", shared / "idx", shared / "read-only"
    try:
        shutil.copytree(idx_dir, data)
        shutil.copytree(prepared, home / "tfds")  # the data set prepared already: only the workdir is new
        read_only.mkdir()
        for path in (shared, data, read_only, *data.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        read_only.chmod(0o555)
        if prefix:
            nobody = pwd.getpwnam("nobody")
            for path in (home, *home.rglob("*")):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        command = train_command(data, home / "tfds", read_only / "run", *TINY)
        env = {"HOME": str(home), "MPLCONFIGDIR": str(home / "mpl"), "CNN_COMPILE_CACHE": str(home / "jax")}
        result = run_process([*prefix, *command], **env)
    finally:
        if read_only.exists():
            read_only.chmod(0o755)
        shutil.rmtree(shared)
    assert result.returncode == 2, f"{' '.join(prefix)} python ...: {result.stderr}"
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "no permission" in result.stderr


def hold_lock(workdir: Path) -> subprocess.Popen:
    """Another process holding `workdir`'s run lock (as a run in progress does)."""
    code = (
        "import sys, time\nfrom cnn.runs.lock import workdir_lock\n"
        f"with workdir_lock({str(workdir)!r}):\n    print('locked', flush=True)\n    time.sleep(120)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=subprocess_env(), cwd=ROOT
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.slow
def test_a_second_process_on_a_workdir_is_refused_and_writes_nothing(idx_dir, tmp_path, capsys):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        before = tree_hash(run)
        assert train(idx_dir, tmp_path, run) == 2
        err = one_line_error(capsys)
        assert "in use by another run" in err and f"PID {holder.pid}" in err
        assert tree_hash(run) == before and not (run / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed holder's lock went with it: the next run takes the folder over, and removes the lock file
    assert train(idx_dir, tmp_path, run) == 0 and (run / "results.json").is_file()
    assert not (run / LOCK_FILE).exists()


def test_the_lock_is_released_after_a_run_and_nested_use_is_refused(tmp_path):
    with workdir_lock(tmp_path / "w"):
        holder = json.loads((tmp_path / "w" / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(WorkdirBusy, match=f"PID {os.getpid()}"), workdir_lock(tmp_path / "w"):
            pass
    assert list((tmp_path / "w").iterdir()) == []  # the lock file goes with the lock
    with workdir_lock(tmp_path / "w"):  # released: taken again
        pass


def test_a_holder_caught_between_locking_and_writing_its_name_is_still_named(tmp_path):
    """The holder locks the (new, empty) file, then writes who it is: a second run that finds the lock
    taken in between reads the file again rather than saying "holder unknown"; a file that stays empty
    is "holder unknown", after a bounded wait."""
    import threading

    path = tmp_path / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked, nothing written yet
    try:
        started = time.monotonic()
        with pytest.raises(WorkdirBusy, match="holder unknown"), workdir_lock(tmp_path):
            pass
        assert time.monotonic() - started < 5
        me = json.dumps({"host": "elsewhere", "pid": 4242, "started": "now"}).encode()
        threading.Timer(0.1, os.write, (fd, me)).start()  # the name arrives while the second run reads
        with pytest.raises(WorkdirBusy, match="PID 4242 on elsewhere"), workdir_lock(tmp_path):
            pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("meanwhile", ["no-run", "another-run"])
def test_a_lock_file_removed_after_it_was_opened_is_not_taken_for_the_lock(tmp_path, monkeypatch, meanwhile):
    """The classic race of removing a lock file: B opens the file, A ends its run (removes it, unlocks),
    and B's flock succeeds on a file no longer in the folder. B must open the folder's lock file anew:
    taking it when it is free, refused when a third run C has taken it meanwhile."""
    workdir, a_run, c_run = tmp_path / "w", contextlib.ExitStack(), contextlib.ExitStack()
    a_run.enter_context(workdir_lock(workdir))
    named, ended = [], []  # named: whether the folder's lock file is the file each take_lock call locked

    def a_ends_between_open_and_lock(fd, path, folder):
        if not ended:  # B has opened A's file: A ends, and C may start
            ended.append(a_run.close())
            if meanwhile == "another-run":
                c_run.enter_context(workdir_lock(workdir))
        try:
            return take_lock(fd, path, folder)
        finally:
            named.append(run_lock.names_file(path, fd))

    monkeypatch.setattr(run_lock, "take_lock", a_ends_between_open_and_lock)
    with c_run:
        if meanwhile == "another-run":
            with pytest.raises(WorkdirBusy, match=f"PID {os.getpid()}"), workdir_lock(workdir):
                pass
        else:
            with workdir_lock(workdir):
                assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == os.getpid()
    # B's first file was A's, removed; its second the folder's: C's (locked first: refused) or its own
    assert named == ([True, False, True] if meanwhile == "another-run" else [False, True])
    assert list(workdir.iterdir()) == []


def test_the_fallback_lock_is_removed_with_the_lock_file(tmp_path, monkeypatch):
    def no_fcntl_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_fcntl_locks)
    with workdir_lock(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, f"{LOCK_FILE}.pid"]
        with pytest.raises(WorkdirBusy, match=f"PID {os.getpid()}"), workdir_lock(tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_fallback_lock_file_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, capsys):
    lock = tmp_path / f"{LOCK_FILE}.pid"
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "started": "now"}))
    with pytest.raises(WorkdirBusy, match=f"PID {os.getpid()}.*delete"):
        exclusive_file_lock(lock, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "started": "then"}))
    exclusive_file_lock(lock, tmp_path)
    assert "stale lock" in capsys.readouterr().out
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_workdir_errors_are_value_errors_for_the_cli(tmp_path):
    assert issubclass(WorkdirBusy, WorkdirError) and issubclass(WorkdirError, ValueError)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model-args", '{"dropout_rate": 2.0}'], "dropout_rate must be a number in [0, 1), got 2.0"),
        (["--model-args", '{"dropout_rate": "x"}'], "dropout_rate must be a number in [0, 1), got 'x'"),
        (["--model", "mlp", "--model-args", '{"hidden": [0]}'], "hidden must be a list of integers >= 1"),
        (
            ["--model", "convnet", "--model-args", '{"rotate": 400}'],
            "rotate must be an angle in degrees in [0, 180]",
        ),
        (["--val-split", "first"], "val_split: got 'first', expected 'seeded' or 'last'"),
        (["--model-args", '{"dropout": 0.1}'], "does not take these arguments"),
        (["--model-args", "{dropout_rate: 0.1"], "--model-args: not valid JSON"),
        (["--epochs", "x"], "train: argument --epochs: invalid int value"),
        (["--lr", "inf"], "expected a finite number > 0"),
        (["--lr", "nan"], "expected a finite number > 0"),
        (["--epochs", "0"], "epochs: got 0, expected an integer >= 1"),
        (["--batch-size", "-3"], "batch_size: got -3, expected an integer >= 1"),
        (["--model", "seed_cn"], "Did you mean seed_cnn"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(idx_dir, tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    assert train(idx_dir, tmp_path, run, *flags) == 2
    assert message in one_line_error(capsys)
    assert not run.exists()


def test_summary_refuses_bad_model_args_in_one_line(capsys):
    assert main(["summary", "--model", "mlp", "--model-args", '{"hidden": [0]}']) == 2
    assert "hidden must be a list of integers >= 1, got [0]" in one_line_error(capsys)


def test_a_full_disk_at_a_later_checkpoint_keeps_the_earlier_one_and_resumes(
    idx_dir, tmp_path, capsys, monkeypatch
):
    import shutil as real_shutil

    from cnn.runs import checkpoints, disk

    run, calls = tmp_path / "run", []
    usage = real_shutil.disk_usage

    def filling(path):  # the disk of the run fills after its first checkpoint
        calls.append(Path(path) == run)
        total, used, free = usage(path)
        return type(usage(path))(total, used, free if calls.count(True) <= 1 else 1024)

    monkeypatch.setattr(disk.shutil, "disk_usage", filling)
    assert train(idx_dir, tmp_path, run, "--epochs", "3") == 5
    err = one_line_error(capsys)
    assert f"no space to save the checkpoint in {run}" in err and "1.0 KiB" not in err
    assert checkpoints.Checkpoints(run / "checkpoints").epochs() == [1]
    assert len(json.loads((run / "history.json").read_text())) == 1  # valid JSON, epoch 1 only
    monkeypatch.undo()
    assert train(idx_dir, tmp_path, run, "--epochs", "3") == 0  # resumes from epoch 1
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2, 3]


LIMIT = (
    "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))"
)


@pytest.mark.slow
def test_a_file_size_limit_at_the_checkpoint_is_one_line_with_its_own_exit_code(idx_dir, prepared, tmp_path):
    from tests.processes import run_process, train_command

    command = train_command(idx_dir, prepared, tmp_path / "run", *TINY, prelude=LIMIT)
    done = run_process(command)
    assert done.returncode == 5, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space to save the checkpoint") and "ulimit -f" in last
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_data_dir_without_room_is_one_line_and_leaves_nothing_half_prepared(idx_dir, tmp_path):
    from tests.processes import run_process, train_command

    done = run_process(train_command(idx_dir, tmp_path / "tfds", tmp_path / "run", *TINY, prelude=LIMIT))
    assert done.returncode == 5, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: no space to prepare the data set fashion_mnist_idx in {tmp_path / 'tfds'}"
    )
    assert "Traceback" not in done.stderr and not list((tmp_path / "tfds").rglob("incomplete.*"))


def test_orbax_write_errors_of_a_full_disk_are_recognised():
    from cnn.errors import out_of_space

    message = 'OUT_OF_RANGE: Error writing "x": Failed to write 3029718 bytes to file 8: File too large'
    assert out_of_space(ValueError(message + " [os_error_code='27']"))
    assert out_of_space(ValueError("Failed writing: No space left on device [os_error_code=28]"))
    assert out_of_space(OSError(28, "No space left on device"))
    assert not out_of_space(ValueError("Error writing: Permission denied [os_error_code='13']"))


def prepared_folder(data_dir: Path) -> Path:
    return next(data_dir.glob("fashion_mnist_idx/*/"))


def test_a_damaged_prepared_data_set_names_its_folder_and_the_fix(idx_dir, tmp_path, capsys):
    assert train(idx_dir, tmp_path, tmp_path / "run") == 0
    folder = prepared_folder(tmp_path / "tfds")
    (folder / "dataset_info.json").unlink()
    for _ in range(2):  # the same message every time, never "Preparing ..." then a traceback
        assert train(idx_dir, tmp_path, tmp_path / "other") == 2
        err = one_line_error(capsys)
        assert f"the prepared data set in {folder} is incomplete" in err and f"delete {folder}" in err
    shutil.rmtree(folder)
    assert train(idx_dir, tmp_path, tmp_path / "other") == 0  # prepared afresh
    record = next(folder.glob("*train.array_record*"))
    record.write_bytes(record.read_bytes()[:2000])
    assert train(idx_dir, tmp_path, tmp_path / "third") == 0  # the whole arrays read back, not the records
    (folder / "arrays.npz").write_bytes(b"damaged too")
    assert train(idx_dir, tmp_path, tmp_path / "fourth") == 2
    err = one_line_error(capsys)
    assert f"the prepared data set in {folder} is damaged" in err and "delete" in err


def test_truncated_run_files_are_named_and_the_fix_keeps_the_checkpoints(idx_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(idx_dir, tmp_path, run) == 0
    results = run / "results.json"
    results.write_text(results.read_text()[:40])
    viz = ["viz", "--workdir", str(run), "--source-dir", str(idx_dir), "--data-dir", str(tmp_path / "tfds")]
    assert main(viz + ["--out", str(tmp_path / "pictures")]) == 2
    assert f"{results} is unreadable" in one_line_error(capsys)
    config = run / "config.json"
    config.write_text(config.read_text()[:60])
    assert train(idx_dir, tmp_path, run) == 2
    err = one_line_error(capsys)
    assert "config.json is unreadable" in err and "restore it from a backup" in err
    assert (run / "checkpoints").is_dir()


def test_an_output_path_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["summary", "--plot", str(tmp_path / "afile" / "net.png")]) == 2
    out, err = capsys.readouterr()
    assert "afile/net.png: Not a directory; give another path" in err and err.count("\n") == 1
    assert out == ""  # refused before the table is printed
    assert main(["summary", "--plot", str(tmp_path / "new" / "folder" / "net.png")]) == 0
    assert (tmp_path / "new" / "folder" / "net.png").stat().st_size > 0


def test_summary_help_lists_the_models(capsys):
    from cnn.models.registry import MODELS

    assert main(["summary", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in MODELS)


NUMBERS = st.sampled_from(["0", "-1", "1", "1e-3", "nan", "inf", "-inf", "1e308", "2.5", "x", "", "10**9"])
FLAGS = st.sampled_from(
    ["--epochs", "--batch-size", "--lr", "--patience", "--seed", "--limit-train", "--val-fraction",
     "--test-fraction", "--eval-batch-size", "--steps-per-call", "--optimizer", "--schedule", "--model",
     "--channels", "--head", "--data-placement", "--monitor"]
)  # fmt: skip
JSONS = st.sampled_from(['{"dropout_rate": 2}', '{"hidden": [0]}', "[1]", "{", '{"dense": "x"}', "null"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(FLAGS, NUMBERS), max_size=4), st.one_of(st.none(), JSONS))
def test_any_train_flags_either_make_a_config_or_a_one_line_refusal(capsys, pairs, model_args):
    """argv fuzzing of `train`'s flags against the validator: never a traceback."""
    from cnn.cli.main import parser
    from cnn.config import config_from_args
    from cnn.errors import ConfigError

    argv = ["train", *(x for pair in pairs for x in pair)]
    argv += ["--model-args", model_args] if model_args is not None else []
    try:
        config_from_args(parser().parse_args(argv))
    except SystemExit as e:  # argparse: one line, exit 2
        assert e.code == 2 and capsys.readouterr().err.count("\n") == 1
    except (ConfigError, ValueError) as e:
        assert "\n" not in str(e) and str(e)


def test_confusing_cases_are_said_plainly(idx_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(idx_dir, tmp_path, run, "--epochs", "2", "--limit-train", "100000") == 0
    out = capsys.readouterr().out
    assert "480 train (all: --limit-train 100000 asks for more)" in out  # the tiny set has 480
    assert "Note: using the data set already prepared" not in out  # the first run prepares it
    # lowering --epochs below what a run already trained is refused, config.json untouched
    config = (run / "config.json").read_text()
    assert train(idx_dir, tmp_path, run, "--epochs", "1", "--limit-train", "100000") == 2
    assert "has already trained 2 epochs; give --epochs 2 or more" in one_line_error(capsys)
    assert (run / "config.json").read_text() == config
    # --source-dir is read only when preparing: a later run says so
    assert train(idx_dir, tmp_path, tmp_path / "other") == 0
    assert "Note: using the data set already prepared in" in capsys.readouterr().out
