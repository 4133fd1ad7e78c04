"""The router's pure parts, each rule a case: the table and its balancing, the counters
and percentiles, the access cache, holding, which failures are retried, the wire, and
the listening socket's limits."""

from __future__ import annotations

import asyncio
import logging
import math
import resource
from dataclasses import replace

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from schedulerd.api.v1 import serving_pb2
from schedulerd.router.access import (
    DAEMON_DOWN_S,
    MAX_CACHE_S,
    STALE_GRACE_S,
    CachedAccess,
    DaemonUnreachable,
    Verdict,
    bearer_token,
)
from schedulerd.router.headers import to_caller, to_replica
from schedulerd.router.hold import Holds, Refusal
from schedulerd.router.link import LOG_EVERY_S, RateLimitedLog
from schedulerd.router.listen import (
    ACCEPT_ERROR,
    RESERVE_FDS,
    AcceptErrors,
    connection_cap,
    raise_nofile_limit,
)
from schedulerd.router.retry import may_retry
from schedulerd.router.stats import SAMPLE_SIZE, ServiceStats, Stats, percentile
from schedulerd.router.table import EndpointSpec, RouteSpec, Table
from schedulerd.router.wire import route_from_wire, table_from_wire, verdict_from_wire
from schedulerd.serve.spec import DEFAULT_QUEUE_TIMEOUT_S, MAX_QUEUE, MAX_SECONDS


def _route(*eps: EndpointSpec, name: str = "s", sid: int = 1) -> RouteSpec:
    return RouteSpec(service_id=sid, name=name, endpoints=eps)


A = EndpointSpec(0, 10, "10.0.0.1:8000")
B = EndpointSpec(1, 11, "10.0.0.2:8000")
C = EndpointSpec(2, 12, "10.0.0.3:8000")


def _ready_table(*eps: EndpointSpec) -> Table:
    t = Table()
    t.replace(1, [_route(*eps)])
    for e in t.endpoints("s"):
        t.set_ready("s", e, True)
    return t


# --- table ------------------------------------------------------------------------------


def test_a_new_endpoint_starts_not_ready_and_nothing_is_picked() -> None:
    t = Table()
    assert not t.loaded
    assert t.replace(1, [_route(A)]) == []  # no usable endpoint: nobody to wake
    assert t.loaded and t.pick("s") is None


def test_least_in_flight_wins_and_ties_go_in_turn() -> None:
    t = _ready_table(A, B, C)
    a, b, c = t.endpoints("s")
    assert [t.pick("s") for _ in range(6)] == [a, b, c, a, b, c]
    a.in_flight, b.in_flight, c.in_flight = 2, 1, 3
    assert t.pick("s") is b
    b.in_flight = 2
    assert {id(t.pick("s")) for _ in range(4)} == {id(a), id(b)}


def test_draining_and_not_ready_endpoints_are_not_picked_and_excluded_ones_skipped() -> None:
    t = _ready_table(A, B)
    a, b = t.endpoints("s")
    t.replace(2, [_route(replace(A, draining=True), B)])
    assert t.endpoints("s")[0] is a  # same replica, same address: the same live state
    assert a.ready and not a.usable
    assert {id(t.pick("s")) for _ in range(3)} == {id(b)}
    assert t.pick("s", exclude=[b]) is None
    t.set_ready("s", b, False)
    assert t.pick("s") is None


def test_a_moved_endpoint_starts_over_and_a_gone_one_is_forgotten() -> None:
    t = _ready_table(A, B)
    a, b = t.endpoints("s")
    a.in_flight = 1
    t.replace(2, [_route(replace(A, address="10.0.0.9:8000"))])
    (moved,) = t.endpoints("s")
    assert moved is not a and not moved.ready and moved.in_flight == 0
    assert not t.set_ready("s", b, True)  # a verdict on an endpoint that left: ignored
    assert not t.set_ready("s", a, True)  # ... or on the old address
    assert not moved.ready


def test_set_ready_says_when_a_service_gains_its_first_usable_endpoint() -> None:
    t = Table()
    t.replace(1, [_route(A, B)])
    a, b = t.endpoints("s")
    assert t.set_ready("s", a, True)
    assert not t.set_ready("s", b, True)  # it had one already
    assert t.replace(2, [_route(A, B)]) == ["s"]


def test_a_service_created_again_under_its_name_keeps_nothing_of_the_old_one() -> None:
    t = _ready_table(A)
    t.replace(2, [replace(_route(A), service_id=2)])
    assert not t.endpoints("s")[0].ready


# --- stats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, 0.0), ([5.0], 99, 5.0), ([1, 2, 3, 4], 50, 2), ([*range(1, 101)], 99, 99)],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(sorted(values), q) == expected


def test_an_interval_restarts_at_each_take_and_totals_go_on() -> None:
    s = ServiceStats()
    for ms in (10.0, 20.0, 30.0, 1000.0):
        s.answered(ms, failed=False)
    s.answered(5.0, failed=True)
    i = s.take()
    assert (i.requests, i.failed, i.p50_ms, i.p99_ms) == (5, 1, 20.0, 1000.0)
    assert s.take().requests == 0
    assert (s.requests_total, s.failed_total) == (5, 1)


def test_latencies_kept_are_bounded_and_still_a_fair_sample() -> None:
    s = ServiceStats()
    for n in range(SAMPLE_SIZE * 5):
        s.answered(float(n % 100), failed=False)
    assert len(s._sample) == SAMPLE_SIZE
    i = s.take()
    assert i.requests == SAMPLE_SIZE * 5
    assert 40 <= i.p50_ms <= 60 and i.p99_ms >= 95


def test_stats_of_services_gone_are_dropped_once_idle() -> None:
    st = Stats()
    st.of(1).in_flight = 1
    st.of(2)
    st.prune([3])
    assert st.of(1).in_flight == 1  # kept while a request of it runs
    assert st.of(2).requests_total == 0


# --- access -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer  tok ", "tok"),
        ("bearer tok", "tok"),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_answers_are_cached_per_service_and_token_for_their_time() -> None:
    async def go() -> None:
        clock, asked = _Clock(), []

        async def daemon(service: str, token: str) -> Verdict:
            asked.append((service, token))
            return Verdict(200, cache_s=10)

        access = CachedAccess(daemon, clock)
        assert (await access.check("a", "t")).allowed
        assert (await access.check("a", "t")).allowed
        await access.check("b", "t")
        assert asked == [("a", "t"), ("b", "t")]
        clock.now += 11
        await access.check("a", "t")
        assert len(asked) == 3

    asyncio.run(go())


def test_concurrent_checks_of_one_token_ask_the_daemon_once() -> None:
    async def go() -> None:
        gate, asked = asyncio.Event(), []

        async def daemon(service: str, token: str) -> Verdict:
            asked.append(token)
            await gate.wait()
            return Verdict(403, "no", cache_s=0)

        access = CachedAccess(daemon)
        checks = [asyncio.create_task(access.check("a", "t")) for _ in range(5)]
        await asyncio.sleep(0.01)
        gate.set()
        assert {v.status for v in await asyncio.gather(*checks)} == {403}
        assert asked == ["t"] and access.cached == 0  # cache_s 0: not kept

    asyncio.run(go())


def test_the_cache_is_a_bounded_lru() -> None:
    async def go() -> None:
        asked = []

        async def daemon(service: str, token: str) -> Verdict:
            asked.append(token)
            return Verdict(200, cache_s=1e9)

        access = CachedAccess(daemon, max_entries=2)
        for t in ("x", "y", "x", "z", "x", "y"):
            await access.check("s", t)
        assert access.cached == 2
        assert asked == ["x", "y", "z", "y"]  # y was least recently used when z came

    asyncio.run(go())


def test_an_unreachable_daemon_is_503_unless_a_recent_answer_is_known() -> None:
    async def go() -> None:
        clock, up = _Clock(), [True]

        async def daemon(service: str, token: str) -> Verdict:
            if not up[0]:
                raise DaemonUnreachable("UNAVAILABLE")
            return Verdict(200, cache_s=MAX_CACHE_S * 10)

        access = CachedAccess(daemon, clock)
        await access.check("s", "known")
        up[0] = False
        assert (await access.check("s", "new")).status == 503
        clock.now += MAX_CACHE_S + 1  # expired (capped at MAX_CACHE_S), daemon down
        assert (await access.check("s", "known")).allowed
        clock.now += STALE_GRACE_S
        assert (await access.check("s", "known")).status == 503

    asyncio.run(go())


def test_once_the_daemon_failed_a_stale_answer_is_used_at_once_with_one_refresh() -> None:
    async def go() -> None:
        clock, calls, hung = _Clock(), [], asyncio.Event()
        release = asyncio.Event()

        async def daemon(service: str, token: str) -> Verdict:
            calls.append(token)
            if hung.is_set():
                await release.wait()  # a hung daemon: the link's timeout ends the wait
                raise DaemonUnreachable("DEADLINE_EXCEEDED")
            return Verdict(200, cache_s=10)

        access = CachedAccess(daemon, clock)
        assert (await access.check("s", "t")).allowed
        hung.set()
        clock.now += 11  # expired: asked again, and the first caller waits for the daemon
        first = asyncio.create_task(access.check("s", "t"))
        await asyncio.sleep(0.01)
        assert not first.done() and len(calls) == 2
        release.set()
        assert (await first).allowed  # the stale answer, once the daemon failed
        release.clear()
        # Now every check is answered at once, with one question in flight per key.
        for _ in range(5):
            assert (await asyncio.wait_for(access.check("s", "t"), 0.5)).allowed
        assert len(calls) == 3
        clock.now += DAEMON_DOWN_S / 2
        assert (await asyncio.wait_for(access.check("s", "t"), 0.5)).allowed
        # A token never seen still waits for the daemon, and gets 503.
        other = asyncio.create_task(access.check("s", "new"))
        await asyncio.sleep(0.01)
        release.set()
        assert (await other).status == 503
        # The daemon answers again: the next question is waited for, its answer used.
        hung.clear()
        await asyncio.sleep(0.01)  # the background question ends (failed)
        clock.now += DAEMON_DOWN_S + 1
        assert (await access.check("s", "t")).allowed
        assert calls[-1] == "t" and access.cached == 1
        # Down again, past the answer's time and its grace: no stale answer is used.
        hung.set()
        release.set()
        clock.now += 10 + STALE_GRACE_S + 1
        assert (await access.check("s", "t")).status == 503
        assert (await access.check("s", "t")).status == 503

    asyncio.run(go())


# --- holding ----------------------------------------------------------------------------


def test_holds_end_when_picked_full_timed_out_or_stopping() -> None:
    async def go() -> None:
        holds, found = Holds(), [None]

        def pick() -> str | None:
            return found[0]

        first = asyncio.create_task(holds.hold("s", pick, 1, 5.0))
        await asyncio.sleep(0)
        assert holds.queued("s") == 1
        assert await holds.hold("s", pick, 1, 5.0) is Refusal.FULL
        holds.wake("s")  # a wake without an endpoint: it keeps waiting
        await asyncio.sleep(0)
        assert not first.done()
        found[0] = "e"
        holds.wake("s")
        assert await first == "e" and holds.queued("s") == 0
        found[0] = None
        assert await holds.hold("s", pick, 1, 0.01) is Refusal.TIMEOUT
        last = asyncio.create_task(holds.hold("s", pick, 1, 5.0))
        await asyncio.sleep(0)
        holds.stop()
        assert await last is Refusal.STOPPING
        assert await holds.hold("t", pick, 1, 5.0) is Refusal.STOPPING
        assert holds._events == {} and holds._queued == {}

    asyncio.run(go())


# --- retries ----------------------------------------------------------------------------


def _refused() -> aiohttp.ClientConnectorError:
    class _Key:
        ssl = None
        host, port = "h", 1

    return aiohttp.ClientConnectorError(_Key(), ConnectionRefusedError(111, "refused"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "error", "retried"),
    [
        ("GET", aiohttp.ServerDisconnectedError(), True),
        ("GET", aiohttp.ClientOSError(104, "reset"), True),
        ("PUT", aiohttp.ServerDisconnectedError(), True),
        ("POST", aiohttp.ServerDisconnectedError(), False),
        ("PATCH", aiohttp.ClientOSError(104, "reset"), False),
        ("POST", _refused(), True),
        ("POST", aiohttp.ConnectionTimeoutError(), True),
        ("GET", aiohttp.SocketTimeoutError(), False),
        ("GET", aiohttp.ClientPayloadError(), False),
    ],
)
def test_which_failures_are_retried(method: str, error: aiohttp.ClientError, retried: bool) -> None:
    assert may_retry(method, error) is retried


# --- headers ----------------------------------------------------------------------------


def test_hop_by_hop_headers_and_the_token_stay_behind() -> None:
    caller = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Authorization", "Bearer t"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Transfer-Encoding", "chunked"),
                ("Host", "router:8080"),
                ("Expect", "100-continue"),
                ("Accept", "a"),
                ("Accept", "b"),
            ]
        )
    )
    out = to_replica(caller, "1.2.3.4", "http", "router:8080")
    assert out.getall("Accept") == ["a", "b"]
    assert set(out) == {"Accept", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"}
    assert out["X-Forwarded-For"] == "1.2.3.4"
    back = to_caller(CIMultiDictProxy(CIMultiDict([("Keep-Alive", "5"), ("Content-Length", "3")])))
    assert dict(back) == {"Content-Length": "3"}


# --- wire -------------------------------------------------------------------------------


def test_a_route_with_zeros_gets_the_spec_defaults_and_bounds() -> None:
    r = route_from_wire(
        serving_pb2.Route(
            service_id=3,
            name="m",
            max_queue=10**9,
            request_timeout_s=math.inf,
            endpoints=[
                serving_pb2.Endpoint(replica=1, job_id=9, address="h:1", draining=True),
                serving_pb2.Endpoint(replica=2, job_id=10),  # no address yet: not routable
            ],
        )
    )
    assert r.readiness_path == "/" and r.queue_timeout_s == DEFAULT_QUEUE_TIMEOUT_S
    assert r.max_queue == MAX_QUEUE and r.request_timeout_s <= MAX_SECONDS
    assert r.endpoints == (EndpointSpec(1, 9, "h:1", True),)
    version, routes = table_from_wire(
        serving_pb2.RouteTable(version=4, routes=[serving_pb2.Route(name="m", service_id=1)] * 2)
    )
    assert version == 4 and len(routes) == 1


@pytest.mark.parametrize(
    ("allowed", "status", "expected"),
    [(True, 200, 200), (True, 0, 200), (False, 0, 403), (False, 200, 403), (False, 404, 404)],
)
def test_access_answers_from_the_wire(allowed: bool, status: int, expected: int) -> None:
    v = verdict_from_wire(
        serving_pb2.CheckAccessResponse(allowed=allowed, http_status=status, cache_s=5)
    )
    assert v.status == expected and v.cache_s == 5


def test_repeated_trouble_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    trouble = RateLimitedLog(clock)
    for _ in range(5):
        trouble.warning("x", "down")
    clock.now += LOG_EVERY_S
    trouble.warning("x", "down")
    assert [r.getMessage() for r in caplog.records] == ["down", "down (4 more like it since)"]
    assert trouble.recovered("x") and not trouble.recovered("x")


# --- the listening socket -----------------------------------------------------------------


def test_the_connection_cap_leaves_room_for_upstream_connections_and_a_reserve() -> None:
    assert connection_cap(10_000, 65_536) == 10_000
    assert connection_cap(10_000, 1024) == (1024 - RESERVE_FDS) // 2
    assert connection_cap(10_000, 10) == 1
    soft = raise_nofile_limit()
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or soft == hard


def test_accept_errors_are_logged_once_a_minute_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        handler = AcceptErrors()
        flood = {"message": ACCEPT_ERROR, "exception": OSError(24, "Too many open files")}
        with caplog.at_level(logging.DEBUG):
            for _ in range(1000):
                handler(loop, flood)
            handler(loop, {"message": "something else"})
        records = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
        assert records[0] == (
            "WARNING",
            "cannot accept connections: [Errno 24] Too many open files",
            None,
        )
        assert len(records) == 2 and records[1][:2] == ("ERROR", "something else")
    finally:
        loop.close()
