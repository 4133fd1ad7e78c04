"""The Scheduler service: users' jobs. Servicers record facts and wake the loop;
they never decide (ARCHITECTURE: the shell)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from schedulerd.api.v1 import jobs_pb2, jobs_pb2_grpc
from schedulerd.core import is_within
from schedulerd.daemon.convert import job_from_spec, job_state_from_pb, job_to_pb
from schedulerd.daemon.links import AgentLinks, NodeNotConnected
from schedulerd.daemon.loop import SchedulingLoop
from schedulerd.daemon.services.errors import abort
from schedulerd.daemon.state import ClusterState, SubmitError
from schedulerd.store import JobRecord, StoreUnavailable

_LOG_CHUNK = 64 * 1024


class SchedulerService(jobs_pb2_grpc.SchedulerServicer):
    def __init__(self, state: ClusterState, links: AgentLinks, loop: SchedulingLoop) -> None:
        self.state = state
        self.links = links
        self.loop = loop

    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobResponse:
        spec = request.spec
        problem = _spec_problem(spec)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            job = self.state.submit(job_from_spec(spec))
        except SubmitError as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"job refused: {e}")
        except StoreUnavailable as e:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"job not submitted: {e}")
        self.loop.wake()
        return jobs_pb2.SubmitJobResponse(job=job_to_pb(job))

    async def SubmitJobs(
        self, request: jobs_pb2.SubmitJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobsResponse:
        count = len(request.jobs)
        for i, one in enumerate(request.jobs):
            problem = _spec_problem(one.spec)
            if problem:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"job {i} of {count}: {problem}; no job of this batch was submitted",
                )
        try:
            jobs = self.state.submit_many([job_from_spec(one.spec) for one in request.jobs])
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
            self.loop.wake()
        return jobs_pb2.SubmitJobsResponse(jobs=[job_to_pb(j) for j in jobs])

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        job = self._job(request.id)
        if job is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {request.id}")
        return job_to_pb(job, self.state.store.events(job.id))

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        states = [job_state_from_pb(s).value for s in request.states]
        jobs = self.state.store.list_jobs(request.consumer, states, request.user, request.limit)
        # Live records carry what the store does not keep: the current pending reason.
        live = [self.state.jobs.get(j.id, j) for j in jobs]
        return jobs_pb2.ListJobsResponse(jobs=[job_to_pb(j) for j in live])

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        try:
            job, stops = self.state.cancel(request.id, request.user)
        except KeyError:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {request.id}")
        except StoreUnavailable as e:
            await abort(
                context, grpc.StatusCode.UNAVAILABLE, f"job {request.id} not cancelled: {e}"
            )
        self.links.send_all(stops)
        self.loop.wake()
        return job_to_pb(job)

    async def WatchJobs(
        self, request: jobs_pb2.WatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.JobUpdate]:
        ids = set(request.ids)

        def wanted(job: JobRecord) -> bool:
            return (not ids or job.id in ids) and is_within(job.consumer, request.consumer)

        queue: asyncio.Queue[jobs_pb2.Job] = asyncio.Queue()

        def listener(job: JobRecord) -> None:
            if wanted(job):
                queue.put_nowait(job_to_pb(job))  # converted now: the record changes later

        self.state.listeners.append(listener)
        try:
            if request.include_current:
                current = [self._job(i) for i in sorted(ids)] if ids else self.state.jobs.values()
                for job in list(current):
                    if job is not None and wanted(job):
                        yield jobs_pb2.JobUpdate(job=job_to_pb(job))
            while True:
                yield jobs_pb2.JobUpdate(job=await queue.get())
        finally:
            self.state.listeners.remove(listener)

    async def StreamLogs(
        self, request: jobs_pb2.StreamLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.LogChunk]:
        """The logs of every part of the job (one per node), read through their agents,
        each chunk naming its node and rank. With `follow`, waits for a pending job to
        start and streams until it ends."""
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


def _spec_problem(spec: jobs_pb2.JobSpec) -> str | None:
    if not spec.consumer.startswith("/"):
        return "spec.consumer: a consumer path like /team/project is required"
    if not spec.user:
        return "spec.user: the submitting user is required"
    if not spec.command or not spec.command[0]:
        return "spec.command: a command (argv) is required"
    if spec.gpus.min < 1:
        return "spec.gpus.min: a job needs at least 1 GPU"
    return None
