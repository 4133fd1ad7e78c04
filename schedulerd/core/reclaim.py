"""Reclaim and priority preemption (SEMANTICS: the cycle, steps 4 and 5;
"Reclaim with grace").

A consumer at least one whole GPU below its entitlement (allocation <
floor(entitlement), SEMANTICS' guarantee) with a waiting job that free GPUs cannot
serve takes GPUs back from borrowers, cheapest first:
  a. GPUs already on their way back (a stop or shrink in progress) and free ones;
  b. shrink elastic jobs above their `min`, newest-started first;
  c. preempt jobs, lowest priority first, then newest-started, never one younger
     than its consumer's `min_runtime`.
Across nodes the same order holds (`Planner._cost`). It takes no more than the
waiting job needs: a victim (or a shrink) that later victims make unnecessary is
spared. It takes only from a victim consumer that holds more than its entitlement
and whose allocation/entitlement before the move is above the receiver's after
it: so every move strictly reduces unfairness.

That alone does not rule out preemption loops: admission serves the most starved
consumer first by allocation/entitlement *before* a start, so a victim left more
starved than the receiver would take its freed GPUs back the moment they are free
(and lose them again the next cycle). So a move is also made only when, after it,
the victim stays less starved than the receiver is before it, both as leaves and
where their paths in the tree part (the children of their lowest common ancestor):
the freed GPUs then go to the receiver's side, and the victim does not turn into
a reclaimer itself. For the same reason a job of a consumer with priority
preemption is not taken while a lower-priority job of that consumer runs, unless
the consumer stays above its entitlement (it would take that one's GPUs at once,
and being then below its entitlement, be served before the receiver). GPUs
already on their way back count as gone from their holder, and GPUs claimed for a
consumer in this cycle never make it a victim.
Limits count what the victims give back under the same limited consumer.

Short of its entitlement by a fraction of a GPU (or not at all), a consumer
reclaims nothing: reclaim gives back GPUs a consumer is owed, and any GPU it took
then it would borrow (allocation + 1 > entitlement: entitlements are fractional,
allocations whole), to be taken back by the next consumer owed one. The fraction
is worth less than the preemption's restart and grace; GPUs that free up reach it
first anyway (admission serves the most starved first).

The GPUs a reclaim counts on are held for the waiting job: free ones are taken
out of play for the rest of the cycle, so borrowers cannot take them back. Those
that GPUs on their way back complete are held before admission (`hold_incoming`):
victims' GPUs come back at different times (graces differ), and admission must not
hand the first ones to someone else meanwhile.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

from schedulerd.core.admission import Admission, takes_back
from schedulerd.core.model import ConsumerPath, GpuSlot, Job, JobId, NodeName, Preempt, Shrink
from schedulerd.core.queues import Waiting
from schedulerd.core.running import RunningIndex

_EPS = 1e-9
_TRIES_PER_LEAF = 2  # waiting jobs looked at per consumer and cycle (cost bound)
_TRIES_PER_CYCLE = 16  # waiting jobs reclaimed for per cycle; the rest wait for the next one
_NODES_PER_TRY = 16  # candidate nodes fully evaluated for one waiting job
SPAN = NodeName("*")  # the location of a job that spans nodes: the whole cluster
# How much a way to serve a waiting job disrupts (Planner._cost): lower is cheaper.
_Cost = tuple[bool, int, int, int, float, int, int, float, str]


@dataclass
class Reclaim:
    shrinks: list[Shrink] = field(default_factory=list)
    preemptions: list[Preempt] = field(default_factory=list)
    held: list[GpuSlot] = field(default_factory=list)  # free GPUs kept for receivers
    notes: dict[JobId, str] = field(default_factory=dict)  # waiting job -> what is under way
    noted_in: dict[JobId, ConsumerPath] = field(default_factory=dict)  # ... and its consumer


@dataclass
class _Option:
    """One way to serve a waiting job at one location."""

    cost: _Cost
    claims: list[GpuSlot]
    shrink: dict[JobId, list[GpuSlot]]
    preempt: list[Job]


class Planner:
    def __init__(
        self, adm: Admission, running: RunningIndex, rank: Mapping[JobId, int], now: float
    ) -> None:
        self.adm = adm
        self.now = now
        self.index = running  # kept between cycles (running.py): read, never changed here
        self.index_rank = rank  # the snapshot's order of its jobs
        # Read from admission on first use after a refresh: a cycle with nothing
        # to reclaim never needs them, and reading costs a slot per free GPU.
        self._free: dict[NodeName, list[GpuSlot]] | None = None
        self._ready_n: dict[NodeName, int] = {}
        self.claimed: set[GpuSlot] = set()
        self._may: dict[int, bool] = {}  # _incoming_may_serve's answers, per size
        # _candidate_nodes' nodes with n ready, per n: valid, as _may, until a claim or
        # a refresh changes what is ready.
        self._ready_at: dict[int, list[NodeName]] = {}
        self._nonzero: list[NodeName] | None = None  # nodes with something ready
        # The nodes where some consumers' jobs hold GPUs (_Victims.nodes): the index
        # does not change during a cycle.
        self.nodes_of_many: dict[frozenset[ConsumerPath], set[NodeName]] = {}
        self.tries = 0
        self.taken: set[JobId] = set()  # victims already chosen this cycle
        self.result = Reclaim()
        self.by_id: Mapping[JobId, Job] = running.jobs
        # Per consumer, its running jobs that hold GPUs and are not stopping (victims
        # to be); per node, each such job there with its GPUs there; per consumer, the
        # GPUs its jobs would give back (held, less those on their way back already):
        # a try reads these for whole consumers of victims rather than walking their jobs.
        self.by_leaf: Mapping[ConsumerPath, Mapping[JobId, Job]] = running.movable
        self.count_on = running.count_on
        self.gives = running.gives
        self.nodes_of = running.nodes_of
        # Built on first need (_index): most cycles have nothing waiting and nothing on
        # its way back, and never need them.
        self._indexed = False
        self.releasing: list[Job] = []
        self.incoming: dict[NodeName, list[GpuSlot]] = defaultdict(list)
        self._incoming_set: set[GpuSlot] = set()
        # Allocations as they will be once the moves planned so far are done:
        # admission's, plus `moved`. GPUs already on their way back are gone from
        # their holder: counting them would take more from a consumer that the
        # stops under way bring down anyway.
        self.moved: dict[ConsumerPath, int] = defaultdict(int)
        self.virtual: dict[ConsumerPath, int] = defaultdict(int)
        # GPUs claimed for a consumer's waiting jobs this cycle: it does not hold
        # them yet, so they never make it a borrower to take from (that would stop
        # one of its jobs to start another).
        self.receiving: dict[ConsumerPath, int] = defaultdict(int)
        # The consumers of running jobs that hold borrowed GPUs (_borrowers), None when
        # to be read again; those whose allocation moved since it was last read.
        self._borrowing: set[ConsumerPath] | None = None
        self._touched: set[ConsumerPath] = set()

    def _index(self) -> None:
        if self._indexed:
            return
        self._indexed = True
        # In the snapshot's order: the GPUs on their way back are claimed in that order.
        rank = self.index_rank
        self.releasing = sorted(self.index.releasing.values(), key=lambda j: rank[j.id])
        for j in self.releasing:
            for s in j.incoming:
                if s.node in self.free:  # GPUs on unschedulable nodes serve nobody
                    self.incoming[s.node].append(s)
                    self.ready_n[s.node] += 1
        self._ready_at = {}
        self._nonzero = None
        self._may = {}
        self._incoming_set = {s for slots in self.incoming.values() for s in slots}
        self.virtual = defaultdict(int, self.adm.allocation)
        self._borrowing = None
        gone: dict[ConsumerPath, int] = defaultdict(int)  # per consumer, up the tree once
        for j in self.releasing:
            gone[j.consumer] += len(j.incoming)
        for consumer, n in gone.items():
            self._add_virtual(consumer, -n)

    @property
    def free(self) -> dict[NodeName, list[GpuSlot]]:
        """Free GPUs as admission sees them now (claimed ones were taken out of
        play), per schedulable node."""
        if self._free is None:
            self._read_free()
            assert self._free is not None
        return self._free

    @property
    def ready_n(self) -> dict[NodeName, int]:
        """Per node, the unclaimed free plus incoming GPUs, kept up to date as
        claims go."""
        if self._free is None:
            self._read_free()
        return self._ready_n

    def _read_free(self) -> None:
        self._free = {
            node: [GpuSlot(node, i) for i in self.adm.free.free_on(node)]
            for node in self.adm.free.nodes()
        }
        self._ready_n = {node: len(slots) for node, slots in self._free.items()}
        for slots in self.incoming.values():
            for s in slots:
                if s not in self.claimed:
                    self._ready_n[s.node] += 1

    # -- step 4: reclaim for consumers below their entitlement ---------------

    def hold_incoming(self, queues: Mapping[ConsumerPath, Sequence[Job]]) -> None:
        """Before admission: a waiting job that GPUs on their way back, with free
        ones beside them, will serve keeps those free ones. Else, as a victim's
        GPUs come back at different times (graces differ), admission would hand
        the first ones to someone else (the victim itself, often) and the reclaim
        would start over: a preemption loop. No victims here; the tries it takes
        are its own."""
        if not self.index.releasing:
            return
        self._index()
        if not self._incoming_set:
            return
        self.reclaim(queues, take=False)
        self.tries = 0

    def refresh(self) -> None:
        """Read again what admission changed since: free GPUs, allocations."""
        self._free = None
        self._may = {}
        self._ready_at = {}
        self._nonzero = None
        if not self._indexed:
            return  # _index reads the allocations when it runs
        self.virtual = defaultdict(int, self.adm.allocation)
        self._borrowing = None
        for p, n in self.moved.items():
            self.virtual[p] += n

    def reclaim(self, queues: Mapping[ConsumerPath, Sequence[Job]], take: bool = True) -> None:
        if not any(queues.values()):
            return
        self._index()
        incoming = any(self.incoming.values())
        # Who borrows changes only when a claim is made: read again at the next
        # leaf after one, not at every leaf.
        borrowers: list[ConsumerPath] = []
        borrowers_stale = True
        ranked: list[tuple[float, ConsumerPath]] | None = None  # borrowers by ratio, read once
        for leaf in sorted(queues, key=self.adm.starvation_key):
            if self.tries >= _TRIES_PER_CYCLE:
                return  # _serve would refuse every further try: nothing left to do
            if borrowers_stale:
                borrowers = self._borrowers() if take else []
                borrowers_stale = False
                ranked = None
            if not borrowers and not incoming:
                return  # nobody holds borrowed GPUs and nothing is on its way back
            # Sizes that found nothing: a job of the same size would find nothing
            # either until something is claimed (what reclaim sees depends on the
            # leaf and the size only), so it costs no try, and a large head of the
            # queue that cannot be served does not hide a smaller job that can.
            # Sizes still worth a look: not failed, and (holding incoming GPUs) ones they
            # may serve. Once none is left, the rest of the queue would only be skipped.
            queue = queues[leaf]
            sizes = _sizes(queue)
            failed: set[int] = set()
            alive = self._alive(sizes, failed, take)
            tries = 0
            for job in queue:
                if tries >= _TRIES_PER_LEAF or not alive:
                    break
                if job.id in self.result.notes or job.gpus not in alive:
                    continue  # served already (hold_incoming), known to fail, or (not
                    # take) one that incoming GPUs cannot serve: spend no try on it
                if take and self._patient(job):
                    continue  # not waited its consumer's reclaim_patience yet
                ent = self.adm.division.entitlement.get(leaf, 0.0)
                if self.virtual[leaf] >= whole_gpus(ent):
                    # Not owed a whole GPU (SEMANTICS guarantees GPUs below
                    # floor(entitlement)): any GPU it took it would borrow. It waits
                    # for GPUs that free up, which reach it first (module docstring).
                    break
                after = (self.virtual[leaf] + job.gpus) / ent
                if ranked is None:
                    ranked = self._ranked(borrowers)
                # _borrower_above(c, after) for each borrower: those above `after`.
                above = set()
                for ratio, c in ranked:
                    if not ratio > after + _EPS:
                        break
                    above.add(c)
                victims = _Victims(self, above)
                tries += 1
                if self._serve(job, victims, "reclaim"):
                    failed.clear()
                    borrowers_stale = True
                    ranked = None
                else:
                    failed.add(job.gpus)
                alive = self._alive(sizes, failed, take)

    def _alive(self, sizes: Iterable[int], failed: set[int], take: bool) -> set[int]:
        return {n for n in sizes if n not in failed and (take or self._incoming_may_serve(n))}

    def _borrowers(self) -> list[ConsumerPath]:
        """The consumers with running jobs that hold borrowed GPUs (in any order: only
        who they are matters). Read again only for consumers whose allocation moved."""
        if self._borrowing is None:
            self._borrowing = {c for c in self.by_leaf if self._borrower_above(c, 0.0)}
        else:
            for c in self._touched:
                if c in self.by_leaf and self._borrower_above(c, 0.0):
                    self._borrowing.add(c)
                else:
                    self._borrowing.discard(c)
        self._touched = set()
        return list(self._borrowing)

    def _ranked(self, borrowers: list[ConsumerPath]) -> list[tuple[float, ConsumerPath]]:
        """Borrowers by what they hold over their entitlement, highest first (infinite
        for one entitled to nothing): those _borrower_above a receiver's `after` are a
        prefix (admission.takes_back, for consumers that hold more than their
        entitlement). Valid until a claim changes what they hold."""
        out = []
        for c in borrowers:
            ent = self.adm.division.entitlement.get(c, 0.0)
            held = self.virtual[c] - self.receiving[c]
            if held <= ent + _EPS:
                continue  # no longer above its entitlement: never a victim
            out.append((float("inf") if ent <= _EPS else held / ent, c))
        out.sort(key=lambda rc: rc[0], reverse=True)
        return out

    def _patient(self, job: Job) -> bool:
        """Whether the job has waited less than its consumer's reclaim_patience: GPUs
        that free up by themselves may serve it meanwhile (docs/scheduling.md)."""
        spec = self.adm.policy.consumers.get(job.consumer)
        if spec is None or spec.reclaim_patience_s <= 0 or job.waiting_since is None:
            return False
        return self.now - job.waiting_since < spec.reclaim_patience_s

    def _incoming_may_serve(self, n: int) -> bool:
        """Whether unclaimed GPUs on their way back, with the free ones beside
        them, might make n GPUs where the job can be placed. Kept per size until a
        claim or a refresh changes what it reads."""
        known = self._may.get(n)
        if known is not None:
            return known
        nodes = {s.node for s in self._incoming_set if s not in self.claimed}
        if self.adm.free.spans_nodes(n):
            may = bool(nodes) and sum(self.ready_n.values()) >= n
        else:
            may = any(self.ready_n[node] >= n for node in nodes)
        self._may[n] = may
        return may

    def _borrower_above(self, consumer: ConsumerPath, receiver_after: float) -> bool:
        ent = self.adm.division.entitlement.get(consumer, 0.0)
        held = self.virtual[consumer] - self.receiving[consumer]
        return takes_back(held, ent, receiver_after)

    # -- step 5: priority preemption inside a consumer -----------------------

    def by_priority(
        self, queues: Mapping[ConsumerPath, Sequence[Job]], started: Container[JobId]
    ) -> None:
        policy = self.adm.policy
        for leaf, queue in queues.items():
            if not policy.consumers[leaf].priority_preemption or not queue:
                continue
            self._index()
            for job in queue[:_TRIES_PER_LEAF]:
                if job.id in started or job.id in self.result.notes:
                    continue

                mine = self.by_leaf.get(leaf, {}).values()
                lower = [j for j in mine if j.priority < job.priority]
                if lower:
                    self._serve(job, lower, "priority")

    # -- one waiting job ----------------------------------------------------

    def _serve(self, job: Job, victims: list[Job] | _Victims, why: str) -> bool:
        """Plan what serves `job`, if anything; whether something was claimed."""
        n = job.gpus
        if self.tries >= _TRIES_PER_CYCLE:
            return False
        if not isinstance(victims, _Victims):
            victims = _Victims(self, None, [j for j in victims if j.id not in self.taken])
        if not self._within_given(job, victims.give()):
            return False
        self.tries += 1
        spans = self.adm.free.spans_nodes(n)
        locations = [SPAN] if spans else self._candidate_nodes(n, victims)
        if self._free_serves(job, locations):
            return False  # servable from free GPUs now: admission's job (below, sooner)
        options = [
            o
            for loc in locations
            if (o := self._option(job, loc, victims, why != "priority")) is not None
            and self._within_limits(job, o.preempt, o.shrink)
            and (why == "priority" or self._not_undone(job, o.preempt, o.shrink))
        ]
        if not options or any(not o.claims for o in options):
            return False  # none, or servable from free GPUs now: admission's job
        best = min(options, key=lambda o: o.cost)
        self.claimed.update(best.claims)
        self._may = {}
        self._ready_at = {}
        self._nonzero = None
        for slot in best.claims:
            if slot.node in self.ready_n and (self._is_free(slot) or slot in self._incoming_set):
                self.ready_n[slot.node] -= 1
        self.result.held.extend(s for s in best.claims if self._is_free(s))
        freed_from: dict[ConsumerPath, int] = defaultdict(int)
        for job_id, slots in best.shrink.items():
            victim = self.by_id[job_id]
            self.taken.add(job_id)
            freed_from[victim.consumer] += len(slots)
            self.result.shrinks.append(
                Shrink(job_id, tuple(slots), self._victim_reason("shrunk", victim, job, why))
            )
        for victim in best.preempt:
            self.taken.add(victim.id)
            # Its GPUs already being released were counted gone at the start.
            freed_from[victim.consumer] += len(victim.held) - len(victim.releasing)
            self.result.preemptions.append(
                Preempt(victim.id, self._victim_reason("preempted", victim, job, why), why)
            )
        for consumer, count in freed_from.items():
            self._add_virtual(consumer, -count)
        self._add_virtual(job.consumer, n)
        for p in self.adm.chain(job.consumer):
            self.receiving[p] += n
            self._touched.add(p)
        self.result.notes[job.id] = self._note(job, best, freed_from)
        self.result.noted_in[job.id] = job.consumer
        return True

    def _free_serves(self, job: Job, locations: list[NodeName]) -> bool:
        """Whether one of `locations` has enough free GPUs for `job` (within every
        limit): then _option finds a way that claims nothing there, and the try ends
        without claiming anything, whatever the other locations offer; found here
        without weighing victims."""
        n = job.gpus
        if int(self.adm.usable_free(job.consumer) + _EPS) < n:
            return False
        claimed = self.claimed
        if not any(
            sum(1 for s in self._at(self.free, loc) if s not in claimed) >= n for loc in locations
        ):
            return False
        return self._within_limits(job, [], {})

    def _candidate_nodes(self, n: int, victims: _Victims) -> list[NodeName]:
        """Nodes where free, incoming and victims' GPUs could add up to n, those
        needing the least taken from victims first (by name among equals), at most
        _NODES_PER_TRY. Those with n ready come first; after them only nodes where the
        victims hold GPUs can qualify, so only those are counted (an upper bound:
        claims are checked again in _option), in order, until enough are found."""
        ready = self.ready_n
        first = self._ready_at.get(n)
        if first is None:
            first = sorted(node for node in self.free if ready[node] >= n)[:_NODES_PER_TRY]
            self._ready_at[n] = first
        out = list(first)
        if len(out) == _NODES_PER_TRY:
            return out
        free = self.free
        victims_on = victims.nodes()
        if self._nonzero is None:
            self._nonzero = [node for node, k in ready.items() if k != 0]
        # By (-min(ready, n), name): most nodes have nothing ready; those are read by
        # name (self.free is: FreeGpus.nodes) only as far as needed.
        some = sorted(
            (node for node in self._nonzero if ready[node] < n and node in victims_on),
            key=lambda node: (-ready[node], node),
        )
        some = [node for node in some if node in free]
        ahead = [node for node in some if ready[node] > 0]
        behind = [node for node in some if ready[node] < 0]
        zero = (node for node in free if ready[node] == 0 and node in victims_on)
        for node in chain(ahead, zero, behind):
            if ready[node] + victims.on(node) >= n:
                out.append(node)
                if len(out) == _NODES_PER_TRY:
                    break
        return out

    def _option(
        self, job: Job, loc: NodeName, victims: _Victims, borrowing: bool
    ) -> _Option | None:
        n = job.gpus
        free = [s for s in self._at(self.free, loc) if s not in self.claimed]
        # Free GPUs reserved for `lend: false` consumers are not the receiver's.
        free = free[: max(0, int(self.adm.usable_free(job.consumer) + _EPS))]
        if len(free) >= n:
            # Free GPUs are enough: nothing to reclaim, and nothing to hold: the
            # borrowing pass serves the most starved consumer first anyway.
            return _Option(self._cost(loc, 0, {}, []), [], {}, [])
        ready = free + [s for s in self._at(self.incoming, loc) if s not in self.claimed]
        if len(ready) >= n:
            return _Option(self._cost(loc, 0, {}, []), ready[:n], {}, [])
        need = n - len(ready)
        claims = list(ready)
        shrink: dict[JobId, list[GpuSlot]] = {}
        preempt: list[Job] = []
        taken: dict[JobId, list[GpuSlot]] = {}  # each preempted job's GPUs at loc
        on_loc = self.count_on.get(loc, {})
        here = (
            victims.jobs()
            if loc == SPAN
            else [j for j in map(self.by_id.__getitem__, on_loc) if j in victims]
        )
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
                return _Option(self._cost(loc, n - len(ready), shrink, []), claims, shrink, [])
        # b. preempt, lowest priority first, then the least preempted before (a restarted
        # job is the newest-started again: without this it would be the next victim,
        # over and over), then newest-started; for borrowing, never one at its
        # consumer's max_preemptions.
        for victim in sorted(
            (j for j in here if self._old_enough(j) and not (borrowing and self._capped(j))),
            key=lambda j: (j.priority, j.preemptions, -(j.started_at or 0.0), j.id),
        ):
            slots = [
                s for s in victim.held if s not in self.claimed and (loc == SPAN or s.node == loc)
            ]
            if not slots or victim.id in shrink or self._cascades(job, victim, preempt):
                continue
            preempt.append(victim)
            taken[victim.id] = slots
            need -= len(slots)
            if need <= 0:
                # Take no more than needed: the last victim is needed, but it may
                # make earlier ones (latest chosen first) or some shrinks redundant.
                excess = -need
                for v in reversed(preempt[:-1]):
                    if len(taken[v.id]) <= excess:
                        excess -= len(taken.pop(v.id))
                        preempt.remove(v)
                for job_id in reversed(list(shrink)):
                    drop = min(excess, len(shrink[job_id]))
                    excess -= drop
                    shrink[job_id] = shrink[job_id][: len(shrink[job_id]) - drop]
                    if not shrink[job_id]:
                        del shrink[job_id]
                claims = ready + [s for v in shrink.values() for s in v]
                claims += [s for v in preempt for s in taken[v.id]]
                # GPUs the last preemption frees beyond the job's need stay
                # unclaimed for the next waiting job.
                cost = self._cost(loc, n - len(ready), shrink, preempt)
                return _Option(cost, claims[:n], shrink, preempt)
        return None

    def _cost(
        self, loc: NodeName, need: int, shrink: Mapping[JobId, list[GpuSlot]], preempt: list[Job]
    ) -> _Cost:
        """Cheapest first, across locations as within one: no preemption at all, then
        the lowest priority preempted, the victims preempted least before, the fewest
        preemptions, the newest-started
        preempted (their oldest as recent as can be), the fewest GPUs freed beyond
        the need (the disruption budget), the fewest shrunk, the newest-started
        shrunk, then the location's name."""
        shrunk = sum(len(slots) for slots in shrink.values())
        freed = shrunk + sum(len(v.held) for v in preempt)
        return (
            bool(preempt),
            max((v.priority for v in preempt), default=0),
            max((v.preemptions for v in preempt), default=0),
            len(preempt),
            -min((v.started_at or 0.0 for v in preempt), default=0.0),
            freed - need,
            shrunk,
            -min((self.by_id[i].started_at or 0.0 for i in shrink), default=0.0),
            loc,
        )

    def _freed(
        self, preempt: list[Job], shrink: Mapping[JobId, list[GpuSlot]] | None
    ) -> dict[ConsumerPath, int]:
        """GPUs these victims give back, per consumer up the tree (those already on
        their way back were counted gone at the start)."""
        per_consumer: dict[ConsumerPath, int] = defaultdict(int)
        for victim in preempt:
            per_consumer[victim.consumer] += len(victim.held) - len(victim.releasing)
        for job_id, slots in (shrink or {}).items():
            per_consumer[self.by_id[job_id].consumer] += len(slots)
        return self._up(per_consumer)

    def _up(self, per_consumer: Mapping[ConsumerPath, int]) -> dict[ConsumerPath, int]:
        freed: dict[ConsumerPath, int] = defaultdict(int)
        for consumer, n in per_consumer.items():  # up the tree once per consumer, not per job
            for p in self.adm.chain(consumer):
                freed[p] += n
        return freed

    def _within_limits(
        self,
        job: Job,
        preempt: list[Job],
        shrink: Mapping[JobId, list[GpuSlot]] | None = None,
    ) -> bool:
        """Whether the receiver stays within every limit once these victims give
        their GPUs back: a victim under the same limited consumer (a sibling, or
        the consumer itself for priority preemption) makes room under it."""
        return self._within_given(job, None, preempt, shrink)

    def _within_given(
        self,
        job: Job,
        given: Mapping[ConsumerPath, int] | None,
        preempt: list[Job] = (),  # type: ignore[assignment]
        shrink: Mapping[JobId, list[GpuSlot]] | None = None,
    ) -> bool:
        """_within_limits, with what the victims give back per consumer (`given`)."""
        freed = self._up(given) if given is not None else self._freed(preempt, shrink)
        for p in self.adm.chain(job.consumer):
            limit = self.adm.policy.consumers[p].limit
            if limit is not None and self.virtual[p] + job.gpus - freed[p] > limit:
                return False
        return True

    def _not_undone(
        self, job: Job, preempt: list[Job], shrink: Mapping[JobId, list[GpuSlot]]
    ) -> bool:
        """Whether, after the move, the victim's side is still less starved than the
        receiver's side before it (module docstring), compared where their paths
        part and between the two leaves: else admission would hand the freed GPUs
        back to the victim (a preemption loop), or the victim, left below its
        entitlement, would reclaim in turn and leave its side starved for a while."""
        freed = self._freed(preempt, shrink)
        mine = self.adm.chain(job.consumer)
        for victim in {v.consumer for v in preempt} | {self.by_id[i].consumer for i in shrink}:
            theirs = self.adm.chain(victim)
            if victim == job.consumer or victim not in theirs:
                continue  # itself, or a consumer the policy dropped (it only borrows)
            common = next(p for p in mine if p in theirs)
            pairs = {(mine[mine.index(common) - 1], theirs[theirs.index(common) - 1])}
            pairs.add((job.consumer, victim))
            for side_r, side_v in pairs:
                ent_r, ent_v = self._ent(side_r), self._ent(side_v)
                if ent_v <= _EPS:
                    continue  # entitled to nothing: admission serves it last anyway
                before = self.virtual[side_r] / ent_r if ent_r > _EPS else float("inf")
                held = self.virtual[side_v] - self.receiving[side_v] - freed[side_v]
                if held / ent_v <= before + _EPS:
                    return False
        return True

    def _cascades(self, job: Job, victim: Job, preempt: list[Job]) -> bool:
        """Whether preempting `victim` for another consumer's job could turn, back
        in its own consumer's queue, into a preemption of a lower-priority job of
        that consumer (priority preemption) while the consumer, left at or below
        its entitlement, is served first by admission: it would take GPUs back
        from the receiver. That lower-priority job goes first, or none."""
        c = victim.consumer
        spec = self.adm.policy.consumers.get(c)
        if c == job.consumer or spec is None or not spec.priority_preemption:
            return False
        gone = sum(len(v.held) - len(v.releasing) for v in (*preempt, victim) if v.consumer == c)
        left = self.virtual[c] - self.receiving[c] - gone
        if left > self._ent(c) + _EPS:
            return False  # still a borrower after it: admission does not favor it
        return any(
            j.priority < victim.priority
            and j.id not in self.taken
            and j not in preempt
            and self._old_enough(j)
            for j in self.by_leaf.get(c, {}).values()
        )

    def _capped(self, job: Job) -> bool:
        """Preempted as often as its consumer allows for borrowing (max_preemptions)."""
        return job.preemptions >= self.adm.policy.consumers[job.consumer].max_preemptions

    def _old_enough(self, job: Job) -> bool:
        spec = self.adm.policy.consumers.get(job.consumer)
        min_runtime = spec.min_runtime_s if spec is not None else 0.0
        return job.started_at is None or self.now - job.started_at >= min_runtime

    def _add_virtual(self, leaf: ConsumerPath, n: int) -> None:
        for p in self.adm.chain(leaf):
            self._touched.add(p)
            self.virtual[p] += n
            self.moved[p] += n

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
            for j in self.releasing
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


class _Victims:
    """The jobs a try may take from, less those taken already this cycle: for reclaim,
    every job of some borrowing consumers (read through the planner's per-consumer and
    per-node counts, not listed); for priority preemption, a list."""

    def __init__(
        self,
        planner: Planner,
        consumers: set[ConsumerPath] | None,
        listed: list[Job] = (),  # type: ignore[assignment]
    ) -> None:
        self._p = planner
        self._consumers = consumers
        self._listed = listed
        self._ids = {j.id for j in listed} if consumers is None else set()

    def __contains__(self, job: Job) -> bool:
        if self._consumers is None:
            return job.id in self._ids
        return job.consumer in self._consumers and job.id not in self._p.taken

    def jobs(self) -> list[Job]:
        if self._consumers is None:
            return self._listed
        taken = self._p.taken
        by_leaf = self._p.by_leaf
        return [
            j for c in self._consumers for j in by_leaf.get(c, {}).values() if j.id not in taken
        ]

    def give(self) -> dict[ConsumerPath, int]:
        """GPUs they would give back, per consumer (Planner._freed, before the tree)."""
        out: dict[ConsumerPath, int] = defaultdict(int)
        if self._consumers is None:
            for j in self._listed:
                out[j.consumer] += len(j.held) - len(j.releasing)
            return out
        for c in self._consumers:
            out[c] += self._p.gives.get(c, 0)
        for job_id in self._p.taken:
            j = self._p.by_id[job_id]
            if j.consumer in self._consumers:
                out[j.consumer] -= len(j.held) - len(j.releasing)
        return out

    def nodes(self) -> set[NodeName]:
        """The nodes where they hold GPUs (a superset: taken ones' too)."""
        if self._consumers is None:
            return {s.node for j in self._listed for s in j.held}
        key = frozenset(self._consumers)
        out = self._p.nodes_of_many.get(key)
        if out is None:
            nodes_of = self._p.nodes_of
            out = set()
            for c in self._consumers:
                out.update(nodes_of.get(c, ()))
            self._p.nodes_of_many[key] = out
        return out

    def on(self, node: NodeName) -> int:
        """Their GPUs on `node`."""
        here = self._p.count_on.get(node, {}).values()
        if self._consumers is None:
            ids = self._ids
            return sum(count for _, i, count in here if i in ids)
        consumers, taken = self._consumers, self._p.taken
        return sum(count for c, i, count in here if c in consumers and i not in taken)


def _sizes(queue: Sequence[Job]) -> Iterable[int]:
    """The sizes of a queue's jobs (a waiting view's from its queue: a superset)."""
    if isinstance(queue, Waiting):
        return queue.queue.at.keys()
    return {j.gpus for j in queue}


def whole_gpus(entitlement: float) -> int:
    """floor(entitlement), the GPUs SEMANTICS guarantees, tolerant of rounding in
    the water-filling (2.9999999999 is 3)."""
    return math.floor(entitlement + _EPS)
