"""Converters between agent.proto's generated types and the agent's own types.

Kept apart so that the runner and reconcile never see protobuf (ARCHITECTURE: only the link
touches generated types).
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.gpus import GpuDevice
from agent.model import ElasticSpec, JobSpec, PartReport, Phase, ResizeRequest, StopRequest
from schedulerd.api.v1 import agent_pb2
from schedulerd.bounds import MAX_REPORT_MESSAGE

_PHASES = {
    Phase.RUNNING: agent_pb2.PHASE_RUNNING,
    Phase.EXITED: agent_pb2.PHASE_EXITED,
    Phase.START_FAILED: agent_pb2.PHASE_START_FAILED,
    Phase.LOST: agent_pb2.PHASE_LOST,
    Phase.REFUSED: agent_pb2.PHASE_REFUSED,
}


def job_spec(msg: agent_pb2.StartJob) -> JobSpec:
    elastic = None
    if msg.HasField("elastic"):
        e = msg.elastic
        elastic = ElasticSpec(
            store_address=e.store_address,
            min=e.min,
            max=e.max,
            initial_worker_ids=tuple(e.initial_worker_ids),
            workers=tuple((w.worker_id, w.gpu_index) for w in e.workers),
            join=e.join,
        )
    return JobSpec(
        job_id=msg.job_id,
        attempt=msg.attempt,
        command=tuple(msg.command),
        env=dict(msg.env),
        working_dir=msg.working_dir,
        gpu_indices=tuple(msg.gpu_indices),
        consumer=msg.consumer,
        user=msg.user,
        name=msg.name,
        node_rank=msg.node_rank,
        # proto3 has no "unset": 0 nodes cannot be meant, a single-node job is.
        num_nodes=msg.num_nodes or 1,
        elastic=elastic,
        allow_root=msg.allow_root,
        master_address=msg.master_address,
        array_id=msg.array_id,
        array_index=msg.array_index,
    )


def resize_request(msg: agent_pb2.ResizeJob) -> ResizeRequest:
    return ResizeRequest(
        job_id=msg.job_id,
        attempt=msg.attempt,
        release=tuple(msg.release_gpus),
        grace_seconds=msg.grace_seconds,
        add=tuple((w.worker_id, w.gpu_index) for w in msg.add),
        reason=msg.reason,
    )


def stop_request(msg: agent_pb2.StopJob) -> StopRequest:
    return StopRequest(msg.job_id, msg.attempt, msg.grace_seconds, msg.reason)


def _clip(text: str, max_bytes: int) -> str:
    data = text.encode()
    return text if len(data) <= max_bytes else data[: max_bytes - 3].decode(errors="ignore") + "..."


def job_report(r: PartReport) -> agent_pb2.JobReport:
    return agent_pb2.JobReport(
        job_id=r.job_id,
        attempt=r.attempt,
        phase=_PHASES[r.phase],
        exit_code=r.exit_code,
        pid=r.pid,
        # The daemon refuses a longer one (schedulerd/bounds.py), and its stream with it.
        message=_clip(r.message, MAX_REPORT_MESSAGE),
        time=r.time,
        gpu_indices=r.gpu_indices,
        stopped_by_node=r.stopped_by_node,
    )


def gpu_info(d: GpuDevice) -> agent_pb2.GpuInfo:
    return agent_pb2.GpuInfo(index=d.index, uuid=d.uuid, model=d.model, memory_bytes=d.memory_bytes)


def register(
    *,
    node: str,
    pool: str,
    gpus: Iterable[GpuDevice],
    fake_gpus: bool,
    agent_version: str,
    hostname: str,
    jobs: Iterable[PartReport],
    address: str = "",
) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        register=agent_pb2.Register(
            node=node,
            pool=pool,
            gpus=[gpu_info(d) for d in gpus],
            fake_gpus=fake_gpus,
            agent_version=agent_version,
            hostname=hostname,
            jobs=[job_report(r) for r in jobs],
            address=address,
        )
    )


def report_message(r: PartReport) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(report=job_report(r))
