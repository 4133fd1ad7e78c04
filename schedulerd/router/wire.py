"""The Routing API's messages (proto/schedulerd/api/v1/serving.proto) to and from the
router's own types: the only module of the router besides link.py that knows protobuf.

A route's zeros are the wire's "not given" and become the defaults of a service spec
(schedulerd/serve/spec.py); values out of a spec's bounds are clamped, so that whatever
the table says, the router's queues and waits stay bounded.
"""

from __future__ import annotations

import math

from schedulerd.api.v1 import serving_pb2
from schedulerd.router.access import Verdict
from schedulerd.router.report import LoadSnapshot
from schedulerd.router.table import EndpointSpec, RouteSpec
from schedulerd.serve.spec import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_QUEUE_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    MAX_QUEUE,
    MAX_SECONDS,
)


def _seconds(value: float, default: float) -> float:
    if not math.isfinite(value) or value <= 0:
        return default
    return min(value, MAX_SECONDS)


def route_from_wire(r: serving_pb2.Route) -> RouteSpec:
    return RouteSpec(
        service_id=r.service_id,
        name=r.name,
        public=r.public,
        readiness_path=r.readiness_path if r.readiness_path.startswith("/") else "/",
        max_queue=min(r.max_queue or DEFAULT_MAX_QUEUE, MAX_QUEUE),
        queue_timeout_s=_seconds(r.queue_timeout_s, DEFAULT_QUEUE_TIMEOUT_S),
        request_timeout_s=_seconds(r.request_timeout_s, DEFAULT_REQUEST_TIMEOUT_S),
        endpoints=tuple(
            EndpointSpec(e.replica, e.job_id, e.address, e.draining)
            for e in r.endpoints
            if e.address
        ),
        scales_from_zero=r.scales_from_zero,
    )


def table_from_wire(t: serving_pb2.RouteTable) -> tuple[int, list[RouteSpec]]:
    """(version, routes); a name given twice keeps its first route."""
    seen: set[str] = set()
    routes = []
    for r in t.routes:
        if r.name and r.name not in seen:
            seen.add(r.name)
            routes.append(route_from_wire(r))
    return t.version, routes


def verdict_from_wire(a: serving_pb2.CheckAccessResponse) -> Verdict:
    status = a.http_status or (200 if a.allowed else 403)
    if status == 200 and not a.allowed:
        status = 403  # contradictory: refusing is the safe reading
    return Verdict(status, a.reason, a.user, a.cache_s if math.isfinite(a.cache_s) else 0.0)


def report_to_wire(router: str, snap: LoadSnapshot) -> serving_pb2.LoadReport:
    return serving_pb2.LoadReport(
        router=router,
        table_version=snap.table_version,
        services=[
            serving_pb2.ServiceLoadReport(
                service_id=s.service_id,
                in_flight=s.in_flight,
                queued=s.queued,
                requests=s.requests,
                failed=s.failed,
                p50_ms=s.p50_ms,
                p99_ms=s.p99_ms,
                replicas=[
                    serving_pb2.ReplicaLoad(
                        replica=r.replica, job_id=r.job_id, ready=r.ready, in_flight=r.in_flight
                    )
                    for r in s.replicas
                ],
                requests_total=s.requests_total,
                failed_total=s.failed_total,
            )
            for s in snap.services
        ],
    )
