"""Readiness probes: every --probe-every seconds, GET the service's readiness path on
each endpoint of the table; 200 means ready, anything else (or nothing within
PROBE_TIMEOUT_S) not. A new table is probed at once, so that a replica that just started
(a service woken from zero) gets its first requests without waiting for the next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from schedulerd.router.state import RouterState
from schedulerd.router.table import Probe

log = logging.getLogger("schedulerd.router.probe")

PROBE_TIMEOUT_S = 1.0
CONCURRENCY = 64  # probes at once: a table of many replicas is probed in waves


def probe_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY, force_close=True),
        timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


class Prober:
    def __init__(self, state: RouterState, session: aiohttp.ClientSession, every_s: float) -> None:
        self.state = state
        self.session = session
        self.every_s = every_s
        self._limit = asyncio.Semaphore(CONCURRENCY)

    async def run(self) -> None:
        """Probe rounds until cancelled."""
        changed = self.state.table_changed
        while True:
            changed.clear()
            try:
                await self.round()
            except Exception:  # a bug: log it, keep probing
                log.exception("a probe round failed")
            # The next turn, or a new table, whichever comes first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.every_s)

    async def round(self) -> None:
        probes = list(self.state.table.probes())
        if probes:
            await asyncio.gather(*(self._probe(p) for p in probes))

    async def _probe(self, probe: Probe) -> None:
        async with self._limit:
            ready = await self._ask(probe)
        endpoint = probe.endpoint
        if ready != endpoint.ready:
            log.info(
                "%s: replica %d at %s is %s",
                probe.service,
                endpoint.spec.replica,
                endpoint.spec.address,
                "ready" if ready else "not ready",
            )
        self.state.set_ready(probe.service, endpoint, ready)

    async def _ask(self, probe: Probe) -> bool:
        url = f"http://{probe.endpoint.spec.address}{probe.path}"
        try:
            async with self.session.get(url, allow_redirects=False) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
        except ValueError:  # an address or path that makes no URL
            log.warning("%s: cannot probe %s", probe.service, url)
            return False
