"""Services, replicas and their history as the API's messages."""

from __future__ import annotations

from schedulerd.api.v1 import serving_pb2 as pb
from schedulerd.daemon.convert import timestamp
from schedulerd.daemon.serving.controller import ServiceController
from schedulerd.serve.codec import spec_to_pb
from schedulerd.store import JobState
from schedulerd.store.serving import ReplicaPhase, ReplicaRecord, ServiceRecord, ServiceState

_STATES = {
    ServiceState.ACTIVE: pb.SERVICE_ACTIVE,
    ServiceState.DELETING: pb.SERVICE_DELETING,
    ServiceState.DELETED: pb.SERVICE_DELETED,
}
_PHASES = {
    ReplicaPhase.DRAINING: pb.REPLICA_DRAINING,
    ReplicaPhase.STOPPING: pb.REPLICA_STOPPING,
    ReplicaPhase.ENDED: pb.REPLICA_ENDED,
}


def service_to_pb(
    ctl: ServiceController, svc: ServiceRecord, with_history: bool, redacted: bool = False
) -> pb.Service:
    """`redacted`: for a caller who may see the service but not its command and env."""
    now = ctl.state.clock()
    replicas = [replica_to_pb(ctl, svc, r) for r in ctl.replicas_of(svc)]
    if redacted:  # replicas take requests from whoever reaches them: only via the router
        for r in replicas:
            r.address = ""
    spec = spec_to_pb(svc.spec)
    if redacted:
        del spec.command[:]
        spec.env.clear()
    msg = pb.Service(
        id=svc.id,
        spec=spec,
        state=_STATES[svc.state],
        generation=svc.generation,
        desired_replicas=svc.desired,
        ready_replicas=sum(1 for r in replicas if r.state == pb.REPLICA_READY),
        replicas=replicas,
        created=timestamp(svc.created),
        reason=svc.reason,
        path=f"/services/{svc.spec.name}/",
        redacted=redacted,
    )
    book = ctl.loads.get(svc.id)
    if book is not None:
        in_flight, queued, rate = book.summary(now, svc.spec.window_s)
        msg.load.CopyFrom(
            pb.ServiceLoad(
                in_flight=in_flight,
                queued=queued,
                requests_per_s=rate,
                p50_ms=book.p50_ms,
                p99_ms=book.p99_ms,
                requests_total=book.requests_total,
                failed_total=book.failed_total,
                reported=timestamp(book.reported_at),
            )
        )
    if with_history:
        for e in ctl.store.load_events(svc.id):
            msg.history.append(
                pb.ServiceEvent(
                    time=timestamp(e.time),
                    kind=e.kind,
                    message=e.message,
                    from_replicas=e.from_replicas,
                    to_replicas=e.to_replicas,
                )
            )
    return msg


def replica_to_pb(ctl: ServiceController, svc: ServiceRecord, r: ReplicaRecord) -> pb.Replica:
    job = ctl.state.jobs.get(r.job_id)
    state = _PHASES.get(r.phase)
    if state is None:
        if job is not None and job.state is JobState.RUNNING:
            state = pb.REPLICA_READY if ctl.is_ready(svc, r) else pb.REPLICA_STARTING
        else:
            state = pb.REPLICA_WAITING
    msg = pb.Replica(
        number=r.number,
        job_id=r.job_id,
        state=state,
        generation=r.generation,
        created=timestamp(r.created),
        reason=(
            r.reason
            if job is None or r.phase is not ReplicaPhase.ACTIVE
            else ctl.state.reason_of(job)  # a waiting job's: the last plan's
        ),
    )
    if job is not None and job.parts:
        msg.node = job.parts[0].node
    book = ctl.loads.get(svc.id)
    seen = book.replicas.get(r.number) if book is not None else None
    if seen is not None and seen.job_id == r.job_id:
        msg.in_flight = seen.in_flight
    for route in ctl.table.routes:
        if route.service_id == svc.id:
            for e in route.endpoints:
                if e.replica == r.number:
                    msg.address = e.address
    return msg
