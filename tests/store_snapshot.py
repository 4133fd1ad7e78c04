"""What a refused request must not change, read from outside the daemon: its store
(a read-only SQLite connection to the daemon's file) and its memory (/proc).

`snapshot` is every row of the tables that hold state (the audit table is left out:
it records the refusal itself); `digest` is a cheap summary of the same (row counts,
the largest ids, the policy version and the small tables in full) for checks around
thousands of calls.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

# The tables a request could change; `audit` is not one of them (it records refusals).
STATE_TABLES = ("jobs", "job_parts", "nodes", "policies", "tokens", "events", "experiments")
# Columns rewritten while nothing happens (none today: heartbeats are kept in memory).
VOLATILE: dict[str, tuple[str, ...]] = {}


def _connect(db: Path) -> sqlite3.Connection:
    # mode=ro: this process never writes the daemon's store, not even by accident.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.execute("PRAGMA query_only = 1")
    return conn


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    skip = VOLATILE.get(table, ())
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1] not in skip]


def snapshot(db: Path, tables: tuple[str, ...] = STATE_TABLES) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of `tables`, in rowid order."""
    conn = _connect(db)
    try:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in tables:
            cols = ", ".join(f'"{c}"' for c in _columns(conn, table))
            out[table] = conn.execute(f"SELECT {cols} FROM {table} ORDER BY rowid").fetchall()
        return out
    finally:
        conn.close()


def diff(before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]) -> str:
    """The changed tables, in words ("" when none): for an assertion's message."""
    lines = []
    for table in before:
        old, new = before[table], after.get(table, [])
        if old != new:
            gone = [r for r in old if r not in new][:3]
            added = [r for r in new if r not in old][:3]
            lines.append(
                f"{table}: {len(old)} -> {len(new)} rows; gone {_short(gone)}; new {_short(added)}"
            )
    return "\n".join(lines)


def _short(rows: list[tuple[Any, ...]]) -> str:
    text = repr(rows)
    return text if len(text) < 600 else text[:600] + "..."


def digest(db: Path) -> tuple[Any, ...]:
    """A cheap summary: counts and largest ids of the big tables, the states of jobs,
    trials and experiments, and the small tables (nodes, policies' versions, tokens) in
    full. Two equal digests around a call: it added or removed no job, part, event,
    experiment, trial, node, policy or token, and changed no state."""
    conn = _connect(db)
    try:
        big = tuple(
            conn.execute(f"SELECT count(*), max(rowid) FROM {t}").fetchone()
            for t in ("jobs", "job_parts", "events", "experiments")
        )
        states = conn.execute(
            "SELECT group_concat(state || ':' || cancel_requested, ',') FROM "
            "(SELECT state, cancel_requested FROM jobs ORDER BY id)"
        ).fetchone()
        trials = conn.execute(
            "SELECT count(*), group_concat(state, ',') FROM "
            "(SELECT state FROM trials ORDER BY experiment_id, number)"
        ).fetchone()
        experiments = conn.execute(
            "SELECT group_concat(state, ',') FROM (SELECT state FROM experiments ORDER BY id)"
        ).fetchone()
        nodes = tuple(conn.execute("SELECT * FROM nodes ORDER BY name"))
        policy = conn.execute("SELECT max(version) FROM policies").fetchone()
        tokens = tuple(conn.execute("SELECT id, revoked_at FROM tokens ORDER BY id"))
        return (big, states, trials, experiments, nodes, policy, tokens)
    finally:
        conn.close()


def audit_rows(db: Path, after_id: int = 0) -> list[tuple[Any, ...]]:
    """Audit records written to the store after `after_id`: (id, identity, credential,
    action, object, result, detail). The daemon writes them in batches (0.2 s)."""
    conn = _connect(db)
    try:
        return conn.execute(
            "SELECT id, identity, credential, action, object, result, detail FROM audit "
            "WHERE id > ? ORDER BY id",
            (after_id,),
        ).fetchall()
    finally:
        conn.close()


def rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB."""
    return _status_kib(pid, "VmRSS")


def hwm_kib(pid: int) -> int:
    """VmHWM (the peak of VmRSS) of a process, KiB."""
    return _status_kib(pid, "VmHWM")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0])
    raise AssertionError(f"no {key} for pid {pid}")
