"""Durable state: SQLite through sqlite-utils (WAL, synchronous=FULL)."""

from schedulerd.store.records import (
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
from schedulerd.store.store import JobWrite, Store, StoreUnavailable

__all__ = [
    "EventRecord",
    "FenceRecord",
    "GpuRecord",
    "JobRecord",
    "JobState",
    "JobWrite",
    "NodeRecord",
    "PartPhase",
    "PartRecord",
    "PolicyRecord",
    "Store",
    "StoreUnavailable",
]
