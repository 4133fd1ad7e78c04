"""Reclaim and priority preemption (SEMANTICS: the cycle, steps 4 and 5;
"Reclaim with grace").

A consumer below its entitlement with a waiting job that free GPUs cannot serve
takes GPUs back from borrowers, cheapest first:
  a. GPUs already on their way back (a stop or shrink in progress) and free ones;
  b. shrink elastic jobs above their `min`, newest-started first;
  c. preempt jobs, lowest priority first, then newest-started, never one younger
     than its consumer's `min_runtime`.
It takes no more than the waiting job needs, and only from a victim consumer that
holds more than its entitlement and whose allocation/entitlement before the move
is above the receiver's after it: so every move strictly reduces unfairness and
no GPU can ping-pong between two consumers (no preemption loops).

The GPUs a reclaim counts on are held for the waiting job: free ones are taken
out of play for the rest of the cycle, so borrowers cannot take them back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from schedulerd.core.admission import Admission
from schedulerd.core.model import ConsumerPath, GpuSlot, Job, JobId, NodeName, Preempt, Shrink

_EPS = 1e-9
_TRIES_PER_LEAF = 2  # waiting jobs looked at per consumer and cycle (cost bound)
_TRIES_PER_CYCLE = 16  # waiting jobs reclaimed for per cycle; the rest wait for the next one
_NODES_PER_TRY = 16  # candidate nodes fully evaluated for one waiting job
SPAN = NodeName("*")  # the location of a job that spans nodes: the whole cluster


@dataclass
class Reclaim:
    shrinks: list[Shrink] = field(default_factory=list)
    preemptions: list[Preempt] = field(default_factory=list)
    held: list[GpuSlot] = field(default_factory=list)  # free GPUs kept for receivers
    notes: dict[JobId, str] = field(default_factory=dict)  # waiting job -> what is under way


@dataclass
class _Option:
    """One way to serve a waiting job at one location."""

    cost: tuple[int, int, str]
    claims: list[GpuSlot]
    shrink: dict[JobId, list[GpuSlot]]
    preempt: list[Job]


class Planner:
    def __init__(self, adm: Admission, running: list[Job], now: float) -> None:
        self.adm = adm
        self.now = now
        self.running = [j for j in running if j.held]
        self.free: dict[NodeName, list[GpuSlot]] = {
            node: [GpuSlot(node, i) for i in adm.free.free_on(node)] for node in adm.free.nodes()
        }
        self.incoming: dict[NodeName, list[GpuSlot]] = defaultdict(list)
        for j in self.running:
            for s in j.incoming:
                if s.node in self.free:  # GPUs on unschedulable nodes serve nobody
                    self.incoming[s.node].append(s)
        self.by_leaf: dict[ConsumerPath, list[Job]] = defaultdict(list)
        self.jobs_on: dict[NodeName, list[Job]] = defaultdict(list)
        for j in self.running:
            if not j.stopping:
                self.by_leaf[j.consumer].append(j)
                for node in {s.node for s in j.held}:
                    self.jobs_on[node].append(j)
        # Unclaimed free plus incoming GPUs per node, kept up to date as claims go.
        self.ready_n: dict[NodeName, int] = {
            node: len(self.free[node]) + len(self.incoming.get(node, ())) for node in self.free
        }
        self.tries = 0
        self._incoming_set = {s for slots in self.incoming.values() for s in slots}
        self.claimed: set[GpuSlot] = set()
        self.taken: set[JobId] = set()  # victims already chosen this cycle
        # Allocations as they will be once the moves planned so far are done.
        self.virtual: dict[ConsumerPath, int] = defaultdict(int, adm.allocation)
        self.result = Reclaim()

    # -- step 4: reclaim for consumers below their entitlement ---------------

    def reclaim(self, queues: Mapping[ConsumerPath, list[Job]]) -> None:
        incoming = any(self.incoming.values())
        for leaf in sorted(queues, key=self.adm.starvation_key):
            borrowers = [c for c in self.by_leaf if self._borrower_above(c, 0.0)]
            if not borrowers and not incoming:
                return  # nobody holds borrowed GPUs and nothing is on its way back
            for job in queues[leaf][:_TRIES_PER_LEAF]:
                ent = self.adm.division.entitlement.get(leaf, 0.0)
                if ent <= _EPS or self.virtual[leaf] >= ent - _EPS:
                    break  # at its entitlement: it borrows, it does not reclaim
                after = (self.virtual[leaf] + job.gpus) / ent
                victims = [
                    j for c in borrowers if self._borrower_above(c, after) for j in self.by_leaf[c]
                ]
                self._serve(job, victims, "reclaim")

    def _borrower_above(self, consumer: ConsumerPath, receiver_after: float) -> bool:
        ent = self.adm.division.entitlement.get(consumer, 0.0)
        held = self.virtual[consumer]
        if held <= ent + _EPS:
            return False  # only borrowed GPUs are taken back
        return ent <= _EPS or held / ent > receiver_after + _EPS

    # -- step 5: priority preemption inside a consumer -----------------------

    def by_priority(self, queues: Mapping[ConsumerPath, list[Job]], started: set[JobId]) -> None:
        policy = self.adm.policy
        for leaf, queue in queues.items():
            if not policy.consumers[leaf].priority_preemption:
                continue
            for job in queue[:_TRIES_PER_LEAF]:
                if job.id in started or job.id in self.result.notes:
                    continue

                lower = [j for j in self.by_leaf[leaf] if j.priority < job.priority]
                if lower:
                    self._serve(job, lower, "priority")

    # -- one waiting job ----------------------------------------------------

    def _serve(self, job: Job, victims: list[Job], why: str) -> None:
        n = job.gpus
        if self.tries >= _TRIES_PER_CYCLE or not self._within_limits(job):
            return
        self.tries += 1
        victims = [j for j in victims if j.id not in self.taken]
        spans = self.adm.free.spans_nodes(n)
        locations = [SPAN] if spans else self._candidate_nodes(n, victims)
        allowed = {j.id for j in victims}
        options = [
            o for loc in locations if (o := self._option(job, loc, victims, allowed)) is not None
        ]
        if not options:
            return
        best = min(options, key=lambda o: o.cost)
        if not best.claims:
            return  # servable from free GPUs now: admission's job, not reclaim's
        self.claimed.update(best.claims)
        for slot in best.claims:
            if slot.node in self.ready_n and (self._is_free(slot) or slot in self._incoming_set):
                self.ready_n[slot.node] -= 1
        self.result.held.extend(s for s in best.claims if self._is_free(s))
        freed_from: dict[ConsumerPath, int] = defaultdict(int)
        for job_id, slots in best.shrink.items():
            victim = next(j for j in self.running if j.id == job_id)
            self.taken.add(job_id)
            freed_from[victim.consumer] += len(slots)
            self.result.shrinks.append(
                Shrink(job_id, tuple(slots), self._victim_reason("shrunk", victim, job, why))
            )
        for victim in best.preempt:
            self.taken.add(victim.id)
            freed_from[victim.consumer] += len(victim.held)
            self.result.preemptions.append(
                Preempt(victim.id, self._victim_reason("preempted", victim, job, why))
            )
        for consumer, count in freed_from.items():
            self._add_virtual(consumer, -count)
        self._add_virtual(job.consumer, n)
        self.result.notes[job.id] = self._note(job, best, freed_from)

    def _candidate_nodes(self, n: int, victims: list[Job]) -> list[NodeName]:
        """Nodes where free, incoming and victims' GPUs could add up to n, those
        needing the least taken from victims first."""
        ready = self.ready_n
        takeable: dict[NodeName, int] = defaultdict(int)
        for v in victims:  # an upper bound: claims are checked again in _option
            for s in v.held:
                takeable[s.node] += 1
        nodes = [node for node in self.free if ready[node] + takeable.get(node, 0) >= n]
        nodes.sort(key=lambda node: (-min(ready[node], n), node))
        return nodes[:_NODES_PER_TRY]

    def _option(
        self, job: Job, loc: NodeName, victims: list[Job], allowed: set[JobId]
    ) -> _Option | None:
        n = job.gpus
        free = [s for s in self._at(self.free, loc) if s not in self.claimed]
        # Free GPUs reserved for `lend: false` consumers are not the receiver's.
        free = free[: max(0, int(self.adm.usable_free(job.consumer) + _EPS))]
        if len(free) >= n:
            # Free GPUs are enough: nothing to reclaim, and nothing to hold: the
            # borrowing pass serves the most starved consumer first anyway.
            return _Option((0, 0, loc), [], {}, [])
        ready = free + [s for s in self._at(self.incoming, loc) if s not in self.claimed]
        if len(ready) >= n:
            return _Option((0, 0, loc), ready[:n], {}, [])
        need = n - len(ready)
        claims = list(ready)
        shrink: dict[JobId, list[GpuSlot]] = {}
        preempt: list[Job] = []
        here = victims if loc == SPAN else [j for j in self.jobs_on.get(loc, ()) if j.id in allowed]
        # a. shrink elastic extras, newest-started first.
        for victim in sorted(
            (j for j in here if j.elastic),
            key=lambda j: (-(j.started_at or 0.0), j.id),
        ):
            spare = len(victim.held) - len(victim.releasing) - victim.gpus_min
            slots = [
                s
                for s in victim.held
                if s not in victim.releasing
                and s != victim.anchor
                and s not in self.claimed
                and (loc == SPAN or s.node == loc)
            ][: min(spare, need)]
            if slots:
                shrink[victim.id] = slots
                claims += slots
                need -= len(slots)
            if need <= 0:
                return _Option((0, n - len(ready), loc), claims, shrink, [])
        # b. preempt, lowest priority first, then newest-started.
        for victim in sorted(
            (j for j in here if self._old_enough(j)),
            key=lambda j: (j.priority, -(j.started_at or 0.0), j.id),
        ):
            slots = [
                s for s in victim.held if s not in self.claimed and (loc == SPAN or s.node == loc)
            ]
            if not slots or victim.id in shrink:
                continue
            preempt.append(victim)
            claims += slots
            need -= len(slots)
            if need <= 0:
                shrunk = sum(len(v) for v in shrink.values())
                # Take no more than needed: GPUs a preemption frees beyond the
                # job's need stay unclaimed for the next waiting job.
                return _Option((len(preempt), shrunk, loc), claims[:n], shrink, preempt)
        return None

    def _within_limits(self, job: Job) -> bool:
        for p in self.adm.chain(job.consumer):
            limit = self.adm.policy.consumers[p].limit
            if limit is not None and self.virtual[p] + job.gpus > limit:
                return False
        return True

    def _old_enough(self, job: Job) -> bool:
        spec = self.adm.policy.consumers.get(job.consumer)
        min_runtime = spec.min_runtime_s if spec is not None else 0.0
        return job.started_at is None or self.now - job.started_at >= min_runtime

    def _add_virtual(self, leaf: ConsumerPath, n: int) -> None:
        for p in self.adm.chain(leaf):
            self.virtual[p] += n

    def _at(self, by_node: Mapping[NodeName, list[GpuSlot]], loc: NodeName) -> list[GpuSlot]:
        if loc == SPAN:
            return [s for slots in by_node.values() for s in slots]
        return list(by_node.get(loc, ()))

    def _is_free(self, slot: GpuSlot) -> bool:
        return slot in self.free.get(slot.node, ())

    # -- words ----------------------------------------------------------------

    def _victim_reason(self, what: str, victim: Job, receiver: Job, why: str) -> str:
        v, r = victim.consumer, receiver.consumer
        if why == "priority":
            return (
                f"{what} for job {receiver.id} of {r}, priority {receiver.priority} above "
                f"its {victim.priority} (priority preemption)"
            )
        return (
            f"{what} to give {receiver.gpus} GPU(s) to job {receiver.id} of {r}: "
            f"{r} holds {self.adm.allocation[r]} of its entitlement {self._ent(r):.1f}, "
            f"{v} holds {self.adm.allocation[v]} of its entitlement {self._ent(v):.1f}"
        )

    def _note(self, job: Job, option: _Option, freed_from: Mapping[ConsumerPath, int]) -> str:
        deadlines = [
            j.release_deadline
            for j in self.running
            if j.release_deadline is not None and any(s in option.claims for s in j.incoming)
        ]
        parts = []
        if freed_from:
            names = ", ".join(sorted(freed_from))
            parts.append(f"reclaim from {names} started")
        if deadlines:
            left = max(0.0, max(deadlines) - self.now)
            parts.append(f"GPUs on their way back, grace ends in {left:.0f} s")
        return "; ".join(parts) or "its GPUs are free and held for it"

    def _ent(self, path: ConsumerPath) -> float:
        return self.adm.division.entitlement.get(path, 0.0)
