"""Part records on disk: what a restarted agent needs to take its parts back (Runner.adopt).

One JSON file per part, `<state dir>/parts/<job>.<attempt>.json`, rewritten whenever the part
changes and deleted when the daemon acks its end. A write is atomic and durable (tmp file,
fsync, rename, fsync of the folder): after a crash a record is the old one or the new one,
never half of each. A file that does not parse is renamed to `.bad` and logged, so one broken
record neither stops the agent nor is read again at every start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from agent.model import ElasticSpec, JobSpec, PartKey, PartReport, Phase
from agent.users import JobUser

log = logging.getLogger(__name__)

VERSION = 1
MAX_RECORD_BYTES = 4 * 1024 * 1024  # a spec's env is the only big part; refuse absurd files


@dataclass
class WorkerRecord:
    """One worker of a part as the agent last knew it."""

    worker_id: int
    gpus: tuple[int, ...]
    cgroup: str  # "" when not contained (process groups)
    status_file: str  # where its shim writes its exit status
    shim_pid: int = 0
    shim_start: int = 0  # /proc/<pid>/stat field 22: tells the shim from a reused pid
    child_pid: int = 0  # the job's own process
    released: bool = False
    kill_deadline: float | None = None  # wall clock: SIGKILL when this passes
    killed: bool = False  # the agent SIGKILLed it
    ended: bool = False  # its shim exited and its cgroup is empty
    exit_code: int | None = None  # None: unknown (or not ended)
    exit_time: float | None = None  # when its command exited, as its shim recorded it


@dataclass
class PartRecord:
    spec: JobSpec
    workers: Sequence[WorkerRecord]
    report: PartReport
    stop_reason: str = ""
    by_node: bool = False  # the node stopped it (PartReport.stopped_by_node)
    containment: str = "pgroup"  # agent.cgroups kind its cgroups belong to
    boot_id: str = ""
    # Who its processes run as, as resolved when it started: its joiners run as the same
    # uid, gid and groups even if the node's passwd changes meanwhile. None: never started.
    user: JobUser | None = None


def path_of(parts_dir: Path, key: PartKey) -> Path:
    return parts_dir / f"{key[0]}.{key[1]}.json"


def save(parts_dir: Path, record: PartRecord) -> None:
    parts_dir.mkdir(parents=True, exist_ok=True)
    target = path_of(parts_dir, record.spec.key)
    tmp = target.with_suffix(".tmp")
    data = json.dumps(_encode(record), separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    _fsync_dir(parts_dir)


def delete(parts_dir: Path, key: PartKey) -> None:
    with contextlib.suppress(FileNotFoundError):
        path_of(parts_dir, key).unlink()
        _fsync_dir(parts_dir)


def load_all(parts_dir: Path) -> list[PartRecord]:
    """Every readable record in (job, attempt) order; broken ones are set aside as `.bad`."""
    records = []
    for path in sorted(parts_dir.glob("*.json")):
        try:
            if path.stat().st_size > MAX_RECORD_BYTES:
                raise ValueError(f"{path.stat().st_size} bytes")
            record = _decode(json.loads(path.read_bytes()))
            if path != path_of(parts_dir, record.spec.key):
                raise ValueError(f"it holds job {record.spec.job_id} attempt {record.spec.attempt}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            bad = path.with_suffix(".bad")
            log.error("part record %s is unreadable (%s: %s); moved to %s", path, type(e), e, bad)
            with contextlib.suppress(OSError):
                path.replace(bad)
            continue
        records.append(record)
    return sorted(records, key=lambda r: r.spec.key)


def _encode(record: PartRecord) -> dict[str, Any]:
    spec = record.spec
    report = record.report
    return {
        "version": VERSION,
        "spec": {
            **{f.name: getattr(spec, f.name) for f in fields(JobSpec)},
            "env": dict(spec.env),
            "elastic": None if spec.elastic is None else asdict(spec.elastic),
        },
        "workers": [
            {f.name: getattr(w, f.name) for f in fields(WorkerRecord)} for w in record.workers
        ],
        "report": {**asdict(report), "phase": report.phase.value},
        "stop_reason": record.stop_reason,
        "by_node": record.by_node,
        "containment": record.containment,
        "boot_id": record.boot_id,
        "user": None if record.user is None else asdict(record.user),
    }


def _decode(data: dict[str, Any]) -> PartRecord:
    if data.get("version") != VERSION:
        raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
    spec = dict(data["spec"])
    elastic = spec.pop("elastic")
    if elastic is not None:
        elastic = ElasticSpec(
            **{
                **elastic,
                "initial_worker_ids": tuple(elastic["initial_worker_ids"]),
                "workers": tuple((int(w), int(g)) for w, g in elastic["workers"]),
            }
        )
    report = dict(data["report"])
    user = data.get("user")  # absent from the records of agents before jobs ran as users
    return PartRecord(
        spec=JobSpec(**spec, elastic=elastic),
        workers=[WorkerRecord(**{**w, "gpus": tuple(w["gpus"])}) for w in data["workers"]],
        report=PartReport(
            **{
                **report,
                "phase": Phase(report["phase"]),
                "gpu_indices": tuple(report["gpu_indices"]),
            }
        ),
        stop_reason=str(data["stop_reason"]),
        by_node=bool(data["by_node"]),
        containment=str(data["containment"]),
        boot_id=str(data["boot_id"]),
        user=None if user is None else JobUser(**{**user, "groups": tuple(user["groups"])}),
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
