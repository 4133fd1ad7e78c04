"""The autoscaler's rules (schedulerd/serve/autoscale.py, docs/serve.md), one case each."""

from __future__ import annotations

import pytest

from schedulerd.serve.autoscale import LoadSample, Why, decide_replicas, describe
from schedulerd.serve.spec import ServiceSpec

SPEC = ServiceSpec(
    "m",
    "/a",
    "u",
    ("serve",),
    min_replicas=1,
    max_replicas=4,
    target_in_flight=2.0,
    scale_down_delay_s=30.0,
    window_s=10.0,
)
ZERO = ServiceSpec(
    "z",
    "/a",
    "u",
    ("serve",),
    min_replicas=1,
    max_replicas=2,
    target_in_flight=2.0,
    scale_down_delay_s=30.0,
    window_s=10.0,
    scale_to_zero=True,
)


def steady(load: int, until: float, queued: int = 0, requests: int = 5) -> list[LoadSample]:
    return [LoadSample(t, load, queued, requests) for t in range(int(until) - 9, int(until) + 1)]


CASES = [
    # name, spec, samples, desired, low_since, last_active, now, expected desired, why
    (
        "a step up is seen at once",
        SPEC,
        [*steady(1, 99), LoadSample(100, 7, 0, 9)],
        1,
        None,
        0.0,
        100.0,
        4,
        Why.UP,
    ),
    ("up never past max", SPEC, steady(40, 100), 2, None, 0.0, 100.0, 4, Why.UP),
    ("held requests count as load", SPEC, steady(2, 100, queued=4), 1, None, 0.0, 100.0, 3, Why.UP),
    ("load at target holds", SPEC, steady(4, 100), 2, None, 0.0, 100.0, 2, Why.HOLD),
    (
        "a drop starts the delay, no change yet",
        SPEC,
        steady(1, 100),
        3,
        None,
        0.0,
        100.0,
        3,
        Why.HOLD,
    ),
    ("down once the delay ran", SPEC, steady(1, 100), 3, 60.0, 0.0, 100.0, 1, Why.DOWN),
    (
        "down to what the window's peak wants",
        SPEC,
        [*steady(1, 99), LoadSample(95.5, 5, 0, 3)],
        4,
        10.0,
        0.0,
        100.0,
        3,
        Why.DOWN,
    ),
    (
        "no report: hold, never down blind",
        SPEC,
        [LoadSample(50, 0, 0, 0)],
        3,
        0.0,
        0.0,
        100.0,
        3,
        Why.BLIND,
    ),
    ("no report below min: up to min", SPEC, [], 0, None, 0.0, 100.0, 1, Why.FLOOR),
    (
        "above a new max: down to it",
        ServiceSpec("m", "/a", "u", ("s",), max_replicas=2),
        steady(1, 100),
        4,
        None,
        0.0,
        100.0,
        2,
        Why.CEILING,
    ),
    (
        "idle for the delay: to zero",
        ZERO,
        steady(0, 100, requests=0),
        1,
        None,
        60.0,
        100.0,
        0,
        Why.ZERO,
    ),
    (
        "idle, not yet for the delay",
        ZERO,
        steady(0, 100, requests=0),
        1,
        None,
        80.0,
        100.0,
        1,
        Why.HOLD,
    ),
    (
        "at zero, a held request wakes it",
        ZERO,
        [*steady(0, 99, requests=0), LoadSample(100, 0, 1, 0)],
        0,
        None,
        10.0,
        100.0,
        1,
        Why.WAKE,
    ),
    (
        "at zero and idle: stays",
        ZERO,
        steady(0, 100, requests=0),
        0,
        None,
        10.0,
        100.0,
        0,
        Why.HOLD,
    ),
    ("at zero, the router away: stays", ZERO, [], 0, None, 10.0, 100.0, 0, Why.BLIND),
    (
        "without scale_to_zero, idle keeps min",
        SPEC,
        steady(0, 100, requests=0),
        1,
        None,
        0.0,
        100.0,
        1,
        Why.HOLD,
    ),
]


@pytest.mark.parametrize(
    ("spec", "samples", "desired", "low_since", "last_active", "now", "want", "why"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rule(spec, samples, desired, low_since, last_active, now, want, why) -> None:
    d = decide_replicas(spec, samples, desired, low_since, last_active, now)
    assert (d.desired, d.why) == (want, why)
    assert describe(d, desired, spec)


def test_the_delay_runs_from_the_first_low_turn_and_a_peak_restarts_it() -> None:
    d = decide_replicas(SPEC, steady(1, 100), 3, None, 0.0, 100.0)
    assert d.low_since == 91.0  # the window's first sample: it was low from there
    d = decide_replicas(SPEC, steady(1, 120), 3, d.low_since, d.last_active, 120.0)
    assert (d.desired, d.low_since) == (3, 91.0)
    busy = decide_replicas(SPEC, steady(6, 125), 3, d.low_since, d.last_active, 125.0)
    assert (busy.desired, busy.low_since) == (3, None)
    d = decide_replicas(SPEC, steady(1, 140), 3, None, busy.last_active, 140.0)
    assert d.desired == 3
    assert d.low_since == 131.0  # the peak at 125 left the window at 131
    d = decide_replicas(SPEC, steady(1, 160), 3, d.low_since, d.last_active, 160.0)
    assert d.desired == 3  # low for 29 s of the 30
    d = decide_replicas(SPEC, steady(1, 161), 3, d.low_since, d.last_active, 161.0)
    assert (d.desired, d.why) == (1, Why.DOWN)


def test_last_active_follows_traffic() -> None:
    d = decide_replicas(
        ZERO, [LoadSample(95, 0, 0, 3), LoadSample(96, 0, 0, 0)], 1, None, 0.0, 100.0
    )
    assert d.last_active == 95
