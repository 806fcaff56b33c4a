"""bench/timing.py: interleaved rounds (the order every benchmark relies on), warm-up dropped, both clocks."""

import time

import pytest

from bench import timing


def test_rounds_interleave_the_cases_and_drop_the_warmup():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = timing.interleaved(fns, runs=3, warmup=2)
    assert calls == ["a", "b"] * 5  # round by round, not all of a then all of b
    assert {name: len(t["wall"]) for name, t in times.items()} == {"a": 3, "b": 3}
    assert {name: len(t["cpu"]) for name, t in times.items()} == {"a": 3, "b": 3}


def test_wall_sees_sleeping_cpu_does_not():
    def busy():
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass

    wall = timing.medians({"sleep": lambda: time.sleep(0.02), "busy": busy}, runs=3)
    cpu = timing.medians({"sleep": lambda: time.sleep(0.02), "busy": busy}, runs=3, clock="cpu")
    assert wall["sleep"] >= 0.02 and wall["busy"] >= 0.02
    assert cpu["sleep"] < 0.01 <= 0.02 <= cpu["busy"] + 1e-3


def test_runs_must_be_positive():
    with pytest.raises(ValueError, match="runs=0"):
        timing.interleaved({"a": lambda: None}, runs=0)
