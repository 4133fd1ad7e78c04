"""Durable state: SQLite through sqlite-utils (WAL, synchronous=FULL)."""

from schedulerd.store.records import (
    EventRecord,
    GpuRecord,
    JobRecord,
    JobState,
    NodeRecord,
    PartPhase,
    PartRecord,
    PolicyRecord,
)
from schedulerd.store.store import Store

__all__ = [
    "EventRecord",
    "GpuRecord",
    "JobRecord",
    "JobState",
    "NodeRecord",
    "PartPhase",
    "PartRecord",
    "PolicyRecord",
    "Store",
]
