"""Time-based plans: a consumer's owned, share and limit by time window (docs/policy.md).

A window is read on the local wall clock of the policy's time zone: it holds while the
clock reads a weekday it names (or, for a window that crosses midnight, the day after)
and a time from its start up to (not including) its end. A consumer's first window that
holds sets what it names of owned, share and limit; outside every window its own values
hold. A parent whose owned the policy leaves out owns the sum of its children's owned in
force at that instant.

Windows change a consumer's own terms, which hold in every pool the policy does not name
under `pools:`; a named pool's terms (ConsumerPolicy.pools) are not changed by windows.

Because windows match on the local weekday and time of day only, the *window state* (which
window, if any, holds for each consumer) is a function of the local time of the week,
whatever DST does: `local_points` lists the finitely many seconds of the week at which
it can change, so that the loader can check every state a policy can produce.

Pure: the instant is an argument; zoneinfo's tables are read, never the clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import replace
from functools import lru_cache
from zoneinfo import ZoneInfo

from schedulerd.core.model import ConsumerPath, ConsumerPolicy, Policy, Window

DAY_S = 86400
WEEK_S = 7 * DAY_S
# Resolved policies kept per policy: a week has few distinct window states in practice;
# a policy with more is resolved again when they come back.
MAX_CACHED_STATES = 64

# A window state: per consumer of `policy.windowed`, in order, the index of the window
# in force, or -1.
State = tuple[int, ...]


@lru_cache(maxsize=32)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def holds(w: Window, weekday: int, second: int) -> bool:
    """Whether `w` holds at local `weekday` (0 = Monday) and `second` from midnight."""
    if w.start < w.end:
        return bool(w.days >> weekday & 1) and w.start <= second < w.end
    # Crossing midnight: from start on a day it names to end on the next day.
    if second >= w.start:
        return bool(w.days >> weekday & 1)
    return second < w.end and bool(w.days >> ((weekday - 1) % 7) & 1)


def local_time(policy: Policy, now: float) -> tuple[int, int]:
    """The local weekday (0 = Monday) and second of the day at unix time `now`."""
    t = dt.datetime.fromtimestamp(now, zone(policy.timezone))
    return t.weekday(), t.hour * 3600 + t.minute * 60 + t.second


def state_at_local(policy: Policy, weekday: int, second: int) -> State:
    out = []
    for path in policy.windowed:
        index = -1
        for i, w in enumerate(policy.consumers[path].windows):
            if holds(w, weekday, second):
                index = i
                break
        out.append(index)
    return tuple(out)


def window_state(policy: Policy, now: float) -> State:
    """Which window holds for each windowed consumer at `now` (() without windows)."""
    if not policy.windowed:
        return ()
    return state_at_local(policy, *local_time(policy, now))


def policy_at(policy: Policy, now: float) -> Policy:
    """The policy with each consumer's owned, share and limit in force at unix time
    `now`, and no windows. A policy without windows is returned as it is."""
    if not policy.windowed:
        return policy
    return resolve(policy, window_state(policy, now))


def resolve(policy: Policy, state: State) -> Policy:
    """The policy as it holds in a window state (cached on the policy)."""
    cached = policy._at.get(state)
    if cached is not None:
        return cached
    in_force = dict(zip(policy.windowed, state, strict=True))
    consumers: dict[ConsumerPath, ConsumerPolicy] = {}
    # Bottom-up (the mapping is top-down), so that a parent that owns the sum of its
    # children's sees their owned in force.
    for path in reversed(tuple(policy.consumers)):
        spec = policy.consumers[path]
        index = in_force.get(path, -1)
        w = spec.windows[index] if index >= 0 else None
        owned = spec.owned
        if w is not None and w.owned is not None:
            owned = w.owned
        elif spec.owned_sum:
            owned = sum(consumers[c].owned for c in policy.children(path))
        consumers[path] = replace(
            spec,
            owned=owned,
            share=w.share if w is not None and w.share is not None else spec.share,
            limit=w.limit if w is not None and (w.limit_set or w.limit is not None) else spec.limit,
            windows=(),
            window=w.when if w is not None else "",
        )
    out = Policy(
        consumers={p: consumers[p] for p in policy.consumers},
        usage_half_life_s=policy.usage_half_life_s,
        usage_weight=policy.usage_weight,
        timezone=policy.timezone,
    )
    if len(policy._at) >= MAX_CACHED_STATES:
        policy._at.clear()
    policy._at[state] = out
    return out


def edges(w: Window) -> Iterable[int]:
    """The seconds of the week (from Monday 00:00) at which `w` starts or ends."""
    for day in range(7):
        if w.days >> day & 1:
            start = day * DAY_S + w.start
            end = (day + (1 if w.end <= w.start else 0)) * DAY_S + w.end
            yield start % WEEK_S
            yield end % WEEK_S


def local_points(policy: Policy, week_start: bool = True) -> list[int]:
    """Every second of the week at which some window starts or ends, sorted, and
    Monday 00:00 (`week_start`): the window state is constant from one to the next, so
    these points show every state."""
    points = {0} if week_start else set()
    for path in policy.windowed:
        for w in policy.consumers[path].windows:
            points.update(edges(w))
    return sorted(points)


def next_boundary(policy: Policy, now: float) -> float | None:
    """The first unix time after `now` at which some window starts or ends (the window
    state may change there), or None without windows. An edge on a local time that a
    DST change skips is read with the offset before the change (02:30 on the
    spring-forward night in Berlin comes at 03:30 CEST); the daemon's cycles every tick
    switch at the change itself."""
    if not policy.windowed:
        return None
    tz = zone(policy.timezone)
    local = dt.datetime.fromtimestamp(now, tz)
    monday = local.date() - dt.timedelta(days=local.weekday())
    best: float | None = None
    points = local_points(policy, week_start=False)
    for week in (0, 1):
        for point in points:
            day, second = divmod(point, DAY_S)
            date = monday + dt.timedelta(days=7 * week + day)
            clock = dt.time(second // 3600, second // 60 % 60, second % 60)
            for fold in (0, 1):
                wall = dt.datetime.combine(date, clock, tz)
                at = wall.replace(fold=fold).timestamp()
                if at > now and (best is None or at < best):
                    best = at
        if best is not None:
            return best
    return best


def describe_terms(spec: ConsumerPolicy) -> str:
    """ "owned 8 share 3 limit 12": a consumer's terms, for logs."""
    limit = f" limit {spec.limit}" if spec.limit is not None else ""
    return f"owned {spec.owned} share {spec.share:g}{limit}"


def switches(before: Policy | None, after: Policy) -> list[str]:
    """Log lines for the windowed consumers whose window changed between two policies
    resolved at two instants (`before` None: at start, every one in a window)."""
    out = []
    for path, spec in after.consumers.items():
        old: ConsumerPolicy | None = before.consumers.get(path) if before is not None else None
        if old is not None and old.window == spec.window:
            continue
        if old is None and not spec.window:
            continue
        why = f"({spec.window})" if spec.window else "(outside its windows)"
        out.append(f"policy window: {path} now {describe_terms(spec)} {why}")
    return out
