"""The autoscaler: how many replicas a service wants, from the load its router
reports (docs/serve.md). Pure, in the core's style: samples, the spec and `now` in;
a decision with a typed reason out. No I/O, no clock.

The rule, after Ray Serve (ongoing requests per replica) and vLLM's production stack
(waiting requests count too):
- load = requests in flight plus requests the router holds for want of a ready
  replica; wanted = ceil(load / target_in_flight), within min..max.
- Up at once ("as fast as placement allows"), from the latest report, so that a
  step is acted on at the first report after it, not diluted by a window of quiet. A
  spike costs a replica that the scale-down delay then removes; a late replica costs
  every request of the step.
- Down only from the peak of the whole window, and only once the load has wanted
  fewer replicas for scale_down_delay_s without a break (a dip does not drop
  replicas); the time counts from the start of the first window that was low.
- To zero (scale_to_zero) once no request has been seen for scale_down_delay_s; a
  held request wakes it (queued > 0 wants a replica).
- No report in the window (the router is away): hold, never scale down blind.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from schedulerd.serve.spec import ServiceSpec

STALE_AFTER_S = 5.0  # a router silent this long has no say


@dataclass(frozen=True)
class LoadSample:
    """One router report for one service."""

    at: float
    in_flight: int
    queued: int
    requests: int  # answered since the router's previous report

    @property
    def load(self) -> int:
        return self.in_flight + self.queued

    @property
    def active(self) -> bool:
        return self.load > 0 or self.requests > 0


class Why(enum.Enum):
    UP = "scale-up"  # the recent load wants more
    DOWN = "scale-down"  # the window's peak wanted fewer for the whole delay
    ZERO = "scale-to-zero"  # idle for the delay
    WAKE = "wake"  # a request came for a service at zero
    FLOOR = "floor"  # below min (a new spec, a restart)
    CEILING = "ceiling"  # above max (a new spec)
    HOLD = "hold"  # no change
    BLIND = "no-report"  # no recent report: hold


@dataclass(frozen=True)
class ScaleDecision:
    desired: int
    why: Why
    load: float  # the load the decision was taken on
    wanted: int  # ceil(load / target), before min/max
    # Since when the window has wanted fewer replicas than desired (the scale-down
    # delay runs from here), None when it does not.
    low_since: float | None
    last_active: float  # the latest sample with traffic (or the start)

    @property
    def changed(self) -> bool:
        return self.why in (Why.UP, Why.DOWN, Why.ZERO, Why.WAKE, Why.FLOOR, Why.CEILING)


def decide_replicas(
    spec: ServiceSpec,
    samples: Sequence[LoadSample],
    desired: int,
    low_since: float | None,
    last_active: float,
    now: float,
) -> ScaleDecision:
    """The replicas `spec` wants now. `desired` is what it wanted last; `low_since` and
    `last_active` are what the previous decision returned (at first: None, and when the
    service was created or the daemon started: idleness counts from there)."""
    window = [s for s in samples if now - spec.window_s <= s.at <= now]
    fresh = [s for s in window if now - s.at <= STALE_AFTER_S]
    for s in window:
        if s.active and s.at > last_active:
            last_active = s.at
    if not fresh:
        return _bounded(spec, desired, Why.BLIND, 0.0, desired, None, last_active)
    latest = max(fresh, key=lambda s: s.at)
    recent_load = float(latest.load)
    # A held request wants a replica even below the target (scale from zero).
    wanted_now = _wanted(recent_load, spec.target_in_flight, latest.queued > 0)
    if wanted_now > desired:
        why = Why.WAKE if desired == 0 else Why.UP
        return _bounded(spec, wanted_now, why, recent_load, wanted_now, None, last_active)
    peak = max(s.load for s in window)
    wanted_peak = max(_wanted(peak, spec.target_in_flight, False), spec.min_replicas)
    if spec.scale_to_zero and not any(s.active for s in window):
        if now - last_active >= spec.scale_down_delay_s and desired > 0:
            return ScaleDecision(0, Why.ZERO, 0.0, 0, None, last_active)
        if desired == 0:
            return ScaleDecision(0, Why.HOLD, 0.0, 0, None, last_active)
    if wanted_peak >= desired:
        return _bounded(spec, desired, Why.HOLD, peak, wanted_peak, None, last_active)
    # The whole window has been low (its peak wants fewer): the load went low at its
    # start, not now, so that a drop waits scale_down_delay_s, not the window and then
    # the delay.
    since = low_since if low_since is not None else min(s.at for s in window)
    if now - since >= spec.scale_down_delay_s:
        return _bounded(spec, wanted_peak, Why.DOWN, peak, wanted_peak, None, last_active)
    return _bounded(spec, desired, Why.HOLD, peak, wanted_peak, since, last_active)


def _wanted(load: float, target: float, held: bool) -> int:
    wanted = math.ceil(load / target - 1e-9) if load > 0 else 0
    return max(wanted, 1) if held else wanted


def _bounded(
    spec: ServiceSpec,
    desired: int,
    why: Why,
    load: float,
    wanted: int,
    low_since: float | None,
    last_active: float,
) -> ScaleDecision:
    """Within min..max: a spec changed under the service (or a restart at 0) moves it
    there first, and says so."""
    floor = spec.min_replicas
    if desired < floor and not (
        spec.scale_to_zero and desired == 0 and why in (Why.HOLD, Why.BLIND)
    ):
        if why in (Why.UP, Why.WAKE):
            return ScaleDecision(floor, why, load, wanted, None, last_active)
        return ScaleDecision(floor, Why.FLOOR, load, wanted, None, last_active)
    if desired > spec.max_replicas:
        if why in (Why.UP, Why.WAKE):
            return ScaleDecision(spec.max_replicas, why, load, wanted, None, last_active)
        return ScaleDecision(spec.max_replicas, Why.CEILING, load, wanted, None, last_active)
    return ScaleDecision(desired, why, load, wanted, low_since, last_active)


def describe(d: ScaleDecision, before: int, spec: ServiceSpec) -> str:
    """The decision in words, for the service's history (numbers rounded for people)."""
    target = f"target {spec.target_in_flight:g} per replica"
    load = f"{d.load:.1f} requests in flight or held"
    if d.why is Why.UP:
        return f"{before} → {d.desired}: {load} at the latest report, {target}"
    if d.why is Why.WAKE:
        return f"{before} → {d.desired}: a request came in ({load})"
    if d.why is Why.DOWN:
        return (
            f"{before} → {d.desired}: at most {d.load:.0f} in flight or held over the last "
            f"{spec.window_s:g} s for {spec.scale_down_delay_s:g} s, {target}"
        )
    if d.why is Why.ZERO:
        return f"{before} → 0: no request for {spec.scale_down_delay_s:g} s (scale_to_zero)"
    if d.why is Why.FLOOR:
        return f"{before} → {d.desired}: min_replicas is {spec.min_replicas}"
    if d.why is Why.CEILING:
        return f"{before} → {d.desired}: max_replicas is {spec.max_replicas}"
    if d.why is Why.BLIND:
        return f"{d.desired}: no load report from a router in the last {STALE_AFTER_S:g} s"
    return f"{d.desired}: {load}, {target}"
