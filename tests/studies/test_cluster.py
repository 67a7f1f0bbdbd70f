"""Sweeps and tune studies across machines (`--storage URL`): the queue's logic on SQLite, and two worker
processes (standing for two machines) on a throwaway PostgreSQL server of the suite's own, one of them killed
with SIGKILL in the middle of a run: every run done exactly once, the killed one resumed, the results those of
a one-machine sweep. Bad storages refused in one line before any data is read."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cnn.cli.main import main
from cnn.errors import StorageError
from cnn.studies.queue import DONE, RUNNING, WAITING, Queue
from tests.processes import ROOT, subprocess_env

TIMING = {"train_seconds", "compile_seconds", "compilations", "compile_cache_hits", "images_per_second"}
TIMING |= {"group_images_per_second"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_queue(url: str, name: str, worker: str, heartbeat: float = 0.2) -> Queue:
    """A queue seen by a worker of another name (as another process or machine would be)."""
    queue = Queue(url, name, heartbeat)
    queue.worker = worker
    return queue


# ------------------------------------------------------------------------------ the queue's logic (SQLite)
def test_each_run_is_claimed_once_and_a_silent_workers_run_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    a, b = worker_queue(url, "s", "a"), worker_queue(url, "s", "b")
    a.define({"base": {"lr": 0.1}}, ["r0", "r1", "r2"])
    b.define({"base": {"lr": 0.1}}, ["r0", "r1", "r2"])  # joins: the same definition
    assert [a.claim(), b.claim(), a.claim(), b.claim()] == ["r0", "r1", "r2", None]
    assert a.finish("r0") and not b.finish("r0")  # only its holder finishes a run
    assert a.release("r2") and b.claim() == "r2"  # a stopped worker's run goes to the next
    assert a.take_collect() is True and b.take_collect() is False  # the tables are written once
    b.beat("r1")
    b.beat("r2")
    time.sleep(3 * 0.2 + 0.1)  # b falls silent
    assert a.claim() == "r1" and not b.finish("r1") and a.finish("r1")
    states = a.states()
    assert states["r1"] == {"state": DONE, "claims": 2, "owners": ["b", "a"]}
    assert states["r2"] == {"state": RUNNING, "claims": 2, "owners": ["a", "b"]}  # released by a, then b's


def test_a_worker_of_another_definition_is_refused_naming_the_difference(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    worker_queue(url, "s", "a").define({"base": {"lr": 0.1, "epochs": 2}, "seeds": [0]}, ["r0"])
    with pytest.raises(StorageError) as e:
        worker_queue(url, "s", "b").define({"base": {"lr": 0.2, "epochs": 2}, "seeds": [0]}, ["r0"])
    assert "(base.lr: 0.1 -> 0.2)" in str(e.value) and "the same --grid, --base" in str(e.value)
    assert worker_queue(url, "s", "b").states() == {"r0": {"state": WAITING, "claims": 0, "owners": []}}


def test_claims_from_many_threads_take_each_run_once(tmp_path):
    claimed = concurrent_claims(f"sqlite:///{tmp_path / 'q.db'}")
    assert sorted(claimed) == sorted(f"r{i}" for i in range(12))


def concurrent_claims(url: str, runs: int = 12, workers: int = 4) -> list[str]:
    """Every run claimed by `workers` threads claiming at once (each its own connection pool)."""
    keys = [f"r{i}" for i in range(runs)]
    worker_queue(url, "s", "maker").define({}, keys)
    queues = [worker_queue(url, "s", f"w{i}") for i in range(workers)]
    claimed: list[str] = []
    start = threading.Barrier(workers)

    def work(queue: Queue) -> None:
        start.wait()
        while (key := queue.claim()) is not None:
            claimed.append(key)

    threads = [threading.Thread(target=work, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return claimed


# --------------------------------------------------------------------------------------- bad storages
SWEEP = ["sweep", "--grid", "lr=[0.001,0.003]", "--seeds", "2", "--together", "sequential"]
SWEEP += ["--base", json.dumps({"epochs": 2, "limit_train": 128})]


@pytest.mark.parametrize("command", ["sweep", "tune", "experiments"])
def test_an_unreachable_database_is_refused_naming_host_and_port_before_any_data(
    idx_dir, tmp_path, capsys, command
):
    port = free_port()  # nothing listens there
    url = f"postgresql://someone:secret@127.0.0.1:{port}/cnn"
    data = ["--source-dir", str(idx_dir), "--data-dir", str(tmp_path / "tfds")]
    args = {
        "sweep": [*SWEEP, "--out", str(tmp_path / "out")],
        "tune": ["tune", "--space", "lr=loguniform(1e-4,1e-2)", "--out", str(tmp_path / "out")],
        "experiments": ["experiments", "padding", "--out", str(tmp_path / "out")],
    }[command]
    assert main([*args, *data, "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --storage: cannot reach the database at 127.0.0.1:{port}/cnn (")
    assert err.count("\n") == 1 and "secret" not in err
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------- a PostgreSQL server of the suite's
def server_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def as_server_user(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`command` as the `postgres` user when this is root (the server refuses to run as root)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + command, capture_output=True, text=True, check=True, **kwargs)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server (initdb + pg_ctl, Debian's `postgresql` package) on a free port, with
    a password, stopped and deleted when the module's tests end, even when they fail. Its URL."""
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install -e '.[cluster]'")
    folder = Path(tempfile.mkdtemp(prefix="cnn-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    (folder / "password").write_text("test-secret\n")
    port = free_port()
    try:
        as_server_user([str(binaries / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "-A",
                        "scram-sha-256", f"--pwfile={folder / 'password'}"])  # fmt: skip
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=100"
        as_server_user([str(binaries / "pg_ctl"), "-D", str(folder / "data"), "-o", options, "-l",
                        str(folder / "log"), "-w", "start"], timeout=60)  # fmt: skip
        yield f"postgresql://postgres:test-secret@127.0.0.1:{port}/postgres"
    finally:
        if (folder / "data" / "postmaster.pid").exists():
            subprocess.run(
                (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                + [str(binaries / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"],
                capture_output=True,
            )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def database(postgres, request):
    """A database of its own on the server for one test: its URL."""
    import sqlalchemy as sa

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    admin = sa.create_engine(postgres.replace("postgresql://", "postgresql+psycopg://"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
        db.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        db.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return postgres.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.slow
def test_a_wrong_password_is_refused_naming_host_and_port(postgres):
    wrong = postgres.replace("test-secret", "not-it")
    with pytest.raises(StorageError) as e:
        Queue(wrong, "s")
    host_port = postgres.split("@")[1].rsplit("/", 1)[0]
    assert f"cannot reach the database at {host_port}/postgres" in str(e.value)
    assert "password authentication failed" in str(e.value) and "not-it" not in str(e.value)


@pytest.mark.slow
def test_claims_on_postgresql_skip_locked_rows_and_take_each_run_once(database):
    claimed = concurrent_claims(database, runs=20, workers=4)
    assert sorted(claimed) == sorted(f"r{i}" for i in range(20))


# ------------------------------------------------------------------------ two workers, one of them killed
def slowed(tmp_path: Path, seconds: float) -> dict[str, str]:
    """A process environment in which every epoch starts `seconds` late (so that a run is surely in the
    middle when the test acts)."""
    (tmp_path / "slow").mkdir(exist_ok=True)
    (tmp_path / "slow" / "sitecustomize.py").write_text(
        f"import time, cnn.train\n_e = cnn.train.train_epoch\n"
        f"cnn.train.train_epoch = lambda *a, **k: (time.sleep({seconds}), _e(*a, **k))[1]\n"
    )
    return subprocess_env(PYTHONPATH=f"{tmp_path / 'slow'}{os.pathsep}{ROOT}")


def start_worker(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cnn", *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )


def wait_for(condition, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


def outcome(folder: Path) -> tuple[list, dict]:
    history = json.loads((folder / "history.json").read_text())
    results = json.loads((folder / "results.json").read_text())
    return history, {k: v for k, v in results.items() if k not in TIMING}


@pytest.mark.slow
def test_two_workers_share_a_sweep_and_the_killed_ones_run_is_resumed(idx_dir, prepared, database, tmp_path):
    data = ["--source-dir", str(idx_dir), "--data-dir", str(prepared)]
    out = tmp_path / "sweep"
    args = [*SWEEP, *data, "--out", str(out), "--storage", database, "--heartbeat", "1"]
    env = slowed(tmp_path, 1.0)
    first = start_worker(args, env, tmp_path / "first.log")
    queue = Queue(database, out.name)
    held = {}

    def first_saved_its_first_epoch() -> bool:
        mine = [
            k for k, s in queue.states().items() if s["owners"] == [f"{socket.gethostname()}:{first.pid}"]
        ]
        folders = [out / v / f"seed{s}" for k in mine for v, s in json.loads(k)]
        held.update(folders=folders, key=mine[0] if mine else None)
        return any((f / "checkpoints" / "1").is_dir() for f in folders)  # epoch 1 saved (renamed when whole)

    second = start_worker(args, env, tmp_path / "second.log")
    wait_for(first_saved_its_first_epoch, first, tmp_path / "first.log")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not any((f / "checkpoints" / "2").exists() for f in held["folders"])  # killed in its 2nd epoch
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    states = queue.states()
    assert all(s["state"] == DONE for s in states.values()) and len(states) == 4
    killed = states[held["key"]]
    assert killed["claims"] == 2 and killed["owners"][0].endswith(f":{first.pid}")  # then the second's
    assert sum(s["claims"] for s in states.values()) == 5  # every other run claimed once
    assert f"Resuming {held['folders'][0]} after epoch 1" in log  # resumed, not restarted
    assert (out / "results.md").is_file() and "seeds" in (out / "results.md").read_text()

    alone = tmp_path / "alone"
    assert main([*SWEEP, *data, "--out", str(alone)]) == 0  # the same sweep on one machine
    for folder in sorted(out.glob("*/seed*")):
        assert outcome(folder) == outcome(alone / folder.relative_to(out)), folder
    rows = {r["variant"]: r for r in json.loads((out / "results.json").read_text())}
    rows_alone = {r["variant"]: r for r in json.loads((alone / "results.json").read_text())}
    for name, row in rows.items():
        assert row["test_accuracy_mean"] == rows_alone[name]["test_accuracy_mean"]


@pytest.mark.slow
def test_ctrl_c_on_a_worker_stops_it_and_releases_its_run(idx_dir, prepared, tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    data = ["--source-dir", str(idx_dir), "--data-dir", str(prepared)]
    out = tmp_path / "sweep"
    one = ["sweep", "--grid", "lr=[0.001]", "--seeds", "1", "--together", "sequential"]
    one += ["--base", json.dumps({"epochs": 3, "limit_train": 128}), *data, "--out", str(out)]
    worker = start_worker(
        [*one, "--storage", url, "--heartbeat", "1"], slowed(tmp_path, 1.0), tmp_path / "w.log"
    )
    wait_for(lambda: (out / "lr=0.001" / "seed0" / "history.json").exists(), worker, tmp_path / "w.log")
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=120) == 130, (tmp_path / "w.log").read_text()[-3000:]
    (state,) = Queue(url, out.name).states().values()
    assert state["state"] == WAITING and state["claims"] == 1  # released at once, not left to go stale
    saved = len(json.loads((out / "lr=0.001" / "seed0" / "history.json").read_text()))
    assert 1 <= saved < 3
    assert main([*one, "--storage", url]) == 0  # another worker resumes it
    history = json.loads((out / "lr=0.001" / "seed0" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    (state,) = Queue(url, out.name).states().values()
    host = socket.gethostname()
    assert state == {"state": DONE, "claims": 2, "owners": [f"{host}:{worker.pid}", f"{host}:{os.getpid()}"]}


@pytest.mark.slow
def test_two_tune_workers_on_postgresql_retry_a_killed_workers_trial_from_its_epoch(
    idx_dir, prepared, database, tmp_path
):
    import optuna

    from cnn.studies.queue import database_url

    out = tmp_path / "study"
    args = ["tune", "--space", "lr=loguniform(1e-4,3e-3)", "--trials", "3", "--pruner", "none"]
    args += ["--sampler", "random", "--seed", "0", "--base", json.dumps({"epochs": 3, "limit_train": 128})]
    args += ["--source-dir", str(idx_dir), "--data-dir", str(prepared), "--out", str(out)]
    args += ["--storage", database, "--heartbeat", "1"]
    env = slowed(tmp_path, 1.0)
    first = start_worker(args, env, tmp_path / "first.log")
    wait_for(lambda: (out / "trial-0000" / "checkpoints" / "1").is_dir(), first, tmp_path / "first.log")
    second = start_worker(args, env, tmp_path / "second.log")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "trial-0000" / "checkpoints" / "2").exists()  # killed in its second epoch
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    study = optuna.load_study(study_name="cnn", storage=database_url(database))
    trials = study.trials
    assert trials[0].state.name == "FAIL"  # failed by the heartbeat, then tried again
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == trials[0].params
    assert retry[0].user_attrs["folder"] == "trial-0000"
    assert min(retry[0].intermediate_values) >= 2  # resumed after its saved epoch, not from the first
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 and len({t.user_attrs["folder"] for t in complete}) == 3  # each run once
    assert sorted(p.name for p in out.glob("trial-*")) == sorted(t.user_attrs["folder"] for t in complete)
    history = json.loads((out / "trial-0000" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert "its worker fell silent, queued again" in (out / "trials.md").read_text()
