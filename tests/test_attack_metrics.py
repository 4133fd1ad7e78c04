"""Attacks on the metrics endpoints of issue 14: the agent's --metrics-listen server
(agent/metrics.py) and the daemon's /metrics collector (schedulerd/daemon/web/metrics.py):
what they leak, and what an unauthenticated caller can make them spend."""

from __future__ import annotations

import socket
import threading
import time
import types
from pathlib import Path

from prometheus_client import generate_latest

from agent.gpus import FakeBackend
from agent.metrics import AgentMetrics, serve
from schedulerd.daemon.state import ClusterState
from schedulerd.daemon.web.metrics import ClusterCollector
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, PartRecord, Store

POLICY = """
version: 1
consumers:
  vision: {owned: 2, users: [alice]}
  nlp: {owned: 2, users: [bob]}
"""


def test_idle_connections_do_not_grow_the_agents_threads_without_bound() -> None:
    m = AgentMetrics("n1", FakeBackend(1, "n1"), [0])
    server = serve(m, "127.0.0.1", 0)
    socks: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(64):
            s = socket.create_connection(("127.0.0.1", server.server_port))
            s.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            socks.append(s)
        time.sleep(0.5)
        grown = threading.active_count() - before
        assert grown <= 16, f"{grown} threads for 64 idle connections"
    finally:
        for s in socks:
            s.close()
        server.shutdown()
        server.server_close()


def _state(tmp_path: Path, waiting: int) -> tuple[ClusterState, Store]:
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, time.time)
    policy = load_policy(POLICY, "t")
    state.set_policy(policy, store.save_policy(POLICY, "t", time.time()))
    state.nodes["n1"] = NodeRecord(
        "n1", "default", [GpuRecord(i, f"GPU-{i}", "fake", 0) for i in range(2)], last_seen=1e18
    )
    state.connected.add("n1")
    for i in range(1, waiting + 1):
        running = i == 1
        job = JobRecord(
            id=i,
            consumer="/vision" if i % 2 else "/nlp",
            user="alice-secret-user" if i % 2 else "bob-secret-user",
            name=f"job-name-secret-{i}",
            command=["python", f"cmd-secret-{i}.py", "--password=hunter2"],
            env={"API_KEY": "env-secret"},
            working_dir="/home/wd-secret",
            gpus_min=1,
            gpus_max=1,
            priority=0,
            state=JobState.RUNNING if running else JobState.PENDING,
            submit_time=time.time(),
            reason="" if running else "waiting for 1 GPU: no GPU is free (reason-secret)",
        )
        if running:
            job.parts.append(PartRecord(i, 0, "n1", 0, [0], ["GPU-0"]))
        state.jobs[i] = job
    state.usage[("/vision", "alice-secret-user")] = 10.0  # type: ignore[index]
    return state, store


def _scrape(state: ClusterState) -> bytes:
    daemon = types.SimpleNamespace(
        state=state, loop=types.SimpleNamespace(last_turn=None), experiments=None, services=None
    )
    registry = state.metrics.registry
    registry.register(ClusterCollector(daemon))  # type: ignore[arg-type]
    for job in state.jobs.values():
        state.metrics.submitted_jobs([job])
    return generate_latest(registry)


def test_metrics_name_no_user_job_command_env_or_reason(tmp_path: Path) -> None:
    state, store = _state(tmp_path, 50)
    try:
        text = _scrape(state).decode()
        for secret in ("secret", "hunter2", "alice", "bob", "API_KEY", 'job_id="', "/home/"):
            assert secret not in text, secret
        assert 'schedulerd_consumer_jobs_waiting{consumer="/vision",reason="capacity"} 24.0' in text
    finally:
        store.close()


def test_a_scrape_does_not_block_the_loop_in_proportion_to_the_queue(tmp_path: Path) -> None:
    state, store = _state(tmp_path, 100_000)
    try:
        _scrape(state)  # the first scrape counts once: no cycle has yet
        # After that a scrape reads the counts a cycle keeps: no pass over the queue.
        passes: list[int] = []
        counted = state.metrics.count_waiting

        def count_waiting(jobs):  # type: ignore[no-untyped-def]
            passes.append(1)
            return counted(jobs)

        state.metrics.count_waiting = count_waiting  # type: ignore[method-assign]
        daemon_scrape = generate_latest(state.metrics.registry).decode()
        assert passes == []
        assert 'schedulerd_consumer_jobs_waiting{consumer="/vision"' in daemon_scrape
    finally:
        store.close()


def test_a_loop_whose_every_cycle_fails_is_not_ready(tmp_path: Path) -> None:
    import asyncio

    from schedulerd.daemon.links import AgentLinks
    from schedulerd.daemon.loop import SchedulingLoop
    from schedulerd.daemon.web.app import not_ready

    state, store = _state(tmp_path, 3)

    async def go() -> list[str]:
        loop = SchedulingLoop(state, AgentLinks(), tick_s=0.02)

        async def broken() -> None:
            raise RuntimeError("disk full")

        loop.cycle = broken  # type: ignore[method-assign]
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(0.5)  # STALL_TICKS ticks, many times over
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        daemon = types.SimpleNamespace(store=store, state=state, loop=loop)
        import schedulerd.daemon.web.app as app

        app.STALL_MIN_S, saved = 0.2, app.STALL_MIN_S
        try:
            return not_ready(daemon)  # type: ignore[arg-type]
        finally:
            app.STALL_MIN_S = saved

    try:
        problems = asyncio.run(go())
        assert state.metrics.cycle_failures._value.get() > 5  # every cycle failed
        assert any(p.startswith("loop:") for p in problems), problems
    finally:
        store.close()


def test_the_alert_rules_cover_failing_scheduling_cycles() -> None:
    import yaml

    rules = yaml.safe_load(
        (Path(__file__).parent.parent / "deploy/prometheus/alerts.yml").read_text()
    )
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert any("schedulerd_scheduler_cycle_failures_total" in e for e in exprs), exprs


def test_service_series_are_bounded_whatever_users_create(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from schedulerd.serve.spec import ServiceSpec

    state, store = _state(tmp_path, 0)
    n = 5000
    services = {
        i: types.SimpleNamespace(
            spec=ServiceSpec(f"mallory-{i}", "/vision", "alice", ("true",)), desired=0
        )
        for i in range(n)
    }
    controller = types.SimpleNamespace(
        services=services, replicas={}, loads={}, is_ready=lambda svc, r: False
    )
    daemon = types.SimpleNamespace(
        state=state,
        loop=types.SimpleNamespace(last_turn=None),
        experiments=None,
        services=controller,
    )
    try:
        state.metrics.registry.register(ClusterCollector(daemon))  # type: ignore[arg-type]
        text = generate_latest(state.metrics.registry).decode()
        names = {
            s.labels["service"]
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if "service" in s.labels
        }
        assert len(names) <= 1000, f"{len(names)} service label values from one user"
    finally:
        store.close()
