"""`steps_per_call auto`: a short run compiles one step, a long run the most steps per call, from costs
measured once per program and remembered; a K given is kept or clamped to an epoch, saying so."""

from __future__ import annotations

import json

import pytest

from cnn.config import TrainConfig
from cnn.data.spec import FASHION_MNIST
from cnn.engine import chunking, compile_cache
from cnn.errors import ConfigError


@pytest.fixture
def costs_file(tmp_path, monkeypatch):
    """The remembered costs in a file of the test's own."""
    path = tmp_path / "jax-steps.json"
    monkeypatch.setattr(compile_cache, "measurements_file", lambda name: path)
    return path


def choose(costs_file, full_batches: int = 1500, **fields):
    config = TrainConfig(**fields)
    return chunking.choose_steps_per_call(config, FASHION_MNIST, full_batches, rolled=False)


def test_auto_compiles_one_step_for_a_short_run_and_more_for_a_long_one(costs_file, monkeypatch):
    measured = []
    monkeypatch.setattr(chunking, "measure", lambda *a, **k: measured.append(a))
    assert choose(costs_file, full_batches=20, epochs=1).steps_per_call == 1
    assert choose(costs_file, full_batches=100, epochs=3).steps_per_call == 1
    middle = choose(costs_file, full_batches=1500, epochs=1)  # below MEASURE_ABOVE: the defaults
    assert 1 < middle.steps_per_call < chunking.MAX_STEPS and "defaults" in middle.reason
    assert not measured
    assert choose(costs_file, full_batches=7, epochs=1000).steps_per_call == 7  # never more than an epoch


def test_a_long_run_measures_once_then_uses_what_was_measured(costs_file, monkeypatch):
    calls = []

    def fake_measure(config, spec, key, calls_=3):
        calls.append(key)  # compiling costs 0.5 s a step, a call 1 ms: K = sqrt(30000 * 1e-3 / 0.5) ~ 8
        compile_cache.remember("steps", key, {"1": {"compile": 1.0, "step": 0.0100},
                                              "10": {"compile": 5.5, "step": 0.0091}})  # fmt: skip

    monkeypatch.setattr(chunking, "measure", fake_measure)
    first = choose(costs_file, epochs=20)
    assert len(calls) == 1 and first.steps_per_call == 8 and "measured on this device" in first.reason
    again = choose(costs_file, epochs=20)
    assert len(calls) == 1 and again == first  # remembered, not measured again
    entry = json.loads(costs_file.read_text())
    assert list(entry) == [chunking.program_key(TrainConfig(), FASHION_MNIST)]
    assert choose(costs_file, epochs=20, batch_size=64).steps_per_call  # another program: measured too
    assert len(calls) == 2


def test_a_corrupted_entry_is_ignored_with_a_warning_and_measured_again(costs_file, monkeypatch):
    key = chunking.program_key(TrainConfig(), FASHION_MNIST)
    costs_file.write_text(json.dumps({key: {"1": "fast", "10": [1, 2]}}))
    measured = []
    monkeypatch.setattr(chunking, "measure", lambda config, spec, k: measured.append(k))
    with pytest.warns(UserWarning, match="unreadable remembered step costs"):
        choose(costs_file, epochs=20)
    assert measured == [key]
    costs_file.write_text("{not json")  # a file that is not JSON at all: measured again, no error
    assert choose(costs_file, epochs=1, full_batches=10).steps_per_call == 1


def test_a_given_k_is_kept_or_clamped_to_an_epoch_saying_so(costs_file):
    assert choose(costs_file, full_batches=20, steps_per_call=5) == chunking.Choice(5, "given")
    clamped = choose(costs_file, full_batches=20, steps_per_call=50)
    assert clamped.steps_per_call == 20 and "50 given, clamped to the 20 full batches" in clamped.reason
    rolled = chunking.choose_steps_per_call(TrainConfig(), FASHION_MNIST, 20, rolled=True)
    assert rolled.steps_per_call == 1 and "rolled" in rolled.reason
    for bad in (0, -3, 2.5, "fast", True):
        with pytest.raises(ConfigError, match="steps_per_call: got .* expected an integer >= 1 or auto"):
            TrainConfig(steps_per_call=bad)


def test_measuring_compiles_and_times_both_ends_on_this_device(costs_file):
    config = TrainConfig(model="lenet5", batch_size=8)
    chunking.measure(config, FASHION_MNIST, "key")
    measured = chunking.remembered_costs("key")
    assert sorted(measured) == [1, chunking.MAX_STEPS]
    assert all(v["compile"] > 0 and 0 < v["step"] < 1 for v in measured.values())
    c, h = chunking.fitted(measured)
    assert c > 0 and h >= 0
