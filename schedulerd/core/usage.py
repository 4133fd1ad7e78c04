"""Decayed usage: each (consumer, user)'s recent GPU-seconds, decayed with a half-life
(SEMANTICS: usage decay; Slurm's fair-share usage). One function, used by the daemon
and the simulator alike, so both compute the same usage for the same history.

Exact for piecewise-constant holdings: over an interval of `dt` seconds during which a
key held `g` GPUs, old usage decays by 2^(-dt/h) and the GPU-seconds accrued during the
interval are added decayed from when they accrued: g · h/ln 2 · (1 − 2^(-dt/h)). So the
result does not depend on how often it is called (a daemon's irregular cycles, a
simulator's events): two steps of 5 s give what one step of 10 s gives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

K = TypeVar("K")
NEGLIGIBLE = 1e-6  # GPU-seconds below which a key is forgotten (bounded memory)


def decay_usage(
    usage: Mapping[K, float], held: Mapping[K, float], dt: float, half_life_s: float
) -> dict[K, float]:
    """Usage after `dt` seconds in which each key held `held[key]` GPUs."""
    if dt <= 0:
        out = dict(usage)
        for key in held:
            out.setdefault(key, 0.0)
        return out
    factor = math.pow(0.5, dt / half_life_s)
    accrued = half_life_s / math.log(2) * (1.0 - factor)  # per GPU held throughout
    out = {key: used * factor for key, used in usage.items()}
    for key, gpus in held.items():
        out[key] = out.get(key, 0.0) + gpus * accrued
    return {key: used for key, used in out.items() if used > NEGLIGIBLE or key in held}
