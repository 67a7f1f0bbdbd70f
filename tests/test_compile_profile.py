"""The suite's opt-in profile of JAX tracing and compiling (`tests.compile_profile`)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from tests import compile_profile


def test_a_compiled_function_is_recorded_and_summed_by_file(tmp_path, monkeypatch):
    listening = bool(os.environ.get("CNN_TEST_PROFILE"))  # the suite itself profiled: already registered
    monkeypatch.setenv("CNN_TEST_PROFILE", str(tmp_path / "profile.jsonl"))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # recorded as the worker "main"
    if not listening:
        compile_profile.start()
    try:
        started = compile_profile.begin()
        jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(np.arange(17.0, dtype=np.float32)).block_until_ready()
        compile_profile.end("tests/a.py::test_one", started)
        compile_profile.end("tests/b.py::test_two", compile_profile.begin())
    finally:
        if not listening:
            jax.monitoring.unregister_event_duration_listener(compile_profile._listen)
    one, two = (json.loads(line) for line in (tmp_path / "profile.jsonl").read_text().splitlines())
    assert one["programs"] == 1 and one["trace"] > 0 and one["lower"] > 0 and one["compile"] > 0
    assert two["test"] == "tests/b.py::test_two" and "programs" not in two
    text = compile_profile.summary(tmp_path / "profile.jsonl", top=1)
    rows = {
        line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| tests/")
    }
    assert rows["tests/a.py"].endswith(" | 1 |") and rows["tests/b.py"].endswith(" | 0 |")
    assert "tests/a.py::test_one" in text.split("heaviest")[1]
    assert "| main | 2 | " in text  # both tests, on the one process that ran them
