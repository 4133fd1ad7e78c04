"""A daemon's parts for the dashboard's handler tests (tests/test_dashboard_authz.py,
tests/test_attack_dashboard_http.py): a real ClusterState, store, token book and gate,
two teams' jobs, and aiohttp's test client on the dashboard's routes. No daemon process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from schedulerd.auth.identity import Scope
from schedulerd.core import ConsumerPath, ConsumerState
from schedulerd.daemon.audit import AuditTrail
from schedulerd.daemon.gate import Gate
from schedulerd.daemon.links import AgentLinks
from schedulerd.daemon.state import ClusterState
from schedulerd.daemon.tokenbook import TokenBook
from schedulerd.dashboard import add_dashboard_routes
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, PartRecord, Store
from schedulerd.store.security import SecurityStore

POLICY = """
version: 1
users: "*"
consumers:
  vision:
    owned: 2
    users: [alice, ann]
    admins: [vic]
  nlp:
    owned: 2
    users: [bob]
"""


@dataclass
class FakeDaemon:
    state: ClusterState
    gate: Gate
    links: AgentLinks
    experiments: Any = None
    services: Any = None


@dataclass
class World:
    daemon: FakeDaemon
    tokens: TokenBook
    secrets: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)

    def token(self, user: str, scopes: set[Scope] | None = None, node: bool = False) -> str:
        frozen = None if scopes is None else frozenset(scopes)
        _, secret = self.tokens.mint(user, node, frozen, 3600, "test", time.time())
        return secret


def job_record(
    job_id: int, consumer: str, user: str, state: JobState, gpus: list[int], reason: str = "waits"
) -> JobRecord:
    """A job whose name, command, env and working dir are secrets others must not see."""
    job = JobRecord(
        id=job_id,
        consumer=consumer,
        user=user,
        name=f"secret-name-{job_id}",
        command=["python", f"secret-{job_id}.py"],
        env={"SECRET": str(job_id)},
        working_dir=f"/home/{user}",
        gpus_min=len(gpus) or 1,
        gpus_max=len(gpus) or 1,
        priority=0,
        state=state,
        submit_time=time.time(),
        reason=reason if state is JobState.PENDING else "",
    )
    if gpus:
        job.parts.append(PartRecord(job_id, 0, "n1", 0, gpus, [f"GPU-{i}" for i in gpus]))
    return job


@contextlib.contextmanager
def world_of(tmp_path: Path, jobs: Mapping[str, JobRecord]) -> Iterator[World]:
    """The world with node n1 (4 fake GPUs, up), `jobs` queued or running, and cluster
    admin "ops"."""
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, time.time)
    policy = load_policy(POLICY, "test")
    record = store.save_policy(POLICY, "test", time.time())
    state.set_policy(policy, record)
    security = SecurityStore(store)
    tokens = TokenBook(tmp_path / "s.db.key", security)
    gate = Gate(tokens, AuditTrail(security), {"ops"}, lambda: policy, lambda: ())
    state.nodes["n1"] = NodeRecord(
        "n1", "default", [GpuRecord(i, f"GPU-{i}", "fake", 0) for i in range(4)], last_seen=1e18
    )
    state.connected.add("n1")
    for job in jobs.values():
        store.insert_job(job)
        state.jobs[job.id] = job
    state.consumer_states = {
        ConsumerPath(p): ConsumerState(ConsumerPath(p), 2, 2.0, 0.0, a, 1, 1)
        for p, a in (("/", 3), ("/vision", 2), ("/nlp", 1))
    }
    try:
        yield World(
            FakeDaemon(state, gate, AgentLinks()), tokens, {}, {k: j.id for k, j in jobs.items()}
        )
    finally:
        store.close()


def run(world: World, body: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def go() -> None:
        app = web.Application(client_max_size=4096)  # as the daemon's (daemon/web/app.py)
        add_dashboard_routes(app, world.daemon)
        async with TestClient(TestServer(app)) as client:
            await body(client)

    asyncio.run(go())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
