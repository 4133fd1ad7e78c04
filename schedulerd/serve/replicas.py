"""Which replicas to add, drain or stop so that a service has the replicas it wants,
and rolls over to a new command one replica at a time (docs/serve.md). Pure.

Rules:
- A replica counts while the controller wants it (phase ACTIVE); draining and
  stopping ones are on their way out.
- Fewer than desired: add new ones (of the current generation).
- More than desired: take away the cheapest first: an old generation before the
  current, one whose job waits before one that runs, one not ready before a ready
  one, the newest before the oldest (the oldest were placed within the consumer's
  owned GPUs first). A ready one is drained (the router stops sending it requests
  and those in flight finish); any other is stopped at once.
- Rolling update (a replica of an older generation counts): surge one new replica
  when none of the new ones is still starting, and allow one above desired while a
  new one starts, so that the ready capacity never drops below desired: an old one
  goes only once a new one is ready in its place.
- A rollout whose new replica cannot be placed beside the old ones (no free GPU, for
  the controller's patience, `in_place`) replaces one old replica in place: one old
  one drains first, and the new one takes its GPUs. Capacity dips by one replica
  for that step, instead of the rollout waiting for good.
- After a replica failed, adds wait until `may_add` (the controller's backoff).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaView:
    number: int
    generation: int
    counts: bool  # phase ACTIVE
    running: bool  # its job runs
    ready: bool  # the router has seen it ready


@dataclass(frozen=True)
class ReplicaPlan:
    add: int
    drain: tuple[int, ...]  # ready replicas: drain, then stop
    stop: tuple[int, ...]  # not ready: stop now

    @property
    def empty(self) -> bool:
        return not (self.add or self.drain or self.stop)


def plan_replicas(
    desired: int,
    generation: int,
    replicas: Sequence[ReplicaView],
    may_add: bool = True,
    in_place: bool = False,
) -> ReplicaPlan:
    counted = [r for r in replicas if r.counts]
    new = [r for r in counted if r.generation >= generation]
    old = [r for r in counted if r.generation < generation]
    starting_new = [r for r in new if not r.ready]
    add = max(0, desired - len(counted))
    rolling = bool(old) and desired > 0
    if rolling and not add and not starting_new and len(new) < desired:
        add = 1  # the surge: one new replica beside the old ones
    if not may_add:
        add = 0
    surging = rolling and bool(starting_new or add)
    if in_place and rolling and starting_new and not any(r.running for r in starting_new):
        surging = False  # the surge cannot be placed: make room for it
    allowance = desired + (1 if surging else 0)
    excess = max(0, len(counted) + add - allowance)
    victims = sorted(
        counted,
        key=lambda r: (r.generation >= generation, r.running, r.ready, -r.number),
    )[:excess]
    if rolling:
        # Only old ones make room during a rollout: a new one starting is the surge.
        victims = [r for r in victims if r.generation < generation]
    drain = tuple(r.number for r in victims if r.ready)
    stop = tuple(r.number for r in victims if not r.ready)
    return ReplicaPlan(add, drain, stop)
