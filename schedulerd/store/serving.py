"""Inference services, their replicas and their history in the store (migration 7).
A replica's row goes in with its job's row, in one transaction (the service
controller submits both together), so a restart finds every replica's job."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from schedulerd.serve.codec import spec_from_json, spec_to_json
from schedulerd.serve.spec import ServiceSpec
from schedulerd.store.store import Store

MAX_EVENTS_KEPT = 1000  # a service's history in the store: the latest this many
EVENTS_SHOWN = 200  # in Get and Watch


class ServiceState(enum.Enum):
    ACTIVE = "ACTIVE"
    DELETING = "DELETING"  # replicas draining and stopping
    DELETED = "DELETED"


class ReplicaPhase(enum.Enum):
    """What the controller did to a replica. Whether it waits, starts or serves is
    its job's state and the router's word, not stored."""

    ACTIVE = "ACTIVE"  # wanted: waiting, starting or serving
    DRAINING = "DRAINING"  # the router sends it nothing new; in-flight requests finish
    STOPPING = "STOPPING"  # its job was asked to stop
    ENDED = "ENDED"  # its job ended

    @property
    def counts(self) -> bool:
        """Whether it is one of the replicas the service has (not on its way out)."""
        return self is ReplicaPhase.ACTIVE


@dataclass
class ServiceRecord:
    id: int
    spec: ServiceSpec
    state: ServiceState
    created: float
    generation: int = 1
    desired: int = 0
    reason: str = ""
    ended: float | None = None
    vouched: bool = False


@dataclass
class ReplicaRecord:
    service_id: int
    number: int
    job_id: int
    generation: int
    port: int
    phase: ReplicaPhase
    created: float
    reason: str = ""
    drain_started: float | None = None
    ended: float | None = None


@dataclass(frozen=True)
class ServiceEvent:
    service_id: int
    time: float
    kind: str
    message: str
    from_replicas: int = 0
    to_replicas: int = 0


class ServiceStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def insert_service(self, svc: ServiceRecord) -> None:
        with self.store.transaction():
            pk = self.db.table("services").insert(_service_row(svc)).last_pk
            assert isinstance(pk, int)
            svc.id = pk

    def save_service(self, svc: ServiceRecord) -> None:
        with self.store.transaction():
            self.db.table("services").update(svc.id, _service_row(svc))

    def insert_replica(self, r: ReplicaRecord) -> None:
        with self.store.transaction():
            self.db.table("replicas").insert(_replica_row(r))

    def save_replica(self, r: ReplicaRecord) -> None:
        with self.store.transaction():
            self.db.table("replicas").update((r.service_id, r.number), _replica_row(r))

    def add_event(self, e: ServiceEvent) -> None:
        with self.store.transaction():
            self.db.table("service_events").insert(
                {
                    "service_id": e.service_id,
                    "time": e.time,
                    "kind": e.kind,
                    "message": e.message,
                    "from_replicas": e.from_replicas,
                    "to_replicas": e.to_replicas,
                }
            )
            pk = self.db.execute("SELECT last_insert_rowid()").fetchone()[0]
            if pk % 100 == 0:  # now and then, not at every event
                self.db.execute(
                    "DELETE FROM service_events WHERE service_id = ? AND id <= "
                    "(SELECT id FROM service_events WHERE service_id = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    [e.service_id, e.service_id, MAX_EVENTS_KEPT],
                )

    def load_services(self, live_only: bool = False) -> list[ServiceRecord]:
        where = "state != 'DELETED'" if live_only else None
        return [_service_from_row(r) for r in self.db.table("services").rows_where(where)]

    def load_service(self, service_id: int) -> ServiceRecord | None:
        rows = list(self.db.table("services").rows_where("id = ?", [service_id]))
        return _service_from_row(rows[0]) if rows else None

    def find_by_name(self, name: str) -> ServiceRecord | None:
        """The live service of that name, else the latest deleted one."""
        rows = list(
            self.db.table("services").rows_where(
                "name = ?", [name], order_by="state = 'DELETED', id DESC", limit=1
            )
        )
        return _service_from_row(rows[0]) if rows else None

    def load_replicas(self, service_id: int, live_only: bool = False) -> list[ReplicaRecord]:
        where = "service_id = ?" + (" AND phase != 'ENDED'" if live_only else "")
        rows = self.db.table("replicas").rows_where(where, [service_id], order_by="number")
        return [_replica_from_row(r) for r in rows]

    def next_number(self, service_id: int) -> int:
        row = self.db.execute(
            "SELECT MAX(number) FROM replicas WHERE service_id = ?", [service_id]
        ).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def load_events(self, service_id: int, most: int = EVENTS_SHOWN) -> list[ServiceEvent]:
        rows = self.db.execute(
            "SELECT service_id, time, kind, message, from_replicas, to_replicas "
            "FROM service_events WHERE service_id = ? ORDER BY id DESC LIMIT ?",
            [service_id, most],
        ).fetchall()
        return [ServiceEvent(*r) for r in reversed(rows)]


def _service_row(s: ServiceRecord) -> dict[str, Any]:
    return {
        "name": s.spec.name,
        "consumer": s.spec.consumer,
        "user": s.spec.user,
        "spec": spec_to_json(s.spec),
        "state": s.state.value,
        "generation": s.generation,
        "desired": s.desired,
        "reason": s.reason,
        "created": s.created,
        "ended": s.ended,
        "vouched": int(s.vouched),
    }


def _service_from_row(r: dict[str, Any]) -> ServiceRecord:
    return ServiceRecord(
        id=r["id"],
        spec=spec_from_json(r["spec"]),
        state=ServiceState(r["state"]),
        created=r["created"],
        generation=r["generation"],
        desired=r["desired"],
        reason=r["reason"],
        ended=r["ended"],
        vouched=bool(r["vouched"]),
    )


def _replica_row(r: ReplicaRecord) -> dict[str, Any]:
    return {
        "service_id": r.service_id,
        "number": r.number,
        "job_id": r.job_id,
        "generation": r.generation,
        "port": r.port,
        "phase": r.phase.value,
        "reason": r.reason,
        "created": r.created,
        "drain_started": r.drain_started,
        "ended": r.ended,
    }


def _replica_from_row(r: dict[str, Any]) -> ReplicaRecord:
    return ReplicaRecord(
        service_id=r["service_id"],
        number=r["number"],
        job_id=r["job_id"],
        generation=r["generation"],
        port=r["port"],
        phase=ReplicaPhase(r["phase"]),
        created=r["created"],
        reason=r["reason"],
        drain_started=r["drain_started"],
        ended=r["ended"],
    )
