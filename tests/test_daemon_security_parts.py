"""Pieces of the daemon's security, each alone: only the node asked answers a log read;
the audit counts a flood of refusals instead of recording each; the store is its
owner's only."""

from __future__ import annotations

import asyncio
import stat
import threading
from pathlib import Path

import pytest

from schedulerd.auth.authorize import Action, Target
from schedulerd.auth.identity import ANONYMOUS
from schedulerd.daemon.audit import REFUSALS_PER_WINDOW, WINDOW_S, AuditTrail
from schedulerd.daemon.links import AgentLinks
from schedulerd.store import Store
from schedulerd.store.group import GroupWriter
from schedulerd.store.security import SecurityStore


def test_only_the_node_asked_answers_a_log_read() -> None:
    async def scenario() -> tuple[bytes, bool, int]:
        links = AgentLinks()
        queue = links.attach("n1")
        links.attach("n2")
        read = asyncio.create_task(links.read_log("n1", 7, 0, 100, timeout_s=5))
        request = await queue.get()
        assert request is not None
        rid = request.request_id  # type: ignore[union-attr]
        links.log_answer("n2", rid, b"INJECTED", True, 10**6)  # another node: ignored
        links.log_answer("n1", rid, b"real", True, 4)
        return await read

    assert asyncio.run(scenario()) == (b"real", True, 4)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_refusals_is_counted_not_recorded_one_by_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    clock = Clock()
    trail = AuditTrail(SecurityStore(store), clock)
    for _ in range(REFUSALS_PER_WINDOW + 500):
        trail.refused(ANONYMOUS, Action.LIST_JOBS, Target(), "UNAUTHENTICATED", "bad token")
    clock.now += WINDOW_S
    trail.refused(ANONYMOUS, Action.LIST_JOBS, Target(), "UNAUTHENTICATED", "bad token")
    trail.flush()
    records = SecurityStore(store).list_audit(10_000)
    one_by_one = [r for r in records if r.action == Action.LIST_JOBS.value]
    summaries = [r for r in records if r.result == "suppressed"]
    assert len(one_by_one) == REFUSALS_PER_WINDOW + 1
    assert len(summaries) == 1 and summaries[0].detail.startswith("500 more refusals")


def test_the_store_is_its_owners_only(tmp_path: Path) -> None:
    path = tmp_path / "var" / "s.db"
    Store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)  # an older store, made before this rule: tightened at open
    Store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_one_noisy_anonymous_client_does_not_hide_another(tmp_path: Path) -> None:
    """Callers without a credential are counted apart by their address."""
    store = Store(tmp_path / "s.db")
    trail = AuditTrail(SecurityStore(store), Clock())
    trail.set_peer("ipv4:10.0.0.9:40000")
    for _ in range(REFUSALS_PER_WINDOW + 50):
        trail.refused(ANONYMOUS, Action.LIST_JOBS, Target(), "UNAUTHENTICATED", "noise")
    trail.set_peer("ipv4:10.0.0.7:40001")
    trail.refused(ANONYMOUS, Action.GET_JOB, Target(), "UNAUTHENTICATED", "the quiet one")
    trail.flush()
    records = SecurityStore(store).list_audit(10_000)
    assert any(r.detail == "the quiet one" for r in records)
    assert sum(1 for r in records if r.detail == "noise") == REFUSALS_PER_WINDOW


def test_in_the_daemon_audit_batches_go_through_the_group_writer(tmp_path: Path) -> None:
    """On the event loop a batch is handed to the writer's thread (never committed on the
    loop); a batch whose commit fails is kept and written by the next flush; a reader
    waits for what was recorded just now."""
    store = Store(tmp_path / "s.db")
    writer = GroupWriter(store)
    failpoint = tmp_path / "fail"
    writer.fail_when = failpoint
    trail = AuditTrail(SecurityStore(store), Clock(), writer)
    committing: list[str] = []
    real_add = SecurityStore.add_audit

    def add(self: SecurityStore, entries: list[object]) -> None:
        committing.append(threading.current_thread().name)
        real_add(self, entries)  # type: ignore[arg-type]

    async def scenario() -> list[str]:
        failpoint.touch()
        trail.refused(ANONYMOUS, Action.LIST_JOBS, Target(), "UNAUTHENTICATED", "first")
        await trail.written()  # its batch failed: kept, not lost
        assert SecurityStore(store).list_audit(100) == []
        failpoint.unlink()
        trail.refused(ANONYMOUS, Action.GET_JOB, Target(), "UNAUTHENTICATED", "second")
        await trail.written()
        return [r.detail for r in SecurityStore(store).list_audit(100)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SecurityStore, "add_audit", add)
        details = asyncio.run(scenario())
    writer.close()
    assert sorted(details) == ["first", "second"]
    assert committing and threading.main_thread().name not in committing
