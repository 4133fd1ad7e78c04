"""The daemon's metrics pieces in-process: /readyz's judgement, the event counters fed by
committed changes, and the below-entitlement clock the alert rule reads."""

from __future__ import annotations

import sqlite3
import time
import types
from typing import Any

from prometheus_client import generate_latest

from schedulerd import core
from schedulerd.core import ConsumerPath
from schedulerd.daemon.metrics import DaemonMetrics
from schedulerd.daemon.web.app import not_ready
from schedulerd.store import EventRecord, JobRecord, JobState


def _daemon(
    policy: object,
    last_turn: float | None,
    conn: sqlite3.Connection,
    last_good_turn: float | None = -1.0,
) -> Any:
    good = last_turn if last_good_turn == -1.0 else last_good_turn
    return types.SimpleNamespace(
        store=types.SimpleNamespace(db=types.SimpleNamespace(conn=conn)),
        state=types.SimpleNamespace(policy=policy),
        loop=types.SimpleNamespace(last_turn=last_turn, last_good_turn=good, tick_s=1.0),
    )


def test_readyz_judgement() -> None:
    conn = sqlite3.connect(":memory:")
    assert not_ready(_daemon(object(), time.monotonic(), conn)) == []
    problems = not_ready(_daemon(None, None, conn))
    assert [p.split(":")[0] for p in problems] == ["policy", "loop"]
    stalled = not_ready(_daemon(object(), time.monotonic() - 60, conn))
    assert len(stalled) == 1 and "no successful scheduling cycle for" in stalled[0]
    # Turning is not enough: the cycles must not fail.
    failing = not_ready(_daemon(object(), time.monotonic(), conn, last_good_turn=None))
    assert len(failing) == 1 and "every scheduling cycle so far failed" in failing[0]
    failing = not_ready(_daemon(object(), time.monotonic(), conn, time.monotonic() - 60))
    assert len(failing) == 1 and "no successful scheduling cycle for" in failing[0]
    conn.close()
    assert not_ready(_daemon(object(), time.monotonic(), conn))[0].startswith("store:")


def _job(job_id: int, consumer: str, state: JobState, attempt: int = 0) -> JobRecord:
    job = JobRecord(
        id=job_id,
        name="",
        consumer=consumer,
        user="u",
        command=["true"],
        env={},
        working_dir="",
        gpus_min=1,
        gpus_max=1,
        priority=0,
        state=state,
        submit_time=10.0,
    )
    job.attempt, job.start_time = attempt, 25.0
    return job


def _value(m: DaemonMetrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_committed_events_count_starts_ends_and_requeues() -> None:
    m = DaemonMetrics()
    jobs = {
        1: _job(1, "/a", JobState.RUNNING),
        2: _job(2, "/a", JobState.SUCCEEDED),
        3: _job(3, "/b", JobState.PREEMPTED, attempt=1),
        4: _job(4, "/b", JobState.RUNNING, attempt=1),
    }
    m.committed(
        [
            EventRecord(0, 1, "started", "started on 1 GPU: ..., within its entitlement"),
            EventRecord(0, 2, "succeeded", "exited with 0"),
            EventRecord(0, 3, "preempted", "..."),
            EventRecord(0, 4, "started", "started on 1 GPU: ..., borrowing idle GPUs"),
            EventRecord(0, 9, "started", "a job not in this change: ignored"),
        ],
        jobs,
    )
    assert _value(m, "schedulerd_jobs_started_total", consumer="/a", reason="entitled") == 1
    assert _value(m, "schedulerd_jobs_started_total", consumer="/b", reason="borrowing") == 1
    assert _value(m, "schedulerd_jobs_ended_total", consumer="/a", state="SUCCEEDED") == 1
    assert _value(m, "schedulerd_jobs_requeued_total", consumer="/b", cause="preempted") == 1
    # Submit-to-start: first starts only (job 4 is a restart).
    assert _value(m, "schedulerd_job_submit_to_start_seconds_count", consumer="/a") == 1
    assert _value(m, "schedulerd_job_submit_to_start_seconds_sum", consumer="/a") == 15.0
    assert _value(m, "schedulerd_job_submit_to_start_seconds_count", consumer="/b") == 0


def _state(path: str, entitlement: float, allocation: int, pending: int) -> core.ConsumerState:
    return core.ConsumerState(ConsumerPath(path), 8, entitlement, 0.0, allocation, pending, 0)


def test_below_entitlement_clock() -> None:
    m = DaemonMetrics()
    a = ConsumerPath("/a")
    m.consumers_decided({a: _state("/a", 2.9999999999, 2, 3)}, 100.0)  # floor is 3
    m.consumers_decided({a: _state("/a", 3.0, 2, 3)}, 130.0)
    assert m.below_since == {"/a": 100.0}
    m.consumers_decided({a: _state("/a", 2.5, 2, 3)}, 140.0)  # owed floor(2.5) = 2: fine
    assert m.below_since == {}
    m.consumers_decided({a: _state("/a", 3.0, 2, 0)}, 150.0)  # nothing waits: fine
    assert m.below_since == {}
    m.consumers_decided({a: _state("/a", 3.0, 0, 1)}, 160.0)
    m.consumers_decided({}, 170.0)  # gone from the policy
    assert m.below_since == {}


def test_no_job_ids_or_users_in_labels() -> None:
    m = DaemonMetrics()
    m.submitted_jobs([_job(123456, "/a", JobState.PENDING)])
    m.api_call("Scheduler.SubmitJob", "OK", 0.01)
    text = generate_latest(m.registry).decode()
    assert "123456" not in text and 'user="' not in text


def test_a_non_loopback_http_listener_needs_insecure_and_warns(caplog: Any) -> None:
    import asyncio
    import logging

    import pytest
    from aiohttp import web

    from schedulerd.daemon.web.server import HttpServer

    with pytest.raises(SystemExit, match="without TLS"):
        HttpServer(web.Application(), "0.0.0.0:0")
    HttpServer(web.Application(), "127.0.0.1:0")  # loopback: no question
    HttpServer(web.Application(), "localhost:0")

    async def go() -> int:
        server = HttpServer(web.Application(), "0.0.0.0:0", insecure=True)
        try:
            return await server.start()
        finally:
            await server.stop()

    with caplog.at_level(logging.INFO, logger="schedulerd.web"):
        port = asyncio.run(go())
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"0.0.0.0:{port} WITHOUT TLS" in warned[0].getMessage()
    assert "/ui/" in warned[0].getMessage()
