"""The service controller: keeps each service's replicas at what its autoscaler wants
(docs/serve.md). Replicas are ordinary jobs of the service's consumer, submitted
through `ClusterState.submit` (the same checks and transaction as SubmitJob), so
the scheduling loop alone decides where and when they run, and reclaim takes
replicas above the consumer's entitlement back like any borrowed GPUs.

Every turn, for each service: replicas whose jobs ended are marked so; the
autoscaler (schedulerd/serve/autoscale.py) reads the router's load; the replica
planner (schedulerd/serve/replicas.py) says what to add, drain and stop; drains
end once the router, with a table that had the replica draining, reports nothing
in flight on it (or at the consumer's grace); the route table is rebuilt.

Writes go to the store before memory changes (a replica's row with its job's row,
in one transaction), so a restart finds every replica and the job it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import replace

from schedulerd import core
from schedulerd.api.v1 import serving_pb2 as pb
from schedulerd.daemon.links import AgentLinks
from schedulerd.daemon.loop import SchedulingLoop
from schedulerd.daemon.serving.load import LoadBook, ReplicaSeen
from schedulerd.daemon.state import ClusterState, SubmitError
from schedulerd.daemon.wake import woken
from schedulerd.serve.autoscale import LoadSample, decide_replicas, describe
from schedulerd.serve.replicas import ReplicaView, plan_replicas
from schedulerd.serve.spec import FIXED_FIELDS, ServiceSpec, needs_rollout, problems
from schedulerd.store import JobRecord, JobState
from schedulerd.store.serving import (
    ReplicaPhase,
    ReplicaRecord,
    ServiceEvent,
    ServiceRecord,
    ServiceState,
    ServiceStore,
)

log = logging.getLogger("schedulerd.serving")

# Replicas serve on a port drawn from here, below Linux's ephemeral range and above
# the elastic stores' (29600-30000), none given to two live replicas.
PORTS = range(30000, 32768)
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)  # after replicas that failed in a row
# A rollout's new replica that waits this long for a GPU beside the old ones replaces
# one of them in place instead (serve/replicas.py).
ROLLOUT_PATIENCE_S = 20.0
_draw = random.SystemRandom()


class NotFound(LookupError):
    pass


class Refused(ValueError):
    """A request refused as it stands; the message names the field."""


class ServiceController:
    def __init__(
        self, state: ClusterState, links: AgentLinks, loop: SchedulingLoop, tick_s: float = 0.5
    ) -> None:
        self.state = state
        self.links = links
        self.loop = loop
        self.tick_s = tick_s
        self.store = ServiceStore(state.store)
        self.services: dict[int, ServiceRecord] = {}  # not deleted
        self.replicas: dict[int, dict[int, ReplicaRecord]] = {}  # not ended
        self.by_job: dict[int, tuple[int, int]] = {}
        self.loads: dict[int, LoadBook] = {}
        self._low_since: dict[int, float | None] = {}
        self._last_active: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}
        self._ready: dict[tuple[int, int], int] = {}  # (service, replica) -> job attempt
        self._endpoint_since: dict[tuple[int, int], tuple[str, int]] = {}  # address, version
        self._drain_version: dict[tuple[int, int], int] = {}
        self._stuck_noted: set[int] = set()
        # Versions start at the clock in milliseconds: a restarted daemon's tables are
        # newer than any the router had, so a report under an old table (before the
        # router hears the new one) is never taken for the new table's (drains end on it).
        self.table: pb.RouteTable = pb.RouteTable(version=int(state.clock() * 1000))
        self.watchers: list[Callable[[int], None]] = []  # service changed
        self.route_watchers: list[Callable[[], None]] = []  # the route table changed
        self._wake_event: asyncio.Event | None = None
        state.listeners.append(self._on_job)

    # -- startup ------------------------------------------------------------

    def start(self) -> None:
        now = self.state.clock()
        for svc in self.store.load_services(live_only=True):
            self.services[svc.id] = svc
            self.replicas[svc.id] = {}
            self._last_active[svc.id] = now  # idleness counts from the start
            for r in self.store.load_replicas(svc.id, live_only=True):
                self.replicas[svc.id][r.number] = r
                self.by_job[r.job_id] = (svc.id, r.number)
        self._rebuild_table()

    # -- the task -----------------------------------------------------------

    async def run(self) -> None:
        self._wake_event = asyncio.Event()
        while True:
            await woken(self._wake_event, self.tick_s)
            self._wake_event.clear()
            try:
                self.step()
            except Exception:  # a bad turn must not end the controller; the next retries
                log.exception("service step failed")

    def wake(self) -> None:
        if self._wake_event is not None:
            self._wake_event.set()

    def _on_job(self, job: JobRecord) -> None:
        where = self.by_job.get(job.id)
        if where is not None:
            self.wake()
            self._notify(where[0])

    def step(self) -> None:
        for svc in list(self.services.values()):
            try:
                self._turn(svc)
            except SubmitError as e:
                self._event(svc, "refused", f"a replica could not be submitted: {e}")
                self._retry_at[svc.id] = self.state.clock() + BACKOFF_S[-1]
            except Exception:  # the other services still get their turn
                log.exception("service %s: turn failed", svc.spec.name)
        self._rebuild_table()

    def _turn(self, svc: ServiceRecord) -> None:
        now = self.state.clock()
        self._collect_ended(svc, now)
        self._scale(svc, now)
        views = [self._view(svc, r) for r in self.replicas[svc.id].values()]
        plan = plan_replicas(
            svc.desired,
            svc.generation,
            views,
            may_add=now >= self._retry_at.get(svc.id, 0.0),
            in_place=self._rollout_stuck(svc, now),
        )
        for _ in range(plan.add):
            self._add_replica(svc, now)
        for number in plan.stop:
            self._stop(svc, self.replicas[svc.id][number], "not needed (not serving yet)")
        for number in plan.drain:
            self._begin_drain(svc, self.replicas[svc.id][number], now)
        self._end_drains(svc, now)
        if svc.state is ServiceState.DELETING and not self.replicas[svc.id]:
            self._finish_delete(svc, now)

    def _rollout_stuck(self, svc: ServiceRecord, now: float) -> bool:
        """A new-generation replica has waited for GPUs past the patience while old
        ones serve: say so once, and let the planner replace one in place."""
        reps = self.replicas[svc.id].values()
        if not any(r.generation < svc.generation and r.phase.counts for r in reps):
            return False
        for r in reps:
            job = self.state.jobs.get(r.job_id)
            waiting = job is not None and job.state is not JobState.RUNNING
            new = r.generation == svc.generation and r.phase.counts
            if new and waiting and now - r.created >= ROLLOUT_PATIENCE_S:
                if svc.id not in self._stuck_noted:
                    self._stuck_noted.add(svc.id)
                    self._event(
                        svc,
                        "rollout-in-place",
                        f"replica {r.number} waited {now - r.created:.0f} s for GPUs beside "
                        "the old replicas: one old replica drains to make room",
                    )
                return True
        self._stuck_noted.discard(svc.id)
        return False

    def _view(self, svc: ServiceRecord, r: ReplicaRecord) -> ReplicaView:
        job = self.state.jobs.get(r.job_id)
        running = job is not None and job.state is JobState.RUNNING
        return ReplicaView(r.number, r.generation, r.phase.counts, running, self.is_ready(svc, r))

    def is_ready(self, svc: ServiceRecord, r: ReplicaRecord) -> bool:
        job = self.state.jobs.get(r.job_id)
        if job is None or job.state is not JobState.RUNNING:
            self._ready.pop((svc.id, r.number), None)
            return False
        return self._ready.get((svc.id, r.number)) == job.attempt

    # -- replicas -----------------------------------------------------------

    def _collect_ended(self, svc: ServiceRecord, now: float) -> None:
        for r in list(self.replicas[svc.id].values()):
            if r.job_id in self.state.jobs:
                continue
            job = self.state.store.load_job(r.job_id)
            if job is None or not job.state.ended:
                continue
            asked = r.phase is not ReplicaPhase.ACTIVE
            why = f"its job {job.state.value.lower()}" + (f": {job.reason}" if job.reason else "")
            r2 = replace(r, phase=ReplicaPhase.ENDED, ended=now, reason=why)
            self.store.save_replica(r2)
            del self.replicas[svc.id][r.number]
            self.by_job.pop(r.job_id, None)
            self._forget(svc.id, r.number)
            if asked:
                self._event(svc, "replica-stopped", f"replica {r.number} ({why})")
            else:
                failures = self._failures.get(svc.id, 0)
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                self._failures[svc.id] = failures + 1
                self._retry_at[svc.id] = now + delay
                self._event(
                    svc, "replica-failed", f"replica {r.number} ({why}); next in {delay:g} s"
                )

    def _add_replica(self, svc: ServiceRecord, now: float) -> None:
        spec = svc.spec
        number = self.store.next_number(svc.id)
        port = self._free_port()
        job = JobRecord(
            id=0,
            consumer=spec.consumer,
            user=spec.user,
            vouched=svc.vouched,
            name=f"{spec.name} replica {number}",
            command=list(spec.command),
            env={
                **spec.env,
                "SCHEDULERD_PORT": str(port),
                "SCHEDULERD_SERVICE": spec.name,
                "SCHEDULERD_REPLICA": str(number),
            },
            working_dir=spec.working_dir,
            gpus_min=spec.gpus_per_replica,
            gpus_max=spec.gpus_per_replica,
            priority=spec.priority,
            state=JobState.PENDING,
            submit_time=0.0,
        )
        replica = ReplicaRecord(
            svc.id, number, 0, svc.generation, port, ReplicaPhase.ACTIVE, now, "submitted"
        )

        def record(j: JobRecord) -> None:
            replica.job_id = j.id
            self.store.insert_replica(replica)

        self.state.submit(job, also=record)  # SubmitError: the caller backs off
        self.replicas[svc.id][number] = replica
        self.by_job[job.id] = (svc.id, number)
        log.info("service %s: replica %d is job %d (port %d)", spec.name, number, job.id, port)
        self._event(svc, "replica-added", f"replica {number} is job {job.id}")
        self.loop.wake()

    def _free_port(self) -> int:
        taken = {r.port for reps in self.replicas.values() for r in reps.values()}
        for _ in range(64):
            port = _draw.choice(PORTS)
            if port not in taken:
                return port
        free = [p for p in PORTS if p not in taken]
        if not free:
            raise SubmitError(f"no free replica port in {PORTS.start}-{PORTS.stop - 1}")
        return _draw.choice(free)

    def _begin_drain(self, svc: ServiceRecord, r: ReplicaRecord, now: float) -> None:
        r2 = replace(r, phase=ReplicaPhase.DRAINING, drain_started=now, reason="draining")
        self.store.save_replica(r2)
        self.replicas[svc.id][r.number] = r2
        # The router must have a table with it draining before "nothing in flight" counts.
        self._drain_version[(svc.id, r.number)] = self._rebuild_table()
        self._event(svc, "drain", f"replica {r.number}: no new requests; in-flight ones finish")

    def _end_drains(self, svc: ServiceRecord, now: float) -> None:
        grace = self._grace(svc)
        book = self.loads.get(svc.id)
        for r in list(self.replicas[svc.id].values()):
            if r.phase is not ReplicaPhase.DRAINING:
                continue
            since = self._drain_version.get((svc.id, r.number))
            if since is None:  # draining at a restart: the table built at start has it so
                since = self._drain_version[(svc.id, r.number)] = self.table.version
            if book is not None and book.drained(r.number, since):
                self._stop(svc, r, "drained: no request in flight")
            elif now - (r.drain_started or now) >= grace:
                self._stop(svc, r, f"drained for the consumer's grace ({grace:g} s)")

    def _stop(self, svc: ServiceRecord, r: ReplicaRecord, why: str) -> None:
        r2 = replace(r, phase=ReplicaPhase.STOPPING, reason=why)
        self.store.save_replica(r2)
        self.replicas[svc.id][r.number] = r2
        job = self.state.jobs.get(r.job_id)
        if job is not None:
            with contextlib.suppress(KeyError):
                _, stops = self.state.cancel(job.id, f"service {svc.spec.name}: {why}")
                self.links.send_all(stops)
                self.loop.wake()
        self._event(svc, "stop", f"replica {r.number}: {why}")

    def _forget(self, svc_id: int, number: int) -> None:
        key = (svc_id, number)
        self._ready.pop(key, None)
        self._endpoint_since.pop(key, None)
        self._drain_version.pop(key, None)

    def _grace(self, svc: ServiceRecord) -> float:
        policy = self.state.policy
        path = core.ConsumerPath(svc.spec.consumer)
        if policy is None or path not in policy.consumers:
            return 30.0
        return policy.consumers[path].grace_s

    # -- scaling ------------------------------------------------------------

    def _scale(self, svc: ServiceRecord, now: float) -> None:
        if svc.state is ServiceState.DELETING:
            svc.desired = 0
            return
        book = self.loads.get(svc.id) or LoadBook()
        d = decide_replicas(
            svc.spec,
            list(book.samples),
            svc.desired,
            self._low_since.get(svc.id),
            self._last_active.get(svc.id, now),
            now,
        )
        self._low_since[svc.id] = d.low_since
        self._last_active[svc.id] = d.last_active
        if d.desired == svc.desired:
            return
        words = describe(d, svc.desired, svc.spec)
        before = svc.desired
        self.store.save_service(replace(svc, desired=d.desired, reason=words))
        svc.desired, svc.reason = d.desired, words
        self._event(svc, d.why.value, words, before, d.desired)
        log.info("service %s: %s", svc.spec.name, words)

    # -- the router's side --------------------------------------------------

    def report_load(self, report: pb.LoadReport) -> None:
        now = self.state.clock()
        for s in report.services:
            svc = self.services.get(s.service_id)
            if svc is None:
                continue
            book = self.loads.setdefault(svc.id, LoadBook())
            book.samples.append(LoadSample(now, s.in_flight, s.queued, s.requests))
            book.table_version = report.table_version
            if s.requests:
                book.p50_ms, book.p99_ms = s.p50_ms, s.p99_ms
            book.requests_total, book.failed_total = s.requests_total, s.failed_total
            book.reported_at = now
            book.replicas = {}
            for rep in s.replicas:
                book.replicas[rep.replica] = ReplicaSeen(
                    rep.job_id, rep.ready, rep.in_flight, report.table_version, now
                )
                self._saw(svc, rep, report.table_version)
            if s.queued or s.in_flight > svc.desired * svc.spec.target_in_flight:
                self.wake()  # a step or a wake from zero: act now, not at the tick

    def _saw(self, svc: ServiceRecord, rep: pb.ReplicaLoad, version: int) -> None:
        r = self.replicas[svc.id].get(rep.replica)
        if r is None or r.job_id != rep.job_id:
            return
        key = (svc.id, r.number)
        since = self._endpoint_since.get(key)
        job = self.state.jobs.get(r.job_id)
        if since is None or version < since[1] or job is None:
            return  # an older table's endpoint: not this start of the replica
        if not rep.ready:
            self._ready.pop(key, None)
            return
        if self._ready.get(key) != job.attempt:
            self._ready[key] = job.attempt
            self._failures.pop(svc.id, None)
            self._retry_at.pop(svc.id, None)
            self._event(svc, "replica-ready", f"replica {r.number} serves at {since[0]}")
            self.wake()

    def _rebuild_table(self) -> int:
        """The route table from the replicas whose jobs run; its version grows when it
        changes. Returns the version."""
        routes = []
        for svc in sorted(self.services.values(), key=lambda s: s.spec.name):
            endpoints = []
            for r in sorted(self.replicas[svc.id].values(), key=lambda r: r.number):
                address = self._address(r)
                if address is None or r.phase not in (ReplicaPhase.ACTIVE, ReplicaPhase.DRAINING):
                    continue
                endpoints.append(
                    pb.Endpoint(
                        replica=r.number,
                        job_id=r.job_id,
                        address=address,
                        draining=r.phase is ReplicaPhase.DRAINING,
                    )
                )
            spec = svc.spec
            routes.append(
                pb.Route(
                    service_id=svc.id,
                    name=spec.name,
                    public=spec.public,
                    readiness_path=spec.readiness_path,
                    max_queue=spec.max_queue,
                    queue_timeout_s=spec.queue_timeout_s,
                    request_timeout_s=spec.request_timeout_s,
                    endpoints=endpoints,
                    scales_from_zero=spec.scale_to_zero,
                )
            )
        if list(self.table.routes) == routes:
            return self.table.version
        version = self.table.version + 1
        self.table = pb.RouteTable(version=version, routes=routes)
        for route in routes:
            for e in route.endpoints:
                key = (route.service_id, e.replica)
                seen = self._endpoint_since.get(key)
                if seen is None or seen[0] != e.address:
                    self._endpoint_since[key] = (e.address, version)
                    self._ready.pop(key, None)
        for watcher in list(self.route_watchers):
            watcher()
        return version

    def _address(self, r: ReplicaRecord) -> str | None:
        job = self.state.jobs.get(r.job_id)
        if job is None or job.state is not JobState.RUNNING or not job.parts:
            return None
        node = self.state.nodes.get(job.parts[0].node)
        host = (node.address if node is not None else "") or "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{r.port}"

    # -- requests -----------------------------------------------------------

    def check(self, spec: ServiceSpec, service_id: int = 0) -> list[tuple[str, str]]:
        """Every problem of a spec: its own, a name taken by another live service,
        and whether its replicas could be queued at all (the submit path's check)."""
        found = problems(spec)
        other = self.find(spec.name)
        if other is not None and other.id != service_id and other.state is not ServiceState.DELETED:
            found.append(("name", f"service {spec.name!r} exists (in {other.spec.consumer})"))
        if not any(f in ("consumer", "user") for f, _ in found):
            got = self.state.submission_problem(
                spec.consumer, spec.user, spec.gpus_per_replica, spec.gpus_per_replica
            )
            if got is not None:
                about, error = got
                found.append(("gpus_per_replica" if about == "gpus" else about, error))
        return found

    def create(self, spec: ServiceSpec, vouched: bool = False) -> ServiceRecord:
        now = self.state.clock()
        start = spec.min_replicas
        svc = ServiceRecord(0, spec, ServiceState.ACTIVE, now, desired=start, vouched=vouched)
        svc.reason = f"created with min_replicas {spec.min_replicas}"
        self.store.insert_service(svc)
        self.services[svc.id] = svc
        self.replicas[svc.id] = {}
        self._last_active[svc.id] = now
        self._event(svc, "created", f"{spec.min_replicas}..{spec.max_replicas} replicas", 0, start)
        self.step()
        return svc

    def update(self, name: str, new: ServiceSpec, fields: set[str]) -> ServiceRecord:
        svc = self._live(name)
        old = svc.spec
        changed = {f for f in fields if getattr(new, f) != getattr(old, f)}
        fixed = sorted(changed & FIXED_FIELDS)
        if fixed:
            raise Refused(f"spec.{fixed[0]}: a service's {fixed[0]} never changes")
        spec = replace(old, **{f: getattr(new, f) for f in fields})
        found = self.check(spec, svc.id)
        if found:
            raise Refused("; ".join(f"spec.{f}: {why}" for f, why in found))
        if not changed:
            return svc
        generation = svc.generation + (1 if needs_rollout(old, spec) else 0)
        self.store.save_service(replace(svc, spec=spec, generation=generation))
        rolled = generation != svc.generation
        svc.spec, svc.generation = spec, generation
        words = ", ".join(sorted(changed))
        if rolled:
            words += f": replicas roll over to generation {generation}, one at a time"
        self._event(svc, "update", words)
        self.step()
        return svc

    def delete(self, name: str) -> ServiceRecord:
        svc = self._live(name)
        if svc.state is ServiceState.ACTIVE:
            before = svc.desired
            self.store.save_service(replace(svc, state=ServiceState.DELETING, desired=0))
            svc.state, svc.desired = ServiceState.DELETING, 0
            self._event(svc, "delete", "every replica drains, then stops", before, 0)
            self.step()
        return svc

    def _finish_delete(self, svc: ServiceRecord, now: float) -> None:
        self.store.save_service(replace(svc, state=ServiceState.DELETED, ended=now))
        svc.state, svc.ended = ServiceState.DELETED, now
        self._event(svc, "deleted", "no replica left")
        del self.services[svc.id]
        del self.replicas[svc.id]
        self.loads.pop(svc.id, None)
        self._low_since.pop(svc.id, None)
        self._last_active.pop(svc.id, None)
        self._failures.pop(svc.id, None)
        self._retry_at.pop(svc.id, None)

    def _live(self, name: str) -> ServiceRecord:
        for svc in self.services.values():
            if svc.spec.name == name:
                return svc
        raise NotFound(f"no service {name!r}")

    # -- reading ------------------------------------------------------------

    def find(self, name: str) -> ServiceRecord | None:
        """The live service of that name, else the latest deleted one."""
        for svc in self.services.values():
            if svc.spec.name == name:
                return svc
        return self.store.find_by_name(name)

    def replicas_of(self, svc: ServiceRecord) -> list[ReplicaRecord]:
        live = self.replicas.get(svc.id)
        if live is not None:
            return sorted(live.values(), key=lambda r: r.number)
        return []

    def listed(self, include_deleted: bool) -> list[ServiceRecord]:
        if not include_deleted:
            return sorted(self.services.values(), key=lambda s: s.id)
        live = self.services
        return [live.get(s.id, s) for s in self.store.load_services()]

    def _event(
        self, svc: ServiceRecord, kind: str, message: str, before: int = 0, after: int = 0
    ) -> None:
        now = self.state.clock()
        self.store.add_event(ServiceEvent(svc.id, now, kind, message, before, after))
        self._notify(svc.id)

    def _notify(self, svc_id: int) -> None:
        for watcher in list(self.watchers):
            watcher(svc_id)
