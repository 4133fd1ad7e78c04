"""The Scheduler service: users' jobs. Servicers record facts and wake the loop;
they never decide (ARCHITECTURE: the shell)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc

from schedulerd.api.v1 import jobs_pb2, jobs_pb2_grpc
from schedulerd.arrays import ArrayError, parse_indices
from schedulerd.auth.authorize import NOTHING, Action, Target
from schedulerd.auth.identity import Credential, Identity
from schedulerd.bounds import MAX_MESSAGE_BYTES, MAX_PAGE_BYTES, USER_NAME, USER_NAME_RULE
from schedulerd.core import is_within
from schedulerd.daemon.convert import job_from_spec, job_state_from_pb, job_to_pb
from schedulerd.daemon.gate import Gate
from schedulerd.daemon.links import AgentLinks, NodeNotConnected
from schedulerd.daemon.loop import SchedulingLoop
from schedulerd.daemon.services.errors import abort
from schedulerd.daemon.state import ClusterState, SubmitError
from schedulerd.store import JobRecord, StoreUnavailable
from schedulerd.store.records import ARRAY_FIRST

_LOG_CHUNK = 64 * 1024


# A watcher that falls this far behind (updates converted but not yet read) is ended
# with RESOURCE_EXHAUSTED: the daemon's memory must not grow with a slow reader.
WATCH_BACKLOG_BYTES = 8 * 1024 * 1024
WATCHERS_PER_IDENTITY = 16
WATCHERS_TOTAL = 1000
# ListJobs: the most jobs one page holds, whatever the request asks.
LIST_PAGE_CAP = 1000
MAX_HISTORY = 1000  # events in a GetJob answer


class SchedulerService(jobs_pb2_grpc.SchedulerServicer):
    def __init__(
        self, state: ClusterState, links: AgentLinks, loop: SchedulingLoop, gate: Gate
    ) -> None:
        self.state = state
        self.links = links
        self.loop = loop
        self.gate = gate
        self._watchers: Counter[str] = Counter()  # open WatchJobs per identity

    async def _submitter(
        self, who: Identity, spec: jobs_pb2.JobSpec, context: grpc.aio.ServicerContext
    ) -> str:
        """Who the job is submitted as: the caller, or for a cluster admin the user the
        spec names (a submission on their behalf). Never the request's word alone."""
        target = Target(spec.consumer, on_behalf_of=spec.user)
        await self.gate.allow(context, who, Action.SUBMIT, target)
        if spec.user and not USER_NAME.fullmatch(spec.user):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"spec.user: {spec.user[:40]!r} is not a user name ({USER_NAME_RULE})",
            )
        return spec.user or who.name

    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobResponse:
        who = await self.gate.who(context, Action.SUBMIT)
        spec = request.spec
        user = await self._submitter(who, spec, context)
        if request.array:
            return await self._submit_array(request, who, user, context)
        try:
            # Acknowledged once committed, its commit shared with concurrent calls.
            job = await self.state.submit_async(job_from_spec(spec, user, _vouched(who)))
        except SubmitError as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"job refused: {e}")
        except StoreUnavailable as e:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"job not submitted: {e}")
        self.gate.audit.note(f"job {job.id}")
        self.loop.wake()
        return jobs_pb2.SubmitJobResponse(job=job_to_pb(job))

    async def _submit_array(
        self,
        request: jobs_pb2.SubmitJobRequest,
        who: Identity,
        user: str,
        context: grpc.aio.ServicerContext,
    ) -> jobs_pb2.SubmitJobResponse:
        """A job array (docs/arrays.md): one job per index, authorized as one
        submission (they share consumer and user), all in one transaction."""
        try:
            indices = parse_indices(request.array)
        except ArrayError as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"array {request.array!r}: {e}")
        # The array multiplies its spec: what it makes is bounded as a SubmitJobs batch
        # is, by the largest message (a 130 KiB spec times 10,000 would be 1.3 GB).
        spec_bytes = request.spec.ByteSize()
        made = len(indices) * spec_bytes
        if made > MAX_MESSAGE_BYTES:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"array {request.array!r}: {len(indices):,} elements of a {spec_bytes:,}-byte "
                f"spec make {made:,} bytes, more than a batch may carry "
                f"({MAX_MESSAGE_BYTES:,}); submit fewer elements or a smaller spec",
            )
        jobs = []
        for index in indices:
            job = job_from_spec(request.spec, user, _vouched(who))
            job.array_id, job.array_index = ARRAY_FIRST, index
            jobs.append(job)
        try:
            jobs = self.state.submit_many(jobs)
        except SubmitError as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"job array refused: {e}")
        except StoreUnavailable as e:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"job array not submitted: {e}")
        self.gate.audit.note(f"job array {jobs[0].id} ({len(jobs)} jobs)")
        self.loop.wake()
        return jobs_pb2.SubmitJobResponse(job=job_to_pb(jobs[0]))

    async def SubmitJobs(
        self, request: jobs_pb2.SubmitJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobsResponse:
        who = await self.gate.who(context, Action.SUBMIT)
        # (Each spec's bounds were checked with the request: daemon/calls.py.)
        users = [await self._submitter(who, one.spec, context) for one in request.jobs]
        try:
            jobs = self.state.submit_many(
                [
                    job_from_spec(one.spec, user, _vouched(who))
                    for one, user in zip(request.jobs, users, strict=True)
                ]
            )
        except SubmitError as e:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{e}; no job of this batch was submitted",
            )
        except StoreUnavailable as e:
            await abort(
                context, grpc.StatusCode.UNAVAILABLE, f"no job of this batch was submitted: {e}"
            )
        if jobs:
            self.gate.audit.note(f"jobs {jobs[0].id}..{jobs[-1].id}")
            self.loop.wake()
        return jobs_pb2.SubmitJobsResponse(jobs=[job_to_pb(j) for j in jobs])

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        who = await self.gate.who(context, Action.GET_JOB)
        job_id = await self._element(request, context)
        job = self._job(job_id)
        if job is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {job_id}")
        decision = await self.gate.allow(
            context, who, Action.GET_JOB, Target(job.consumer, owner=job.user)
        )
        if not decision.full:
            return job_to_pb(job, redacted=True, reason=self.state.reason_of(job))
        # The newest events only: a job requeued without end must not grow the answer.
        events = self.state.store.events(job.id)[-MAX_HISTORY:]
        return job_to_pb(job, events, reason=self.state.reason_of(job))

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        caller = await self.gate.check(context, Action.LIST_JOBS, NOTHING)
        before = 0
        if request.page_token:  # its syntax was checked with the request (bounds.py)
            before = int(request.page_token)
        limit = min(request.limit or LIST_PAGE_CAP, LIST_PAGE_CAP)
        states = [job_state_from_pb(s).value for s in request.states]
        jobs = self.state.store.list_jobs(
            request.consumer,
            states,
            request.user,
            limit,
            before_id=before,
            array_id=request.array_id,
        )
        # Newest first until the page is full, in jobs or in bytes (a few jobs with big
        # argv must not make the answer too large for anyone to list). A full page
        # always names the next (which may turn out empty).
        more = len(jobs) == limit
        page: list[jobs_pb2.Job] = []
        size = 0
        for record in jobs:
            # Live records carry what the store does not keep: the current pending reason.
            j = self.state.jobs.get(record.id, record)
            full = self.gate.sees_in_full(caller.who, j.consumer, j.user)
            msg = job_to_pb(j, redacted=not full, reason=self.state.reason_of(j))
            size += msg.ByteSize()
            if page and size > MAX_PAGE_BYTES:
                more = True
                break
            page.append(msg)
        return jobs_pb2.ListJobsResponse(
            jobs=page, next_page_token=str(page[-1].id) if more and page else ""
        )

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        who = await self.gate.who(context, Action.CANCEL_JOB)
        job_id = await self._element(request, context)
        known = self._job(job_id)
        if known is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {job_id}")
        # An array's elements share consumer and user: one check covers them all.
        await self.gate.allow(
            context, who, Action.CANCEL_JOB, Target(known.consumer, owner=known.user)
        )
        whole = request.whole_array and known.array_id == known.id
        self.gate.audit.note(f"job array {job_id}" if whole else f"job {job_id}")
        try:
            if whole:
                stops = self.state.cancel_many(self.state.store.array_jobs(job_id), who.label)
                job = self._job(job_id) or known
            else:
                job, stops = self.state.cancel(job_id, who.label)
        except KeyError:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {job_id}")
        except StoreUnavailable as e:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"job {job_id} not cancelled: {e}")
        self.links.send_all(stops)
        self.loop.wake()
        return job_to_pb(job)

    async def _element(
        self,
        request: jobs_pb2.GetJobRequest | jobs_pb2.CancelJobRequest,
        context: grpc.aio.ServicerContext,
    ) -> int:
        """The job a request names: `id`, or with `array_index` that element of array
        `id` (docs/arrays.md)."""
        if not request.HasField("array_index"):
            return int(request.id)
        found = self.state.store.array_element(request.id, request.array_index)
        if found is None:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"no job {request.id}_{request.array_index}: no such job array or element",
            )
        return found

    async def WatchJobs(
        self, request: jobs_pb2.WatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.JobUpdate]:
        caller = await self.gate.check(context, Action.WATCH_JOBS, NOTHING)
        who = caller.who.label
        # Each watcher may hold WATCH_BACKLOG_BYTES: their number is bounded too.
        if self._watchers[who] >= WATCHERS_PER_IDENTITY or sum(self._watchers.values()) >= (
            WATCHERS_TOTAL
        ):
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many watchers: at most {WATCHERS_PER_IDENTITY} per identity and "
                f"{WATCHERS_TOTAL} in all; close one first",
            )
        self._watchers[who] += 1
        try:
            async for update in self._watch(request, context, caller.who):
                yield update
        finally:
            self._watchers[who] -= 1
            if not self._watchers[who]:
                del self._watchers[who]

    async def _watch(
        self,
        request: jobs_pb2.WatchJobsRequest,
        context: grpc.aio.ServicerContext,
        viewer: Identity,
    ) -> AsyncIterator[jobs_pb2.JobUpdate]:
        ids = set(request.ids)

        def wanted(job: JobRecord) -> bool:
            return (not ids or job.id in ids) and is_within(job.consumer, request.consumer)

        def view(job: JobRecord) -> jobs_pb2.Job:
            full = self.gate.sees_in_full(viewer, job.consumer, job.user)
            return job_to_pb(job, redacted=not full, reason=self.state.reason_of(job))

        backlog = _Backlog(WATCH_BACKLOG_BYTES)

        def listener(job: JobRecord) -> None:
            if wanted(job):
                backlog.put(view(job))  # converted now: the record changes later
                if backlog.overflowed:  # it will be ended: no more work for it
                    self.state.listeners.remove(listener)

        named = self._jobs(sorted(ids)) if ids else []
        missing = ids - {j.id for j in named}
        if missing:  # a watch of it would wait for its end forever
            shown = ", ".join(map(str, sorted(missing)[:10]))
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {shown}{more}")
        self.state.listeners.append(listener)
        try:
            if request.include_current:
                current = named if ids else list(self.state.jobs.values())
                for job in current:
                    if wanted(job):
                        yield jobs_pb2.JobUpdate(job=view(job))
            while True:
                msg = await backlog.get()
                if msg is None:
                    await abort(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"this watcher fell more than {WATCH_BACKLOG_BYTES // 2**20} MiB of "
                        "updates behind and was ended; watch again with include_current",
                    )
                yield jobs_pb2.JobUpdate(job=msg)
        finally:
            if listener in self.state.listeners:
                self.state.listeners.remove(listener)

    async def StreamLogs(
        self, request: jobs_pb2.StreamLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.LogChunk]:
        """The logs of every part of the job (one per node), read through their agents,
        each chunk naming its node and rank. With `follow`, waits for a pending job to
        start and streams until it ends. Only for its owner and the admins over it."""
        who = await self.gate.who(context, Action.READ_LOGS)
        known = self._job(request.id)
        if known is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {request.id}")
        await self.gate.allow(
            context, who, Action.READ_LOGS, Target(known.consumer, owner=known.user)
        )
        offsets: dict[str, int] = {}
        while True:
            job = self._job(request.id)
            if job is None:
                await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {request.id}")
            ended = job.state.ended
            moved, found_any, unreachable = False, False, []
            for part in sorted(job.parts, key=lambda p: p.node_rank):
                offset = offsets.get(part.node, request.offset)
                try:
                    data, found, offsets[part.node] = await self.links.read_log(
                        part.node, job.id, offset, _LOG_CHUNK
                    )
                except (NodeNotConnected, TimeoutError):
                    unreachable.append(part.node)
                    continue
                found_any = found_any or found
                if data:
                    moved = True
                    yield jobs_pb2.LogChunk(node=part.node, node_rank=part.node_rank, data=data)
            if moved:
                continue  # there may be more right away
            if unreachable and (ended or not request.follow):
                nodes = ", ".join(unreachable)
                await abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    f"the log of job {job.id} is (partly) on node(s) {nodes}, "
                    "whose agent is not connected",
                )
            if job.parts and not found_any and not unreachable and ended:
                await abort(context, grpc.StatusCode.NOT_FOUND, f"no log for job {job.id}")
            if ended or not request.follow:
                return  # (a job cancelled before it ever ran has no log)
            await asyncio.sleep(0.3)

    def _job(self, job_id: int) -> JobRecord | None:
        return self.state.jobs.get(job_id) or self.state.store.load_job(job_id)

    def _jobs(self, ids: list[int]) -> list[JobRecord]:
        """Live records where there are, the rest from the store in a few queries
        (a watch of 10,000 ids must not make 10,000 on the event loop)."""
        live = [self.state.jobs[i] for i in ids if i in self.state.jobs]
        rest = [i for i in ids if i not in self.state.jobs]
        return live + self.state.store.load_jobs_by_ids(rest)


def _vouched(who: Identity) -> bool:
    return who.credential is Credential.VOUCHED


class _Backlog:
    """Updates for one watcher, bounded by their size: past the bound, the watcher
    is told (get() returns None) instead of the daemon's memory growing. Kept
    serialized: a parsed Job takes about 15 times its wire size in memory."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.overflowed = False
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def put(self, msg: jobs_pb2.Job) -> None:
        if self.overflowed:
            return
        data = msg.SerializeToString()
        if self.bytes + len(data) > self.max_bytes:
            self.overflowed = True
            self._queue.put_nowait(None)
            return
        self.bytes += len(data)
        self._queue.put_nowait(data)

    async def get(self) -> jobs_pb2.Job | None:
        data = await self._queue.get()
        if data is None:
            return None
        self.bytes -= len(data)
        job: jobs_pb2.Job = jobs_pb2.Job.FromString(data)
        return job
