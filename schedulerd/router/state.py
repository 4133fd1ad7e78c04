"""The router's shared state: the route table, the held requests, the counters, and the
two ways they change (a new table from the daemon, a readiness verdict). Whoever changes
readiness goes through here, so that held requests are woken whenever a service gains a
usable replica and the prober hears of new endpoints at once.

Tests feed tables through `apply` directly, as the daemon link does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from schedulerd.router.hold import Holds
from schedulerd.router.stats import Stats
from schedulerd.router.table import Endpoint, RouteSpec, Table


class RouterState:
    def __init__(self) -> None:
        self.table = Table()
        self.holds = Holds()
        self.stats = Stats()
        self.table_changed = asyncio.Event()  # the prober probes new endpoints now
        self.first_table = asyncio.Event()  # READY=1 waits for it

    def apply(self, version: int, routes: Iterable[RouteSpec]) -> None:
        routes = list(routes)
        usable = self.table.replace(version, routes)
        self.stats.prune(r.service_id for r in routes)
        for name in usable:
            self.holds.wake(name)
        self.table_changed.set()
        self.first_table.set()

    def set_ready(self, service: str, endpoint: Endpoint, ready: bool) -> None:
        if self.table.set_ready(service, endpoint, ready):
            self.holds.wake(service)
