"""The dashboard's JSON handlers and login (schedulerd/dashboard): who sees what, through
aiohttp's test client against a real ClusterState, store, token book and gate (no
daemon process). The rule: a cluster admin sees all; a user sees their consumers and
their jobs, others' jobs in them redacted as the API redacts them; no credential, a bad
one or one without the read scope sees nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from dashboard_world import World, bearer, job_record, run, world_of

from schedulerd.auth.identity import Scope
from schedulerd.core import ConsumerPath, ConsumerState
from schedulerd.daemon.state import ClusterState
from schedulerd.dashboard.history import History
from schedulerd.dashboard.routes import COOKIE, DASHBOARD, safe_next
from schedulerd.dashboard.sessions import SessionBook
from schedulerd.store import JobState

WAITS = "waits: /vision is at its limit"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with world_of(
        tmp_path,
        {
            "alice_running": job_record(1, "/vision", "alice", JobState.RUNNING, [0, 1], WAITS),
            "ann_waiting": job_record(2, "/vision", "ann", JobState.PENDING, [], WAITS),
            "bob_running": job_record(3, "/nlp", "bob", JobState.RUNNING, [2], WAITS),
            "bob_waiting": job_record(4, "/nlp", "bob", JobState.PENDING, [], WAITS),
        },
    ) as w:
        yield w


API = (
    "/ui/api/me",
    "/ui/api/overview",
    "/ui/api/history",
    "/ui/api/nodes",
    "/ui/api/jobs/1",
    "/ui/api/jobs/1/log",
    "/ui/api/experiments",
    "/ui/api/experiments/1",
    "/ui/api/services",
)


def test_no_or_bad_credentials_see_nothing(world: World) -> None:
    node = world.token("n1", node=True)
    submit_only = world.token("alice", {Scope.SUBMIT})

    async def body(client: TestClient[Any, Any]) -> None:
        for path in API:
            for headers in (
                {},
                bearer("not-a-token"),
                bearer(node),
                bearer(submit_only),
                {"Authorization": "Basic abc"},
                {"Cookie": f"{COOKIE}=made-up"},
            ):
                r = await client.get(path, headers=headers)
                assert r.status == 401, (path, headers, r.status)
                assert "secret" not in await r.text()
        for page in ("/ui/", "/ui/nodes", "/ui/jobs/1", "/ui/experiments", "/ui/services"):
            r = await client.get(page, allow_redirects=False)
            assert r.status == 303
            assert r.headers["Location"].startswith("/ui/login?next=")

    run(world, body)


def test_admin_sees_everything_in_full(world: World) -> None:
    ops = world.token("ops", {Scope.READ})

    async def body(client: TestClient[Any, Any]) -> None:
        data = await (await client.get("/ui/api/overview", headers=bearer(ops))).json()
        assert data["me"] == {"user": "ops", "admin": True, "scopes": ["read"]}
        assert [c["path"] for c in data["consumers"]] == ["/", "/vision", "/nlp"]
        assert {j["id"] for j in data["waiting"]} == {2, 4}
        assert {j["id"] for j in data["running"]} == {1, 3}
        assert all(j["spec"]["command"] for j in data["waiting"] + data["running"])
        ann = next(j for j in data["waiting"] if j["id"] == 2)
        assert ann["reason"] == "waits: /vision is at its limit"
        nodes = await (await client.get("/ui/api/nodes", headers=bearer(ops))).json()
        held = {g["index"]: g.get("job_id") for g in nodes["nodes"][0]["gpus"]}
        assert held == {0: 1, 1: 1, 2: 3, 3: None}
        job = await (await client.get("/ui/api/jobs/3", headers=bearer(ops))).json()
        assert job["job"]["spec"]["command"] == ["python", "secret-3.py"]
        assert not job["job"]["redacted"]

    run(world, body)


def test_user_sees_their_consumers_only(world: World) -> None:
    alice = world.token("alice", {Scope.READ})

    async def body(client: TestClient[Any, Any]) -> None:
        data = await (await client.get("/ui/api/overview", headers=bearer(alice))).json()
        assert data["me"]["admin"] is False
        assert [c["path"] for c in data["consumers"]] == ["/", "/vision"]
        ids = {j["id"] for j in data["waiting"] + data["running"]}
        assert ids == {1, 2}  # not bob's /nlp jobs
        text = await (await client.get("/ui/api/overview", headers=bearer(alice))).text()
        assert "/nlp" not in text and "bob" not in text
        # A teammate's job: listed as the API lists it (no command, env, name from argv).
        ann = next(j for j in data["waiting"] if j["id"] == 2)
        assert ann["redacted"] and ann["spec"]["command"] == [] and ann["spec"]["env"] == {}
        own = next(j for j in data["running"] if j["id"] == 1)
        assert not own["redacted"] and own["spec"]["command"]
        # Another team's job: the same answer as no job at all.
        for path in ("/ui/api/jobs/3", "/ui/api/jobs/3/log", "/ui/api/jobs/999"):
            r = await client.get(path, headers=bearer(alice))
            assert r.status == 404, path
        # A teammate's job page: redacted, no history, no logs.
        page = await (await client.get("/ui/api/jobs/2", headers=bearer(alice))).json()
        assert page["job"]["redacted"] and page["job"]["history"] == []
        assert page["job"]["may_read_logs"] is False
        r = await client.get("/ui/api/jobs/2/log", headers=bearer(alice))
        assert r.status == 403
        # The GPU grid: bob's GPU is busy, without its job.
        nodes = await (await client.get("/ui/api/nodes", headers=bearer(alice))).json()
        gpus = {g["index"]: g for g in nodes["nodes"][0]["gpus"]}
        assert gpus[0]["job_id"] == 1
        assert gpus[2]["busy"] and "job_id" not in gpus[2] and "user" not in gpus[2]
        history = await (await client.get("/ui/api/history", headers=bearer(alice))).json()
        assert set(history["series"]) == {"/", "/vision"}

    run(world, body)


def test_consumer_admin_sees_their_subtree_in_full(world: World) -> None:
    vic = world.token("vic")

    async def body(client: TestClient[Any, Any]) -> None:
        data = await (await client.get("/ui/api/overview", headers=bearer(vic))).json()
        assert {j["id"] for j in data["waiting"] + data["running"]} == {1, 2}
        assert all(not j["redacted"] for j in data["waiting"] + data["running"])
        page = await (await client.get("/ui/api/jobs/2", headers=bearer(vic))).json()
        assert page["job"]["may_read_logs"] is True
        assert (await client.get("/ui/api/jobs/4", headers=bearer(vic))).status == 404

    run(world, body)


def test_login_sets_a_strict_http_only_cookie_and_checks_the_token_each_time(
    world: World,
) -> None:
    secret = world.token("alice", {Scope.READ})
    token_id = next(iter(world.tokens.records))

    async def body(client: TestClient[Any, Any]) -> None:
        r = await client.post(
            "/ui/login",
            data={"token": secret, "next": "/ui/nodes"},
            allow_redirects=False,
        )
        assert r.status == 303 and r.headers["Location"] == "/ui/nodes"
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
        assert secret not in cookie
        me = await client.get("/ui/api/me")  # the client keeps the cookie
        assert me.status == 200 and (await me.json())["user"] == "alice"
        assert (await client.get("/ui/", allow_redirects=False)).status == 200
        # Revoked: the next request is refused, the session closed.
        world.tokens.revoke(token_id, time.time())
        assert (await client.get("/ui/api/me")).status == 401
        assert len(client.server.app[DASHBOARD].sessions) == 0

    run(world, body)


def test_login_refusals(world: World) -> None:
    submit_only = world.token("alice", {Scope.SUBMIT})
    good = world.token("alice")

    async def body(client: TestClient[Any, Any]) -> None:
        for token, why in (("nope", "refused"), (submit_only, "scope"), ("", "refused")):
            r = await client.post("/ui/login", data={"token": token}, allow_redirects=False)
            assert r.status == 303
            assert r.headers["Location"].startswith(f"/ui/login?failed={why}")
            assert "Set-Cookie" not in r.headers
        # Another site's form: refused by its Origin.
        r = await client.post(
            "/ui/login",
            data={"token": good},
            headers={"Origin": "https://evil.example"},
            allow_redirects=False,
        )
        assert r.status == 403 and "Set-Cookie" not in r.headers
        # Too big a body.
        r = await client.post("/ui/login", data={"token": "x" * 10000}, allow_redirects=False)
        assert r.status == 413
        # Only GET elsewhere: the dashboard changes nothing.
        r = await client.post("/ui/api/overview", headers=bearer(good))
        assert r.status == 405

    run(world, body)


def test_pages_carry_a_strict_content_security_policy(world: World) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        r = await client.get("/ui/login")
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY"
        assert (await client.get("/ui/static/app.js")).status == 200
        assert (await client.get("/ui/static/../routes.py")).status == 404
        assert (await client.get("/ui/static/index.html")).status == 404

    run(world, body)


def test_next_after_login_stays_on_the_dashboard() -> None:
    assert safe_next("/ui/jobs/3") == "/ui/jobs/3"
    for bad in ("https://evil.example/", "//evil.example/ui/", "/ui//evil", "/metrics", ""):
        assert safe_next(bad) == "/ui/"


def test_sessions_are_bounded() -> None:
    now = [0.0]
    book = SessionBook(lambda: now[0], max_sessions=5, max_per_user=2, lifetime_s=10)
    a = [book.open("ta", "alice") for _ in range(3)]
    assert book.token(a[0]) is None and book.token(a[2]) == "ta"  # per user
    others = [book.open(f"t{i}", f"u{i}") for i in range(5)]
    assert len(book) == 5 and book.token(others[-1]) == "t4"
    now[0] = 11.0
    assert book.token(others[-1]) is None  # past its lifetime
    assert book.token("x" * 500) is None


def test_history_is_a_bounded_ring() -> None:
    h = History(every_s=1, keep=3, max_series=2)
    for t in range(5):
        h.sample(
            float(t),
            {
                ConsumerPath(p): ConsumerState(ConsumerPath(p), 0, 1.5 * t, 0.0, t, 0, 0)
                for p in ("/", "/a", "/a/b")
            },
        )
    series = h.series(["/a", "/a/b"])
    assert series["/a"] == [(2.0, 3.0, 2.0), (3.0, 4.5, 3.0), (4.0, 6.0, 4.0)]
    assert series["/a/b"] == []  # past max_series (the shallowest are kept)


@dataclass
class FakeServices:
    """What service_to_pb reads of the service controller."""

    state: ClusterState
    records: list[Any]
    loads: dict[int, Any]

    def listed(self, include_deleted: bool) -> list[Any]:
        return self.records

    def replicas_of(self, svc: Any) -> list[Any]:
        return []


@dataclass
class FakeExperiments:
    records: list[Any]

    def list(self) -> list[tuple[Any, list[Any]]]:
        return [(e, []) for e in self.records]

    def get(self, exp_id: int) -> tuple[Any, list[Any]] | None:
        return next(((e, []) for e in self.records if e.id == exp_id), None)


def test_experiments_and_services_as_the_api_shows_them(world: World, tmp_path: Path) -> None:
    import hpo_helpers

    from schedulerd.hpo.codec import spec_from_pb as experiment_spec
    from schedulerd.serve.spec import ServiceSpec
    from schedulerd.store.experiments import ExperimentRecord, ExperimentState
    from schedulerd.store.serving import ServiceRecord, ServiceState

    now = time.time()
    exps = [
        ExperimentRecord(
            i,
            replace(experiment_spec(hpo_helpers.spec(tmp_path, consumer)), user=user),
            ExperimentState.RUNNING,
            now,
        )
        for i, (consumer, user) in enumerate(
            (("/vision", "alice"), ("/vision", "ann"), ("/nlp", "bob")), start=1
        )
    ]
    world.daemon.experiments = FakeExperiments(exps)
    services = [
        ServiceRecord(
            i,
            ServiceSpec(f"svc{i}", consumer, user, ("python", f"secret-serve-{i}.py")),
            ServiceState.ACTIVE,
            now,
        )
        for i, (consumer, user) in enumerate(
            (("/vision", "alice"), ("/vision", "ann"), ("/nlp", "bob")), start=1
        )
    ]
    world.daemon.services = FakeServices(world.daemon.state, services, {})
    alice = world.token("alice", {Scope.READ})
    ops = world.token("ops")

    async def body(client: TestClient[Any, Any]) -> None:
        got = await (await client.get("/ui/api/experiments", headers=bearer(alice))).json()
        assert [e["id"] for e in got["experiments"]] == [1]  # as ListExperiments: in full
        assert (await client.get("/ui/api/experiments/1", headers=bearer(alice))).status == 200
        for other in (2, 3):
            r = await client.get(f"/ui/api/experiments/{other}", headers=bearer(alice))
            assert r.status == 404
        got = await (await client.get("/ui/api/experiments", headers=bearer(ops))).json()
        assert [e["id"] for e in got["experiments"]] == [1, 2, 3]
        got = await (await client.get("/ui/api/services", headers=bearer(alice))).json()
        by_name = {s["spec"]["name"]: s for s in got["services"]}
        assert set(by_name) == {"svc1", "svc2"}  # not /nlp's
        assert by_name["svc1"]["spec"]["command"] and not by_name["svc1"]["redacted"]
        assert by_name["svc2"]["redacted"] and by_name["svc2"]["spec"]["command"] == []

    run(world, body)
