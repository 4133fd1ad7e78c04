"""A state change writes only what changed (issue 15): the rows of a job's parts that a
report did not touch are not rewritten. Counted by SQLite itself (temporary triggers
on the daemon's connection), not by timing."""

from __future__ import annotations

from pathlib import Path

from schedulerd import core
from schedulerd.core import GpuSlot, JobId, NodeName
from schedulerd.daemon import nodes
from schedulerd.daemon.nodes import PartReport
from schedulerd.daemon.plans import apply_plan
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, Store

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n"
NODES = ("n1", "n2", "n3", "n4")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _count_writes(store: Store) -> None:
    """Every insert or update of a part row, and of a job row, lands in temp.writes."""
    conn = store.db.conn
    conn.execute("CREATE TEMP TABLE writes (tbl TEXT, what TEXT)")
    for op in ("INSERT", "UPDATE"):
        conn.execute(
            f"CREATE TEMP TRIGGER parts_{op} AFTER {op} ON main.job_parts BEGIN "
            f"INSERT INTO writes VALUES ('job_parts', new.node); END"
        )
        conn.execute(
            f"CREATE TEMP TRIGGER jobs_{op} AFTER {op} ON main.jobs BEGIN "
            f"INSERT INTO writes VALUES ('jobs', new.id); END"
        )


def _writes(store: Store) -> list[tuple[str, str]]:
    rows = store.db.conn.execute("SELECT tbl, what FROM writes ORDER BY rowid").fetchall()
    store.db.conn.execute("DELETE FROM writes")
    return [(str(t), str(w)) for t, w in rows]


def test_a_report_on_one_part_writes_that_part_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, Clock())
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    for name in NODES:
        nodes.register(state, NodeRecord(name, "default", [GpuRecord(0, name, "f", 0)]), [])
    job = JobRecord(0, "/a", "u", "wide", ["x"], {}, "", 4, 4, 0, JobState.PENDING, 0.0)
    job = state.submit(job)
    slots = tuple(GpuSlot(NodeName(n), 0) for n in NODES)
    apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
    _count_writes(store)

    # One part runs: its row only; not the three others, nor the job's (RUNNING already).
    nodes.report(state, "n2", PartReport(job.id, 0, "running", pid=7, gpu_indices=(0,)))
    assert _writes(store) == [("job_parts", "n2")]

    # The same report again changes nothing: nothing is written.
    nodes.report(state, "n2", PartReport(job.id, 0, "running", pid=7, gpu_indices=(0,)))
    assert _writes(store) == []

    # What is stored is what memory holds, part by part.
    live = state.jobs[job.id]
    stored = store.load_job(job.id)
    assert stored is not None
    assert stored.parts == live.parts
    assert [p.pid for p in stored.parts] == [None, 7, None, None]

    # A part that fails ends the job's attempt: the job's row is written, and the parts
    # that change (the failed one; the others are asked to stop), each once.
    nodes.report(state, "n3", PartReport(job.id, 0, "exited", 1))
    writes = _writes(store)
    assert writes.count(("jobs", str(job.id))) == 1
    assert writes.count(("job_parts", "n3")) == 1
    stored = store.load_job(job.id)
    live_now = state.jobs.get(job.id)
    assert stored is not None and live_now is not None
    assert (stored.reason, stored.parts) == (live_now.reason, live_now.parts)
