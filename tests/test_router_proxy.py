"""The router's HTTP side over real sockets: a real router app (schedulerd/router/proxy.py)
in front of real aiohttp backends on 127.0.0.1, the route table fed directly (the daemon's
link is tested in test_router_program.py), readiness from the real prober unless a test
sets it itself."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from schedulerd.router.access import CachedAccess, Verdict
from schedulerd.router.listen import CappedSite, server_options
from schedulerd.router.probe import Prober, probe_session
from schedulerd.router.proxy import Proxy, client_session
from schedulerd.router.report import snapshot
from schedulerd.router.state import RouterState
from schedulerd.router.table import EndpointSpec, RouteSpec
from schedulerd.router.wire import report_to_wire

WAIT_S = 10.0  # a bound on waits for something that should happen, not a speed target


class Backend:
    """A replica: GET /ready answers `ready_status`; any other path answers JSON about the
    request, after `gate` opens when `hold` is set, or closes the connection when `die`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready_status = 200
        self.hold = False
        self.delay_s = 0.0
        self.die = False
        self.gate = asyncio.Event()
        self.hits = 0
        self.in_flight = 0
        self.arrived = asyncio.Event()  # set at each request's arrival
        self.seen: list[dict[str, Any]] = []
        self.address = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> Backend:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/stream", self._stream)
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.address = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _ready(self, request: web.Request) -> web.Response:
        return web.Response(status=self.ready_status, text="ready?")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """A chunked answer, its second part once the gate opens; or cut there, `die`."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await self.gate.wait()
        if self.die:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(b"data: two\n\n")
        await response.write_eof()
        return response

    async def _any(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.hits += 1
        self.in_flight += 1
        self.seen.append(
            {"method": request.method, "path": request.raw_path, "headers": dict(request.headers)}
        )
        self.arrived.set()
        try:
            if self.die:
                assert request.transport is not None
                request.transport.close()  # before any answer: the router sees a disconnect
                await asyncio.sleep(1)
            if self.hold:
                await self.gate.wait()
            await asyncio.sleep(self.delay_s)
            return web.json_response(
                {"backend": self.name, "path": request.raw_path, "body_bytes": len(body)},
                headers={"X-Backend": self.name, "Connection": "keep-alive, X-Private"},
            )
        finally:
            self.in_flight -= 1


def free_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AllowAll:
    async def check(self, service: str, token: str) -> Verdict:
        return Verdict(200)


@dataclass
class Router:
    url: str
    state: RouterState
    http: aiohttp.ClientSession
    site: CappedSite
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def raw(self, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection of its own that sends `data` and nothing else yet."""
        host, port = self.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(data)
        await writer.drain()
        return reader, writer

    def apply(self, version: int, *routes: RouteSpec) -> None:
        self.state.apply(version, routes)

    async def get(self, path: str, **kw: Any) -> tuple[int, dict[str, Any], Any]:
        return await self.call("GET", path, **kw)

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any], Any]:
        async with self.http.request(method, self.url + path, **kw) as r:
            text = await r.text()
            try:
                data = await r.json(content_type=None)
            except ValueError:
                data = text
            return r.status, dict(r.headers), data


@contextlib.asynccontextmanager
async def router(
    *routes: RouteSpec,
    access: Any = None,
    max_body: int = 1 << 20,
    probe: bool = True,
    header_timeout: float = 10.0,
    body_timeout: float = 30.0,
    max_connections: int = 1000,
) -> AsyncIterator[Router]:
    state = RouterState()
    state.apply(1, routes)
    session = client_session()
    probes = probe_session()
    allow = access if access is not None else AllowAll()
    proxy = Proxy(state, allow, session, max_body, body_timeout)
    runner = web.AppRunner(
        proxy.app(),
        handler_cancellation=True,
        shutdown_timeout=0.2,
        **server_options(header_timeout),
    )
    await runner.setup()
    site = CappedSite(runner, "127.0.0.1", 0, max_connections)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    prober = asyncio.create_task(Prober(state, probes, 0.05).run()) if probe else None
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S * 2))
    try:
        yield Router(url, state, http, site)
    finally:
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
        state.holds.stop()
        await http.close()
        await runner.cleanup()
        await session.close()
        await probes.close()


@contextlib.asynccontextmanager
async def backends(*names: str) -> AsyncIterator[list[Backend]]:
    started = [await Backend(n).start() for n in names]
    try:
        yield started
    finally:
        for b in started:
            b.gate.set()
            await b.stop()


def route(name: str, *eps: Backend | str, **kw: Any) -> RouteSpec:
    endpoints = tuple(
        EndpointSpec(i, 100 + i, e.address if isinstance(e, Backend) else e)
        for i, e in enumerate(eps)
    )
    kw.setdefault("public", True)
    kw.setdefault("readiness_path", "/ready")
    return RouteSpec(service_id=7, name=name, endpoints=endpoints, **kw)


async def until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


def ready_count(r: Router, name: str) -> int:
    return sum(e.ready for e in r.state.table.endpoints(name))


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 25))


# --- routing ----------------------------------------------------------------------------


def test_unknown_service_is_404_json_and_healthz_is_200() -> None:
    async def go() -> None:
        async with router(route("echo")) as r:
            status, _, data = await r.get("/services/nope/x")
            assert status == 404
            assert data == {"error": "no such service", "service": "nope"}
            status, _, data = await r.get("/healthz")
            assert status == 200 and data["table_version"] == 1

    run(go)


def test_path_query_and_body_reach_the_replica_and_headers_are_filtered() -> None:
    async def go() -> None:
        async with backends("a") as (a,), router(route("echo", a)) as r:
            await until(lambda: ready_count(r, "echo") == 1, "a ready")
            status, headers, data = await r.call(
                "POST",
                "/services/echo/v1/x%2Fy?q=1&r=%20",
                data=b"hello",
                headers={"Authorization": "Bearer secret", "X-Forwarded-For": "10.9.9.9"},
            )
            assert status == 200, data
            assert data == {"backend": "a", "path": "/v1/x%2Fy?q=1&r=%20", "body_bytes": 5}
            seen = a.seen[-1]["headers"]
            assert "Authorization" not in seen  # the caller's token stays at the router
            assert seen["X-Forwarded-For"] == "10.9.9.9, 127.0.0.1"
            assert seen["X-Forwarded-Proto"] == "http"
            assert seen["X-Forwarded-Host"] == r.url.removeprefix("http://")
            assert headers["X-Backend"] == "a"
            assert "X-Private" not in headers  # named by the replica's Connection header
            status, _, data = await r.get("/services/echo")
            assert status == 200 and data["path"] == "/"

    run(go)


def test_a_busy_replica_gets_no_new_request_while_another_is_idle() -> None:
    async def go() -> None:
        async with backends("a", "b") as (a, b), router(route("echo", a, b)) as r:
            await until(lambda: ready_count(r, "echo") == 2, "both ready")
            a.hold = b.hold = True
            first = asyncio.create_task(r.get("/services/echo/slow"))
            await until(lambda: a.in_flight + b.in_flight == 1, "first arrived")
            busy, idle = (a, b) if a.in_flight else (b, a)
            idle.hold = False
            for _ in range(4):
                status, _, data = await r.get("/services/echo/quick")
                assert status == 200 and data["backend"] == idle.name
            assert busy.hits == 1 and idle.hits == 4
            busy.gate.set()
            assert (await first)[0] == 200

    run(go)


def test_a_slow_replica_gets_fewer_requests_under_load() -> None:
    async def go() -> None:
        async with backends("slow", "fast") as (slow, fast), router(route("e", slow, fast)) as r:
            await until(lambda: ready_count(r, "e") == 2, "both ready")
            slow.delay_s = 0.2

            async def worker() -> None:
                for _ in range(6):
                    status, _, _ = await r.get("/services/e/x")
                    assert status == 200

            await asyncio.gather(*(worker() for _ in range(4)))
            assert slow.hits < fast.hits
            assert slow.hits + fast.hits == 24

    run(go)


def test_ties_are_shared_in_turn() -> None:
    async def go() -> None:
        async with backends("a", "b", "c") as bs, router(route("e", *bs)) as r:
            await until(lambda: ready_count(r, "e") == 3, "all ready")
            for _ in range(9):
                assert (await r.get("/services/e/"))[0] == 200
            assert [b.hits for b in bs] == [3, 3, 3]

    run(go)


# --- readiness and draining ------------------------------------------------------------


def test_a_replica_not_ready_gets_nothing_until_its_probe_says_200() -> None:
    async def go() -> None:
        async with backends("a", "b") as (a, b):
            b.ready_status = 503
            async with router(route("e", a, b)) as r:
                await until(lambda: ready_count(r, "e") == 1, "a ready")
                for _ in range(3):  # several probe rounds pass meanwhile
                    assert (await r.get("/services/e/"))[2]["backend"] == "a"
                    await asyncio.sleep(0.06)
                assert b.hits == 0
                b.ready_status = 200
                await until(lambda: ready_count(r, "e") == 2, "b ready")
                names = {(await r.get("/services/e/"))[2]["backend"] for _ in range(4)}
                assert names == {"a", "b"}

    run(go)


def test_a_draining_replica_finishes_its_requests_and_gets_no_new_ones() -> None:
    async def go() -> None:
        async with backends("a", "b") as (a, b), router(route("e", a, b)) as r:
            await until(lambda: ready_count(r, "e") == 2, "both ready")
            a.hold = True
            b.hold = True
            first = asyncio.create_task(r.get("/services/e/long"))  # a: replica 0, first turn
            await until(lambda: a.in_flight == 1, "the first request is on a")
            old = r.state.table.route("e")
            assert old is not None
            drained = (replace(old.endpoints[0], draining=True), old.endpoints[1])
            r.apply(2, replace(old, endpoints=drained))
            b.hold = False
            for _ in range(3):
                assert (await r.get("/services/e/new"))[2]["backend"] == "b"
            a.gate.set()
            status, _, data = await first
            assert status == 200 and data["backend"] == "a"
            assert a.hits == 1

    run(go)


# --- failures and retries ---------------------------------------------------------------


def _ready_now(r: Router, name: str) -> None:
    for e in r.state.table.endpoints(name):
        r.state.set_ready(name, e, True)


def test_a_get_is_retried_on_another_replica_when_the_first_drops_the_connection() -> None:
    async def go() -> None:
        async with backends("a", "b") as (a, b), router(route("e", a, b), probe=False) as r:
            _ready_now(r, "e")
            a.die = True
            status, _, data = await r.get("/services/e/x")
            assert status == 200 and data["backend"] == "b"
            assert a.hits == 1 and b.hits == 1
            # Still ready: any caller can make a replica drop a connection, so that
            # alone does not take it out of rotation (its probe does, if it is broken).
            assert r.state.table.endpoints("e")[0].ready

    run(go)


def test_a_post_the_replica_received_is_not_retried() -> None:
    async def go() -> None:
        async with backends("a", "b") as (a, b), router(route("e", a, b), probe=False) as r:
            _ready_now(r, "e")
            a.die = True
            status, _, data = await r.call("POST", "/services/e/generate", data=b"{}")
            assert status == 502
            assert data == {"error": "the replica failed to answer", "service": "e"}
            assert a.hits == 1 and b.hits == 0
            snap = snapshot(r.state.table, r.state.stats, r.state.holds)
            assert snap is not None and snap.services[0].failed == 1

    run(go)


def test_a_post_is_retried_when_the_connection_was_refused() -> None:
    async def go() -> None:
        refused = f"127.0.0.1:{free_port()}"
        async with backends("b") as (b,), router(route("e", refused, b), probe=False) as r:
            _ready_now(r, "e")
            status, _, data = await r.call("POST", "/services/e/generate", data=b"{}")
            assert status == 200 and data["backend"] == "b"
            # A replica that refuses connections is gone: none until its probe says 200.
            assert [e.ready for e in r.state.table.endpoints("e")] == [False, True]

    run(go)


def test_every_replica_failing_is_a_502_after_at_most_two_retries() -> None:
    async def go() -> None:
        async with backends("a", "b", "c", "d") as bs, router(route("e", *bs), probe=False) as r:
            _ready_now(r, "e")
            for b in bs:
                b.die = True
            status, _, _ = await r.get("/services/e/x")
            assert status == 502
            assert sum(b.hits for b in bs) == 3  # the first try and two retries

    run(go)


def test_a_replica_too_slow_is_a_504() -> None:
    async def go() -> None:
        async with (
            backends("a") as (a,),
            router(route("e", a, request_timeout_s=0.3), probe=False) as r,
        ):
            _ready_now(r, "e")
            a.hold = True
            status, _, data = await r.get("/services/e/x")
            assert status == 504, data
            assert data["service"] == "e"

    run(go)


# --- holding ------------------------------------------------------------------------------


def test_a_request_is_held_while_no_replica_is_ready_and_served_once_one_is() -> None:
    async def go() -> None:
        async with backends("a") as (a,), router(route("e", scales_from_zero=True)) as r:
            held = asyncio.create_task(r.get("/services/e/x"))
            await until(lambda: r.state.holds.queued("e") == 1, "held")
            snap = snapshot(r.state.table, r.state.stats, r.state.holds)
            assert snap is not None and snap.services[0].queued == 1
            r.apply(2, route("e", a))  # a replica runs; the prober finds it ready
            status, _, data = await held
            assert status == 200 and data["backend"] == "a"
            assert r.state.holds.queued("e") == 0

    run(go)


def test_503_with_retry_after_when_the_queue_is_full_and_at_the_queue_timeout() -> None:
    async def go() -> None:
        spec = route("e", max_queue=1, queue_timeout_s=0.5)
        async with router(spec) as r:
            held = asyncio.create_task(r.get("/services/e/x"))
            await until(lambda: r.state.holds.queued("e") == 1, "held")
            status, headers, data = await r.get("/services/e/y")
            assert status == 503 and data["error"] == "queue full"
            assert int(headers["Retry-After"]) >= 1
            status, headers, data = await held
            assert status == 503 and data["error"] == "no replica became ready in time"
            assert int(headers["Retry-After"]) >= 1
            snap = snapshot(r.state.table, r.state.stats, r.state.holds)
            assert snap is not None and snap.services[0].failed == 2

    run(go)


# --- access -----------------------------------------------------------------------------


def test_access_401_403_and_allowed_on_a_private_service_and_none_needed_when_public() -> None:
    async def go() -> None:
        asked: list[tuple[str, str]] = []

        async def daemon(service: str, token: str) -> Verdict:
            asked.append((service, token))
            if token == "good":
                return Verdict(200, cache_s=60)
            if token == "expired":
                return Verdict(401, "token expired", cache_s=60)
            return Verdict(403, "not a user of this service", cache_s=60)

        async with (
            backends("a") as (a,),
            router(
                route("private", a, public=False),
                replace(route("open", a), service_id=8),
                access=CachedAccess(daemon),
            ) as r,
        ):
            await until(lambda: ready_count(r, "private") == 1, "ready")
            status, headers, data = await r.get("/services/private/x")
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
            assert data["service"] == "private"
            bad = {"Authorization": "Bearer bad"}
            status, _, data = await r.get("/services/private/x", headers=bad)
            assert (status, data.get("error")) == (403, "not a user of this service"), data
            old = {"Authorization": "Bearer expired"}
            assert (await r.get("/services/private/x", headers=old))[0] == 401
            good = {"Authorization": "Bearer good"}
            for _ in range(3):
                status, _, data = await r.get("/services/private/x", headers=good)
                assert status == 200 and data["backend"] == "a"
            assert asked.count(("private", "good")) == 1  # cached for its cache_s
            assert all("Authorization" not in s["headers"] for s in a.seen)
            assert (await r.get("/services/open/x"))[0] == 200
            assert a.hits == 4

    run(go)


def test_a_daemon_that_cannot_answer_an_access_check_is_a_503_to_retry() -> None:
    async def go() -> None:
        from schedulerd.router.access import DaemonUnreachable

        async def daemon(service: str, token: str) -> Verdict:
            raise DaemonUnreachable("UNAVAILABLE")

        async with router(route("p", public=False), access=CachedAccess(daemon)) as r:
            h = {"Authorization": "Bearer t"}
            status, headers, _ = await r.get("/services/p/x", headers=h)
            assert status == 503 and int(headers["Retry-After"]) >= 1

    run(go)


# --- bodies -----------------------------------------------------------------------------


def test_bodies_over_the_limit_are_413_with_or_without_a_length() -> None:
    async def go() -> None:
        async with backends("a") as (a,), router(route("e", a), max_body=1000) as r:
            await until(lambda: ready_count(r, "e") == 1, "ready")
            status, _, data = await r.call("POST", "/services/e/x", data=b"x" * 1001)
            assert status == 413 and data["service"] == "e"

            async def chunked() -> AsyncIterator[bytes]:
                for _ in range(5):
                    yield b"y" * 300

            status, _, _ = await r.call("POST", "/services/e/x", data=chunked())
            assert status == 413
            assert a.hits == 0 or all(s["method"] != "POST" for s in a.seen[:0])
            status, _, data = await r.call("POST", "/services/e/x", data=b"z" * 1000)
            assert status == 200 and data["body_bytes"] == 1000

            async def small() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield b"w" * 300

            status, _, data = await r.call("PUT", "/services/e/x", data=small())
            assert status == 200 and data["body_bytes"] == 900

    run(go)


def test_a_large_body_streams_through() -> None:
    async def go() -> None:
        async with backends("a") as (a,), router(route("e", a), max_body=8 << 20) as r:
            await until(lambda: ready_count(r, "e") == 1, "ready")
            status, _, data = await r.call("POST", "/services/e/x", data=b"q" * (3 << 20))
            assert status == 200 and data["body_bytes"] == 3 << 20
            # Sent with its length, not chunked: some servers refuse chunked uploads.
            assert a.seen[-1]["headers"]["Content-Length"] == str(3 << 20)

    run(go)


@pytest.mark.parametrize("length", [100, 5 << 20])  # read first, or streamed through
def test_a_caller_that_leaves_mid_body_does_not_mark_the_replica_not_ready(length: int) -> None:
    async def go() -> None:
        async with backends("a") as (a,), router(route("e", a), probe=False) as r:
            _ready_now(r, "e")
            host, port = r.url.removeprefix("http://").split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            head = f"POST /services/e/x HTTP/1.1\r\nHost: r\r\nContent-Length: {length}\r\n\r\n"
            writer.write(head.encode() + b"x" * 10)
            await writer.drain()
            await asyncio.sleep(0.2)  # the router is reading the body, or sending it on
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.2)
            assert r.state.table.endpoints("e")[0].ready
            assert (await r.get("/services/e/after"))[0] == 200

    run(go)


# --- load report ------------------------------------------------------------------------


def test_the_load_report_counts_in_flight_queued_requests_and_latencies() -> None:
    async def go() -> None:
        async with (
            backends("a") as (a,),
            router(route("e", a), replace(route("z", scales_from_zero=True), service_id=9)) as r,
        ):
            await until(lambda: ready_count(r, "e") == 1, "ready")
            for _ in range(3):
                assert (await r.get("/services/e/x"))[0] == 200
            a.hold = True
            busy = asyncio.create_task(r.get("/services/e/slow"))
            held = asyncio.create_task(r.get("/services/z/x"))
            await until(lambda: a.in_flight == 1 and r.state.holds.queued("z") == 1, "both")
            snap = snapshot(r.state.table, r.state.stats, r.state.holds)
            assert snap is not None and snap.table_version == 1
            e, z = snap.services
            assert (e.service_id, e.in_flight, e.queued, e.requests, e.failed) == (7, 1, 0, 3, 0)
            assert 0 < e.p50_ms <= e.p99_ms
            assert e.requests_total == 3
            assert [(x.replica, x.job_id, x.ready, x.in_flight) for x in e.replicas] == [
                (0, 100, True, 1)
            ]
            assert (z.service_id, z.in_flight, z.queued, z.requests) == (9, 0, 1, 0)
            wire = report_to_wire("r1", snap)
            assert wire.router == "r1" and wire.table_version == 1
            assert wire.services[0].replicas[0].in_flight == 1
            assert wire.services[1].queued == 1
            a.gate.set()
            assert (await busy)[0] == 200
            held.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await held
            again = snapshot(r.state.table, r.state.stats, r.state.holds)
            assert again is not None
            e = again.services[0]
            # The interval restarted: one request since, the totals go on.
            assert (e.in_flight, e.requests, e.requests_total) == (0, 1, 4)

    run(go)


def test_an_answer_streams_as_it_comes_and_one_cut_short_is_not_passed_as_whole() -> None:
    async def go() -> None:
        async with backends("a") as (a,), router(route("e", a), probe=False) as r:
            _ready_now(r, "e")
            async with r.http.get(r.url + "/services/e/stream") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "text/event-stream"
                # The first event arrives while the replica still holds the second.
                assert await resp.content.readuntil(b"\n\n") == b"data: one\n\n"
                a.gate.set()
                assert await resp.content.read() == b"data: two\n\n"
            a.gate.clear()
            a.die = True
            async with r.http.get(r.url + "/services/e/stream") as resp:
                assert await resp.content.readuntil(b"\n\n") == b"data: one\n\n"
                a.gate.set()
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.content.read()

    run(go)


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_methods_pass_through(method: str) -> None:
    async def go() -> None:
        async with backends("a") as (a,), router(route("e", a), probe=False) as r:
            _ready_now(r, "e")
            status, _, _ = await r.call(method, "/services/e/thing")
            assert status == 200
            assert a.seen[-1]["method"] == method

    run(go)


# --- callers that hold connections (slowloris) and odd requests ----------------------------


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP answer off a raw connection: its status and body (by Content-Length)."""
    async with asyncio.timeout(WAIT_S):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return int(lines[0].split()[1]), await reader.readexactly(length)


async def closed_after(reader: asyncio.StreamReader, since: float) -> float:
    """Seconds from `since` (the loop's time) until the router closes the connection
    (reading whatever it sends)."""
    async with asyncio.timeout(WAIT_S):
        while await reader.read(4096):
            pass
    return asyncio.get_running_loop().time() - since


def test_a_connection_without_a_whole_request_head_is_closed_at_the_header_timeout() -> None:
    async def go() -> None:
        async with (
            backends("a") as (a,),
            router(route("e", a, request_timeout_s=5), probe=False, header_timeout=0.4) as r,
        ):
            _ready_now(r, "e")
            now = asyncio.get_running_loop().time
            opened = now()
            # (The writers are kept: one collected would close its connection.)
            half, half_w = await r.raw(b"GET /services/e/ HTTP/1.1\r\nHost: x\r\nX-A: ")
            nothing, nothing_w = await r.raw(b"")
            idle, idle_w = await r.raw(b"GET /services/e/x HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await answer(idle))[0] == 200  # then nothing more on it
            answered = now()
            assert 0.3 < await closed_after(half, opened) < 3
            assert 0.3 < await closed_after(nothing, opened) < 3
            assert 0.3 < await closed_after(idle, answered) < 3
            for writer in (half_w, nothing_w, idle_w):
                writer.close()
            assert r.site.cap.open == 0
            # A request whose head came in time is not cut by it, however long it takes.
            a.delay_s = 1.0
            assert (await r.get("/services/e/slow"))[0] == 200

    run(go)


def test_a_slow_body_is_cut_at_its_deadline() -> None:
    async def go() -> None:
        spec = route("e", request_timeout_s=0.8)
        async with (
            backends("a") as (a,),
            router(
                replace(spec, endpoints=route("e", a).endpoints),
                probe=False,
                body_timeout=0.4,
                max_body=8 << 20,
            ) as r,
        ):
            _ready_now(r, "e")
            loop = asyncio.get_running_loop()
            # A body read first (a Content-Length up to 1 MiB): --body-timeout, 408.
            started = loop.time()
            head = b"POST /services/e/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
            reader, writer = await r.raw(head + b"0123456789")
            status, body = await answer(reader)
            assert status == 408 and b"did not arrive in time" in body
            assert 0.3 < loop.time() - started < 3
            assert a.hits == 0
            writer.close()
            # A body streamed through (a larger one): the service's request timeout.
            started = loop.time()
            head = b"POST /services/e/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
            reader, writer = await r.raw(head + b"0123456789")
            assert (await answer(reader))[0] == 504
            assert 0.6 < loop.time() - started < 3
            writer.close()
            assert r.state.table.endpoints("e")[0].ready  # the caller's fault, not a's

    run(go)


def test_connections_past_the_cap_are_refused_and_service_resumes_when_they_close() -> None:
    async def go() -> None:
        async with router(route("e"), max_connections=3) as r:
            # A keep-alive connection already open keeps working at the cap.
            kept, kept_w = await r.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await answer(kept))[0] == 200
            slow = [await r.raw(b"GET /services/e/ HTTP/1.1\r\nHost: x\r\n") for _ in range(2)]
            await until(lambda: r.site.cap.open == 3, "three connections open")
            started = asyncio.get_running_loop().time()
            refused, refused_w = await r.raw(b"")
            status, body = await answer(refused)
            assert status == 503 and b"too many connections" in body
            assert await closed_after(refused, started) < 1
            assert asyncio.get_running_loop().time() - started < 2
            assert r.site.cap.open == 3 and r.site.cap.refused == 1
            refused_w.close()
            kept_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await answer(kept))[0] == 200
            for _, writer in slow:
                writer.close()
            await until(lambda: r.site.cap.open == 1, "the slow ones closed")
            assert (await r.get("/healthz"))[0] == 200

    run(go)


def test_an_absolute_form_request_reaches_the_replica_with_the_path_after_the_service() -> None:
    async def go() -> None:
        async with backends("a") as (a,), router(route("e", a), probe=False) as r:
            _ready_now(r, "e")
            for target, path in [
                (b"http://evil/services/e/x%2Fy?q=1", "/x%2Fy?q=1"),
                (b"http://evil:81/services/e", "/"),
                (b"/services/e/v1/z", "/v1/z"),
            ]:
                reader, writer = await r.raw(b"GET " + target + b" HTTP/1.1\r\nHost: r\r\n\r\n")
                assert (await answer(reader))[0] == 200
                assert a.seen[-1]["path"] == path, target
                writer.close()

    run(go)


def test_100_continue_comes_only_once_the_request_passed_every_check() -> None:
    async def go() -> None:
        async def daemon(service: str, token: str) -> Verdict:
            return Verdict(403, "no", cache_s=60)

        async with (
            backends("a") as (a,),
            router(
                route("e", a),
                replace(route("p", a, public=False), service_id=8),
                access=CachedAccess(daemon),
                max_body=1000,
                probe=False,
            ) as r,
        ):
            _ready_now(r, "e")
            _ready_now(r, "p")

            def head(path: str, length: int, *extra: str, expect: str = "100-continue") -> bytes:
                lines = [f"POST {path} HTTP/1.1", "Host: r", f"Content-Length: {length}"]
                lines += [f"Expect: {expect}", *extra]
                return ("\r\n".join(lines) + "\r\n\r\n").encode()

            for refused, status in [
                (head("/services/e/x", 5000), 413),
                (head("/services/p/x", 10), 401),
                (head("/services/p/x", 10, "Authorization: Bearer t"), 403),
                (head("/services/none/x", 10), 404),
            ]:
                reader, writer = await r.raw(refused)
                assert (await answer(reader))[0] == status  # not 100 first
                writer.close()
            reader, writer = await r.raw(head("/services/e/x", 10))
            assert (await reader.readuntil(b"\r\n\r\n")) == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"0123456789")
            status, body = await answer(reader)
            assert status == 200 and b'"body_bytes": 10' in body
            writer.close()
            reader, writer = await r.raw(head("/services/e/x", 10, expect="teapot"))
            assert (await answer(reader))[0] == 417
            writer.close()
            assert a.hits == 1

    run(go)
