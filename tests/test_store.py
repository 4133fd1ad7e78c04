"""The SQLite store: durable, ordered, and rebuilt whole after a crash."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from schedulerd.store import EventRecord, JobRecord, JobState, PartPhase, PartRecord, Store
from schedulerd.store.store import LIST_CAP


def _job(consumer: str = "/a") -> JobRecord:
    return JobRecord(
        0, consumer, "u", "n", ["true"], {"K": "V"}, "", 1, 1, 0, JobState.PENDING, 1.0
    )


def test_wal_and_full_sync_and_migrations(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    conn = store.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    store.close()
    Store(tmp_path / "s.db").close()  # reopening runs no migration twice


def test_jobs_round_trip_with_parts_and_history(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    job = store.insert_job(_job())
    job.state = JobState.RUNNING
    job.parts = [PartRecord(job.id, 0, "n1", 0, [0, 1], ["u0", "u1"], PartPhase.RUNNING, pid=7)]
    store.save_job(job, EventRecord(2.0, job.id, "started", "why"))
    again = Store(tmp_path / "s.db").load_jobs()
    assert again == [job]
    assert [e.kind for e in store.events(job.id)] == ["submitted", "started"]


def test_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    first = store.insert_job(_job())
    try:
        with store.transaction():
            store.insert_job(_job())
            raise RuntimeError("crash in the middle")
    except RuntimeError:
        pass
    assert [j.id for j in store.load_jobs()] == [first.id]


def test_acknowledged_inserts_survive_sigkill(tmp_path: Path) -> None:
    """A child process inserts jobs, prints each id once committed, and is
    SIGKILLed mid-stream: every id it printed is in the file."""
    db = tmp_path / "s.db"
    code = (
        "import sys\n"
        "from schedulerd.store import Store, JobRecord, JobState\n"
        f"s = Store({str(db)!r})\n"
        "while True:\n"
        "    j = s.insert_job(JobRecord(0, '/a', 'u', 'n', ['t'], {}, '', 1, 1, 0,"
        " JobState.PENDING, 1.0))\n"
        "    print(j.id, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = [int(proc.stdout.readline()) for _ in range(200)]
    proc.kill()
    proc.wait()
    stored = {row[0] for row in sqlite3.connect(db).execute("SELECT id FROM jobs")}
    assert set(acked) <= stored
    ids = [j.id for j in Store(db).load_jobs()]
    assert ids == sorted(ids)  # queue order is id order


def test_list_jobs_filters_by_subtree_state_and_user(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    for consumer in ["/a", "/a/x", "/ab", "/b"]:
        store.insert_job(_job(consumer))
    assert [j.consumer for j in store.list_jobs("/a")] == ["/a/x", "/a"]  # newest first
    assert [j.consumer for j in store.list_jobs("/a/")] == ["/a/x", "/a"]
    assert store.list_jobs(states=["RUNNING"]) == []
    assert len(store.list_jobs(user="u", limit=2)) == 2
    assert store.list_jobs(user="v") == []


def test_list_jobs_pages_newest_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    ids = [store.insert_job(_job()).id for _ in range(7)]
    pages, before = [], 0
    while True:
        page = store.list_jobs(limit=3, before_id=before)
        pages.append([j.id for j in page])
        if len(page) < 3:
            break
        before = page[-1].id
    assert pages == [ids[6:3:-1], ids[3:0:-1], ids[:1]]
    assert [j.id for j in store.list_jobs(before_id=ids[2])] == [ids[1], ids[0]]


def test_list_jobs_is_capped_whatever_the_limit(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    with store.transaction():
        for _ in range(LIST_CAP + 5):
            store.insert_job(_job())
    assert len(store.list_jobs()) == LIST_CAP
    assert len(store.list_jobs(limit=2**32 - 1)) == LIST_CAP
    assert len(store.list_jobs(limit=-1)) == LIST_CAP
    newest = store.list_jobs(limit=1)[0].id
    assert newest == LIST_CAP + 5


def test_list_jobs_consumer_filter_is_literal(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    for consumer in ["/a_b/x", "/aXb/y", "/a%/z", "/a%b/w", "/a\\b/v", "/a\\/u"]:
        store.insert_job(_job(consumer))
    assert [j.consumer for j in store.list_jobs("/a_b")] == ["/a_b/x"]
    assert [j.consumer for j in store.list_jobs("/a%")] == ["/a%/z"]
    assert [j.consumer for j in store.list_jobs("/a\\b")] == ["/a\\b/v"]
    assert [j.consumer for j in store.list_jobs("/a\\")] == ["/a\\/u"]
    assert store.list_jobs("/%") == [] and store.list_jobs("/_") == []


def test_a_jobs_preemptions_are_kept(tmp_path: Path) -> None:
    """Bounded disruption reads how often a job was preempted: a restart must not forget."""
    store = Store(tmp_path / "s.db")
    job = store.insert_job(_job())
    job.preemptions = 2
    store.save_job(job)
    (again,) = Store(tmp_path / "s.db").load_jobs()
    assert again.preemptions == 2


def test_migration_11_keys_parts_by_rank_and_keeps_every_stored_part(tmp_path: Path) -> None:
    """A store of schema 10 (parts keyed by job, attempt and node) opened by this version:
    its parts are kept as they were, and afterwards one node may hold two parts of one
    attempt (a part lost with the node and the one grown there when it came back)."""
    from schedulerd.store.schema import MIGRATIONS

    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:10]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 10")
    conn.execute(
        "INSERT INTO jobs (id, consumer, user, name, command, env, working_dir, gpus_min, gpus_max,"
        " priority, state, submit_time) VALUES (1, '/a', 'u', 'e', '[\"t\"]', '{}', '', 1, 3,"
        " 0, 'RUNNING', 0.0)"
    )
    conn.execute(
        "INSERT INTO job_parts (job_id, attempt, node, node_rank, gpu_indices, gpu_uuids,"
        " phase, workers) VALUES (1, 0, 'n2', 1, '[0]', '[\"n2-0\"]', 'exited', '{\"0\": 1}')"
    )
    conn.commit()
    conn.close()
    store = Store(path)
    job = store.load_job(1)
    assert job is not None
    lost = PartRecord(1, 0, "n2", 1, [0], ["n2-0"], PartPhase.EXITED, workers={0: 1})
    assert job.parts == [lost]
    grown = PartRecord(1, 0, "n2", 2, [1], ["n2-1"], PartPhase.RUNNING, pid=9, workers={1: 2})
    job.parts = [lost, grown]
    store.save_job(job)
    store.close()
    again = Store(path).load_job(1)
    assert again is not None and again.parts == [lost, grown]
