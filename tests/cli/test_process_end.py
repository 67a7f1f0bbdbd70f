"""`python -m cnn` ends its process without tearing down every imported module (`cnn.cli.main.end_process`),
and still does everything the interpreter does before that: threads finish, exit handlers run, output is
flushed, the status is the command's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.processes import run_process

# A stand-in for a command's last moments: work left to a non-daemon thread and to a thread pool, an exit
# handler, a temporary folder cleaned up at exit, output still in the buffers (no newline, no flush).
ENDING = """
import atexit, concurrent.futures, json, sys, tempfile, threading, time
from cnn.cli.main import end_process

folder = tempfile.TemporaryDirectory()
print(json.dumps({"folder": folder.name}))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
pool = concurrent.futures.ThreadPoolExecutor(1)
pool.submit(lambda: (time.sleep(0.3), print("pooled work finished")))
atexit.register(lambda: print("exit handler ran"))
sys.stdout.write("unflushed output")
sys.stderr.write("unflushed error output")
end_process(STATUS)
"""


@pytest.mark.slow
@pytest.mark.parametrize("status", [0, 3])
def test_the_process_ends_with_its_threads_exit_handlers_output_and_status(status):
    done = run_process([sys.executable, "-c", ENDING.replace("STATUS", str(status))], timeout=60)
    assert done.returncode == status, done.stderr
    folder = json.loads(done.stdout.splitlines()[0])["folder"]
    for said in ("thread finished", "pooled work finished", "exit handler ran", "unflushed output"):
        assert said in done.stdout, done.stdout
    assert "unflushed error output" in done.stderr
    assert done.stdout.index("pooled work finished") < done.stdout.index("exit handler ran")
    assert not Path(folder).exists(), "the temporary folder's cleanup at exit did not run"


@pytest.mark.slow
def test_a_command_run_as_python_m_cnn_leaves_its_status_and_one_line(tmp_path):
    """A refused command through `python -m cnn` (the module's own ending): status 2 and its line."""
    done = run_process([sys.executable, "-m", "cnn", "train", "--epochs", "0", "--workdir", str(tmp_path)])
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "epochs" in done.stderr
