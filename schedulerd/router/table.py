"""The route table as the router keeps it: each service's endpoints with what the router
itself knows of them (ready by its probe, requests in flight), and the balancing rule.

Pure: no I/O, no clock, no asyncio. The daemon's table arrives (schedulerd/router/wire.py
converts it) and replaces the routes; what the router learned about an endpoint survives
a new table as long as the endpoint is the same replica at the same address.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from schedulerd.serve.spec import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_QUEUE_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
)


@dataclass(frozen=True)
class EndpointSpec:
    """One replica whose job runs, as the daemon describes it."""

    replica: int
    job_id: int
    address: str  # host:port
    draining: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.replica, self.job_id)


@dataclass(frozen=True)
class RouteSpec:
    """One service, as the daemon describes it (defaults filled in)."""

    service_id: int
    name: str
    public: bool = False
    readiness_path: str = "/"
    max_queue: int = DEFAULT_MAX_QUEUE
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    endpoints: tuple[EndpointSpec, ...] = ()
    scales_from_zero: bool = False


class Endpoint:
    """An endpoint's live state. Requests hold the object they were sent to, so an
    endpoint that leaves the table (or moves) lets its in-flight requests finish and
    count down on an object nothing picks any more."""

    __slots__ = ("in_flight", "ready", "spec")

    def __init__(self, spec: EndpointSpec) -> None:
        self.spec = spec
        self.ready = False  # a new endpoint is not ready until its probe says 200
        self.in_flight = 0

    @property
    def usable(self) -> bool:
        """Whether it may take a new request."""
        return self.ready and not self.spec.draining

    def __repr__(self) -> str:
        s = self.spec
        return f"Endpoint(replica={s.replica}, job={s.job_id}, {s.address}, ready={self.ready})"


@dataclass
class RoutedService:
    route: RouteSpec
    endpoints: dict[tuple[int, int], Endpoint] = field(default_factory=dict)
    turn: int = 0  # round-robin among endpoints tied on in-flight requests

    def ordered(self) -> list[Endpoint]:
        return sorted(self.endpoints.values(), key=lambda e: e.spec.key)


@dataclass(frozen=True)
class Probe:
    """A readiness probe to make: GET http://{address}{path}."""

    service: str
    endpoint: Endpoint
    path: str


class Table:
    """The routes of the latest table, by service name."""

    def __init__(self) -> None:
        self.version: int | None = None  # None: no table received yet
        self._services: dict[str, RoutedService] = {}

    @property
    def loaded(self) -> bool:
        return self.version is not None

    def replace(self, version: int, routes: Iterable[RouteSpec]) -> list[str]:
        """Take a new table; return the names of services that have a usable endpoint
        now (their held requests can go). An endpoint keeps its readiness and counters
        when the same replica (number and job) is at the same address; one that is new,
        or moved, starts not ready; one that left is forgotten."""
        services: dict[str, RoutedService] = {}
        for route in routes:
            old = self._services.get(route.name)
            same_service = old is not None and old.route.service_id == route.service_id
            svc = RoutedService(route, turn=old.turn if old is not None and same_service else 0)
            for spec in route.endpoints:
                prev = old.endpoints.get(spec.key) if old is not None and same_service else None
                if prev is not None and prev.spec.address == spec.address:
                    prev.spec = spec  # draining may have changed
                    svc.endpoints[spec.key] = prev
                else:
                    svc.endpoints[spec.key] = Endpoint(spec)
            services[route.name] = svc
        self._services = services
        self.version = version
        return [name for name, svc in services.items() if _any_usable(svc)]

    def route(self, name: str) -> RouteSpec | None:
        svc = self._services.get(name)
        return None if svc is None else svc.route

    def routes(self) -> list[RouteSpec]:
        return [svc.route for svc in self._services.values()]

    def endpoints(self, name: str) -> list[Endpoint]:
        svc = self._services.get(name)
        return [] if svc is None else svc.ordered()

    def pick(self, name: str, exclude: Iterable[Endpoint] = ()) -> Endpoint | None:
        """Least in-flight among the usable endpoints not in `exclude` (those a request
        already failed on); ties are taken in turn, so equal replicas share evenly."""
        svc = self._services.get(name)
        if svc is None:
            return None
        skip = {id(e) for e in exclude}
        usable = [e for e in svc.ordered() if e.usable and id(e) not in skip]
        if not usable:
            return None
        least = min(e.in_flight for e in usable)
        tied = [e for e in usable if e.in_flight == least]
        chosen = tied[svc.turn % len(tied)]
        svc.turn += 1
        return chosen

    def set_ready(self, name: str, endpoint: Endpoint, ready: bool) -> bool:
        """Record a probe's (or a failed request's) verdict on an endpoint still in the
        table; return whether the service gained a usable endpoint by it."""
        svc = self._services.get(name)
        if svc is None or svc.endpoints.get(endpoint.spec.key) is not endpoint:
            return False  # gone or moved since the probe started: a stale verdict
        had = _any_usable(svc)
        endpoint.ready = ready
        return not had and _any_usable(svc)

    def probes(self) -> Iterator[Probe]:
        """Every endpoint of the table, draining ones included (their readiness is
        reported too)."""
        for name, svc in self._services.items():
            for e in svc.ordered():
                yield Probe(name, e, svc.route.readiness_path)


def _any_usable(svc: RoutedService) -> bool:
    return any(e.usable for e in svc.endpoints.values())
