"""Reconnect delays: exponential with jitter, so that a fleet of agents whose daemon restarts
does not knock on its door all in the same instant."""

from __future__ import annotations

import random

BASE_SECONDS = 0.2
CAP_SECONDS = 5.0


def backoff_delay(
    failures: int,
    rng: random.Random | None = None,
    base: float = BASE_SECONDS,
    cap: float = CAP_SECONDS,
) -> float:
    """Delay before the next try after `failures` failed ones in a row (0 → about `base`).

    The ceiling doubles from `base` up to `cap`; the delay is drawn from [ceiling/2, ceiling]
    so that it never collapses to zero and agents spread out.
    """
    ceiling = min(cap, base * 2 ** min(failures, 32))
    r = rng if rng is not None else random
    return r.uniform(ceiling / 2, ceiling)
