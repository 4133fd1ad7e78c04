"""Decayed usage (schedulerd/core/usage.py): one function for the daemon and the simulator."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schedulerd.core.usage import decay_usage

H = 3600.0


def test_what_was_used_halves_each_half_life() -> None:
    assert decay_usage({"a": 100.0}, {}, H, H) == pytest.approx({"a": 50.0})


def test_holding_one_gpu_for_ever_tends_to_h_over_ln2() -> None:
    got = decay_usage({}, {"a": 1}, 50 * H, H)["a"]
    assert got == pytest.approx(H / math.log(2), rel=1e-9)


def test_a_short_step_adds_about_the_gpu_seconds() -> None:
    assert decay_usage({}, {"a": 2}, 1.0, H)["a"] == pytest.approx(2.0, rel=1e-3)


@given(
    st.lists(st.floats(0.01, 5000.0), min_size=1, max_size=20),
    st.floats(0, 1e6),
    st.integers(0, 64),
)
def test_the_result_does_not_depend_on_how_the_time_is_cut(
    steps: list[float], start: float, gpus: int
) -> None:
    """The daemon decays at every cycle, the simulator at its events: same history,
    same usage."""
    many: dict[str, float] = {"a": start}
    for dt in steps:
        many = decay_usage(many, {"a": gpus}, dt, H)
    once = decay_usage({"a": start}, {"a": gpus}, sum(steps), H)
    assert many["a"] == pytest.approx(once["a"], rel=1e-9, abs=1e-9)


def test_forgotten_once_negligible_and_not_held() -> None:
    assert decay_usage({"a": 1e-3}, {}, 100 * H, H) == {}
