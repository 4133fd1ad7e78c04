"""SQLite store (sqlite-utils, WAL, synchronous=FULL).

Every method that changes something is one transaction, committed before it
returns: when the daemon acknowledges a submission, the row is on disk, and a
SIGKILL at any moment leaves the last committed state (FIELD-NOTES: WAL + FULL
is ~4k single-row commits/s here; grouped writes go through `transaction()`).

Two connections may write: this one (the event loop's: reads, and the synchronous
writes), and the group writer's (`open_writer`, schedulerd/store/group.py: concurrent
submissions, reports and plans in one transaction, on its own thread). They share
one lock, taken for each transaction, so neither waits on SQLite's busy handler,
which sleeps in steps of milliseconds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import sqlite_utils

from schedulerd.store.records import (
    ARRAY_FIRST,
    EventRecord,
    FenceRecord,
    GpuRecord,
    JobRecord,
    JobState,
    NodeRecord,
    PartPhase,
    PartRecord,
    PolicyRecord,
)
from schedulerd.store.schema import MIGRATIONS

# The most jobs one list_jobs page holds, whatever the caller asks.
LIST_CAP = 1000


SIDE_FILES = ("-wal", "-shm", "-journal")


class StoreUnavailable(RuntimeError):
    """A write could not be committed (disk full, I/O error, locked): nothing changed.
    Servicers answer UNAVAILABLE; memory is left as it was (check, commit, apply)."""


# How long a write waits for SQLite's lock held by another connection: normally none
# waits (the shared lock orders this process's writers), but a reader of another
# process (schedctl, a backup) may hold it briefly for a checkpoint.
BUSY_TIMEOUT_MS = 5000


class Store:
    def __init__(self, path: str | Path, write_lock: threading.Lock | None = None) -> None:
        self.path = Path(path)
        # Held for each outermost transaction; shared with the group writer's connection.
        self.write_lock = write_lock if write_lock is not None else threading.Lock()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The store holds every job's command and env: its owner's only (SQLite gives
        # the -wal and -shm files the database's mode).
        self.path.touch(mode=0o600, exist_ok=True)
        for f in (self.path, *(self.path.with_name(self.path.name + s) for s in SIDE_FILES)):
            if f.exists():
                f.chmod(0o600)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: each COMMIT fsyncs the WAL, so an acknowledged write survives a crash of
        # the machine too, not only of the process. Per connection: the writer's too.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self.db = sqlite_utils.Database(conn)
        self._depth = 0
        self._migrate()

    def close(self) -> None:
        self.db.conn.close()

    def open_writer(self) -> Store:
        """A second connection to the same file, for the group writer's thread: its
        transactions are its own (this connection's readers never see them before they
        commit), and the lock orders them with this connection's."""
        return Store(self.path, self.write_lock)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic, durable write; nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self.write_lock:
            try:
                self.db.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreUnavailable(f"cannot begin a write to {self.path}: {e}") from e
            self._depth = 1
            try:
                yield
                self.db.conn.execute("COMMIT")
            except BaseException as e:
                # A failed COMMIT (disk full) may leave the transaction open or not.
                if self.db.conn.in_transaction:
                    self.db.conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StoreUnavailable(f"cannot write to {self.path}: {e}") from e
                raise
            finally:
                self._depth = 0

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction():
                for statement in script.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")

    # -- jobs ---------------------------------------------------------------

    def insert_job(self, job: JobRecord) -> JobRecord:
        """Store a new job; its id (and queue place) comes from SQLite."""
        values = _job_values(job)
        with self.transaction():
            job.id = _pk(self.db.conn.execute(_INSERT_JOB, values).lastrowid)
            if job.array_id == ARRAY_FIRST:  # an array's first element names it
                job.array_id = job.id
                self.db.execute("UPDATE jobs SET array_id = ? WHERE id = ?", [job.id, job.id])
            self._event(job.submit_time, job.id, "submitted", job.reason)
        return job

    def save_job(self, job: JobRecord, event: EventRecord | None = None) -> None:
        """Write a job and its current parts; with an event, in the same transaction."""
        self.save_change([JobWrite(job, True, job.parts)], [] if event is None else [event])

    def save_change(
        self,
        jobs: Iterable[JobWrite],
        events: Iterable[EventRecord],
        nodes: Iterable[NodeRecord] = (),
        forget_nodes: Iterable[str] = (),
    ) -> None:
        """One state change (daemon/change.py): all of it, or none of it. Each job
        writes its row if `row`, and only the parts given (the change knows which of
        them differ from what is stored)."""
        jobs = list(jobs)
        with self.transaction():
            rows = [(*_job_values(w.job), w.job.id) for w in jobs if w.row]
            if rows:
                cursor = self.db.conn.executemany(_UPDATE_JOB, rows)
                if cursor.rowcount != len(rows):  # as sqlite-utils' update() refused
                    raise ValueError(f"a job to update is not stored ({len(rows)} rows)")
            dropped = [(w.job.id, w.job.attempt, n, r) for w in jobs for n, r in w.dropped]
            if dropped:
                self.db.conn.executemany(_DELETE_PART, dropped)
            parts = [_part_values(p) for w in jobs for p in w.parts]
            if parts:
                self.db.conn.executemany(_UPSERT_PART, parts)
            self.db.conn.executemany(
                _INSERT_EVENT, [(e.time, e.job_id, e.kind, e.message) for e in events]
            )
            for node in nodes:
                self.save_node(node)
            for name in forget_nodes:
                self.db.execute("DELETE FROM nodes WHERE name = ?", [name])

    def load_jobs(self, active_only: bool = False) -> list[JobRecord]:
        where = "state IN ('PENDING', 'RUNNING', 'PREEMPTED')" if active_only else None
        rows = self.db.table("jobs").rows_where(where, order_by="id")
        return self._with_parts([_job_from_row(r) for r in rows])

    def load_job(self, job_id: int) -> JobRecord | None:
        rows = list(self.db.table("jobs").rows_where("id = ?", [job_id]))
        if not rows:
            return None
        job = _job_from_row(rows[0])
        for r in self.db.table("job_parts").rows_where(
            "job_id = ? AND attempt = ?", [job_id, job.attempt], order_by="node_rank"
        ):
            job.parts.append(_part_from_row(r))
        return job

    def list_jobs(
        self,
        consumer: str = "",
        states: list[str] | None = None,
        user: str = "",
        limit: int = 0,
        before_id: int = 0,
        array_id: int = 0,
    ) -> list[JobRecord]:
        """One page of the jobs matching the filters, newest first: at most `limit` jobs
        (LIST_CAP when `limit` is 0 or above it), with ids below `before_id` when it is
        set. The next page is `before_id=page[-1].id`; a page shorter than its limit is
        the last. `consumer` is a subtree: itself and every path under it, matched
        literally (a `_` or `%` in it is a character, not a pattern)."""
        where: list[str] = ["1=1"]
        args: list[str | int] = []
        if consumer not in ("", "/"):
            prefix = consumer.rstrip("/")
            where.append("(consumer = ? OR consumer LIKE ? ESCAPE '\\')")
            args += [prefix, _like_escape(prefix) + "/%"]
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += states
        if user:
            where.append("user = ?")
            args.append(user)
        if before_id > 0:
            where.append("id < ?")
            args.append(before_id)
        if array_id > 0:  # the elements of one job array (docs/arrays.md)
            where.append("array_id = ?")
            args.append(array_id)
        cap = LIST_CAP if limit <= 0 or limit > LIST_CAP else limit
        rows = self.db.table("jobs").rows_where(
            " AND ".join(where), args, order_by="id desc", limit=cap
        )
        return self._with_parts([_job_from_row(r) for r in rows])

    def array_element(self, array_id: int, index: int) -> int | None:
        """The job id of element `index` of job array `array_id`, if there is one."""
        row = self.db.execute(
            "SELECT id FROM jobs WHERE array_id = ? AND array_index = ?", [array_id, index]
        ).fetchone()
        return int(row[0]) if row else None

    def array_jobs(self, array_id: int) -> list[int]:
        """The job ids of job array `array_id`'s elements, in index order."""
        rows = self.db.execute(
            "SELECT id FROM jobs WHERE array_id = ? ORDER BY array_index", [array_id]
        )
        return [int(r[0]) for r in rows]

    def load_jobs_by_ids(self, ids: list[int]) -> list[JobRecord]:
        """The jobs of these ids that exist, in id order."""
        jobs: list[JobRecord] = []
        for i in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            chunk = ids[i : i + 500]
            rows = self.db.table("jobs").rows_where(
                f"id IN ({','.join('?' * len(chunk))})", chunk, order_by="id"
            )
            jobs += [_job_from_row(r) for r in rows]
        return self._with_parts(jobs)

    def _with_parts(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """Attach each job's parts of its current attempt, in a few queries."""
        by_id = {j.id: j for j in jobs}
        ids = list(by_id)
        for i in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            chunk = ids[i : i + 500]
            rows = self.db.table("job_parts").rows_where(
                f"job_id IN ({','.join('?' * len(chunk))})", chunk, order_by="job_id, node_rank"
            )
            for r in rows:
                job = by_id[r["job_id"]]
                if r["attempt"] == job.attempt:
                    job.parts.append(_part_from_row(r))
        return jobs

    def events(self, job_id: int) -> list[EventRecord]:
        return [
            EventRecord(r["time"], r["job_id"], r["kind"], r["message"])
            for r in self.db.table("events").rows_where("job_id = ?", [job_id], order_by="id")
        ]

    def _event(self, time: float, job_id: int, kind: str, message: str) -> None:
        self.db.conn.execute(_INSERT_EVENT, (time, job_id, kind, message))

    # -- nodes --------------------------------------------------------------

    def save_node(self, node: NodeRecord) -> None:
        with self.transaction():
            self.db.conn.execute(_UPSERT_NODE, _node_values(node))

    def load_nodes(self) -> list[NodeRecord]:
        nodes = []
        for r in self.db.table("nodes").rows_where(order_by="name"):
            r = dict(r)
            r["gpus"] = [GpuRecord(**g) for g in json.loads(r["gpus"])]
            r["fences"] = [FenceRecord(**f) for f in json.loads(r["fences"])]
            for flag in ("drained", "fake_gpus", "down"):
                r[flag] = bool(r[flag])
            nodes.append(NodeRecord(**r))
        return nodes

    # -- policies -----------------------------------------------------------

    def save_usage(self, usage: Mapping[tuple[str, str], float], at: float) -> None:
        """Decayed usage as of `at`, replacing what was kept (one transaction)."""
        with self.transaction():
            self.db.execute("DELETE FROM usage")
            self.db.conn.executemany(
                "INSERT INTO usage (consumer, user, gpu_seconds, at) VALUES (?, ?, ?, ?)",
                [(c, u, used, at) for (c, u), used in usage.items()],
            )

    def load_usage(self) -> tuple[dict[tuple[str, str], float], float | None]:
        """The usage kept, and when it was that much (None: nothing kept)."""
        rows = self.db.execute("SELECT consumer, user, gpu_seconds, at FROM usage").fetchall()
        at = max((r[3] for r in rows), default=None)
        return {(r[0], r[1]): r[2] for r in rows}, at

    def save_policy(self, text: str, source: str, applied_at: float) -> PolicyRecord:
        with self.transaction():
            pk = (
                self.db.table("policies")
                .insert({"text": text, "source": source, "applied_at": applied_at})
                .last_pk
            )
        return PolicyRecord(_pk(pk), text, source, applied_at)

    def latest_policy(self) -> PolicyRecord | None:
        rows = list(self.db.table("policies").rows_where(order_by="version desc", limit=1))
        if not rows:
            return None
        r = rows[0]
        return PolicyRecord(r["version"], r["text"], r["source"], r["applied_at"])

    def latest_policy_from(self, source: str) -> PolicyRecord | None:
        """The last policy applied from `source` (a file), in force now or not."""
        rows = list(
            self.db.table("policies").rows_where(
                "source = ?", [source], order_by="version desc", limit=1
            )
        )
        if not rows:
            return None
        r = rows[0]
        return PolicyRecord(r["version"], r["text"], r["source"], r["applied_at"])


def _like_escape(text: str) -> str:
    """`text` for a LIKE pattern with ESCAPE '\\': its \\, % and _ match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _pk(value: object) -> int:
    assert isinstance(value, int), value
    return value


@dataclass(frozen=True)
class JobWrite:
    """One job of a state change to write: its row (when `row`: a field changed) and
    these of its parts (new, or changed): the rest are already stored as they are. A
    250-part job that rewrote every part on each report wrote ~125,000 part rows to
    start and stop (issue 15)."""

    job: JobRecord
    row: bool
    parts: Sequence[PartRecord]
    # (node, node_rank) of each part of the job's current attempt that left it (an
    # elastic part whose workers all left: endings.released): their rows go too, or a
    # restart brings back a part that no longer exists.
    dropped: Sequence[tuple[str, int]] = ()


# Plain prepared statements, built once from the records' fields (which are the
# tables' columns): sqlite-utils' update() and upsert() read the schema on every row
# (609,866 `table_names` calls, 77 of 204 s of a profiled simulation; issue 15).
_JOB_COLUMNS = tuple(f.name for f in fields(JobRecord) if f.name not in ("id", "parts"))
_UPDATE_JOB = "UPDATE jobs SET " + ", ".join(f'"{c}" = ?' for c in _JOB_COLUMNS) + " WHERE id = ?"
_INSERT_JOB = (
    "INSERT INTO jobs ("
    + ", ".join(f'"{c}"' for c in _JOB_COLUMNS)
    + ") VALUES ("
    + ", ".join("?" for _ in _JOB_COLUMNS)
    + ")"
)


def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    return (
        f'INSERT INTO "{table}" ('
        + ", ".join(f'"{c}"' for c in columns)
        + ") VALUES ("
        + ", ".join("?" for _ in columns)
        + ") ON CONFLICT ("
        + ", ".join(f'"{c}"' for c in key)
        + ") DO UPDATE SET "
        + ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in key)
    )


_PART_COLUMNS = tuple(f.name for f in fields(PartRecord))
_UPSERT_PART = _upsert("job_parts", _PART_COLUMNS, ("job_id", "attempt", "node", "node_rank"))
_NODE_COLUMNS = tuple(f.name for f in fields(NodeRecord))
_UPSERT_NODE = _upsert("nodes", _NODE_COLUMNS, ("name",))
_DELETE_PART = (
    "DELETE FROM job_parts WHERE job_id = ? AND attempt = ? AND node = ? AND node_rank = ?"
)
_INSERT_EVENT = "INSERT INTO events (time, job_id, kind, message) VALUES (?, ?, ?, ?)"


def _job_values(job: JobRecord) -> tuple[object, ...]:
    """The job's columns, in _JOB_COLUMNS' order."""
    row = _job_row(job)
    return tuple(row[c] for c in _JOB_COLUMNS)


def _part_values(part: PartRecord) -> tuple[object, ...]:
    row = _part_row(part)
    return tuple(row[c] for c in _PART_COLUMNS)


def _node_values(node: NodeRecord) -> tuple[object, ...]:
    row: dict[str, object] = {c: getattr(node, c) for c in _NODE_COLUMNS}
    row["gpus"] = json.dumps([asdict(g) for g in node.gpus])
    row["fences"] = json.dumps([asdict(f) for f in node.fences])
    return tuple(row[c] for c in _NODE_COLUMNS)


def _job_row(job: JobRecord) -> dict[str, object]:
    # Not asdict(): it deep-copies every field, parts included, only to drop them.
    row = {f.name: getattr(job, f.name) for f in fields(job) if f.name != "parts"}
    row["command"] = json.dumps(job.command)
    row["env"] = json.dumps(job.env)
    row["state"] = job.state.value
    row["cancel_requested"] = int(job.cancel_requested)
    row["preempting"] = int(job.preempting)
    row["ending"] = int(job.ending)
    row["vouched"] = int(job.vouched)
    return row


def _job_from_row(r: dict[str, object]) -> JobRecord:
    r = dict(r)
    r["command"] = json.loads(str(r["command"]))
    r["env"] = json.loads(str(r["env"]))
    r["state"] = JobState(r["state"])
    r["cancel_requested"] = bool(r["cancel_requested"])
    r["preempting"] = bool(r["preempting"])
    r["ending"] = bool(r["ending"])
    r["vouched"] = bool(r["vouched"])
    return JobRecord(**r)  # type: ignore[arg-type]


def _part_row(part: PartRecord) -> dict[str, object]:
    row: dict[str, object] = {c: getattr(part, c) for c in _PART_COLUMNS}
    row["gpu_indices"] = json.dumps(part.gpu_indices)
    row["gpu_uuids"] = json.dumps(part.gpu_uuids)
    row["phase"] = part.phase.value
    row["workers"] = json.dumps({str(k): v for k, v in part.workers.items()})
    row["releasing"] = json.dumps(part.releasing)
    return row


def _part_from_row(r: dict[str, object]) -> PartRecord:
    r = dict(r)
    r["gpu_indices"] = json.loads(str(r["gpu_indices"]))
    r["gpu_uuids"] = json.loads(str(r["gpu_uuids"]))
    r["phase"] = PartPhase(r["phase"])
    r["workers"] = {int(k): v for k, v in json.loads(str(r["workers"])).items()}
    r["releasing"] = json.loads(str(r["releasing"]))
    return PartRecord(**r)  # type: ignore[arg-type]
