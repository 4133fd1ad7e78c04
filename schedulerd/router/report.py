"""The numbers of one load report, taken from the table, the counters and the held
requests at one moment (pure; wire.py puts them in a LoadReport).

Every service of the table is reported, idle or not: the autoscaler reads a service's
silence as "no traffic" only from a router it hears from. A service's interval numbers
(requests, failed, latencies) restart with each snapshot, whether or not the report
then reaches the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass

from schedulerd.router.hold import Holds
from schedulerd.router.stats import Stats
from schedulerd.router.table import Table


@dataclass(frozen=True)
class ReplicaNumbers:
    replica: int
    job_id: int
    ready: bool
    in_flight: int


@dataclass(frozen=True)
class ServiceNumbers:
    service_id: int
    name: str
    in_flight: int
    queued: int
    requests: int
    failed: int
    p50_ms: float
    p99_ms: float
    requests_total: int
    failed_total: int
    replicas: tuple[ReplicaNumbers, ...]


@dataclass(frozen=True)
class LoadSnapshot:
    table_version: int
    services: tuple[ServiceNumbers, ...]


def snapshot(table: Table, stats: Stats, holds: Holds) -> LoadSnapshot | None:
    """None before the first table: there is nothing the numbers could refer to."""
    if table.version is None:
        return None
    services = []
    for route in table.routes():
        st = stats.of(route.service_id)
        interval = st.take()
        services.append(
            ServiceNumbers(
                service_id=route.service_id,
                name=route.name,
                in_flight=st.in_flight,
                queued=holds.queued(route.name),
                requests=interval.requests,
                failed=interval.failed,
                p50_ms=interval.p50_ms,
                p99_ms=interval.p99_ms,
                requests_total=st.requests_total,
                failed_total=st.failed_total,
                replicas=tuple(
                    ReplicaNumbers(e.spec.replica, e.spec.job_id, e.ready, e.in_flight)
                    for e in table.endpoints(route.name)
                ),
            )
        )
    return LoadSnapshot(table.version, tuple(services))
