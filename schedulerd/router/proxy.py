"""The HTTP side: `/services/NAME/...` to a replica of NAME, and `/healthz`.

One request, in order (docs/router.md has the status codes): the service must be in the
table (404); a service that is not public wants a bearer token the daemon accepts (401,
403; 503 when it cannot tell); the body must fit (413); a usable replica is picked, or
the request is held until one is (503 when the queue is full or at its timeout); it is
sent, and tried again on another replica if the connection failed in a way that cannot
have run it twice (502 when out of tries); the replica's answer streams back; the whole
exchange has the service's request timeout (504). A small body is read before all that,
within --body-timeout (408).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable

import aiohttp
from aiohttp import web
from yarl import URL

from schedulerd.router import headers
from schedulerd.router.access import AccessChecker, bearer_token
from schedulerd.router.answers import ROUTER_FAILURES, error
from schedulerd.router.body import (
    BODY_TIMEOUT_S,
    Body,
    BodyTooLarge,
    CallerBodyFailed,
    CallerTooSlow,
    wants_continue,
)
from schedulerd.router.hold import Refusal
from schedulerd.router.retry import MAX_RETRIES, may_retry, never_connected
from schedulerd.router.state import RouterState
from schedulerd.router.table import Endpoint, RouteSpec

log = logging.getLogger("schedulerd.router.proxy")

CONNECT_TIMEOUT_S = 5.0  # a replica's address that swallows SYNs fails as a refusal would
# Pooled connections to replicas are dropped after this much idleness, below the common
# servers' own keep-alive (uvicorn's 5 s): a request sent on a connection the replica was
# closing fails as "disconnected", which only idempotent requests may retry.
KEEPALIVE_S = 3.0
NO_TABLE_RETRY_S = 1.0
ACCESS_RETRY_S = 2.0
SHUTDOWN_S = 0.5  # requests still in flight at a stop get this long, then are cut


def client_session() -> aiohttp.ClientSession:
    """The session for replicas: bytes pass as they are (no decompression, no cookies,
    no headers of its own)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        trust_env=False,
    )
    # aiohttp sends an idempotent request again, to the same replica, when its
    # connection drops; retries are the router's (schedulerd/router/retry.py): on another
    # replica, counted. No public option turns it off (aiohttp 3.14).
    session._retry_connection = False
    return session


class Proxy:
    def __init__(
        self,
        state: RouterState,
        access: AccessChecker,
        session: aiohttp.ClientSession,
        max_body_bytes: int,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.state = state
        self.access = access
        self.session = session
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_get("/healthz", self.healthz)
        for path in ("/services/{name}", "/services/{name}/{tail:.*}"):
            app.router.add_route("*", path, self.handle, expect_handler=_expect)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        table = self.state.table
        return web.json_response(
            {"ok": True, "table_version": table.version, "services": len(table.routes())}
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        table = self.state.table
        if not table.loaded:
            return error(503, "the router has no route table yet", name, retry_after_s=1)
        route = table.route(name)
        if route is None:
            return error(404, "no such service", name)
        if not route.public:
            refused = await self._check_access(request, name)
            if refused is not None:
                return refused
        started = time.monotonic()
        response = await self._serve(request, route)  # cancelled if the caller leaves
        latency_ms = (time.monotonic() - started) * 1000
        failed = _router_failed(response)
        self.state.stats.of(route.service_id).answered(latency_ms, failed=failed)
        return response

    async def _check_access(self, request: web.Request, name: str) -> web.Response | None:
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return error(
                401,
                "this service needs Authorization: Bearer TOKEN",
                name,
                headers={"WWW-Authenticate": 'Bearer realm="schedulerd"'},
            )
        verdict = await self.access.check(name, token)
        if verdict.allowed:
            return None
        if verdict.status == 503:
            return error(503, verdict.reason, name, retry_after_s=ACCESS_RETRY_S)
        extra = (
            {"WWW-Authenticate": 'Bearer error="invalid_token"'} if verdict.status == 401 else {}
        )
        return error(verdict.status, verdict.reason or "access denied", name, headers=extra)

    async def _serve(self, request: web.Request, route: RouteSpec) -> web.StreamResponse:
        name = route.name
        try:
            body = await Body.read(request, self.max_body_bytes, self.body_timeout_s)
        except BodyTooLarge:
            return _too_large(name, self.max_body_bytes)
        except CallerBodyFailed:
            return _body_failed(name)
        except CallerTooSlow:
            slow = error(408, "the request body did not arrive in time", name)
            slow.force_close()  # the rest of the body is not waited for
            return slow
        table = self.state.table
        endpoint = table.pick(name)
        if endpoint is None:
            held = await self.state.holds.hold(
                name, lambda: table.pick(name), route.max_queue, route.queue_timeout_s
            )
            if isinstance(held, Refusal):
                return error(503, held.value, name, retry_after_s=route.queue_timeout_s)
            endpoint = held
            route = table.route(name) or route  # the table may have changed meanwhile
        exchange = _Exchange(self, request, route, body)
        try:
            async with asyncio.timeout(route.request_timeout_s):
                return await exchange.run(endpoint)
        except TimeoutError:
            if exchange.response is not None:  # answering already: cut the answer short
                log.info("%s: request timeout after the answer began; closing", name)
                _abort(request)
                return exchange.response
            return error(504, "the replica did not answer in time", name)


class _Exchange:
    """One request to replicas: the tries, and the answer streamed back."""

    def __init__(self, proxy: Proxy, request: web.Request, route: RouteSpec, body: Body) -> None:
        self.proxy = proxy
        self.request = request
        self.route = route
        self.body = body
        self.response: web.StreamResponse | None = None

    async def run(self, endpoint: Endpoint) -> web.StreamResponse:
        name = self.route.name
        state = self.proxy.state
        tried: list[Endpoint] = []
        while True:
            tried.append(endpoint)
            try:
                return await self._once(endpoint)
            except _CallerGone:
                assert self.response is not None
                return self.response
            except aiohttp.ClientError as e:
                if self.body.too_large:
                    return _too_large(name, self.proxy.max_body_bytes)
                if self.body.caller_failed:  # the replica did nothing wrong
                    return _body_failed(name)
                if self.response is not None:  # answering already: cut the answer short
                    log.info("%s: replica %d failed mid-answer: %s", name, endpoint.spec.replica, e)
                    _abort(self.request)
                    return self.response
                if never_connected(e):
                    # Gone (refused, or no answer to the connect): no request until its
                    # probe says so. Not for a connection dropped after the request was
                    # sent: any caller could make a replica do that, and so take it out
                    # of rotation; a replica really broken fails its probe.
                    state.set_ready(name, endpoint, False)
                log.info(
                    "%s: replica %d at %s failed: %r",
                    name,
                    endpoint.spec.replica,
                    endpoint.spec.address,
                    e,
                )
                retry = (
                    len(tried) <= MAX_RETRIES
                    and self.body.resendable
                    and may_retry(self.request.method, e)
                )
                following = state.table.pick(name, exclude=tried) if retry else None
                if following is None:
                    return error(502, "the replica failed to answer", name)
                endpoint = following

    async def _once(self, endpoint: Endpoint) -> web.StreamResponse:
        request = self.request
        stats = self.proxy.state.stats.of(self.route.service_id)
        endpoint.in_flight += 1
        stats.in_flight += 1
        try:
            sent = headers.to_replica(request.headers, request.remote, request.scheme, request.host)
            if (length := self.body.streamed_length) is not None:
                sent["Content-Length"] = str(length)
            async with self.proxy.session.request(
                request.method,
                _target(endpoint.spec.address, request),
                headers=sent,
                data=self.body.payload(),
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=headers.to_caller(upstream.headers),
                )
                self.response = response
                await response.prepare(request)
                async for chunk in _chunks(upstream):
                    await _to_caller(response.write(chunk))
                await _to_caller(response.write_eof())
                return response
        finally:
            endpoint.in_flight -= 1
            stats.in_flight -= 1


class _CallerGone(Exception):
    pass


async def _to_caller(write: Awaitable[None]) -> None:
    try:
        await write
    except ConnectionResetError:  # the caller left: stop reading the replica's answer
        raise _CallerGone from None


async def _chunks(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    # As they come: a streamed answer (tokens, server-sent events) is not held back.
    async for chunk in upstream.content.iter_any():
        yield chunk


async def _expect(request: web.Request) -> web.Response | None:
    """The Expect header, before the handler: `100 Continue` is sent later, when the body
    is about to be read (schedulerd/router/body.py), so that a request refused first (401,
    403, 404, 413) gets no invitation to send its body."""
    if request.version < aiohttp.HttpVersion11 or wants_continue(request):
        return None
    return error(417, "unknown expectation: " + request.headers["Expect"], None)


def _target(address: str, request: web.Request) -> URL:
    """http://ADDRESS/TAIL?QUERY, TAIL and QUERY as the caller wrote them (not decoded
    and encoded again: a replica sees the bytes the caller sent)."""
    raw = request.raw_path
    if not raw.startswith("/"):
        # The absolute form (`GET http://HOST/services/NAME/TAIL HTTP/1.1`, RFC 9112
        # 3.2.2): the path starts after the authority.
        _, _, after_scheme = raw.partition("://")
        authority_end = min(
            (i for i in (after_scheme.find(c) for c in "/?#") if i >= 0),
            default=len(after_scheme),
        )
        raw = after_scheme[authority_end:]
        raw = raw if raw.startswith("/") else "/" + raw
    path, _, query = raw.partition("?")
    rest = path.split("/", 3)[3] if path.count("/") >= 3 else ""  # after /services/NAME/
    return URL(f"http://{address}/{rest}" + (f"?{query}" if query else ""), encoded=True)


def _too_large(name: str, limit: int) -> web.Response:
    return error(413, f"the request body is over {limit} bytes", name)


def _body_failed(name: str) -> web.Response:
    return error(400, "the request body ended early", name)


def _router_failed(response: web.StreamResponse) -> bool:
    """A 502, 503 or 504 the router answered itself (a replica's own 503 is not: its
    answer is streamed, never a whole web.Response)."""
    return response.status in ROUTER_FAILURES and isinstance(response, web.Response)


def _abort(request: web.Request) -> None:
    """End the caller's connection: a truncated answer must not look complete."""
    if request.transport is not None:
        request.transport.abort()
