"""Where the loop runs decide(): on the event loop when the last cycle was quick under
the same policy and few jobs changed since (the hand-over to a thread cost more than
such a cycle), else in a worker thread, so that a long cycle lets the handlers in.
Plans are the same either way: only the thread differs."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from schedulerd import core
from schedulerd.daemon.links import AgentLinks
from schedulerd.daemon.loop import INLINE_CHANGES, INLINE_DECIDE_S, SchedulingLoop
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import JobRecord, JobState, Store

POLICY = "version: 1\nusers: '*'\nconsumers:\n  a: {share: 1}\n"


def _job() -> JobRecord:
    return JobRecord(0, "/a", "u", "j", ["x"], {}, "", 1, 1, 0, JobState.PENDING, 0.0)


def _set_policy(state: ClusterState, store: Store, text: str) -> None:
    state.set_policy(load_policy(text, "p.yaml"), store.save_policy(text, "p.yaml", 0.0))


def test_quick_cycles_run_on_the_loop_and_the_others_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, time.time)
    _set_policy(state, store, POLICY)
    where: list[str] = []
    slow = threading.Event()
    real = core.decide

    def decide(*args, **kwargs):  # type: ignore[no-untyped-def]
        where.append("loop" if threading.current_thread() is threading.main_thread() else "thread")
        if slow.is_set():
            time.sleep(INLINE_DECIDE_S * 3)
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "decide", decide)

    async def scenario() -> None:
        loop = SchedulingLoop(state, AgentLinks())
        await loop.cycle()  # the first: nothing known of its cost
        state.submit(_job())
        await loop.cycle()  # quick, one change
        state.submit_many([_job() for _ in range(INLINE_CHANGES + 1)])
        await loop.cycle()  # many changes
        state.submit(_job())
        await loop.cycle()
        _set_policy(state, store, POLICY + "  b: {share: 1}\n")
        await loop.cycle()  # a new policy: every queue sorted again
        slow.set()
        state.submit(_job())
        await loop.cycle()  # quick so far: on the loop, but it takes long ...
        slow.clear()
        state.submit(_job())
        await loop.cycle()  # ... so the next goes to the thread

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    assert where == ["thread", "loop", "thread", "loop", "thread", "loop", "thread"]
