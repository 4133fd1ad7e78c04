"""The schedulerd-router program as systemd runs it: its options and config file, and a
run against a fake daemon (a real gRPC server of the Routing service, serving.proto) and
a real backend, over real sockets: the table stream and its reconnection, the token it
sends, access checks, load reports, sd_notify, and a stop with requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from schedulerd.api.v1 import serving_pb2, serving_pb2_grpc
from schedulerd.router import link as link_module
from schedulerd.router.access import CachedAccess
from schedulerd.router.link import DaemonAddress, Link
from schedulerd.router.state import RouterState

PROGRAM = [sys.executable, "-m", "schedulerd.router"]
WAIT_S = 15.0  # bounds on waits for what should happen, not speed targets


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROGRAM, *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_print_config_shows_each_value_and_where_it_came_from(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text('daemon = "head:50051"\nprobe-every = 0.25\n')
    done = _run("--config", str(config), "--listen", "0.0.0.0:9000", "--print-config")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f'daemon = "head:50051"  # {config}:1' in lines
    assert f"probe-every = 0.25  # {config}:2" in lines
    assert 'listen = "0.0.0.0:9000"  # command line' in lines
    assert "report-every = 1.0  # default" in lines
    assert "max-body-bytes = 67108864  # default" in lines
    assert "header-timeout = 10.0  # default" in lines
    assert "body-timeout = 30.0  # default" in lines
    assert "max-connections = 10000  # default" in lines


def test_a_bad_config_key_or_value_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text('daemon = "head:50051"\nlisen = "0.0.0.0:8080"\nreport-every = 0\n')
    done = _run("--config", str(config))
    assert done.returncode == 2
    assert f"{config}:2: lisen: unknown key; did you mean 'listen'?" in done.stderr
    assert f"{config}:3: report-every:" in done.stderr


def test_a_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    token.chmod(0o644)
    done = _run("--no-config", "--token-file", str(token), "--listen", "127.0.0.1:1")
    assert done.returncode == 2
    assert "readable by others" in done.stderr


# --- a run against a fake daemon ----------------------------------------------------------


class FakeDaemon(serving_pb2_grpc.RoutingServicer):
    """The daemon's Routing service: table version 1, then (the stream ended once, so the
    router must reconnect) version 2 until the end."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.watches = 0
        self.metadata: list[dict[str, Any]] = []
        self.reports: list[serving_pb2.LoadReport] = []
        self.checks: list[tuple[str, str]] = []

    def table(self, version: int) -> serving_pb2.RouteTable:
        return serving_pb2.RouteTable(
            version=version,
            routes=[
                serving_pb2.Route(
                    service_id=1,
                    name="echo",
                    readiness_path="/ready",
                    endpoints=[serving_pb2.Endpoint(replica=0, job_id=11, address=self.backend)],
                ),
                serving_pb2.Route(service_id=2, name="cold", public=True, scales_from_zero=True),
            ],
        )

    async def WatchRoutes(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.watches += 1
        self.metadata.append(dict(context.invocation_metadata()))
        if self.watches == 1:
            yield self.table(1)
            return  # the stream ends: the router reconnects, keeping table 1 meanwhile
        yield self.table(2)
        await asyncio.Event().wait()

    async def ReportLoad(self, request: Any, context: Any) -> Any:
        self.metadata.append(dict(context.invocation_metadata()))
        self.reports.append(request)
        return serving_pb2.LoadReportAck()

    async def CheckAccess(self, request: Any, context: Any) -> Any:
        self.checks.append((request.service, request.token))
        if request.token == "good":
            return serving_pb2.CheckAccessResponse(allowed=True, http_status=200, cache_s=30)
        return serving_pb2.CheckAccessResponse(http_status=403, reason="not yours", cache_s=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


def test_the_router_against_a_daemon_serves_reports_and_stops_promptly(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_scenario(tmp_path), 60))


async def _scenario(tmp_path: Path) -> None:
    hanging = asyncio.Event()
    in_flight = 0

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def any_path(request: web.Request) -> web.Response:
        nonlocal in_flight
        if request.path == "/hang":
            in_flight += 1
            await hanging.wait()
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_route("*", "/{tail:.*}", any_path)
    backend = web.AppRunner(app, shutdown_timeout=0.1)
    await backend.setup()
    await web.TCPSite(backend, "127.0.0.1", 0).start()
    fake = FakeDaemon(f"127.0.0.1:{backend.addresses[0][1]}")
    server = grpc.aio.server()
    serving_pb2_grpc.add_RoutingServicer_to_server(fake, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    token = tmp_path / "router.token"
    token.write_text("routertoken\n")
    token.chmod(0o600)
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "router.log").open("w")
    # Not a child of this test's event loop (asyncio's child watcher): plain Popen.
    router = subprocess.Popen(
        [
            *PROGRAM,
            "--no-config",
            "--daemon",
            f"127.0.0.1:{grpc_port}",
            "--listen",
            f"127.0.0.1:{port}",
            "--token-file",
            str(token),
            "--name",
            "r-test",
            "--report-every",
            "0.2",
            "--probe-every",
            "0.1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
    )
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        await _serve_and_stop(fake, router, http, url, notify, lambda: hanging)
        assert router.wait(timeout=WAIT_S) == 0
    finally:
        if router.poll() is None:
            router.kill()
            router.wait()
        hanging.set()
        await http.close()
        await server.stop(None)
        await backend.cleanup()
        notify.close()
        log.close()
    text = (tmp_path / "router.log").read_text()
    assert "Traceback" not in text, text


def _notes(notify: socket.socket) -> list[str]:
    got = []
    with contextlib.suppress(BlockingIOError):
        while True:
            got += notify.recv(4096).decode().splitlines()
    return got


async def _serve_and_stop(
    fake: FakeDaemon,
    router: subprocess.Popen[bytes],
    http: aiohttp.ClientSession,
    url: str,
    notify: socket.socket,
    hanging: Any,
) -> None:
    good = {"Authorization": "Bearer good"}

    async def table_2() -> bool:
        assert router.poll() is None, "the router exited"
        try:
            async with http.get(f"{url}/healthz") as r:
                return r.status == 200 and (await r.json())["table_version"] == 2
        except aiohttp.ClientConnectionError:
            return False

    await _until(table_2, "the router has table 2 (it reconnected after the stream ended)")
    notes: list[str] = []

    async def ready_sent() -> bool:
        notes.extend(_notes(notify))
        return "READY=1" in notes

    await _until(ready_sent, "READY=1")
    assert fake.watches == 2
    assert all(m.get("authorization") == "Bearer routertoken" for m in fake.metadata)
    assert fake.metadata[0].get("authorization") == "Bearer routertoken"

    async def served() -> bool:
        async with http.get(f"{url}/services/echo/x", headers=good) as r:
            return r.status == 200 and (await r.json()) == {"path": "/x"}

    await _until(served, "a request served once the replica is ready")
    async with http.get(f"{url}/services/echo/x") as r:
        assert r.status == 401
    async with http.get(f"{url}/services/echo/x", headers={"Authorization": "Bearer b"}) as r:
        assert r.status == 403 and (await r.json())["error"] == "not yours"
    assert ("echo", "good") in fake.checks and ("echo", "b") in fake.checks

    async def reported() -> bool:
        for rep in fake.reports:
            echo = {s.service_id: s for s in rep.services}.get(1)
            if echo is not None and echo.requests_total >= 1 and rep.table_version == 2:
                assert rep.router == "r-test"
                assert [(x.replica, x.job_id, x.ready) for x in echo.replicas] == [(0, 11, True)]
                return True
        return False

    await _until(reported, "a load report with the requests served")

    # Requests in flight (three at the replica, one held for a service with none) ...
    calls = [
        asyncio.create_task(_outcome(http, f"{url}/services/echo/hang", good)) for _ in range(3)
    ]
    calls.append(asyncio.create_task(_outcome(http, f"{url}/services/cold/x", {})))

    async def busy() -> bool:
        last = fake.reports[-1] if fake.reports else None
        if last is None:
            return False
        by_id = {s.service_id: s for s in last.services}
        return by_id[1].in_flight == 3 and by_id[2].queued == 1

    await _until(busy, "a report with 3 requests in flight and 1 held")
    # ... end promptly when the router stops: cut, not left hanging.
    stopped_at = time.monotonic()
    router.send_signal(signal.SIGTERM)
    outcomes = await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)
    assert time.monotonic() - stopped_at < WAIT_S
    assert sorted(outcomes) == ["503", "cut", "cut", "cut"], outcomes
    assert not hanging().is_set()  # the replica never answered them
    await asyncio.sleep(0.2)
    assert router.wait(timeout=WAIT_S) == 0
    notes.extend(_notes(notify))
    assert "STOPPING=1" in notes


async def _outcome(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
    try:
        async with http.get(url, headers=headers) as r:
            await r.read()
            return str(r.status)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
        return "cut"


# --- slow callers and a hung daemon ----------------------------------------------------------


def test_the_program_closes_slow_connections_and_refuses_those_past_its_cap(
    tmp_path: Path,
) -> None:
    asyncio.run(asyncio.wait_for(_slow_callers(tmp_path), 60))


async def _slow_callers(tmp_path: Path) -> None:
    port = _free_port()
    log_path = tmp_path / "router.log"
    with log_path.open("w") as log:
        router = subprocess.Popen(
            [
                *PROGRAM,
                "--no-config",
                "--daemon",
                f"127.0.0.1:{_free_port()}",  # none: the router serves all the same
                "--listen",
                f"127.0.0.1:{port}",
                "--header-timeout",
                "1",
                "--max-connections",
                "2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    writers: list[asyncio.StreamWriter] = []

    async def healthz() -> bool:
        assert router.poll() is None, "the router exited"
        try:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    async def connect(data: bytes) -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        writers.append(writer)
        return reader

    try:
        await _until(healthz, "the router serves")
        await http.close()  # its pooled connection would count
        await asyncio.sleep(1.5)  # and is closed by the router by now
        opened = time.monotonic()
        slow = [await connect(b"GET /services/x/ HTTP/1.1\r\nHost: x\r\nX-A: ") for _ in "ab"]
        await asyncio.sleep(0.3)
        # Past the cap: a 503 at once, and the close. (One that sent its request first
        # may see a reset instead: the router does not read it.)
        refused = await connect(b"")
        answer = await asyncio.wait_for(refused.read(), 2)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        refused = await connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            answer = await asyncio.wait_for(refused.read(), 2)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer
        for reader in slow:  # cut at the header timeout
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.8 < time.monotonic() - opened < 5
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        assert await healthz()  # served again
    finally:
        for writer in writers:
            writer.close()
        await http.close()
        router.send_signal(signal.SIGTERM)
        try:
            router.wait(timeout=WAIT_S)
        finally:
            if router.poll() is None:
                router.kill()
                router.wait()
    text = log_path.read_text()
    assert "Traceback" not in text, text
    assert "at --max-connections" in text


class HungDaemon(serving_pb2_grpc.RoutingServicer):
    """Answers CheckAccess until `hung` is set, then never (as a daemon under SIGSTOP)."""

    def __init__(self) -> None:
        self.hung = False
        self.asked = 0

    async def CheckAccess(self, request: Any, context: Any) -> Any:
        self.asked += 1
        if self.hung:
            await asyncio.Event().wait()
        return serving_pb2.CheckAccessResponse(allowed=True, http_status=200, cache_s=0.2)


def test_with_the_daemon_hung_only_the_first_check_waits_and_the_stale_answer_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(link_module, "ACCESS_TIMEOUT_S", 1.0)
    asyncio.run(asyncio.wait_for(_hung_daemon(), 60))


async def _hung_daemon() -> None:
    daemon = HungDaemon()
    server = grpc.aio.server()
    serving_pb2_grpc.add_RoutingServicer_to_server(daemon, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    link = Link(DaemonAddress(f"127.0.0.1:{port}"), RouterState(), "r", 1.0)
    access = CachedAccess(link.check_access)
    try:
        assert (await access.check("s", "tok")).allowed
        daemon.hung = True
        await asyncio.sleep(0.3)  # the answer is past its time
        started = time.monotonic()
        assert (await access.check("s", "tok")).allowed  # the stale one, after the timeout
        assert 0.8 < time.monotonic() - started < 3
        started = time.monotonic()
        for _ in range(20):
            assert (await access.check("s", "tok")).allowed
            await asyncio.sleep(0.1)
        assert time.monotonic() - started < 3.5  # no check waited for the daemon
        assert daemon.asked <= 2 + 3  # one question at a time, each its timeout long
    finally:
        await link.close()
        await server.stop(None)
