"""Records and core values to protobuf and back: the only place, with the
servicers, that touches generated types (ARCHITECTURE: API)."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from schedulerd import core
from schedulerd.api.v1 import admin_pb2, agent_pb2, jobs_pb2
from schedulerd.daemon.commands import AckPart, Command, ResizePart, StartPart, StopPart
from schedulerd.daemon.links import ReadLogRequest
from schedulerd.daemon.nodes import PartReport
from schedulerd.daemon.state import Liveness
from schedulerd.store import (
    EventRecord,
    GpuRecord,
    JobRecord,
    JobState,
    NodeRecord,
    PartRecord,
    PolicyRecord,
)

_STATES = {s: jobs_pb2.JobState.Value(s.value) for s in JobState}
_PHASES = {
    agent_pb2.PHASE_RUNNING: "running",
    agent_pb2.PHASE_EXITED: "exited",
    agent_pb2.PHASE_START_FAILED: "start_failed",
    agent_pb2.PHASE_LOST: "lost",
    agent_pb2.PHASE_REFUSED: "refused",
}


def timestamp(t: float | None) -> Timestamp | None:
    if t is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def job_state_from_pb(value: int) -> JobState:
    return JobState(jobs_pb2.JobState.Name(value))


def job_to_pb(
    job: JobRecord,
    history: list[EventRecord] | None = None,
    redacted: bool = False,
    reason: str | None = None,
) -> jobs_pb2.Job:
    """`redacted`: for a caller who may not see the job in full (another user's job):
    its command, env, working dir and history are left out (docs/security.md).
    `reason`: the job's reason when not its record's (a waiting job's, worded when
    asked: ClusterState.reason_of)."""
    name = job.name
    reason = job.reason if reason is None else reason
    if redacted:
        history = None
        # An ended job's reason may quote its command or paths (an agent's words), and
        # a name left out defaults to argv[0]: the scheduler's own words only.
        if job.state.ended:
            reason = job.state.value.lower()
        if job.command and name == job.command[0]:
            name = ""
    msg = jobs_pb2.Job(
        id=job.id,
        spec=jobs_pb2.JobSpec(
            consumer=job.consumer,
            user=job.user,
            name=name,
            command=[] if redacted else job.command,
            env={} if redacted else job.env,
            working_dir="" if redacted else job.working_dir,
            gpus=jobs_pb2.GpuRequest(min=job.gpus_min, max=job.gpus_max),
            priority=job.priority,
            time_limit_seconds=round(job.time_limit_s or 0),
            pool=job.pool,
        ),
        state=_STATES[job.state],
        submit_time=timestamp(job.submit_time),
        start_time=timestamp(job.start_time),
        end_time=timestamp(job.end_time),
        reason=reason,
        attempt=job.attempt,
        cancel_requested=job.cancel_requested,
        redacted=redacted,
        array_id=max(job.array_id, 0),
        array_index=job.array_index,
    )
    if job.exit_code is not None:
        msg.exit_code = job.exit_code
    if job.state is JobState.RUNNING or job.state.ended:
        for part in job.parts:
            for index, uuid in zip(part.gpu_indices, part.gpu_uuids, strict=True):
                msg.gpus.add(node=part.node, index=index, uuid=uuid)
    for e in history or []:
        msg.history.add(time=timestamp(e.time), kind=e.kind, message=e.message)
    return msg


def job_from_spec(spec: jobs_pb2.JobSpec, user: str, vouched: bool = False) -> JobRecord:
    """`user`: who submits, from the caller's credential (never spec.user alone);
    `vouched`: that credential was a node's word (it never runs as root)."""
    gpus_min = spec.gpus.min
    gpus_max = spec.gpus.max or spec.gpus.min
    return JobRecord(
        id=0,
        consumer=spec.consumer,
        user=user,
        vouched=vouched,
        name=spec.name or (spec.command[0] if spec.command else ""),
        command=list(spec.command),
        env=dict(spec.env),
        working_dir=spec.working_dir,
        gpus_min=gpus_min,
        gpus_max=gpus_max,
        priority=spec.priority,
        state=JobState.PENDING,
        submit_time=0.0,
        time_limit_s=float(spec.time_limit_seconds) or None,
        pool=spec.pool,
    )


def pool_status_to_pb(
    pool: str,
    spec: core.ConsumerPolicy,
    state: core.ConsumerState | None,
    pool_gpus: Mapping[str, int],
) -> admin_pb2.PoolStatus:
    msg = admin_pb2.PoolStatus(
        pool=pool, owned=spec.owned, share=spec.share, gpus=pool_gpus.get(pool, 0)
    )
    if spec.limit is not None:
        msg.limit = spec.limit
    if state is not None:
        msg.demand = state.demand
        msg.entitlement = state.entitlement
        msg.allocation = state.allocation
    return msg


def consumer_to_pb(
    spec: core.ConsumerPolicy, state: core.ConsumerState | None, leaf: bool
) -> admin_pb2.ConsumerStatus:
    msg = admin_pb2.ConsumerStatus(
        path=spec.path,
        owned=spec.owned,
        share=spec.share,
        lend=spec.lend,
        borrow=spec.borrow,
        order=spec.order.value,
        leaf=leaf,
        window=spec.window,
    )
    if spec.limit is not None:
        msg.limit = spec.limit
    if state is not None:
        msg.demand = state.demand
        msg.entitlement = state.entitlement
        msg.allocation = state.allocation
        msg.pending_jobs = state.pending_jobs
        msg.running_jobs = state.running_jobs
    return msg


_LIVENESS = {
    Liveness.UP: admin_pb2.UP,
    Liveness.UNREACHABLE: admin_pb2.UNREACHABLE,
    Liveness.DOWN: admin_pb2.DOWN,
}


def node_to_pb(
    node: NodeRecord, liveness: Liveness, holders: dict[tuple[str, int], int]
) -> admin_pb2.Node:
    fenced = node.fenced()
    return admin_pb2.Node(
        name=node.name,
        pool=node.pool,
        gpu_type=node.gpu_type,
        drained=node.drained,
        drain_reason=node.drain_reason,
        state=_LIVENESS[liveness],
        last_seen=timestamp(node.last_seen),
        fake_gpus=node.fake_gpus,
        agent_version=node.agent_version,
        gpus=[
            admin_pb2.Gpu(
                index=g.index,
                uuid=g.uuid,
                model=g.model,
                memory_bytes=g.memory_bytes,
                job_id=holders.get((node.name, g.index), 0),
                fenced_job_id=fenced[g.index].job_id if g.index in fenced else 0,
            )
            for g in node.gpus
        ],
    )


def policy_to_pb(record: PolicyRecord) -> admin_pb2.Policy:
    return admin_pb2.Policy(
        text=record.text,
        source_name=record.source,
        version=record.version,
        applied_at=timestamp(record.applied_at),
    )


def node_from_register(reg: agent_pb2.Register) -> NodeRecord:
    return NodeRecord(
        name=reg.node,
        pool=reg.pool or "default",
        gpus=[GpuRecord(g.index, g.uuid, g.model, g.memory_bytes) for g in reg.gpus],
        fake_gpus=reg.fake_gpus,
        agent_version=reg.agent_version,
        address=reg.address,
    )


def report_from_pb(r: agent_pb2.JobReport) -> PartReport:
    return PartReport(
        job_id=r.job_id,
        attempt=r.attempt,
        phase=_PHASES.get(r.phase, "exited"),
        exit_code=r.exit_code,
        pid=r.pid,
        message=r.message,
        gpu_indices=tuple(r.gpu_indices),
        stopped_by_node=r.stopped_by_node,
    )


def _elastic_spec(job: JobRecord, part: PartRecord) -> agent_pb2.ElasticSpec:
    # Generation 0: a job starts on exactly `min` GPUs, whose workers get the first
    # ids (plans.apply_plan); a part whose workers all came later is made of joiners
    # (derived, so a start repeated after a daemon restart says the same).
    join = min(part.workers.values(), default=0) >= job.gpus_min
    return agent_pb2.ElasticSpec(
        store_address=job.store_address,
        min=job.gpus_min,
        max=job.gpus_max,
        initial_worker_ids=range(job.gpus_min),
        workers=[
            agent_pb2.ElasticWorker(worker_id=w, gpu_index=g)
            for g, w in sorted(part.workers.items())
        ],
        join=join,
    )


def command_to_pb(command: Command | ReadLogRequest, epoch: int = 0) -> agent_pb2.DaemonMessage:
    """`epoch`: the session the command is sent on (Registered.epoch)."""
    if isinstance(command, StartPart):
        job, part = command.job, command.part
        return agent_pb2.DaemonMessage(
            start=agent_pb2.StartJob(
                job_id=job.id,
                attempt=job.attempt,
                command=job.command,
                env=job.env,
                working_dir=job.working_dir,
                gpu_indices=part.gpu_indices,
                consumer=job.consumer,
                user=job.user,
                name=job.name,
                node_rank=part.node_rank,
                num_nodes=len(job.parts),
                elastic=_elastic_spec(job, part) if job.elastic else None,
                allow_root=command.allow_root,
                master_address="" if job.elastic else job.store_address,
                array_id=max(job.array_id, 0),
                array_index=job.array_index,
                epoch=epoch,
            )
        )
    if isinstance(command, ResizePart):
        return agent_pb2.DaemonMessage(
            resize=agent_pb2.ResizeJob(
                job_id=command.job_id,
                attempt=command.attempt,
                release_gpus=command.release,
                grace_seconds=command.grace_s,
                add=[agent_pb2.ElasticWorker(worker_id=w, gpu_index=g) for w, g in command.add],
                reason=command.reason,
                epoch=epoch,
            )
        )
    if isinstance(command, StopPart):
        return agent_pb2.DaemonMessage(
            stop=agent_pb2.StopJob(
                job_id=command.job_id,
                attempt=command.attempt,
                grace_seconds=command.grace_s,
                reason=command.reason,
                epoch=epoch,
            )
        )
    if isinstance(command, AckPart):
        return agent_pb2.DaemonMessage(
            ack=agent_pb2.AckReport(job_id=command.job_id, attempt=command.attempt)
        )
    return agent_pb2.DaemonMessage(
        read_log=agent_pb2.ReadLog(
            request_id=command.request_id,
            job_id=command.job_id,
            offset=command.offset,
            max_bytes=command.max_bytes,
        )
    )
